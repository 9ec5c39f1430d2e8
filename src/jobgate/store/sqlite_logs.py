"""SQLite's side of a job's log (`Store.append_logs`, `replace_logs`, `logs`, `log_size`):
functions of an open transaction, which `SqliteStore` hands to its connection thread.
What is kept of a capped log, and where the gap line stands, is `moves`' rule; this only
runs its statements."""

from __future__ import annotations

from collections.abc import Mapping

from jobgate import moves
from jobgate.model import EventType, Job
from jobgate.store.base import LogSize
from jobgate.store.sqlite_conn import Tx

_SIZE = "SELECT log_count, log_dropped_first, log_dropped_last, owner FROM jobs WHERE id = ?"


def _gap(first: int | None, last: int | None) -> tuple[int, int] | None:
    return None if first is None or last is None else (int(first), int(last))


def append(tx: Tx, job_id: str, lines: list[str], cap: int) -> int | None:
    row = tx.conn.execute(_SIZE, (job_id,)).fetchone()
    if row is None:
        return None
    count, owner = int(row[0]), row[3]
    kept = moves.kept_log(lines, count, cap, _gap(row[1], row[2]))
    if kept.delete is not None:  # one range of the primary key
        tx.conn.execute("DELETE FROM logs WHERE job_id = ? AND n BETWEEN ? AND ?",
                        (job_id, *kept.delete))
    tx.conn.executemany("INSERT INTO logs (job_id, n, line) VALUES (?, ?, ?)",
                        [(job_id, first + i, line) for first, run in kept.runs
                         for i, line in enumerate(run)])
    first_dropped, last_dropped = kept.dropped or (None, None)
    tx.conn.execute("UPDATE jobs SET log_count = log_count + ?, log_dropped_first = ?, "
                    "log_dropped_last = ? WHERE id = ?",
                    (len(lines), first_dropped, last_dropped, job_id))
    job = Job(job_id, "", owner, {})
    for first, run in kept.runs:
        tx.emit(EventType.LOG, job, moves.log_data(first, run))
    return count + 1


def replace(tx: Tx, job_id: str, lines: Mapping[int, str]) -> None:
    owner = tx.conn.execute("SELECT owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if owner is None:
        return
    job = Job(job_id, "", owner[0], {})
    for n, line in sorted(lines.items()):
        if tx.conn.execute("UPDATE logs SET line = ? WHERE job_id = ? AND n = ? RETURNING n",
                           (line, job_id, n)).fetchone() is not None:
            tx.emit(EventType.LOG, job, moves.log_data(n, [line], replace=True))


def read(tx: Tx, job_id: str, after: int, limit: int) -> list[tuple[int, str]]:
    rows = tx.conn.execute(
        "SELECT n, line FROM logs WHERE job_id = ? AND n > ? ORDER BY n LIMIT ?",
        (job_id, after, limit)).fetchall()
    out = [(int(n), str(line)) for n, line in rows]
    size = size_of(tx, job_id)
    return moves.with_gap_line(out, after, limit, size.dropped if size else None)


def size_of(tx: Tx, job_id: str) -> LogSize | None:
    row = tx.conn.execute(_SIZE, (job_id,)).fetchone()
    return None if row is None else LogSize(int(row[0]), _gap(row[1], row[2]))
