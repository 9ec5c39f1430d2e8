"""The worker: a claim loop gated by free slots, plus a few named side loops.

Every move of a job goes through the verbs of `JobQueue` (`jobgate.queue`), which decide
what a run's end means and which nodes are dead; the worker never calls the store itself.

- claim loop: claims as many ready jobs as it has free slots, in one transaction; sleeps
  until an event (a job queued, a job ended anywhere) or the next `run_at`, never polling
  tighter than `worker.poll_s`.
- lease renewal and heartbeat: its own thread with its own event loop, so a job that hogs
  this process's event loop cannot starve it; a lease it finds lost stops the job. The
  same loop keeps this node's row in the node registry fresh (registered at start,
  removed on a graceful stop), with its jobs' and its machine's memory; a node is live
  while its heartbeat is younger than `queue.NODE_LIVE_LEASES` lease periods.
- reporter: writes a job's progress and log lines as they come, then at most a few times
  a second per job, so the first line after a quiet spell is seen at once and a chatty
  job costs a few writes, not one per line. Each `job.progress` event carries the job's
  current resident memory (`rss_mb`), and a job quiet for `_RSS_REPORT_S` gets one with
  just that, so its memory stays visible.
- recovery: requeues (or fails) jobs whose worker died, and reaps their process groups.
- start timeout and retention: fail jobs queued too long; clean old jobs and events.
- deliveries: send the webhooks and notifications of jobs' ends (deliverer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from jobgate import __version__, executor, logs
from jobgate.arguments import ArgumentError
from jobgate.deliverer import Deliverer
from jobgate.executor import RunResult
from jobgate.firings import ScheduleRunner
from jobgate.model import CONTROL_EVENTS, FINAL_EVENTS, QUEUED_EVENTS, Event, EventType, Job
from jobgate.pyproc import PyPool
from jobgate.queue import JobQueue, is_local
from jobgate.queue import node_live_s as node_live_s  # imported from here by api and stream
from jobgate.runlog import RunLog
from jobgate.sanitize import stored_percent, stored_text
from jobgate.scheduler import Limits
from jobgate.store.base import Node, Outcome
from jobgate.tasks import cancel_and_wait
from jobgate.threads import JobThreads

log = logging.getLogger("jobgate.worker")

_REPORT_S = 0.25
_RSS_REPORT_S = 2.0  # a running job without progress gets an rss_mb-only event this often
_PRESSURE_CHECK_S = 1.0
_CLAIM_RETRY_S = 1.0  # after a claim the database refused (it restarts, it is away a moment)
_RETENTION_S = 300.0
# The recovery loop looks every third of a lease period (at least every second); coming
# back later than that by this many lease periods means this node was stopped or suspended.
_RECOVERY_LATE_LEASES = 0.5
# Something to claim, a slot freed, or the operator's controls changed (resumed, undrained,
# a limit raised: the claims read the controls themselves).
_WAKE_TYPES = QUEUED_EVENTS | FINAL_EVENTS | CONTROL_EVENTS


def default_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Run:
    job: Job
    cancel: executor.Stop = field(default_factory=executor.Stop)
    lost: bool = False  # the lease went to someone else: report nothing more
    claimed_at: float = field(default_factory=time.monotonic)  # when the claim came back
    ending: bool = False  # its process is done; only its end is left to write
    log: RunLog = field(default_factory=RunLog)  # its log lines not yet written
    progress: tuple[float | None, str | None] | None = None
    report_due: float = 0.0  # monotonic time before which nothing more is written
    rss_mb: float | None = None  # the process tree's resident memory, last sampled
    rss_due: bool = False  # an rss_mb-only progress event is owed
    progress_at: float = field(default_factory=time.monotonic)  # the last progress written
    # One report at a time: on PostgreSQL two writes in flight may commit in either order,
    # and a job's last progress must not be overtaken by an older one.
    reporting: asyncio.Lock = field(default_factory=asyncio.Lock)


class Worker:
    """Runs jobs of one `JobQueue` with up to `slots` at a time."""

    def __init__(self, queue: JobQueue, name: str | None = None, slots: int | None = None):
        self.queue = queue
        self.settings = queue.settings
        self.name = name or self.settings.worker.name or default_name()
        queue.transitions.node = self.name  # its transition lines name this node
        self._pressure_seen: str | None = None  # the pressure last measured (logged on change)
        self.slots = slots or self.settings.slots
        self.node_budget_mb = queue.node_memory_budget_mb
        self._runs: dict[str, _Run] = {}
        self._wake = asyncio.Event()
        self._claiming = False  # the claim loop runs: ends go through it
        self._ends: list[tuple[str, int, Outcome, asyncio.Future[None]]] = []
        self._unreported = asyncio.Event()
        self._threads = JobThreads(self.slots)  # in-process Python kinds
        self._pool = PyPool.for_kinds(self.slots, self.settings.kinds.values())
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renewer: threading.Thread | None = None
        self._renewer_loop: asyncio.AbstractEventLoop | None = None
        self._renewer_wake = asyncio.Event()  # set on the renewer's own loop
        self._renewer_stopping = False
        self.node = Node(self.name, socket.gethostname(), os.getpid(), self.slots,
                         __version__, time.time())
        # Recovery: the node registry as this node found it (before it registered itself),
        # and when the recovery loop last looked (wall clock: leases are wall times).
        self._registry_at_start: list[Node] = []
        self._recovered_at = time.time()
        self._recover_from = 0.0  # after a sleep of this node: take nothing back before

    @property
    def running(self) -> list[Job]:
        return [r.job for r in self._runs.values()]

    async def run(self) -> None:
        """Work until `stop()`; then hand running jobs back to the queue and unregister."""
        loop = asyncio.get_running_loop()
        self.node = dataclasses.replace(self.node, started_at=time.time())
        # Registered before it claims anything.
        self._registry_at_start = await self.queue.register(self._measured(()))
        unsubscribe = self.queue.bus.on(self._on_event)
        self._renewer = threading.Thread(target=self._renew_thread, args=(loop,),
                                         name="jobgate-lease", daemon=True)
        self._renewer.start()
        side = [asyncio.create_task(c, name=n) for n, c in self._side_loops().items()]
        self._pool.start()
        try:
            await self._recover(startup=True)
            await self._claim_loop()
        finally:
            await cancel_and_wait(side)
            unsubscribe()
            await self._hand_back()  # leases are still renewed while the runs stop
            await self._pool.close()
            self._threads.close()
            await self._stop_renewer()
            try:
                await self.queue.unregister(self.name)
            except Exception:  # the database went away: the heartbeat expires instead
                log.warning("could not unregister node %s", self.name, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _side_loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        loops = {
            "reporter": self._report_loop(),
            "recovery": self._recovery_loop(),
            "retention": self._retention_loop(),
            "deliveries": Deliverer(self.queue, self.name).run(),
        }
        if self.settings.limits.start_timeout is not None:
            loops["start-timeout"] = self._start_timeout_loop(self.settings.limits.start_timeout)
        if self.settings.schedules:
            loops["schedules"] = self._schedule_loop()
        return loops

    # --- claiming -----------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        kinds = sorted(self.settings.kinds)
        lease_s = self.settings.worker.lease_s
        self._claiming = True
        try:
            while not self._stop.is_set():
                live = [r for r in self._runs.values() if not r.ending]
                free = self.slots - len(live)
                self._wake.clear()
                self.queue.pressure = reason = self._pressure() if free > 0 else None
                if free > 0 and reason != self._pressure_seen:
                    logs.log_pressure(self._pressure_seen, reason, self.name,
                                      self.settings.limits)
                    self._pressure_seen = reason
                if reason is not None:
                    await self._finish_ends()
                    # Nothing new starts until the machine recovers; look again shortly.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), _PRESSURE_CHECK_S)
                    continue
                if free > 0:
                    limits = dataclasses.replace(
                        self.queue.limits, node_memory_budget_mb=self.node_budget_mb,
                        node_memory_free_mb=self.node_budget_mb - sum(r.job.memory_mb
                                                                      for r in live))
                    asked_at = time.time()
                    try:
                        jobs = await self._finish_and_claim(free, limits, kinds)
                    except Exception:  # the database went away a moment: so does claiming
                        log.exception("claim failed; trying again")
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._stop.wait(), _CLAIM_RETRY_S)
                        continue
                    cancels: dict[str, int] = {}
                    if jobs and time.time() - asked_at > lease_s / 3:
                        try:
                            jobs, cancels = await self._still_held(jobs)
                        except Exception:  # not known to be ours: their leases run out
                            log.exception("could not renew late claims; not starting them")
                            continue
                    for job in jobs:
                        self._start(job)
                    self._stop_runs(cancels)
                    if jobs:
                        continue
                await self._sleep(free > 0)
        finally:
            self._claiming = False
            await self._finish_ends()

    async def _finish_and_claim(self, free: int, limits: Limits, kinds: list[str]
                                ) -> list[Job]:
        """Write the runs that ended and claim jobs for the free slots, in one call."""
        ends, self._ends = self._ends, []
        try:
            jobs = await self.queue.claim(
                self.name, free, limits, kinds,
                ends=[(job_id, token, outcome) for job_id, token, outcome, _ in ends])
        except BaseException:
            self._ends[:0] = ends  # written one by one when the loop ends
            raise
        for *_, done in ends:
            if not done.done():
                done.set_result(None)
        return jobs

    async def _finish_ends(self) -> None:
        ends, self._ends = self._ends, []
        results = await asyncio.gather(*(self.queue.finish(*end[:3]) for end in ends),
                                       return_exceptions=True)
        for (*_, done), result in zip(ends, results, strict=True):
            if done.done():
                continue
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(None)

    async def _end(self, job_id: str, token: int, outcome: Outcome) -> None:
        """Write how a run ended: through the claim loop, which writes it together with the
        claim of the jobs for the slot it frees (one commit, not two); on its own when the
        loop is not claiming."""
        if not self._claiming:
            await self.queue.finish(job_id, token, outcome)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ends.append((job_id, token, outcome, done))
        self._wake.set()
        await done

    def _pressure(self) -> str | None:
        """Why this machine should start nothing now, if it should not."""
        limits = self.settings.limits
        if limits.min_free_memory_mb is not None:
            available_mb = psutil.virtual_memory().available / 1048576
            if available_mb < limits.min_free_memory_mb:
                return "memory pressure"
        if limits.max_load is not None and os.getloadavg()[0] > limits.max_load:
            return "load"
        return None

    async def _sleep(self, idle: bool) -> None:
        timeout = self.settings.worker.poll_s
        if idle:
            try:
                next_at = await self.queue.next_run_at()
            except Exception:  # the database went away a moment: the claim says so next
                log.warning("could not read when the next job is due", exc_info=True)
                next_at = None
            if next_at is not None and next_at > time.time():
                timeout = min(timeout, next_at - time.time() + 0.001)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _on_event(self, event: Event) -> None:
        """Wake the claim loop when a job is queued or ends anywhere; stop cancelled runs."""
        if event.type in _WAKE_TYPES:
            self._wake.set()
        elif event.type == EventType.PROGRESS and event.data.get("cancel_requested"):
            run = self._runs.get(event.job_id or "")
            if run is not None:
                run.cancel.set()

    async def _still_held(self, jobs: list[Job]) -> tuple[list[Job], dict[str, int]]:
        """Claims that took more than a third of a lease to come back (this node was
        stopped, or the database blocked) are renewed before they start: a job another
        node took back meanwhile must not run twice. Returns the jobs still this node's,
        and those of them whose cancel was asked meanwhile."""
        stop = await self.queue.renew(self.name, {j.id: j.lease_token for j in jobs})
        held, cancels = [], {}
        for job in jobs:
            if job.id in stop:
                if not await self.queue.holds(job):
                    log.warning("job %s was taken back while this node was stopped; "
                                "not starting it", job.id)
                    continue
                cancels[job.id] = job.lease_token
            held.append(job)
        return held, cancels

    def _start(self, job: Job) -> None:
        stale = self._runs.get(job.id)
        if stale is not None:
            # This worker lost the job's lease (it could not renew in time) and has just
            # claimed it again: the old run must stop and report nothing.
            stale.lost = True
            stale.cancel.set()
        run = _Run(job)
        self._runs[job.id] = run
        self._spawn(self._execute(run))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, run: _Run) -> None:
        job = run.job
        kind = self.settings.kinds[job.kind]
        token = job.lease_token

        # What the job's code reports is stored safely (sanitize.py): a lone surrogate, an
        # infinite percentage or a non-string must not fail the report, nor a listing.
        def progress(percent: float | None, message: str | None) -> None:
            run.progress = (stored_percent(percent),
                            None if message is None else stored_text(str(message)))
            self._unreported.set()

        def log_line(line: str, stream: str | None = None, redraw: bool = False) -> None:
            run.log.add(stored_text(str(line)), stream, redraw)
            self._unreported.set()

        async def on_pid(pid: int) -> None:
            try:
                await self.queue.report_pid(job.id, token, pid)
            except Exception:  # only recovery's reaping reads it, and the run's mark does too
                log.warning("could not record the pid of job %s", job.id, exc_info=True)

        def memory(rss_mb: float, peak_mb: float) -> None:
            run.rss_mb = rss_mb
            if not run.ending:
                self.queue.job_memory[job.id] = (rss_mb, peak_mb)
            if time.monotonic() - run.progress_at >= _RSS_REPORT_S and not run.rss_due:
                run.rss_due = True
                self._unreported.set()

        if time.monotonic() - run.claimed_at > self.settings.worker.lease_s / 3 and \
                not await self._held_at_start(run):
            self._forget(run)
            return
        try:
            # The stored args name paths as given: the run gets the real ones, checked now.
            ran = job.but(args=self.queue.run_args(job, kind))
            result = await executor.run(
                ran, kind, self.queue.job_dir(job.id), progress, log_line, run.cancel,
                self.settings.worker.cancel_grace_s, self._threads, on_pid, memory,
                self._pool)
        except ArgumentError as exc:  # a path argument that no longer passes its checks
            result = RunResult(ok=False, error=str(exc), retryable=False)
        except Exception as exc:  # a bug or a broken kind must still end the job
            log.exception("job %s crashed the executor", job.id)
            result = RunResult(ok=False, error=f"internal error: {exc}", retryable=False)
        try:
            if not run.lost:
                await self._report(run, ended=True)
                outcome = await self.queue.end_outcome(job, result, self._stop.is_set())
                run.ending = True  # the slot is free
                await self._write_end(run, outcome)
        finally:
            self._forget(run)

    async def _write_end(self, run: _Run, outcome: Outcome) -> None:
        """Write how the run ended, again until it lands or its lease is lost: the run is
        renewed meanwhile, so a database away for a moment does not cost a second run."""
        wait_s = 0.1
        while True:
            try:
                await self._end(run.job.id, run.job.lease_token, outcome)
                return
            except Exception:
                if run.lost:
                    return
                log.exception("could not write how job %s ended; trying again", run.job.id)
            await asyncio.sleep(wait_s)
            wait_s = min(2 * wait_s, self.settings.worker.lease_s / 3)

    def _forget(self, run: _Run) -> None:
        """The run is over for this node: its slot is free."""
        if self._runs.get(run.job.id) is run:
            del self._runs[run.job.id]
            self.queue.job_memory.pop(run.job.id, None)
        self._wake.set()

    async def _held_at_start(self, run: _Run) -> bool:
        """Whether a run whose start came late (this node was stopped or starved between
        the claim and now) still holds its lease: it must not start on one that ran out,
        which another node may have taken back and run meanwhile."""
        held, cancels = await self._still_held([run.job])
        if not held:
            run.lost = True
            return False
        if cancels:
            run.cancel.set()
        return True

    async def _hand_back(self) -> None:
        """On stop: stop running jobs and give them back to the queue, uncounted."""
        for run in self._runs.values():
            run.cancel.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- reporting ----------------------------------------------------------------------
    async def _report(self, run: _Run, ended: bool = False) -> None:
        job = run.job
        async with run.reporting:
            lines, start = run.log.take()
            if lines:
                run.log.added(start, len(lines), await self.queue.report_logs(job.id, lines))
            redraws = run.log.take_redraws(time.monotonic(), force=ended)
            if redraws:
                await self.queue.report_redraws(job.id, redraws)
            if run.log.waiting():  # redraws held back a moment: the loop comes back to them
                self._unreported.set()
            if run.progress is not None or run.rss_due:
                (percent, message), run.progress = run.progress or (None, None), None
                run.rss_due, run.progress_at = False, time.monotonic()
                await self.queue.report_progress(job, percent, message, run.rss_mb)

    async def _report_loop(self) -> None:
        timeout: float | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._unreported.wait(), timeout)
            # Cleared before looking: what comes in while writing sets it again.
            self._unreported.clear()
            now = time.monotonic()
            pending = [r for r in self._runs.values()
                       if (r.log.waiting() or r.progress or r.rss_due) and not r.lost]
            due = [r for r in pending if r.report_due <= now]
            for run in due:
                run.report_due = now + _REPORT_S
            later = [r.report_due for r in pending if r not in due]
            if due:
                await asyncio.gather(*(self._report(r) for r in due))
            timeout = max(0.0, min(later) - time.monotonic()) if later else None

    # --- leases and heartbeat ---------------------------------------------------------
    def _renew_thread(self, main: asyncio.AbstractEventLoop) -> None:
        with asyncio.Runner() as runner:
            self._renewer_loop = runner.get_loop()
            runner.run(self._renew_loop(main))

    async def _stop_renewer(self) -> None:
        """End the renewal thread now (not at its next tick) and wait for it: after this,
        no heartbeat can register this node again."""
        self._renewer_stopping = True
        loop = self._renewer_loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already closed
                loop.call_soon_threadsafe(self._renewer_wake.set)
        if self._renewer is not None:
            await asyncio.to_thread(self._renewer.join)

    async def _renew_loop(self, main: asyncio.AbstractEventLoop) -> None:
        lease_s = self.settings.worker.lease_s
        while not self._renewer_stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renewer_wake.wait(), lease_s / 3)
            if self._renewer_stopping:
                return
            # The leases first: a slow heartbeat must not make them late.
            leases = {r.job.id: r.job.lease_token for r in list(self._runs.values())}
            try:
                stop = await self.queue.renew(self.name, leases, wait=False) if leases \
                    else set()
            except Exception:
                log.exception("lease renewal failed; trying again")
                stop = set()
            if stop:
                main.call_soon_threadsafe(self._stop_runs,
                                          {job_id: leases[job_id] for job_id in stop})
            try:
                await self.queue.heartbeat(self._measured(leases))
            except Exception:
                log.exception("heartbeat failed; trying again")

    def _measured(self, job_ids: Iterable[str]) -> Node:
        """This node as its heartbeat writes it: with what its running jobs' process trees
        hold (as sampled for `GET /api/queue`'s `running_rss_mb`) and what the machine has
        available (its `memory_available_mb`), so every node's memory can be shown."""
        sampled = [m[0] for j in job_ids if (m := self.queue.job_memory.get(j)) is not None]
        return dataclasses.replace(
            self.node, running_rss_mb=round(sum(sampled), 1),
            memory_available_mb=psutil.virtual_memory().available // 1048576)

    def _stop_runs(self, runs: dict[str, int]) -> None:
        """Stop the runs holding these leases (job id: token); a newer run of the same
        job, claimed again by this node since, is not the one the answer was about."""
        for job_id, token in runs.items():
            run = self._runs.get(job_id)
            if run is None or run.job.lease_token != token:
                continue
            run.cancel.set()
            # Cancel requested: the worker still ends it as cancelled. Lease lost: the job
            # belongs to someone else now, so this worker reports nothing more.
            self._spawn(self._check_lost(run))

    async def _check_lost(self, run: _Run) -> None:
        if not await self.queue.holds(run.job):
            run.lost = True

    # --- recovery, timeouts, retention --------------------------------------------------
    async def _recover(self, startup: bool = False) -> None:
        """Take back the jobs of lost runs (a lease run out, a node known dead) and reap
        what those runs left on this machine; never a run this node still holds."""
        lease_s, now = self.settings.worker.lease_s, time.time()
        late_s = now - self._recovered_at - _recovery_every_s(lease_s)
        self._recovered_at = now
        if not startup and late_s > _RECOVERY_LATE_LEASES * lease_s:
            # This node was stopped or suspended past its leases (SIGSTOP, a laptop lid,
            # swapping): its own runs first, then a lease period for the other nodes of
            # this machine, which likely slept too, to renew theirs.
            log.warning("recovery ran %.0f s late (this node was stopped, suspended or "
                        "blocked); renewing its leases before taking anything back", late_s)
            self._recover_from = now + lease_s
            await self._renew_now()
        if now < self._recover_from:
            return
        held = {r.job.id: r.job.lease_token for r in list(self._runs.values()) if not r.lost}
        host = socket.gethostname()
        registry = self._registry_at_start if startup else None
        for job, node in await self.queue.recover(self.name, held, now, registry):
            log.warning("recovered job %s from lost worker %s", job.id, job.worker)
            if node is not None and node.host != host:
                continue  # that run's processes were on another machine
            # Its group only when the run is known to have been on this machine; its
            # marked processes in any case (the mark is that run's alone).
            local = node is not None or (job.worker is not None and is_local(job.worker))
            await asyncio.to_thread(executor.reap, job.id, job.lease_token,
                                    job.pid if local else None, job.started_at)

    async def _renew_now(self) -> None:
        """Renew this node's leases from here, now (the lease thread may not have run yet)."""
        leases = {r.job.id: r.job.lease_token for r in list(self._runs.values())
                  if not r.lost}
        if not leases:
            return
        try:
            stop = await self.queue.renew(self.name, leases, wait=False)
        except Exception:
            log.exception("lease renewal failed")
            return
        if stop:
            self._stop_runs({job_id: leases[job_id] for job_id in stop})

    async def _recovery_loop(self) -> None:
        while True:
            await asyncio.sleep(_recovery_every_s(self.settings.worker.lease_s))
            try:
                await self._recover()
            except Exception:  # the database went away a moment: the next round retries
                log.exception("recovery failed; trying again")

    async def _start_timeout_loop(self, timeout_s: float) -> None:
        while True:
            await asyncio.sleep(min(5.0, max(0.2, timeout_s / 4)))
            await self.queue.expire()

    async def _retention_loop(self) -> None:
        while True:
            await self.queue.prune()
            await asyncio.sleep(_RETENTION_S)

    async def _schedule_loop(self) -> None:
        """Fire the schedules that are due (firings.py): wakes at the next due time, or
        after `[worker] poll_s` to see what other nodes did; the database decides who fires."""
        runner = ScheduleRunner(self.queue)
        pruned_at = 0.0
        while True:
            next_due = None
            try:
                next_due = await runner.fire_due()
                if time.monotonic() - pruned_at > _RETENTION_S:
                    pruned_at = time.monotonic()
                    await runner.prune()
            except Exception:  # the database went away a moment: the next round retries
                log.exception("firing schedules failed; trying again")
            wait_s = self.settings.worker.poll_s
            if next_due is not None:
                wait_s = min(wait_s, max(0.0, next_due - time.time()))
            await asyncio.sleep(wait_s + 0.001)


def _recovery_every_s(lease_s: float) -> float:
    return max(1.0, lease_s / 3)
