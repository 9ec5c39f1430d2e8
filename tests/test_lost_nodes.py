"""Lost nodes and lost leases, on both backends, as the chaos campaign found them: a node
whose jobs are taken back at once must be certainly dead (a late heartbeat is no proof: a
node busy starting under load beat late, another took back a job it had just claimed,
and its work ran twice); and a run that starts late must still hold its lease (a node
stopped between its claim and its job's start started it on resuming, though the job
had been taken back and run elsewhere meanwhile)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from conftest import wait_state
from jobgate.model import State
from jobgate.queue import JobQueue
from jobgate.scheduler import Limits
from jobgate.store.base import Node
from jobgate.worker import Worker
from nodekit import Pause, claims_held, mark_kinds, run_taken_back_while_paused, runs_of, write_row

KINDS = """
[kinds.nap]
argv = ["sleep", "{seconds}"]
max_attempts = 3
[kinds.nap.args]
seconds = { type = "number", default = 3 }
"""


def age_heartbeat(db_url: str, name: str, seconds: float) -> None:
    """Date a node's last heartbeat `seconds` ago (its lease thread beats rarely here)."""
    write_row(db_url, "UPDATE nodes SET heartbeat_at = ? WHERE name = ?",
              (time.time() - seconds, name))


async def running_on(queue, job_id: str, worker: str):
    job = await wait_state(queue, job_id, "running", timeout_s=15)
    assert job.worker == worker
    return job


async def test_a_live_node_of_this_machine_keeps_its_jobs_however_late_its_heartbeat(
        db_url, make_settings, open_queue):
    # Long leases: nothing is renewed, and no heartbeat written, during the test.
    settings = make_settings("[worker]\nlease_s = 600\n", kinds=KINDS)
    queue, _ = await open_queue(settings, name="node-a", slots=1)
    job, _ = await queue.submit("bob", "nap", {"seconds": 30})
    before = await running_on(queue, job.id, "node-a")
    age_heartbeat(db_url, "node-a", 3600)  # an hour late: far past the live window
    _, node_b = await open_queue(settings, name="node-b", slots=1)
    assert node_b is not None
    await node_b._recover()
    after = await queue.get(job.id)
    assert (after.state, after.worker, after.lease_token) == \
        (State.RUNNING, "node-a", before.lease_token)


async def test_a_node_elsewhere_that_went_quiet_gets_its_jobs_back_when_leases_run_out(
        db_url, make_settings, open_queue):
    settings = make_settings("[worker]\nlease_s = 600\n", kinds=KINDS)
    queue, node_b = await open_queue(settings, name="node-b", slots=1)
    assert node_b is not None
    # A node on another machine claims a job, then goes quiet (its heartbeat stops).
    far = Node("far-node", "another-host", 4242, 1, "0", time.time(), time.time())
    await queue.store.heartbeat(far)
    node_b.stop()  # node-b must not run the job itself
    job, _ = await queue.submit("bob", "nap", {"seconds": 30})
    claimed = await queue.store.claim("far-node", 1, Limits(max_running=10), 1.0, ["nap"])
    assert [j.id for j in claimed] == [job.id]
    age_heartbeat(db_url, "far-node", 3600)
    await node_b._recover()  # its lease (1 s) still holds: not taken back
    held = await queue.get(job.id)
    assert (held.state, held.worker) == (State.RUNNING, "far-node")
    time.sleep(1.1)  # the lease runs out
    await node_b._recover()
    back = await queue.get(job.id)
    assert (back.state, back.error, back.message) == \
        (State.QUEUED, None, "recovered after its worker was lost")


async def test_a_run_that_starts_after_its_lease_ran_out_is_not_started(
        make_settings, open_queue, tmp_path, caplog):
    runs = tmp_path / "runs.txt"
    settings = make_settings("[worker]\nlease_s = 1\n", kinds=mark_kinds(runs))

    def before_its_process_starts(queue: JobQueue, node: Worker, pause: Pause) -> None:
        # node-a stops after its claim came back, before its job's process starts: its
        # lease thread stops renewing, and the run waits.
        real_renew, real_execute = queue.store.renew, node._execute

        async def renew_once_resumed(*args: Any, **kw: Any) -> Any:
            await pause.wait()  # on the lease thread's own loop
            return await real_renew(*args, **kw)

        async def execute_once_resumed(run: Any) -> None:
            await pause.here()
            await real_execute(run)

        queue.store.renew = renew_once_resumed  # type: ignore[method-assign]  # the hook
        node._execute = execute_once_resumed  # type: ignore[method-assign]  # the hook

    await run_taken_back_while_paused(open_queue, settings, runs, caplog,
                                      before_its_process_starts, slot_free_at_once=False)


async def test_a_live_node_keeps_its_jobs_while_another_holds_the_claim_lock_past_a_lease(
        db_url, make_settings, open_queue, tmp_path):
    # Another node stopped inside its claim (SIGSTOP, a Pi swapping) holds the claim lock
    # (the write lock on SQLite) for three leases; meanwhile node-a's job ends. node-a is
    # alive throughout: its job must complete once, from its one run.
    runs = tmp_path / "runs.txt"
    settings = make_settings("[worker]\nlease_s = 1\n", kinds=mark_kinds(runs))
    queue, _ = await open_queue(settings, name="node-a", slots=1)
    job, _ = await queue.submit("alice", "mark", {"seconds": 0.5})
    await running_on(queue, job.id, "node-a")
    await open_queue(settings, name="node-b", slots=1)  # it recovers, every second
    with claims_held(db_url):
        await asyncio.sleep(3.5)
    done = await wait_state(queue, job.id, "completed", "failed", timeout_s=30)
    assert (done.state, done.attempt, done.worker) == (State.COMPLETED, 1, "node-a"), \
        (done.error, done.message)
    assert len(runs_of(runs)) == 1, "the job ran twice"


@pytest.mark.parametrize("lease_s", [1, 2])
async def test_a_live_node_keeps_its_jobs_while_another_holds_the_event_sequence(
        db_url, make_settings, open_queue, tmp_path, lease_s):
    # As above, but the stopped node was inside a transaction that wrote its events: on
    # PostgreSQL the event sequence's row, which every write with events waits for. The
    # short job's end waits for it holding the job's row: the renewal that waits for that
    # row must not hold up the long job's renewals (which once let it expire at 1 s).
    if not db_url.startswith("postgresql"):
        pytest.skip("on SQLite this is the write lock of the test above")
    runs = tmp_path / "runs.txt"
    settings = make_settings(f"[worker]\nlease_s = {lease_s}\n", kinds=mark_kinds(runs))
    queue, _ = await open_queue(settings, name="node-a", slots=2)
    short, _ = await queue.submit("alice", "mark", {"seconds": 0.5})
    long, _ = await queue.submit("alice", "mark", {"seconds": 6})
    await running_on(queue, short.id, "node-a")
    await running_on(queue, long.id, "node-a")
    await open_queue(settings, name="node-b", slots=2)
    held_at = time.time()
    with psycopg.connect(db_url) as conn:  # a transaction until the block ends
        conn.execute("UPDATE event_seq SET last = last")
        await asyncio.sleep(3.5)
        conn.rollback()
    for name, job in (("short", short), ("long", long)):
        done = await wait_state(queue, job.id, "completed", "failed", timeout_s=30)
        # A failure once seen only in CI (1 run in 3 at lease_s 1): which job, and when each
        # of its moves landed relative to the hold, is what tells the cause.
        assert (done.state, done.attempt, done.worker) == (State.COMPLETED, 1, "node-a"), \
            (name, done.error, await timeline(queue, job.id, held_at))
    assert len(runs_of(runs)) == 2, "a job ran twice"


async def timeline(queue: JobQueue, job_id: str, since: float) -> list[str]:
    """A job's events, each as `type +seconds-since` (an event is dated when its
    transaction began, not when it landed) and the worker or message it names."""
    events = [e for e in await queue.store.events_after(0, 10_000) if e.job_id == job_id]
    return [f"{e.type} {e.ts - since:+.2f}s {e.data.get('worker') or e.data.get('message') or ''}"
            for e in events]
