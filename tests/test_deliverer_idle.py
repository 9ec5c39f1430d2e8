"""The delivery loop leaves an outbox with nothing due alone: it once looked again at
once whenever no retry was pending, a write transaction after another (an idle server
spent 60-70 % of a core on it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from jobgate.config import Settings
from jobgate.deliverer import _POLL_S, idle_s
from jobgate.worker import Worker


def test_with_no_retry_pending_the_outbox_is_looked_at_once_a_poll() -> None:
    assert idle_s(0.0, 1_000.0) == _POLL_S
    assert idle_s(999.0, 1_000.0) == _POLL_S  # a retry due in the past was just claimed


def test_a_retry_due_sooner_than_a_poll_is_waited_for_exactly() -> None:
    assert idle_s(1_000.25, 1_000.0) == 0.25
    assert idle_s(1_060.0, 1_000.0) == _POLL_S


async def test_an_idle_worker_claims_the_outbox_about_once_a_second(
    make_settings: Callable[..., Settings], open_queue: Callable[..., Any]
) -> None:
    queue, _ = await open_queue(make_settings(), worker=False)
    claims: list[float] = []
    claim = queue.store.claim_deliveries

    async def counted(*args: Any, **kwargs: Any) -> Any:
        claims.append(time.monotonic())
        return await claim(*args, **kwargs)

    queue.store.claim_deliveries = counted
    worker = Worker(queue, name="idle")
    task = asyncio.create_task(worker.run())
    try:
        while len(claims) < 3:
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await task
    # Three looks at an empty outbox span two polls at least (a loaded machine only
    # makes them rarer); the spinning loop made hundreds in that time.
    assert claims[2] - claims[0] >= 2 * _POLL_S * 0.9
