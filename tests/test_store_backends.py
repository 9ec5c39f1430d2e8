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
