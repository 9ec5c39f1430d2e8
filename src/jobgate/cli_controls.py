"""The operator's commands (admin only, through the API like every client command):
`jobgate pause [KIND]`, `jobgate resume [KIND]`, `jobgate drain NODE`, `jobgate undrain
NODE`, and `jobgate limits`: with no option, the limits in force and where each comes from
(config or live); with options, a change at run time (`PUT /api/limits`)."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from jobgate.client import Client, CliError
from jobgate.terminal import printable

_GLOBAL = (("max_running", "--max-running"), ("max_queued", "--max-queued"),
           ("per_user_running", "--per-user-running"), ("per_user_queued", "--per-user-queued"),
           ("memory_budget_mb", "--memory-budget-mb"))
_USER_KEYS = ("per_user_running", "per_user_queued", "priority")
_RESET_WORDS = ("config", "null", "-")  # a value that puts the config's back


def add_commands(sub: Any) -> None:
    """Add the control commands to the `jobgate` parser's subcommands."""
    for name, func, text in (("pause", cmd_pause, "start no more jobs (of KIND) on any node"),
                             ("resume", cmd_resume, "dispatch again (everything, or KIND)")):
        sp = sub.add_parser(name, help=f"{text} (admin)")
        sp.add_argument("kind", nargs="?", metavar="KIND")
        sp.set_defaults(func=func)
    for name, func, text in (("drain", cmd_drain, "a node finishes its jobs, claims no more"),
                             ("undrain", cmd_undrain, "a drained node claims jobs again")):
        sp = sub.add_parser(name, help=f"{text} (admin)")
        sp.add_argument("node", metavar="NODE")
        sp.set_defaults(func=func)
    sp = sub.add_parser("limits", help="the limits in force; change them at run time (admin)")
    for key, flag in _GLOBAL:
        sp.add_argument(flag, dest=key, metavar="N",
                        help=f"{key} on every node ('config': the config's value)")
    sp.add_argument("--kind", action="append", default=[], metavar="NAME=N",
                    help="a kind's max_running (repeatable; NAME=config: the config's)")
    sp.add_argument("--user", action="append", default=[], metavar="NAME[.KEY]=N",
                    help="a user's per_user_running (or KEY: per_user_queued, priority); "
                    "NAME=config drops the user's live overrides (repeatable)")
    sp.add_argument("--reset", action="store_true",
                    help="every live limit back to the config's (before the other options)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_limits)


def cmd_pause(args: argparse.Namespace) -> int:
    controls = Client().call("POST", "/api/queue/pause", json={"kind": args.kind})
    print(printable(_paused_line(controls)))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    controls = Client().call("POST", "/api/queue/resume", json={"kind": args.kind})
    print(printable(_paused_line(controls)))
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    Client().call("POST", f"/api/nodes/{_path(args.node)}/drain")
    print(printable(f"node {args.node} drained: it finishes its running jobs and claims "
                    "no more"))
    return 0


def cmd_undrain(args: argparse.Namespace) -> int:
    Client().call("POST", f"/api/nodes/{_path(args.node)}/undrain")
    print(printable(f"node {args.node} claims jobs again"))
    return 0


def cmd_limits(args: argparse.Namespace) -> int:
    body = _limits_body(args)
    client = Client()
    controls = client.call("PUT", "/api/limits", json=body) if body else \
        client.call("GET", "/api/controls")
    if args.json:
        print(json.dumps(controls, indent=2))
        return 0
    _print_limits(controls)
    return 0


def _limits_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key, flag in _GLOBAL:
        value = getattr(args, key)
        if value is not None:
            body[key] = _number(value, flag)
    kinds = {}
    for item in args.kind:
        name, value = _pair(item, "--kind")
        kinds[name] = _number(value, f"--kind {name}")
    users: dict[str, Any] = {}
    for item in args.user:
        target, value = _pair(item, "--user")
        name, _, key = target.partition(".")
        key = key or "per_user_running"
        if key not in _USER_KEYS:
            raise CliError(f"--user {item}: unknown key {key!r} (known: "
                           f"{', '.join(_USER_KEYS)})", 2)
        number = _number(value, f"--user {target}")
        if number is None and "." not in target:
            users[name] = None  # every live override of the user goes
        elif users.get(name, {}) is not None:
            users.setdefault(name, {})[key] = number
    if kinds:
        body["kinds"] = kinds
    if users:
        body["users"] = users
    if args.reset:
        body["reset"] = True
    return body


def _pair(item: str, flag: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise CliError(f"{flag} {item}: expected NAME=N", 2)
    return name, value


def _number(text: str, flag: str) -> int | None:
    if text.strip().lower() in _RESET_WORDS:
        return None
    try:
        return int(text)
    except ValueError:
        raise CliError(f"{flag}: expected a whole number (or 'config'), got {text!r}",
                       2) from None


def _path(node: str) -> str:
    return quote(node, safe="")


def _paused_line(controls: dict[str, Any]) -> str:
    kinds = controls.get("paused_kinds") or []
    if controls.get("paused"):
        return "queue paused: no node starts a job (running jobs go on)"
    if kinds:
        return f"kinds paused: {', '.join(kinds)}"
    return "queue running: nothing paused"


def _print_limits(controls: dict[str, Any]) -> None:
    """The limits in force as a table (LIMIT, VALUE, SOURCE), then what is paused or
    drained."""
    effective = controls.get("effective") or {}
    rows = [(key, entry) for key, entry in effective.items()
            if key not in ("kinds", "users")]
    rows += [(f"kinds.{k}.max_running", e) for k, e in effective.get("kinds", {}).items()]
    for user, entry in effective.get("users", {}).items():
        rows += [(f"users.{user}.{k}", {"value": entry[k], "source": entry["source"]})
                 for k in _USER_KEYS if k in entry]
    width = max([24, *(len(r[0]) for r in rows)])
    print(f"{'LIMIT':{width}}  {'VALUE':>10}  SOURCE")
    for key, entry in rows:
        value = entry.get("value")
        print(printable(f"{key:{width}}  {'-' if value is None else value:>10}  "
                        f"{entry.get('source', '')}"))
    print()
    print(printable(_paused_line(controls)))
    drained = controls.get("drained") or []
    if drained:
        print(printable(f"drained nodes: {', '.join(drained)}"))
