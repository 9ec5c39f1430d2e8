"""SQLite's connection: its thread, group commit, the event outbox, migrations, and `Tx`,
what an operation writes moves and events through.

Every call becomes an operation handed to one thread that owns the process's only
connection. The thread takes all operations waiting at that moment and runs them in one
`BEGIN IMMEDIATE` transaction, each inside a savepoint so one failing operation does not
undo the others, then commits once: with `synchronous=FULL` every acknowledged job is on
disk, and one fsync serves a whole batch of submits, claims and completions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jobgate.model import Event, Job
from jobgate.moves import Move
from jobgate.store.base import EventListener, NotFound, hand_own
from jobgate.store.base import SchemaTooNew as SchemaTooNew  # moved to base
from jobgate.store.rows import (
    COLUMNS,
    column_values,
    event_from_row,
    job_from_row,
    migrations,
    pending_migrations,
    to_json,
)

T = TypeVar("T")
ItemT = TypeVar("ItemT")
_BATCH_MAX = 512  # operations per transaction
_IN_CHUNK = 500  # ids in one `IN (...)`: SQLite allows 32,766 parameters
_IDLE_CHECK_S = 0.05  # how often an idle connection looks for other processes' events
_BUSY_CHECK_S = 0.002  # ... and how often while they wrote within the last _BUSY_SPELL_S
_BUSY_SPELL_S = 1.0
_BUSY_TIMEOUT_MS = 5000  # while opening: migrations of two processes starting together
_BUSY_FIRST_S = 0.0005  # then a busy write lock is retried after this, growing 1.5x ...
_BUSY_MAX_S = 0.002  # ... up to this
_BUSY_WARN_S = 5.0
# A wait this long for the write lock is remembered as a stall of the whole database: no
# node could renew a lease while it lasted (see `Tx.stall` and `rows.lease_cutoff`).
_STALL_S = 0.1
log = logging.getLogger("jobgate.store")


class Tx:
    """One operation's view of the open transaction.

    Events are numbered and written when the operation succeeds, all of a batch's in one
    `executemany`: the batch holds the write lock, so it knows the next `seq` itself.
    """

    def __init__(self, conn: sqlite3.Connection, now: float,
                 stall: tuple[float, float] | None = None,
                 after: Callable[[Tx, list[Move]], None] | None = None) -> None:
        self.conn = conn
        self.now = now
        # What the store writes with every batch of moves (the outbox rows of final states).
        self.after = after
        # The last time this connection waited for another process's write lock (from,
        # until; wall clock), this batch's own wait included: another process holding the
        # lock that long (stopped, or starved mid-write) kept every node from writing.
        self.stall = stall
        self.pending: list[tuple[str, str | None, str | None, dict[str, Any]]] = []

    def emit(self, type_: str, job: Job | None, data: dict[str, Any]) -> None:
        self.pending.append((type_, job.id if job else None, job.owner if job else None, data))

    def select(self, where: str, params: tuple[Any, ...] = ()) -> list[Job]:
        """Whole jobs, as `WHERE where` finds them."""
        return [job_from_row(r) for r in
                self.conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE {where}", params)]

    def one(self, job_id: str) -> Job:
        """The job `job_id`; NotFound if there is none."""
        rows = self.select("id = ?", (job_id,))
        if not rows:
            raise NotFound(f"no job {job_id}")
        return rows[0]

    def apply(self, move: Move) -> Job:
        """Write one move and emit its event; the job after it."""
        return self.apply_all([move])[0]

    def apply_all(self, moves: list[Move]) -> list[Job]:
        """Write moves together and emit their events in order; the jobs after them."""
        self.write(moves)
        for move in moves:
            self.record(move)
        if self.after is not None:
            self.after(self, moves)
        return [move.job for move in moves]

    def record(self, move: Move) -> None:
        """Emit the event of a move (written by `write`)."""
        self.emit(move.event, move.job, move.data)

    def write(self, moves: list[Move]) -> None:
        """Write the columns of moves: jobs that get the same values (a wave of claims, of
        ends) in one `UPDATE ... WHERE id IN`, the others one `executemany` per set of
        columns. SQLite runs an `executemany` row by row: a statement per job was most of
        what a worker spends per job."""
        by_columns: dict[tuple[str, ...], dict[tuple[Any, ...], list[str]]] = {}
        for move in moves:
            values = column_values(move.fields)
            by_columns.setdefault(tuple(move.fields), {}).setdefault(values, []).append(
                move.job.id)
        for columns, by_values in by_columns.items():
            sets = ", ".join(f"{c} = ?" for c in columns)
            one_each = [[*values, ids[0]] for values, ids in by_values.items() if len(ids) == 1]
            if one_each:
                self.conn.executemany(f"UPDATE jobs SET {sets} WHERE id = ?", one_each)
            for values, ids in by_values.items():
                for start in range(0, len(ids) if len(ids) > 1 else 0, _IN_CHUNK):
                    chunk = ids[start:start + _IN_CHUNK]
                    self.conn.execute(f"UPDATE jobs SET {sets} WHERE id IN "
                                      f"({placeholders(chunk)})", [*values, *chunk])


@dataclass(frozen=True, slots=True)
class _Op:
    fn: Callable[[Tx], Any]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Group:
    """Calls of one grouped operation, waiting for the connection thread to take them."""

    items: list[Any]
    waiters: list[asyncio.Future[Any]]
    future: asyncio.Future[list[Any]]


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc))


def _max_seq(conn: sqlite3.Connection) -> int:
    """The highest event number ever given, pruned events included."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    top: int = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    return max(top, row[0] if row else 0)


class GroupCommit:
    """The connection thread; `SqliteStore` builds its operations on `_call`."""

    def __init__(self, path: str, durability: str = "full") -> None:
        self.path = path
        self.durability = durability
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._listeners: list[EventListener] = []
        self._own_listeners: list[EventListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()
        self._last_seq = 0
        self._stall: tuple[float, float] | None = None
        self._groups: dict[tuple[str, asyncio.AbstractEventLoop], _Group] = {}
        self._groups_lock = threading.Lock()

    # --- the connection thread -------------------------------------------------------
    async def open(self, stalled_session_s: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="jobgate-sqlite",
                                        daemon=True)
        self._thread.start()
        await asyncio.wrap_future(ready)

    async def close(self) -> None:
        if self._thread is not None:
            self._ops.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def listen(self, callback: EventListener) -> None:
        self._listeners.append(callback)

    def listen_own(self, callback: EventListener) -> None:
        self._own_listeners.append(callback)

    async def schema_version(self) -> int:
        return await asyncio.to_thread(_file_version, self.path)

    def latest_schema_version(self) -> int:
        return latest_version()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        _wal(conn)
        conn.execute(f"PRAGMA synchronous = {'FULL' if self.durability == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._connect()
            _migrate(conn)
            self._last_seq = _max_seq(conn)
            data_version = conn.execute("PRAGMA data_version").fetchone()[0]
            # From here this thread waits out another process's lock itself, in short
            # sleeps: SQLite's own busy handler sleeps up to 100 ms at a time, while a
            # busy peer commits every few milliseconds.
            conn.execute("PRAGMA busy_timeout = 0")
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        foreign_at = 0.0  # when another process was last seen writing
        while True:
            # Another process that just wrote (a producer, a worker node) likely writes
            # again soon: look often for a while, then settle back to the idle pace.
            busy = time.monotonic() - foreign_at < _BUSY_SPELL_S
            try:
                first = self._ops.get(timeout=_BUSY_CHECK_S if busy else _IDLE_CHECK_S)
            except queue.Empty:
                with contextlib.suppress(sqlite3.OperationalError):  # busy: next time
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    if version != data_version:
                        events = self._foreign_events(conn)
                        data_version = version
                        foreign_at = time.monotonic()
                        self._publish(events, [])
                continue
            if first is None:
                break
            batch = [first]
            while len(batch) < _BATCH_MAX:
                try:
                    op = self._ops.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    self._ops.put(None)
                    break
                batch.append(op)
            version = self._run_batch(conn, batch, data_version)
            if version != data_version:  # it read other processes' writes on the way
                data_version, foreign_at = version, time.monotonic()
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op], data_version: int) -> int:
        write = any(op.write for op in batch)
        foreign: list[Event] = []
        waited_s, delay_s, wait_from = 0.0, _BUSY_FIRST_S, 0.0
        while True:
            results: list[tuple[_Op, Any, BaseException | None]] = []
            events: list[Event] = []
            rows: list[tuple[Any, ...]] = []
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != data_version:
                    # Another process committed since we last looked: its events come first.
                    foreign.extend(self._foreign_events(conn))
                    # Numbers another process gave to events pruned since count too (read
                    # in this transaction's snapshot, unlike the idle look outside one).
                    self._last_seq = max(self._last_seq, _max_seq(conn))
                    data_version = version
                seq, now = self._last_seq, time.time()
                if waited_s >= _STALL_S:
                    self._stall = (wait_from, now)
                for op in batch:
                    tx = Tx(conn, now, self._stall, self._after_moves)
                    conn.execute("SAVEPOINT op")
                    try:
                        value = op.fn(tx)
                    except Exception as exc:  # handed to the caller, who sees it raised
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        if _is_busy(exc):
                            raise
                        results.append((op, None, exc))
                        continue
                    conn.execute("RELEASE op")
                    for type_, job_id, owner, data in tx.pending:
                        seq += 1
                        events.append(Event(seq, type_, now, job_id, owner, data))
                        rows.append((seq, type_, now, job_id, owner, to_json(data)))
                    results.append((op, value, None))
                if rows:
                    conn.executemany("INSERT INTO events (seq, type, ts, job_id, owner, data) "
                                     "VALUES (?, ?, ?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if _is_busy(exc):
                    # Another process holds the write lock: wait and run the whole batch
                    # again, so "database is locked" never reaches a caller.
                    if waited_s == 0:
                        wait_from = time.time()
                    if waited_s < _BUSY_WARN_S <= waited_s + delay_s:
                        log.warning("database busy for %.0f s; still waiting", _BUSY_WARN_S)
                    time.sleep(delay_s)
                    waited_s += delay_s
                    delay_s = min(_BUSY_MAX_S, delay_s * 1.5)
                    continue
                self._publish(foreign, [(op, None, exc) for op in batch])
                return data_version
            self._last_seq = seq
            if events:
                hand_own(self._own_listeners, events)
            self._publish(foreign + events, results)
            return data_version

    def _foreign_events(self, conn: sqlite3.Connection) -> list[Event]:
        rows = conn.execute(
            "SELECT seq, type, ts, job_id, owner, data FROM events WHERE seq > ? ORDER BY seq",
            (self._last_seq,),
        ).fetchall()
        if rows:
            self._last_seq = max(self._last_seq, rows[-1][0])
        return [event_from_row(r) for r in rows]

    def _publish(self, events: list[Event],
                 results: list[tuple[_Op, Any, BaseException | None]]) -> None:
        """Hand events and results to their event loops: one wake-up per loop per batch,
        events first, so a caller sees its own change's effects when its call returns."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op, Any, BaseException | None]]]
        by_loop = {}
        for item in results:
            by_loop.setdefault(item[0].loop, []).append(item)
        main = self._loop
        if main is not None and (events or main in by_loop):
            main.call_soon_threadsafe(self._deliver, events, by_loop.pop(main, []))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(self._deliver, [], items)

    def _deliver(self, events: list[Event],
                 results: list[tuple[_Op, Any, BaseException | None]]) -> None:
        if events:
            for callback in self._listeners:
                callback(events)
        for op, value, exc in results:
            if op.future.done():  # the caller gave up waiting (cancelled)
                continue
            if exc is None:
                op.future.set_result(value)
            else:
                op.future.set_exception(exc)

    def _after_moves(self, tx: Tx, moves: list[Move]) -> None:
        """Written with every batch of moves, in its transaction (the store's outbox)."""

    # --- what operations are built on ------------------------------------------------
    def _check_usable(self) -> None:
        if self._thread is None:
            raise RuntimeError("the store is not open")
        if os.getpid() != self._pid:
            raise RuntimeError("a SQLite store cannot be used across fork; open a new one")

    async def _call(self, fn: Callable[[Tx], T], write: bool = True) -> T:
        self._check_usable()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._ops.put(_Op(fn, write, loop, future))
        return await future

    def _take(self, key: tuple[str, asyncio.AbstractEventLoop],
              fn: Callable[[Tx, list[ItemT]], list[T] | list[T | Exception]]
              ) -> Callable[[Tx], list[T] | list[T | Exception]]:
        """The operation of a group: closes the group to newcomers when it first runs, and
        runs on the same items if the batch has to run again (busy)."""
        taken: list[ItemT] | None = None

        def op(tx: Tx) -> list[T] | list[T | Exception]:
            nonlocal taken
            if taken is None:
                with self._groups_lock:
                    group = self._groups.pop(key)
                taken = group.items
            return fn(tx, taken)

        return op

    def _settle(self, key: tuple[str, asyncio.AbstractEventLoop], group: _Group,
                done: asyncio.Future[list[Any]]) -> None:
        """Hand each caller of a group its own result; a group that ended without running
        (its batch failed) takes no newcomers."""
        with self._groups_lock:
            if self._groups.get(key) is group:
                del self._groups[key]
        exc = None if done.cancelled() else done.exception()
        for index, waiter in enumerate(group.waiters):
            if waiter.done():  # that caller gave up waiting
                continue
            if done.cancelled():
                waiter.cancel()
            elif exc is not None:
                waiter.set_exception(exc)
            else:
                value = done.result()[index]
                if isinstance(value, Exception):
                    waiter.set_exception(value)
                else:
                    waiter.set_result(value)

    async def _call_grouped(self, name: str, item: ItemT,
                            fn: Callable[[Tx, list[ItemT]], list[T] | list[T | Exception]]
                            ) -> T:
        """Calls made while the thread is busy become one operation over all their items:
        a thousand jobs finishing at once cost a few statements, not a thousand. `fn`
        returns one result per item, or the exception that item's caller gets."""
        self._check_usable()
        loop = asyncio.get_running_loop()
        key = (name, loop)
        mine: asyncio.Future[T] = loop.create_future()
        with self._groups_lock:
            group = self._groups.get(key)
            if group is None or group.future.done():
                group = self._groups[key] = _Group([], [], loop.create_future())
                group.future.add_done_callback(functools.partial(self._settle, key, group))
                self._ops.put(_Op(self._take(key, fn), True, loop, group.future))
            group.items.append(item)
            group.waiters.append(mine)
        return await mine


def _migrations() -> list[tuple[int, str]]:
    return migrations("sqlite")


def latest_version() -> int:
    """The schema version this jobgate writes."""
    return _migrations()[-1][0]


def _file_version(path: str) -> int:
    """The schema version of the file at `path`, opened read-only (0: no file yet)."""
    if not os.path.exists(path):
        return 0
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the pending migrations. The version is read again inside the write lock
    (`BEGIN IMMEDIATE`), so of two processes opening a fresh file at once, the second finds
    the first one's schema and applies nothing twice."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if not pending_migrations("sqlite", current):
        return  # up to date: no write lock taken
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        for version, sql in pending_migrations("sqlite", current):
            for statement in _split(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _split(sql: str) -> list[str]:
    statements, current = [], []
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";") and sqlite3.complete_statement("\n".join(current)):
            statements.append("\n".join(current))
            current = []
    return [s for s in statements if s.strip()]


def placeholders(items: Any) -> str:
    """`?, ?, …`: one per item, for `IN (…)`."""
    return ", ".join("?" for _ in items)


def _wal(conn: sqlite3.Connection) -> None:
    """Switch a connection to WAL. On a fresh file that another process is setting up at
    the same moment, SQLite answers "database is locked" at once, without waiting out its
    busy timeout: try again, for as long as the busy timeout would have waited."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
