"""Where the estimates' inputs are gathered (`eta.py` works them out): one store read per
estimate, bounded.

`Store.eta_snapshot` reads, in one transaction, the first `QUEUED_LIMIT` queued jobs in
dispatch order (deeper ones get no `eta_s`), the running jobs and the live nodes' slots;
the run times of each kind's recent runs ride along with it only when a run ended since
they were last read (or `HISTORY_TTL_S` passed): jobgate's jobs are long, so most estimates
skip them. An estimate just made is reused for
`REUSE_S` while no job entered, started or ended since (listing a page of 1,000 jobs costs
one read; a dashboard polling it, one read a second at most). Making estimates may take a
tenth of the process's time (`SHARE`, saved up to `CREDIT_MAX_S`): a person's submits each
get a fresh one, while a script submitting 5,000 files one by one, once the credit is
spent, gets the estimate in hand again until it is `REUSE_S` old (each submit re-reading and
replaying 2,000 queued jobs made such a burst quadratic). A job newer than the estimate in
hand has no `eta_s` then, and its message says only its position.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jobgate import eta
from jobgate.model import QUEUED_EVENTS, STATE_EVENTS, Event, EventType, Job, State

if TYPE_CHECKING:
    from jobgate.queue import JobQueue

QUEUED_LIMIT = 2000  # queued jobs simulated at most (in dispatch order)
HISTORY_TTL_S = 5.0
REUSE_S = 1.0
SHARE = 0.1
CREDIT_MAX_S = 0.5
_RUN_ENDS = frozenset({EventType.COMPLETED, EventType.FAILED})


class Estimates:
    """A queue's estimates: `eta_s` of queued jobs, `remaining_s` of running ones."""

    def __init__(self, queue: JobQueue, live_within_s: float) -> None:
        self.queue = queue
        self._live_within_s = live_within_s  # a node counts while it beat this recently
        self._history = eta.History({})
        self._history_at = 0.0  # monotonic time of the last read of run times
        self._last: tuple[float, int, eta.Estimate] | None = None  # (when, moves, estimate)
        self._moves = 0  # jobs that entered, started or ended, as this process saw them
        self._ends = 0  # runs that ended (completed, failed), as this process saw them
        self._history_ends = -1  # `_ends` when the run times were last read
        self._credit_s = CREDIT_MAX_S  # time that estimates may still take now
        self._credit_at = time.monotonic()

    def on_events(self, events: list[Event]) -> None:
        """Follow committed events: a move makes the estimate in hand stale."""
        if any(e.type in QUEUED_EVENTS or e.type in STATE_EVENTS for e in events):
            self._moves += 1
        if any(e.type in _RUN_ENDS for e in events):
            self._ends += 1

    async def current(self) -> eta.Estimate:
        """The estimate as of now (one store read, or none when the last is still good)."""
        mono = time.monotonic()
        self._credit_s = min(CREDIT_MAX_S, self._credit_s + SHARE * (mono - self._credit_at))
        self._credit_at = mono
        if self._last is not None and mono - self._last[0] < REUSE_S and (
                self._last[1] == self._moves or self._credit_s <= 0):
            return self._last[2]
        moves, ends = self._moves, self._ends
        fresh = ends != self._history_ends or mono - self._history_at >= HISTORY_TTL_S
        snapshot, runs = await self.queue.store.eta_snapshot(
            QUEUED_LIMIT, eta.HISTORY if fresh else 0, self._live_within_s)
        if runs is not None:
            self._history, self._history_at = eta.History(runs), mono
            self._history_ends = ends
        estimate = eta.estimate(snapshot, self.queue.live.limits, self._history, time.time())
        self._last = (mono, moves, estimate)
        self._credit_s -= time.monotonic() - mono
        return estimate

    async def annotate(self, jobs: Sequence[Job], shown: Sequence[dict[str, Any]]) -> None:
        """Add `eta_s` and `remaining_s` to the jobs' JSON (`shown`, one per job), and to a
        queued job's empty message its position and start ('position 4, starts in about 3
        min'). No read when no job of them is queued or running."""
        active = any(j.state in (State.QUEUED, State.RUNNING) for j in jobs)
        estimate = await self.current() if active else eta.Estimate()
        live = self.queue.live
        for job, out in zip(jobs, shown, strict=True):
            out["eta_s"] = None
            if job.id in estimate.remaining_s:  # started since it was read: it starts now
                out["eta_s"] = 0.0 if job.state is State.QUEUED else None
            elif job.state is State.QUEUED and live.held_message(job.kind) is None:
                # While its kind or the queue is paused nobody knows when it starts.
                out["eta_s"] = estimate.eta_s.get(job.id)
            out["remaining_s"] = estimate.remaining_s.get(job.id) \
                if job.state is State.RUNNING else None
            if job.state is State.QUEUED and out.get("message") is None:
                out["message"] = eta.queued_message(out.get("position"), out["eta_s"])
