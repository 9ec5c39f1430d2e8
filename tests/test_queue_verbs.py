"""The worker's verbs in `JobQueue`: a real worker moves jobs only through them, and what
finish, hand back, recover, renew and the reports do through them, on both backends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import socket
import time
from pathlib import Path
from typing import Any

from conftest import TEST_KINDS, wait_for, wait_state
from jobgate import queue as queue_module
from jobgate import worker as worker_module
from jobgate.executor import RunResult
from jobgate.model import State
from jobgate.queue import JobQueue, handed_back, node_live_s
from jobgate.scheduler import Limits
from jobgate.store.base import Node, Outcome, Store
from jobgate.worker import Worker

KINDS = TEST_KINDS + """
[kinds.once]
argv = ["sleep", "{seconds}"]
max_attempts = 1
[kinds.once.args]
seconds = { type = "number", min = 0, max = 600, default = 1 }
"""
ALL = Limits(max_running=100)


class _Guarded:
    """A store that notes which module each use of it comes from (`callers`, one file
    name per attribute read) and passes everything on to the real store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.callers: list[tuple[str, str]] = []  # (file, attribute)

    def __getattr__(self, name: str) -> Any:
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        self.callers.append((caller.f_code.co_filename if caller else "?", name))
        return getattr(self._store, name)

    def used_from(self, path: str) -> set[str]:
        return {name for file, name in self.callers if Path(file) == Path(path)}


def _guard(queue: JobQueue) -> _Guarded:
    guarded = _Guarded(queue.store)
    queue.store = guarded  # type: ignore[assignment]
    return guarded


async def test_the_guard_sees_a_use_of_the_store_from_the_worker_module(
        make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS), worker=False)
    guarded = _guard(queue)
    # Code compiled as if it were in worker.py, reading the store as the worker once did:
    # the check below would see it (so it can fail).
    eval(compile("queue.store.nodes", worker_module.__file__, "eval"), {"queue": queue})
    assert guarded.used_from(worker_module.__file__) == {"nodes"}


async def test_a_worker_moves_jobs_only_through_the_queue_verbs(make_settings, open_queue):
    settings = make_settings("[worker]\nlease_s = 1\n[limits]\nstart_timeout = \"30s\"\n",
                             kinds=KINDS)
    queue, _ = await open_queue(settings, worker=False)
    guarded = _guard(queue)
    worker = Worker(queue, name="node-v", slots=2)
    task = asyncio.create_task(worker.run())
    try:
        done, _ = await queue.submit("alice", "steps", {"count": 3, "delay": 0.5})
        failed, _ = await queue.submit("alice", "fail", {"code": 3})
        assert (await wait_state(queue, done.id, "completed", "failed")).state is \
            State.COMPLETED
        assert (await wait_state(queue, failed.id, "failed", timeout_s=30)).attempt == 3
        cancelled, _ = await queue.submit("alice", "sleep", {"seconds": 30})
        await wait_state(queue, cancelled.id, "running")
        await queue.cancel(cancelled.id, wait_s=10)
        assert (await wait_state(queue, cancelled.id, "cancelled")).state is State.CANCELLED
        held, _ = await queue.submit("alice", "once", {"seconds": 30})
        await wait_state(queue, held.id, "running")
        await worker._recover()  # a round of the recovery loop, now
    finally:
        worker.stop()
        await task
    back = await queue.get(held.id)
    assert back is not None and (back.state, back.attempt, back.message) == (
        State.QUEUED, 0, "handed back: its worker stopped")
    assert guarded.used_from(worker_module.__file__) == set(), \
        "the worker read the store itself, not through a verb"
    # And each of the moves went through the verbs to the store.
    assert {"finish_and_claim", "renew", "progress", "append_logs", "set_pid", "get",
            "heartbeat", "nodes", "recover", "remove_node", "next_run_at"} <= \
        guarded.used_from(queue_module.__file__)


async def test_finish_through_the_verbs_writes_the_outcome_only_with_the_lease(
        make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS), worker=False)
    job, _ = await queue.submit("alice", "noop", {})
    [claimed] = await queue.claim("node-v", 1, ALL, ["noop"])
    assert claimed.id == job.id and await queue.holds(claimed)
    ok = queue.outcome(claimed, RunResult(ok=True, result={"n": 1}))
    assert await queue.finish(job.id, claimed.lease_token + 1, ok) is None  # not its lease
    assert (running := await queue.get(job.id)) and running.state is State.RUNNING
    assert await queue.finish(job.id, claimed.lease_token, ok) is State.COMPLETED
    end = await queue.get(job.id)
    assert end is not None and (end.state, end.result, end.message) == (
        State.COMPLETED, {"n": 1}, "completed")
    assert not await queue.holds(claimed)


async def test_claim_writes_the_ends_it_is_given_and_fills_the_slots(
        make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS), worker=False)
    first, _ = await queue.submit("alice", "noop", {})
    [claimed] = await queue.claim("node-v", 1, ALL, ["noop"])
    second, _ = await queue.submit("alice", "noop", {})
    failed = queue.outcome(claimed, RunResult(ok=False, error="boom", retryable=False))
    [next_job] = await queue.claim("node-v", 1, Limits(max_running=1), ["noop"],
                                   ends=[(first.id, claimed.lease_token, failed)])
    assert next_job.id == second.id  # the slot the end freed, in the same call
    end = await queue.get(first.id)
    assert end is not None and (end.state, end.error) == (State.FAILED, "boom")


async def test_a_run_stopped_by_its_stopping_worker_is_handed_back_unless_cancelled(
        make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS), worker=False)
    one, _ = await queue.submit("alice", "once", {})
    two, _ = await queue.submit("alice", "once", {})
    claimed = {j.id: j for j in await queue.claim("node-v", 2, ALL, ["once"])}
    stopped = RunResult(ok=False, cancelled=True)
    # Stopped because the worker stops: back to the queue, the one attempt not counted.
    outcome = await queue.end_outcome(claimed[one.id], stopped, worker_stopping=True)
    assert (outcome.state, outcome.hand_back) == (State.QUEUED, True)
    assert await queue.finish(one.id, claimed[one.id].lease_token, outcome) is State.QUEUED
    back = await queue.get(one.id)
    assert back is not None and (back.state, back.attempt, back.worker, back.message) == (
        State.QUEUED, 0, None, "handed back: its worker stopped")
    # A cancel asked while it ran: cancelled, whether the worker stops or not.
    await queue.cancel(two.id)
    outcome = await queue.end_outcome(claimed[two.id], stopped, worker_stopping=True)
    assert (outcome.state, outcome.hand_back) == (State.CANCELLED, False)
    assert await queue.finish(two.id, claimed[two.id].lease_token, outcome) is \
        State.CANCELLED
    # Not stopping: a cancelled run is cancelled, a failed one retried or failed.
    assert (await queue.end_outcome(claimed[one.id], stopped)).state is State.CANCELLED
    assert (await queue.end_outcome(claimed[one.id], RunResult(ok=False, error="x"))
            ).state is State.FAILED  # max_attempts = 1
    assert handed_back().hand_back and handed_back().retry_at is not None


async def test_recover_takes_back_the_runs_of_a_dead_node_and_never_a_held_one(
        make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS), worker=False)
    retried, _ = await queue.submit("alice", "fail", {})  # 3 attempts
    last, _ = await queue.submit("alice", "once", {})  # 1 attempt
    kept, _ = await queue.submit("alice", "sleep", {})
    claimed = {j.id: j for j in await queue.claim("ghost", 3, ALL, ["fail", "once", "sleep"])}
    assert len(claimed) == 3
    # The registry as a starting node found it: "ghost" ran here, and its process is gone
    # (its pid is now a process that started after it).
    ghost = Node("ghost", socket.gethostname(), os.getpid(), 3, "0", time.time() - 3600,
                 heartbeat_at=time.time() - 3600)
    recovered = await queue.recover("node-v", {kept.id: claimed[kept.id].lease_token},
                                    time.time(), registry=[ghost])
    assert {job.id for job, _ in recovered} == {retried.id, last.id}
    assert all(node == ghost for _, node in recovered)
    assert all(job.lease_token == claimed[job.id].lease_token and job.worker == "ghost"
               for job, _ in recovered)  # as the lost run left it, to reap it
    again = await queue.get(retried.id)
    assert again is not None and (again.state, again.message) == (
        State.QUEUED, "recovered after its worker was lost")
    gone = await queue.get(last.id)
    assert gone is not None and (gone.state, gone.error) == (State.FAILED, "worker lost")
    assert await queue.holds(claimed[kept.id])
    assert not await queue.holds(claimed[retried.id])
    # Later rounds read the registry themselves: a node whose process lives is not dead.
    await queue.heartbeat(dataclasses.replace(ghost, started_at=time.time()))
    assert await queue.recover("node-v", {}, time.time()) == []


async def test_the_node_registry_through_the_verbs(make_settings, open_queue):
    settings = make_settings(kinds=KINDS)
    queue, _ = await open_queue(settings, worker=False)
    a = Node("node-a", socket.gethostname(), os.getpid(), 2, "0", time.time())
    b = Node("node-b", "elsewhere", 1, 2, "0", time.time())
    assert await queue.register(a) == []  # the registry before it registered
    assert [n.name for n in await queue.register(b)] == ["node-a"]
    assert [n.name for n in await queue.nodes(live=True)] == ["node-a", "node-b"]
    assert node_live_s(settings) == worker_module.node_live_s(settings) == \
        2 * settings.worker.lease_s
    # Its process (this one) is alive; a node elsewhere is judged by its leases alone,
    # however late its heartbeat; a node of this machine whose process is gone is dead.
    assert not queue_module.dead_node(a, "node-v")
    assert not queue_module.dead_node(
        Node("old", "elsewhere", 1, 1, "0", 0.0, heartbeat_at=time.time() - 3600), "node-v")
    assert queue_module.dead_node(dataclasses.replace(a, started_at=time.time() - 3600),
                                  "node-v")
    assert await queue.unregister("node-a") and not await queue.unregister("node-a")
    assert [n.name for n in await queue.nodes()] == ["node-b"]


async def test_renew_names_the_runs_to_stop_and_reports_land(make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS), worker=False)
    keep, _ = await queue.submit("alice", "sleep", {})
    stop, _ = await queue.submit("alice", "sleep", {})
    claimed = {j.id: j for j in await queue.claim("node-v", 2, ALL, ["sleep"])}
    leases = {job_id: job.lease_token for job_id, job in claimed.items()}
    assert await queue.renew("node-v", leases) == set()
    await queue.cancel(stop.id)  # running: cancel requested, its worker must stop it
    assert await queue.renew("node-v", leases) == {stop.id}
    await queue.report_pid(keep.id, leases[keep.id], 4242)
    await queue.report_progress(claimed[keep.id], 40.0, "on its way", 12.5)
    lines = [f"{i:05d} " + "x" * 1000 for i in range(100)]  # ~100 KB: several events
    seen: list[int] = []
    unsubscribe = queue.bus.on(
        lambda e: seen.append(len(e.data.get("lines", ()))) if e.type == "job.log" else None)
    try:
        await queue.report_logs(keep.id, lines)
        await wait_for(lambda: sum(seen) == len(lines), what="the log events")
    finally:
        unsubscribe()
    assert len(seen) > 1, "a flood of output is more than one job.log event"
    now = await queue.get(keep.id)
    assert now is not None and (now.pid, now.progress, now.message) == (
        4242, 40.0, "on its way")
    assert [line for _, line in await queue.store.logs(keep.id)] == lines


async def test_expire_fails_what_waited_past_the_start_timeout(make_settings, open_queue):
    queue, _ = await open_queue(make_settings("[limits]\nstart_timeout = \"0.2s\"\n",
                                              kinds=KINDS), worker=False)
    job, _ = await queue.submit("alice", "sleep", {})
    await asyncio.sleep(0.4)
    assert [j.id for j in await queue.expire()] == [job.id]
    assert (failed := await queue.get(job.id)) and failed.state is State.FAILED


async def test_outcome_is_the_one_decision_for_a_run_that_ended(make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS), worker=False)
    job, _ = await queue.submit("alice", "fail", {})
    [claimed] = await queue.claim("node-v", 1, ALL, ["fail"])
    assert queue.outcome(claimed, RunResult(ok=True)).state is State.COMPLETED
    retry: Outcome = queue.outcome(claimed, RunResult(ok=False, error="boom", exit_code=3))
    assert retry.state is State.QUEUED and retry.retry_at is not None
    assert await queue.finish(job.id, claimed.lease_token, retry) is State.QUEUED
