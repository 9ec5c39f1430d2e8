"""The PostgreSQL backend: the same operations as SQLite, for worker nodes on many machines.

Each public method is one transaction on a pooled connection (psycopg 3, async). What
makes it exact across nodes:

- **Admission** takes a transaction-level advisory lock (`_CLAIM_LOCK`) before it reads
  what runs, so two nodes never both admit into the last free slot; candidates are read in
  dispatch order `FOR UPDATE SKIP LOCKED` and moved to running with a new lease token.
- **Fair turns** (`vt`) are handed out under another advisory lock (`_TURNS_LOCK`), taken
  by every move into the queue, so two nodes never give one owner the same turn.
- **Events** are numbered by the single row of `event_seq`, updated last in every
  transaction that writes events: its row lock orders those transactions, so `seq` is
  gap-free in commit order across nodes, and a rolled-back transaction takes no number.
  After commit, `NOTIFY jobgate_events` (payload: the new highest seq) wakes the other
  nodes, whose listener reads `events WHERE seq > last` (also every second, in case a
  notification is missed) and hands them to the `listen` callbacks in order.
- **Grouped writes**: concurrent submits (or finishes) of one process share one
  transaction and a few multi-row statements (postgres_grouped.py), so a burst costs a few
  commits, not one per job.

What happens to a job is decided in `moves.py`: an operation reads rows (locking them),
calls the rule and writes what it returns. The pool, transactions, migrations and the
event listener are in postgres_conn.py.
"""

from __future__ import annotations

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
from jobgate.store import postgres_controls as controls_sql
from jobgate.store import postgres_deliveries as outbox
from jobgate.store import postgres_eta
from jobgate.store import postgres_logs as logs_sql
from jobgate.store import postgres_schedules as schedules_sql
from jobgate.store import postgres_stats as stats_sql
from jobgate.store import postgres_users as users_sql
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
    SchemaTooNew,
    Span,
    Stats,
    Store,
    TokenInfo,
    Upload,
    User,
    UserInfo,
    ended_counts,
)
from jobgate.store.postgres_conn import PgConnection, Tx, latest_version, pg_errors
from jobgate.store.postgres_deps import (
    TURNS_LOCK,
    emit_batch,
    end_batches,
    read_batch,
    retry_rule,
    set_batch,
    settle_ends,
)
from jobgate.store.postgres_grouped import (
    SORT_OFF,
    finish_many,
    next_turn,
    submit_many,
    turn_of,
)
from jobgate.store.rows import durations_by_kind, lease_cutoff, search_terms

__all__ = ["PostgresStore", "SchemaTooNew", "latest_version"]

_CLAIM_LOCK = 0x6A6F6201  # advisory lock keys ("job" + n)
_TURNS_LOCK = TURNS_LOCK
_FINAL = [s.value for s in FINAL]


#: The spans `metric_counts` makes histograms of: a finished job's queue wait, its run.
_WAIT, _RUN = "(started_at - created_at)", "(finished_at - started_at)"


class PostgresStore(PgConnection, Store):
    """Jobs in one PostgreSQL database, shared by every node."""

    # --- jobs -----------------------------------------------------------------------------
    async def submit(self, job: Job, quota: Quota) -> tuple[Job, bool]:
        async def op(tx: Tx, items: list[tuple[Job, Quota]]
                     ) -> list[tuple[Job, bool] | Exception]:
            deps = sorted({d for job, _ in items for d in job.depends_on})
            if deps:  # their rows before the turns lock, in the order an end takes them
                await tx.execute("SELECT 1 FROM jobs WHERE id = ANY(%s) ORDER BY id FOR SHARE",
                                 (deps,))
            await tx.execute(f"SELECT pg_advisory_xact_lock(%s), {SORT_OFF}", (_TURNS_LOCK,))
            return await submit_many(tx, items)

        result: tuple[Job, bool] = await self._grouped("submit", (job, quota), op)
        return result

    async def get(self, job_id: str) -> Job | None:
        async def op(tx: Tx) -> Job | None:
            jobs = await tx.select("id = %s", (job_id,))
            return jobs[0] if jobs else None

        return await self._run(op, write=False)

    async def list_jobs(
        self,
        owner: str | None,
        state: State | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
        q: str | None = None,
    ) -> Page:
        where, params = ["TRUE"], []
        before_clause = "id < %s"
        if before is not None and "\x00" in before:
            # A string sent here cannot hold a NUL (postgres_conn._nul_free); no id has one,
            # so the ids before "abc\0…" are those up to "abc", as SQLite orders them.
            before, before_clause = before.split("\x00", 1)[0], "id <= %s"
        for clause, value in (("owner = %s", owner), ("state = %s", state),
                              ("kind = %s", kind), (before_clause, before)):
            if value is not None:
                where.append(clause)
                params.append(value.value if isinstance(value, State) else value)
        if q:
            prefix, pieces = search_terms(q)
            where.append("(id ILIKE %s ESCAPE '\\'" + "".join(
                " OR position(lower(%s) in lower(args)) > 0" for _ in pieces) + ")")
            params.extend([prefix, *pieces])

        async def op(tx: Tx) -> Page:
            jobs = await tx.select(" AND ".join(where) + " ORDER BY id DESC LIMIT %s",
                                   (*params, limit + 1))
            more = len(jobs) > limit
            return Page(jobs[:limit], jobs[limit - 1].id if more else None)

        return await self._run(op, write=False)

    async def claim(
        self, worker: str, slots: int, limits: Limits, lease_s: float, kinds: list[str]
    ) -> list[Job]:
        async def op(tx: Tx) -> list[Job]:
            # Admission is one decision at a time, across nodes; candidates are read by
            # walking the dispatch index (SORT_OFF). The lock may have been waited for:
            # what the claim dates (start, lease) counts from when it was taken.
            await tx.execute(f"SELECT pg_advisory_xact_lock(%s), {SORT_OFF}", (_CLAIM_LOCK,))
            tx.clock()
            # The operator's controls, read after the lock a change takes too.
            run_limits, run_kinds = dispatch(limits, kinds, await controls_sql.read(tx), worker)
            if not run_kinds:
                return []
            admission = Admission(run_limits, Running.of(await tx.rows(
                "SELECT owner, kind, count(*), coalesce(sum(memory_mb), 0) FROM jobs "
                "WHERE state = 'running' GROUP BY owner, kind")), slots, run_kinds)
            while (ask := admission.ask()) is not None:
                admission.offer(await _candidates(tx, ask))
            if not admission.admitted:
                return []
            # The admitted rows are locked by this transaction since `_candidates` read them
            # queued, so `id` alone picks them: a condition on `state` would let the planner
            # scan a partial index of every queued job instead of the primary key.
            claims = [moves.claimed(job, worker, tx.now, lease_s) for job in sorted(
                await tx.select("id = ANY(%s)", ([j.id for j in admission.admitted],)),
                key=lambda j: j.dispatch_key)]
            chosen = await tx.apply_all(claims)
            tx.at_end(lambda tx: _date_leases(tx, chosen, lease_s))
            return chosen

        return await self._run(op)

    async def renew(self, worker: str, leases: dict[str, int], lease_s: float,
                    wait: bool = True) -> set[str]:
        async def renew_rows(tx: Tx, ids: list[str], wait: bool) -> tuple[set[str], set[str]]:
            # The rows first, then the time. A row another write holds (this node's own
            # report, itself held up by a stopped node's transaction) is left for a second
            # transaction that waits for it, so the others are renewed now; and a renewal
            # that waited dates its lease from when it got the rows, not into the past.
            got = [r[0] for r in await tx.rows(
                "SELECT id FROM jobs WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
                + ("" if wait else " SKIP LOCKED"), (ids,))]
            held = set()
            for job_id, token, state, cancel in await tx.rows(
                "UPDATE jobs SET lease_expires_at = CASE WHEN jobs.lease_token = l.token "
                "AND jobs.state = 'running' THEN %s ELSE jobs.lease_expires_at END "
                "FROM unnest(%s::text[], %s::bigint[]) AS l(id, token) WHERE jobs.id = l.id "
                "RETURNING jobs.id, jobs.lease_token, jobs.state, jobs.cancel_requested",
                (tx.clock() + lease_s, got, [leases[i] for i in got]),
            ):
                if moves.still_held(state, token, leases[job_id], cancel):
                    held.add(job_id)
            return held, set() if wait else set(ids) - set(got)

        if not leases:
            return set()
        held, busy = await self._run(lambda tx: renew_rows(tx, sorted(leases), False))
        if busy and wait:
            later, _ = await self._run(lambda tx: renew_rows(tx, sorted(busy), True))
            return set(leases) - held - later
        # A busy row's wait can outlast a lease (its holder waits for a stopped node), so
        # it waits in a task of its own while the next renewals go on. It stays in the
        # row's lock queue, so the row passes to it, not to a recovery, when released;
        # what it finds (a cancel, a lost lease) the next renewal reads.
        self.wait_behind(busy, lambda ids: self._run(lambda tx: renew_rows(tx, ids, True)))
        return set(leases) - held - busy

    async def set_pid(self, job_id: str, token: int, pid: int | None) -> None:
        async def op(tx: Tx) -> None:
            await tx.cur.execute("UPDATE jobs SET pid = %s WHERE id = %s AND lease_token = %s",
                                 (pid, job_id, token))

        await self._run(op)

    async def finish(self, job_id: str, token: int, outcome: Outcome) -> State | None:
        async def op(tx: Tx, items: list[tuple[str, int, Outcome]]) -> list[State | None]:
            if any(o.state is State.QUEUED for _, _, o in items):
                await tx.execute(f"SELECT pg_advisory_xact_lock(%s), {SORT_OFF}",
                                 (_TURNS_LOCK,))
            return await finish_many(tx, items)

        result: State | None = await self._grouped("finish", (job_id, token, outcome), op)
        return result

    async def progress(
        self, job_id: str, token: int, percent: float | None, message: str | None,
        rss_mb: float | None = None,
    ) -> None:
        async def op(tx: Tx) -> None:
            row = await tx.row(
                "UPDATE jobs SET progress = coalesce(%s, progress), "
                "message = coalesce(%s, message) WHERE id = %s AND lease_token = %s "
                "AND state = 'running' RETURNING owner",
                (percent, message, job_id, token),
            )
            if row is not None:
                tx.emit(EventType.PROGRESS, Job(job_id, "", row[0], {}),
                        moves.progress_data(percent, message, rss_mb))

        await self._run(op)

    async def append_logs(self, job_id: str, lines: list[str], cap: int) -> int | None:
        return await self._run(lambda tx: logs_sql.append(tx, job_id, lines, cap))

    async def replace_logs(self, job_id: str, lines: Mapping[int, str]) -> None:
        await self._run(lambda tx: logs_sql.replace(tx, job_id, lines))

    async def logs(self, job_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        return await self._run(lambda tx: logs_sql.read(tx, job_id, after, limit), write=False)

    async def log_size(self, job_id: str) -> LogSize | None:
        return await self._run(lambda tx: logs_sql.size_of(tx, job_id), write=False)

    async def cancel(self, job_id: str) -> Job:
        async def op(tx: Tx) -> Job:
            job = await tx.one(job_id)
            move = moves.cancelled(job, tx.now)
            if move is None:
                return job
            after = await tx.apply(move)
            if after.state is State.CANCELLED:
                await settle_ends(tx, [after], turn_of(tx))
            return after

        return await self._run(op)

    async def retry(self, job_id: str) -> Job:
        async def op(tx: Tx) -> Job:
            await tx.lock(_TURNS_LOCK)
            job = await tx.one(job_id)
            if job.depends_on and job.state in (State.FAILED, State.CANCELLED):
                rule = await retry_rule(tx, job)
                if rule.failed is not None:
                    raise Conflict(f"job {job_id} depends on {rule.failed}, which did not "
                                   "complete: retry that job first")
                if rule.waiting:
                    after = await tx.apply(moves.retried_waiting(job, tx.now, rule.waiting))
                    await tx.execute("UPDATE jobs SET waiting = %s WHERE id = %s",
                                     (rule.waiting, job_id))
                    return after
            return await tx.apply(
                moves.retried(job, tx.now, await next_turn(tx, job.owner, job.priority)))

        return await self._run(op)

    async def delete(self, job_id: str) -> Job:
        async def op(tx: Tx) -> Job:
            job = await tx.one(job_id)
            moves.check_deletable(job)
            await _delete(tx, [job_id])
            return job

        return await self._run(op)

    async def recover(self, lost_workers: Collection[str] = (),
                      keep: Mapping[str, int] | None = None,
                      expired_before: float | None = None,
                      stall_grace_s: float = 0.0) -> list[Job]:
        lost = list(lost_workers)
        held = dict(keep or {})

        async def op(tx: Tx) -> list[Job]:
            await tx.lock(_TURNS_LOCK)
            out: list[Job] = []
            cutoff = lease_cutoff(tx.now, expired_before)
            for job in await tx.select(
                    "state = 'running' AND (lease_expires_at < %s OR worker = ANY(%s)) "
                    "ORDER BY id FOR UPDATE SKIP LOCKED", (cutoff, lost)):
                if moves.is_held(job, held):
                    continue
                vt = await next_turn(tx, job.owner, job.priority) \
                    if moves.recovery_state(job) is State.QUEUED else None
                move = moves.recovered(job, tx.now, vt)
                await tx.apply(move)
                out.append(moves.lost_run(move, job))
            await settle_ends(tx, [j for j in out if j.state in FINAL], turn_of(tx))
            return out

        return await self._run(op)

    async def expire_queued(self, start_timeout_s: float) -> list[Job]:
        async def op(tx: Tx) -> list[Job]:
            jobs = await tx.select("state = 'queued' AND waiting = 0 AND run_at < %s "
                                   "ORDER BY id FOR UPDATE SKIP LOCKED",
                                   (tx.now - start_timeout_s,))
            failed = [await tx.apply(moves.expired(job, tx.now, start_timeout_s))
                      for job in jobs]
            await settle_ends(tx, failed, turn_of(tx))
            return failed

        return await self._run(op)

    async def finished_before(
        self, ts: float, owner: str | None = None, keep_per_user: int | None = None
    ) -> list[str]:
        mine, params = ("", ()) if owner is None else (" AND owner = %s", (owner,))

        async def op(tx: Tx) -> list[str]:
            ids = [r[0] for r in await tx.rows(
                "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < %s" + mine,
                (ts, *params))]
            if keep_per_user is not None:
                ids += [r[0] for r in await tx.rows(
                    "SELECT id FROM (SELECT id, finished_at, row_number() OVER "
                    "(PARTITION BY owner ORDER BY finished_at DESC) AS rn FROM jobs "
                    f"WHERE finished_at IS NOT NULL{mine}) AS ranked WHERE rn > %s "
                    "AND finished_at >= %s", (*params, keep_per_user, ts))]
            return ids

        return await self._run(op, write=False)

    async def delete_many(self, job_ids: list[str]) -> int:
        async def op(tx: Tx) -> int:
            return await _delete(tx, job_ids)

        return await self._run(op) if job_ids else 0

    # --- the queue ------------------------------------------------------------------------
    async def queued_keys(self) -> list[tuple[DispatchKey, float]]:
        async def op(tx: Tx) -> list[tuple[DispatchKey, float]]:
            return [((-p, vt, i), run_at) for p, vt, i, run_at in await tx.rows(
                "SELECT priority, vt, id, run_at FROM jobs WHERE state = 'queued' "
                "AND waiting = 0")]

        return await self._run(op, write=False)

    async def eta_snapshot(self, queued_limit: int, history: int, live_within_s: float
                           ) -> tuple[Snapshot, dict[str, list[float]] | None]:
        return await self._run(lambda tx: postgres_eta.snapshot(
            tx, queued_limit, history, tx.now - live_within_s), write=False)

    async def recent_peaks(self, kind: str, limit: int) -> list[float]:
        async def op(tx: Tx) -> list[float]:
            return [float(r[0]) for r in await tx.rows(
                "SELECT peak_memory_mb FROM jobs WHERE kind = %s AND state = 'completed' "
                "AND peak_memory_mb IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT %s",
                (kind, limit))]

        return await self._run(op, write=False)

    async def next_run_at(self) -> float | None:
        async def op(tx: Tx) -> float | None:
            value = await tx.value("SELECT min(run_at) FROM jobs WHERE state = 'queued' "
                                   "AND waiting = 0")
            return None if value is None else float(value)

        return await self._run(op, write=False)

    async def stats(self) -> Stats:
        async def op(tx: Tx) -> Stats:
            counts = {s.value: 0 for s in State}
            counts.update({s: int(n) for s, n in await tx.rows(
                "SELECT state, count(*) FROM jobs GROUP BY state")})
            reserved = await tx.value("SELECT coalesce(sum(memory_mb), 0) FROM jobs "
                                      "WHERE state = 'running'")
            last_min = await tx.value("SELECT count(*) FROM jobs WHERE finished_at >= %s "
                                      "AND state = 'completed'", (tx.now - 60,))
            row = await tx.row(
                "SELECT count(*), count(*) FILTER (WHERE state = 'completed'), "
                "avg(finished_at - started_at) FILTER (WHERE state = 'completed'), "
                "count(*) FILTER (WHERE state = 'completed' AND finished_at >= %s) "
                "FROM jobs WHERE finished_at >= %s", (tx.now - 900, tx.now - 3600))
            assert row is not None
            done, ok, avg = int(row[0]), int(row[1]), row[2]
            waiting = await tx.value("SELECT count(*) FROM jobs WHERE state = 'queued' "
                                     "AND waiting > 0")
            hour, day = ended_counts(await tx.rows(
                "SELECT state, count(*), count(*) FILTER (WHERE finished_at >= %s) FROM jobs "
                "WHERE finished_at >= %s AND state IN ('completed', 'failed', 'cancelled') "
                "GROUP BY state", (tx.now - HOUR_S, tx.now - DAY_S)))
            # The first entry of the partial index jobs_run_at.
            oldest_due = await tx.value(
                "SELECT min(run_at) FROM jobs WHERE state = 'queued' AND waiting = 0 "
                "AND run_at <= %s", (tx.now,))
            return Stats(counts, int(reserved), int(last_min),
                         None if avg is None else float(avg), (ok / done) if done else None,
                         int(waiting), int(row[3]), ok, hour, day,
                         None if oldest_due is None else float(oldest_due))

        return await self._run(op, write=False)

    async def metric_counts(self, bounds: tuple[float, ...]) -> MetricCounts:
        async def op(tx: Tx) -> MetricCounts:
            jobs = {(state, kind): int(n) for state, kind, n in await tx.rows(
                "SELECT state, kind, count(*) FROM jobs GROUP BY state, kind")}
            deliveries = {(channel, state): int(n) for channel, state, n in await tx.rows(
                "SELECT channel, state, count(*) FROM deliveries GROUP BY channel, state")}
            le = "".join(f", count(*) FILTER (WHERE {span} <= %s)"
                         for span in (_WAIT, _RUN) for _ in bounds)
            waits, runs = durations_by_kind(await tx.rows(
                f"SELECT kind, count(*), sum({_WAIT}), sum({_RUN}){le} FROM jobs "
                "WHERE state IN ('completed', 'failed', 'cancelled') "
                "AND started_at IS NOT NULL AND finished_at IS NOT NULL GROUP BY kind",
                bounds * 2), len(bounds))
            return MetricCounts(jobs, deliveries, waits, runs)

        return await self._run(op, write=False)

    async def owner_counts(self) -> dict[str, tuple[int, int]]:
        return await self._run(stats_sql.owner_counts, write=False)

    async def recent_spans(self, since: float, limit: int) -> list[Span]:
        return await self._run(lambda tx: stats_sql.recent_spans(tx, since, limit),
                               write=False)

    async def running_jobs(self, worker: str | None = None) -> list[Job]:
        async def op(tx: Tx) -> list[Job]:
            if worker is None:
                return await tx.select("state = 'running'")
            return await tx.select("state = 'running' AND worker = %s", (worker,))

        return await self._run(op, write=False)

    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        self._usable()
        return await self._read_events(seq, limit)

    async def prune_events(self, before_ts: float) -> int:
        async def op(tx: Tx) -> int:
            await tx.cur.execute("DELETE FROM events WHERE ts < %s", (before_ts,))
            return tx.cur.rowcount

        return await self._run(op)

    # --- worker nodes ---------------------------------------------------------------------
    async def heartbeat(self, node: Node) -> None:
        async def op(tx: Tx) -> None:
            await tx.cur.execute(
                "INSERT INTO nodes (name, host, pid, slots, version, started_at, heartbeat_at, "
                "running_rss_mb, memory_available_mb) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
                "host = excluded.host, pid = excluded.pid, slots = excluded.slots, "
                "version = excluded.version, started_at = excluded.started_at, "
                "heartbeat_at = excluded.heartbeat_at, running_rss_mb = excluded.running_rss_mb, "
                "memory_available_mb = excluded.memory_available_mb",
                (node.name, node.host, node.pid, node.slots, node.version, node.started_at,
                 tx.now, node.running_rss_mb, node.memory_available_mb))

        await self._run(op)

    async def nodes(self, alive_within_s: float | None = None,
                    owner: str | None = None) -> list[Node]:
        async def op(tx: Tx) -> list[Node]:
            since = -1.0 if alive_within_s is None else tx.now - alive_within_s
            busy: Counter[str] = Counter()
            running: dict[str, list[str]] = {}
            for worker, job_id, job_owner in await tx.rows(
                    "SELECT worker, id, owner FROM jobs WHERE state = 'running' ORDER BY id"):
                busy[worker] += 1
                if owner is None or job_owner == owner:
                    running.setdefault(worker, []).append(job_id)
            rows = await tx.rows(
                "SELECT name, host, pid, slots, version, started_at, heartbeat_at, "
                "running_rss_mb, memory_available_mb FROM nodes "
                "WHERE heartbeat_at >= %s ORDER BY name", (since,))
            return [Node(name, host, int(pid), int(slots), version, float(started),
                         float(beat), busy[name], tuple(running.get(name, ())),
                         None if rss is None else float(rss),
                         None if free is None else int(free))
                    for name, host, pid, slots, version, started, beat, rss, free in rows]

        return await self._run(op, write=False)

    async def remove_node(self, name: str) -> bool:
        async def op(tx: Tx) -> bool:
            await tx.cur.execute("DELETE FROM nodes WHERE name = %s", (name,))
            return tx.cur.rowcount > 0

        return await self._run(op)

    async def forget_nodes(self, before_ts: float) -> int:
        async def op(tx: Tx) -> int:
            await tx.cur.execute("DELETE FROM nodes WHERE heartbeat_at < %s", (before_ts,))
            return tx.cur.rowcount

        return await self._run(op)

    # --- users ----------------------------------------------------------------------------
    async def add_user(self, name: str, password_hash: str | None, admin: bool) -> User:
        async def op(tx: Tx) -> User:
            try:
                await tx.cur.execute(
                    "INSERT INTO users (name, password_hash, admin, created_at) "
                    "VALUES (%s, %s, %s, %s)", (name, password_hash, admin, tx.now))
            except pg_errors.UniqueViolation:
                raise Conflict(f"user {name} already exists") from None
            return User(name, admin, password_hash, tx.now)

        return await self._run(op)

    async def get_user(self, name: str) -> User | None:
        return await self._run(lambda tx: users_sql.get(tx, name), write=False)

    async def add_token(self, user: str, token_hash: str, name: str | None = None
                        ) -> TokenInfo:
        return await self._run(lambda tx: users_sql.add_token(tx, user, token_hash, name))

    async def user_for_token(self, token_hash: str) -> User | None:
        return await self._run(lambda tx: users_sql.for_token(tx, token_hash), write=False)

    async def list_users(self) -> list[UserInfo]:
        return await self._run(users_sql.list_users, write=False)

    async def remove_user(self, name: str) -> bool:
        return await self._run(lambda tx: users_sql.remove(tx, name))

    async def update_user(self, name: str, *, password_hash: str | None = None,
                          admin: bool | None = None, bump_generation: bool = False) -> User:
        return await self._run(lambda tx: users_sql.update(tx, name, password_hash, admin,
                                                           bump_generation))

    async def list_tokens(self, user: str) -> list[TokenInfo]:
        return await self._run(lambda tx: users_sql.list_tokens(tx, user), write=False)

    async def revoke_token(self, token_id: str, user: str | None = None) -> TokenInfo | None:
        return await self._run(lambda tx: users_sql.revoke(tx, token_id, user))

    async def touch_token(self, token_hash: str, at: float) -> None:
        await self._run(lambda tx: users_sql.touch(tx, token_hash, at))

    # --- uploads ------------------------------------------------------------------------
    async def add_upload(self, upload: Upload) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO uploads (id, owner, name, size, sha256, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (upload.id, upload.owner, upload.name, upload.size, upload.sha256,
                 upload.created_at))

        await self._run(op)

    async def get_upload(self, upload_id: str) -> Upload | None:
        async def op(tx: Tx) -> Upload | None:
            row = await tx.row(f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE id = %s",
                               (upload_id,))
            return _upload(row) if row else None

        return await self._run(op, write=False)

    async def list_uploads(self, owner: str) -> list[Upload]:
        async def op(tx: Tx) -> list[Upload]:
            return [_upload(r) for r in await tx.rows(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE owner = %s ORDER BY id DESC",
                (owner,))]

        return await self._run(op, write=False)

    async def uploads_size(self, owner: str) -> int:
        async def op(tx: Tx) -> int:
            row = await tx.row("SELECT coalesce(sum(size), 0) FROM uploads WHERE owner = %s",
                               (owner,))
            return int(row[0]) if row else 0

        return await self._run(op, write=False)

    async def uploads_before(self, before_ts: float, limit: int = 1000) -> list[Upload]:
        async def op(tx: Tx) -> list[Upload]:
            return [_upload(r) for r in await tx.rows(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE created_at < %s "
                "ORDER BY created_at, id LIMIT %s", (before_ts, limit))]

        return await self._run(op, write=False)

    async def delete_upload(self, upload_id: str, reference: str = "",
                            busy: Collection[State] = ()) -> bool:
        async def op(tx: Tx) -> bool:
            # strpos(), not LIKE: the reference is matched as it is, wildcards included.
            await tx.cur.execute(
                "DELETE FROM uploads WHERE id = %s AND NOT EXISTS (SELECT 1 FROM jobs j "
                "WHERE j.owner = uploads.owner AND j.state = ANY(%s) "
                "AND strpos(j.args, %s) > 0)", (upload_id, [s.value for s in busy], reference))
            return tx.cur.rowcount > 0

        return await self._run(op)

    # --- schedules (postgres_schedules.py) ----------------------------------------------
    async def sync_schedules(self, starts: list[tuple[str, str, float]]) -> None:
        await self._run(lambda tx: schedules_sql.sync(tx, starts))

    async def schedule_states(self) -> dict[str, ScheduleState]:
        return await self._run(schedules_sql.states, write=False)

    async def fire_schedule(self, name: str, expected_due: float, next_due: float,
                            firings: list[Firing], quota: Quota) -> list[Firing] | None:
        async def op(tx: Tx) -> list[Firing] | None:
            # The schedule's row first: a node that lost the race takes no turns lock.
            if not await schedules_sql.advance(tx, name, expected_due, next_due):
                return None
            await tx.execute(f"SELECT pg_advisory_xact_lock(%s), {SORT_OFF}", (_TURNS_LOCK,))
            return await schedules_sql.record(tx, firings, quota)

        return await self._run(op)

    async def schedule_firings(self, name: str, limit: int = 100) -> list[Firing]:
        return await self._run(lambda tx: schedules_sql.history(tx, name, limit), write=False)

    async def prune_firings(self, before_ts: float) -> int:
        return await self._run(lambda tx: schedules_sql.prune(tx, before_ts))

    # --- batches --------------------------------------------------------------------------
    async def submit_batch(self, batch: Batch, jobs: list[Job], quota: Quota) -> list[Job]:
        async def op(tx: Tx) -> list[Job]:
            deps = sorted({d for job in jobs for d in job.depends_on})
            if deps:  # their rows before the turns lock, in the order an end takes them
                await tx.execute("SELECT 1 FROM jobs WHERE id = ANY(%s) ORDER BY id FOR SHARE",
                                 (deps,))
            await tx.execute(f"SELECT pg_advisory_xact_lock(%s), {SORT_OFF}", (_TURNS_LOCK,))
            queued = owner_queued = None
            if quota.max_queued is not None:
                queued = int(await tx.value(
                    "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'queued' "
                    "LIMIT %s) AS q", (quota.max_queued,)))
            if quota.per_user_queued is not None:
                owner_queued = int(await tx.value(
                    "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE owner = %s "
                    "AND state = 'queued' LIMIT %s) AS q", (batch.owner, quota.per_user_queued)))
            moves.batch_fits(len(jobs), queued, owner_queued, quota, batch.owner)
            out: list[Job] = []
            for result in await submit_many(tx, [(job, Quota()) for job in jobs]):
                if isinstance(result, Exception):
                    raise result  # all or none: the transaction is rolled back
                out.append(result[0])
            await set_batch(tx, batch, [j.id for j in out])
            created = await read_batch(tx, batch.id)
            assert created is not None
            emit_batch(tx, EventType.BATCH_CREATED, created)
            await end_batches(tx, [j.id for j in out if j.state in FINAL])
            return out

        return await self._run(op)

    async def get_batch(self, batch_id: str) -> Batch | None:
        return await self._run(lambda tx: read_batch(tx, batch_id), write=False)


    # --- operator controls (postgres_controls.py) ---------------------------------------
    async def controls(self) -> Controls:
        return await self._run(controls_sql.read, write=False)

    async def change_controls(self, change: Change, by: str) -> Controls:
        return await self._run(lambda tx: controls_sql.change(tx, change, by, _CLAIM_LOCK))

    # --- deliveries -----------------------------------------------------------------
    async def _after_moves(self, tx: Tx, changes: list[moves.Move]) -> None:
        await outbox.enqueue(tx, changes, self.delivery_rules)

    async def add_webhook(self, job_id: str, url: str) -> None:
        await self._run(lambda tx: outbox.add_webhook(tx, job_id, url))

    async def remove_webhook(self, job_id: str) -> None:
        await self._run(lambda tx: outbox.remove_webhook(tx, job_id))

    async def claim_deliveries(self, worker: str, limit: int, lease_s: float
                               ) -> list[Delivery]:
        return await self._run(lambda tx: outbox.claim(tx, worker, limit, lease_s))

    async def record_attempt(self, delivery_id: str, attempt: Attempt,
                             permanent: bool = False) -> Delivery | None:
        return await self._run(lambda tx: outbox.record(
            tx, delivery_id, attempt, self.delivery_rules, permanent))

    async def deliveries(self, job_id: str) -> list[Delivery]:
        return await self._run(lambda tx: outbox.of_job(tx, job_id), write=False)



_UPLOAD_COLUMNS = "id, owner, name, size, sha256, created_at"

def _upload(row: tuple[Any, ...]) -> Upload:
    id_, owner, name, size, sha256, created_at = row
    return Upload(id_, owner, name, int(size), sha256, float(created_at))

async def _candidates(tx: Tx, ask: Ask) -> list[Candidate]:
    """The first ready queued jobs in dispatch order that no limit excludes outright (rows
    another transaction holds are skipped: it is changing them)."""
    where = "state = 'queued' AND waiting = 0 AND run_at <= %s AND kind = ANY(%s)"
    params: list[Any] = [tx.now, ask.kinds]
    if ask.owners:
        where += " AND owner <> ALL(%s)"
        params.append(list(ask.owners))
    if ask.seen:
        where += " AND id <> ALL(%s)"
        params.append(list(ask.seen))
    # No filter on memory: a job that does not fit must be seen, to hold the memory for
    # itself against the jobs behind it (scheduler.admit).
    return [
        Candidate._make(row) for row in await tx.rows(
            f"SELECT id, kind, owner, memory_mb FROM jobs WHERE {where} "
            "ORDER BY priority DESC, vt, id LIMIT %s FOR UPDATE SKIP LOCKED",
            (*params, ask.limit))
    ]


async def _date_leases(tx: Tx, jobs: list[Job], lease_s: float) -> None:
    """Date the leases of jobs just claimed from the end of their transaction, after every
    wait it had (the claim lock, the event numbers): a claim that waited longer than a
    lease still hands its worker a whole one, never one another node finds expired."""
    expires = tx.clock() + lease_s
    await tx.execute("UPDATE jobs SET lease_expires_at = %s WHERE id = ANY(%s)",
                     (expires, [j.id for j in jobs]))
    for job in jobs:
        job.lease_expires_at = expires


async def _delete(tx: Tx, job_ids: list[str]) -> int:
    await tx.cur.execute(
        "DELETE FROM job_deps WHERE job_id = ANY(SELECT id FROM jobs WHERE id = ANY(%s) "
        "AND state = ANY(%s))", (job_ids, _FINAL))
    await tx.cur.execute(
        "DELETE FROM logs WHERE job_id = ANY(SELECT id FROM jobs WHERE id = ANY(%s) "
        "AND state = ANY(%s))", (job_ids, _FINAL))
    await tx.cur.execute("DELETE FROM jobs WHERE id = ANY(%s) AND state = ANY(%s)",
                         (job_ids, _FINAL))
    deleted = tx.cur.rowcount
    await outbox.forget_deleted(tx, job_ids)
    return deleted
