"""Admission: which queued jobs may start now. Pure functions, no I/O.

Dispatch order is `Job.dispatch_key`: priority (higher first), then virtual time `vt`,
then id. `vt` is how users share the queue fairly: it numbers each user's jobs by turns,
and the queue takes every user's turn n before anyone's turn n + 1. Within one priority a
job entering the queue gets `max(head, last + 1)` (`next_vt`):

- `head` is the turn being served (`serving_turn`): the oldest turn still queued, or the
  newest turn running when that is older. So a newcomer whose first job arrives while
  another user's first job runs gets that same turn and goes before that user's second
  job (counting queued jobs only, it tied with that second job and lost on id). The
  newest running turn, not the oldest: a job that runs for hours does not hold the turn
  back while the other slots serve later turns (a newcomer would get a head start over
  everyone queued, and a returning user credit for every turn they missed).
- `last` is the owner's latest turn (`owner_last`): the largest vt among its queued and
  running jobs, and among its finished jobs whose turn is still open (from `head` to the
  newest turn queued or running). So a user who submits again each time a job ends is
  numbered on from their last job, not given the current turn again and again (which
  would let them pass, one job at a time, everyone queued behind a long-running job).

A user with 50 queued jobs does not starve one with 1, a user whose jobs run now does not
jump ahead again, and within one user it is first in, first out. A retried job gets a new
vt the same way, behind its owner's peers. When nothing is queued or running at a
priority the turns start again from 1, and earlier finished jobs count for nothing.
Nothing is remembered beyond the jobs in the table, so a high-priority job or a job
admitted past a capped kind does not push anyone's turn.

The keys never change while a job waits, so a job's position is its rank among the
queued keys, kept in an order-statistic index (`positions.py`) instead of counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple


def next_vt(head_vt: int | None, owner_last_vt: int | None) -> int:
    """The virtual time of a job entering the queue now (see the module's docstring)."""
    return max(head_vt or 1, (owner_last_vt or 0) + 1)


def serving_turn(queued_min: int | None, running_max: int | None) -> int | None:
    """The turn being served at one priority: the oldest turn still queued, or the newest
    turn running when that is older (None: nothing is queued or running)."""
    if queued_min is None or running_max is None:
        return running_max if queued_min is None else queued_min
    return min(queued_min, running_max)


class Turns:
    """Fair turns (`next_vt`) handed out within one operation, worked out once for every
    backend. The backend reads, when `knows_priority` / `knows_owner` say it has not yet,
    the queue's turns at a priority (`add_priority`) and an owner's last turns
    (`add_owner`, finished ones up to `newest`); from then on the turns are followed here
    as jobs enter, so a batch of submits costs one read per priority and per owner."""

    def __init__(self) -> None:
        # priority -> (smallest queued, largest queued or running, largest running)
        self._turns: dict[int, tuple[int | None, int | None, int | None]] = {}
        self._last: dict[tuple[str, int], int | None] = {}

    def knows_priority(self, priority: int) -> bool:
        return priority in self._turns

    def add_priority(self, priority: int, queued_min: int | None, queued_max: int | None,
                     running_max: int | None) -> None:
        newest = max((v for v in (queued_max, running_max) if v is not None), default=None)
        self._turns[priority] = (queued_min, newest, running_max)

    def newest(self, priority: int) -> int:
        """The newest turn queued or running at `priority` (-1: none), the bound of the
        finished jobs `add_owner` wants."""
        newest = self._turns[priority][1]
        return -1 if newest is None else newest

    def knows_owner(self, owner: str, priority: int) -> bool:
        return (owner, priority) in self._last

    def add_owner(self, owner: str, priority: int, active_last: int | None,
                  finished_last: Iterable[int | None]) -> None:
        """`active_last`: the owner's largest vt queued or running at `priority`;
        `finished_last`: its largest finished ones (any number, None for none) up to
        `newest(priority)`."""
        queued_min, newest, running_max = self._turns[priority]
        finished = max((v for v in finished_last if v is not None), default=None)
        self._last[(owner, priority)] = owner_last(
            active_last, finished, serving_turn(queued_min, running_max), newest)

    def next(self, owner: str, priority: int) -> int:
        """The turn of `owner`'s job entering the queue at `priority` now (both reads
        added first)."""
        queued_min, newest, running_max = self._turns[priority]
        vt = next_vt(serving_turn(queued_min, running_max), self._last[(owner, priority)])
        self._last[(owner, priority)] = vt
        self._turns[priority] = (vt if queued_min is None else min(queued_min, vt),
                                 vt if newest is None else max(newest, vt), running_max)
        return vt


def owner_last(active_last: int | None, finished_last: int | None, head: int | None,
               newest: int | None) -> int | None:
    """An owner's latest turn: the largest vt of its queued and running jobs
    (`active_last`), or of its finished jobs (`finished_last`, the largest at most
    `newest`, the newest turn queued or running) while that turn is still open."""
    if finished_last is not None and head is not None and newest is not None and \
            head <= finished_last <= newest:
        return finished_last if active_last is None else max(active_last, finished_last)
    return active_last


@dataclass(frozen=True)
class Limits:
    """What may run at once, across every node of one database."""

    max_running: int
    per_user_running: int | None = None
    memory_budget_mb: int | None = None
    kind_max_running: dict[str, int] = field(default_factory=dict)
    # The claiming node's own budget, and what of it its running jobs leave free.
    node_memory_budget_mb: int | None = None
    node_memory_free_mb: int | None = None
    # Per-user overrides of `per_user_running` (controls.py: config and live).
    user_running: dict[str, int] = field(default_factory=dict)

    def running_cap(self, owner: str) -> int | None:
        """How many jobs of `owner` may run at once (None: no cap of its own)."""
        return self.user_running.get(owner, self.per_user_running)


@dataclass
class Running:
    """What runs now: counts by owner and kind, and the memory they reserve."""

    total: int = 0
    memory_mb: int = 0
    by_owner: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)

    def add(self, owner: str, kind: str, memory_mb: int, count: int = 1) -> None:
        self.total += count
        self.memory_mb += memory_mb
        self.by_owner[owner] += count
        self.by_kind[kind] += count


    @classmethod
    def of(cls, rows: Iterable[tuple[Any, ...]]) -> Running:
        """What runs, from rows of (owner, kind, count, memory_mb summed)."""
        running = cls()
        for owner, kind, count, memory_mb in rows:
            running.add(owner, kind, int(memory_mb), int(count))
        return running


class Candidate(NamedTuple):
    """What admission reads of a queued job (a claim reads these columns, not whole rows)."""

    id: str
    kind: str
    owner: str
    memory_mb: int


class Ask(NamedTuple):
    """What a claim reads next: the first ready queued jobs, in dispatch order, of `kinds`,
    of no owner in `owners`, at most `limit` (a backend may also leave out `seen`)."""

    kinds: list[str]
    owners: set[str]
    seen: set[str]
    limit: int


@dataclass
class MemoryGate:
    """Memory admission's state over the reads of one claim: whether a job waits for
    memory at the head (`held`), and what the claiming node has left (`node_free_mb`).
    Kept across reads, so a job read later never passes one held in an earlier read."""

    held: bool = False
    node_free_mb: int | None = None


class Admission:
    """One claim's admission, the loop every backend drives: `ask` says what to read,
    `offer` admits from what was read (`admit`), until the slots are full, nothing is
    left, or `ROUNDS` reads were made. Admission reads a few columns of the first
    candidates; when limits filled up on the way (a user or kind reached its cap), it
    reads on past them."""

    ROUNDS = 4

    def __init__(self, limits: Limits, running: Running, slots: int, kinds: list[str]) -> None:
        self.limits, self.running, self.kinds = limits, running, kinds
        self.room = free_slots(limits, running, slots)
        self.admitted: list[Candidate] = []
        self.seen: set[str] = set()
        self.gate = MemoryGate(node_free_mb=limits.node_memory_free_mb)
        self._reads = 0
        self._exhausted = False

    def ask(self) -> Ask | None:
        """The next read, or None: admission is over (`admitted` holds its choice)."""
        want = self.room - len(self.admitted)
        if self._exhausted or self._reads >= self.ROUNDS or want <= 0:
            return None
        owners, full_kinds = blocked(self.limits, self.running)
        kinds = [k for k in self.kinds if k not in full_kinds]
        if not kinds:
            return None
        return Ask(kinds, owners, set(self.seen), want * 2 + 8)

    def offer(self, candidates: list[Candidate]) -> None:
        """Admit from the candidates `ask`'s read found (those seen before are skipped)."""
        self._reads += 1
        fresh = [c for c in candidates if c.id not in self.seen]
        if not fresh:
            self._exhausted = True
            return
        self.seen.update(c.id for c in fresh)
        want = self.room - len(self.admitted)
        self.admitted += admit(fresh, self.limits, self.running, want, self.gate)


def free_slots(limits: Limits, running: Running, slots: int) -> int:
    """How many jobs a node with `slots` free slots may claim at most."""
    return max(0, min(slots, limits.max_running - running.total))


def blocked(limits: Limits, running: Running) -> tuple[set[str], set[str]]:
    """Owners and kinds that are at their limit, so no job of theirs can start."""
    owners = {o for o, n in running.by_owner.items()
              if (cap := limits.running_cap(o)) is not None and n >= cap}
    kinds = {k for k, cap in limits.kind_max_running.items() if running.by_kind[k] >= cap}
    return owners, kinds


def admit(candidates: list[Candidate], limits: Limits, running: Running, slots: int,
          gate: MemoryGate | None = None) -> list[Candidate]:
    """The candidates (in dispatch order) that may start now, honouring every limit.

    Memory is handed out in dispatch order. The first job that needs memory and does not
    fit waits at the head, and no job that needs memory may pass it: as running jobs end,
    their memory goes to it, so a big job is never starved by a stream of small ones.
    Jobs that reserve no memory still pass; so do jobs behind one that this node could
    never hold (another node may take it). The price: while a big job waits for memory,
    memory that small jobs could use stays idle.

    `running` and `gate` (this claim's memory state, when it reads in several rounds) are
    updated with the admitted jobs.
    """
    chosen: list[Candidate] = []
    room = free_slots(limits, running, slots)
    if gate is None:
        gate = MemoryGate(node_free_mb=limits.node_memory_free_mb)
    for job in candidates:
        if len(chosen) >= room:
            break
        owner_cap = limits.running_cap(job.owner)
        if owner_cap is not None and running.by_owner[job.owner] >= owner_cap:
            continue
        cap = limits.kind_max_running.get(job.kind)
        if cap is not None and running.by_kind[job.kind] >= cap:
            continue
        if job.memory_mb > 0:
            if gate.held:  # a job waits for memory: nothing that needs memory passes it
                continue
            fits = (limits.memory_budget_mb is None
                    or running.memory_mb + job.memory_mb <= limits.memory_budget_mb) and \
                (gate.node_free_mb is None or job.memory_mb <= gate.node_free_mb)
            if not fits:
                gate.held = limits.node_memory_budget_mb is None or \
                    job.memory_mb <= limits.node_memory_budget_mb
                continue
            if gate.node_free_mb is not None:
                gate.node_free_mb -= job.memory_mb
        running.add(job.owner, job.kind, job.memory_mb)
        chosen.append(job)
    return chosen


def backoff_s(attempt: int, base_s: float, max_s: float, jitter: float) -> float:
    """Exponential backoff before retry number `attempt` (1 = first retry).

    `jitter` in [0, 1) spreads retries of many jobs failing together ("full jitter" on
    the upper half, so a retry never comes sooner than half the nominal delay).
    """
    doublings = min(max(0, attempt - 1), 60)  # past that, max_s wins anyway
    nominal: float = min(max_s, base_s * 2**doublings)
    return nominal / 2 + nominal / 2 * jitter
