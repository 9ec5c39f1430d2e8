"""Storage conformance, the rest of the interface: lists, stats, retention, users and
tokens, worker nodes, the schema version. Runs on every backend."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from jobgate.model import State
from jobgate.store import store_for_url
from jobgate.store.base import Conflict, Node, NotFound, Outcome
from nodekit import write_row
from storekit import (
    claim,
    claim_one,
    done,
    finished_jobs,
    running,
    state,
    submit,
)


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


async def test_stats_count_the_last_hours_and_days_ends_by_state(store):
    await finished_jobs(store)
    stats = await store.stats()
    each = {"completed": 1, "failed": 1, "cancelled": 1}
    assert stats.ended_last_hour == stats.ended_last_day == each


async def test_an_end_two_hours_ago_counts_in_the_day_and_two_days_ago_in_neither(
        store, db_url):
    jobs = await finished_jobs(store)
    for final, ago_s in ((State.COMPLETED, 2 * 3600), (State.FAILED, 2 * 86400)):
        write_row(db_url, "UPDATE jobs SET finished_at = ? WHERE id = ?",
                  (time.time() - ago_s, jobs[final].id))
    stats = await store.stats()
    assert stats.ended_last_hour == {"completed": 0, "failed": 0, "cancelled": 1}
    assert stats.ended_last_day == {"completed": 1, "failed": 0, "cancelled": 1}


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


async def test_a_heartbeats_memory_reads_back_and_an_older_nodes_is_none(store, other_node):
    """Each heartbeat writes the node's jobs' and machine's memory; a node that reports
    none (an older version) reads back None, even over a row that had some."""
    await store.heartbeat(dataclasses.replace(make_node(), running_rss_mb=1234.5,
                                              memory_available_mb=3456))
    await store.heartbeat(make_node("n2"))
    nodes = {n.name: n for n in await other_node.nodes()}
    assert (nodes["n1"].running_rss_mb, nodes["n1"].memory_available_mb) == (1234.5, 3456)
    assert (nodes["n2"].running_rss_mb, nodes["n2"].memory_available_mb) == (None, None)
    await store.heartbeat(dataclasses.replace(make_node(), running_rss_mb=0.0,
                                              memory_available_mb=10_000_000))
    n1, _ = await other_node.nodes(alive_within_s=60, owner="bob")
    assert (n1.running_rss_mb, n1.memory_available_mb) == (0.0, 10_000_000)
    await store.heartbeat(make_node())
    n1, _ = await store.nodes()
    assert (n1.name, n1.running_rss_mb, n1.memory_available_mb) == ("n1", None, None)


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
