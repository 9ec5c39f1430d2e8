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
  transaction and a few multi-row statements (postgres_batch.py), so a burst costs a few
  commits, not one per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any, TypeVar

from jobgate.model import FINAL, DispatchKey, Event, IllegalMove, Job, State, check_move
from jobgate.model import event_type as _event_type
from jobgate.scheduler import Limits, Running, admit, blocked, free_slots
from jobgate.store.base import (
    Conflict,
    EventListener,
    Node,
    NotFound,
    Outcome,
    Page,
    Quota,
    SchemaTooNew,
    Stats,
    Store,
    User,
)
from jobgate.store.postgres_batch import SORT_OFF, Groups, Turns, finish_many, submit_many
from jobgate.store.rows import COLUMNS, JSON_COLUMNS, event_from_row, migrations
from jobgate.store.rows import dumps as _dumps
from jobgate.store.rows import job_from_row as _job
from jobgate.store.sqlite_batch import event_data

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg_pool import AsyncConnectionPool
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the PostgreSQL backend needs psycopg: pip install 'jobgate[postgres]' "
        "(or pip install 'psycopg[binary,pool]')"
    ) from exc

__all__ = ["PostgresStore", "SchemaTooNew", "latest_version"]

T = TypeVar("T")
log = logging.getLogger("jobgate.store")

_CHANNEL = "jobgate_events"
_CLAIM_LOCK = 0x6A6F6201  # advisory lock keys ("job" + n)
_TURNS_LOCK = 0x6A6F6202
_MIGRATE_LOCK = 0x6A6F6203
_POLL_S = 1.0  # the listener reads new events at least this often, notified or not
_CLAIM_ROUNDS = 4
_RETRIES = 20  # a transaction chosen as a deadlock victim runs again, up to this often
_POOL_MAX = 10
_FINAL = [s.value for s in FINAL]

_COLUMNS = COLUMNS
_JSON_COLS = JSON_COLUMNS


# Events are numbered by event_seq's row, updated last in the transaction; the insert runs
# to its end as part of the statement; the notification carries the new highest seq. The
# arrays go in binary (%b, see postgres_batch._TYPES).
_EVENTS_SQL = (
    "WITH s AS (UPDATE event_seq SET last = last + %s RETURNING last), "
    "i AS (INSERT INTO events (seq, type, ts, job_id, owner, data) "
    "SELECT s.last - %s + e.n, e.type, %s, e.job_id, e.owner, e.data FROM s, "
    "unnest(%b::text[], %b::text[], %b::text[], %b::text[]) WITH ORDINALITY "
    "AS e(type, job_id, owner, data, n)) "
    "SELECT last, pg_notify(%s, last::text) FROM s"
)


def _to_db(name: str, value: Any) -> Any:
    if name in _JSON_COLS:
        return None if value is None and name == "result" else _dumps(value)
    if isinstance(value, State):
        return value.value
    return value


_event = event_from_row


class _Tx:
    """One operation's open transaction: a cursor, its clock, and the events it makes."""

    def __init__(self, cur: psycopg.AsyncCursor[Any], now: float) -> None:
        self.cur = cur
        self.now = now
        self.pending: list[tuple[str, str | None, str | None, dict[str, Any]]] = []

    async def rows(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        await self.cur.execute(sql, params)
        return await self.cur.fetchall()

    async def row(self, sql: str, params: Any = ()) -> tuple[Any, ...] | None:
        await self.cur.execute(sql, params)
        return await self.cur.fetchone()

    async def value(self, sql: str, params: Any = ()) -> Any:
        row = await self.row(sql, params)
        return None if row is None else row[0]

    async def execute(self, sql: str, params: Any = ()) -> None:
        await self.cur.execute(sql, params)

    async def lock(self, key: int) -> None:
        await self.cur.execute("SELECT pg_advisory_xact_lock(%s)", (key,))

    async def select(self, where: str, params: Any = ()) -> list[Job]:
        return [_job(r) for r in await self.rows(f"SELECT {_COLUMNS} FROM jobs WHERE {where}",
                                                 params)]

    async def one(self, job_id: str, lock: bool = True) -> Job:
        jobs = await self.select("id = %s" + (" FOR UPDATE" if lock else ""), (job_id,))
        if not jobs:
            raise NotFound(f"no job {job_id}")
        return jobs[0]

    def emit(self, type_: str, job: Job | None, data: dict[str, Any]) -> None:
        self.pending.append((type_, job.id if job else None, job.owner if job else None, data))

    async def move(self, job: Job, dst: State, **fields: Any) -> Job:
        """The one way a single job changes state: checked, written, and announced."""
        src = job.state
        check_move(job.id, src, dst)
        fields["state"] = dst
        for name, value in fields.items():
            setattr(job, name, value)
        cols = ", ".join(f"{name} = %s" for name in fields)
        await self.cur.execute(f"UPDATE jobs SET {cols} WHERE id = %s",
                               [*(_to_db(n, v) for n, v in fields.items()), job.id])
        self.announce(job, src)
        return job

    def announce(self, job: Job, src: State) -> None:
        self.emit(_event_type(src, job.state), job, event_data(job))


def _migrations() -> list[tuple[int, str]]:
    return migrations("postgres")


def latest_version() -> int:
    """The schema version this jobgate writes."""
    return _migrations()[-1][0]


async def _migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    steps = _migrations()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS jobgate_schema (version INTEGER NOT NULL)")
        cur = await conn.execute("SELECT max(version) FROM jobgate_schema")
        row = await cur.fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        if current > steps[-1][0]:
            raise SchemaTooNew(
                f"the database has schema version {current}, newer than this jobgate "
                f"({steps[-1][0]}): upgrade jobgate"
            )
        for version, sql in steps:
            if version <= current:
                continue
            await conn.execute(sql.encode())
            await conn.execute("INSERT INTO jobgate_schema (version) VALUES (%s)", (version,))


class PostgresStore(Store):
    """Jobs in one PostgreSQL database, shared by every node."""

    supports_notify = True

    def __init__(self, url: str, pool_size: int = _POOL_MAX) -> None:
        self.url = url
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[Any] | None = None
        self._listeners: list[EventListener] = []
        self._last_seq = 0
        self._deliver_lock: asyncio.Lock | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listen_conn: psycopg.AsyncConnection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._wake_channel = f"jobgate_wake_{secrets.token_hex(8)}"
        self._groups = Groups()

    # --- connection, migrations, events ------------------------------------------------
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._deliver_lock = asyncio.Lock()
        self._closing = False
        listen_conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        try:
            await _migrate(listen_conn)
            await listen_conn.execute(f"LISTEN {_CHANNEL}")
            await listen_conn.execute(f"LISTEN {self._wake_channel}")
            cur = await listen_conn.execute("SELECT last FROM event_seq")
            row = await cur.fetchone()
            self._last_seq = int(row[0]) if row else 0
        except BaseException:
            await listen_conn.close()
            raise
        self._listen_conn = listen_conn
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url, min_size=1, max_size=self._pool_size, open=False,
            kwargs={"autocommit": True}, name="jobgate",
        )
        await pool.open(wait=True)
        self._pool = pool
        self._listener = asyncio.create_task(self._listen_loop(listen_conn),
                                             name="jobgate-pg-listen")

    async def close(self) -> None:
        if self._listener is not None:
            # psycopg does not give up a wait for notifications on cancellation: the
            # listener is woken on its own channel and stops by itself.
            self._closing = True
            with contextlib.suppress(Exception):
                async with self._usable().connection() as conn:
                    await conn.execute(f"NOTIFY {self._wake_channel}")
            try:
                await asyncio.wait_for(asyncio.shield(self._listener), 2 * _POLL_S + 1)
            except TimeoutError:  # pragma: no cover - the wake was lost: force it
                self._listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._listener
            self._listener = None
        if self._listen_conn is not None:
            await self._listen_conn.close()
            self._listen_conn = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def listen(self, callback: EventListener) -> None:
        self._listeners.append(callback)

    async def schema_version(self) -> int:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            cur = await conn.execute("SELECT to_regclass('jobgate_schema') IS NOT NULL")
            row = await cur.fetchone()
            if not row or not row[0]:
                return 0
            cur = await conn.execute("SELECT coalesce(max(version), 0) FROM jobgate_schema")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    def latest_schema_version(self) -> int:
        return latest_version()

    async def _listen_loop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Other nodes' events: on each notification, and every `_POLL_S` regardless."""
        while not self._closing:
            try:
                top = 0
                async for note in conn.notifies(timeout=_POLL_S, stop_after=1):
                    top = int(note.payload) if note.payload.isdigit() else 0
                if self._closing:
                    return
                if top == 0 or top > self._last_seq:  # not only this node's own events
                    await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: try again shortly
                log.warning("event listener: %s", exc)
                await asyncio.sleep(_POLL_S)
                if conn.closed:
                    with contextlib.suppress(Exception):
                        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                        await conn.execute(f"LISTEN {_CHANNEL}")
                        await conn.execute(f"LISTEN {self._wake_channel}")
                        self._listen_conn = conn

    async def _catch_up(self, own: list[Event] | None = None) -> None:
        """Deliver, in seq order and once each, every committed event past `_last_seq`.
        `own` are the events of a transaction this node just committed: delivered as
        they are when nothing comes before them, else read back with the others."""
        assert self._deliver_lock is not None
        async with self._deliver_lock:
            if own:
                if own[-1].seq <= self._last_seq:
                    return
                if own[0].seq == self._last_seq + 1:
                    self._last_seq = own[-1].seq
                    self._hand(own)
                    return
            while True:
                events = await self._read_events(self._last_seq, 1000)
                if not events:
                    return
                self._last_seq = events[-1].seq
                self._hand(events)
                if own and self._last_seq >= own[-1].seq and len(events) < 1000:
                    return

    def _hand(self, events: list[Event]) -> None:
        for callback in self._listeners:
            try:
                callback(events)
            except Exception:  # one listener failing must not stop the others
                log.exception("event listener failed")

    async def _read_events(self, seq: int, limit: int) -> list[Event]:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT seq, type, ts, job_id, owner, data FROM events WHERE seq > %s "
                "ORDER BY seq LIMIT %s", (seq, limit))
            return [_event(r) for r in await cur.fetchall()]

    def _usable(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; on another event loop (a worker's lease thread), a
        connection of its own for this one call, since the pool belongs to its loop."""
        pool = self._usable()
        if asyncio.get_running_loop() is self._loop:
            async with pool.connection() as conn:
                yield conn
            return
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            yield conn

    async def _run(self, fn: Callable[[_Tx], Awaitable[T]], write: bool = True) -> T:
        """Run `fn` in one transaction (again if it was a deadlock's victim); its events are
        numbered and written last, and delivered here before this returns."""
        for attempt in range(_RETRIES):
            own: list[Event] = []
            try:
                async with self._connection() as conn, conn.transaction():
                    cur = conn.cursor()
                    tx = _Tx(cur, time.time())
                    value = await fn(tx)
                    if tx.pending:
                        own = await self._write_events(tx)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.001 * (attempt + 1))
                continue
            if own:
                if asyncio.get_running_loop() is self._loop:
                    await self._catch_up(own)
                else:  # callbacks run on the store's loop
                    assert self._loop is not None
                    await asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(self._catch_up(own), self._loop))
            return value
        raise AssertionError("unreachable")

    async def _grouped(self, name: str, item: Any,
                       fn: Callable[[_Tx, list[Any]], Awaitable[list[Any]]]) -> Any:
        """One call of a grouped operation (postgres_batch): run with the other calls of
        `name` made meanwhile on this loop, in one transaction; alone on another loop."""
        if asyncio.get_running_loop() is not self._loop:
            value = (await self._run(lambda tx: fn(tx, [item])))[0]
            if isinstance(value, Exception):
                raise value
            return value
        return await self._groups.call(name, item, fn, self._run)

    async def _write_events(self, tx: _Tx) -> list[Event]:
        """Number the transaction's events, write them and notify, in one statement (one
        round trip however many events a group makes)."""
        pending = tx.pending
        top = int(await tx.value(
            _EVENTS_SQL, (len(pending), len(pending), tx.now, [p[0] for p in pending],
                          [p[1] for p in pending], [p[2] for p in pending],
                          [json.dumps(p[3]) for p in pending], _CHANNEL)))
        first = top - len(pending) + 1
        return [Event(first + i, type_, tx.now, job_id, owner, data)
                for i, (type_, job_id, owner, data) in enumerate(pending)]

    # --- jobs -----------------------------------------------------------------------------
    async def submit(self, job: Job, quota: Quota) -> tuple[Job, bool]:
        async def op(tx: _Tx, items: list[tuple[Job, Quota]]
                     ) -> list[tuple[Job, bool] | Exception]:
            await tx.execute(f"SELECT pg_advisory_xact_lock(%s), {SORT_OFF}", (_TURNS_LOCK,))
            return await submit_many(tx, items)

        result: tuple[Job, bool] = await self._grouped("submit", (job, quota), op)
        return result

    async def get(self, job_id: str) -> Job | None:
        async def op(tx: _Tx) -> Job | None:
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
    ) -> Page:
        where, params = ["TRUE"], []
        for clause, value in (("owner = %s", owner), ("state = %s", state),
                              ("kind = %s", kind), ("id < %s", before)):
            if value is not None:
                where.append(clause)
                params.append(value.value if isinstance(value, State) else value)

        async def op(tx: _Tx) -> Page:
            jobs = await tx.select(" AND ".join(where) + " ORDER BY id DESC LIMIT %s",
                                   (*params, limit + 1))
            more = len(jobs) > limit
            return Page(jobs[:limit], jobs[limit - 1].id if more else None)

        return await self._run(op, write=False)

    async def claim(
        self, worker: str, slots: int, limits: Limits, lease_s: float, kinds: list[str]
    ) -> list[Job]:
        async def op(tx: _Tx) -> list[Job]:
            # Admission is one decision at a time, across nodes; candidates are read by
            # walking the dispatch index (SORT_OFF).
            await tx.execute(f"SELECT pg_advisory_xact_lock(%s), {SORT_OFF}", (_CLAIM_LOCK,))
            running = Running()
            for owner, kind, n, mem in await tx.rows(
                "SELECT owner, kind, count(*), coalesce(sum(memory_mb), 0) FROM jobs "
                "WHERE state = 'running' GROUP BY owner, kind"
            ):
                running.add(owner, kind, int(mem), int(n))
            room = free_slots(limits, running, slots)
            admitted: list[Job] = []
            seen: set[str] = set()
            for _ in range(_CLAIM_ROUNDS):
                want = room - len(admitted)
                owners, full_kinds = blocked(limits, running)
                open_kinds = [k for k in kinds if k not in full_kinds]
                if want <= 0 or not open_kinds:
                    break
                candidates = [j for j in await _candidates(tx, open_kinds, owners, limits,
                                                           running, seen, want * 2 + 8)]
                if not candidates:
                    break
                seen.update(j.id for j in candidates)
                admitted += admit(candidates, limits, running, want)
            if not admitted:
                return []
            check_move("", State.QUEUED, State.RUNNING)
            # The admitted rows are locked by this transaction since `_candidates` read them
            # queued, so `id` alone picks them: a condition on `state` would let the planner
            # scan a partial index of every queued job instead of the primary key.
            chosen = sorted(
                (_job(r) for r in await tx.rows(
                    "UPDATE jobs SET state = 'running', attempt = attempt + 1, started_at = %s, "
                    "finished_at = NULL, worker = %s, lease_token = lease_token + 1, "
                    "lease_expires_at = %s, progress = NULL, message = NULL, error = NULL, "
                    "result = NULL, cancel_requested = FALSE, pid = NULL "
                    f"WHERE id = ANY(%s) RETURNING {_COLUMNS}",
                    (tx.now, worker, tx.now + lease_s, [j.id for j in admitted]))),
                key=lambda j: j.dispatch_key)
            for job in chosen:
                tx.announce(job, State.QUEUED)
            return chosen

        return await self._run(op)

    async def renew(self, worker: str, leases: dict[str, int], lease_s: float) -> set[str]:
        async def op(tx: _Tx) -> set[str]:
            stop = set(leases)
            ids, tokens = list(leases), [leases[i] for i in leases]
            for job_id, token, state, cancel in await tx.rows(
                "UPDATE jobs SET lease_expires_at = CASE WHEN jobs.lease_token = l.token "
                "AND jobs.state = 'running' THEN %s ELSE jobs.lease_expires_at END "
                "FROM unnest(%s::text[], %s::bigint[]) AS l(id, token) WHERE jobs.id = l.id "
                "RETURNING jobs.id, jobs.lease_token, jobs.state, jobs.cancel_requested",
                (tx.now + lease_s, ids, tokens),
            ):
                if state == "running" and token == leases[job_id] and not cancel:
                    stop.discard(job_id)
            return stop

        if not leases:
            return set()
        return await self._run(op)

    async def set_pid(self, job_id: str, token: int, pid: int | None) -> None:
        async def op(tx: _Tx) -> None:
            await tx.cur.execute("UPDATE jobs SET pid = %s WHERE id = %s AND lease_token = %s",
                                 (pid, job_id, token))

        await self._run(op)

    async def finish(self, job_id: str, token: int, outcome: Outcome) -> Job | None:
        async def op(tx: _Tx, items: list[tuple[str, int, Outcome]]) -> list[Job | None]:
            if any(o.state is State.QUEUED for _, _, o in items):
                await tx.execute(f"SELECT pg_advisory_xact_lock(%s), {SORT_OFF}",
                                 (_TURNS_LOCK,))
            return await finish_many(tx, items, _requeue)

        result: Job | None = await self._grouped("finish", (job_id, token, outcome), op)
        return result

    async def progress(
        self, job_id: str, token: int, percent: float | None, message: str | None,
        rss_mb: float | None = None,
    ) -> None:
        async def op(tx: _Tx) -> None:
            row = await tx.row(
                "UPDATE jobs SET progress = coalesce(%s, progress), "
                "message = coalesce(%s, message) WHERE id = %s AND lease_token = %s "
                "AND state = 'running' RETURNING owner",
                (percent, message, job_id, token),
            )
            if row is not None:
                data: dict[str, Any] = {"progress": percent, "message": message}
                if rss_mb is not None:
                    data["rss_mb"] = rss_mb
                tx.emit("job.progress", Job(job_id, "", row[0], {}), data)

        await self._run(op)

    async def append_logs(self, job_id: str, lines: list[str], cap: int) -> None:
        async def op(tx: _Tx) -> None:
            row = await tx.row("SELECT log_count, owner FROM jobs WHERE id = %s FOR UPDATE",
                               (job_id,))
            if row is None:
                return
            count, owner = row
            keep = lines[: max(0, cap - count)]
            if keep:
                await tx.cur.executemany(
                    "INSERT INTO logs (job_id, n, line) VALUES (%s, %s, %s)",
                    [(job_id, count + i + 1, line) for i, line in enumerate(keep)])
            await tx.cur.execute("UPDATE jobs SET log_count = log_count + %s WHERE id = %s",
                                 (len(lines), job_id))
            if keep:
                tx.emit("job.log", Job(job_id, "", owner, {}),
                        {"first": count + 1, "lines": keep})

        await self._run(op)

    async def logs(self, job_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        async def op(tx: _Tx) -> list[tuple[int, str]]:
            rows = await tx.rows(
                "SELECT n, line FROM logs WHERE job_id = %s AND n > %s ORDER BY n LIMIT %s",
                (job_id, after, limit))
            out = [(int(n), str(line)) for n, line in rows]
            if len(out) < limit:
                total = await tx.value("SELECT log_count FROM jobs WHERE id = %s", (job_id,))
                kept = await tx.value("SELECT coalesce(max(n), 0) FROM logs WHERE job_id = %s",
                                      (job_id,))
                if total and total > kept and after <= kept:
                    out.append((kept + 1, f"[jobgate] {total - kept} more lines not kept "
                                          "(worker.log_max_lines)"))
            return out

        return await self._run(op, write=False)

    async def cancel(self, job_id: str) -> Job:
        async def op(tx: _Tx) -> Job:
            job = await tx.one(job_id)
            if job.state is State.QUEUED:
                return await tx.move(job, State.CANCELLED, finished_at=tx.now,
                                     message="cancelled")
            if job.state is State.RUNNING:
                if not job.cancel_requested:
                    job.cancel_requested = True
                    job.message = "cancelling"
                    await tx.cur.execute(
                        "UPDATE jobs SET cancel_requested = TRUE, message = %s WHERE id = %s",
                        (job.message, job.id))
                    tx.emit("job.progress", job, {"progress": job.progress,
                                                  "message": job.message,
                                                  "cancel_requested": True})
                return job
            raise IllegalMove(job.id, job.state, State.CANCELLED)

        return await self._run(op)

    async def retry(self, job_id: str) -> Job:
        async def op(tx: _Tx) -> Job:
            await tx.lock(_TURNS_LOCK)
            job = await tx.one(job_id)
            if job.state not in (State.FAILED, State.CANCELLED):
                raise IllegalMove(job.id, job.state, State.QUEUED)
            return await tx.move(
                job, State.QUEUED, vt=await _owner_vt(tx, job.owner, job.priority),
                run_at=tx.now, attempt=0, finished_at=None, started_at=None, error=None,
                result=None, progress=None, message="retried by hand", worker=None,
                cancel_requested=False, lease_expires_at=None)

        return await self._run(op)

    async def delete(self, job_id: str) -> Job:
        async def op(tx: _Tx) -> Job:
            job = await tx.one(job_id)
            if job.state not in FINAL:
                raise IllegalMove(job.id, job.state, job.state)
            await _delete(tx, [job_id])
            return job

        return await self._run(op)

    async def recover(self, lost_workers: Collection[str] = ()) -> list[Job]:
        lost = list(lost_workers)

        async def op(tx: _Tx) -> list[Job]:
            await tx.lock(_TURNS_LOCK)
            out = []
            for job in await tx.select(
                    "state = 'running' AND (lease_expires_at < %s OR worker = ANY(%s)) "
                    "ORDER BY id FOR UPDATE SKIP LOCKED", (tx.now, lost)):
                pid, worker = job.pid, job.worker
                common: dict[str, Any] = {"lease_expires_at": None, "pid": None,
                                          "lease_token": job.lease_token + 1}
                if job.cancel_requested:
                    await tx.move(job, State.CANCELLED, finished_at=tx.now,
                                  message="cancelled (worker lost)", **common)
                elif job.attempt < job.max_attempts:
                    await tx.move(job, State.QUEUED,
                                  vt=await _owner_vt(tx, job.owner, job.priority),
                                  run_at=tx.now, worker=None,
                                  message="recovered after its worker was lost", **common)
                else:
                    await tx.move(job, State.FAILED, finished_at=tx.now, error="worker lost",
                                  message="worker lost", **common)
                job.pid, job.worker = pid, worker
                out.append(job)
            return out

        return await self._run(op)

    async def expire_queued(self, start_timeout_s: float) -> list[Job]:
        async def op(tx: _Tx) -> list[Job]:
            jobs = await tx.select("state = 'queued' AND run_at < %s ORDER BY id "
                                   "FOR UPDATE SKIP LOCKED", (tx.now - start_timeout_s,))
            minutes = f"{start_timeout_s / 60:g} min" if start_timeout_s >= 60 else \
                f"{start_timeout_s:g} s"
            for job in jobs:
                await tx.move(job, State.FAILED, finished_at=tx.now,
                              error=f"not started within {minutes} (limits.start_timeout)",
                              message="start timeout")
            return jobs

        return await self._run(op)

    async def finished_before(
        self, ts: float, owner: str | None = None, keep_per_user: int | None = None
    ) -> list[str]:
        mine, params = ("", ()) if owner is None else (" AND owner = %s", (owner,))

        async def op(tx: _Tx) -> list[str]:
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
        async def op(tx: _Tx) -> int:
            return await _delete(tx, job_ids)

        return await self._run(op) if job_ids else 0

    # --- the queue ------------------------------------------------------------------------
    async def queued_keys(self) -> list[tuple[DispatchKey, float]]:
        async def op(tx: _Tx) -> list[tuple[DispatchKey, float]]:
            return [((-p, vt, i), run_at) for p, vt, i, run_at in await tx.rows(
                "SELECT priority, vt, id, run_at FROM jobs WHERE state = 'queued'")]

        return await self._run(op, write=False)

    async def recent_peaks(self, kind: str, limit: int) -> list[float]:
        async def op(tx: _Tx) -> list[float]:
            return [float(r[0]) for r in await tx.rows(
                "SELECT peak_memory_mb FROM jobs WHERE kind = %s AND state = 'completed' "
                "AND peak_memory_mb IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT %s",
                (kind, limit))]

        return await self._run(op, write=False)

    async def next_run_at(self) -> float | None:
        async def op(tx: _Tx) -> float | None:
            value = await tx.value("SELECT min(run_at) FROM jobs WHERE state = 'queued'")
            return None if value is None else float(value)

        return await self._run(op, write=False)

    async def stats(self) -> Stats:
        async def op(tx: _Tx) -> Stats:
            counts = {s.value: 0 for s in State}
            counts.update({s: int(n) for s, n in await tx.rows(
                "SELECT state, count(*) FROM jobs GROUP BY state")})
            reserved = await tx.value("SELECT coalesce(sum(memory_mb), 0) FROM jobs "
                                      "WHERE state = 'running'")
            last_min = await tx.value("SELECT count(*) FROM jobs WHERE finished_at >= %s "
                                      "AND state = 'completed'", (tx.now - 60,))
            row = await tx.row(
                "SELECT count(*), count(*) FILTER (WHERE state = 'completed'), "
                "avg(finished_at - started_at) FILTER (WHERE state = 'completed') "
                "FROM jobs WHERE finished_at >= %s", (tx.now - 3600,))
            assert row is not None
            done, ok, avg = int(row[0]), int(row[1]), row[2]
            return Stats(counts, int(reserved), int(last_min),
                         None if avg is None else float(avg), (ok / done) if done else None)

        return await self._run(op, write=False)

    async def running_jobs(self, worker: str | None = None) -> list[Job]:
        async def op(tx: _Tx) -> list[Job]:
            if worker is None:
                return await tx.select("state = 'running'")
            return await tx.select("state = 'running' AND worker = %s", (worker,))

        return await self._run(op, write=False)

    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        self._usable()
        return await self._read_events(seq, limit)

    async def prune_events(self, before_ts: float) -> int:
        async def op(tx: _Tx) -> int:
            await tx.cur.execute("DELETE FROM events WHERE ts < %s", (before_ts,))
            return tx.cur.rowcount

        return await self._run(op)

    # --- worker nodes ---------------------------------------------------------------------
    async def heartbeat(self, node: Node) -> None:
        async def op(tx: _Tx) -> None:
            await tx.cur.execute(
                "INSERT INTO nodes (name, host, pid, slots, version, started_at, heartbeat_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
                "host = excluded.host, pid = excluded.pid, slots = excluded.slots, "
                "version = excluded.version, started_at = excluded.started_at, "
                "heartbeat_at = excluded.heartbeat_at",
                (node.name, node.host, node.pid, node.slots, node.version, node.started_at,
                 tx.now))

        await self._run(op)

    async def nodes(self, alive_within_s: float | None = None,
                    owner: str | None = None) -> list[Node]:
        async def op(tx: _Tx) -> list[Node]:
            since = -1.0 if alive_within_s is None else tx.now - alive_within_s
            busy: Counter[str] = Counter()
            running: dict[str, list[str]] = {}
            for worker, job_id, job_owner in await tx.rows(
                    "SELECT worker, id, owner FROM jobs WHERE state = 'running' ORDER BY id"):
                busy[worker] += 1
                if owner is None or job_owner == owner:
                    running.setdefault(worker, []).append(job_id)
            rows = await tx.rows(
                "SELECT name, host, pid, slots, version, started_at, heartbeat_at FROM nodes "
                "WHERE heartbeat_at >= %s ORDER BY name", (since,))
            return [Node(name, host, int(pid), int(slots), version, float(started),
                         float(beat), busy[name], tuple(running.get(name, ())))
                    for name, host, pid, slots, version, started, beat in rows]

        return await self._run(op, write=False)

    async def remove_node(self, name: str) -> bool:
        async def op(tx: _Tx) -> bool:
            await tx.cur.execute("DELETE FROM nodes WHERE name = %s", (name,))
            return tx.cur.rowcount > 0

        return await self._run(op)

    async def forget_nodes(self, before_ts: float) -> int:
        async def op(tx: _Tx) -> int:
            await tx.cur.execute("DELETE FROM nodes WHERE heartbeat_at < %s", (before_ts,))
            return tx.cur.rowcount

        return await self._run(op)

    # --- users ----------------------------------------------------------------------------
    async def add_user(self, name: str, password_hash: str | None, admin: bool) -> User:
        async def op(tx: _Tx) -> User:
            try:
                await tx.cur.execute(
                    "INSERT INTO users (name, password_hash, admin, created_at) "
                    "VALUES (%s, %s, %s, %s)", (name, password_hash, admin, tx.now))
            except pg_errors.UniqueViolation:
                raise Conflict(f"user {name} already exists") from None
            return User(name, admin, password_hash)

        return await self._run(op)

    async def get_user(self, name: str) -> User | None:
        async def op(tx: _Tx) -> User | None:
            row = await tx.row("SELECT name, admin, password_hash FROM users WHERE name = %s",
                               (name,))
            return User(row[0], bool(row[1]), row[2]) if row else None

        return await self._run(op, write=False)

    async def add_token(self, user: str, token_hash: str) -> None:
        async def op(tx: _Tx) -> None:
            if await tx.row("SELECT 1 FROM users WHERE name = %s", (user,)) is None:
                raise NotFound(f"no user {user}")
            await tx.cur.execute(
                'INSERT INTO tokens (hash, "user", created_at) VALUES (%s, %s, %s)',
                (token_hash, user, tx.now))

        await self._run(op)

    async def user_for_token(self, token_hash: str) -> User | None:
        async def op(tx: _Tx) -> User | None:
            row = await tx.row(
                'SELECT u.name, u.admin FROM tokens t JOIN users u ON u.name = t."user" '
                "WHERE t.hash = %s", (token_hash,))
            return User(row[0], bool(row[1])) if row else None

        return await self._run(op, write=False)


async def _candidates(tx: _Tx, kinds: list[str], owners: set[str], limits: Limits,
                      running: Running, seen: set[str], limit: int) -> list[Job]:
    """The first ready queued jobs in dispatch order that no limit excludes outright (rows
    another transaction holds are skipped: it is changing them)."""
    where = "state = 'queued' AND run_at <= %s AND kind = ANY(%s)"
    params: list[Any] = [tx.now, kinds]
    if owners:
        where += " AND owner <> ALL(%s)"
        params.append(list(owners))
    if seen:
        where += " AND id <> ALL(%s)"
        params.append(list(seen))
    # No filter on memory: a job that does not fit must be seen, to hold the memory for
    # itself against the jobs behind it (scheduler.admit).
    return [
        Job(id=i, kind=k, owner=o, args={}, priority=p, vt=vt, memory_mb=m)
        for i, k, o, p, vt, m in await tx.rows(
            f"SELECT id, kind, owner, priority, vt, memory_mb FROM jobs WHERE {where} "
            "ORDER BY priority DESC, vt, id LIMIT %s FOR UPDATE SKIP LOCKED",
            (*params, limit))
    ]


async def _requeue(tx: _Tx, job: Job, outcome: Outcome) -> Job:
    """A run that goes back to the queue (retry or hand-back), behind its owner's peers;
    the caller holds `_TURNS_LOCK` and the job's row."""
    assert outcome.retry_at is not None
    return await tx.move(
        job, State.QUEUED, vt=await _owner_vt(tx, job.owner, job.priority),
        run_at=outcome.retry_at, worker=None,
        attempt=job.attempt - 1 if outcome.hand_back else job.attempt,
        lease_token=job.lease_token + 1, lease_expires_at=None, pid=None, error=outcome.error,
        message=outcome.message, peak_memory_mb=outcome.peak_memory_mb)


async def _owner_vt(tx: _Tx, owner: str, priority: int) -> int:
    """The fair turn of a job of `owner` entering the queue at `priority` (scheduler.py);
    the caller holds `_TURNS_LOCK`."""
    return await Turns(tx).next(owner, priority)


async def _delete(tx: _Tx, job_ids: list[str]) -> int:
    await tx.cur.execute(
        "DELETE FROM logs WHERE job_id = ANY(SELECT id FROM jobs WHERE id = ANY(%s) "
        "AND state = ANY(%s))", (job_ids, _FINAL))
    await tx.cur.execute("DELETE FROM jobs WHERE id = ANY(%s) AND state = ANY(%s)",
                         (job_ids, _FINAL))
    return tx.cur.rowcount
