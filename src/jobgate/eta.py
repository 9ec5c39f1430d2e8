"""Estimated start and end times: when each queued job starts (`eta_s`), when each running
one ends (`remaining_s`). Pure functions, no I/O; `estimates.py` gathers the inputs.

Not a formula but a simulation of the dispatcher: the queued jobs are walked in dispatch
order (the order `position` counts) over a model of the slots, with the admission code the
claim itself runs (`scheduler.admit`: per-user and per-kind caps, the memory budget and its
head-of-line rule). Time moves from event to event: a running job ends at now +
`remaining_s` and frees its slot, memory and caps; a delayed job becomes due at its
`run_at`; a job waiting for dependencies is released when the last of them ends (it then
takes its owner's next fair turn, as a real release does). At each event the free slots
are filled as a claim would fill them, and each job started lasts its kind's typical run
time: the mean of its recent runs with the shortest and longest tenth left out (a deep
job's start is a sum of many runs, which is their mean times their number, not their
median; the trimming keeps one hung run from moving it).

What is not known is not guessed: a kind with no finished run yet has no typical run time.
Its jobs still take their turn in the simulation (for a default duration), but from the
moment such a job runs, any start after it depends on when it ends: those jobs get
`eta_s` None (their message gives the position only). The same holds from now on when a
running job has neither history nor enough progress to say when it ends.

A running job's `remaining_s` comes from its progress rate once it reported at least
`MIN_PROGRESS_PCT` (elapsed * (100 - p) / p), blended with its kind's history until
`TRUST_PROGRESS_PCT` (early progress is noisy: a download's first percent includes its
connection setup); without progress it is the typical of what the kind's recent runs that
lasted longer than this one has so far still took (so a job past its typical time is not
"due any second" forever), or a small `overrun` when none of them lasted that long.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from jobgate.scheduler import Candidate, Limits, Running, admit

MIN_PROGRESS_PCT = 3.0  # progress below this says nothing of the rate yet
TRUST_PROGRESS_PCT = 25.0  # from here on the progress rate alone says when a job ends
DEFAULT_RUN_S = 60.0  # a kind with no history, inside the simulation only (never shown)
HISTORY = 50  # recent finished runs per kind that its typical run time is taken from

Key = tuple[int, int, str]  # (-priority, vt, id): the dispatch order


@dataclass(frozen=True)
class Queued:
    """A queued job, as far as the simulation needs it. `depends_on`: the ids of its
    dependencies not yet ended (empty once it is in the dispatch order)."""

    id: str
    kind: str
    owner: str
    memory_mb: int
    priority: int
    vt: int
    run_at: float
    depends_on: tuple[str, ...] = ()

    @property
    def key(self) -> Key:
        return (-self.priority, self.vt, self.id)


@dataclass(frozen=True)
class Active:
    """A running job."""

    id: str
    kind: str
    owner: str
    memory_mb: int
    started_at: float
    progress: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """What runs and waits now, read together. `slots`: the slots of the live worker
    nodes (None: no node registered, the limits alone count)."""

    queued: list[Queued]
    running: list[Active]
    slots: int | None = None


class History:
    """Recent run times (s) per kind, each list sorted."""

    def __init__(self, runs: Mapping[str, Iterable[float]]) -> None:
        self._runs = {k: sorted(max(0.0, r) for r in v) for k, v in runs.items()}
        self._runs = {k: v for k, v in self._runs.items() if v}
        every = sorted(r for v in self._runs.values() for r in v)
        # What an unknown kind lasts inside the simulation (its jobs' ends are not shown).
        self.default_s = _typical(every) if every else DEFAULT_RUN_S

    def kinds(self) -> set[str]:
        return set(self._runs)

    def typical(self, kind: str) -> float | None:
        """The kind's typical run time, or None: no run of it finished yet."""
        runs = self._runs.get(kind)
        return _typical(runs) if runs else None

    def left_after(self, kind: str, elapsed: float) -> float | None:
        """How long a run of `kind` that has lasted `elapsed` s still takes: the typical of
        what the recent runs longer than that still took, or `overrun` when none was."""
        runs = self._runs.get(kind)
        if not runs:
            return None
        longer = runs[bisect_right(runs, elapsed):]
        if not longer:
            return overrun(_typical(runs))
        return _typical([r - elapsed for r in longer])


def overrun(typical_s: float) -> float:
    """What a job already past every recent run of its kind is still given."""
    return max(1.0, typical_s / 10)


def remaining_s(job: Active, history: History, now: float) -> float | None:
    """Seconds until a running job ends (None: nothing to tell it by)."""
    elapsed = max(0.0, now - job.started_at)
    by_history = history.left_after(job.kind, elapsed)
    p = job.progress
    if p is None or not math.isfinite(p) or p < MIN_PROGRESS_PCT:
        return by_history
    if p >= 100:
        return 0.0
    by_rate = elapsed * (100 - p) / p
    if by_history is None or p >= TRUST_PROGRESS_PCT:
        return by_rate
    weight = (p - MIN_PROGRESS_PCT) / (TRUST_PROGRESS_PCT - MIN_PROGRESS_PCT)
    return weight * by_rate + (1 - weight) * by_history


@dataclass
class Estimate:
    """`eta_s` by queued job id and `remaining_s` by running job id (None: unknown; a
    queued job left out of the snapshot is absent)."""

    eta_s: dict[str, float | None] = field(default_factory=dict)
    remaining_s: dict[str, float | None] = field(default_factory=dict)


def estimate(snapshot: Snapshot, limits: Limits, history: History, now: float) -> Estimate:
    """Simulate the dispatcher from `now` on (see the module's docstring)."""
    out = Estimate()
    capacity = limits.max_running if snapshot.slots is None else \
        min(limits.max_running, snapshot.slots)
    model = replace(limits, max_running=capacity, node_memory_budget_mb=None,
                    node_memory_free_mb=None)
    running = Running()
    ends: list[tuple[float, int, str, str, str, int]] = []  # (end, n, id, owner, kind, mb)
    horizon = math.inf  # past this instant, a start depends on an end nobody can tell
    n = 0
    for active in snapshot.running:
        left = remaining_s(active, history, now)
        out.remaining_s[active.id] = None if left is None else round(left, 1)
        if left is None:
            horizon = now
            left = history.default_s
        running.add(active.owner, active.kind, active.memory_mb)
        heapq.heappush(ends, (now + left, n, active.id, active.owner, active.kind,
                              active.memory_mb))
        n += 1

    sim = _Queue(snapshot.queued, {j.id for j in snapshot.running})
    starts: dict[str, float] = {}
    t = now
    while True:
        while ends and ends[0][0] <= t:
            _, _, job_id, owner, kind, mb = heapq.heappop(ends)
            running.add(owner, kind, -mb, count=-1)
            sim.ended(job_id, t)
        sim.due(t)
        room = capacity - running.total
        if room > 0 and sim.candidates:
            for chosen in admit(sim.candidates, model, running, room):
                job = sim.start(chosen.id, t)
                starts[job.id] = t
                typical = history.typical(job.kind)
                if typical is None:
                    horizon = min(horizon, t)
                    typical = history.default_s
                heapq.heappush(ends, (t + typical, n, job.id, job.owner, job.kind,
                                      job.memory_mb))
                n += 1
        upcoming = [x for x in (ends[0][0] if ends else None, sim.next_due()) if x is not None]
        if not upcoming:
            break  # what is left can never start (nothing runs, nothing comes due)
        t = max(t, min(upcoming))

    for job in snapshot.queued:
        start = starts.get(job.id)
        out.eta_s[job.id] = None if start is None or start > horizon else \
            round(start - now, 1)
    return out


class _Queue:
    """The simulated queue: jobs in the dispatch order (`candidates`, what a claim reads),
    jobs not due yet (a heap by `run_at`), jobs waiting for dependencies."""

    def __init__(self, queued: Sequence[Queued], running_ids: set[str]) -> None:
        self.jobs = {j.id: j for j in queued}
        self._keys: list[Key] = []
        self.candidates: list[Candidate] = []
        self._due: list[tuple[float, Key, str]] = []
        self._blocking: dict[str, list[str]] = {}  # dependency id -> jobs waiting for it
        self._missing: dict[str, int] = {}  # job id -> dependencies not yet ended
        # The fair turns, as far as releases need them: per (owner, priority) the owner's
        # latest turn, per priority the turn being served (the latest started).
        self._last: dict[tuple[str, int], int] = {}
        self._serving: dict[int, int] = {}
        known = set(self.jobs) | running_ids
        for job in sorted(queued, key=lambda j: j.key):
            deps = [d for d in job.depends_on if d in known]
            if deps:
                self._missing[job.id] = len(deps)
                for dep in deps:
                    self._blocking.setdefault(dep, []).append(job.id)
                continue
            if job.depends_on:  # its dependencies ended since: released at its next turn
                job = self._release(job)
            self._turn(job)
            self._enter(job)

    def _turn(self, job: Queued) -> None:
        mark = (job.owner, job.priority)
        self._last[mark] = max(self._last.get(mark, 0), job.vt)

    def _release(self, job: Queued) -> Queued:
        head = self._serving.get(job.priority, 1)
        vt = max(head, self._last.get((job.owner, job.priority), 0) + 1)
        job = replace(job, vt=vt, depends_on=())
        self.jobs[job.id] = job
        return job

    def _enter(self, job: Queued) -> None:
        heapq.heappush(self._due, (job.run_at, job.key, job.id))

    def due(self, t: float) -> None:
        """Jobs whose `run_at` came join the dispatch order."""
        while self._due and self._due[0][0] <= t:
            _, key, job_id = heapq.heappop(self._due)
            job = self.jobs[job_id]
            i = bisect_left(self._keys, key)
            self._keys.insert(i, key)
            self.candidates.insert(i, Candidate(job.id, job.kind, job.owner, job.memory_mb))

    def next_due(self) -> float | None:
        return self._due[0][0] if self._due else None

    def start(self, job_id: str, t: float) -> Queued:
        job = self.jobs[job_id]
        i = bisect_left(self._keys, job.key)
        del self._keys[i]
        del self.candidates[i]
        self._serving[job.priority] = max(self._serving.get(job.priority, 0), job.vt)
        return job

    def ended(self, job_id: str, t: float) -> None:
        """A job ended at `t`: those waiting for it alone are released."""
        for waiter in self._blocking.pop(job_id, ()):
            self._missing[waiter] -= 1
            if self._missing[waiter] == 0:
                del self._missing[waiter]
                job = self._release(self.jobs[waiter])
                self._turn(job)
                self._enter(replace(job, run_at=max(job.run_at, t)))


def humanise(seconds: float) -> str:
    """'under a minute', 'about 3 min', 'about 2 h', 'about 3 days'."""
    if seconds < 60:
        return "under a minute"
    if seconds < 3600 - 30:
        return f"about {max(1, round(seconds / 60))} min"
    if seconds < 48 * 3600:
        return f"about {max(1, round(seconds / 3600))} h"
    return f"about {round(seconds / 86400)} days"


def queued_message(position: int | None, eta_s: float | None) -> str | None:
    """A queued job's message: 'position 4, starts in about 3 min', 'position 4' (no
    estimate), 'starts in about 2 h' (delayed: no position yet), or None."""
    parts = []
    if position is not None:
        parts.append(f"position {position}")
    if eta_s is not None:
        parts.append(f"starts in {humanise(eta_s)}")
    return ", ".join(parts) or None


def _typical(values: Sequence[float]) -> float:
    """The mean without the lowest and highest tenth (of ten values or more)."""
    ordered = sorted(values)
    cut = len(ordered) // 10
    kept = ordered[cut:len(ordered) - cut]
    return sum(kept) / len(kept)
