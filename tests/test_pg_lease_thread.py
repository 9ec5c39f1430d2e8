"""A PostgreSQL store used from a second event loop (a worker's lease thread) keeps one
connection for that loop: a renewal no longer waits for a new server process each time."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from jobgate.store.postgres import PostgresStore
from pg import PgServer


async def backend_pids(store: PostgresStore, calls: int) -> list[int]:
    pids: list[int] = []
    for _ in range(calls):
        async with store._connection() as conn:
            cur = await conn.execute("SELECT pg_backend_pid()")
            row = await cur.fetchone()
            assert row is not None
            pids.append(int(row[0]))
    return pids


def in_a_thread_of_its_own(fn: Any) -> Any:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(asyncio.run(fn())))
    thread.start()
    thread.join()
    return out[0]


async def test_another_loops_calls_share_one_connection_and_close_with_the_store(
        postgres: PgServer) -> None:
    store = PostgresStore(postgres.new_database())
    await store.open()
    try:
        pids = await asyncio.to_thread(in_a_thread_of_its_own,
                                       lambda: backend_pids(store, 5))
        assert len(set(pids)) == 1, pids
        # A new loop (that one has closed) gets a connection of its own; the dead loop's
        # is closed, not kept.
        again = await asyncio.to_thread(in_a_thread_of_its_own,
                                        lambda: backend_pids(store, 2))
        assert len(set(again)) == 1 and again[0] != pids[0]
        assert len(store._spare) == 1
    finally:
        await store.close()
    assert store._spare == {}
