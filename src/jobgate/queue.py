"""The domain verbs: where a job is submitted, claimed, finished, recovered, retried and
cancelled; the worker moves jobs only through these.

`JobQueue` does the bookkeeping once, above the storage seam: it checks kinds and
arguments, applies the queue quota, decides between retry and failure, and keeps the
position index and the event bus in step with the store's committed events.

- a client's verbs: submit, cancel, retry, delete, clean;
- a worker's verbs: claim (with the ends it writes in the same commit), finish, renew,
  the reports of a run (progress, logs, pid), recover, expire, prune, and what a run's
  end means (`outcome`, `end_outcome`: completed, failed, cancelled, a retry, handed back);
- the node registry: register, heartbeat, nodes, unregister, and which nodes are dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import random
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from jobgate import submissions
from jobgate.arguments import ArgumentError, resolve_paths
from jobgate.batches import Batch, BatchItem
from jobgate.config import Settings
from jobgate.controls_live import LiveControls
from jobgate.delivery_config import rules_from
from jobgate.dependencies import output_file
from jobgate.estimates import Estimates
from jobgate.events import EventBus
from jobgate.executor import RunResult
from jobgate.kinds import Kind, failure_matches
from jobgate.logs import TransitionLog, node_name
from jobgate.model import RUN_END_EVENTS, Event, EventType, Job, Output, State
from jobgate.moves import HANDED_BACK, ended_outputs, is_waiting
from jobgate.positions import PositionIndex
from jobgate.sanitize import stored_json, stored_text
from jobgate.scheduler import Limits, backoff_s
from jobgate.store.base import Node, Outcome, Quota, Stats, Store
from jobgate.tally import Tally
from jobgate.uploads import Limits as UploadLimits
from jobgate.uploads import Uploads

# A running job's run is over (cancelled, or it ended some other way first).
_ENDS = RUN_END_EVENTS
_PEAK_PERCENTILE = 0.9  # an "auto" kind reserves this percentile of its recent peaks
# Log lines per job.log event, by size: a flood of output becomes many small events, so a
# stream that falls behind holds at most one of them in flight and its buffer fills (and
# drops the client) in steps of this size, not of several MB at once.
_LOG_EVENT_BYTES = 32 * 1024
# A node is live while its last heartbeat is younger than this many lease periods (it
# beats every third of one); a dead node's row is deleted after a day.
NODE_LIVE_LEASES = 2
_NODE_FORGET_S = 86400.0
log = logging.getLogger("jobgate.queue")


class UnknownKind(ArgumentError):
    """A submit named a kind this server's configuration does not define (HTTP 422)."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__("kind", f"unknown kind {name!r} (known: {', '.join(known) or 'none'})")


@dataclass(frozen=True)
class KindMemory:
    """What a kind's jobs reserve now, and what its recent completed jobs measured."""

    estimate_mb: int
    source: str  # "declared", "learned" (from measured peaks) or "default" (no history yet)
    peaks_mb: tuple[float, ...]  # the recent completed jobs' peaks, newest first

    def to_json(self) -> dict[str, Any]:
        ordered = sorted(self.peaks_mb)
        return {
            "memory_estimate_mb": self.estimate_mb,
            "memory_estimate_from": self.source,
            "peak_memory_jobs": len(ordered),
            "peak_memory_p50_mb": percentile(ordered, 0.5) if ordered else None,
            "peak_memory_max_mb": ordered[-1] if ordered else None,
        }


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class JobQueue:
    """One deployment's queue: the settings, the store, positions and in-process events."""

    def __init__(self, settings: Settings, store: Store, positions: bool = True) -> None:
        """`positions=False` for a process that only runs jobs (no API): it skips keeping
        the index of queue positions, and `position()` answers None."""
        self.settings = settings
        self.store = store
        self.bus = EventBus()
        # This process's start (its uptime) and what it saw happen since (stats.py).
        self.tally = Tally()
        self.bus.on(self.tally.count)
        self.positions = PositionIndex()
        self._track_positions = positions
        self.estimates = Estimates(self, node_live_s(settings))  # eta_s, remaining_s
        # Why this process's worker starts nothing now ("memory pressure", "load"), if so.
        self.pressure: str | None = None
        # One log line per job transition this process commits (logs.py); named for its worker.
        self.transitions = TransitionLog(node_name(settings))
        self._jobs_path = settings.data_path / "jobs"
        # The operator's controls (controls_live.py); a claim applies them to the config's.
        self.live = LiveControls(settings, store)
        self.limits: Limits = self.live.config
        self.quota = Quota(settings.limits.max_queued, settings.limits.per_user_queued)
        # What a job's end makes (webhooks, notifications): written by the store with it.
        store.delivery_rules = rules_from(settings)
        limits = settings.limits
        # This machine's memory budget (a worker here claims within it), by default all of it.
        self.node_memory_budget_mb: int = limits.node_memory_budget_mb or \
            psutil.virtual_memory().total // 1048576
        # A job reserving more than this could never start: it is refused at submit. The
        # machine's own memory counts only when no budget is configured at all (one node).
        budgets = [b for b in (limits.memory_budget_mb, limits.node_memory_budget_mb) if b]
        self.memory_ceiling_mb: int = min(budgets) if budgets else self.node_memory_budget_mb
        # Running job id -> (current, peak) resident memory in MB of its process tree, as
        # this process's worker samples it.
        self.job_memory: dict[str, tuple[float, float]] = {}
        self._peaks: dict[str, tuple[float, ...]] = {}  # per kind, until one completes
        self._completions: Counter[str] = Counter()  # completed jobs seen, per kind
        # What no `path` argument may name, whatever input_dir is: the server's own files.
        self.protected_paths: tuple[Path, ...] = protected_paths(settings)
        mb = 1024 * 1024
        up = settings.uploads
        self.uploads = Uploads(settings.data_path / "uploads", store, UploadLimits(
            None if up.max_file_mb is None else up.max_file_mb * mb,
            None if up.quota_per_user_mb is None else up.quota_per_user_mb * mb))

    async def open(self) -> None:
        self.store.listen(self._on_events)
        self.store.listen_own(self.transitions)
        # A node stopped inside a transaction (SIGSTOP, a paused VM) holds its locks: ended
        # well within a lease, the other nodes' renewals still land in time. Not sooner than
        # a second, which no transaction of a live node sits idle for, even on a loaded
        # machine.
        await self.store.open(stalled_session_s=max(1.0, self.settings.worker.lease_s / 4))
        await self.live.load()
        if self._track_positions:
            self.positions.load(await self.store.queued_keys())
        self.settings.data_path.mkdir(parents=True, exist_ok=True)
        if any(a.type == "path" for k in self.settings.kinds.values() for a in k.args.values()) \
                and not self.settings.input_path.exists():
            self.settings.input_path.mkdir(parents=True, exist_ok=True)
            log.info("made the input folder %s ([server] input_dir): the files `path` "
                     "arguments name go there", self.settings.input_path)

    async def close(self) -> None:
        await self.store.close()

    def _on_events(self, events: list[Event]) -> None:
        if self._track_positions:
            self.positions.apply(events)
        self.estimates.on_events(events)
        self.live.apply(events)
        for event in events:
            if event.type == EventType.COMPLETED:
                # A new measured peak: the kind's estimate is worked out afresh.
                kind = str(event.data.get("kind"))
                self._completions[kind] += 1
                self._peaks.pop(kind, None)
        self.bus.publish(events)

    # --- verbs --------------------------------------------------------------------------
    def kind(self, name: str) -> Kind:
        kind = self.settings.kinds.get(name)
        if kind is None:
            raise UnknownKind(name, sorted(self.settings.kinds))
        return kind

    async def submit(
        self,
        owner: str,
        kind: str,
        args: dict[str, Any] | None = None,
        *,
        priority: int | None = None,
        run_at: float | None = None,
        unique_key: str | None = None,
        idempotency_key: str | None = None,
        memory_mb: int | None = None,
        depends_on: Sequence[str] | None = None,
        admin: bool = False,
        webhook_url: str | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job; returns (job, created). ArgumentError for bad input, QueueFull.
        `webhook_url` gets the job's end (deliveries.py), under the address rules of `url`
        arguments unless `[webhooks] allow_private`.

        The job reserves `memory_mb` if given (checked by `check_memory`), else the kind's
        estimate as it stands now (`kind_memory`): fixed at submit, so what a job reserves
        never changes while it waits or runs. With `depends_on` (ids of the owner's jobs;
        with `admin`, anyone's) it waits until they all completed (dependencies.py).
        """
        deps = await self.check_dependencies(owner, depends_on or (), admin)
        job = await submissions.new_job(self, owner, kind, args, priority=priority,
                                        run_at=run_at, memory_mb=memory_mb, depends_on=deps)
        job.unique_key, job.idempotency_key = unique_key, idempotency_key
        return await submissions.store_job(self, job, webhook_url)

    async def check_dependencies(self, owner: str, depends_on: Sequence[str], admin: bool
                                 ) -> list[str]:
        """The ids a job of `owner` depends on, checked: jobs of `owner` (with `admin`, of
        anyone); DependencyError for another's or an unknown one, in the same words."""
        return await submissions.check_dependencies(self, owner, depends_on, admin)

    def run_args(self, job: Job, kind: Kind) -> dict[str, Any]:
        """The args a run of `job` is given: each `path` argument its real path, checked
        again now (ArgumentError if it no longer passes, e.g. a file became a symlink)."""
        return resolve_paths(kind, job.args, self.settings.input_path, self.protected_paths,
                             functools.partial(self.uploads.file, job.owner),
                             functools.partial(output_file, self.job_dir, job.depends_on))

    def check_memory(self, spec: Kind, memory_mb: int) -> None:
        """ArgumentError unless a job of `spec` may reserve `memory_mb`: at least 0, at most
        the kind's hard limit, and no more than the budget (such a job could never start)."""
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 0:
            raise ArgumentError("memory_mb", f"expected a whole number of MB >= 0, "
                                f"got {memory_mb!r}")
        limit = spec.memory_limit_mb
        if limit is not None and memory_mb > limit:
            raise ArgumentError("memory_mb", f"{memory_mb} MB is more than the memory_limit_mb "
                                f"of kind {spec.name} ({limit} MB)")
        if memory_mb > self.memory_ceiling_mb:
            raise ArgumentError("memory_mb", f"{memory_mb} MB is more than the memory budget "
                                f"({self.memory_ceiling_mb} MB): such a job could never start")

    async def kind_memory(self, spec: Kind) -> KindMemory:
        """What a job of `spec` would reserve if submitted now, and the measured peaks.

        An "auto" kind reserves the 90th percentile (nearest rank) of the peaks of its last
        `[limits] auto_memory_history` completed jobs plus `auto_memory_margin_pct`, rounded
        up; before any has completed, `auto_memory_default_mb`. Either is capped by the
        kind's `memory_limit_mb` and the budget, so the estimate alone never refuses a job.
        """
        peaks = self._peaks.get(spec.name)
        if peaks is None:
            seen = self._completions[spec.name]
            peaks = tuple(await self.store.recent_peaks(
                spec.name, self.settings.limits.auto_memory_history))
            if self._completions[spec.name] == seen:  # else a newer peak came in meanwhile
                self._peaks[spec.name] = peaks
        if not spec.memory_auto:
            return KindMemory(spec.memory_mb, "declared", peaks)
        limits = self.settings.limits
        if peaks:
            p90 = percentile(sorted(peaks), _PEAK_PERCENTILE)
            estimate, source = math.ceil(p90 * (1 + limits.auto_memory_margin_pct / 100)), \
                "learned"
        else:
            estimate, source = limits.auto_memory_default_mb, "default"
        caps = [c for c in (spec.memory_limit_mb, self.memory_ceiling_mb) if c is not None]
        return KindMemory(max(1, min([estimate, *caps])), source, peaks)

    async def get(self, job_id: str) -> Job | None:
        return await self.store.get(job_id)

    def position(self, job: Job) -> int | None:
        if not self._track_positions or job.state is not State.QUEUED:
            return None
        return self.positions.position(job.id)

    def to_json(self, job: Job) -> dict[str, Any]:
        out = job.to_json(self.position(job))
        if job.state is State.QUEUED and not is_waiting(job):
            held = self.live.held_message(job.kind)
            if held is not None or self.pressure is not None:
                out["message"] = held or f"waiting: {self.pressure}"
        return out

    async def cancel(self, job_id: str, wait_s: float = 0.0) -> Job:
        """Cancel a queued job now, or ask the worker of a running one to stop it.

        With `wait_s`, wait that long for a running job's process to be gone.
        """
        with self.bus.subscribe(lambda e: e.job_id == job_id and e.type in _ENDS) as sub:
            job = await self.store.cancel(job_id)
            if job.state is State.RUNNING and wait_s > 0:
                try:
                    await asyncio.wait_for(sub.get(), wait_s)
                except TimeoutError:
                    return job
                return await self.store.get(job_id) or job
        return job

    async def retry(self, job_id: str) -> Job:
        return await self.store.retry(job_id)

    async def delete(self, job_id: str) -> Job:
        job = await self.store.delete(job_id)
        self._remove_folder(job_id)
        return job

    async def clean(self, older_than_s: float, owner: str | None = None) -> int:
        """Delete finished jobs older than `older_than_s`, their logs and outputs."""
        keep = self.settings.retention.per_user_history
        ids = await self.store.finished_before(time.time() - older_than_s, owner, keep)
        count = await self.store.delete_many(ids)
        for job_id in ids:
            self._remove_folder(job_id)
        return count

    async def stats(self) -> Stats:
        return await self.store.stats()

    # --- batches ------------------------------------------------------------------------
    async def submit_batch(self, owner: str, jobs: Sequence[BatchItem | Mapping[str, Any]],
                           *, pipeline: bool = False, admin: bool = False
                           ) -> tuple[Batch, list[Job]]:
        """Queue many jobs at once, all or none (batches.py): the batch and its jobs, in
        the order given. Each job is a `BatchItem` or a mapping of its fields (`kind`,
        `args`, `priority`, `run_at`, `depends_on`, `memory_mb`); `#i` in `depends_on`
        and `job:#i/NAME` in a path argument name the batch's job i; with `pipeline`,
        each job depends on the one before it. ArgumentError (naming `jobs[i]`) for bad
        input, a cycle or an unknown dependency; QueueFull, saying how many would fit,
        when the queue cannot take them all."""
        return await submissions.submit_batch(self, owner, jobs, pipeline=pipeline,
                                              admin=admin)

    async def get_batch(self, batch_id: str) -> Batch | None:
        """A batch with its jobs' counts per state and its progress, or None."""
        return await self.store.get_batch(batch_id)

    # --- what the worker reports -------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self._jobs_path / job_id

    def _remove_folder(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def outcome(self, job: Job, run: RunResult) -> Outcome:
        """What a run's end means for the job: completed, failed, cancelled or a retry;
        its files are the result, `partial` or deleted as `moves.ended_outputs` says."""
        ended = self._outcome(job, run)
        spec = self.settings.kinds.get(job.kind)
        listed, doomed = ended_outputs(run.outputs, ended.state,
                                       spec.partial_outputs if spec else "keep")
        if doomed:
            self._delete_outputs(job.id, doomed)
        return dataclasses.replace(ended, outputs=listed)

    def _delete_outputs(self, job_id: str, doomed: list[Output]) -> None:
        folder = self.job_dir(job_id)
        for output in doomed:
            with contextlib.suppress(OSError):
                (folder / output.name).unlink()
        # Then the folders the files were in, deepest first, if nothing else is left.
        for sub in sorted({p for o in doomed for p in Path(o.name).parents if p.parts},
                          key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                (folder / sub).rmdir()

    def _outcome(self, job: Job, run: RunResult) -> Outcome:
        # What the job's own code reported is stored safely: nothing in it can break a listing.
        common: dict[str, Any] = {"peak_memory_mb": run.peak_memory_mb}
        if run.error is not None:
            run = dataclasses.replace(run, error=stored_text(str(run.error)))
        if run.cancelled:
            return Outcome(State.CANCELLED, error=None, message="cancelled", **common)
        if run.ok:
            # The job's last word ("00:30 of 00:30, 2.1x", "track 12 of 12") stays.
            message = stored_text(str(run.message)) if run.message else "completed"
            return Outcome(State.COMPLETED, result=stored_json(run.result), message=message,
                           **common)
        spec = self.settings.kinds.get(job.kind)
        retryable = run.retryable and spec is not None and job.attempt < job.max_attempts
        if retryable and spec is not None and spec.retry_on_exit_codes is not None:
            retryable = run.exit_code in spec.retry_on_exit_codes
        if retryable and spec is not None:
            said = [run.error or "", *run.matched]
            if failure_matches(spec.no_retry_on, said):
                retryable = False
            elif spec.retry_on is not None:
                retryable = failure_matches(spec.retry_on, said)
        if retryable and spec is not None:
            delay = backoff_s(job.attempt, spec.backoff_s, spec.backoff_max_s, random.random())
            return Outcome(State.QUEUED, error=run.error, retry_at=time.time() + delay,
                           message=f"attempt {job.attempt} failed; retrying in {delay:.1f} s",
                           **common)
        return Outcome(State.FAILED, error=run.error, message="failed", **common)

    async def end_outcome(self, job: Job, run: RunResult, worker_stopping: bool = False
                          ) -> Outcome:
        """What a run's end means, to write with `finish` (or `claim`): `handed_back()` for
        a run stopped only because its worker stops (no cancel was asked for the job, then
        or since), else `outcome`."""
        if worker_stopping and run.cancelled and not job.cancel_requested:
            current = await self.store.get(job.id)
            if current is None or not current.cancel_requested:
                return handed_back()
        return self.outcome(job, run)

    # --- the worker's verbs -------------------------------------------------------------
    async def claim(self, worker: str, slots: int, limits: Limits, kinds: list[str],
                    ends: list[tuple[str, int, Outcome]] | None = None) -> list[Job]:
        """Write how the runs of `ends` (job id, lease token, outcome) ended, then claim up
        to `slots` ready jobs of `kinds` for `worker`: moved to running atomically, in
        dispatch order, within `limits` across every node, each with a lease of `[worker]
        lease_s`. One commit where the backend can: the slots the ends free are filled at
        once. An end whose lease had moved on is not written (as with `finish`)."""
        _, jobs = await self.store.finish_and_claim(
            ends or [], worker, slots, limits, self.settings.worker.lease_s, kinds)
        return jobs

    async def finish(self, job_id: str, token: int, outcome: Outcome) -> State | None:
        """Write how a run ended (an `outcome` or `end_outcome`), if `token` still holds the
        job's lease: the state the job moved to, or None if the lease had moved on."""
        return await self.store.finish(job_id, token, outcome)

    async def renew(self, worker: str, leases: Mapping[str, int], wait: bool = True) -> set[str]:
        """Extend by `[worker] lease_s` the leases `worker` holds ({job id: token}); the ids
        whose runs must stop: the lease moved on, or a cancel was asked. `wait` False: rows
        another write holds are renewed in the background and count as held meanwhile."""
        return await self.store.renew(worker, dict(leases), self.settings.worker.lease_s,
                                      wait)

    async def holds(self, job: Job) -> bool:
        """Whether the run of `job` (its lease token) still holds it: running, lease not
        moved on to another run."""
        current = await self.store.get(job.id)
        return current is not None and current.lease_token == job.lease_token and \
            current.state is State.RUNNING

    async def report_progress(self, job: Job, percent: float | None, message: str | None,
                              rss_mb: float | None = None) -> None:
        """Record a running job's progress (a `job.progress` event, with its current
        resident memory `rss_mb` when given)."""
        await self.store.progress(job.id, job.lease_token, percent, message, rss_mb)

    async def report_logs(self, job_id: str, lines: list[str]) -> int | None:
        """Add log lines to a job's log, in `job.log` events of at most 32 KB each; past
        `[worker] log_max_lines` lines, the first and the last are kept (`moves.kept_log`).
        Returns the number of the first line added (None: no such job)."""
        first: int | None = None
        for batch in log_batches(lines, _LOG_EVENT_BYTES):
            added = await self.store.append_logs(job_id, batch,
                                                 self.settings.worker.log_max_lines)
            first = added if first is None else first
        return first

    async def report_redraws(self, job_id: str, lines: Mapping[int, str]) -> None:
        """New text for log lines already added ({n: line}: progress bars redrawn in
        place), each in a `job.log` event with `replace`."""
        await self.store.replace_logs(job_id, lines)

    async def report_pid(self, job_id: str, token: int, pid: int) -> None:
        """Record the process (group) of a run, to reap it if its worker is lost."""
        await self.store.set_pid(job_id, token, pid)

    async def recover(self, me: str, held: Mapping[str, int], now: float,
                      registry: list[Node] | None = None) -> list[tuple[Job, Node | None]]:
        """Take back the jobs of lost runs: a lease run out before `now`, or a node known
        dead (`dead_node`: its process gone, on this machine). Queued again while attempts
        remain (and no cancel was asked), else failed "worker lost". Never a run of `held`
        ({id: token}), those `me` runs.

        `registry` is given by a node starting: the registry as it found it before it
        registered (`register`); its own name then stands for the process that had it
        before, and runs of workers that left no row (named `host:pid`) whose process is
        gone count as lost too. Returns each job taken back, as its lost run left it (pid,
        worker, lease token), with the registered node that ran it, if any.
        """
        startup = registry is not None
        nodes = registry if registry is not None else await self.store.nodes()
        by_name = {n.name: n for n in nodes}
        lost = {n.name for n in nodes if dead_node(n, me, startup)}
        if startup:
            lost |= {j.worker for j in await self.store.running_jobs()
                     if j.worker and j.worker not in by_name
                     and _dead_local_worker(j.worker, me)}
        # After a stall of the database, the other nodes' renewals that waited it out
        # land within a third of a lease: half a lease of grace lets them.
        jobs = await self.store.recover(lost, keep=dict(held), expired_before=now,
                                        stall_grace_s=self.settings.worker.lease_s / 2)
        return [(job, by_name.get(job.worker or "")) for job in jobs]

    async def expire(self) -> list[Job]:
        """Fail the jobs still queued `[limits] start_timeout` after they became ready."""
        timeout_s = self.settings.limits.start_timeout
        return [] if timeout_s is None else await self.store.expire_queued(timeout_s)

    async def prune(self) -> None:
        """Retention: clean finished jobs past `[retention] finished`, delete uploads no job
        names any more once older than `[retention] uploads`, drop events older than
        `[retention] events`, and forget nodes whose heartbeat stopped a day ago."""
        retention = self.settings.retention
        await self.clean(retention.finished)
        await self.uploads.prune(time.time() - retention.uploads)
        await self.store.prune_events(time.time() - retention.events)
        await self.store.forget_nodes(time.time() - _NODE_FORGET_S)

    async def next_run_at(self) -> float | None:
        """The earliest `run_at` among queued jobs (a worker sleeps until it, not polls)."""
        return await self.store.next_run_at()

    # --- the node registry ---------------------------------------------------------------
    async def register(self, node: Node) -> list[Node]:
        """Register `node` (before it claims anything); returns the registry as it was just
        before, which the node's first `recover` judges."""
        before = await self.store.nodes()
        await self.store.heartbeat(node)
        return before

    async def heartbeat(self, node: Node) -> None:
        """Refresh `node`'s row (or register it again): its heartbeat is now."""
        await self.store.heartbeat(node)

    async def unregister(self, name: str) -> bool:
        """Remove a node that stops gracefully; False if it was not registered."""
        return await self.store.remove_node(name)

    async def nodes(self, live: bool = False, owner: str | None = None) -> list[Node]:
        """The registered nodes with the jobs each runs (only `owner`'s, when given); with
        `live`, only those whose heartbeat is within `node_live_s`."""
        return await self.store.nodes(node_live_s(self.settings) if live else None, owner)


def handed_back() -> Outcome:
    """The end of a run given back because its worker stops: queued again at once, the
    attempt not counted."""
    return Outcome(State.QUEUED, retry_at=time.time(), hand_back=True,
                   message=HANDED_BACK)


def node_live_s(settings: Settings) -> float:
    """How recent a node's heartbeat must be for it to count as live (it beats every
    third of a lease period, with its lease renewals)."""
    return NODE_LIVE_LEASES * settings.worker.lease_s


def dead_node(node: Node, me: str, startup: bool = False) -> bool:
    """Whether a registered node is known dead, as node `me` sees it, so that its jobs are
    taken back at once, leases or not: it ran on this machine and its process is gone. At
    start, `me`'s own name stands for the process that had it before (killed, now
    restarted); otherwise `me` is alive. A node elsewhere is never judged by its heartbeat
    here: a late heartbeat (a node busy starting, a congested database) is no proof of
    death, and taking back the jobs of a node whose leases still hold would run them twice.
    Its jobs come back when their leases run out, which is sooner than a heartbeat can tell
    (a lease period against `NODE_LIVE_LEASES` of them)."""
    if node.name == me and not startup:
        return False
    if node.host != socket.gethostname():
        return False  # its leases tell
    alive = _process_since(node.pid, node.started_at)
    if node.name == me and alive:
        log.warning("another live node on this machine is named %s (pid %d)",
                    node.name, node.pid)
    return not alive


def is_local(worker: str) -> bool:
    """Whether a worker named `host:pid` ran on this machine."""
    return worker.rpartition(":")[0] == socket.gethostname()


def _process_since(pid: int, started_at: float) -> bool:
    """Whether process `pid` of this machine exists and is the one that started at
    `started_at` (a process created after that only reuses the number)."""
    try:
        return bool(psutil.Process(pid).create_time() <= started_at + 1)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # not ours to look at: it exists
        return True


def _dead_local_worker(worker: str, me: str) -> bool:
    """A worker of this host named `host:pid` whose process is gone (a crash, kill -9)."""
    if worker == me or not is_local(worker):
        return False
    pid = worker.rpartition(":")[2]
    return pid.isdigit() and not psutil.pid_exists(int(pid))


def log_batches(lines: list[str], max_bytes: int) -> Iterator[list[str]]:
    """`lines` in order, in batches of at most `max_bytes` of text (a longer line alone)."""
    batch: list[str] = []
    size = 0
    for line in lines:
        if batch and size + len(line) > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += len(line)
    if batch:
        yield batch


def protected_paths(settings: Settings) -> tuple[Path, ...]:
    """The server's own files and folders, resolved: its SQLite database (with its `-wal`,
    `-shm` and `-journal` files), its data folder (jobs' folders, outputs, secrets) and its
    config file. A relative SQLite path is taken as the store opens it: from the current
    folder."""
    paths = [settings.data_path]
    if settings.config_file is not None:
        paths.append(settings.config_file.resolve())
    url = settings.storage.url
    if url.startswith("sqlite://"):
        raw = url.removeprefix("sqlite://")
        raw = raw[1:] if raw.startswith("/") else raw
        if raw and not raw.startswith(":memory:"):
            db = Path(raw).resolve()
            paths += [db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal"))]
    return tuple(paths)
