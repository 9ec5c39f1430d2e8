"""The SQLite backend: one file, one connection per process, group commit.

Every call becomes an operation handed to one thread that owns the connection. The thread
takes all operations waiting at that moment and runs them in one `BEGIN IMMEDIATE`
transaction, each inside a savepoint so one failing operation does not undo the others,
then commits once: with `synchronous=FULL` every acknowledged job is on disk, and one fsync
serves a whole batch of submits, claims and completions (group commit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from jobgate.model import (
    FINAL,
    DispatchKey,
    Event,
    IllegalMove,
    Job,
    State,
    check_move,
    event_type,
    iso,
)
from jobgate.scheduler import Limits, Running, admit, blocked, free_slots, next_vt
from jobgate.store.base import (
    Conflict,
    EventListener,
    NotFound,
    Outcome,
    Page,
    QueueFull,
    Quota,
    Stats,
    Store,
    User,
)

T = TypeVar("T")
_BATCH_MAX = 512  # operations per transaction
_CLAIM_ROUNDS = 4  # reads of candidates per claim, when limits exclude some on the way
_IDLE_CHECK_S = 0.05  # how often an idle connection looks for other processes' events
_BUSY_TIMEOUT_MS = 5000
log = logging.getLogger("jobgate.store")
_FINAL = tuple(s.value for s in FINAL)


class _Tx:
    """One operation's view of the open transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.now = time.time()
        self.events: list[Event] = []

    def emit(self, type_: str, job: Job | None, data: dict[str, Any]) -> None:
        job_id, owner = (job.id, job.owner) if job else (None, None)
        cur = self.conn.execute(
            "INSERT INTO events (type, ts, job_id, owner, data) VALUES (?, ?, ?, ?, ?)",
            (type_, self.now, job_id, owner, json.dumps(data)),
        )
        assert cur.lastrowid is not None
        self.events.append(Event(cur.lastrowid, type_, self.now, job_id, owner, data))

    def move(self, job: Job, dst: State, **fields: Any) -> Job:
        """The one way a job changes state: checked, written, and announced."""
        src = job.state
        check_move(job.id, src, dst)
        fields["state"] = dst
        for name, value in fields.items():
            setattr(job, name, value)
        cols = ", ".join(f"{name} = ?" for name in fields)
        self.conn.execute(
            f"UPDATE jobs SET {cols} WHERE id = ?",
            [*(_to_db(name, v) for name, v in fields.items()), job.id],
        )
        self.emit(event_type(src, dst), job, _event_data(job))
        return job


def _event_data(job: Job) -> dict[str, Any]:
    """What a state event carries: the fields a change can touch (the rest stay as read)."""
    data: dict[str, Any] = {
        "state": job.state.value, "kind": job.kind, "owner": job.owner,
        "attempt": job.attempt, "max_attempts": job.max_attempts, "message": job.message,
        "progress": job.progress,
    }
    if job.state is State.QUEUED:
        data.update(priority=job.priority, run_at=iso(job.run_at), vt=job.vt)
    elif job.state is State.RUNNING:
        data.update(worker=job.worker, started_at=iso(job.started_at))
    else:
        data.update(finished_at=iso(job.finished_at), error=job.error, result=job.result,
                    outputs=job.outputs, peak_memory_mb=job.peak_memory_mb)
    return data


_JSON_COLS = {"args", "result", "depends_on", "outputs"}


def _to_db(name: str, value: Any) -> Any:
    if name in _JSON_COLS:
        return json.dumps(value)
    if isinstance(value, State):
        return value.value
    return value


_COLUMNS = (
    "id, kind, owner, args, priority, state, progress, message, attempt, max_attempts, "
    "created_at, run_at, started_at, finished_at, result, error, worker, memory_mb, "
    "peak_memory_mb, depends_on, unique_key, outputs, vt, lease_token, lease_expires_at, "
    "cancel_requested, pid, idempotency_key"
)
_PLACEHOLDERS = ", ".join("?" for _ in _COLUMNS.split(","))


def _job(row: sqlite3.Row | tuple[Any, ...]) -> Job:
    (id_, kind, owner, args, priority, state, progress, message, attempt, max_attempts,
     created_at, run_at, started_at, finished_at, result, error, worker, memory_mb,
     peak_memory_mb, depends_on, unique_key, outputs, vt, lease_token, lease_expires_at,
     cancel_requested, pid, idempotency_key) = tuple(row)[:28]
    return Job(
        id=id_, kind=kind, owner=owner, args=json.loads(args), priority=priority,
        state=State(state), progress=progress, message=message, attempt=attempt,
        max_attempts=max_attempts, created_at=created_at, run_at=run_at,
        started_at=started_at, finished_at=finished_at,
        result=None if result is None else json.loads(result), error=error, worker=worker,
        memory_mb=memory_mb, peak_memory_mb=peak_memory_mb,
        depends_on=json.loads(depends_on), unique_key=unique_key,
        outputs=json.loads(outputs), vt=vt, lease_token=lease_token,
        lease_expires_at=lease_expires_at, cancel_requested=bool(cancel_requested), pid=pid,
        idempotency_key=idempotency_key,
    )


def _job_values(job: Job) -> tuple[Any, ...]:
    return (
        job.id, job.kind, job.owner, json.dumps(job.args), job.priority, job.state.value,
        job.progress, job.message, job.attempt, job.max_attempts, job.created_at, job.run_at,
        job.started_at, job.finished_at, None if job.result is None else json.dumps(job.result),
        job.error, job.worker, job.memory_mb, job.peak_memory_mb, json.dumps(job.depends_on),
        job.unique_key, json.dumps(job.outputs), job.vt, job.lease_token,
        job.lease_expires_at, int(job.cancel_requested), job.pid, job.idempotency_key,
    )


def _select(tx: _Tx, where: str, params: tuple[Any, ...] = ()) -> list[Job]:
    return [_job(r) for r in tx.conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {where}", params)]


def _one(tx: _Tx, job_id: str) -> Job:
    rows = _select(tx, "id = ?", (job_id,))
    if not rows:
        raise NotFound(f"no job {job_id}")
    return rows[0]


def _placeholders(items: Any) -> str:
    return ", ".join("?" for _ in items)


@dataclass(frozen=True, slots=True)
class _Op:
    fn: Callable[[_Tx], Any]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc))


class SqliteStore(Store):
    """Jobs in one SQLite file. `durability="normal"` skips the fsync of each commit."""

    supports_notify = False

    def __init__(self, path: str, durability: str = "full") -> None:
        self.path = path
        self.durability = durability
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._listeners: list[EventListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()
        self._last_seq = 0

    # --- the connection thread -------------------------------------------------------
    async def open(self) -> None:
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

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if self.durability == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._connect()
            _migrate(conn)
            self._last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
            data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        while True:
            try:
                first = self._ops.get(timeout=_IDLE_CHECK_S)
            except queue.Empty:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != data_version:
                    data_version = version
                    self._publish(self._foreign_events(conn), [])
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
            data_version = self._run_batch(conn, batch, data_version)
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op], data_version: int) -> int:
        write = any(op.write for op in batch)
        delay_s = 0.01
        while True:
            results: list[tuple[_Op, Any, BaseException | None]] = []
            events: list[Event] = []
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != data_version:
                    # Another process committed since we last looked: its events come first.
                    events.extend(self._foreign_events(conn))
                    data_version = version
                for op in batch:
                    tx = _Tx(conn)
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
                    events.extend(tx.events)
                    results.append((op, value, None))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if _is_busy(exc):
                    # Another process held the lock past busy_timeout: wait and run the
                    # whole batch again, so "database is locked" never reaches a caller.
                    log.warning("database busy; retrying %d operations", len(batch))
                    time.sleep(delay_s)
                    delay_s = min(1.0, delay_s * 2)
                    continue
                self._publish([], [(op, None, exc) for op in batch])
                return data_version
            if events:
                self._last_seq = max(self._last_seq, events[-1].seq)
            self._publish(events, results)
            return data_version

    def _foreign_events(self, conn: sqlite3.Connection) -> list[Event]:
        rows = conn.execute(
            "SELECT seq, type, ts, job_id, owner, data FROM events WHERE seq > ? ORDER BY seq",
            (self._last_seq,),
        ).fetchall()
        if rows:
            self._last_seq = rows[-1][0]
        return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

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

    async def _call(self, fn: Callable[[_Tx], T], write: bool = True) -> T:
        if self._thread is None:
            raise RuntimeError("the store is not open")
        if os.getpid() != self._pid:
            raise RuntimeError("a SQLite store cannot be used across fork; open a new one")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._ops.put(_Op(fn, write, loop, future))
        return await future

    # --- jobs ---------------------------------------------------------------------------
    async def submit(self, job: Job, quota: Quota) -> tuple[Job, bool]:
        def op(tx: _Tx) -> tuple[Job, bool]:
            if job.idempotency_key is not None:
                same = _select(tx, "owner = ? AND idempotency_key = ?",
                               (job.owner, job.idempotency_key))
                if same:
                    return same[0], False
            if job.unique_key is not None:
                same = _select(tx, "owner = ? AND unique_key = ? "
                               "AND state IN ('queued', 'running')", (job.owner, job.unique_key))
                if same:
                    return same[0], False
            # Counting stops at the limit, so a deep queue costs no more than a full one.
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
            job.vt = _owner_vt(tx, job.owner, job.priority)
            job.state = State.QUEUED
            tx.conn.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES ({_PLACEHOLDERS})",
                            _job_values(job))
            tx.emit("job.queued", job, _event_data(job))
            return job, True

        return await self._call(op)

    async def get(self, job_id: str) -> Job | None:
        def op(tx: _Tx) -> Job | None:
            rows = _select(tx, "id = ?", (job_id,))
            return rows[0] if rows else None

        return await self._call(op, write=False)

    async def list_jobs(
        self,
        owner: str | None,
        state: State | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> Page:
        where, params = ["1 = 1"], []
        for clause, value in (("owner = ?", owner), ("state = ?", state), ("kind = ?", kind),
                              ("id < ?", before)):
            if value is not None:
                where.append(clause)
                params.append(value)

        def op(tx: _Tx) -> Page:
            jobs = _select(tx, " AND ".join(where) + " ORDER BY id DESC LIMIT ?",
                           (*params, limit + 1))
            more = len(jobs) > limit
            return Page(jobs[:limit], jobs[limit - 1].id if more else None)

        return await self._call(op, write=False)

    async def claim(
        self, worker: str, slots: int, limits: Limits, lease_s: float, kinds: list[str]
    ) -> list[Job]:
        def op(tx: _Tx) -> list[Job]:
            running = Running()
            for owner, kind, n, mem in tx.conn.execute(
                "SELECT owner, kind, count(*), coalesce(sum(memory_mb), 0) FROM jobs "
                "WHERE state = 'running' GROUP BY owner, kind"
            ):
                running.add(owner, kind, mem, n)
            room = free_slots(limits, running, slots)
            admitted: list[Job] = []
            seen: set[str] = set()
            # Admission reads a few columns of the first candidates; when limits filled up
            # on the way (a user or kind reached its cap), it reads on past them.
            for _ in range(_CLAIM_ROUNDS):
                want = room - len(admitted)
                owners, full_kinds = blocked(limits, running)
                open_kinds = [k for k in kinds if k not in full_kinds]
                if want <= 0 or not open_kinds:
                    break
                candidates = [j for j in _candidates(tx, open_kinds, owners, limits, running,
                                                     want * 2 + 8) if j.id not in seen]
                if not candidates:
                    break
                seen.update(j.id for j in candidates)
                admitted += admit(candidates, limits, running, want)
            ids = [j.id for j in admitted]
            chosen = sorted(_select(tx, f"id IN ({_placeholders(ids)})", tuple(ids)),
                            key=lambda j: j.dispatch_key)
            for job in chosen:
                tx.move(job, State.RUNNING, attempt=job.attempt + 1, started_at=tx.now,
                        finished_at=None, worker=worker, lease_token=job.lease_token + 1,
                        lease_expires_at=tx.now + lease_s, progress=None, message=None,
                        error=None, result=None, cancel_requested=False, pid=None)
            return chosen

        return await self._call(op)

    async def renew(self, worker: str, leases: dict[str, int], lease_s: float) -> set[str]:
        def op(tx: _Tx) -> set[str]:
            stop = set(leases)
            tx.conn.executemany(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_token = ? "
                "AND state = 'running'",
                [(tx.now + lease_s, job_id, token) for job_id, token in leases.items()],
            )
            for job_id, token, state, cancel in tx.conn.execute(
                "SELECT id, lease_token, state, cancel_requested FROM jobs "
                f"WHERE id IN ({_placeholders(leases)})", list(leases)
            ):
                if state == "running" and token == leases[job_id] and not cancel:
                    stop.discard(job_id)
            return stop

        if not leases:
            return set()
        return await self._call(op)

    async def set_pid(self, job_id: str, token: int, pid: int | None) -> None:
        def op(tx: _Tx) -> None:
            tx.conn.execute("UPDATE jobs SET pid = ? WHERE id = ? AND lease_token = ?",
                            (pid, job_id, token))

        await self._call(op)

    async def finish(self, job_id: str, token: int, outcome: Outcome) -> Job | None:
        def op(tx: _Tx) -> Job | None:
            rows = _select(tx, "id = ?", (job_id,))
            if not rows or rows[0].state is not State.RUNNING or rows[0].lease_token != token:
                return None  # the lease moved on: somebody else owns this job now
            job = rows[0]
            common = {"lease_expires_at": None, "pid": None, "error": outcome.error,
                      "message": outcome.message, "peak_memory_mb": outcome.peak_memory_mb}
            if outcome.state is State.QUEUED:
                assert outcome.retry_at is not None
                return tx.move(job, State.QUEUED, vt=_owner_vt(tx, job.owner, job.priority),
                               run_at=outcome.retry_at, worker=None,
                               attempt=job.attempt - 1 if outcome.hand_back else job.attempt,
                               lease_token=job.lease_token + 1, **common)
            return tx.move(job, outcome.state, finished_at=tx.now, result=outcome.result,
                           outputs=outcome.outputs, cancel_requested=False,
                           progress=100.0 if outcome.state is State.COMPLETED else job.progress,
                           **common)

        return await self._call(op)

    async def progress(
        self, job_id: str, token: int, percent: float | None, message: str | None
    ) -> None:
        def op(tx: _Tx) -> None:
            cur = tx.conn.execute(
                "UPDATE jobs SET progress = coalesce(?, progress), message = coalesce(?, message)"
                " WHERE id = ? AND lease_token = ? AND state = 'running' RETURNING owner",
                (percent, message, job_id, token),
            )
            row = cur.fetchone()
            if row is not None:
                tx.emit("job.progress", Job(job_id, "", row[0], {}),
                        {"progress": percent, "message": message})

        await self._call(op)

    async def append_logs(self, job_id: str, lines: list[str], cap: int) -> None:
        def op(tx: _Tx) -> None:
            row = tx.conn.execute("SELECT log_count, owner FROM jobs WHERE id = ?",
                                  (job_id,)).fetchone()
            if row is None:
                return
            count, owner = row
            keep = lines[: max(0, cap - count)]
            tx.conn.executemany("INSERT INTO logs (job_id, n, line) VALUES (?, ?, ?)",
                                [(job_id, count + i + 1, line) for i, line in enumerate(keep)])
            tx.conn.execute("UPDATE jobs SET log_count = log_count + ? WHERE id = ?",
                            (len(lines), job_id))
            if keep:
                tx.emit("job.log", Job(job_id, "", owner, {}),
                        {"first": count + 1, "lines": keep})

        await self._call(op)

    async def logs(self, job_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        def op(tx: _Tx) -> list[tuple[int, str]]:
            rows = tx.conn.execute(
                "SELECT n, line FROM logs WHERE job_id = ? AND n > ? ORDER BY n LIMIT ?",
                (job_id, after, limit),
            ).fetchall()
            out = [(int(n), str(line)) for n, line in rows]
            if len(out) < limit:
                total = tx.conn.execute("SELECT log_count FROM jobs WHERE id = ?",
                                        (job_id,)).fetchone()
                kept = tx.conn.execute("SELECT coalesce(max(n), 0) FROM logs WHERE job_id = ?",
                                       (job_id,)).fetchone()[0]
                if total and total[0] > kept and after <= kept:
                    out.append((kept + 1, f"[jobgate] {total[0] - kept} more lines not kept "
                                          "(worker.log_max_lines)"))
            return out

        return await self._call(op, write=False)

    async def cancel(self, job_id: str) -> Job:
        def op(tx: _Tx) -> Job:
            job = _one(tx, job_id)
            if job.state is State.QUEUED:
                return tx.move(job, State.CANCELLED, finished_at=tx.now, message="cancelled")
            if job.state is State.RUNNING:
                if not job.cancel_requested:
                    job.cancel_requested = True
                    job.message = "cancelling"
                    tx.conn.execute(
                        "UPDATE jobs SET cancel_requested = 1, message = ? WHERE id = ?",
                        (job.message, job.id))
                    tx.emit("job.progress", job, {"progress": job.progress,
                                                  "message": job.message,
                                                  "cancel_requested": True})
                return job
            raise IllegalMove(job.id, job.state, State.CANCELLED)

        return await self._call(op)

    async def retry(self, job_id: str) -> Job:
        def op(tx: _Tx) -> Job:
            job = _one(tx, job_id)
            if job.state not in (State.FAILED, State.CANCELLED):
                # running→queued is the worker's move (a retry after failure), not a user's
                raise IllegalMove(job.id, job.state, State.QUEUED)
            return tx.move(job, State.QUEUED, vt=_owner_vt(tx, job.owner, job.priority),
                           run_at=tx.now, attempt=0, finished_at=None, started_at=None, error=None,
                           result=None, progress=None, message="retried by hand", worker=None,
                           cancel_requested=False, lease_expires_at=None)

        return await self._call(op)

    async def delete(self, job_id: str) -> Job:
        def op(tx: _Tx) -> Job:
            job = _one(tx, job_id)
            if job.state not in FINAL:
                raise IllegalMove(job.id, job.state, job.state)
            _delete(tx, [job_id])
            return job

        return await self._call(op)

    async def recover(self, lost_workers: Collection[str] = ()) -> list[Job]:
        lost = list(lost_workers)

        def op(tx: _Tx) -> list[Job]:
            out = []
            for job in _select(tx, "state = 'running' AND (lease_expires_at < ? OR worker IN "
                               f"({_placeholders(lost)}))", (tx.now, *lost)):
                pid, worker = job.pid, job.worker
                common: dict[str, Any] = {"lease_expires_at": None, "pid": None,
                                          "lease_token": job.lease_token + 1}
                if job.cancel_requested:
                    tx.move(job, State.CANCELLED, finished_at=tx.now,
                            message="cancelled (worker lost)", **common)
                elif job.attempt < job.max_attempts:
                    tx.move(job, State.QUEUED, vt=_owner_vt(tx, job.owner, job.priority),
                            run_at=tx.now, worker=None,
                            message="recovered after its worker was lost", **common)
                else:
                    tx.move(job, State.FAILED, finished_at=tx.now, error="worker lost",
                            message="worker lost", **common)
                # so the caller can reap what the lost worker left running
                job.pid, job.worker = pid, worker
                out.append(job)
            return out

        return await self._call(op)

    async def expire_queued(self, start_timeout_s: float) -> list[Job]:
        def op(tx: _Tx) -> list[Job]:
            jobs = _select(tx, "state = 'queued' AND run_at < ?", (tx.now - start_timeout_s,))
            minutes = f"{start_timeout_s / 60:g} min" if start_timeout_s >= 60 else \
                f"{start_timeout_s:g} s"
            for job in jobs:
                tx.move(job, State.FAILED, finished_at=tx.now,
                        error=f"not started within {minutes} (limits.start_timeout)",
                        message="start timeout")
            return jobs

        return await self._call(op)

    async def finished_before(
        self, ts: float, owner: str | None = None, keep_per_user: int | None = None
    ) -> list[str]:
        def op(tx: _Tx) -> list[str]:
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
        def op(tx: _Tx) -> int:
            return _delete(tx, job_ids)

        return await self._call(op) if job_ids else 0

    # --- the queue ----------------------------------------------------------------------
    async def queued_keys(self) -> list[tuple[DispatchKey, float]]:
        def op(tx: _Tx) -> list[tuple[DispatchKey, float]]:
            return [((-p, vt, i), run_at) for p, vt, i, run_at in tx.conn.execute(
                "SELECT priority, vt, id, run_at FROM jobs WHERE state = 'queued'")]

        return await self._call(op, write=False)

    async def next_run_at(self) -> float | None:
        def op(tx: _Tx) -> float | None:
            value = tx.conn.execute(
                "SELECT min(run_at) FROM jobs WHERE state = 'queued'").fetchone()[0]
            return None if value is None else float(value)

        return await self._call(op, write=False)

    async def stats(self) -> Stats:
        def op(tx: _Tx) -> Stats:
            counts = {s.value: 0 for s in State}
            counts.update(dict(tx.conn.execute(
                "SELECT state, count(*) FROM jobs GROUP BY state").fetchall()))
            reserved = tx.conn.execute("SELECT coalesce(sum(memory_mb), 0) FROM jobs "
                                       "WHERE state = 'running'").fetchone()[0]
            last_min = tx.conn.execute("SELECT count(*) FROM jobs WHERE finished_at >= ? "
                                       "AND state = 'completed'", (tx.now - 60,)).fetchone()[0]
            done, ok, avg = tx.conn.execute(
                "SELECT count(*), sum(state = 'completed'), "
                "avg(CASE WHEN state = 'completed' THEN finished_at - started_at END) "
                "FROM jobs WHERE finished_at >= ?", (tx.now - 3600,)).fetchone()
            return Stats(counts, reserved, last_min, avg, (ok / done) if done else None)

        return await self._call(op, write=False)

    async def running_jobs(self, worker: str | None = None) -> list[Job]:
        def op(tx: _Tx) -> list[Job]:
            return _select(tx, "state = 'running' AND (? IS NULL OR worker = ?)",
                           (worker, worker))

        return await self._call(op, write=False)

    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        def op(tx: _Tx) -> list[Event]:
            return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in tx.conn.execute(
                "SELECT seq, type, ts, job_id, owner, data FROM events WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (seq, limit))]

        return await self._call(op, write=False)

    async def prune_events(self, before_ts: float) -> int:
        def op(tx: _Tx) -> int:
            return tx.conn.execute("DELETE FROM events WHERE ts < ?", (before_ts,)).rowcount

        return await self._call(op)

    # --- users --------------------------------------------------------------------------
    async def add_user(self, name: str, password_hash: str | None, admin: bool) -> User:
        def op(tx: _Tx) -> User:
            try:
                tx.conn.execute("INSERT INTO users (name, password_hash, admin, created_at) "
                                "VALUES (?, ?, ?, ?)", (name, password_hash, int(admin), tx.now))
            except sqlite3.IntegrityError:
                raise Conflict(f"user {name} already exists") from None
            return User(name, admin, password_hash)

        return await self._call(op)

    async def get_user(self, name: str) -> User | None:
        def op(tx: _Tx) -> User | None:
            row = tx.conn.execute("SELECT name, admin, password_hash FROM users WHERE name = ?",
                                  (name,)).fetchone()
            return User(row[0], bool(row[1]), row[2]) if row else None

        return await self._call(op, write=False)

    async def add_token(self, user: str, token_hash: str) -> None:
        def op(tx: _Tx) -> None:
            if tx.conn.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone() is None:
                raise NotFound(f"no user {user}")
            tx.conn.execute("INSERT INTO tokens (hash, user, created_at) VALUES (?, ?, ?)",
                            (token_hash, user, tx.now))

        await self._call(op)

    async def user_for_token(self, token_hash: str) -> User | None:
        def op(tx: _Tx) -> User | None:
            row = tx.conn.execute(
                "SELECT u.name, u.admin FROM tokens t JOIN users u ON u.name = t.user "
                "WHERE t.hash = ?", (token_hash,)).fetchone()
            return User(row[0], bool(row[1])) if row else None

        return await self._call(op, write=False)


def _candidates(tx: _Tx, kinds: list[str], owners: set[str], limits: Limits,
                running: Running, limit: int) -> list[Job]:
    """The first ready queued jobs in dispatch order that no limit excludes outright."""
    # `+` keeps SQLite off the run_at and kind indexes: walking jobs_dispatch in order and
    # stopping at LIMIT is O(limit); filtering by run_at first would sort the whole queue.
    where = f"state = 'queued' AND +run_at <= ? AND +kind IN ({_placeholders(kinds)})"
    params: list[Any] = [tx.now, *kinds]
    if owners:
        where += f" AND owner NOT IN ({_placeholders(owners)})"
        params.extend(owners)
    if limits.memory_budget_mb is not None:
        where += " AND memory_mb <= ?"
        params.append(limits.memory_budget_mb - running.memory_mb)
    return [
        Job(id=i, kind=k, owner=o, args={}, priority=p, vt=vt, memory_mb=m)
        for i, k, o, p, vt, m in tx.conn.execute(
            f"SELECT id, kind, owner, priority, vt, memory_mb FROM jobs WHERE {where} "
            "ORDER BY priority DESC, vt, id LIMIT ?", (*params, limit))
    ]


def _owner_vt(tx: _Tx, owner: str, priority: int) -> int:
    """The fair turn of a job of `owner` entering the queue at `priority` (scheduler.py)."""
    head = tx.conn.execute("SELECT min(vt) FROM jobs WHERE state = 'queued' AND priority = ?",
                           (priority,)).fetchone()[0]
    last = tx.conn.execute(
        "SELECT max(vt) FROM jobs WHERE owner = ? AND state IN ('queued', 'running') "
        "AND priority = ?", (owner, priority)).fetchone()[0]
    return next_vt(head, last)


def _delete(tx: _Tx, job_ids: list[str]) -> int:
    deleted = 0
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start:start + 500]
        marks = _placeholders(chunk)
        tx.conn.execute(f"DELETE FROM logs WHERE job_id IN ({marks})", chunk)
        deleted += tx.conn.execute(
            f"DELETE FROM jobs WHERE id IN ({marks}) AND state IN ({_placeholders(_FINAL)})",
            [*chunk, *_FINAL]).rowcount
    return deleted


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("jobgate.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith("sqlite_") and name.endswith(".sql"):
            found.append((int(name.split("_")[1]), entry.read_text()))
    return sorted(found)


def latest_version() -> int:
    """The schema version this jobgate writes."""
    return _migrations()[-1][0]


class SchemaTooNew(RuntimeError):
    pass


def _migrate(conn: sqlite3.Connection) -> None:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    steps = _migrations()
    if current > steps[-1][0]:
        raise SchemaTooNew(
            f"the database has schema version {current}, newer than this jobgate "
            f"({steps[-1][0]}): upgrade jobgate"
        )
    for version, sql in steps:
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
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
