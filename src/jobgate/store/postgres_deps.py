"""PostgreSQL's SQL for dependencies and batches: the `job_deps` table, the `waiting` and
`batch_id` columns of jobs, the `batches` table, as sqlite_deps.py has them for SQLite.

Exact across nodes: a new job reads its dependencies `FOR SHARE`, and every end of a job
locks its row first (`FOR UPDATE`), so a dependency ending while its dependant is
submitted waits for that submit to commit (and then finds the dependant) or is seen
ended by it; the last two jobs of a batch ending at once take the batch's row in turn, so
exactly one of them ends the batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from jobgate import moves
from jobgate.batches import Batch, completed_data
from jobgate.dependencies import unknown
from jobgate.model import EventType, Job, State
from jobgate.store.postgres_conn import Tx
from jobgate.store.rows import STATES

#: The advisory lock every move into the queue takes to get its fair turn (postgres.py).
TURNS_LOCK = 0x6A6F6202


async def dependency_states(tx: Tx, dep_ids: Sequence[str]) -> dict[str, State | None]:
    """The states of a new job's dependencies ({id: state}), their rows held until commit
    (an end waits for this submit); DependencyError for an id that is no job (any more)."""
    found: dict[str, State | None] = {i: STATES[s] for i, s in await tx.rows(
        "SELECT id, state FROM jobs WHERE id = ANY(%s) ORDER BY id FOR SHARE",
        (list(dep_ids),))}
    for dep in dep_ids:
        if dep not in found:
            raise unknown(dep)
    return found


async def after_insert(tx: Tx, job: Job, rule: moves.Dependencies) -> Job:
    """Record the dependencies of a job just inserted (queued, as `rule` says: waiting,
    or failed at once when one already failed): the job as it is now."""
    await tx.cur.executemany(
        "INSERT INTO job_deps (job_id, dep_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        [(job.id, dep) for dep in job.depends_on])
    if rule.failed is not None:
        return await tx.apply(moves.dependency_failed(job, rule.failed, tx.now))
    if rule.waiting:
        await tx.execute("UPDATE jobs SET waiting = %s WHERE id = %s", (rule.waiting, job.id))
    return job


async def set_batch(tx: Tx, batch: Batch, job_ids: Sequence[str]) -> None:
    """Store a new batch and mark its jobs (already inserted) as its own."""
    await tx.execute("INSERT INTO batches (id, owner, created_at, total, pipeline) "
                     "VALUES (%s, %s, %s, %s, %s)", (batch.id, batch.owner, batch.created_at,
                                                     batch.total, batch.pipeline))
    await tx.execute("UPDATE jobs SET batch_id = %s WHERE id = ANY(%s)",
                     (batch.id, list(job_ids)))


async def read_batch(tx: Tx, batch_id: str, lock: bool = False) -> Batch | None:
    """A batch with its jobs' counts per state, running progress and ids (its row locked
    with `lock`)."""
    row = await tx.row("SELECT id, owner, created_at, total, pipeline, ended_at "
                       "FROM batches WHERE id = %s" + (" FOR UPDATE" if lock else ""),
                       (batch_id,))
    if row is None:
        return None
    counts = {s: int(n) for s, n in await tx.rows(
        "SELECT state, count(*) FROM jobs WHERE batch_id = %s GROUP BY state", (batch_id,))}
    progress = await tx.value("SELECT coalesce(sum(progress), 0) FROM jobs WHERE "
                              "batch_id = %s AND state = 'running'", (batch_id,))
    ids = tuple(r[0] for r in await tx.rows(
        "SELECT id FROM jobs WHERE batch_id = %s ORDER BY id", (batch_id,)))
    return Batch(row[0], row[1], float(row[2]), int(row[3]), bool(row[4]),
                 None if row[5] is None else float(row[5]), counts, float(progress), ids)


def emit_batch(tx: Tx, type_: str, batch: Batch) -> None:
    """A batch's event: its owner's, of no job."""
    tx.pending.append((type_, None, batch.owner, completed_data(batch)))


async def settle_ends(tx: Tx, ended: Sequence[Job],
                      turn: Callable[[Job], Awaitable[int]]) -> None:
    """After jobs ended for good in this transaction (their rows locked): what that means
    for the jobs that wait for them (released at their fair turn `turn(job)`, still
    waiting, or failed, and then theirs in turn), and for their batches."""
    frontier = [j.id for j in ended]
    if not frontier:
        return
    # Most ends have neither dependants nor a batch: one round trip tells.
    row = await tx.row(
        "SELECT EXISTS (SELECT 1 FROM job_deps WHERE dep_id = ANY(%s)), "
        "EXISTS (SELECT 1 FROM jobs WHERE id = ANY(%s) AND batch_id IS NOT NULL)",
        (frontier, frontier))
    if row is not None and not row[0] and not row[1]:
        return
    seen: list[str] = []
    while frontier:
        seen += frontier
        waiting = await tx.select(
            "state = 'queued' AND waiting > 0 AND id IN (SELECT job_id FROM job_deps "
            "WHERE dep_id = ANY(%s)) ORDER BY id FOR UPDATE", (frontier,))
        frontier = []
        states: dict[str, dict[str, State | None]] = {j.id: {} for j in waiting}
        if waiting:
            for job_id, dep_id, state in await tx.rows(
                    "SELECT d.job_id, d.dep_id, j.state FROM job_deps d LEFT JOIN jobs j "
                    "ON j.id = d.dep_id WHERE d.job_id = ANY(%s)", (list(states),)):
                states[job_id][dep_id] = None if state is None else STATES[state]
        for job in waiting:
            rule = moves.dependencies(states[job.id])
            if rule.failed is not None:
                failed = await tx.apply(moves.dependency_failed(job, rule.failed, tx.now))
                frontier.append(failed.id)
            elif rule.waiting:
                await tx.apply(moves.still_waiting(job, rule.waiting))
            else:
                await tx.apply(moves.released(job, tx.now, await turn(job)))
            await tx.execute("UPDATE jobs SET waiting = %s WHERE id = %s",
                             (rule.waiting if rule.failed is None else 0, job.id))
    await end_batches(tx, seen)


async def end_batches(tx: Tx, job_ids: Sequence[str]) -> None:
    """End the batches of these jobs whose last job just ended: `batch.completed`, once
    (the batch's row is taken first, so of two last jobs ending at once, the second sees
    the first one's end)."""
    batch_ids = [r[0] for r in await tx.rows(
        "SELECT DISTINCT batch_id FROM jobs WHERE id = ANY(%s) AND batch_id IS NOT NULL "
        "ORDER BY batch_id", (list(job_ids),))]
    for batch_id in batch_ids:
        open_ = await tx.row("SELECT 1 FROM batches WHERE id = %s AND ended_at IS NULL "
                             "FOR UPDATE", (batch_id,))
        if open_ is None or await tx.row(
                "SELECT 1 FROM jobs WHERE batch_id = %s AND state IN ('queued', 'running') "
                "LIMIT 1", (batch_id,)) is not None:
            continue
        batch = await read_batch(tx, batch_id)
        assert batch is not None
        await tx.execute("UPDATE batches SET ended_at = %s, state = %s WHERE id = %s",
                         (tx.now, batch.state, batch_id))
        emit_batch(tx, EventType.BATCH_COMPLETED,
                   Batch(batch.id, batch.owner, batch.created_at, batch.total,
                         batch.pipeline, tx.now, batch.counts, batch.progress, batch.job_ids))


async def retry_rule(tx: Tx, job: Job) -> moves.Dependencies:
    """What a job retried by hand waits for: its dependencies as they are now."""
    states: dict[str, State | None] = dict.fromkeys(job.depends_on)
    states.update((i, STATES[s]) for i, s in await tx.rows(
        "SELECT id, state FROM jobs WHERE id = ANY(%s) ORDER BY id FOR SHARE",
        (list(job.depends_on),)))
    return moves.dependencies(states)


def locked_turn(tx: Tx, next_turn: Callable[[Job], Awaitable[int]]
                      ) -> Callable[[Job], Awaitable[int]]:
    """`next_turn` taken under the turns lock (taken at the first turn asked for)."""
    async def turn(job: Job) -> int:
        await tx.lock(TURNS_LOCK)
        return await next_turn(job)

    return turn
