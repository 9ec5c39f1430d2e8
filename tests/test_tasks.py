"""Tasks that must end do end, even when a cancel was lost on the way."""

from __future__ import annotations

import asyncio

from jobgate.tasks import cancel_and_wait


async def test_a_loop_that_lost_its_cancel_is_cancelled_again_until_it_ends():
    # As Python 3.11's wait_for does in a race (cpython #86296): the first cancel is
    # swallowed, and the loop goes back to a long sleep.
    cancels_seen = 0

    async def loop_that_swallows_one_cancel() -> None:
        nonlocal cancels_seen
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels_seen += 1
                if cancels_seen > 1:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    stubborn = asyncio.create_task(loop_that_swallows_one_cancel())
    plain = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([stubborn, plain]), 10)
    assert stubborn.cancelled() and plain.cancelled()
    assert cancels_seen == 2


async def test_tasks_already_ended_are_left_as_they_are():
    done = asyncio.create_task(asyncio.sleep(0, result=7))
    await done
    await cancel_and_wait([done])
    assert done.result() == 7
