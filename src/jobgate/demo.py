"""Demo Python kinds: they need nothing but Python, for trying jobgate, tests and benchmarks.

Like any Python kind, each runs in a process of the worker's pool unless its kind sets
`in_process = true`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


def noop(ctx: Any) -> None:
    """Does nothing: the cheapest job there is."""


def clock(ctx: Any) -> float:
    """Returns the time (`time.time()`) its code started: what start delays are read from."""
    return time.time()


async def countdown(ctx: Any, seconds: int = 10, fail: bool = False) -> dict[str, int]:
    """Counts down `seconds`, reporting progress each second; `fail` raises at the end."""
    for done in range(seconds):
        if ctx.cancelled:
            return {"counted": done}
        ctx.progress(100 * done / seconds, f"{seconds - done} s left")
        ctx.log(f"tick {done + 1}/{seconds}")
        await asyncio.sleep(1)
    if fail:
        raise RuntimeError("asked to fail")
    return {"counted": seconds}
