"""Leases at the edges, on both backends: a claim that waited, a worker that slept.

A lease is what keeps another node from taking a job back from a live worker: it must
count from the moment the claim commits, and a node must never take back a job that it
runs itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from jobgate.model import Job, new_id
from jobgate.scheduler import Limits
from jobgate.store import store_for_url
from jobgate.store.base import Quota, Store
from jobgate.store.postgres import _CLAIM_LOCK

LEASE_S = 1.0


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = store_for_url(db_url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def other_node(db_url: str, store: Store) -> AsyncIterator[Store]:
    """A second connection to the same database, as another worker node has."""
    s = store_for_url(db_url)
    await s.open()
    yield s
    await s.close()


async def submit(store: Store, kind: str = "noop") -> Job:
    now = time.time()
    job, _ = await store.submit(Job(id=new_id(now), kind=kind, owner="alice", args={},
                                    created_at=now, run_at=now), Quota())
    return job


@contextlib.contextmanager
def claims_held(db_url: str) -> Iterator[None]:
    """Hold what a claim must wait for, from another connection, until the block ends: the
    claim lock on PostgreSQL, the write lock on SQLite."""
    if db_url.startswith("postgresql"):
        with psycopg.connect(db_url) as conn:  # a transaction until the block ends
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_LOCK,))
            yield
            conn.rollback()
        return
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def test_a_claim_that_waited_longer_than_a_lease_still_gets_a_whole_lease(
        db_url, store, other_node):
    job = await submit(store)
    with claims_held(db_url):
        claim: asyncio.Task[Any] = asyncio.create_task(
            store.claim("node-a", 1, Limits(max_running=10), LEASE_S, ["noop"]))
        # Held past a whole lease on purpose: that is the wait being tested.
        held_until = time.monotonic() + LEASE_S * 1.5
        while time.monotonic() < held_until:
            assert not claim.done(), "the claim did not wait for the lock"
            await asyncio.sleep(0.05)
        released = time.time()
    [claimed] = await claim
    returned = time.time()
    assert claimed.id == job.id
    stored = await store.get(job.id)
    assert stored is not None and stored.lease_expires_at is not None
    assert released + LEASE_S <= stored.lease_expires_at <= returned + LEASE_S
    assert claimed.lease_expires_at == pytest.approx(stored.lease_expires_at)
    assert stored.started_at is not None and stored.started_at >= released
    # So another node, looking at once, finds a live lease and takes nothing back.
    assert await other_node.recover() == []
