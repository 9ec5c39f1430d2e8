"""A node stopped inside a PostgreSQL transaction (SIGSTOP, a paused VM) holds its locks:
the event counter's row, the claim and turn locks. Every other node's writes wait behind
it, their runs' progress reports too, and a lease renewal waits for the row its own run's
report holds. Left alone, a stop longer than the lease lets recovery take back live runs
(they ran twice in the chaos campaign) and leaves the dead nodes' orphans unreaped. The
server ends such a session (`Store.open(stalled_session_s=)`), so the others go on.

PostgreSQL only: on SQLite, a stopped writer's lock is the file's (tests/test_stalled_writer.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from jobgate.model import State
from jobgate.store.postgres import PostgresStore
from jobgate.store.postgres_conn import Tx
from pg import PgServer
from storekit import claim_one, done, submit

STALLED_S = 0.5
LEASE_S = 3.0


async def open_node(url: str) -> PostgresStore:
    store = PostgresStore(url)
    await store.open(stalled_session_s=STALLED_S)
    return store


async def test_a_node_stopped_inside_a_transaction_does_not_hold_the_others(
        postgres: PgServer) -> None:
    url = postgres.new_database()
    stopped, live = await open_node(url), await open_node(url)
    try:
        job = await submit(live)
        run = await claim_one(live, lease_s=LEASE_S, worker="live")
        ended = asyncio.Event()

        async def stop_inside_a_write() -> None:
            async with stopped._connection() as conn, conn.transaction():
                await conn.execute("UPDATE event_seq SET last = last")  # what events take
                await asyncio.sleep(4 * STALLED_S)  # the process is stopped here
                ended.set()
                await conn.execute("SELECT 1")

        holder = asyncio.ensure_future(stop_inside_a_write())
        await asyncio.sleep(0.1)
        # The live node's report waits for the counter, holding its job's row; its renewal
        # waits for that row: both land once the server has ended the stopped session.
        await asyncio.wait_for(live.progress(job.id, run.lease_token, 50.0, "half"), 30)
        assert not ended.is_set()
        assert await live.renew("live", {job.id: run.lease_token}, LEASE_S) == set()
        assert await live.finish(job.id, run.lease_token, done()) is State.COMPLETED
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            await holder
        # The stopped node, continued, works on with a new connection.
        other = await submit(stopped)
        assert (await live.get(other.id)) is not None
    finally:
        await stopped.close()
        await live.close()


async def test_a_transaction_the_server_ended_runs_again(postgres: PgServer) -> None:
    store = await open_node(postgres.new_database())
    try:
        attempts = []

        async def slow_once(tx: Tx) -> Any:
            attempts.append(1)
            await tx.cur.execute("INSERT INTO event_seq_probe VALUES (%s)", (len(attempts),))
            if len(attempts) == 1:
                await asyncio.sleep(4 * STALLED_S)  # stopped mid-transaction, once
            return len(attempts)

        async with store._connection() as conn:
            await conn.execute("CREATE TABLE event_seq_probe (n int)")
        assert await store._run(slow_once) == 2
        async with store._connection() as conn:
            rows = await (await conn.execute("SELECT n FROM event_seq_probe")).fetchall()
        assert rows == [(2,)]  # the first attempt's write was rolled back
    finally:
        await store.close()


async def test_sessions_without_the_setting_are_left_alone(postgres: PgServer) -> None:
    store = PostgresStore(postgres.new_database())
    await store.open()
    try:
        async with store._connection() as conn:
            row = await (await conn.execute("SHOW idle_in_transaction_session_timeout")
                         ).fetchone()
        assert row is not None and row[0] == "0"
    finally:
        await store.close()
