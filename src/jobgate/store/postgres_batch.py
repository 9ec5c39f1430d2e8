"""PostgreSQL's grouped operations: concurrent submits (or finishes) of one process become
one transaction, as SQLite's connection thread does for its batches.

Each call joins the open group of its operation; the group runs when the one before it has
committed, so while a transaction waits for its commit to reach the disk the next calls
gather behind it, and a burst of a thousand submits costs a few transactions and a few
multi-row statements instead of a thousand of each. Every item still gets its own result
or its own error (a full queue refuses one job, not its neighbours); a failure of the
transaction itself reaches every caller of the group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from jobgate.model import Job, State, check_move
from jobgate.scheduler import next_vt, owner_last, serving_turn
from jobgate.store.base import Outcome, QueueFull, Quota
from jobgate.store.rows import COLUMNS, job_from_row, job_values, to_json
from jobgate.store.rows import dumps as _dumps
from jobgate.store.sqlite_batch import event_data

T = TypeVar("T")
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# The type of each of `COLUMNS`, for a multi-row insert from one array per column. Arrays
# go in binary (%b): psycopg quotes each element of a text-format array with a regular
# expression, which costs more than the whole statement for a few hundred JSON strings.
_TYPES = (
    "text", "text", "text", "text", "int", "text", "float8", "text", "int", "int", "float8",
    "float8", "float8", "float8", "text", "text", "text", "int", "float8", "text", "text",
    "text", "bigint", "bigint", "float8", "bool", "int", "text",
)
assert len(_TYPES) == len(COLUMNS.split(","))
_INSERT_SQL = (f"INSERT INTO jobs ({COLUMNS}) SELECT * FROM unnest("
               + ", ".join(f"%b::{t}[]" for t in _TYPES) + ")")


class Tx(Protocol):
    """What the grouped operations use of `postgres._Tx`."""

    now: float

    async def rows(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]: ...
    async def value(self, sql: str, params: Any = ()) -> Any: ...
    async def select(self, where: str, params: Any = ()) -> list[Job]: ...
    async def execute(self, sql: str, params: Any = ()) -> None: ...
    def emit(self, type_: str, job: Job | None, data: dict[str, Any]) -> None: ...
    def announce(self, job: Job, src: State) -> None: ...
    async def move(self, job: Job, dst: State, **fields: Any) -> Job: ...


Run = Callable[[Callable[[Any], Awaitable[T]]], Awaitable[T]]
GroupFn = Callable[[Any, list[ItemT]], Awaitable[list[Any]]]


@dataclass
class _Group(Generic[ItemT]):
    items: list[ItemT] = field(default_factory=list)
    waiters: list[asyncio.Future[Any]] = field(default_factory=list)


class Groups:
    """The open group of each operation name, and the gate that runs them one at a time."""

    def __init__(self) -> None:
        self._open: dict[str, _Group[Any]] = {}
        self._gates: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, name: str, item: ItemT, fn: GroupFn[ItemT], run: Run[list[Any]]
                   ) -> Any:
        """`item`'s result of `fn(tx, items)`, run in one transaction (`run`) with the
        items of every other call of `name` made meanwhile."""
        group = self._open.get(name)
        if group is None:
            group = self._open[name] = _Group()
            task = asyncio.create_task(self._flush(name, group, fn, run),
                                       name=f"jobgate-pg-{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        group.items.append(item)
        group.waiters.append(waiter)
        return await waiter

    async def _flush(self, name: str, group: _Group[ItemT], fn: GroupFn[ItemT],
                     run: Run[list[Any]]) -> None:
        gate = self._gates.setdefault(name, asyncio.Lock())
        try:
            async with gate:
                # From here on, new calls open the next group (which waits for this one).
                if self._open.get(name) is group:
                    del self._open[name]
                items = list(group.items)
                results = await run(lambda tx: fn(tx, items))
        except BaseException as exc:
            if self._open.get(name) is group:
                del self._open[name]
            for waiter in group.waiters:
                if not waiter.done():
                    if isinstance(exc, asyncio.CancelledError):
                        waiter.cancel()
                    else:
                        waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for waiter, value in zip(group.waiters, results, strict=True):
            if waiter.done():  # that caller gave up waiting
                continue
            if isinstance(value, Exception):
                waiter.set_exception(value)
            else:
                waiter.set_result(value)


# Fair turns at a priority (scheduler.serving_turn): the smallest and largest vt queued,
# the largest running; and an owner's last turn (scheduler.owner_last) among its queued and
# running jobs and its finished ones up to the newest open turn. Each is the first entry of
# an index in its order (jobs_dispatch, jobs_owner_state) or an aggregate over the few
# running jobs (jobs_running), so that a deep queue costs one index entry whatever the
# planner's statistics say (read under a lock statement that turns sorting off; `SORT_OFF`).
_PRIORITY_TURNS_SQL = (
    "SELECT (SELECT vt FROM jobs WHERE state = 'queued' AND priority = %(p)s "
    "ORDER BY priority DESC, vt LIMIT 1), "
    "(SELECT vt FROM jobs WHERE state = 'queued' AND priority = %(p)s "
    "ORDER BY vt DESC LIMIT 1), "
    "(SELECT max(vt) FROM jobs WHERE state = 'running' AND priority = %(p)s)"
)
_OWNER_TURNS_SQL = (
    "SELECT GREATEST((SELECT vt FROM jobs WHERE owner = %(o)s AND state = 'queued' "
    "AND priority = %(p)s ORDER BY vt DESC LIMIT 1), (SELECT vt FROM jobs WHERE owner = %(o)s "
    "AND state = 'running' AND priority = %(p)s ORDER BY vt DESC LIMIT 1)), "
    "GREATEST(" + ", ".join(
        f"(SELECT vt FROM jobs WHERE owner = %(o)s AND state = '{state}' AND priority = %(p)s "
        "AND vt <= %(newest)s ORDER BY vt DESC LIMIT 1)"
        for state in ("completed", "failed", "cancelled")) + ")"
)
#: Appended to a transaction's lock statement: what it reads in an index's order it reads
#: by walking that index. Without fresh statistics (a new table, or a burst of jobs since
#: the last ANALYZE) the planner may prefer sorting every queued job, which costs
#: O(queue depth) per statement (8 ms at 5,000 queued).
SORT_OFF = "set_config('enable_sort', 'off', true)"


class Turns:
    """Fair turns (scheduler.next_vt) handed out within one transaction that holds the
    turns lock: the queue's turns and each owner's last turn are read once, then followed
    as jobs enter."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        # priority -> [smallest queued, largest queued or running, largest running]
        self.turns: dict[int, list[int | None]] = {}
        self.last: dict[tuple[str, int], int | None] = {}

    async def next(self, owner: str, priority: int) -> int:
        if priority not in self.turns:
            row = await self.tx.rows(_PRIORITY_TURNS_SQL, {"p": priority})
            q_min, q_max, r_max = row[0]
            newest = max((v for v in (q_max, r_max) if v is not None), default=None)
            self.turns[priority] = [q_min, newest, r_max]
        q_min, newest, r_max = self.turns[priority]
        head = serving_turn(q_min, r_max)
        key = (owner, priority)
        if key not in self.last:
            row = await self.tx.rows(_OWNER_TURNS_SQL, {
                "o": owner, "p": priority, "newest": newest if newest is not None else -1})
            self.last[key] = owner_last(row[0][0], row[0][1], head, newest)
        vt = next_vt(head, self.last[key])
        self.last[key] = vt
        self.turns[priority] = [vt if q_min is None else min(q_min, vt),
                                vt if newest is None else max(newest, vt), r_max]
        return vt


class _Queued:
    """How many jobs are queued, overall and per owner, counted at most up to the limit.

    The caller holds the turns lock, which every move into the queue takes: while it is
    held the real counts can only fall (claims, cancels), so a count kept here is never
    below the truth, and it is read again before it refuses a job."""

    def __init__(self, tx: Tx, rows: list[tuple[Any, ...]]) -> None:
        self.tx = tx
        self.rows = rows  # jobs of this group not yet written: written before a count
        self.total: int | None = None
        self.owners: dict[str, int] = {}

    async def _count_total(self, cap: int) -> int:
        await _flush(self.tx, self.rows)
        n: int = await self.tx.value(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'queued' LIMIT %s) AS q",
            (cap,))
        return n

    async def _count_owner(self, owner: str, cap: int) -> int:
        await _flush(self.tx, self.rows)
        n: int = await self.tx.value(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE owner = %s "
            "AND state = 'queued' LIMIT %s) AS q", (owner, cap))
        return n

    async def check(self, job: Job, quota: Quota) -> None:
        if quota.max_queued is not None:
            cap = quota.max_queued
            if self.total is None or self.total >= cap:
                self.total = await self._count_total(cap)
            if self.total >= cap:
                raise QueueFull(f"queue full: {self.total}/{cap}")
        if quota.per_user_queued is not None:
            cap = quota.per_user_queued
            n = self.owners.get(job.owner)
            if n is None or n >= cap:
                n = self.owners[job.owner] = await self._count_owner(job.owner, cap)
            if n >= cap:
                raise QueueFull(f"queue full for {job.owner}: {n}/{cap}")

    def added(self, job: Job) -> None:
        if self.total is not None:
            self.total += 1
        if job.owner in self.owners:
            self.owners[job.owner] += 1


async def _flush(tx: Tx, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        await tx.execute(_INSERT_SQL, [list(column) for column in zip(*rows, strict=True)])
        rows.clear()


async def _existing(tx: Tx, job: Job, rows: list[tuple[Any, ...]]) -> Job | None:
    """The job a repeated Idempotency-Key or a live unique_key stands for, if any (jobs
    of this group written first, so that a later one finds an earlier one)."""
    if job.idempotency_key is None and job.unique_key is None:
        return None
    await _flush(tx, rows)
    if job.idempotency_key is not None:
        same = await tx.select("owner = %s AND idempotency_key = %s",
                               (job.owner, job.idempotency_key))
        if same:
            return same[0]
    if job.unique_key is not None:
        same = await tx.select(
            "owner = %s AND unique_key = %s AND state IN ('queued', 'running')",
            (job.owner, job.unique_key))
        if same:
            return same[0]
    return None


async def submit_many(tx: Tx, items: list[tuple[Job, Quota]]
                      ) -> list[tuple[Job, bool] | Exception]:
    """Queue jobs (the caller holds the turns lock): each is checked (idempotency, unique
    key, quotas) before anything of it is written, so a refused one leaves no trace beside
    the others; all are written in one multi-row statement where no key asks otherwise."""
    turns = Turns(tx)
    rows: list[tuple[Any, ...]] = []
    queued = _Queued(tx, rows)
    out: list[tuple[Job, bool] | Exception] = []
    for job, quota in items:
        try:
            same = await _existing(tx, job, rows)
            if same is None:
                await queued.check(job, quota)
        except QueueFull as exc:
            out.append(exc)
            continue
        if same is not None:
            out.append((same, False))
            continue
        job.vt = await turns.next(job.owner, job.priority)
        job.state = State.QUEUED
        rows.append(job_values(job))
        queued.added(job)
        tx.emit("job.queued", job, event_data(job))
        out.append((job, True))
    await _flush(tx, rows)
    return out


_END_SQL = (
    "UPDATE jobs SET state = e.state, finished_at = %s, result = e.result, "
    "outputs = e.outputs, cancel_requested = FALSE, "
    "progress = CASE WHEN e.state = 'completed' THEN 100.0 ELSE jobs.progress END, "
    "lease_expires_at = NULL, pid = NULL, error = e.error, message = e.message, "
    "peak_memory_mb = e.peak "
    "FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], "
    "%b::text[], %b::float8[]) AS e(id, token, state, result, outputs, error, message, peak) "
    "WHERE jobs.id = e.id AND jobs.lease_token = e.token AND jobs.state = 'running' "
    f"RETURNING {', '.join('jobs.' + c.strip() for c in COLUMNS.split(','))}"
)


async def finish_many(tx: Tx, items: list[tuple[str, int, Outcome]],
                      requeue: Callable[[Any, Job, Outcome], Awaitable[Job]]
                      ) -> list[State | None]:
    """End runs, fenced by their lease tokens: one statement moves every run that ends
    (completed, failed, cancelled) and returns the rows its events are made of; a run that
    goes back to the queue needs its fair turn and takes `requeue` (under the turns lock,
    which the caller took)."""
    out: dict[int, State | None] = {}
    ending: dict[tuple[str, int], list[int]] = {}
    cols: list[list[Any]] = [[] for _ in range(8)]
    for index, (job_id, token, outcome) in enumerate(items):
        out[index] = None
        if outcome.state is State.QUEUED:
            continue
        check_move(job_id, State.RUNNING, outcome.state)
        if (job_id, token) in ending:  # the same end reported twice: the first one counts
            ending[(job_id, token)].append(index)
            continue
        ending[(job_id, token)] = [index]
        for col, value in zip(cols, (
                job_id, token, outcome.state.value,
                None if outcome.result is None else to_json(outcome.result),
                _dumps(list(outcome.outputs)), outcome.error, outcome.message,
                outcome.peak_memory_mb), strict=True):
            col.append(value)
    if ending:
        for row in await tx.rows(_END_SQL, (tx.now, *cols)):
            job = job_from_row(row)
            indexes = ending[(job.id, job.lease_token)]
            tx.announce(job, State.RUNNING)
            out[indexes[0]] = job.state
    for index, (job_id, token, outcome) in enumerate(items):
        if outcome.state is not State.QUEUED:
            continue
        jobs = await tx.select("id = %s FOR UPDATE", (job_id,))
        if jobs and jobs[0].state is State.RUNNING and jobs[0].lease_token == token:
            out[index] = (await requeue(tx, jobs[0], outcome)).state
    return [out[i] for i in range(len(items))]
