"""A Python kind for the stream benchmark: progress calls stamped with their own time."""

from __future__ import annotations

import random
import time
from typing import Any


def ticker(ctx: Any, count: int = 40, min_ms: int = 260, max_ms: int = 400) -> int:
    """`count` calls of ctx.progress(), a random 260-400 ms apart (more than the
    worker's 250 ms coalescing window, so each is written at once); each message is the
    call's time.time()."""
    for i in range(count):
        time.sleep(random.uniform(min_ms, max_ms) / 1000)
        ctx.progress(100.0 * (i + 1) / count, f"t={time.time():.6f}")
    return count
