"""SQLite's grouped operations: the submits (or finishes) of many callers, handed to the
connection thread together (`GroupCommit._call_grouped`), become one pass of checks and
one multi-row statement in one transaction; each caller still gets its own result or its
own error. Fair turns (`vt`) for jobs entering the queue are worked out here too."""

from __future__ import annotations

from typing import Any

from jobgate.model import Job, State, check_move
from jobgate.scheduler import next_vt, owner_last, serving_turn
from jobgate.store.base import Outcome, QueueFull, Quota
from jobgate.store.rows import COLUMNS, STATES, to_json
from jobgate.store.rows import dumps as _dumps
from jobgate.store.rows import job_values as _job_values
from jobgate.store.sqlite_batch import Tx, event_data, placeholders

_COLUMNS = COLUMNS
_PLACEHOLDERS = ", ".join("?" for _ in _COLUMNS.split(","))


# Fair turns at one priority (scheduler.serving_turn): the smallest and largest vt queued
# and the largest running, each one entry of an index (jobs_dispatch; jobs_running, as few as run).
_PRIORITY_TURNS = (
    "SELECT (SELECT min(vt) FROM jobs WHERE state = 'queued' AND priority = ?1), "
    "(SELECT max(vt) FROM jobs WHERE state = 'queued' AND priority = ?1), "
    "(SELECT max(vt) FROM jobs WHERE state = 'running' AND priority = ?1)")
# An owner's last turn (scheduler.owner_last): among its queued and running jobs, and its
# finished ones up to the newest open turn (one entry of jobs_owner_state per state).
_OWNER_TURNS = (
    "SELECT (SELECT max(vt) FROM jobs WHERE owner = ?1 AND state IN ('queued', 'running') "
    "AND priority = ?2), "
    "(SELECT max(vt) FROM jobs WHERE owner = ?1 AND state = 'completed' AND priority = ?2 "
    "AND vt <= ?3), "
    "(SELECT max(vt) FROM jobs WHERE owner = ?1 AND state = 'failed' AND priority = ?2 "
    "AND vt <= ?3), "
    "(SELECT max(vt) FROM jobs WHERE owner = ?1 AND state = 'cancelled' AND priority = ?2 "
    "AND vt <= ?3)")


class Turns:
    """Fair turns (scheduler.next_vt) handed out within one operation: the queue's turns
    and each owner's last turn are read once, then followed as jobs enter."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        # priority -> [smallest queued, largest queued or running, largest running]
        self.turns: dict[int, list[int | None]] = {}
        self.last: dict[tuple[str, int], int | None] = {}

    def next(self, owner: str, priority: int) -> int:
        conn = self.tx.conn
        if priority not in self.turns:
            q_min, q_max, r_max = conn.execute(_PRIORITY_TURNS, (priority,)).fetchone()
            newest = max((v for v in (q_max, r_max) if v is not None), default=None)
            self.turns[priority] = [q_min, newest, r_max]
        q_min, newest, r_max = self.turns[priority]
        head = serving_turn(q_min, r_max)
        key = (owner, priority)
        if key not in self.last:
            active, *finished = conn.execute(
                _OWNER_TURNS, (owner, priority, newest if newest is not None else -1)
            ).fetchone()
            self.last[key] = owner_last(
                active, max((v for v in finished if v is not None), default=None), head, newest)
        vt = next_vt(head, self.last[key])
        self.last[key] = vt
        self.turns[priority] = [vt if q_min is None else min(q_min, vt),
                                vt if newest is None else max(newest, vt), r_max]
        return vt


def owner_vt(tx: Tx, owner: str, priority: int) -> int:
    """The fair turn of a job of `owner` entering the queue at `priority` (scheduler.py)."""
    return Turns(tx).next(owner, priority)


def submit_many(tx: Tx, items: list[tuple[Job, Quota]]) -> list[tuple[Job, bool] | Exception]:
    """Queue jobs: each is checked (idempotency, unique key, quotas) before anything of it
    is written, so a refused one leaves no trace beside the others."""
    turns = Turns(tx)
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
        job.vt = turns.next(job.owner, job.priority)
        job.state = State.QUEUED
        rows.append(_job_values(job))
        tx.emit("job.queued", job, event_data(job))
        out.append((job, True))
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
        n = tx.conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'queued' LIMIT ?)",
            (quota.max_queued,)).fetchone()[0]
        if n >= quota.max_queued:
            raise QueueFull(f"queue full: {n}/{quota.max_queued}")
    if quota.per_user_queued is not None:
        n = tx.conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE owner = ? "
            "AND state = 'queued' LIMIT ?)", (job.owner, quota.per_user_queued)
        ).fetchone()[0]
        if n >= quota.per_user_queued:
            raise QueueFull(f"queue full for {job.owner}: {n}/{quota.per_user_queued}")


_END_COLUMNS = ("state", "finished_at", "result", "outputs", "cancel_requested", "progress",
                "lease_expires_at", "pid", "error", "message", "peak_memory_mb")
_END_SQL = (f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in _END_COLUMNS)} "
            "WHERE id = ? AND lease_token = ?")


def finish_many(tx: Tx, items: list[tuple[str, int, Outcome]]) -> list[State | None]:
    """End runs, fenced by their lease tokens: one narrow read and one `executemany` for
    all the runs that end (a retry, which needs its fair turn worked out, takes its own
    move). Each item gets the state its job moved to, or None if its lease moved on."""
    ids = list({job_id for job_id, _, _ in items})
    # What the fence and the end events need, not whole rows: a worker ends jobs in waves.
    current: dict[str, Job] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for id_, state, token, kind, owner, attempt, max_attempts, progress in tx.conn.execute(
                "SELECT id, state, lease_token, kind, owner, attempt, max_attempts, progress "
                f"FROM jobs WHERE id IN ({placeholders(chunk)})", chunk):
            current[id_] = Job(id=id_, kind=kind, owner=owner, args={}, state=STATES[state],
                               lease_token=token, attempt=attempt,
                               max_attempts=max_attempts, progress=progress)
    out: list[State | None] = []
    ended: list[tuple[Any, ...]] = []
    for job_id, token, outcome in items:
        job = current.get(job_id)
        if job is None or job.state is not State.RUNNING or job.lease_token != token:
            out.append(None)  # the lease moved on: somebody else owns this job now
            continue
        common = {"lease_expires_at": None, "pid": None, "error": outcome.error,
                  "message": outcome.message, "peak_memory_mb": outcome.peak_memory_mb}
        if outcome.state is State.QUEUED:
            assert outcome.retry_at is not None
            whole = tx.select("id = ?", (job_id,))[0]
            tx.move(whole, State.QUEUED, vt=owner_vt(tx, whole.owner, whole.priority),
                    run_at=outcome.retry_at, worker=None,
                    attempt=whole.attempt - 1 if outcome.hand_back else whole.attempt,
                    lease_token=whole.lease_token + 1, **common)
            job.state = State.QUEUED  # a second end of the same run finds it gone
            out.append(State.QUEUED)
            continue
        check_move(job.id, State.RUNNING, outcome.state)
        job.state, job.finished_at, job.result = outcome.state, tx.now, outcome.result
        job.outputs = list(outcome.outputs)
        if outcome.state is State.COMPLETED:
            job.progress = 100.0
        job.error, job.message = outcome.error, outcome.message
        job.peak_memory_mb = outcome.peak_memory_mb
        ended.append((job.state.value, job.finished_at, _json_or_none(job.result),
                      _dumps(job.outputs), 0, job.progress, None, None, job.error,
                      job.message, job.peak_memory_mb, job.id, token))
        tx.announce(job, State.RUNNING)
        out.append(job.state)
    if ended:
        tx.conn.executemany(_END_SQL, ended)
    return out


def _json_or_none(value: Any) -> str | None:
    return None if value is None else to_json(value)
