"""SQLite's SQL for dependencies and batches: the `job_deps` table, the `waiting` and
`batch_id` columns of jobs, the `batches` table. What a job's dependencies come to is
decided in moves.py; this reads, calls the rule and writes, inside the transaction of the
operation that submits a job or ends one (which holds SQLite's write lock, so a dependency
that ends while its dependant is submitted is seen by one of the two, never by neither).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jobgate import moves
from jobgate.batches import Batch, completed_data
from jobgate.dependencies import unknown
from jobgate.model import EventType, Job, State
from jobgate.store.rows import STATES
from jobgate.store.sqlite_conn import Tx, placeholders

_CHUNK = 500  # ids per IN (...)


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i:i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def dependency_states(tx: Tx, dep_ids: Sequence[str]) -> dict[str, State | None]:
    """The states of a new job's dependencies ({id: state}); DependencyError for an id
    that is no job (any more)."""
    found: dict[str, State | None] = {}
    for chunk in _chunks(dep_ids):
        found.update((i, STATES[s]) for i, s in tx.conn.execute(
            f"SELECT id, state FROM jobs WHERE id IN ({placeholders(chunk)})", chunk))
    for dep in dep_ids:
        if dep not in found:
            raise unknown(dep)
    return found


def after_insert(tx: Tx, job: Job, rule: moves.Dependencies) -> Job:
    """Record the dependencies of a job just inserted (queued, as `rule` says: waiting,
    or failed at once when one already failed): the job as it is now."""
    tx.conn.executemany("INSERT OR IGNORE INTO job_deps (job_id, dep_id) VALUES (?, ?)",
                        [(job.id, dep) for dep in job.depends_on])
    if rule.failed is not None:
        return tx.apply(moves.dependency_failed(job, rule.failed, tx.now))
    if rule.waiting:
        tx.conn.execute("UPDATE jobs SET waiting = ? WHERE id = ?", (rule.waiting, job.id))
    return job


def set_batch(tx: Tx, batch: Batch, job_ids: Sequence[str]) -> None:
    """Store a new batch and mark its jobs (already inserted) as its own."""
    tx.conn.execute("INSERT INTO batches (id, owner, created_at, total, pipeline) "
                    "VALUES (?, ?, ?, ?, ?)", (batch.id, batch.owner, batch.created_at,
                                               batch.total, int(batch.pipeline)))
    tx.conn.executemany("UPDATE jobs SET batch_id = ? WHERE id = ?",
                        [(batch.id, job_id) for job_id in job_ids])


def read_batch(tx: Tx, batch_id: str) -> Batch | None:
    """A batch with its jobs' counts per state, running progress and ids."""
    row = tx.conn.execute("SELECT id, owner, created_at, total, pipeline, ended_at "
                          "FROM batches WHERE id = ?", (batch_id,)).fetchone()
    if row is None:
        return None
    counts = dict(tx.conn.execute("SELECT state, count(*) FROM jobs WHERE batch_id = ? "
                                  "GROUP BY state", (batch_id,)).fetchall())
    progress = tx.conn.execute("SELECT coalesce(sum(progress), 0) FROM jobs WHERE "
                               "batch_id = ? AND state = 'running'", (batch_id,)).fetchone()[0]
    ids = tuple(r[0] for r in tx.conn.execute(
        "SELECT id FROM jobs WHERE batch_id = ? ORDER BY id", (batch_id,)))
    return Batch(row[0], row[1], row[2], row[3], bool(row[4]), row[5], counts,
                 float(progress), ids)


def emit_batch(tx: Tx, type_: str, batch: Batch) -> None:
    """A batch's event: its owner's, of no job."""
    tx.pending.append((type_, None, batch.owner, completed_data(batch)))


def settle_ends(tx: Tx, ended: Sequence[Job], turn: Callable[[Job], int]) -> None:
    """After jobs ended for good in this transaction: what that means for the jobs that
    wait for them (released at their fair turn `turn(job)`, still waiting, or failed, and
    then theirs in turn), and for their batches (the last job's end ends the batch)."""
    frontier = [j.id for j in ended]
    seen: list[str] = []
    while frontier:
        seen += frontier
        waiting: list[Job] = []
        for chunk in _chunks(frontier):
            waiting += tx.select(
                "state = 'queued' AND waiting > 0 AND id IN (SELECT job_id FROM job_deps "
                f"WHERE dep_id IN ({placeholders(chunk)}))", tuple(chunk))
        frontier = []
        states: dict[str, dict[str, State | None]] = {j.id: {} for j in waiting}
        for chunk in _chunks(list(states)):
            for job_id, dep_id, state in tx.conn.execute(
                    "SELECT d.job_id, d.dep_id, j.state FROM job_deps d LEFT JOIN jobs j "
                    f"ON j.id = d.dep_id WHERE d.job_id IN ({placeholders(chunk)})", chunk):
                states[job_id][dep_id] = None if state is None else STATES[state]
        for job in sorted(waiting, key=lambda j: j.id):
            rule = moves.dependencies(states[job.id])
            if rule.failed is not None:
                frontier.append(tx.apply(moves.dependency_failed(job, rule.failed,
                                                                 tx.now)).id)
            elif rule.waiting:
                tx.apply(moves.still_waiting(job, rule.waiting))
            else:
                tx.apply(moves.released(job, tx.now, turn(job)))
            tx.conn.execute("UPDATE jobs SET waiting = ? WHERE id = ?",
                            (rule.waiting if rule.failed is None else 0, job.id))
    end_batches(tx, seen)


def end_batches(tx: Tx, job_ids: Sequence[str]) -> None:
    """End the batches of these jobs whose last job just ended: `batch.completed`, once."""
    batch_ids: set[Any] = set()
    for chunk in _chunks(job_ids):
        batch_ids.update(r[0] for r in tx.conn.execute(
            f"SELECT DISTINCT batch_id FROM jobs WHERE id IN ({placeholders(chunk)}) "
            "AND batch_id IS NOT NULL", chunk))
    for batch_id in sorted(batch_ids):
        open_ = tx.conn.execute("SELECT 1 FROM batches WHERE id = ? AND ended_at IS NULL",
                                (batch_id,)).fetchone()
        if open_ is None or tx.conn.execute(
                "SELECT 1 FROM jobs WHERE batch_id = ? AND state IN ('queued', 'running') "
                "LIMIT 1", (batch_id,)).fetchone() is not None:
            continue
        batch = read_batch(tx, batch_id)
        assert batch is not None
        tx.conn.execute("UPDATE batches SET ended_at = ?, state = ? WHERE id = ?",
                        (tx.now, batch.state, batch_id))
        emit_batch(tx, EventType.BATCH_COMPLETED,
                   Batch(batch.id, batch.owner, batch.created_at, batch.total,
                         batch.pipeline, tx.now, batch.counts, batch.progress, batch.job_ids))


def retry_rule(tx: Tx, job: Job) -> moves.Dependencies:
    """What a job retried by hand waits for: its dependencies as they are now."""
    states: dict[str, State | None] = dict.fromkeys(job.depends_on)
    for chunk in _chunks(job.depends_on):
        states.update((i, STATES[s]) for i, s in tx.conn.execute(
            f"SELECT id, state FROM jobs WHERE id IN ({placeholders(chunk)})", chunk))
    return moves.dependencies(states)
