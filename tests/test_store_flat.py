"""Costs that stay flat as the history grows (issue 19): the per-state counts the store
keeps beside the jobs (sqlite_011, postgres_009) say what a count over the jobs would,
through every move; and the list pages, now walked along the new indexes, are the same
pages as before: newest first, each filter's jobs once, none missing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from jobgate.model import Job, State
from jobgate.store.base import Node, Quota, Store
from storekit import claim_one, done, make_job, running, submit


async def _all_jobs(store: Store) -> list[Job]:
    jobs: list[Job] = []
    cursor = None
    while True:
        page = await store.list_jobs(None, before=cursor, limit=7)
        jobs.extend(page.jobs)
        if page.next is None:
            return jobs
        cursor = page.next


async def _counts_agree(store: Store) -> dict[str, int]:
    counts = {s: n for s, n in (await store.stats()).counts.items() if n}
    assert counts == dict(Counter(j.state.value for j in await _all_jobs(store)))
    return counts


async def test_state_counts_follow_every_move(store):
    queued = [await submit(store, owner=f"u{i % 3}") for i in range(5)]
    # At once: one grouped insert of several rows (one statement on PostgreSQL).
    await asyncio.gather(*(store.submit(make_job("u9"), Quota()) for _ in range(3)))
    assert await _counts_agree(store) == {"queued": 8}

    job = await running(store)
    assert (await _counts_agree(store))["running"] == 1
    await store.finish(job.id, job.lease_token, done(State.FAILED))
    await store.cancel(queued[0].id)
    await store.retry(job.id)
    assert await _counts_agree(store) == {"queued": 8, "cancelled": 1}

    first = await claim_one(store)
    await store.finish(first.id, first.lease_token, done())
    await store.delete(queued[0].id)
    # A heartbeat folds PostgreSQL's count deltas: the sums stay what they were.
    await store.heartbeat(Node("n1", "host-a", 1, 4, "0.1.0", time.time()))
    assert await _counts_agree(store) == {"queued": 7, "completed": 1}
    await store.heartbeat(Node("n1", "host-a", 1, 4, "0.1.0", time.time()))
    assert await _counts_agree(store) == {"queued": 7, "completed": 1}


async def test_filtered_pages_walk_each_filters_jobs_newest_first(store):
    for i in range(24):
        await submit(store, owner=f"u{i % 3}", kind="noop" if i % 4 else "sleep")
    for i in range(9):
        job = await claim_one(store)
        await store.finish(job.id, job.lease_token,
                           done(State.FAILED if i % 2 else State.COMPLETED))
    everything = await _all_jobs(store)
    assert [j.id for j in everything] == sorted((j.id for j in everything), reverse=True)
    for owner, state, kind in [("u1", None, None), ("u2", State.QUEUED, None),
                               ("u0", State.COMPLETED, None), (None, State.QUEUED, None),
                               (None, State.FAILED, None), (None, None, "sleep"),
                               ("u1", None, "sleep"), ("u0", State.QUEUED, "noop")]:
        pages: list[str] = []
        cursor = None
        while True:
            page = await store.list_jobs(owner, state, kind, cursor, 2)
            pages.extend(j.id for j in page.jobs)
            if page.next is None:
                break
            cursor = page.next
        expected = [j.id for j in everything
                    if (owner is None or j.owner == owner)
                    and (state is None or j.state == state)
                    and (kind is None or j.kind == kind)]
        assert pages == expected, (owner, state, kind)
        assert expected, (owner, state, kind)
