"""What only one backend has: SQLite's WAL, fsync, migrations by `user_version`, fork;
PostgreSQL's migrations and URL spellings (each skipped on the other backend)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import warnings
from typing import Any

import pytest

from jobgate.model import State
from jobgate.store import store_for_url
from jobgate.store.base import Store
from storekit import (
    claim_one,
    state,
    submit,
)


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


async def test_postgres_renews_the_free_leases_at_once_and_a_held_row_when_it_is_free(
        pg_url, store):
    # One job's row is held by another write (its end, waiting for a stopped node): the
    # other job's lease is renewed now, the held one counts as held for now and is renewed
    # once the row is free, without a second call.
    import psycopg

    held_job, free_job = await submit(store), await submit(store)
    held = await claim_one(store, lease_s=30, worker="w1")
    free = await claim_one(store, lease_s=30, worker="w1")
    assert held.id == held_job.id and free.id == free_job.id
    leases = {held.id: held.lease_token, free.id: free.lease_token}
    async with await psycopg.AsyncConnection.connect(pg_url) as other:
        await other.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (held.id,))
        stop = await asyncio.wait_for(store.renew("w1", leases, 600, wait=False), 5)
        assert stop == set()
        by_id = {j.id: j for j in [await store.get(held.id), await store.get(free.id)] if j}
        assert by_id[free.id].lease_expires_at is not None
        assert by_id[free.id].lease_expires_at > by_id[held.id].lease_expires_at + 500
        await other.rollback()
    for _ in range(100):
        got = await store.get(held.id)
        assert got is not None and got.lease_expires_at is not None
        if got.lease_expires_at > got.started_at + 500:
            break
        await asyncio.sleep(0.05)  # the background renewal's commit: no event to wait on
    else:
        raise AssertionError("the held row's lease was never renewed once free")
