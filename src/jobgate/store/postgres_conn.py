"""The PostgreSQL backend's connection side: the pool, one transaction per operation
(`Tx`, what an operation writes moves and events through), the groups that gather
concurrent calls of one operation into one transaction (`Groups`), numbered migrations,
and the listener that hands every node's committed events to this process in `seq` order.
The operations themselves are in postgres.py and postgres_grouped.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.abc import Buffer
    from psycopg.adapt import AdaptersMap
    from psycopg.pq import TransactionStatus
    from psycopg.types.string import StrBinaryDumper, StrDumper, StrDumperUnknown
    from psycopg_pool import AsyncConnectionPool
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the PostgreSQL backend needs psycopg, a dependency of jobgate: "
        "pip install 'psycopg[binary,pool]' (or reinstall jobgate)"
    ) from exc

from jobgate.model import Event, Job
from jobgate.moves import Move
from jobgate.store.base import EventListener, NotFound, hand_own
from jobgate.store.rows import (
    COLUMNS,
    column_value,
    event_from_row,
    migrations,
    pending_migrations,
    to_json,
)
from jobgate.store.rows import job_from_row as _job

# pg_errors: psycopg's errors, for postgres.py, whose import of psycopg goes through here.
__all__ = ["COLUMN_TYPES", "Groups", "PgConnection", "Tx", "latest_version", "pg_errors"]

T = TypeVar("T")
ItemT = TypeVar("ItemT")
log = logging.getLogger("jobgate.store")

_CHANNEL = "jobgate_events"
_MIGRATE_LOCK = 0x6A6F6203  # advisory lock keys ("job" + n; postgres.py has 1 and 2)
_POLL_S = 1.0  # the listener reads new events at least this often, notified or not
_RETRIES = 20  # a transaction chosen as a deadlock victim runs again, up to this often
_LOST_RETRIES = 5  # a transaction whose connection went runs again this often (over ~3 s)
_POOL_MAX = 10
_COLUMNS = COLUMNS

#: The type of each column of `COLUMNS`, for statements over many rows from one array per
#: column. Arrays go in binary (%b): psycopg quotes each element of a text-format array
#: with a regular expression, which costs more than the whole statement for a few hundred
#: JSON strings.
COLUMN_TYPES = dict(zip((c.strip() for c in COLUMNS.split(",")), (
    "text", "text", "text", "text", "int", "text", "float8", "text", "int", "int", "float8",
    "float8", "float8", "float8", "text", "text", "text", "int", "float8", "text", "text",
    "text", "bigint", "bigint", "float8", "bool", "int", "text",
), strict=True))

# Events are numbered by event_seq's row, updated last in the transaction; the insert runs
# to its end as part of the statement; the notification carries the new highest seq. The
# arrays go in binary (%b, see COLUMN_TYPES).
_EVENTS_SQL = (
    "WITH s AS (UPDATE event_seq SET last = last + %s RETURNING last), "
    "i AS (INSERT INTO events (seq, type, ts, job_id, owner, data) "
    "SELECT s.last - %s + e.n, e.type, %s, e.job_id, e.owner, e.data FROM s, "
    "unnest(%b::text[], %b::text[], %b::text[], %b::text[]) WITH ORDINALITY "
    "AS e(type, job_id, owner, data, n)) "
    "SELECT last, pg_notify(%s, last::text) FROM s"
)


def _nul_free(text: str) -> str:
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class _NulFreeText(StrDumper):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(_nul_free(obj))


class _NulFreeUnknown(StrDumperUnknown):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(_nul_free(obj))


class _NulFreeBinary(StrBinaryDumper):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(_nul_free(obj))


# PostgreSQL's text cannot hold a NUL character (SQLite's can): every string sent from
# here has its NULs replaced by U+FFFD, as the worker does for bytes that are not UTF-8.
# So a job printing a NUL still has its logs, progress and error written, and a lookup
# with one (a job id, a user name, a filter) finds nothing instead of failing. Registered
# in psycopg's order: the last dumper for a format is the default for `str`.
_ADAPTERS = AdaptersMap(psycopg.adapters)
for _dumper in (_NulFreeBinary, _NulFreeText, _NulFreeUnknown):
    _ADAPTERS.register_dumper(str, _dumper)


async def _connect(url: str, options: str = "") -> psycopg.AsyncConnection[Any]:
    """A connection of its own (autocommit, NUL-free strings), outside the pool."""
    return await psycopg.AsyncConnection.connect(url, autocommit=True, context=_ADAPTERS,
                                                 options=options)


def _session_options(stalled_session_s: float | None) -> str:
    """The server settings of this store's sessions: see `Store.open`."""
    if stalled_session_s is None:
        return ""
    return f"-c idle_in_transaction_session_timeout={max(1, round(stalled_session_s * 1000))}"


def _column_array(name: str, values: list[Any]) -> list[Any]:
    """Values of one column as its array holds them (a float column's ints as floats: a
    binary array takes the type of its first element)."""
    out = [column_value(name, v) for v in values]
    if COLUMN_TYPES[name] == "float8":
        return [None if v is None else float(v) for v in out]
    return out


_event = event_from_row


class Tx:
    """One operation's open transaction: a cursor, its clock, and the events it makes."""

    def __init__(self, cur: psycopg.AsyncCursor[Any], now: float,
                 after: Callable[[Tx, list[Move]], Awaitable[None]] | None = None) -> None:
        self.cur = cur
        self.now = now
        # What the store writes with every batch of moves (the outbox rows of final states).
        self.after = after
        self.pending: list[tuple[str, str | None, str | None, dict[str, Any]]] = []
        self.last: list[Callable[[Tx], Awaitable[None]]] = []

    def clock(self) -> float:
        """The time now, for what must count from this point of the transaction on (a
        lease dated after a lock that may have been waited for): `now` is when it began."""
        self.now = time.time()
        return self.now

    def at_end(self, fn: Callable[[Tx], Awaitable[None]]) -> None:
        """Run `fn` last, after the events are written (which may wait for other
        transactions' event numbers), just before the commit."""
        self.last.append(fn)

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

    async def apply(self, move: Move) -> Job:
        """Write one move and emit its event; the job after it."""
        return (await self.apply_all([move]))[0]

    async def apply_all(self, moves: list[Move]) -> list[Job]:
        """Write moves together and emit their events in order; the jobs after them."""
        await self.write(moves)
        for move in moves:
            self.record(move)
        if self.after is not None:
            await self.after(self, moves)
        return [move.job for move in moves]

    def record(self, move: Move) -> None:
        """Emit the event of a move (written by `write`)."""
        self.emit(move.event, move.job, move.data)

    async def write(self, moves: list[Move]) -> None:
        """Write the columns of moves: one statement per set of columns, from one array
        per column (the rows are locked: the caller read them FOR UPDATE or claimed them)."""
        by_columns: dict[tuple[str, ...], list[Move]] = {}
        for move in moves:
            by_columns.setdefault(tuple(move.fields), []).append(move)
        for columns, group in by_columns.items():
            arrays = [[m.job.id for m in group]] + [
                _column_array(c, [m.fields[c] for m in group]) for c in columns]
            await self.cur.execute(
                f"UPDATE jobs SET {', '.join(f'{c} = m.{c}' for c in columns)} FROM unnest("
                + ", ".join(f"%b::{COLUMN_TYPES[c]}[]" for c in ("id", *columns))
                + f") AS m(id, {', '.join(columns)}) WHERE jobs.id = m.id", arrays)


def _migrations() -> list[tuple[int, str]]:
    return migrations("postgres")


def latest_version() -> int:
    """The schema version this jobgate writes."""
    return _migrations()[-1][0]


async def _migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS jobgate_schema (version INTEGER NOT NULL)")
        cur = await conn.execute("SELECT max(version) FROM jobgate_schema")
        row = await cur.fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        for version, sql in pending_migrations("postgres", current):
            await conn.execute(sql.encode())
            await conn.execute("INSERT INTO jobgate_schema (version) VALUES (%s)", (version,))


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


class PgConnection:
    """The pool, transactions and event delivery a `PostgresStore` is built on."""

    def __init__(self, url: str, pool_size: int = _POOL_MAX) -> None:
        self.url = url
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[Any] | None = None
        self._listeners: list[EventListener] = []
        self._own_listeners: list[EventListener] = []
        self._last_seq = 0
        self._deliver_lock: asyncio.Lock | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listen_conn: psycopg.AsyncConnection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._wake_channel = f"jobgate_wake_{secrets.token_hex(8)}"
        self._groups = Groups()
        self._options = ""
        self._waiting_for: set[str] = set()  # rows a background transaction waits for
        self._background: set[asyncio.Task[None]] = set()
        # A connection kept for each other event loop that uses the store (a worker's lease
        # thread): opening one per call cost a server process start each renewal, which
        # under load outlasted a lease of 1 s. One each: a call made while it is in use
        # (a renewal waiting behind a held row) opens a connection of its own.
        self._spare: dict[asyncio.AbstractEventLoop, psycopg.AsyncConnection[Any]] = {}

    # --- connection, migrations, events ------------------------------------------------
    async def open(self, stalled_session_s: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._deliver_lock = asyncio.Lock()
        self._closing = False
        self._options = _session_options(stalled_session_s)
        listen_conn = await _connect(self.url, self._options)
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
            kwargs={"autocommit": True, "context": _ADAPTERS, "options": self._options},
            name="jobgate",
        )
        await pool.open(wait=True)
        self._pool = pool
        self._listener = asyncio.create_task(self._listen_loop(listen_conn),
                                             name="jobgate-pg-listen")

    def wait_behind(self, ids: set[str], op: Callable[[list[str]], Awaitable[object]]) -> None:
        """Run `op` on those of `ids` no earlier call still waits for, in a task of its own,
        so the caller goes on while `op` queues for rows another transaction holds."""
        new = ids - self._waiting_for
        if not new:
            return
        self._waiting_for |= new

        async def run() -> None:
            try:
                await op(sorted(new))
            except Exception:
                log.warning("a transaction waiting for rows %s failed", sorted(new),
                            exc_info=True)
            finally:
                self._waiting_for -= new

        task = asyncio.get_running_loop().create_task(run(), name="jobgate-pg-wait-behind")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        here = asyncio.get_running_loop()
        waiting = [t for t in self._background if t.get_loop() is here]
        for task in waiting:  # the others' loops (a lease thread) cancel their own
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
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
        spare, self._spare = self._spare, {}
        for conn in spare.values():
            with contextlib.suppress(Exception):
                await conn.close()

    def listen(self, callback: EventListener) -> None:
        self._listeners.append(callback)

    def listen_own(self, callback: EventListener) -> None:
        self._own_listeners.append(callback)

    async def schema_version(self) -> int:
        async with await _connect(self.url, self._options) as conn:
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
                        conn = await _connect(self.url, self._options)
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

    async def _after_moves(self, tx: Tx, moves: list[Move]) -> None:
        """Written with every batch of moves, in its transaction (the store's outbox)."""

    def _usable(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; on another event loop (a worker's lease thread), that
        loop's own (`_spare`), since the pool belongs to the store's loop."""
        pool = self._usable()
        here = asyncio.get_running_loop()
        if here is self._loop:
            async with pool.connection() as conn:
                yield conn
            return
        conn = self._spare.pop(here, None)
        if conn is None or conn.closed or conn.broken:
            conn = await _connect(self.url, self._options)
        try:
            yield conn
        finally:
            idle = not conn.closed and not conn.broken and \
                conn.info.transaction_status is TransactionStatus.IDLE
            if idle and not self._closing and here not in self._spare:
                self._spare[here] = conn
            else:
                await conn.close()
            for loop in [loop for loop in self._spare if loop.is_closed()]:
                await self._spare.pop(loop).close()

    async def _run(self, fn: Callable[[Tx], Awaitable[T]], write: bool = True) -> T:
        """Run `fn` in one transaction (again if it was a deadlock's victim, or its
        connection was lost before the commit); its events are numbered and written last,
        and delivered here before this returns."""
        lost = 0
        for attempt in range(_RETRIES):
            own: list[Event] = []
            committing = False
            try:
                async with self._connection() as conn, conn.transaction():
                    cur = conn.cursor()
                    tx = Tx(cur, time.time(), self._after_moves)
                    value = await fn(tx)
                    if tx.pending:
                        own = await self._write_events(tx)
                    for last in tx.last:
                        await last(tx)
                    committing = True
            # A session the server ended as stalled (see `Store.open`) was rolled back
            # before its commit: the transaction runs again, on a new connection.
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure,
                    pg_errors.IdleInTransactionSessionTimeout):
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.001 * (attempt + 1))
                continue
            except psycopg.OperationalError:
                # The connection went (a server restart, a failover): nothing of this
                # transaction was committed unless the commit itself was under way, when
                # whether it landed is unknown and the caller must hear of it (a read has
                # nothing to land: it runs again).
                lost += 1
                if (committing and write) or lost > _LOST_RETRIES:
                    raise
                await asyncio.sleep(0.05 * 2 ** lost)
                continue
            if own:
                hand_own(self._own_listeners, own)
                if asyncio.get_running_loop() is self._loop:
                    await self._catch_up(own)
                else:  # callbacks run on the store's loop
                    assert self._loop is not None
                    await asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(self._catch_up(own), self._loop))
            return value
        raise AssertionError("unreachable")

    async def _grouped(self, name: str, item: Any,
                       fn: Callable[[Tx, list[Any]], Awaitable[list[Any]]]) -> Any:
        """One call of a grouped operation (postgres_grouped): run with the other calls of
        `name` made meanwhile on this loop, in one transaction; alone on another loop."""
        if asyncio.get_running_loop() is not self._loop:
            value = (await self._run(lambda tx: fn(tx, [item])))[0]
            if isinstance(value, Exception):
                raise value
            return value
        return await self._groups.call(name, item, fn, self._run)

    async def _write_events(self, tx: Tx) -> list[Event]:
        """Number the transaction's events, write them and notify, in one statement (one
        round trip however many events a group makes)."""
        pending = tx.pending
        top = int(await tx.value(
            _EVENTS_SQL, (len(pending), len(pending), tx.now, [p[0] for p in pending],
                          [p[1] for p in pending], [p[2] for p in pending],
                          [to_json(p[3]) for p in pending], _CHANNEL)))
        first = top - len(pending) + 1
        return [Event(first + i, type_, tx.now, job_id, owner, data)
                for i, (type_, job_id, owner, data) in enumerate(pending)]
