"""PostgreSQL's side of a job's log (`Store.append_logs`, `replace_logs`, `logs`,
`log_size`): functions of an open transaction. What is kept of a capped log, and where the
gap line stands, is `moves`' rule; this only runs its statements."""

from __future__ import annotations

from collections.abc import Mapping

from jobgate import moves
from jobgate.model import EventType, Job
from jobgate.store.base import LogSize
from jobgate.store.postgres_conn import Tx

_SIZE = "SELECT log_count, log_dropped_first, log_dropped_last, owner FROM jobs WHERE id = %s"


def _gap(first: int | None, last: int | None) -> tuple[int, int] | None:
    return None if first is None or last is None else (int(first), int(last))


async def append(tx: Tx, job_id: str, lines: list[str], cap: int) -> int | None:
    row = await tx.row(_SIZE + " FOR UPDATE", (job_id,))
    if row is None:
        return None
    count, owner = int(row[0]), row[3]
    kept = moves.kept_log(lines, count, cap, _gap(row[1], row[2]))
    if kept.delete is not None:  # one range of the primary key
        await tx.cur.execute("DELETE FROM logs WHERE job_id = %s AND n BETWEEN %s AND %s",
                             (job_id, *kept.delete))
    rows = [(job_id, first + i, line) for first, run in kept.runs for i, line in enumerate(run)]
    if rows:
        await tx.cur.executemany("INSERT INTO logs (job_id, n, line) VALUES (%s, %s, %s)", rows)
    first_dropped, last_dropped = kept.dropped or (None, None)
    await tx.cur.execute("UPDATE jobs SET log_count = log_count + %s, log_dropped_first = %s, "
                         "log_dropped_last = %s WHERE id = %s",
                         (len(lines), first_dropped, last_dropped, job_id))
    job = Job(job_id, "", owner, {})
    for first, run in kept.runs:
        tx.emit(EventType.LOG, job, moves.log_data(first, run))
    return count + 1


async def replace(tx: Tx, job_id: str, lines: Mapping[int, str]) -> None:
    owner = await tx.value("SELECT owner FROM jobs WHERE id = %s", (job_id,))
    if owner is None:
        return
    job = Job(job_id, "", owner, {})
    for n, line in sorted(lines.items()):
        if await tx.row("UPDATE logs SET line = %s WHERE job_id = %s AND n = %s RETURNING n",
                        (line, job_id, n)) is not None:
            tx.emit(EventType.LOG, job, moves.log_data(n, [line], replace=True))


async def read(tx: Tx, job_id: str, after: int, limit: int) -> list[tuple[int, str]]:
    rows = await tx.rows(
        "SELECT n, line FROM logs WHERE job_id = %s AND n > %s ORDER BY n LIMIT %s",
        (job_id, after, limit))
    out = [(int(n), str(line)) for n, line in rows]
    size = await size_of(tx, job_id)
    return moves.with_gap_line(out, after, limit, size.dropped if size else None)


async def size_of(tx: Tx, job_id: str) -> LogSize | None:
    row = await tx.row(_SIZE, (job_id,))
    return None if row is None else LogSize(int(row[0]), _gap(row[1], row[2]))
