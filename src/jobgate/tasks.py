"""Ending asyncio tasks for certain."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

_RECANCEL_S = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]]) -> None:
    """Cancel `tasks` and wait until every one has ended, cancelling again those that
    go on: on Python 3.11 a cancel that comes as a `wait_for` inside the task gets its
    result is lost (cpython #86296, fixed in 3.12), and a loop that swallowed it sleeps
    on, holding up the stop of a node or a server (the test suite met it)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_RECANCEL_S)
