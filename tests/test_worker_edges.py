"""A worker at the edges the chaos campaign found: a run that ended as the worker stopped,
a claim that came back after its lease ran out, an answer about an older run of a job.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil

from jobgate import executor
from jobgate.kinds import parse_kind
from jobgate.model import Job, new_id
from jobgate.queue import JobQueue
from jobgate.threads import JobThreads
from jobgate.worker import Worker, _Run
from nodekit import Pause, mark_kinds, run_taken_back_while_paused


def _kind(name: str, argv: list[str]) -> Any:
    return parse_kind(name, {"argv": argv}, ValueError)


async def test_a_command_that_ended_by_itself_as_its_stop_came_completed(tmp_path: Path):
    job = Job(id=new_id(time.time()), kind="quick", owner="alice", args={})
    stop = executor.Stop()

    async def on_pid(pid: int) -> None:
        # The process ends on its own first; the stop (a cancel, or the worker's SIGTERM)
        # comes just after, before the run has looked.
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # its exit reaches the event loop
        stop.set()

    result = await executor.run(job, _kind("quick", ["true"]), tmp_path / "job",
                                lambda *_: None, lambda *_: None, stop, 1.0, JobThreads(1),
                                on_pid)
    # Handed back as cancelled, its work would run a second time.
    assert (result.ok, result.cancelled, result.exit_code) == (True, False, 0)


async def test_a_command_stopped_before_it_ended_is_cancelled(tmp_path: Path):
    job = Job(id=new_id(time.time()), kind="long", owner="alice", args={})
    stop = executor.Stop()

    async def on_pid(pid: int) -> None:
        stop.set()

    result = await executor.run(job, _kind("long", ["sleep", "30"]), tmp_path / "job",
                                lambda *_: None, lambda *_: None, stop, 1.0, JobThreads(1),
                                on_pid)
    assert (result.ok, result.cancelled) == (False, True)


async def test_an_answer_about_an_older_run_of_a_job_does_not_stop_its_new_run(
        make_settings, open_queue):
    queue, _ = await open_queue(make_settings(), worker=False)
    worker = Worker(queue, name="node-a", slots=1)
    job = Job(id=new_id(time.time()), kind="sleep", owner="alice", args={}, lease_token=5)
    run = worker._runs[job.id] = _Run(job)
    # The lease thread renewed token 4 (the run this node had before it claimed the job
    # again) and heard it was lost: that is not about run 5.
    worker._stop_runs({job.id: 4})
    assert not run.cancel.is_set()
    worker._stop_runs({job.id: 5})
    assert run.cancel.is_set()


async def test_a_claim_that_came_back_after_its_lease_ran_out_is_not_started(
        make_settings, open_queue, tmp_path, caplog):
    runs = tmp_path / "runs.txt"
    settings = make_settings("[worker]\nlease_s = 1\n", kinds=mark_kinds(runs))

    def right_after_its_claim(queue: JobQueue, node: Worker, pause: Pause) -> None:
        real = queue.store.finish_and_claim

        async def paused_after_claiming(*args: Any, **kw: Any) -> Any:
            ended, jobs = await real(*args, **kw)
            if jobs:  # node-a stops right after its claim committed
                await pause.here()
            return ended, jobs

        queue.store.finish_and_claim = paused_after_claiming  # type: ignore[method-assign]

    await run_taken_back_while_paused(open_queue, settings, runs, caplog,
                                      right_after_its_claim, slot_free_at_once=True)
