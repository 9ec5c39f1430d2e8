"""`jobgate bulk cancel|retry|delete [--state S] [--kind K] [--owner U] [--older-than 7d]
[--limit N] [--yes]`: one `POST /api/jobs/bulk`, its counts printed.

Without `--yes` it asks first (how many jobs match, from a dry run), and does nothing unless
the answer is yes; a script says `--yes`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jobgate.client import Client, CliError
from jobgate.config import parse_duration
from jobgate.model import State
from jobgate.terminal import printable

_ACTIONS = {"cancel": "cancelled", "retry": "retried", "delete": "deleted"}


def add_parser(sub: Any) -> None:
    """Add `bulk` (with its actions) to the subcommands `sub` of the `jobgate` parser."""
    sp = sub.add_parser("bulk", help="cancel, retry or delete the jobs a filter selects")
    actions = sp.add_subparsers(metavar="ACTION", required=True, parser_class=type(sp))
    for action, text in (("cancel", "cancel queued or running jobs"),
                         ("retry", "queue failed or cancelled jobs again"),
                         ("delete", "delete finished jobs, their logs and outputs")):
        ap = actions.add_parser(action, help=text)
        ap.add_argument("--state", action="append", choices=[s.value for s in State],
                        help="only jobs in this state (repeatable)")
        ap.add_argument("--kind")
        ap.add_argument("--owner", help="only this user's jobs (another's: admins only)")
        ap.add_argument("--older-than", metavar="DURATION",
                        help="finished (or, not finished, created) at least this long ago, "
                        "e.g. 7d, 12h")
        ap.add_argument("--limit", type=int, help="at most this many jobs")
        ap.add_argument("--yes", "-y", action="store_true", help="do not ask first")
        ap.set_defaults(func=cmd_bulk, action=action)


def cmd_bulk(args: argparse.Namespace) -> int:
    flt: dict[str, Any] = {}
    if args.state:
        flt["state"] = args.state
    if args.kind is not None:
        flt["kind"] = args.kind
    if args.owner is not None:
        flt["owner"] = args.owner
    if args.older_than is not None:
        flt["older_than_s"] = parse_duration(args.older_than, "--older-than")
    if args.limit is not None:
        flt["limit"] = args.limit
    client = Client()
    body = {"action": args.action, "filter": flt}
    if not args.yes:
        probe = client.call("POST", "/api/jobs/bulk", json={**body, "dry_run": True})
        if probe["matched"] == 0:
            print(f"no jobs to {args.action}")
            return 0
        more = " (and more past the limit)" if probe["more"] else ""
        print(f"{args.action} {probe['matched']} jobs{more}? [y/N] ", end="", flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise CliError("nothing done (--yes does it without asking)")
    result = client.call("POST", "/api/jobs/bulk", json=body)
    print(printable(summary(result)))
    return 0


def summary(result: dict[str, Any]) -> str:
    """One line: "cancelled 3 of 4 jobs (skipped: illegal_state 1)"."""
    skipped = result.get("skipped") or {}
    line = f"{_ACTIONS.get(result['action'], result['action'])} {result['done']} of " \
        f"{result['matched']} jobs"
    if skipped:
        line += " (skipped: " + ", ".join(f"{k} {v}" for k, v in skipped.items()) + ")"
    if result.get("more"):
        line += "; more match: run it again"
    return line
