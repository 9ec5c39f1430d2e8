"""A writer that holds SQLite's write lock past a lease (a process stopped mid-write, or
starved on a loaded machine) keeps every node from renewing: leases that run out while it
lasts are not lost, and the nodes' renewals that waited it out land before recovery
takes anything back (issue 12). Leases that ran out before it began still are."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobgate.model import State
from jobgate.store import store_for_url
from jobgate.store.base import Store
from storekit import claim_one, submit

LEASE_S = 1.0
GRACE_S = LEASE_S / 2


@contextmanager
def write_lock_held(path: Path) -> Iterator[threading.Event]:
    """Another process's writer holding the file's write lock until the event is set."""
    release, taken = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        taken.set()
        release.wait(30)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(10)
    try:
        yield release
    finally:
        release.set()
        holder.join()


async def open_store(path: Path) -> Store:
    store = store_for_url(f"sqlite:///{path}")
    await store.open()
    return store


async def test_a_lease_that_ran_out_while_the_database_was_held_is_not_lost(tmp_path):
    path = tmp_path / "jobgate.db"
    live, recoverer = await open_store(path), await open_store(path)
    try:
        job = await submit(live)
        run = await claim_one(live, lease_s=LEASE_S, worker="live")
        with write_lock_held(path) as release:
            # Both nodes write while it is held (heartbeats, every third of a lease).
            beats = [asyncio.ensure_future(submit(node, kind="small"))
                     for node in (live, recoverer)]
            await asyncio.sleep(2 * LEASE_S)  # the lease runs out while nobody can write
            recovery = asyncio.ensure_future(recoverer.recover(
                expired_before=time.time(), stall_grace_s=GRACE_S))
            await asyncio.sleep(0.05)
            release.set()
            await asyncio.gather(*beats)
        # The recovery that waited it out comes first; the live node's renewal, late
        # from a loaded machine, after it.
        assert await recovery == []
        assert await live.renew("live", {job.id: run.lease_token}, LEASE_S) == set()
        assert await recoverer.recover(stall_grace_s=GRACE_S) == []
        got = await live.get(job.id)
        assert got is not None and got.state is State.RUNNING
        assert got.lease_token == run.lease_token and got.worker == "live"
    finally:
        await live.close()
        await recoverer.close()


async def test_a_lease_not_renewed_after_the_stall_is_lost_once_the_grace_is_over(tmp_path):
    path = tmp_path / "jobgate.db"
    dead, recoverer = await open_store(path), await open_store(path)
    try:
        job = await submit(dead, max_attempts=2)
        await claim_one(dead, lease_s=LEASE_S, worker="dead")
        await dead.close()  # its node is gone: nothing renews that lease any more
        with write_lock_held(path) as release:
            beat = asyncio.ensure_future(submit(recoverer, kind="small"))
            await asyncio.sleep(2 * LEASE_S)
            release.set()
            await beat
        assert await recoverer.recover(stall_grace_s=GRACE_S) == []  # within the grace
        await asyncio.sleep(GRACE_S + 0.1)
        [recovered] = await recoverer.recover(stall_grace_s=GRACE_S)
        assert recovered.id == job.id
        got = await recoverer.get(job.id)
        assert got is not None and got.state is State.QUEUED
    finally:
        await recoverer.close()


async def test_a_lease_that_ran_out_before_the_stall_is_lost_at_once(tmp_path):
    path = tmp_path / "jobgate.db"
    dead, recoverer = await open_store(path), await open_store(path)
    try:
        job = await submit(dead)
        await claim_one(dead, lease_s=0.05, worker="dead")
        await dead.close()
        await asyncio.sleep(0.2)  # run out well before anyone held the database
        with write_lock_held(path) as release:
            beat = asyncio.ensure_future(submit(recoverer, kind="small"))
            await asyncio.sleep(0.3)
            release.set()
            await beat
        [recovered] = await recoverer.recover(stall_grace_s=GRACE_S)
        assert recovered.id == job.id
    finally:
        await recoverer.close()
