"""The SQLite backend: the operations on jobs, users and events, in SQL.

Each public method builds one operation, a function of an open transaction (`Tx`), and
hands it to the connection thread (`sqlite_conn.GroupCommit`), which runs it inside a
group commit. What happens to a job is decided in `moves.py`: an operation reads rows,
calls the rule and writes what it returns.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

from jobgate import moves
from jobgate.batches import Batch
from jobgate.controls import Change, Controls, dispatch
from jobgate.deliveries import Attempt, Delivery
from jobgate.eta import Snapshot
from jobgate.model import FINAL, DispatchKey, Event, EventType, Job, State
from jobgate.scheduler import Admission, Ask, Candidate, Limits, Running
from jobgate.schedules import Firing
from jobgate.store import sqlite_controls as controls_sql
from jobgate.store import sqlite_deliveries as outbox
from jobgate.store import sqlite_eta
from jobgate.store import sqlite_logs as logs_sql
from jobgate.store import sqlite_schedules as schedules_sql
from jobgate.store import sqlite_stats as stats_sql
from jobgate.store import sqlite_users as users_sql
from jobgate.store.base import (
    DAY_S,
    HOUR_S,
    Conflict,
    LogSize,
    MetricCounts,
    Node,
    Outcome,
    Page,
    Quota,
    ScheduleState,
    Span,
    Stats,
    Store,
    TokenInfo,
    Upload,
    User,
    UserInfo,
    ended_counts,
)
from jobgate.store.rows import durations_by_kind, event_from_row, lease_cutoff, search_terms
from jobgate.store.sqlite_conn import GroupCommit, SchemaTooNew, Tx, latest_version, placeholders
from jobgate.store.sqlite_deps import (
    emit_batch,
    end_batches,
    read_batch,
    retry_rule,
    set_batch,
    settle_ends,
)
from jobgate.store.sqlite_grouped import finish_many, next_turn, submit_many

__all__ = ["SchemaTooNew", "SqliteStore", "latest_version"]

_FINAL = tuple(s.value for s in FINAL)


#: The spans `metric_counts` makes histograms of: a finished job's queue wait, its run.
_WAIT, _RUN = "(started_at - created_at)", "(finished_at - started_at)"


class SqliteStore(GroupCommit, Store):
    """Jobs in one SQLite file. `durability="normal"` skips the fsync of each commit."""

    # --- jobs ---------------------------------------------------------------------------
    async def submit(self, job: Job, quota: Quota) -> tuple[Job, bool]:
        return await self._call_grouped("submit", (job, quota), submit_many)

    async def get(self, job_id: str) -> Job | None:
        def op(tx: Tx) -> Job | None:
            rows = tx.select("id = ?", (job_id,))
            return rows[0] if rows else None

        return await self._call(op, write=False)

    async def list_jobs(
        self,
        owner: str | None,
        state: State | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
        q: str | None = None,
    ) -> Page:
        where, params = ["1 = 1"], []
        for clause, value in (("owner = ?", owner), ("state = ?", state), ("kind = ?", kind),
                              ("id < ?", before)):
            if value is not None:
                where.append(clause)
                params.append(value)
        if q:
            prefix, pieces = search_terms(q)
            where.append("(lower(id) LIKE lower(?) ESCAPE '\\' " + "".join(
                " OR instr(lower(args), lower(?)) > 0" for _ in pieces) + ")")
            params.extend([prefix, *pieces])

        def op(tx: Tx) -> Page:
            jobs = tx.select(" AND ".join(where) + " ORDER BY id DESC LIMIT ?",
                           (*params, limit + 1))
            more = len(jobs) > limit
            return Page(jobs[:limit], jobs[limit - 1].id if more else None)

        return await self._call(op, write=False)

    async def claim(
        self, worker: str, slots: int, limits: Limits, lease_s: float, kinds: list[str]
    ) -> list[Job]:
        return await self._call(lambda tx: _claim(tx, worker, slots, limits, lease_s, kinds))

    async def finish_and_claim(
        self, ends: list[tuple[str, int, Outcome]], worker: str, slots: int, limits: Limits,
        lease_s: float, kinds: list[str],
    ) -> tuple[list[State | None], list[Job]]:
        def op(tx: Tx) -> tuple[list[State | None], list[Job]]:
            ended = finish_many(tx, ends) if ends else []
            return ended, _claim(tx, worker, slots, limits, lease_s, kinds)

        return await self._call(op)

    async def renew(self, worker: str, leases: dict[str, int], lease_s: float,
                    wait: bool = True) -> set[str]:
        # One write lock for the whole file: no row is held apart from the others.
        def op(tx: Tx) -> set[str]:
            stop = set(leases)
            tx.conn.executemany(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_token = ? "
                "AND state = 'running'",
                [(tx.now + lease_s, job_id, token) for job_id, token in leases.items()],
            )
            for job_id, token, state, cancel in tx.conn.execute(
                "SELECT id, lease_token, state, cancel_requested FROM jobs "
                f"WHERE id IN ({placeholders(leases)})", list(leases)
            ):
                if moves.still_held(state, token, leases[job_id], cancel):
                    stop.discard(job_id)
            return stop

        if not leases:
            return set()
        return await self._call(op)

    async def set_pid(self, job_id: str, token: int, pid: int | None) -> None:
        def op(tx: Tx) -> None:
            tx.conn.execute("UPDATE jobs SET pid = ? WHERE id = ? AND lease_token = ?",
                            (pid, job_id, token))

        await self._call(op)

    async def finish(self, job_id: str, token: int, outcome: Outcome) -> State | None:
        return await self._call_grouped("finish", (job_id, token, outcome), finish_many)

    async def progress(
        self, job_id: str, token: int, percent: float | None, message: str | None,
        rss_mb: float | None = None,
    ) -> None:
        def op(tx: Tx) -> None:
            cur = tx.conn.execute(
                "UPDATE jobs SET progress = coalesce(?, progress), message = coalesce(?, message)"
                " WHERE id = ? AND lease_token = ? AND state = 'running' RETURNING owner",
                (percent, message, job_id, token),
            )
            row = cur.fetchone()
            if row is not None:
                tx.emit(EventType.PROGRESS, Job(job_id, "", row[0], {}),
                        moves.progress_data(percent, message, rss_mb))

        await self._call(op)

    async def append_logs(self, job_id: str, lines: list[str], cap: int) -> int | None:
        return await self._call(lambda tx: logs_sql.append(tx, job_id, lines, cap))

    async def replace_logs(self, job_id: str, lines: Mapping[int, str]) -> None:
        await self._call(lambda tx: logs_sql.replace(tx, job_id, lines))

    async def logs(self, job_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        return await self._call(lambda tx: logs_sql.read(tx, job_id, after, limit),
                                write=False)

    async def log_size(self, job_id: str) -> LogSize | None:
        return await self._call(lambda tx: logs_sql.size_of(tx, job_id), write=False)

    async def cancel(self, job_id: str) -> Job:
        def op(tx: Tx) -> Job:
            job = tx.one(job_id)
            move = moves.cancelled(job, tx.now)
            if move is None:
                return job
            after = tx.apply(move)
            if after.state is State.CANCELLED:
                settle_ends(tx, [after], lambda j: next_turn(tx, j.owner, j.priority))
            return after

        return await self._call(op)

    async def retry(self, job_id: str) -> Job:
        def op(tx: Tx) -> Job:
            job = tx.one(job_id)
            if job.depends_on and job.state in (State.FAILED, State.CANCELLED):
                rule = retry_rule(tx, job)
                if rule.failed is not None:
                    raise Conflict(f"job {job_id} depends on {rule.failed}, which did not "
                                   "complete: retry that job first")
                if rule.waiting:
                    after = tx.apply(moves.retried_waiting(job, tx.now, rule.waiting))
                    tx.conn.execute("UPDATE jobs SET waiting = ? WHERE id = ?",
                                    (rule.waiting, job_id))
                    return after
            return tx.apply(moves.retried(job, tx.now, next_turn(tx, job.owner, job.priority)))

        return await self._call(op)

    async def delete(self, job_id: str) -> Job:
        def op(tx: Tx) -> Job:
            job = tx.one(job_id)
            moves.check_deletable(job)
            _delete(tx, [job_id])
            return job

        return await self._call(op)

    async def recover(self, lost_workers: Collection[str] = (),
                      keep: Mapping[str, int] | None = None,
                      expired_before: float | None = None,
                      stall_grace_s: float = 0.0) -> list[Job]:
        lost = list(lost_workers)
        held = dict(keep or {})

        def op(tx: Tx) -> list[Job]:
            out: list[Job] = []
            cutoff = lease_cutoff(tx.now, expired_before, tx.stall, stall_grace_s)
            for job in tx.select("state = 'running' AND (lease_expires_at < ? OR worker IN "
                                 f"({placeholders(lost)}))", (cutoff, *lost)):
                if moves.is_held(job, held):
                    continue
                vt = next_turn(tx, job.owner, job.priority) \
                    if moves.recovery_state(job) is State.QUEUED else None
                move = moves.recovered(job, tx.now, vt)
                tx.apply(move)
                out.append(moves.lost_run(move, job))
            settle_ends(tx, [j for j in out if j.state in FINAL],
                        lambda j: next_turn(tx, j.owner, j.priority))
            return out

        return await self._call(op)

    async def expire_queued(self, start_timeout_s: float) -> list[Job]:
        def op(tx: Tx) -> list[Job]:
            jobs = tx.select("state = 'queued' AND waiting = 0 AND run_at < ?",
                             (tx.now - start_timeout_s,))
            failed = [tx.apply(moves.expired(job, tx.now, start_timeout_s)) for job in jobs]
            settle_ends(tx, failed, lambda j: next_turn(tx, j.owner, j.priority))
            return failed

        return await self._call(op)

    async def finished_before(
        self, ts: float, owner: str | None = None, keep_per_user: int | None = None
    ) -> list[str]:
        def op(tx: Tx) -> list[str]:
            ids = [r[0] for r in tx.conn.execute(
                "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? "
                "AND (? IS NULL OR owner = ?)", (ts, owner, owner))]
            if keep_per_user is not None:
                ids += [r[0] for r in tx.conn.execute(
                    "SELECT id FROM (SELECT id, finished_at, row_number() OVER "
                    "(PARTITION BY owner ORDER BY finished_at DESC) AS rn FROM jobs "
                    "WHERE finished_at IS NOT NULL AND (? IS NULL OR owner = ?)) WHERE rn > ? "
                    "AND finished_at >= ?", (owner, owner, keep_per_user, ts))]
            return ids

        return await self._call(op, write=False)

    async def delete_many(self, job_ids: list[str]) -> int:
        def op(tx: Tx) -> int:
            return _delete(tx, job_ids)

        return await self._call(op) if job_ids else 0

    # --- the queue ----------------------------------------------------------------------
    async def queued_keys(self) -> list[tuple[DispatchKey, float]]:
        def op(tx: Tx) -> list[tuple[DispatchKey, float]]:
            return [((-p, vt, i), run_at) for p, vt, i, run_at in tx.conn.execute(
                "SELECT priority, vt, id, run_at FROM jobs WHERE state = 'queued' "
                "AND waiting = 0")]

        return await self._call(op, write=False)

    async def next_run_at(self) -> float | None:
        def op(tx: Tx) -> float | None:
            value = tx.conn.execute(
                "SELECT min(run_at) FROM jobs WHERE state = 'queued' AND waiting = 0"
            ).fetchone()[0]
            return None if value is None else float(value)

        return await self._call(op, write=False)

    async def stats(self) -> Stats:
        def op(tx: Tx) -> Stats:
            counts = {s.value: 0 for s in State}
            counts.update(dict(tx.conn.execute(
                "SELECT state, count(*) FROM jobs GROUP BY state").fetchall()))
            reserved = tx.conn.execute("SELECT coalesce(sum(memory_mb), 0) FROM jobs "
                                       "WHERE state = 'running'").fetchone()[0]
            last_min = tx.conn.execute("SELECT count(*) FROM jobs WHERE finished_at >= ? "
                                       "AND state = 'completed'", (tx.now - 60,)).fetchone()[0]
            done, ok, avg, last_15 = tx.conn.execute(
                "SELECT count(*), sum(state = 'completed'), "
                "avg(CASE WHEN state = 'completed' THEN finished_at - started_at END), "
                "sum(state = 'completed' AND finished_at >= ?) "
                "FROM jobs WHERE finished_at >= ?", (tx.now - 900, tx.now - 3600)).fetchone()
            waiting = tx.conn.execute(
                "SELECT count(*) FROM jobs WHERE state = 'queued' AND waiting > 0").fetchone()[0]
            hour, day = ended_counts(tx.conn.execute(
                "SELECT state, count(*), sum(finished_at >= ?) FROM jobs WHERE finished_at >= ? "
                "AND state IN ('completed', 'failed', 'cancelled') GROUP BY state",
                (tx.now - HOUR_S, tx.now - DAY_S)))
            # The first entry of the partial index jobs_run_at.
            oldest_due = tx.conn.execute(
                "SELECT min(run_at) FROM jobs WHERE state = 'queued' AND waiting = 0 "
                "AND run_at <= ?", (tx.now,)).fetchone()[0]
            return Stats(counts, reserved, last_min, avg, (ok / done) if done else None,
                         waiting, int(last_15 or 0), int(ok or 0), hour, day, oldest_due)

        return await self._call(op, write=False)

    async def metric_counts(self, bounds: tuple[float, ...]) -> MetricCounts:
        def op(tx: Tx) -> MetricCounts:
            jobs = {(state, kind): int(n) for state, kind, n in tx.conn.execute(
                "SELECT state, kind, count(*) FROM jobs GROUP BY state, kind")}
            deliveries = {(channel, state): int(n) for channel, state, n in tx.conn.execute(
                "SELECT channel, state, count(*) FROM deliveries GROUP BY channel, state")}
            le = "".join(f", sum({span} <= ?)" for span in (_WAIT, _RUN) for _ in bounds)
            waits, runs = durations_by_kind(tx.conn.execute(
                f"SELECT kind, count(*), sum({_WAIT}), sum({_RUN}){le} FROM jobs "
                "WHERE state IN ('completed', 'failed', 'cancelled') "
                "AND started_at IS NOT NULL AND finished_at IS NOT NULL GROUP BY kind",
                bounds * 2).fetchall(), len(bounds))
            return MetricCounts(jobs, deliveries, waits, runs)

        return await self._call(op, write=False)

    async def owner_counts(self) -> dict[str, tuple[int, int]]:
        return await self._call(stats_sql.owner_counts, write=False)

    async def recent_spans(self, since: float, limit: int) -> list[Span]:
        return await self._call(lambda tx: stats_sql.recent_spans(tx, since, limit),
                                write=False)

    async def running_jobs(self, worker: str | None = None) -> list[Job]:
        def op(tx: Tx) -> list[Job]:
            return tx.select("state = 'running' AND (? IS NULL OR worker = ?)",
                           (worker, worker))

        return await self._call(op, write=False)

    async def eta_snapshot(self, queued_limit: int, history: int, live_within_s: float
                           ) -> tuple[Snapshot, dict[str, list[float]] | None]:
        return await self._call(lambda tx: sqlite_eta.snapshot(
            tx, queued_limit, history, tx.now - live_within_s), write=False)

    async def recent_peaks(self, kind: str, limit: int) -> list[float]:
        def op(tx: Tx) -> list[float]:
            return [float(r[0]) for r in tx.conn.execute(
                "SELECT peak_memory_mb FROM jobs WHERE kind = ? AND state = 'completed' "
                "AND peak_memory_mb IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT ?",
                (kind, limit))]

        return await self._call(op, write=False)

    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        def op(tx: Tx) -> list[Event]:
            return [event_from_row(r) for r in tx.conn.execute(
                "SELECT seq, type, ts, job_id, owner, data FROM events WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (seq, limit))]

        return await self._call(op, write=False)

    async def prune_events(self, before_ts: float) -> int:
        def op(tx: Tx) -> int:
            # Events are numbered in commit order, so the old ones are the first: the first
            # event at or after `before_ts` is found by walking `seq` from the start.
            return tx.conn.execute(
                "DELETE FROM events WHERE seq < coalesce("
                "(SELECT seq FROM events WHERE ts >= ? ORDER BY seq LIMIT 1), "
                "(SELECT max(seq) + 1 FROM events))", (before_ts,)).rowcount

        return await self._call(op)

    # --- worker nodes -------------------------------------------------------------------
    async def heartbeat(self, node: Node) -> None:
        def op(tx: Tx) -> None:
            tx.conn.execute(
                "INSERT INTO nodes (name, host, pid, slots, version, started_at, heartbeat_at, "
                "running_rss_mb, memory_available_mb) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "host = excluded.host, pid = excluded.pid, slots = excluded.slots, "
                "version = excluded.version, started_at = excluded.started_at, "
                "heartbeat_at = excluded.heartbeat_at, running_rss_mb = excluded.running_rss_mb, "
                "memory_available_mb = excluded.memory_available_mb",
                (node.name, node.host, node.pid, node.slots, node.version, node.started_at,
                 tx.now, node.running_rss_mb, node.memory_available_mb))

        await self._call(op)

    async def nodes(self, alive_within_s: float | None = None,
                    owner: str | None = None) -> list[Node]:
        def op(tx: Tx) -> list[Node]:
            since = -1.0 if alive_within_s is None else tx.now - alive_within_s
            busy: Counter[str] = Counter()
            running: dict[str, list[str]] = {}
            for worker, job_id, job_owner in tx.conn.execute(
                    "SELECT worker, id, owner FROM jobs WHERE state = 'running' ORDER BY id"):
                busy[worker] += 1
                if owner is None or job_owner == owner:
                    running.setdefault(worker, []).append(job_id)
            rows = tx.conn.execute(
                "SELECT name, host, pid, slots, version, started_at, heartbeat_at, "
                "running_rss_mb, memory_available_mb FROM nodes "
                "WHERE heartbeat_at >= ? ORDER BY name", (since,))
            return [Node(name, host, int(pid), int(slots), version, float(started),
                         float(beat), busy[name], tuple(running.get(name, ())),
                         None if rss is None else float(rss),
                         None if free is None else int(free))
                    for name, host, pid, slots, version, started, beat, rss, free in rows]

        return await self._call(op, write=False)

    async def remove_node(self, name: str) -> bool:
        def op(tx: Tx) -> bool:
            return tx.conn.execute("DELETE FROM nodes WHERE name = ?", (name,)).rowcount > 0

        return await self._call(op)

    async def forget_nodes(self, before_ts: float) -> int:
        def op(tx: Tx) -> int:
            return tx.conn.execute("DELETE FROM nodes WHERE heartbeat_at < ?",
                                   (before_ts,)).rowcount

        return await self._call(op)

    # --- users --------------------------------------------------------------------------
    async def add_user(self, name: str, password_hash: str | None, admin: bool) -> User:
        def op(tx: Tx) -> User:
            try:
                tx.conn.execute("INSERT INTO users (name, password_hash, admin, created_at) "
                                "VALUES (?, ?, ?, ?)", (name, password_hash, int(admin), tx.now))
            except sqlite3.IntegrityError:
                raise Conflict(f"user {name} already exists") from None
            return User(name, admin, password_hash, tx.now)

        return await self._call(op)

    async def get_user(self, name: str) -> User | None:
        return await self._call(lambda tx: users_sql.get(tx, name), write=False)

    async def add_token(self, user: str, token_hash: str, name: str | None = None
                        ) -> TokenInfo:
        return await self._call(lambda tx: users_sql.add_token(tx, user, token_hash, name))

    async def user_for_token(self, token_hash: str) -> User | None:
        return await self._call(lambda tx: users_sql.for_token(tx, token_hash), write=False)

    async def list_users(self) -> list[UserInfo]:
        return await self._call(users_sql.list_users, write=False)

    async def remove_user(self, name: str) -> bool:
        return await self._call(lambda tx: users_sql.remove(tx, name))

    async def update_user(self, name: str, *, password_hash: str | None = None,
                          admin: bool | None = None, bump_generation: bool = False) -> User:
        return await self._call(lambda tx: users_sql.update(tx, name, password_hash, admin,
                                                            bump_generation))

    async def list_tokens(self, user: str) -> list[TokenInfo]:
        return await self._call(lambda tx: users_sql.list_tokens(tx, user), write=False)

    async def revoke_token(self, token_id: str, user: str | None = None) -> TokenInfo | None:
        return await self._call(lambda tx: users_sql.revoke(tx, token_id, user))

    async def touch_token(self, token_hash: str, at: float) -> None:
        await self._call(lambda tx: users_sql.touch(tx, token_hash, at))

    # --- uploads ------------------------------------------------------------------------
    async def add_upload(self, upload: Upload) -> None:
        def op(tx: Tx) -> None:
            tx.conn.execute(
                "INSERT INTO uploads (id, owner, name, size, sha256, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (upload.id, upload.owner, upload.name,
                                              upload.size, upload.sha256, upload.created_at))

        await self._call(op)

    async def get_upload(self, upload_id: str) -> Upload | None:
        def op(tx: Tx) -> Upload | None:
            row = tx.conn.execute(f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE id = ?",
                                  (upload_id,)).fetchone()
            return Upload(*row) if row else None

        return await self._call(op, write=False)

    async def list_uploads(self, owner: str) -> list[Upload]:
        def op(tx: Tx) -> list[Upload]:
            return [Upload(*r) for r in tx.conn.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE owner = ? ORDER BY id DESC",
                (owner,))]

        return await self._call(op, write=False)

    async def uploads_size(self, owner: str) -> int:
        def op(tx: Tx) -> int:
            row = tx.conn.execute("SELECT coalesce(sum(size), 0) FROM uploads WHERE owner = ?",
                                  (owner,)).fetchone()
            return int(row[0])

        return await self._call(op, write=False)

    async def uploads_before(self, before_ts: float, limit: int = 1000) -> list[Upload]:
        def op(tx: Tx) -> list[Upload]:
            return [Upload(*r) for r in tx.conn.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE created_at < ? "
                "ORDER BY created_at, id LIMIT ?", (before_ts, limit))]

        return await self._call(op, write=False)

    async def delete_upload(self, upload_id: str, reference: str = "",
                            busy: Collection[State] = ()) -> bool:
        def op(tx: Tx) -> bool:
            states = [s.value for s in busy]
            # instr(), not LIKE: the reference is matched as it is, wildcards and case too.
            return tx.conn.execute(
                "DELETE FROM uploads WHERE id = ? AND NOT EXISTS (SELECT 1 FROM jobs j "
                f"WHERE j.owner = uploads.owner AND j.state IN ({placeholders(states)}) "
                "AND instr(j.args, ?) > 0)", (upload_id, *states, reference)).rowcount > 0

        return await self._call(op)

    # --- schedules (sqlite_schedules.py) ------------------------------------------------
    async def sync_schedules(self, starts: list[tuple[str, str, float]]) -> None:
        await self._call(lambda tx: schedules_sql.sync(tx, starts))

    async def schedule_states(self) -> dict[str, ScheduleState]:
        return await self._call(schedules_sql.states, write=False)

    async def fire_schedule(self, name: str, expected_due: float, next_due: float,
                            firings: list[Firing], quota: Quota) -> list[Firing] | None:
        return await self._call(lambda tx: schedules_sql.fire(
            tx, name, expected_due, next_due, firings, quota))

    async def schedule_firings(self, name: str, limit: int = 100) -> list[Firing]:
        return await self._call(lambda tx: schedules_sql.history(tx, name, limit), write=False)

    async def prune_firings(self, before_ts: float) -> int:
        return await self._call(lambda tx: schedules_sql.prune(tx, before_ts))

    # --- batches ------------------------------------------------------------------------
    async def submit_batch(self, batch: Batch, jobs: list[Job], quota: Quota) -> list[Job]:
        def op(tx: Tx) -> list[Job]:
            queued = owner_queued = None
            if quota.max_queued is not None:
                queued = tx.conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'queued' LIMIT ?)",
                    (quota.max_queued,)).fetchone()[0]
            if quota.per_user_queued is not None:
                owner_queued = tx.conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE owner = ? "
                    "AND state = 'queued' LIMIT ?)", (batch.owner, quota.per_user_queued)
                ).fetchone()[0]
            moves.batch_fits(len(jobs), queued, owner_queued, quota, batch.owner)
            out: list[Job] = []
            for result in submit_many(tx, [(job, Quota()) for job in jobs]):
                if isinstance(result, Exception):
                    raise result  # all or none: the savepoint undoes the others
                out.append(result[0])
            set_batch(tx, batch, [j.id for j in out])
            created = read_batch(tx, batch.id)
            assert created is not None
            emit_batch(tx, EventType.BATCH_CREATED, created)
            end_batches(tx, [j.id for j in out if j.state in FINAL])
            return out

        return await self._call(op)

    async def get_batch(self, batch_id: str) -> Batch | None:
        return await self._call(lambda tx: read_batch(tx, batch_id), write=False)

    # --- operator controls (sqlite_controls.py) -----------------------------------------
    async def controls(self) -> Controls:
        return await self._call(controls_sql.read, write=False)

    async def change_controls(self, change: Change, by: str) -> Controls:
        return await self._call(lambda tx: controls_sql.change(tx, change, by))

    # --- deliveries -----------------------------------------------------------------
    def _after_moves(self, tx: Tx, changes: list[moves.Move]) -> None:
        outbox.enqueue(tx, changes, self.delivery_rules)

    async def add_webhook(self, job_id: str, url: str) -> None:
        await self._call(lambda tx: outbox.add_webhook(tx, job_id, url))

    async def remove_webhook(self, job_id: str) -> None:
        await self._call(lambda tx: outbox.remove_webhook(tx, job_id))

    async def claim_deliveries(self, worker: str, limit: int, lease_s: float
                               ) -> list[Delivery]:
        return await self._call(lambda tx: outbox.claim(tx, worker, limit, lease_s))

    async def record_attempt(self, delivery_id: str, attempt: Attempt,
                             permanent: bool = False) -> Delivery | None:
        return await self._call(lambda tx: outbox.record(
            tx, delivery_id, attempt, self.delivery_rules, permanent))

    async def deliveries(self, job_id: str) -> list[Delivery]:
        return await self._call(lambda tx: outbox.of_job(tx, job_id), write=False)


_UPLOAD_COLUMNS = "id, owner, name, size, sha256, created_at"


def _claim(tx: Tx, worker: str, slots: int, limits: Limits, lease_s: float,
           kinds: list[str]) -> list[Job]:
    """Move up to `slots` ready jobs to running, in dispatch order, within `limits` and the
    operator's controls."""
    limits, kinds = dispatch(limits, kinds, controls_sql.read(tx), worker)
    if not kinds:
        return []
    admission = Admission(limits, Running.of(tx.conn.execute(
        "SELECT owner, kind, count(*), coalesce(sum(memory_mb), 0) FROM jobs "
        "WHERE state = 'running' GROUP BY owner, kind")), slots, kinds)
    while (ask := admission.ask()) is not None:
        admission.offer(_candidates(tx, ask))
    if not admission.admitted:
        return []
    ids = [j.id for j in admission.admitted]
    # The batch holds the write lock from `tx.now` on, so nothing else can take these jobs
    # before it commits; the lease still counts from here, not from the start of a batch
    # that ran other operations first.
    now = time.time()
    claims = [moves.claimed(job, worker, now, lease_s)
              for job in sorted(tx.select(f"id IN ({placeholders(ids)})", tuple(ids)),
                                key=lambda j: j.dispatch_key)]
    return tx.apply_all(claims)


def _candidates(tx: Tx, ask: Ask) -> list[Candidate]:
    """The first ready queued jobs in dispatch order that no limit excludes outright."""
    # `+` keeps SQLite off the run_at and kind indexes: walking jobs_dispatch in order and
    # stopping at LIMIT is O(limit); filtering by run_at first would sort the whole queue.
    where = (f"state = 'queued' AND waiting = 0 AND +run_at <= ? "
             f"AND +kind IN ({placeholders(ask.kinds)})")
    params: list[Any] = [tx.now, *ask.kinds]
    if ask.owners:
        where += f" AND owner NOT IN ({placeholders(ask.owners)})"
        params.extend(ask.owners)
    return [
        Candidate._make(row) for row in tx.conn.execute(
            f"SELECT id, kind, owner, memory_mb FROM jobs WHERE {where} "
            "ORDER BY priority DESC, vt, id LIMIT ?", (*params, ask.limit))
    ]


def _delete(tx: Tx, job_ids: list[str]) -> int:
    deleted = 0
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start:start + 500]
        marks = placeholders(chunk)
        tx.conn.execute(f"DELETE FROM logs WHERE job_id IN ({marks})", chunk)
        tx.conn.execute(f"DELETE FROM job_deps WHERE job_id IN ({marks}) AND job_id IN "
                        f"(SELECT id FROM jobs WHERE state IN ({placeholders(_FINAL)}))",
                        [*chunk, *_FINAL])
        deleted += tx.conn.execute(
            f"DELETE FROM jobs WHERE id IN ({marks}) AND state IN ({placeholders(_FINAL)})",
            [*chunk, *_FINAL]).rowcount
        outbox.forget_deleted(tx, chunk)
    return deleted
