"""PostgreSQL's grouped operations: the submits (or finishes) of many callers of one
process, gathered by `postgres_conn.Groups`, become one transaction and a few multi-row
statements, as SQLite's are (sqlite_grouped.py); each caller still gets its own result or
its own error (a full queue refuses one job, not its neighbours). The reads of fair turns
(`vt`, worked out by `scheduler.Turns`) are here too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from jobgate import moves
from jobgate.dependencies import DependencyError
from jobgate.model import Job, State
from jobgate.scheduler import Turns
from jobgate.store.base import Outcome, QueueFull, Quota
from jobgate.store.postgres_conn import COLUMN_TYPES, Tx
from jobgate.store.postgres_deps import (
    after_insert,
    dependency_states,
    locked_turn,
    settle_ends,
)
from jobgate.store.rows import COLUMNS, RUN_COLUMNS, job_values, run_from_row

_INSERT_SQL = (f"INSERT INTO jobs ({COLUMNS}) SELECT * FROM unnest("
               + ", ".join(f"%b::{COLUMN_TYPES[c.strip()]}[]" for c in COLUMNS.split(","))
               + ")")


# Fair turns at a priority (scheduler.serving_turn): the smallest and largest vt queued,
# the largest running; and an owner's last turn (scheduler.owner_last) among its queued and
# running jobs and its finished ones up to the newest open turn. Each is the first entry of
# an index in its order (jobs_dispatch, jobs_owner_state) or an aggregate over the few
# running jobs (jobs_running), so that a deep queue costs one index entry whatever the
# planner's statistics say (read under a lock statement that turns sorting off; `SORT_OFF`).
_PRIORITY_TURNS_SQL = (
    "SELECT (SELECT vt FROM jobs WHERE state = 'queued' AND waiting = 0 AND priority = %(p)s "
    "ORDER BY priority DESC, vt LIMIT 1), "
    "(SELECT vt FROM jobs WHERE state = 'queued' AND waiting = 0 AND priority = %(p)s "
    "ORDER BY vt DESC LIMIT 1), "
    "(SELECT max(vt) FROM jobs WHERE state = 'running' AND priority = %(p)s)"
)
_OWNER_TURNS_SQL = (
    "SELECT GREATEST((SELECT vt FROM jobs WHERE owner = %(o)s AND state = 'queued' "
    "AND waiting = 0 AND priority = %(p)s ORDER BY vt DESC LIMIT 1), "
    "(SELECT vt FROM jobs WHERE owner = %(o)s "
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


async def next_turn(tx: Tx, owner: str, priority: int, turns: Turns | None = None) -> int:
    """The fair turn of a job of `owner` entering the queue at `priority`
    (`scheduler.Turns`, which `turns` carries from one job of an operation to the next);
    the caller holds the turns lock."""
    turns = Turns() if turns is None else turns
    if not turns.knows_priority(priority):
        turns.add_priority(priority, *(await tx.rows(_PRIORITY_TURNS_SQL, {"p": priority}))[0])
    if not turns.knows_owner(owner, priority):
        active, finished = (await tx.rows(_OWNER_TURNS_SQL, {
            "o": owner, "p": priority, "newest": turns.newest(priority)}))[0]
        turns.add_owner(owner, priority, active, (finished,))
    return turns.next(owner, priority)


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
            moves.queue_full(self.total, cap)
        if quota.per_user_queued is not None:
            cap = quota.per_user_queued
            n = self.owners.get(job.owner)
            if n is None or n >= cap:
                n = self.owners[job.owner] = await self._count_owner(job.owner, cap)
            moves.queue_full(n, cap, job.owner)

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
    turns = Turns()
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
        rule = moves.NO_DEPENDENCIES
        if job.depends_on:  # read (and held) in this transaction: an end waits for it
            await _flush(tx, rows)
            try:
                rule = moves.dependencies(await dependency_states(tx, job.depends_on))
            except DependencyError as exc:
                out.append(exc)
                continue
        move = moves.submitted_waiting(job, rule.waiting) if rule.waiting or rule.failed \
            else moves.submitted(job, await next_turn(tx, job.owner, job.priority, turns))
        rows.append(job_values(move.job))
        queued.added(job)
        tx.record(move)
        if job.depends_on:
            await _flush(tx, rows)
            out.append((await after_insert(tx, move.job, rule), True))
            continue
        out.append((move.job, True))
    await _flush(tx, rows)
    return out


async def finish_many(tx: Tx, items: list[tuple[str, int, Outcome]]) -> list[State | None]:
    """End runs, fenced by their lease tokens (`moves.settle_runs`): one narrow read that
    locks the rows, and one statement for all the runs that end (a run going back to the
    queue, which needs its fair turn, is written on its own, under the turns lock the
    caller took). Each item gets the state its job moved to, or None if its lease moved on."""
    current = {row[0]: run_from_row(row) for row in await tx.rows(
        f"SELECT {RUN_COLUMNS} FROM jobs WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
        (list({job_id for job_id, _, _ in items}),))}
    settled = moves.settle_runs(items, current, tx.now)
    await tx.apply_all(settled.ended)
    for job, outcome in settled.requeue:
        await tx.apply(moves.requeued(job, outcome, await next_turn(tx, job.owner, job.priority)))
    if settled.ended:
        await settle_ends(tx, [m.job for m in settled.ended], turn_of(tx))
    return settled.states


def turn_of(tx: Tx) -> Callable[[Job], Awaitable[int]]:
    """A job's fair turn as it becomes ready (under the turns lock, taken then)."""
    return locked_turn(tx, lambda job: next_turn(tx, job.owner, job.priority))
