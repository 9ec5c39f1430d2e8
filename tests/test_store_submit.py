"""Storage conformance, submit: what a job is stored as, idempotency and unique keys,
queue quotas, and many submits at once. Runs on every backend (`store`, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from jobgate.model import State
from jobgate.store.base import Outcome, QueueFull, Quota
from storekit import (
    NO_QUOTA,
    claim,
    claim_one,
    done,
    make_job,
    state,
    submit,
)


async def test_submit_stores_the_job_queued_and_emits_job_queued(store):
    job = make_job("alice", "sleep", args={"seconds": 3}, priority=2, memory_mb=64,
                   max_attempts=3, unique_key="u1")
    saved, created = await store.submit(job, NO_QUOTA)
    assert created and saved.id == job.id and saved.state is State.QUEUED
    got = await store.get(job.id)
    assert got is not None
    assert (got.kind, got.owner, got.args, got.priority, got.memory_mb, got.max_attempts,
            got.unique_key, got.attempt) == ("sleep", "alice", {"seconds": 3}, 2, 64, 3, "u1", 0)
    assert got.created_at == pytest.approx(job.created_at)
    assert got.run_at == pytest.approx(job.run_at)
    assert got.vt >= 1
    [event] = await store.events_after(0)
    assert (event.type, event.job_id, event.owner) == ("job.queued", job.id, "alice")
    assert event.data["state"] == "queued" and event.data["priority"] == 2


async def test_get_of_an_unknown_job_is_none(store):
    assert await store.get("nope") is None


async def test_a_nul_character_finds_nothing_and_is_kept_in_text(store, db_url):
    # PostgreSQL's text cannot hold a NUL, SQLite's can: lookups with one find nothing on
    # both, and text written with one is kept (as U+FFFD on PostgreSQL).
    nul = "\ufffd" if db_url.startswith("postgresql") else "\x00"
    first, second = await submit(store, "bob"), await submit(store, "bob")
    assert await store.get(first.id + "\x00") is None
    assert await store.get_user("bob\x00") is None
    assert (await store.list_jobs("bob\x00")).jobs == []
    assert (await store.list_jobs("bob", kind="noop\x00")).jobs == []
    assert [j.id for j in (await store.list_jobs("bob", before=second.id + "\x00")).jobs] \
        == [second.id, first.id], "before a cursor with a NUL: up to its prefix"
    assert (await store.list_jobs("bob", before="\x00")).jobs == []
    job = await claim_one(store)
    await store.progress(job.id, job.lease_token, 50, "half\x00way")
    assert (await store.get(job.id)).message == f"half{nul}way"
    await store.append_logs(job.id, ["a\x00b", "c"], cap=100)
    assert await store.logs(job.id) == [(1, f"a{nul}b"), (2, "c")]
    await store.finish(job.id, job.lease_token,
                       Outcome(State.FAILED, error="boom\x00", message="failed\x00"))
    done = await store.get(job.id)
    assert (done.state, done.error, done.message) == (State.FAILED, f"boom{nul}", f"failed{nul}")


async def test_queue_assigns_ids_sortable_by_creation(make_settings, open_queue):
    queue, _ = await open_queue(make_settings(), worker=False)
    jobs = await asyncio.gather(*(queue.submit("alice", "noop") for _ in range(50)))
    ids = [job.id for job, _ in jobs]
    created = [job.created_at for job, _ in jobs]
    assert created == sorted(created)
    assert ids == sorted(ids)


async def test_idempotency_key_returns_the_first_job_of_the_same_owner(store):
    first, created = await store.submit(make_job(idempotency_key="k1"), NO_QUOTA)
    assert created
    again, created = await store.submit(make_job(args={"n": 2}, idempotency_key="k1"), NO_QUOTA)
    assert (again.id, created) == (first.id, False)
    assert again.args == {"n": 1}
    other, created = await store.submit(make_job("bob", idempotency_key="k1"), NO_QUOTA)
    assert created and other.id != first.id and other.owner == "bob"
    assert [e.type for e in await store.events_after(0)] == ["job.queued", "job.queued"]


async def test_idempotency_key_holds_after_the_job_finished_and_when_the_queue_is_full(store):
    first, _ = await store.submit(make_job(idempotency_key="k1"), NO_QUOTA)
    job = await claim_one(store)
    await store.finish(job.id, job.lease_token, done())
    again, created = await store.submit(make_job(idempotency_key="k1"), NO_QUOTA)
    assert (again.id, created, again.state) == (first.id, False, State.COMPLETED)
    await submit(store)
    full = Quota(max_queued=1)
    again, created = await store.submit(make_job(idempotency_key="k1"), full)
    assert (again.id, created) == (first.id, False)


async def test_unique_key_dedupes_only_among_active_jobs(store):
    first, created = await store.submit(make_job(unique_key="video-1"), NO_QUOTA)
    assert created
    dup, created = await store.submit(make_job(unique_key="video-1"), NO_QUOTA)
    assert (dup.id, created) == (first.id, False)
    job = await claim_one(store)
    dup, created = await store.submit(make_job(unique_key="video-1"), NO_QUOTA)
    assert (dup.id, created, dup.state) == (first.id, False, State.RUNNING)
    await store.finish(job.id, job.lease_token, done())
    fresh, created = await store.submit(make_job(unique_key="video-1"), NO_QUOTA)
    assert created and fresh.id != first.id
    _, created = await store.submit(make_job(unique_key="video-2"), NO_QUOTA)
    assert created


async def test_unique_key_never_hands_back_another_users_job(store):
    alices, _ = await store.submit(make_job("alice", unique_key="video-1"), NO_QUOTA)
    bobs, created = await store.submit(make_job("bob", unique_key="video-1"), NO_QUOTA)
    assert bobs.owner == "bob"
    assert created and bobs.id != alices.id


async def test_max_queued_refuses_with_queue_full(store):
    quota = Quota(max_queued=2)
    for owner in ("alice", "bob"):
        await store.submit(make_job(owner), quota)
    with pytest.raises(QueueFull, match=r"^queue full.*\b2/2$"):
        await store.submit(make_job("carol"), quota)
    assert (await store.stats()).counts["queued"] == 2
    assert len(await store.events_after(0)) == 2  # nothing announced for the refused job
    await claim_one(store)  # running jobs do not count against the queue
    await store.submit(make_job("carol"), quota)


async def test_per_user_queued_refuses_only_that_user(store):
    quota = Quota(per_user_queued=2)
    await store.submit(make_job("alice"), quota)
    await store.submit(make_job("alice"), quota)
    with pytest.raises(QueueFull, match=r"queue full.*\b2/2$"):
        await store.submit(make_job("alice"), quota)
    await store.submit(make_job("bob"), quota)
    page = await store.list_jobs("alice")
    assert len(page.jobs) == 2


# Concurrent calls of one process may share a transaction (group commit): each must still
# get its own result, and limits hold exactly inside one group.

async def test_concurrent_submits_each_get_their_own_result_and_quotas_stay_exact(store):
    quota = Quota(max_queued=12, per_user_queued=5)
    owners = ["alice"] * 8 + ["bob"] * 8 + ["carol"] * 4
    jobs = [make_job(owner) for owner in owners]
    results = await asyncio.gather(*(store.submit(job, quota) for job in jobs),
                                   return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, QueueFull) for r in refused)
    assert all(created and job.id == sent.id for (job, created), sent in
               zip(made, [j for j, r in zip(jobs, results, strict=True)
                          if not isinstance(r, BaseException)], strict=True))
    per_owner = Counter(job.owner for job, _ in made)
    assert sum(per_owner.values()) == 12 and max(per_owner.values()) <= 5
    assert (await store.stats()).counts["queued"] == 12
    queued = [e for e in await store.events_after(0) if e.type == "job.queued"]
    assert sorted(e.job_id for e in queued) == sorted(job.id for job, _ in made)


async def test_concurrent_submits_with_one_idempotency_key_make_one_job(store):
    results = await asyncio.gather(*(store.submit(make_job(args={"n": i}, idempotency_key="k"),
                                                  NO_QUOTA) for i in range(10)))
    assert len({job.id for job, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    assert (await store.stats()).counts["queued"] == 1


async def test_concurrent_finishes_each_persist_their_own_outcome(store):
    for _ in range(8):
        await submit(store, max_attempts=3)
    jobs = await claim(store)
    assert len(jobs) == 8
    outcomes = [done(), done(State.FAILED, error="boom"), done(State.CANCELLED),
                Outcome(State.QUEUED, retry_at=time.time(), message="again"),
                done(result={"n": 4}), done(), done(), done()]
    tokens = [job.lease_token for job in jobs]
    tokens[5] += 1  # a stale lease: this end must change nothing
    calls = [store.finish(job.id, token, outcome)
             for job, token, outcome in zip(jobs, tokens, outcomes, strict=True)]
    calls.append(store.finish(jobs[6].id, jobs[6].lease_token, done(State.FAILED)))
    results = await asyncio.gather(*calls)
    expected = [State.COMPLETED, State.FAILED, State.CANCELLED, State.QUEUED, State.COMPLETED,
                State.RUNNING, State.COMPLETED, State.COMPLETED]
    for job, result, want in zip(jobs, results[:8], expected, strict=True):
        assert await state(store, job.id) is want
        assert result is (None if want is State.RUNNING else want)
    assert results[-1] is None  # the same run ended twice: the first end counts
    got = await store.get(jobs[4].id)
    assert got is not None and (got.result, got.progress) == ({"n": 4}, 100.0)
    got = await store.get(jobs[1].id)
    assert got is not None and (got.error, got.finished_at is not None) == ("boom", True)
    ends = Counter(e.type for e in await store.events_after(0)
                   if e.type in ("job.completed", "job.failed", "job.cancelled",
                                 "job.retrying"))
    assert ends == {"job.completed": 4, "job.failed": 1, "job.cancelled": 1,
                    "job.retrying": 1}
