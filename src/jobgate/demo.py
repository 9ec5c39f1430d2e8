"""Demo Python kinds: they need nothing but Python, for trying jobgate and for tests."""

from __future__ import annotations

import asyncio
from typing import Any


def noop(ctx: Any) -> None:
    """Does nothing: the cheapest job there is."""


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
