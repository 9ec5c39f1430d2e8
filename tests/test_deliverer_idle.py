"""An idle delivery loop sleeps: with no delivery due and no retry of its own ahead, it
looks at the outbox again when a job ends (or after `_POLL_S`), not at once. It used to
look a thousand times a second, which was most of an idle PostgreSQL node's CPU and, with
three nodes, made them slower than one (issue 19)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from jobgate import deliverer
from jobgate.deliverer import Deliverer


async def test_an_idle_deliverer_looks_again_when_a_job_ends(make_settings, open_queue,
                                                            monkeypatch):
    monkeypatch.setattr(deliverer, "_POLL_S", 60.0)
    queue, _ = await open_queue(make_settings(), worker=False)
    claims = 0
    looked = asyncio.Event()
    real = queue.store.claim_deliveries

    async def counting(*args: Any, **kw: Any) -> Any:
        nonlocal claims
        claims += 1
        looked.set()
        return await real(*args, **kw)

    monkeypatch.setattr(queue.store, "claim_deliveries", counting)
    task = asyncio.create_task(Deliverer(queue, "w1").run())
    try:
        await asyncio.wait_for(looked.wait(), 10)
        # A look that should not come: a short window is all there is to wait on (the
        # loop spun within microseconds).
        await asyncio.sleep(0.3)
        assert claims == 1
        looked.clear()
        job, _ = await queue.submit("alice", "noop")
        await queue.cancel(job.id)  # a job's end: the loop looks for its deliveries
        await asyncio.wait_for(looked.wait(), 10)
        assert claims == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
