"""Storage conformance, logs and events: kept in order, capped, numbered in commit order,
heard by every node. Runs on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from typing import Any

import psycopg

from conftest import wait_for
from jobgate import moves
from jobgate.model import State
from jobgate.store import store_for_url
from jobgate.store.base import LogSize, Outcome, Store
from storekit import (
    NO_QUOTA,
    claim,
    claim_one,
    done,
    make_job,
    running,
    submit,
)


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


async def test_a_log_past_its_cap_keeps_its_head_and_tail_and_says_what_it_dropped(store):
    job = await running(store)
    assert await store.append_logs(job.id, [f"line {i}" for i in range(1, 5)], cap=6) == 1
    assert await store.log_size(job.id) == LogSize(4, None)
    assert await store.append_logs(job.id, [f"line {i}" for i in range(5, 9)], cap=6) == 5
    assert await store.append_logs(job.id, ["line 9", "line 10"], cap=6) == 9
    lines = await store.logs(job.id)
    note = "[jobgate] 4 more lines not kept (lines 4-7; worker.log_max_lines keeps the " \
        "first and the last lines)"
    assert lines == [(1, "line 1"), (2, "line 2"), (3, "line 3"), (4, note),
                     (8, "line 8"), (9, "line 9"), (10, "line 10")]
    assert await store.log_size(job.id) == LogSize(10, (4, 7))
    # Read on from any line, in pages: the gap line stands where the gap is.
    assert await store.logs(job.id, after=3, limit=2) == [(4, note), (8, "line 8")]
    assert await store.logs(job.id, after=4) == [(8, "line 8"), (9, "line 9"), (10, "line 10")]
    # Live clients got each line that was in the tail when it came (line 5 never was).
    logged = [(e.data["first"], e.data["lines"]) for e in await store.events_after(0)
              if e.type == "job.log"]
    assert logged == [(1, [f"line {i}" for i in range(1, 5)]),
                      (6, ["line 6", "line 7", "line 8"]), (9, ["line 9", "line 10"])]


async def test_a_line_redrawn_in_place_has_a_replace_event(store):
    job = await running(store)
    await store.append_logs(job.id, ["start", "  5%"], cap=100)
    await store.replace_logs(job.id, {2: " 50%"})
    await store.replace_logs(job.id, {2: "100%", 9: "not a line"})
    assert await store.logs(job.id) == [(1, "start"), (2, "100%")]
    assert await store.log_size(job.id) == LogSize(2, None)  # a redraw is no new line
    logged = [e.data for e in await store.events_after(0) if e.type == "job.log"]
    assert logged == [{"first": 1, "lines": ["start", "  5%"]},
                      {"first": 2, "lines": [" 50%"], "replace": True},
                      {"first": 2, "lines": ["100%"], "replace": True}]
    await store.replace_logs("nope", {1: "x"})
    assert await store.log_size("nope") is None


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


async def test_a_log_capped_before_the_upgrade_says_its_end_was_dropped(db_url):
    """A log capped by an older jobgate kept its first lines only: the migration gives it
    the gap it has, from past its last kept line to its last counted one."""
    store = store_for_url(db_url)
    await store.open()
    job = await running(store)
    await store.append_logs(job.id, [f"line {i}" for i in range(1, 5)], cap=100)
    await store.close()
    # The database as the older jobgate left it: 4 lines kept of 9 counted, no gap columns
    # (nor the nodes' memory columns of a later migration).
    old = ["UPDATE jobs SET log_count = 9", "ALTER TABLE jobs DROP COLUMN log_dropped_first",
           "ALTER TABLE jobs DROP COLUMN log_dropped_last",
           "ALTER TABLE nodes DROP COLUMN running_rss_mb",
           "ALTER TABLE nodes DROP COLUMN memory_available_mb"]
    if db_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as conn:
            for sql in [*old, "PRAGMA user_version = 10"]:
                conn.execute(sql)
            conn.commit()
    else:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for sql in [*old, "DELETE FROM jobgate_schema WHERE version >= 9"]:
                conn.execute(sql)
    store = store_for_url(db_url)
    await store.open()
    try:
        assert await store.log_size(job.id) == LogSize(9, (5, 9))
        assert (await store.logs(job.id))[-1] == (5, moves.gap_line((5, 9)))
    finally:
        await store.close()
