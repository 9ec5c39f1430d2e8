"""Storage conformance: one suite, written against `Store`, run against every backend.

Every test here uses only the `Store` interface and the `db_url` fixture, so a new backend
(PostgreSQL) passes by joining that fixture. Properties that only SQLite has (WAL, fsync,
migrations by `user_version`, fork) are in the last section, skipped for other backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import sqlite3
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conftest import wait_for
from jobgate.model import FINAL, TRANSITIONS, IllegalMove, Job, State, event_type, new_id
from jobgate.scheduler import Limits
from jobgate.store import store_for_url
from jobgate.store.base import Conflict, Node, NotFound, Outcome, QueueFull, Quota, Store
from jobgate.store.rows import from_json, to_json

KINDS = ["noop", "sleep", "big", "small", "solo"]
OPEN = Limits(max_running=1000)
NO_QUOTA = Quota()
STATE_EVENTS = {"job.queued", "job.started", "job.completed", "job.failed", "job.cancelled",
                "job.retrying"}
LEGAL = {(src, dst) for src, dsts in TRANSITIONS.items() for dst in dsts}

_last_stamp = 0.0


def make_job(owner: str = "alice", kind: str = "noop", **fields: Any) -> Job:
    """A new job as `JobQueue.submit` would hand it over, with ids strictly by creation."""
    global _last_stamp
    now = time.time()
    _last_stamp = max(now, _last_stamp + 0.002)
    base: dict[str, Any] = {"args": {"n": 1}, "created_at": now, "run_at": now}
    return Job(id=new_id(_last_stamp), kind=kind, owner=owner, **{**base, **fields})


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = store_for_url(db_url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def other_node(db_url: str, store: Store) -> AsyncIterator[Store]:
    """A second connection to the same database, as a second worker node has."""
    s = store_for_url(db_url)
    await s.open()
    yield s
    await s.close()


async def submit(store: Store, owner: str = "alice", kind: str = "noop", **fields: Any) -> Job:
    job, created = await store.submit(make_job(owner, kind, **fields), NO_QUOTA)
    assert created
    return job


async def claim(store: Store, slots: int = 100, limits: Limits = OPEN, lease_s: float = 30,
                kinds: list[str] | None = None, worker: str = "w1") -> list[Job]:
    return await store.claim(worker, slots, limits, lease_s, KINDS if kinds is None else kinds)


async def claim_one(store: Store, **kw: Any) -> Job:
    jobs = await claim(store, slots=1, **kw)
    assert len(jobs) == 1, jobs
    return jobs[0]


async def running(store: Store) -> Job:
    """A fresh job, claimed (the only way into `running`), whatever else is queued."""
    job = await submit(store, kind="solo")
    claimed = await claim_one(store, kinds=["solo"])
    assert claimed.id == job.id
    return claimed


async def state(store: Store, job_id: str) -> State:
    job = await store.get(job_id)
    assert job is not None
    return job.state


async def events_of(store: Store, job_id: str) -> list[str]:
    return [e.type for e in await store.events_after(0) if e.job_id == job_id]


def done(state_: State = State.COMPLETED, **kw: Any) -> Outcome:
    return Outcome(state_, message=state_.value, **kw)


# --- submit --------------------------------------------------------------------------------

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


# --- claim ---------------------------------------------------------------------------------

async def test_claim_starts_the_job_with_a_lease_a_new_token_and_the_next_attempt(store):
    job = await submit(store)
    before = time.time()
    [got] = await claim(store, lease_s=30, worker="node-a")
    assert got.id == job.id and got.state is State.RUNNING
    assert (got.worker, got.attempt) == ("node-a", 1)
    assert got.lease_token > job.lease_token
    assert got.lease_expires_at is not None
    assert before + 29 < got.lease_expires_at < time.time() + 31
    assert got.started_at is not None and before - 1 < got.started_at <= time.time()
    stored = await store.get(job.id)
    assert stored is not None
    assert (stored.state, stored.worker, stored.lease_token, stored.attempt) == (
        State.RUNNING, "node-a", got.lease_token, 1)
    assert await events_of(store, job.id) == ["job.queued", "job.started"]
    assert await claim(store) == []


async def test_claim_honours_global_max_running_across_workers(store, other_node):
    for owner in ["alice", "bob", "carol"] * 2:
        await submit(store, owner)
    limits = Limits(max_running=2)
    assert len(await claim(store, slots=1, limits=limits)) == 1
    assert len(await claim(other_node, slots=5, limits=limits, worker="w2")) == 1
    assert await claim(store, slots=5, limits=limits) == []
    assert await claim(other_node, slots=5, limits=limits, worker="w2") == []
    assert len(await store.running_jobs()) == 2
    assert [j.worker for j in await store.running_jobs("w2")] == ["w2"]


async def test_claim_takes_no_more_than_its_slots(store):
    for _ in range(5):
        await submit(store)
    assert len(await claim(store, slots=3)) == 3
    assert await claim(store, slots=0) == []


async def test_claim_honours_per_user_running(store):
    for owner in ["alice"] * 4 + ["bob"] * 4:
        await submit(store, owner)
    limits = Limits(max_running=10, per_user_running=2)
    got = await claim(store, limits=limits)
    assert Counter(j.owner for j in got) == {"alice": 2, "bob": 2}
    assert await claim(store, limits=limits) == []
    await submit(store, "carol")
    assert [j.owner for j in await claim(store, limits=limits)] == ["carol"]


async def test_claim_honours_per_kind_max_running(store):
    for kind in ["big", "big", "big", "small", "small"]:
        await submit(store, "alice", kind)
    limits = Limits(max_running=10, kind_max_running={"big": 1, "small": 5})
    got = await claim(store, limits=limits)
    assert Counter(j.kind for j in got) == {"big": 1, "small": 2}
    assert await claim(store, limits=limits) == []
    first_big = next(j for j in got if j.kind == "big")
    await store.finish(first_big.id, first_big.lease_token, done())
    assert [j.kind for j in await claim(store, limits=limits)] == ["big"]


async def test_claim_honours_the_memory_budget(store):
    for mb in (600, 600, 300, 200):
        await submit(store, memory_mb=mb)
    limits = Limits(max_running=10, memory_budget_mb=1000)
    got = await claim(store, limits=limits)
    # The second 600 does not fit: it waits at the head and the smaller ones wait behind
    # it (scheduler.admit), so it is not starved.
    assert [j.memory_mb for j in got] == [600]
    assert (await store.stats()).memory_reserved_mb == 600
    assert await claim(store, limits=limits) == []
    await store.finish(got[0].id, got[0].lease_token, done())
    assert [j.memory_mb for j in await claim(store, limits=limits)] == [600, 300]


async def test_claim_takes_only_the_workers_kinds(store):
    await submit(store, kind="noop")
    sleeper = await submit(store, kind="sleep")
    assert await claim(store, kinds=[]) == []
    assert [j.id for j in await claim(store, kinds=["sleep", "unknown"])] == [sleeper.id]
    assert await claim(store, kinds=["sleep"]) == []


async def test_claim_honours_every_limit_at_the_same_time(store):
    plan = [("alice", "big", 400), ("alice", "big", 400), ("alice", "small", 100),
            ("alice", "small", 100), ("bob", "big", 400), ("bob", "small", 700),
            ("carol", "small", 200)]
    jobs = [await submit(store, owner, kind, memory_mb=mb) for owner, kind, mb in plan]
    limits = Limits(max_running=3, per_user_running=2, memory_budget_mb=1000,
                    kind_max_running={"big": 1})
    got = await claim(store, slots=10, limits=limits)
    # Turn order a1 b1 c1 a2 b2 a3 a4: b1 is big (cap 1), a2 big, b2 over budget, so it
    # waits for memory and a3, a4 may not pass it.
    assert {j.id for j in got} == {jobs[0].id, jobs[6].id}
    assert await claim(store, slots=10, limits=limits) == []


async def test_limits_hold_while_two_nodes_claim_concurrently(store, other_node):
    rng = random.Random(5)
    owners, sizes = ["alice", "bob", "carol"], {"big": 500, "small": 200}
    for _ in range(24):
        kind = rng.choice(["big", "small"])
        await submit(store, rng.choice(owners), kind, memory_mb=sizes[kind])
    limits = Limits(max_running=4, per_user_running=2, memory_budget_mb=1000,
                    kind_max_running={"big": 1})
    nodes = [(store, "w1"), (other_node, "w2")]
    for _ in range(24):
        await asyncio.gather(*(claim(s, slots=3, limits=limits, worker=w) for s, w in nodes))
        now_running = await store.running_jobs()
        assert 0 < len(now_running) <= 4
        assert max(Counter(j.owner for j in now_running).values()) <= 2
        assert sum(j.memory_mb for j in now_running) <= 1000
        assert sum(j.kind == "big" for j in now_running) <= 1
        victim = rng.choice(now_running)
        assert await store.finish(victim.id, victim.lease_token, done()) is State.COMPLETED
    stats = await store.stats()
    assert stats.counts["completed"] == 24 and stats.counts["queued"] == 0


async def test_claim_order_is_priority_then_fair_between_users_then_fifo(store):
    alice = [await submit(store, "alice") for _ in range(5)]
    bob = await submit(store, "bob")
    vip = await submit(store, "carol", priority=5)
    order = [(await claim_one(store)).id for _ in range(7)]
    assert order == [vip.id, alice[0].id, bob.id, *(j.id for j in alice[1:])]


async def test_one_claim_returns_its_jobs_in_dispatch_order(store):
    a = [await submit(store, "alice") for _ in range(3)]
    b = [await submit(store, "bob") for _ in range(2)]
    low = await submit(store, "carol", priority=-1)
    got = await claim(store, slots=10)
    assert [j.id for j in got] == [a[0].id, b[0].id, a[1].id, b[1].id, a[2].id, low.id]


async def test_a_user_arriving_later_is_not_starved_by_a_long_backlog(store):
    backlog = [await submit(store, "alice") for _ in range(10)]
    for _ in range(3):
        await claim_one(store)
    late = await submit(store, "bob")
    # alice's third job is running: bob's first takes that turn, before her fourth.
    assert (await claim_one(store)).id == late.id
    assert (await claim_one(store)).id == backlog[3].id


async def test_fairness_survives_a_high_priority_job_of_the_busy_user(store):
    backlog = [await submit(store, "alice") for _ in range(5)]
    urgent = await submit(store, "alice", priority=5)
    assert (await claim_one(store)).id == urgent.id
    bob = await submit(store, "bob")
    order = [(await claim_one(store)).id for _ in range(6)]
    assert order.index(bob.id) <= 1, [j.id for j in backlog]


async def test_fairness_survives_jobs_skipped_by_a_kind_limit(store):
    for _ in range(5):
        await submit(store, "alice", "big")
    await submit(store, "alice", "small")
    limits = Limits(max_running=10, kind_max_running={"big": 1})
    got = await claim(store, limits=limits)
    assert sorted(j.kind for j in got) == ["big", "small"]
    await submit(store, "bob", "big")
    bigs = []
    for _ in range(3):
        big = next(j for j in await store.running_jobs() if j.kind == "big")
        await store.finish(big.id, big.lease_token, done())
        bigs.append((await claim_one(store, limits=limits)).owner)
    assert "bob" in bigs[:2], bigs


async def test_one_claim_fills_every_slot_the_limits_allow(store):
    for _ in range(20):
        await submit(store, "alice", priority=5)
    bob = await submit(store, "bob")
    got = await claim(store, slots=4, limits=Limits(max_running=4, per_user_running=1))
    assert [j.owner for j in got] == ["alice", "bob"] and got[1].id == bob.id


async def test_claim_ignores_jobs_not_yet_due_and_next_run_at_reports_them(store):
    assert await store.next_run_at() is None
    later = await submit(store, run_at=time.time() + 0.3)
    assert await store.next_run_at() == pytest.approx(later.run_at)
    assert await claim(store) == []
    now = await submit(store)
    assert [j.id for j in await claim(store)] == [now.id]
    assert await store.next_run_at() == pytest.approx(later.run_at)
    await asyncio.sleep(max(0.0, later.run_at - time.time()) + 0.02)
    assert [j.id for j in await claim(store)] == [later.id]
    assert await store.next_run_at() is None


async def test_queued_keys_are_the_dispatch_keys_of_queued_jobs(store):
    c = await running(store)
    a = await submit(store, priority=1)
    b = await submit(store, "bob", run_at=time.time() + 60)
    keys = {key[2]: (key, run_at) for key, run_at in await store.queued_keys()}
    assert set(keys) == {a.id, b.id} and c.id not in keys
    stored_a = await store.get(a.id)
    assert stored_a is not None and keys[a.id][0] == stored_a.dispatch_key
    assert keys[b.id][1] == pytest.approx(b.run_at)


# --- finish, progress and fencing ----------------------------------------------------------

async def test_finish_completed_persists_the_outcome(store):
    job = await running(store)
    outcome = Outcome(State.COMPLETED, result={"frames": 10}, message="completed",
                      peak_memory_mb=42.5, outputs=["out.mp4"])
    finished = await store.finish(job.id, job.lease_token, outcome)
    assert finished is State.COMPLETED
    got = await store.get(job.id)
    assert got is not None
    assert (got.state, got.result, got.outputs, got.peak_memory_mb, got.progress,
            got.error) == (State.COMPLETED, {"frames": 10}, ["out.mp4"], 42.5, 100.0, None)
    assert got.finished_at is not None and got.started_at is not None
    assert got.finished_at >= got.started_at
    assert got.lease_expires_at is None
    events = [e for e in await store.events_after(0) if e.job_id == job.id]
    assert events[-1].type == "job.completed"
    assert events[-1].data["result"] == {"frames": 10}


async def test_a_result_comes_back_exactly_as_it_was_given(store):
    # Ints past 64 bits and non-ASCII text too (the JSON writer falls back for them).
    result = {"big": 2**70, "negative": -(2**64), "text": "été ✓ 🎬", "ratio": 0.1,
              "nested": [[], {}, None, True]}
    job = await running(store)
    assert await store.finish(job.id, job.lease_token, done(result=result)) is State.COMPLETED
    got = await store.get(job.id)
    assert got is not None and got.result == result
    assert type(got.result["big"]) is int
    [event] = [e for e in await store.events_after(0)
               if e.job_id == job.id and e.type == "job.completed"]
    assert event.data["result"] == result


def test_json_text_reads_back_what_was_written():
    for value in [{"a": 1}, 2**70, "\ud800 lone surrogate", [1.5, None], {"é": "✓"}]:
        assert from_json(to_json(value)) == value
    # Text written before orjson, by json.dumps: NaN and a lone surrogate escaped.
    assert from_json('{"x": "\\ud800"}') == {"x": "\ud800"}
    nan = from_json('[NaN]')[0]
    assert nan != nan


async def test_finish_failed_and_cancelled_persist(store):
    job = await running(store)
    await store.finish(job.id, job.lease_token, Outcome(State.FAILED, error="exit code 3"))
    got = await store.get(job.id)
    assert got is not None and (got.state, got.error) == (State.FAILED, "exit code 3")
    assert got.finished_at is not None
    job = await running(store)
    await store.finish(job.id, job.lease_token, done(State.CANCELLED))
    assert await state(store, job.id) is State.CANCELLED
    assert (await events_of(store, job.id))[-1] == "job.cancelled"


async def test_finish_with_a_stale_token_does_nothing(store):
    job = await submit(store, max_attempts=3)
    first = await claim_one(store)
    await store.recover(lost_workers=["w1"])  # w1 is declared dead; the job goes back
    second = await claim_one(store, worker="w2")
    assert second.id == job.id and second.lease_token > first.lease_token
    n_events = len(await store.events_after(0))
    assert await store.finish(job.id, first.lease_token, done()) is None
    await store.progress(job.id, first.lease_token, 50.0, "from the dead")
    got = await store.get(job.id)
    assert got is not None
    assert (got.state, got.worker, got.progress, got.message) == (State.RUNNING, "w2", None,
                                                                  None)
    assert len(await store.events_after(0)) == n_events
    assert await store.finish(job.id, second.lease_token, done()) is State.COMPLETED
    assert await store.finish(job.id, second.lease_token, done(State.FAILED)) is None
    assert await state(store, job.id) is State.COMPLETED


async def test_finish_of_an_unknown_job_is_none(store):
    assert await store.finish("nope", 1, done()) is None


async def test_a_retry_waits_behind_its_owners_queued_peers(store):
    first = await submit(store, max_attempts=3)
    peers = [await submit(store) for _ in range(2)]
    job = await claim_one(store)
    assert job.id == first.id
    retry_at = time.time()
    back = await store.finish(job.id, job.lease_token,
                              Outcome(State.QUEUED, error="exit code 1", retry_at=retry_at,
                                      message="retrying"))
    assert back is State.QUEUED
    got = await store.get(job.id)
    assert got is not None
    assert (got.state, got.attempt, got.error, got.worker) == (State.QUEUED, 1, "exit code 1",
                                                              None)
    assert got.run_at == pytest.approx(retry_at)
    assert got.lease_token > job.lease_token
    assert (await events_of(store, job.id))[-1] == "job.retrying"
    order = [(await claim_one(store)).id for _ in range(3)]
    assert order == [peers[0].id, peers[1].id, first.id]
    again = await store.get(first.id)
    assert again is not None and again.attempt == 2


async def test_a_retry_in_backoff_is_not_claimed_before_its_time(store):
    job = await running(store)
    retry_at = time.time() + 60
    await store.finish(job.id, job.lease_token, Outcome(State.QUEUED, retry_at=retry_at))
    assert await claim(store) == []
    assert await store.next_run_at() == pytest.approx(retry_at)


async def test_a_handed_back_job_does_not_count_the_attempt(store):
    job = await running(store)
    await store.finish(job.id, job.lease_token,
                       Outcome(State.QUEUED, retry_at=time.time(), hand_back=True))
    got = await store.get(job.id)
    assert got is not None and (got.state, got.attempt) == (State.QUEUED, 0)
    assert (await claim_one(store)).attempt == 1


async def test_progress_is_stored_and_announced(store):
    job = await running(store)
    await store.progress(job.id, job.lease_token, 42.0, "step 2 of 5")
    got = await store.get(job.id)
    assert got is not None and (got.progress, got.message) == (42.0, "step 2 of 5")
    await store.progress(job.id, job.lease_token, None, "still going")
    got = await store.get(job.id)
    assert got is not None and (got.progress, got.message) == (42.0, "still going")
    events = [e for e in await store.events_after(0) if e.type == "job.progress"]
    assert [(e.data["progress"], e.data["message"]) for e in events] == [
        (42.0, "step 2 of 5"), (None, "still going")]


async def test_a_progress_event_may_carry_the_jobs_current_memory(store):
    job = await running(store)
    await store.progress(job.id, job.lease_token, None, None, rss_mb=61.5)
    await store.progress(job.id, job.lease_token, 10.0, "a step")
    got = await store.get(job.id)
    assert got is not None and (got.progress, got.message) == (10.0, "a step")
    events = [e.data for e in await store.events_after(0) if e.type == "job.progress"]
    assert events == [{"progress": None, "message": None, "rss_mb": 61.5},
                      {"progress": 10.0, "message": "a step"}]


async def test_recent_peaks_are_a_kinds_last_completed_jobs_newest_first(store):
    async def finish(kind: str, state: State, peak: float | None) -> None:
        await submit(store, kind=kind)
        job = await claim_one(store, kinds=[kind])
        await store.finish(job.id, job.lease_token, Outcome(state, peak_memory_mb=peak))

    for peak in (10.0, 30.0, 20.0, 40.5):
        await finish("big", State.COMPLETED, peak)
    await finish("big", State.COMPLETED, None)  # a Python job: nothing measured
    await finish("big", State.FAILED, 999.0)  # only completed jobs count
    await finish("small", State.COMPLETED, 5.0)
    assert await store.recent_peaks("big", 3) == [40.5, 20.0, 30.0]
    assert await store.recent_peaks("big", 100) == [40.5, 20.0, 30.0, 10.0]
    assert await store.recent_peaks("small", 100) == [5.0]
    assert await store.recent_peaks("noop", 100) == []


# --- leases --------------------------------------------------------------------------------

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


# --- cancel, retry, delete -----------------------------------------------------------------

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


async def finished_jobs(store: Store) -> dict[State, Job]:
    """One job in each final state."""
    out = {}
    for final in (State.COMPLETED, State.FAILED, State.CANCELLED):
        job = await running(store)
        await store.finish(job.id, job.lease_token, done(final))
        out[final] = job
    return out


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


# --- logs ----------------------------------------------------------------------------------

async def test_logs_are_kept_in_order_and_read_after_a_line(store):
    job = await running(store)
    await store.append_logs(job.id, ["one", "two"], cap=100)
    await store.append_logs(job.id, ["three"], cap=100)
    assert await store.logs(job.id) == [(1, "one"), (2, "two"), (3, "three")]
    assert await store.logs(job.id, after=2) == [(3, "three")]
    assert await store.logs(job.id, after=3) == []
    assert await store.logs(job.id, limit=2) == [(1, "one"), (2, "two")]
    events = [e for e in await store.events_after(0) if e.type == "job.log"]
    assert [(e.job_id, e.data["lines"]) for e in events] == [
        (job.id, ["one", "two"]), (job.id, ["three"])]


async def test_logs_past_the_cap_are_counted_not_kept(store):
    job = await running(store)
    await store.append_logs(job.id, [f"line {i}" for i in range(1, 5)], cap=3)
    await store.append_logs(job.id, ["line 5", "line 6"], cap=3)
    lines = await store.logs(job.id)
    assert lines[:3] == [(1, "line 1"), (2, "line 2"), (3, "line 3")]
    assert len(lines) == 4
    n, note = lines[3]
    assert n == 4 and "3 more lines" in note
    logged = [line for e in await store.events_after(0) if e.type == "job.log"
              for line in e.data["lines"]]
    assert logged == ["line 1", "line 2", "line 3"]


async def test_logs_of_an_unknown_job_are_empty(store):
    await store.append_logs("nope", ["x"], cap=10)
    assert await store.logs("nope") == []


# --- events --------------------------------------------------------------------------------

async def test_events_cover_a_whole_life_in_strictly_increasing_seq(store):
    job = await submit(store, max_attempts=2)
    first = await claim_one(store)
    await store.progress(job.id, first.lease_token, 10.0, "warming up")
    await store.append_logs(job.id, ["hello"], cap=100)
    await store.finish(job.id, first.lease_token, Outcome(State.QUEUED, retry_at=time.time()))
    second = await claim_one(store)
    await store.finish(job.id, second.lease_token, Outcome(State.FAILED, error="boom"))
    await store.retry(job.id)
    third = await claim_one(store)
    await store.finish(job.id, third.lease_token, done())
    other = await submit(store)
    await store.cancel(other.id)

    events = await store.events_after(0)
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)) and seqs[0] > 0
    assert [e.type for e in events] == [
        "job.queued", "job.started", "job.progress", "job.log", "job.retrying", "job.started",
        "job.failed", "job.queued", "job.started", "job.completed", "job.queued",
        "job.cancelled"]
    assert all(e.owner == "alice" and e.ts > 0 for e in events)
    assert events[-1].job_id == other.id
    assert [e.seq for e in await store.events_after(seqs[4])] == seqs[5:]
    assert [e.seq for e in await store.events_after(seqs[4], limit=2)] == seqs[5:7]
    assert await store.events_after(seqs[-1]) == []
    doc = events[0].to_json()
    assert (doc["type"], doc["seq"], doc["job_id"]) == ("job.queued", seqs[0], job.id)


async def test_listen_delivers_every_committed_event_in_seq_order(db_url):
    store = store_for_url(db_url)
    heard: list[int] = []
    store.listen(lambda events: heard.extend(e.seq for e in events))
    await store.open()
    try:
        jobs = await asyncio.gather(*(store.submit(make_job(o), NO_QUOTA)
                                      for o in ["alice", "bob", "carol"] * 5))
        assert all(created for _, created in jobs)
        for job in await claim(store, slots=6):
            await store.finish(job.id, job.lease_token, done())
        # A caller sees its own change's events once its call returns.
        assert heard == [e.seq for e in await store.events_after(0)]
        assert heard == sorted(heard) and len(heard) == 15 + 6 + 6
    finally:
        await store.close()


async def test_listen_hears_other_nodes_events(store, other_node):
    heard: list[int] = []
    got_all = asyncio.Event()

    def on_events(events: list[Any]) -> None:
        heard.extend(e.seq for e in events)
        if len(heard) >= 3:
            got_all.set()

    other_node.listen(on_events)
    job = await submit(store)
    claimed = await claim_one(store)
    await store.finish(job.id, claimed.lease_token, done())
    await asyncio.wait_for(got_all.wait(), 5)
    assert heard == [e.seq for e in await store.events_after(0)]


async def test_two_nodes_writing_at_once_each_hear_every_event_once(store, other_node):
    """Both nodes submit, claim and finish in bursts; each hears all of both nodes' events,
    gap-free and in order (a node's idle look for the other's events must never skip)."""
    heard: dict[str, list[int]] = {"a": [], "b": []}
    store.listen(lambda events: heard["a"].extend(e.seq for e in events))
    other_node.listen(lambda events: heard["b"].extend(e.seq for e in events))

    async def burst(node: Store, owner: str) -> None:
        await asyncio.gather(*(node.submit(make_job(owner), NO_QUOTA) for _ in range(20)))
        for job in await claim(node, slots=10, worker=owner):
            await node.finish(job.id, job.lease_token, done())

    async def trickle(node: Store, owner: str) -> None:
        # One commit after another while the other node sits idle and looks every so often.
        for _ in range(150):
            await node.submit(make_job(owner), NO_QUOTA)

    for _ in range(2):
        await trickle(other_node, "bob")
        await trickle(store, "alice")
    for _ in range(10):
        await asyncio.gather(burst(store, "alice"), burst(other_node, "bob"))
        await asyncio.sleep(random.choice([0, 0.01, 0.06]))
    top = max(e.seq for e in await store.events_after(0, limit=10_000))

    def caught_up() -> bool:
        return all(seqs and seqs[-1] == top for seqs in heard.values())

    await wait_for(caught_up)
    for seqs in heard.values():
        assert seqs == list(range(1, top + 1))


async def test_event_numbers_are_never_reused_after_pruning(store, other_node):
    await submit(store)
    await submit(other_node)
    first_top = max(e.seq for e in await store.events_after(0))
    assert await store.prune_events(time.time() + 1) == 2
    later = await submit(other_node)
    again = await submit(store)
    seqs = [e.seq for e in await store.events_after(0) if e.job_id in (later.id, again.id)]
    assert len(seqs) == 2 and min(seqs) > first_top and len(set(seqs)) == 2


async def test_prune_events_drops_only_old_events(store):
    await submit(store)
    cut = time.time() + 0.001
    assert await store.prune_events(cut - 3600) == 0
    await asyncio.sleep(0.01)
    newer = await submit(store)
    assert await store.prune_events(cut) == 1
    assert [e.job_id for e in await store.events_after(0)] == [newer.id]


# --- lists, stats, retention ---------------------------------------------------------------

async def test_list_jobs_newest_first_with_filters_and_cursor(store):
    mine = [await submit(store, "alice", "noop" if i % 2 else "sleep") for i in range(5)]
    theirs = await submit(store, "bob")
    page = await store.list_jobs("alice", limit=2)
    assert [j.id for j in page.jobs] == [mine[4].id, mine[3].id] and page.next is not None
    page2 = await store.list_jobs("alice", before=page.next, limit=2)
    assert [j.id for j in page2.jobs] == [mine[2].id, mine[1].id]
    page3 = await store.list_jobs("alice", before=page2.next, limit=2)
    assert [j.id for j in page3.jobs] == [mine[0].id] and page3.next is None
    everyone = await store.list_jobs(None)
    assert [j.id for j in everyone.jobs] == [theirs.id, *(j.id for j in reversed(mine))]
    assert {j.id for j in (await store.list_jobs("alice", kind="sleep")).jobs} == {
        mine[0].id, mine[2].id, mine[4].id}
    claimed = await claim_one(store)
    assert [j.id for j in (await store.list_jobs(None, state=State.RUNNING)).jobs] == [
        claimed.id]
    assert (await store.list_jobs("carol")).jobs == []


async def test_stats_count_states_and_reserved_memory(store):
    for mb in (100, 200, 300, 0):
        await submit(store, memory_mb=mb)
    await submit(store, "bob")
    a, b, c, d = await claim(store, slots=4)
    await store.finish(a.id, a.lease_token, done())
    await store.finish(b.id, b.lease_token, Outcome(State.FAILED, error="x"))
    stats = await store.stats()
    assert stats.counts == {"queued": 1, "running": 2, "completed": 1, "failed": 1,
                            "cancelled": 0}
    assert stats.memory_reserved_mb == c.memory_mb + d.memory_mb == 500
    assert stats.finished_last_min == 1
    assert stats.success_rate == pytest.approx(0.5)
    assert stats.avg_duration_s is not None and 0 <= stats.avg_duration_s < 5


async def test_finished_before_and_delete_many_clean_old_jobs(store):
    jobs = await finished_jobs(store)
    active = await submit(store)
    ids = await store.finished_before(time.time() + 1)
    assert set(ids) == {j.id for j in jobs.values()}
    assert await store.finished_before(time.time() - 3600) == []
    assert set(await store.finished_before(time.time() - 3600, keep_per_user=1)) == {
        jobs[State.COMPLETED].id, jobs[State.FAILED].id}
    assert await store.finished_before(time.time() + 1, owner="bob") == []
    await store.append_logs(jobs[State.FAILED].id, ["x"], cap=10)
    assert await store.delete_many([*ids, active.id]) == 3
    assert await store.logs(jobs[State.FAILED].id) == []
    assert await state(store, active.id) is State.QUEUED
    assert await store.delete_many([]) == 0


async def test_nothing_acknowledged_is_lost_across_a_reopen(db_url):
    store = store_for_url(db_url)
    await store.open()
    queued = await submit(store)
    active = await running(store)
    last = (await store.events_after(0))[-1].seq
    await store.close()
    store = store_for_url(db_url)
    await store.open()
    try:
        assert await state(store, queued.id) is State.QUEUED
        assert await state(store, active.id) is State.RUNNING
        await store.cancel(queued.id)
        assert (await store.events_after(last))[0].seq > last
    finally:
        await store.close()


# --- users and tokens ----------------------------------------------------------------------

async def test_users_and_tokens(store):
    alice = await store.add_user("alice", "hash-a", admin=True)
    assert (alice.name, alice.admin) == ("alice", True)
    await store.add_user("bob", None, admin=False)
    with pytest.raises(Conflict):
        await store.add_user("alice", "other", admin=False)
    got = await store.get_user("alice")
    assert got is not None and (got.name, got.admin, got.password_hash) == ("alice", True,
                                                                           "hash-a")
    assert await store.get_user("nobody") is None
    await store.add_token("bob", "token-hash-1")
    await store.add_token("bob", "token-hash-2")
    for token in ("token-hash-1", "token-hash-2"):
        user = await store.user_for_token(token)
        assert user is not None and (user.name, user.admin) == ("bob", False)
    assert await store.user_for_token("unknown") is None
    with pytest.raises(NotFound):
        await store.add_token("nobody", "token-hash-3")


# --- worker nodes and the schema version -------------------------------------------------

def make_node(name: str = "n1", pid: int = 101, slots: int = 3) -> Node:
    return Node(name, "host-a", pid, slots, "0.1.0", time.time())


async def test_a_node_registers_heartbeats_and_leaves(store, other_node):
    before = time.time()
    await store.heartbeat(make_node())
    [node] = await other_node.nodes()  # another node (the API's) sees it
    assert (node.name, node.host, node.pid, node.slots, node.version) == (
        "n1", "host-a", 101, 3, "0.1.0")
    assert before <= node.heartbeat_at <= time.time()
    assert (node.busy, node.running) == (0, ())
    await asyncio.sleep(0.01)
    await other_node.heartbeat(make_node(pid=202, slots=5))  # restarted under the same name
    [again] = await store.nodes()
    assert (again.pid, again.slots) == (202, 5) and again.heartbeat_at > node.heartbeat_at
    assert await store.remove_node("n1") is True
    assert await store.remove_node("n1") is False
    assert await other_node.nodes() == []


async def test_nodes_list_the_jobs_each_runs(store):
    for name in ("n1", "n2", "n3"):
        await store.heartbeat(make_node(name))
    a1, b1, a2 = [await submit(store, o) for o in ("alice", "bob", "alice")]
    first = await claim(store, slots=2, worker="n1")
    second = await claim(store, slots=1, worker="n2")
    assert {j.id for j in first} == {a1.id, b1.id} and [j.id for j in second] == [a2.id]
    nodes = {n.name: n for n in await store.nodes()}
    assert nodes["n1"].running == tuple(sorted((a1.id, b1.id))) and nodes["n1"].busy == 2
    assert (nodes["n2"].running, nodes["n2"].busy) == ((a2.id,), 1)
    assert (nodes["n3"].running, nodes["n3"].busy) == ((), 0)
    # Seen by bob: only his jobs are named, every job is counted.
    mine = {n.name: n for n in await store.nodes(owner="bob")}
    assert (mine["n1"].running, mine["n1"].busy) == ((b1.id,), 2)
    assert (mine["n2"].running, mine["n2"].busy) == ((), 1)
    job = next(j for j in first if j.id == b1.id)
    await store.finish(job.id, job.lease_token, Outcome(State.COMPLETED))
    nodes = {n.name: n for n in await store.nodes()}
    assert (nodes["n1"].running, nodes["n1"].busy) == ((a1.id,), 1)


async def test_only_nodes_with_a_recent_heartbeat_are_live(store):
    await store.heartbeat(make_node("old"))
    await asyncio.sleep(0.3)
    between = time.time()
    await store.heartbeat(make_node("new"))
    assert [n.name for n in await store.nodes(alive_within_s=0.2)] == ["new"]
    assert [n.name for n in await store.nodes()] == ["new", "old"]
    assert await store.forget_nodes(between) == 1
    assert [n.name for n in await store.nodes()] == ["new"]


async def test_heartbeat_works_from_another_threads_event_loop(store):
    """A worker heartbeats from its lease thread, whose loop is not the store's."""
    await asyncio.to_thread(asyncio.run, store.heartbeat(make_node()))
    assert [n.name for n in await store.nodes(alive_within_s=60)] == ["n1"]


async def test_schema_version_is_read_without_migrating(db_url):
    store = store_for_url(db_url)
    latest = store.latest_schema_version()
    assert latest >= 2
    assert await store.schema_version() == 0  # nothing created by looking
    assert await store.schema_version() == 0
    await store.open()
    try:
        assert await store.schema_version() == latest
    finally:
        await store.close()
    assert await store.schema_version() == latest


# --- SQLite only ---------------------------------------------------------------------------

@pytest.fixture
def sqlite_path(db_url: str) -> str:
    if not db_url.startswith("sqlite://"):
        pytest.skip("SQLite-only property")
    return db_url.removeprefix("sqlite:///")


async def _pragma(store: Store, name: str) -> Any:
    return await store._call(  # type: ignore[attr-defined]
        lambda tx: tx.conn.execute(f"PRAGMA {name}").fetchone()[0], write=False)


async def test_sqlite_uses_wal_and_full_sync_by_default(sqlite_path, store):
    with contextlib.closing(sqlite3.connect(sqlite_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert await _pragma(store, "synchronous") == 2  # FULL


async def test_sqlite_normal_durability_trades_the_fsync(sqlite_path):
    from jobgate.store.sqlite import SqliteStore

    store = SqliteStore(sqlite_path, durability="normal")
    await store.open()
    try:
        assert await _pragma(store, "synchronous") == 1  # NORMAL
    finally:
        await store.close()


async def test_sqlite_migrates_to_the_latest_user_version_once(sqlite_path, db_url, store):
    from jobgate.store.sqlite import latest_version

    await submit(store)
    with contextlib.closing(sqlite3.connect(sqlite_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version() >= 1
    again = store_for_url(db_url)
    await again.open()  # an up-to-date file is opened as is
    try:
        assert len((await again.list_jobs(None)).jobs) == 1
    finally:
        await again.close()


async def test_sqlite_refuses_a_newer_schema(sqlite_path, db_url):
    from jobgate.store.sqlite import SchemaTooNew, latest_version

    with contextlib.closing(sqlite3.connect(sqlite_path)) as conn:
        conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
    store = store_for_url(db_url)
    with pytest.raises(SchemaTooNew, match="upgrade jobgate"):
        await store.open()
    await store.close()


async def test_sqlite_waits_out_another_writer_instead_of_failing(sqlite_path, store):
    blocker = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(submit(store))
        await asyncio.sleep(0.3)
        assert not pending.done()
        blocker.execute("COMMIT")
        job = await asyncio.wait_for(pending, 10)
    finally:
        blocker.close()
    assert await state(store, job.id) is State.QUEUED


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_sqlite_store_cannot_be_used_across_fork(sqlite_path, store):
    await submit(store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # the child: any use of the parent's store must be refused
        code = 1
        try:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(store.get("x"))
            except RuntimeError as exc:
                code = 0 if "fork" in str(exc) else 2
            finally:
                loop.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len((await store.list_jobs(None)).jobs) == 1  # the parent's store still works


# --- PostgreSQL only -----------------------------------------------------------------------

@pytest.fixture
def pg_url(db_url: str) -> str:
    if not db_url.startswith("postgresql://"):
        pytest.skip("PostgreSQL-only property")
    return db_url


async def test_postgres_migrates_to_the_latest_version_once(pg_url, store):
    import psycopg

    from jobgate.store.postgres import latest_version

    again = store_for_url(pg_url)
    await again.open()  # a second node starting: nothing to do
    await again.close()
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        cur = await conn.execute("SELECT version FROM jobgate_schema ORDER BY version")
        assert [r[0] for r in await cur.fetchall()] == list(range(1, latest_version() + 1))


async def test_postgres_refuses_a_newer_schema(pg_url, store):
    import psycopg

    from jobgate.store.base import SchemaTooNew
    from jobgate.store.postgres import latest_version

    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute("INSERT INTO jobgate_schema (version) VALUES (%s)",
                           (latest_version() + 1,))
    newer = store_for_url(pg_url)
    with pytest.raises(SchemaTooNew, match="newer than this jobgate"):
        await newer.open()


async def test_postgres_url_spellings_choose_the_backend(pg_url):
    from jobgate.store.postgres import PostgresStore

    assert isinstance(store_for_url(pg_url), PostgresStore)
    assert isinstance(store_for_url(pg_url.replace("postgresql://", "postgres://")),
                      PostgresStore)


async def test_renew_works_from_another_threads_event_loop(store):
    """A worker renews leases from a thread of its own (its loop may be busy)."""
    job = await running(store)
    stop = await asyncio.to_thread(
        asyncio.run, store.renew("w1", {job.id: job.lease_token, "nope": 1}, 60))
    assert stop == {"nope"}
    renewed = await store.get(job.id)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > time.time() + 55


async def test_finish_and_claim_fills_the_slots_its_ends_free_in_one_call(store):
    limits = Limits(max_running=2)
    for _ in range(3):
        await submit(store)
    a, b = await claim(store, limits=limits)
    [waiting] = [key[2] for key, _ in await store.queued_keys()]
    stale = (b.id, b.lease_token + 1, done())  # a lease that moved on ends nothing
    ended, claimed = await store.finish_and_claim(
        [(a.id, a.lease_token, done()), stale], "w1", 2, limits, 30, KINDS)
    assert ended == [State.COMPLETED, None]
    # a's slot went to the waiting job; b still runs, so max_running 2 leaves no more room.
    assert [j.id for j in claimed] == [waiting]
    still = await store.get(b.id)
    assert still is not None and still.state is State.RUNNING
    assert await events_of(store, a.id) == ["job.queued", "job.started", "job.completed"]
    assert await store.finish_and_claim([], "w1", 2, limits, 30, KINDS) == ([], [])
