"""What the tests of a node at the edges share (tests/test_lost_nodes.py,
tests/test_worker_edges.py, tests/test_leases.py): the `mark` kind, whose every run leaves
its run id in a file, a node stopped at a chosen point while another takes its job back,
what a claim waits for held from outside, and one row written behind the store's back on
either backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import TEST_KINDS, wait_for, wait_state
from jobgate.config import Settings
from jobgate.queue import JobQueue
from jobgate.store.postgres import _CLAIM_LOCK
from jobgate.worker import Worker

# What the `open_queue` fixture (tests/conftest.py) hands a test.
OpenQueue = Callable[..., Awaitable[tuple[JobQueue, Worker | None]]]


def mark_kinds(runs: Path) -> str:
    """TEST_KINDS and `mark`: a run sleeps `seconds` (0 unless given), then appends its run
    id (`job id/lease token`) to `runs`, so a test counts the runs that really happened."""
    argv = ["sh", "-c", 'sleep "$1"; echo "$JOBGATE_RUN_ID" >> "$0"', str(runs), "{seconds}"]
    return TEST_KINDS + f"""
[kinds.mark]
argv = {json.dumps(argv)}
max_attempts = 3
[kinds.mark.args]
seconds = {{ type = "number", default = 0 }}
"""


def runs_of(runs: Path) -> list[str]:
    """The run ids the `mark` jobs wrote to `runs`, in order."""
    return runs.read_text().split()


def write_row(db_url: str, sql: str, params: tuple[Any, ...]) -> None:
    """Run one write (`?` placeholders) on the test's database from a connection of its
    own, as another node, or time passing, would have left the row."""
    if db_url.startswith("postgresql"):
        with psycopg.connect(db_url, autocommit=True) as pg:
            pg.execute(sql.replace("?", "%s"), params)
        return
    with contextlib.closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as lite, lite:
        lite.execute(sql, params)


@contextlib.contextmanager
def claims_held(db_url: str) -> Iterator[None]:
    """Hold what a claim must wait for, from another connection, until the block ends: the
    claim lock on PostgreSQL, the write lock on SQLite."""
    if db_url.startswith("postgresql"):
        with psycopg.connect(db_url) as pg:  # a transaction until the block ends
            pg.execute("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_LOCK,))
            yield
            pg.rollback()
        return
    lite = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        lite.execute("BEGIN IMMEDIATE")
        yield
        lite.execute("ROLLBACK")
    finally:
        lite.close()


class Pause:
    """Where a hook stops a node (SIGSTOP, a laptop lid): `reached` is set when it gets
    there, and it goes on once `resumed` is set. `resumed` is a thread's event because the
    lease thread's hooks run on that thread's own event loop."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.resumed = threading.Event()

    async def wait(self) -> None:
        """Hold the node here until the test resumes it."""
        while not self.resumed.is_set():
            await asyncio.sleep(0.02)

    async def here(self) -> None:
        """Tell the test the node got here (on the main loop only), then hold it."""
        self.reached.set()
        await self.wait()


async def run_taken_back_while_paused(
        open_queue: OpenQueue, settings: Settings, runs: Path, caplog: pytest.LogCaptureFixture,
        pause_at: Callable[[JobQueue, Worker, Pause], None], *, slot_free_at_once: bool
) -> None:
    """node-a claims a `mark` job and stops where `pause_at` hooks a pause; node-b takes the
    job back once its lease (`settings`: short) runs out and runs it to the end; node-a
    resumes. node-a must drop the run whose lease it lost, saying so ("not starting it"),
    free its slot (at once, with `slot_free_at_once`), and the job must have run once."""
    queue_a, _ = await open_queue(settings, worker=False)
    node_a = Worker(queue_a, name="node-a", slots=1)
    pause = Pause()
    pause_at(queue_a, node_a, pause)
    task_a = asyncio.create_task(node_a.run())
    try:
        job, _ = await queue_a.submit("alice", "mark", {})
        await asyncio.wait_for(pause.reached.wait(), 15)
        # Meanwhile node-b takes the job back (its lease ran out) and runs it to the end.
        queue_b, _ = await open_queue(settings, name="node-b", slots=1)
        done = await wait_state(queue_b, job.id, "completed", "failed", timeout_s=30)
        assert (done.state.value, done.worker) == ("completed", "node-b"), done.error
        with caplog.at_level(logging.WARNING, logger="jobgate.worker"):
            pause.resumed.set()  # node-a resumes with its old claim in hand
            await wait_for(lambda: "not starting it" in caplog.text, timeout_s=15,
                           what="node-a to drop the run whose lease it lost")
        if slot_free_at_once:
            assert node_a.running == []
        else:
            await wait_for(lambda: node_a.running == [], timeout_s=5, what="node-a's slot")
        assert runs_of(runs) == [f"{job.id}/{done.lease_token}"], "the job ran twice"
    finally:
        pause.resumed.set()
        node_a.stop()
        await task_a
