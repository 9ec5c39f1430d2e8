"""A worker whose database drops every connection for a moment (PostgreSQL restarted, a
failover, a network blip) goes on: the run in progress is written once it can be, so it
does not run a second time, and the worker keeps claiming. Before, the first failed claim
ended the worker and a failed end write cost the job a second run."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import pytest

from conftest import wait_state
from nodekit import OpenQueue, mark_kinds, runs_of
from pg import PgServer


@pytest.fixture
def db_url(postgres: PgServer) -> str:
    return postgres.new_database()


def drop_every_connection(db_url: str, admin: psycopg.Connection[Any] | None = None) -> int:
    """End every session on the test's database but `admin`'s: what a restart does."""
    name = db_url.rsplit("/", 1)[1]
    with contextlib.nullcontext(admin) if admin else psycopg.connect(db_url,
                                                                     autocommit=True) as pg:
        return len(pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchall())


async def test_a_worker_goes_on_after_its_database_dropped_every_connection(
        make_settings, open_queue: OpenQueue, db_url, tmp_path):
    runs = tmp_path / "runs.txt"
    settings = make_settings("[worker]\nlease_s = 5\n", kinds=mark_kinds(runs))
    queue, _ = await open_queue(settings, name="node-a", slots=1)
    first, _ = await queue.submit("alice", "mark", {"seconds": 1})
    await wait_state(queue, first.id, "running")
    assert drop_every_connection(db_url) >= 2  # the pool's and the listener's at least
    done = await wait_state(queue, first.id, "completed", "failed", timeout_s=30)
    assert done.state.value == "completed", done.error
    # The worker still claims: a job submitted after the blip runs too.
    second, _ = await queue.submit("alice", "mark", {})
    drop_every_connection(db_url)
    again = await wait_state(queue, second.id, "completed", "failed", timeout_s=30)
    assert again.state.value == "completed", again.error
    assert runs_of(runs) == [f"{first.id}/{done.lease_token}",
                             f"{second.id}/{again.lease_token}"], "a job ran twice"


async def test_a_run_that_ended_while_the_database_was_away_is_written_when_it_is_back(
        make_settings, open_queue: OpenQueue, db_url, tmp_path):
    runs = tmp_path / "runs.txt"
    settings = make_settings("[worker]\nlease_s = 30\n", kinds=mark_kinds(runs))
    queue, _ = await open_queue(settings, name="node-a", slots=1)
    job, _ = await queue.submit("alice", "mark", {"seconds": 0.5})
    await wait_state(queue, job.id, "running")
    server, name = db_url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            drop_every_connection(db_url, admin)
            # Away longer than the store's own retries (~3 s): the run ends meanwhile.
            await asyncio.sleep(6)
            assert len(runs_of(runs)) == 1, "the run did not end while the database was away"
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    done = await wait_state(queue, job.id, "completed", "failed", timeout_s=30)
    assert done.state.value == "completed", done.error
    assert runs_of(runs) == [f"{job.id}/{done.lease_token}"], "the job ran twice"
    # And the worker claims again.
    second, _ = await queue.submit("alice", "mark", {})
    again = await wait_state(queue, second.id, "completed", "failed", timeout_s=30)
    assert again.state.value == "completed", again.error


async def test_a_worker_goes_on_through_connections_dropped_again_and_again(
        make_settings, open_queue: OpenQueue, db_url, tmp_path):
    """Every await of the claim loop meets a dropped connection sooner or later (the
    claim, the renewal of a late claim, the look at when the next job is due): none may
    end the loop."""
    runs = tmp_path / "runs.txt"
    settings = make_settings("[worker]\nlease_s = 5\npoll_s = 0.05\n",
                             kinds=mark_kinds(runs))
    queue, _ = await open_queue(settings, name="node-a", slots=2)
    jobs = [(await queue.submit("alice", "mark", {"seconds": 0.05}))[0] for _ in range(20)]
    with psycopg.connect(db_url, autocommit=True) as admin:
        for _ in range(40):
            drop_every_connection(db_url, admin)
            await asyncio.sleep(0.1)
    ended = [await wait_state(queue, job.id, "completed", "failed", timeout_s=60)
             for job in jobs]
    assert [job.state.value for job in ended] == ["completed"] * 20, \
        [job.error for job in ended if job.state.value != "completed"]
    assert sorted(runs_of(runs)) == sorted(f"{job.id}/{job.lease_token}" for job in ended)
    late, _ = await queue.submit("alice", "mark", {})
    again = await wait_state(queue, late.id, "completed", "failed", timeout_s=30)
    assert again.state.value == "completed", again.error
