"""SQLite's grouped operations: the submits (or finishes) of many callers, handed to the
connection thread together (`GroupCommit._call_grouped`), become one pass of checks and
one multi-row statement in one transaction; each caller still gets its own result or its
own error. The reads of fair turns (`vt`, worked out by `scheduler.Turns`) are here too."""

from __future__ import annotations

from typing import Any

from jobgate import moves
from jobgate.dependencies import DependencyError
from jobgate.model import Job, State
from jobgate.scheduler import Turns
from jobgate.store.base import Outcome, QueueFull, Quota
from jobgate.store.rows import COLUMNS, RUN_COLUMNS, job_values, run_from_row
from jobgate.store.sqlite_conn import Tx, placeholders
from jobgate.store.sqlite_deps import after_insert, dependency_states, settle_ends

_COLUMNS = COLUMNS
_PLACEHOLDERS = ", ".join("?" for _ in _COLUMNS.split(","))


# Fair turns at one priority (scheduler.serving_turn): the smallest and largest vt queued
# and the largest running, each one entry of an index (jobs_dispatch; jobs_running, as few as run).
_PRIORITY_TURNS = (
    "SELECT (SELECT min(vt) FROM jobs WHERE state = 'queued' AND waiting = 0 "
    "AND priority = ?1), "
    "(SELECT max(vt) FROM jobs WHERE state = 'queued' AND waiting = 0 AND priority = ?1), "
    "(SELECT max(vt) FROM jobs WHERE state = 'running' AND priority = ?1)")
# An owner's last turn (scheduler.owner_last): among its queued and running jobs, and its
# finished ones up to the newest open turn (one entry of jobs_owner_state per state).
_OWNER_TURNS = (
    "SELECT (SELECT max(vt) FROM jobs WHERE owner = ?1 AND state IN ('queued', 'running') "
    "AND priority = ?2 AND waiting = 0), "
    "(SELECT max(vt) FROM jobs WHERE owner = ?1 AND state = 'completed' AND priority = ?2 "
    "AND vt <= ?3), "
    "(SELECT max(vt) FROM jobs WHERE owner = ?1 AND state = 'failed' AND priority = ?2 "
    "AND vt <= ?3), "
    "(SELECT max(vt) FROM jobs WHERE owner = ?1 AND state = 'cancelled' AND priority = ?2 "
    "AND vt <= ?3)")


def next_turn(tx: Tx, owner: str, priority: int, turns: Turns | None = None) -> int:
    """The fair turn of a job of `owner` entering the queue at `priority`
    (`scheduler.Turns`, which `turns` carries from one job of an operation to the next)."""
    turns = Turns() if turns is None else turns
    if not turns.knows_priority(priority):
        turns.add_priority(priority, *tx.conn.execute(_PRIORITY_TURNS, (priority,)).fetchone())
    if not turns.knows_owner(owner, priority):
        active, *finished = tx.conn.execute(
            _OWNER_TURNS, (owner, priority, turns.newest(priority))).fetchone()
        turns.add_owner(owner, priority, active, finished)
    return turns.next(owner, priority)


def submit_many(tx: Tx, items: list[tuple[Job, Quota]]) -> list[tuple[Job, bool] | Exception]:
    """Queue jobs: each is checked (idempotency, unique key, quotas) before anything of it
    is written, so a refused one leaves no trace beside the others."""
    turns = Turns()
    out: list[tuple[Job, bool] | Exception] = []
    rows: list[tuple[Any, ...]] = []
    for job, quota in items:
        try:
            same = _existing(tx, job, rows)
            if same is None:
                _check_quota(tx, job, quota, rows)
        except QueueFull as exc:
            out.append(exc)
            continue
        if same is not None:
            out.append((same, False))
            continue
        rule = moves.NO_DEPENDENCIES
        if job.depends_on:  # read in this transaction: a dependency ending now is seen
            _flush(tx, rows)
            try:
                rule = moves.dependencies(dependency_states(tx, job.depends_on))
            except DependencyError as exc:
                out.append(exc)
                continue
        move = moves.submitted_waiting(job, rule.waiting) if rule.waiting or rule.failed \
            else moves.submitted(job, next_turn(tx, job.owner, job.priority, turns))
        rows.append(job_values(move.job))
        tx.record(move)
        if job.depends_on:
            _flush(tx, rows)
            out.append((after_insert(tx, move.job, rule), True))
            continue
        out.append((move.job, True))
        if job.idempotency_key is not None or job.unique_key is not None:
            _flush(tx, rows)  # later jobs of this batch must find this one
    _flush(tx, rows)
    return out


def _flush(tx: Tx, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        tx.conn.executemany(f"INSERT INTO jobs ({_COLUMNS}) VALUES ({_PLACEHOLDERS})", rows)
        rows.clear()


def _existing(tx: Tx, job: Job, rows: list[tuple[Any, ...]]) -> Job | None:
    """The job a repeated Idempotency-Key or a live unique_key stands for, if any."""
    if job.idempotency_key is None and job.unique_key is None:
        return None
    _flush(tx, rows)
    if job.idempotency_key is not None:
        same = tx.select("owner = ? AND idempotency_key = ?", (job.owner, job.idempotency_key))
        if same:
            return same[0]
    if job.unique_key is not None:
        same = tx.select("owner = ? AND unique_key = ? AND state IN ('queued', 'running')",
                       (job.owner, job.unique_key))
        if same:
            return same[0]
    return None


def _check_quota(tx: Tx, job: Job, quota: Quota, rows: list[tuple[Any, ...]]) -> None:
    # Counting stops at the limit, so a deep queue costs no more than a full one.
    if quota.max_queued is None and quota.per_user_queued is None:
        return
    _flush(tx, rows)
    if quota.max_queued is not None:
        moves.queue_full(tx.conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'queued' LIMIT ?)",
            (quota.max_queued,)).fetchone()[0], quota.max_queued)
    if quota.per_user_queued is not None:
        moves.queue_full(tx.conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE owner = ? "
            "AND state = 'queued' LIMIT ?)", (job.owner, quota.per_user_queued)
        ).fetchone()[0], quota.per_user_queued, job.owner)


def finish_many(tx: Tx, items: list[tuple[str, int, Outcome]]) -> list[State | None]:
    """End runs, fenced by their lease tokens (`moves.settle_runs`): one narrow read and
    one `executemany` for all the runs that end (a run going back to the queue, which needs
    its fair turn worked out, is written on its own). Each item gets the state its job
    moved to, or None if its lease moved on."""
    ids = list({job_id for job_id, _, _ in items})
    current: dict[str, Job] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for row in tx.conn.execute(
                f"SELECT {RUN_COLUMNS} FROM jobs WHERE id IN ({placeholders(chunk)})", chunk):
            current[row[0]] = run_from_row(row)
    settled = moves.settle_runs(items, current, tx.now)
    tx.apply_all(settled.ended)
    for job, outcome in settled.requeue:
        tx.apply(moves.requeued(job, outcome, next_turn(tx, job.owner, job.priority)))
    if settled.ended:
        settle_ends(tx, [m.job for m in settled.ended], lambda j: next_turn(tx, j.owner,
                                                                              j.priority))
    return settled.states
