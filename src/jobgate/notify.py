"""Notifications of jobs' ends through Apprise (https://github.com/caronc/apprise): one URL
syntax for Telegram (`tgram://`), e-mail (`mailto://`), ntfy, Discord, Matrix and 100 more.

The message names the job (kind, id, owner), its state and its result or error; where the
service takes files (`attachment_support`), the job's outputs are attached while they add
up to at most `[notify] attach_max_mb`. Notification URLs carry secrets (bot tokens,
passwords): they are shown and logged only in Apprise's privacy form (`shown_url`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import apprise

from jobgate.deliveries import Attempt

_RESULT_CHARS = 1500
_BAD_LEVELS = {"WARNING", "ERROR", "CRITICAL", str(logging.WARNING), str(logging.ERROR),
               str(logging.CRITICAL)}
_MB = 1024 * 1024


@functools.cache
def _plugins() -> None:
    """Load Apprise's service plugins once. They import `imghdr` (deprecated since Python
    3.11), whose warning says nothing about jobgate: it is not shown (nor, under warnings
    as errors, raised)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        apprise.Apprise.instantiate("json://localhost")


def _instantiate(url: str) -> Any:
    _plugins()
    return apprise.Apprise.instantiate(url)


def url_problem(url: str) -> str | None:
    """Why Apprise would not take `url` as a notification URL, or None. The message shows
    no part of the URL but its scheme (the rest may be a secret)."""
    if _instantiate(url) is None:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        what = f"scheme {scheme!r}" if scheme.isascii() and scheme.isalnum() else "its form"
        return f"not a notification URL Apprise accepts ({what}; see the Apprise wiki)"
    return None


def shown_url(url: str) -> str:
    """The URL as Apprise's privacy form shows it (secrets starred), without its options."""
    plugin = _instantiate(url)
    if plugin is None:
        return "(not a valid notification URL)"
    return str(plugin.url(privacy=True)).split("?", 1)[0]


def message(job: dict[str, Any]) -> tuple[str, str]:
    """The title and body of a notification about `job` (as GET /api/jobs/{id} shows it)."""
    state = str(job.get("state"))
    title = f"jobgate: {job.get('kind')} {state}"
    lines = [f"Job {job.get('id')} ({job.get('kind')}) of {job.get('owner')}: {state}"]
    if job.get("message") and job.get("message") != state:
        lines.append(str(job["message"]))
    if job.get("error"):
        lines.append(f"Error: {job['error']}")
    if job.get("result") is not None:
        text = json.dumps(job["result"], ensure_ascii=False)
        lines.append("Result: " + (text if len(text) <= _RESULT_CHARS
                                    else text[:_RESULT_CHARS] + "…"))
    outputs = [o for o in job.get("outputs") or [] if isinstance(o, dict)]
    if outputs:
        lines.append("Outputs: " + ", ".join(
            f"{o.get('name')} ({_size(o.get('size'))})" for o in outputs[:20]))
    return title, "\n".join(lines)


def _size(size: Any) -> str:
    value = float(size) if isinstance(size, int | float) else 0.0
    return f"{value / _MB:.1f} MB" if value >= _MB else f"{value / 1024:.1f} KB"


def attachments(job: dict[str, Any], folder: Path, max_mb: int | None) -> list[Path]:
    """The job's finished outputs to attach, in order, while they fit in `max_mb` in all
    (none with `max_mb` None); a file that is gone or outside the folder is left out."""
    if max_mb is None:
        return []
    room = max_mb * _MB
    found: list[Path] = []
    root = folder.resolve()
    for output in job.get("outputs") or []:
        if not isinstance(output, dict) or output.get("partial"):
            continue
        path = (folder / str(output.get("name", ""))).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            continue
        size = path.stat().st_size
        if size <= room:
            found.append(path)
            room -= size
    return found


_TYPES = {"completed": apprise.NotifyType.SUCCESS, "failed": apprise.NotifyType.FAILURE,
          "cancelled": apprise.NotifyType.WARNING}


async def send(url: str, job: dict[str, Any], files: list[Path], n: int, worker: str,
               timeout_s: float) -> Attempt:
    """One attempt: the notification of `job` to `url`, with `files` attached where the
    service takes them. Apprise is synchronous: it runs on a thread."""
    started, t0 = time.time(), time.monotonic()
    plugin = _instantiate(url)
    if plugin is None:
        return Attempt(n, started, 0.0, error="not a valid notification URL", worker=worker)
    errors: list[str] = []
    title, body = message(job)
    attach = apprise.AppriseAttachment([str(p) for p in files]) \
        if files and plugin.attachment_support else None
    sender = apprise.Apprise()
    sender.add(plugin)

    def run() -> bool:
        result = sender.notify(body=body, title=title, attach=attach,
                               notify_type=_TYPES.get(str(job.get("state")),
                                                      apprise.NotifyType.INFO))
        if not result:
            errors.extend(str(e.message)[:300] for e in result.logs()
                          if str(e.level).upper() in _BAD_LEVELS)
        return bool(result)

    try:
        ok = await asyncio.wait_for(asyncio.to_thread(run), timeout_s)
    except TimeoutError:
        ok, errors = False, [f"no answer within {timeout_s:g} s"]
    ms = round((time.monotonic() - t0) * 1000, 1)
    if ok:
        return Attempt(n, started, ms, worker=worker,
                       response=f"sent ({len(files) if attach else 0} attached)")
    return Attempt(n, started, ms, error="; ".join(errors[-2:]) or "not sent", worker=worker)
