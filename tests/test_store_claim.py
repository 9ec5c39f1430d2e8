"""Storage conformance, claim: leases, every limit across nodes, dispatch order and
fairness, jobs not yet due. Runs on every backend."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest

from jobgate.model import State
from jobgate.scheduler import Limits
from storekit import (
    claim,
    claim_one,
    done,
    events_of,
    running,
    submit,
)


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
