"""`jobgate check`: what a configuration says, and whether this machine can run it.

Loading the settings (as `jobgate serve` does) already refuses every bad value, a function
kind whose module does not import and a `progress` pattern that does not compile: those
are ConfigErrors, one line and exit 2, before this module is reached. What it adds is what
only matters on this machine, without starting anything (no server, no worker, no
database, no file written):

- a problem (exit 1): a command kind's argv[0] that is not a program found on PATH (or,
  for an absolute path, an executable file); one with a placeholder is not looked for;
- a warning (exit 0, 1 with `--strict`): a recipe's tool this machine lacks, as `serve`
  warns at start; a relative argv[0] path (`./tool`), which each job looks for from its
  own folder.

The summary never shows a secret: the storage URL's password is starred, and webhooks,
notifications and the metrics token are only said to be configured or not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
from typing import Any

from jobgate.config import Settings
from jobgate.terminal import printable


@dataclasses.dataclass
class Report:
    """What `jobgate check` found: problems stop it (exit 1), warnings do not."""

    problems: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)


def masked_url(url: str) -> str:
    """A database URL fit to print: any password replaced by `****` (in the user part,
    `scheme://user:secret@host`, or as a `password=` query parameter)."""
    scheme, sep, rest = url.partition("://")
    if sep and not scheme.startswith("sqlite"):
        cred, at, host = rest.rpartition("@")
        if at and ":" in cred:
            user = cred.partition(":")[0]
            rest = f"{user}:****@{host}"
        url = f"{scheme}://{rest}"
    return re.sub(r"([?&]password=)[^&]*", r"\1****", url, flags=re.IGNORECASE)


def check_machine(settings: Settings) -> Report:
    """The checks that only matter here: command kinds' programs and recipes' tools."""
    from jobgate.recipes import missing_tools_warnings

    report = Report()
    for kind in settings.kinds.values():
        if kind.argv is None:
            continue
        program = kind.argv[0]
        if "{" in program:  # filled per job: nothing to look for until then
            continue
        key = f"kinds.{kind.name}.argv[0]"
        if "/" in program and not os.path.isabs(program):
            # A job runs in its own folder: that is where such a path is looked for.
            report.warnings.append(f"{key}: program {program!r} is a relative path, found "
                                   "from each job's own folder; give an absolute path")
        elif shutil.which(program) is None:
            where = "is not an executable file" if "/" in program else "not found on PATH"
            report.problems.append(f"{key}: program {program!r} {where}")
    # The recipes' tools (and yt-dlp's module), as `serve` warns of them at start; the
    # command kinds' programs are problems above, not warnings.
    functions_only = dataclasses.replace(
        settings, kinds={n: k for n, k in settings.kinds.items() if k.argv is None})
    report.warnings.extend(missing_tools_warnings(functions_only))
    return report


def summary(settings: Settings) -> dict[str, Any]:
    """What the configuration says, with nothing secret in it."""
    limits = settings.limits
    kinds = settings.kinds.values()
    return {
        "config": str(settings.config_file) if settings.config_file is not None else None,
        "storage": masked_url(settings.storage.url),
        "kinds": sorted(settings.kinds),
        "limits": {
            "max_running": limits.max_running,
            "max_queued": limits.max_queued,
            "per_user_running": limits.per_user_running,
            "per_user_queued": limits.per_user_queued,
            "memory_budget_mb": limits.memory_budget_mb,
            "node_memory_budget_mb": limits.node_memory_budget_mb,
        },
        "auth": settings.auth.enabled,
        "schedules": len(settings.schedules),
        "webhooks": bool(settings.webhooks.url or any(k.webhook_url for k in kinds)),
        "notify": bool(settings.notify.urls or settings.notify.users
                       or any(k.notify for k in kinds)),
        "metrics_token": settings.metrics.token is not None,
    }


def _text_lines(info: dict[str, Any]) -> list[str]:
    def value(v: Any) -> str:
        return "none" if v is None else str(v)

    limits = " ".join(f"{k}={value(v)}" for k, v in info["limits"].items())
    kinds = info["kinds"]
    return [
        f"config: {info['config'] or '(none: defaults and JOBGATE_* environment)'}",
        f"storage: {info['storage']}",
        f"kinds: {len(kinds)}" + (f" ({', '.join(kinds)})" if kinds else ""),
        f"limits: {limits}",
        f"auth: {'on' if info['auth'] else 'off'}",
        f"schedules: {info['schedules']}",
        f"webhooks: {'yes' if info['webhooks'] else 'no'}",
        f"notify: {'yes' if info['notify'] else 'no'}",
        f"metrics token: {'yes' if info['metrics_token'] else 'no'}",
    ]


def run_check(settings: Settings, *, strict: bool = False, as_json: bool = False) -> int:
    """Print the summary (stdout) and each problem and warning (stderr, one line each);
    0 when all is well (`ok` last), 1 for a problem, or with `strict` for a warning."""
    report = check_machine(settings)
    info = summary(settings)
    for line in report.problems:
        print(f"jobgate: {printable(line)}", file=sys.stderr)
    for line in report.warnings:
        print(f"jobgate: warning: {printable(line)}", file=sys.stderr)
    ok = not report.problems and not (strict and report.warnings)
    if as_json:
        print(json.dumps({**info, "problems": report.problems, "warnings": report.warnings,
                          "ok": ok}))
    else:
        for line in _text_lines(info):
            print(printable(line))
        if ok:
            print("ok")
    return 0 if ok else 1
