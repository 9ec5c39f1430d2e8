"""Storage conformance, leases and recovery: renewal, lost workers, start timeouts.
Runs on every backend."""

from __future__ import annotations

import asyncio
import time

from jobgate.model import State
from storekit import (
    claim,
    claim_one,
    events_of,
    running,
    state,
    submit,
)


async def test_renew_extends_leases_and_names_the_jobs_to_stop(store, other_node):
    a = await submit(store, max_attempts=3)
    await submit(store)
    await submit(store)
    a1, b, c = await claim(store, lease_s=5)
    assert a1.id == a.id
    assert await store.renew("w1", {}, 30) == set()
    assert await store.renew("w1", {j.id: j.lease_token for j in (a1, b, c)}, 30) == set()
    renewed = await store.get(a.id)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > time.time() + 25
    await store.cancel(b.id)  # cancel requested
    await store.recover(lost_workers=["w1"])  # a: lease lost, queued again (b, c too)
    a2 = await claim_one(other_node, worker="w2")
    assert a2.id == a.id
    stop = await store.renew("w1", {a1.id: a1.lease_token, "nope": 1}, 30)
    assert stop == {a1.id, "nope"}
    assert await other_node.renew("w2", {a2.id: a2.lease_token}, 30) == set()
    still = await store.get(a.id)
    assert still is not None and still.worker == "w2"


async def test_renew_names_a_job_whose_cancel_was_requested(store):
    job = await running(store)
    await store.cancel(job.id)
    assert await store.renew("w1", {job.id: job.lease_token}, 30) == {job.id}


async def test_recover_requeues_an_expired_lease_while_attempts_remain(store):
    job = await submit(store, max_attempts=2)
    first = await claim_one(store, lease_s=0.05)
    await store.set_pid(job.id, first.lease_token, 4242)
    await asyncio.sleep(0.1)
    [recovered] = await store.recover()
    assert recovered.id == job.id and recovered.pid == 4242
    got = await store.get(job.id)
    assert got is not None
    assert (got.state, got.attempt, got.worker) == (State.QUEUED, 1, None)
    assert got.run_at <= time.time()
    assert (await events_of(store, job.id))[-1] == "job.retrying"
    second = await claim_one(store, lease_s=0.05)
    assert (second.attempt, second.lease_token > first.lease_token) == (2, True)
    await asyncio.sleep(0.1)
    await store.recover()
    got = await store.get(job.id)
    assert got is not None
    assert (got.state, got.error) == (State.FAILED, "worker lost")
    assert (await events_of(store, job.id))[-1] == "job.failed"


async def test_recover_cancels_a_job_whose_cancel_was_requested(store):
    await submit(store, max_attempts=5)
    job = await claim_one(store, lease_s=0.05)
    await store.cancel(job.id)
    await asyncio.sleep(0.1)
    await store.recover()
    assert await state(store, job.id) is State.CANCELLED


async def test_recover_leaves_live_leases_alone(store):
    job = await running(store)
    assert await store.recover() == []
    assert await store.recover(lost_workers=["someone-else"]) == []
    assert await state(store, job.id) is State.RUNNING


async def test_recover_never_takes_a_run_its_caller_still_holds(store):
    await submit(store, max_attempts=2)
    await submit(store, max_attempts=2)
    held, other = await claim(store, slots=2, lease_s=0.05, worker="w1")
    await asyncio.sleep(0.1)  # both leases ran out
    stale = {held.id: held.lease_token, other.id: other.lease_token - 1}
    [recovered] = await store.recover(["w1"], keep=stale)
    # Only a run of the same lease token is kept: `other` is held under an older one.
    assert recovered.id == other.id
    assert recovered.lease_token == other.lease_token, "the lost run's token, to reap it"
    assert await state(store, held.id) is State.RUNNING
    assert await state(store, other.id) is State.QUEUED


async def test_recover_spares_a_lease_that_ran_out_while_it_waited_for_the_database(store):
    await submit(store, max_attempts=2)
    looked_at = time.time()
    running = await claim_one(store, lease_s=0.05, worker="w1")
    await asyncio.sleep(0.1)  # its lease ran out after the caller decided to look
    # As when another writer stalled every node (no one could renew) while recovery waited.
    assert await store.recover(expired_before=looked_at) == []
    assert await state(store, running.id) is State.RUNNING
    [recovered] = await store.recover(expired_before=time.time())
    assert recovered.id == running.id
    assert await state(store, running.id) is State.QUEUED


async def test_recover_of_a_lost_worker_acts_at_once_on_its_jobs_only(store):
    await submit(store, max_attempts=2)
    await submit(store, max_attempts=1)
    await submit(store)
    lost = await claim(store, slots=2, worker="dead")
    alive = await claim_one(store, worker="alive")
    recovered = await store.recover(lost_workers=["dead"])
    assert {j.id for j in recovered} == {j.id for j in lost}
    assert await state(store, lost[0].id) is State.QUEUED
    assert await state(store, lost[1].id) is State.FAILED
    assert await state(store, alive.id) is State.RUNNING
    failed = await store.get(lost[1].id)
    assert failed is not None and failed.error == "worker lost"


async def test_expire_queued_fails_jobs_waiting_past_the_start_timeout(store):
    stale = await submit(store, run_at=time.time() - 120)
    fresh = await submit(store)
    delayed = await submit(store, run_at=time.time() + 3600)
    expired = await store.expire_queued(60)
    assert [j.id for j in expired] == [stale.id]
    got = await store.get(stale.id)
    assert got is not None and got.state is State.FAILED
    assert got.error is not None and "start_timeout" in got.error
    assert got.finished_at is not None
    assert (await events_of(store, stale.id))[-1] == "job.failed"
    assert await state(store, fresh.id) is State.QUEUED
    assert await state(store, delayed.id) is State.QUEUED
    assert await store.expire_queued(60) == []


async def test_renew_works_from_another_threads_event_loop(store):
    """A worker renews leases from a thread of its own (its loop may be busy)."""
    job = await running(store)
    stop = await asyncio.to_thread(
        asyncio.run, store.renew("w1", {job.id: job.lease_token, "nope": 1}, 60))
    assert stop == {"nope"}
    renewed = await store.get(job.id)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > time.time() + 55
