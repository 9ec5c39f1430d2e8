"""Python kinds for the PostgreSQL benchmark (`function = "pg_kinds:..."`)."""

from __future__ import annotations

import asyncio
from typing import Any


async def noop(ctx: Any) -> None:
    """Does nothing: the same no-op as Procrastinate's task (both are coroutines)."""


async def sleep50(ctx: Any) -> None:
    """A 50 ms job that waits without using the CPU, for the nodes' scaling row."""
    await asyncio.sleep(0.05)
