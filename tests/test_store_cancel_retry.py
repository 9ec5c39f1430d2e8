"""Storage conformance, a user's moves: cancel, retry, delete, and the transition table
every change follows. Runs on every backend."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from jobgate.model import FINAL, IllegalMove, State, event_type
from jobgate.store.base import NotFound, Outcome
from storekit import (
    LEGAL,
    STATE_EVENTS,
    claim,
    claim_one,
    done,
    events_of,
    finished_jobs,
    running,
    state,
    submit,
)


async def test_cancel_of_a_queued_job_ends_it(store):
    job = await submit(store)
    cancelled = await store.cancel(job.id)
    assert cancelled.state is State.CANCELLED
    got = await store.get(job.id)
    assert got is not None and got.state is State.CANCELLED and got.finished_at is not None
    assert await events_of(store, job.id) == ["job.queued", "job.cancelled"]
    assert await claim(store) == []


async def test_cancel_of_a_running_job_asks_its_worker(store):
    job = await running(store)
    asked = await store.cancel(job.id)
    assert asked.state is State.RUNNING and asked.cancel_requested
    got = await store.get(job.id)
    assert got is not None and got.state is State.RUNNING and got.cancel_requested
    [event] = [e for e in await store.events_after(0) if e.type == "job.progress"]
    assert event.job_id == job.id and event.data["cancel_requested"] is True
    again = await store.cancel(job.id)  # asking twice is harmless
    assert again.state is State.RUNNING
    await store.finish(job.id, job.lease_token, done(State.CANCELLED))
    assert await state(store, job.id) is State.CANCELLED


async def test_cancel_of_a_finished_job_is_an_illegal_move(store):
    for final, job in (await finished_jobs(store)).items():
        with pytest.raises(IllegalMove):
            await store.cancel(job.id)
        assert await state(store, job.id) is final
    with pytest.raises(NotFound):
        await store.cancel("nope")


async def test_retry_of_a_failed_or_cancelled_job_queues_it_afresh(store):
    jobs = await finished_jobs(store)
    for final in (State.FAILED, State.CANCELLED):
        job = jobs[final]
        back = await store.retry(job.id)
        assert back.state is State.QUEUED
        got = await store.get(job.id)
        assert got is not None
        assert (got.state, got.attempt, got.error, got.finished_at, got.worker) == (
            State.QUEUED, 0, None, None, None)
        assert (await events_of(store, job.id))[-1] == "job.queued"
        again = await claim_one(store)
        assert (again.id, again.attempt) == (job.id, 1)


async def test_retry_of_a_completed_or_queued_job_is_an_illegal_move(store):
    completed = (await finished_jobs(store))[State.COMPLETED]
    queued = await submit(store)
    for job, was in ((completed, State.COMPLETED), (queued, State.QUEUED)):
        with pytest.raises(IllegalMove):
            await store.retry(job.id)
        assert await state(store, job.id) is was
    with pytest.raises(NotFound):
        await store.retry("nope")


async def test_retry_of_a_running_job_is_an_illegal_move(store):
    job = await running(store)
    with pytest.raises(IllegalMove):
        await store.retry(job.id)
    assert await state(store, job.id) is State.RUNNING


async def test_delete_removes_only_finished_jobs_with_their_logs(store):
    jobs = await finished_jobs(store)
    for job in jobs.values():
        await store.append_logs(job.id, ["a line"], cap=100)
        deleted = await store.delete(job.id)
        assert deleted.id == job.id
        assert await store.get(job.id) is None
        assert await store.logs(job.id) == []
    queued = await submit(store)
    active = await running(store)
    for job in (queued, active):
        with pytest.raises(IllegalMove):
            await store.delete(job.id)
        assert await store.get(job.id) is not None
    with pytest.raises(NotFound):
        await store.delete("nope")


# --- the transition table ------------------------------------------------------------------

async def test_every_state_change_follows_the_transition_table(store):
    """A seeded random walk of every verb on every job, legal or not: each change the
    store makes is in TRANSITIONS, every edge of the table is taken, and each job's events
    name exactly its moves."""
    rng = random.Random(42)
    tokens: dict[str, int] = {}
    taken: set[tuple[State, State]] = set()

    async def snapshot() -> dict[str, State]:
        return {j.id: j.state for j in (await store.list_jobs(None, limit=1000)).jobs}

    for _ in range(400):
        before = await snapshot()
        ids = sorted(before)
        target = rng.choice(ids) if ids else "nope"
        action = rng.choice(["submit", "submit_stale", "claim", "finish", "finish", "cancel",
                             "retry", "delete", "expire", "lose"])
        try:
            if action == "submit" or not ids:
                await submit(store, rng.choice(["alice", "bob"]), max_attempts=2)
            elif action == "submit_stale":
                await submit(store, run_at=time.time() - 100)
            elif action == "claim":
                for job in await claim(store, slots=rng.randint(1, 3)):
                    tokens[job.id] = job.lease_token
            elif action == "finish":
                live = sorted(i for i, st in before.items() if st is State.RUNNING)
                if live and rng.random() < 0.8:
                    target = rng.choice(live)
                outcome = rng.choice([State.COMPLETED, State.FAILED, State.CANCELLED,
                                      State.QUEUED])
                token = tokens.get(target, 0) - rng.choice([0, 0, 1])
                await store.finish(target, token, Outcome(outcome, retry_at=time.time()))
            elif action == "cancel":
                await store.cancel(target)
            elif action == "retry" and before[target] is not State.RUNNING:
                # (retry of a running job has its own test)
                await store.retry(target)
            elif action == "delete":
                await store.delete(target)
            elif action == "expire":
                await store.expire_queued(50)
            elif action == "lose":
                await store.recover(lost_workers=["w1"])
        except IllegalMove:
            pass
        after = await snapshot()
        for job_id, was in before.items():
            now = after.get(job_id)
            if now is None:
                assert was in FINAL, f"{job_id} deleted while {was}"
            elif now is not was:
                assert (was, now) in LEGAL, f"{job_id}: {was} → {now} by {action}"
                taken.add((was, now))

    assert taken == LEGAL
    history: dict[str, list[tuple[str, State]]] = {}
    for event in await store.events_after(0, limit=100_000):
        if event.type in STATE_EVENTS:
            assert event.job_id is not None
            history.setdefault(event.job_id, []).append((event.type, State(event.data["state"])))
    for job_id, moves in history.items():
        assert moves[0] == ("job.queued", State.QUEUED), job_id
        for (_, src), (type_, dst) in itertools.pairwise(moves):
            assert (src, dst) in LEGAL, f"{job_id}: {src} → {dst}"
            assert type_ == event_type(src, dst)
