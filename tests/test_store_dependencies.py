"""Dependencies and batches in the store, on both backends: a waiting job is queued but
outside the dispatch order (never claimed, no position, no turn) until every dependency
completed; a failed or cancelled dependency fails its dependants and theirs, in the
transaction that ends it; a dependency ending while its dependant is submitted never
leaves it waiting; a batch goes in whole or not at all and ends once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from jobgate.batches import Batch
from jobgate.dependencies import DependencyError
from jobgate.model import Job, State, new_id
from jobgate.store.base import QueueFull, Quota, Store
from storekit import NO_QUOTA, claim, claim_one, done, make_job, state, submit


async def submit_after(store: Store, *deps: Job, owner: str = "alice", **fields: Any
                       ) -> Job:
    job, created = await store.submit(
        make_job(owner, depends_on=[d.id for d in deps], **fields), NO_QUOTA)
    assert created
    return job


async def finish(store: Store, job: Job, final: State = State.COMPLETED) -> None:
    assert await store.finish(job.id, job.lease_token, done(final)) is final


async def test_a_waiting_job_is_queued_but_never_claimed_until_its_dependency_completed(store):
    first = await submit(store)
    second = await submit_after(store, first)
    assert second.state is State.QUEUED and second.message == "waiting for 1 job"
    assert (await store.stats()).waiting == 1
    # Not in the dispatch order: no queue key, no turn, and the worker does not wake for it.
    assert [k[0][2] for k in await store.queued_keys()] == [first.id]
    running = await claim(store)
    assert [j.id for j in running] == [first.id]
    assert await claim(store) == []
    await finish(store, running[0])
    released = await store.get(second.id)
    assert released is not None and released.state is State.QUEUED
    assert released.message is None and released.vt >= 1 and released.run_at >= first.run_at
    assert (await claim_one(store)).id == second.id
    queued = [e for e in await store.events_after(0)
              if e.job_id == second.id and e.type == "job.queued"]
    assert [e.data.get("waiting") for e in queued] == [1, None]  # waiting, then ready


async def test_the_message_counts_down_as_dependencies_complete(store):
    a, b = await submit(store), await submit(store)
    c = await submit_after(store, a, b)
    assert c.message == "waiting for 2 jobs"
    for job in await claim(store):
        if job.id == a.id:
            await finish(store, job)
    after_one = await store.get(c.id)
    assert after_one is not None and after_one.message == "waiting for 1 job"
    assert [k[0][2] for k in await store.queued_keys()] == []  # b runs, c waits


async def test_a_failed_dependency_fails_its_dependants_and_theirs(store):
    a = await submit(store)
    b = await submit_after(store, a)
    c = await submit_after(store, b)
    unrelated = await submit(store)
    jobs = {j.id: j for j in await claim(store)}
    assert set(jobs) == {a.id, unrelated.id}
    await finish(store, jobs[a.id], State.FAILED)
    for job, dep in ((b, a), (c, b)):
        got = await store.get(job.id)
        assert got is not None and got.state is State.FAILED
        assert got.error == f"dependency failed: {dep.id}"
    assert await state(store, unrelated.id) is State.RUNNING
    assert (await store.stats()).waiting == 0


async def test_a_cancelled_dependency_fails_its_dependants(store):
    a = await submit(store)
    b = await submit_after(store, a)
    await store.cancel(a.id)
    got = await store.get(b.id)
    assert got is not None and got.state is State.FAILED and got.error == \
        f"dependency failed: {a.id}"


async def test_a_dependency_that_already_failed_fails_the_new_job_at_once(store):
    a = await submit(store)
    await finish(store, await claim_one(store), State.FAILED)
    b = await submit_after(store, a)
    assert b.state is State.FAILED and b.error == f"dependency failed: {a.id}"
    types = [e.type for e in await store.events_after(0) if e.job_id == b.id]
    assert types == ["job.queued", "job.failed"]


async def test_a_completed_dependency_leaves_the_new_job_ready(store):
    a = await submit(store)
    await finish(store, await claim_one(store))
    b = await submit_after(store, a)
    assert b.state is State.QUEUED and b.message is None and b.vt >= 1
    assert (await claim_one(store)).id == b.id


async def test_an_unknown_dependency_is_refused_and_leaves_no_trace(store):
    with pytest.raises(DependencyError, match="no job 'NOPE' of yours"):
        await store.submit(make_job(depends_on=["NOPE"]), NO_QUOTA)
    assert (await store.list_jobs(None)).jobs == []


async def test_a_dependant_retried_by_hand_waits_again_for_its_retried_dependency(store):
    a = await submit(store)
    b = await submit_after(store, a)
    await finish(store, await claim_one(store), State.FAILED)
    with pytest.raises(Exception, match="retry that job first"):
        await store.retry(b.id)
    await store.retry(a.id)
    again = await store.retry(b.id)
    assert again.state is State.QUEUED and again.message == "waiting for 1 job"
    await finish(store, await claim_one(store))
    assert (await claim_one(store)).id == b.id


async def test_start_timeout_counts_from_when_a_waiting_job_became_ready(store):
    a = await submit(store)
    b = await submit_after(store, a)
    running = await claim_one(store)
    assert await store.expire_queued(0.0) == []  # b waits: it cannot time out waiting
    await finish(store, running)
    assert await state(store, b.id) is State.QUEUED
    assert await store.next_run_at() is not None


@pytest.mark.parametrize("rounds", [40])
async def test_a_dependency_ending_while_its_dependant_is_submitted_never_leaves_it_waiting(
        store, other_node, rounds):
    """The end on one node, the submit on another, at the same moment: whichever commits
    first, the dependant ends up ready (or failed), never waiting for a job that ended."""
    for i in range(rounds):
        dep = await submit(store, kind="solo")
        running = await claim_one(store, kinds=["solo"])
        final = State.COMPLETED if i % 2 == 0 else State.FAILED
        dependant = make_job(depends_on=[dep.id])
        _, (submitted, _) = await asyncio.gather(
            store.finish(running.id, running.lease_token, done(final)),
            other_node.submit(dependant, NO_QUOTA))
        got = await store.get(submitted.id)
        assert got is not None
        if final is State.COMPLETED:
            assert got.state is State.QUEUED and got.message is None, (i, got)
            assert any(k[0][2] == got.id for k in await store.queued_keys())
            await store.cancel(got.id)
        else:
            assert got.state is State.FAILED, (i, got)


# --- batches ------------------------------------------------------------------------------

def _batch(owner: str, jobs: list[Job]) -> Batch:
    return Batch(new_id(), owner, time.time(), len(jobs))


async def test_a_batch_goes_in_whole_and_ends_once(store):
    first = make_job()
    second = make_job(depends_on=[first.id])
    batch = _batch("alice", [first, second])
    stored = await store.submit_batch(batch, [first, second], NO_QUOTA)
    assert [j.id for j in stored] == [first.id, second.id]
    assert stored[1].message == "waiting for 1 job"
    got = await store.get_batch(batch.id)
    assert got is not None and got.state == "running" and got.counts == {"queued": 2}
    assert got.job_ids == (first.id, second.id)
    await finish(store, await claim_one(store))
    half = await store.get_batch(batch.id)
    assert half is not None and half.to_json()["summary"] == "50.0 % (1/2)"
    await finish(store, await claim_one(store))
    ended = await store.get_batch(batch.id)
    assert ended is not None and ended.state == "completed" and ended.ended_at is not None
    types = [e.type for e in await store.events_after(0) if e.type.startswith("batch.")]
    assert types == ["batch.created", "batch.completed"]
    last = next(e for e in await store.events_after(0) if e.type == "batch.completed")
    assert last.owner == "alice" and last.job_id is None and last.data["percent"] == 100.0


async def test_a_batch_over_the_quota_is_refused_whole_and_says_how_many_fit(store):
    await submit(store)
    jobs = [make_job() for _ in range(5)]
    with pytest.raises(QueueFull, match="3 of the batch's 5 jobs would fit"):
        await store.submit_batch(_batch("alice", jobs), jobs, Quota(per_user_queued=4))
    assert len((await store.list_jobs(None)).jobs) == 1
    fits = jobs[:3]
    assert len(await store.submit_batch(_batch("alice", fits), fits,
                                        Quota(per_user_queued=4))) == 3


async def test_a_batch_with_an_unknown_dependency_leaves_no_trace(store):
    jobs = [make_job(), make_job(depends_on=["GONE"])]
    batch = _batch("alice", jobs)
    with pytest.raises(DependencyError):
        await store.submit_batch(batch, jobs, NO_QUOTA)
    assert (await store.list_jobs(None)).jobs == []
    assert await store.get_batch(batch.id) is None
    assert [e for e in await store.events_after(0)] == []


async def test_the_last_two_jobs_of_a_batch_ending_at_once_on_two_nodes_end_it_once(
        store, other_node):
    for _ in range(10):
        jobs = [make_job(kind="solo"), make_job(kind="solo")]
        batch = _batch("alice", jobs)
        await store.submit_batch(batch, jobs, NO_QUOTA)
        a, b = await claim(store, kinds=["solo"])
        await asyncio.gather(store.finish(a.id, a.lease_token, done()),
                             other_node.finish(b.id, b.lease_token, done(State.FAILED)))
        ends = [e for e in await store.events_after(0)
                if e.type == "batch.completed" and e.data["batch_id"] == batch.id]
        assert len(ends) == 1 and ends[0].data["state"] == "failed"
