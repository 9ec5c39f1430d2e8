"""SQLite's outbox of deliveries (webhooks and notifications): written with the final
states that make them (`enqueue`, called by `Tx.apply_all`), claimed under the write lock
that every transaction here holds, settled after each attempt. What a final state or an
attempt makes of a delivery is decided in `deliveries.py`."""

from __future__ import annotations

from jobgate import deliveries
from jobgate.deliveries import Attempt, Delivery, Rules
from jobgate.model import FINAL, Job
from jobgate.moves import Move
from jobgate.store.delivery_rows import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    attempt_from_row,
    attempt_values,
    delivery_from_row,
    delivery_values,
    settled_values,
)
from jobgate.store.sqlite_conn import Tx, placeholders

_ROW_MARKS = placeholders(DELIVERY_COLUMNS.split(","))
_ATTEMPT_MARKS = placeholders(ATTEMPT_COLUMNS.split(","))


def enqueue(tx: Tx, moves: list[Move], rules: Rules) -> None:
    """The outbox rows the final states among `moves` make, in their transaction."""
    ended = [m.job for m in moves if m.job.state in FINAL]
    if not ended:
        return
    ids = [j.id for j in ended]
    webhooks: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        webhooks.update(tx.conn.execute(
            f"SELECT job_id, url FROM job_webhooks WHERE job_id IN ({placeholders(chunk)})",
            chunk).fetchall())
    plan = deliveries.planned(rules, ended, webhooks)
    if not plan:
        return
    wanted = sorted({job.id for job, _ in plan})
    jobs: dict[str, Job] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        jobs.update((j.id, j) for j in tx.select(f"id IN ({placeholders(chunk)})",
                                                 tuple(chunk)))
    tx.conn.executemany(f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES ({_ROW_MARKS})",
                        [delivery_values(d) for d in deliveries.outbox_rows(plan, jobs, tx.now)])


def add_webhook(tx: Tx, job_id: str, url: str) -> None:
    tx.conn.execute("INSERT INTO job_webhooks (job_id, url, created_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (job_id) DO UPDATE SET url = excluded.url", (job_id, url, tx.now))


def remove_webhook(tx: Tx, job_id: str) -> None:
    tx.conn.execute("DELETE FROM job_webhooks WHERE job_id = ?", (job_id,))


def claim(tx: Tx, worker: str, limit: int, lease_s: float) -> list[Delivery]:
    """Take up to `limit` due deliveries for one attempt each: the attempt is counted and
    leased now, so no other node makes it."""
    rows = tx.conn.execute(
        f"UPDATE deliveries SET attempts = attempts + 1, lease_expires_at = ?, worker = ? "
        "WHERE id IN (SELECT id FROM deliveries WHERE state = 'pending' AND due_at <= ? "
        "AND (lease_expires_at IS NULL OR lease_expires_at < ?) ORDER BY due_at LIMIT ?) "
        f"RETURNING {DELIVERY_COLUMNS}",
        (tx.now + lease_s, worker, tx.now, tx.now, limit)).fetchall()
    return sorted((delivery_from_row(r) for r in rows), key=lambda d: (d.due_at, d.id))


def record(tx: Tx, delivery_id: str, attempt: Attempt, rules: Rules, permanent: bool
           ) -> Delivery | None:
    """Record an attempt and settle its delivery, if that attempt still holds it."""
    tx.conn.execute(f"INSERT INTO delivery_attempts ({ATTEMPT_COLUMNS}) VALUES "
                    f"({_ATTEMPT_MARKS}) ON CONFLICT DO NOTHING",
                    attempt_values(delivery_id, attempt))
    row = tx.conn.execute(f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?",
                          (delivery_id,)).fetchone()
    current = None if row is None else delivery_from_row(row)
    if current is None or not deliveries.holds(current, attempt.n):
        return None
    settled = deliveries.after_attempt(rules, current, attempt, tx.now, permanent)
    names, values = settled_values(settled.fields)
    tx.conn.execute(f"UPDATE deliveries SET {', '.join(f'{n} = ?' for n in names)} "
                    "WHERE id = ?", (*values, delivery_id))
    tx.emit(settled.event, Job(current.job_id, "", current.owner, {}), settled.data)
    row = tx.conn.execute(f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?",
                          (delivery_id,)).fetchone()
    return delivery_from_row(row)


def of_job(tx: Tx, job_id: str) -> list[Delivery]:
    """A job's deliveries, oldest first, each with its attempts."""
    rows = tx.conn.execute(f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE job_id = ? "
                           "ORDER BY id", (job_id,)).fetchall()
    tries: dict[str, list[Attempt]] = {}
    for r in tx.conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts WHERE delivery_id IN "
            "(SELECT id FROM deliveries WHERE job_id = ?) ORDER BY delivery_id, n", (job_id,)):
        tries.setdefault(r[0], []).append(attempt_from_row(r))
    return [delivery_from_row(r, tries.get(r[0], ())) for r in rows]


def forget_deleted(tx: Tx, job_ids: list[str]) -> None:
    """Drop the deliveries and webhooks of jobs of `job_ids` that are gone (deleted)."""
    marks = placeholders(job_ids)
    gone = f"job_id IN ({marks}) AND job_id NOT IN (SELECT id FROM jobs WHERE id IN ({marks}))"
    tx.conn.execute("DELETE FROM delivery_attempts WHERE delivery_id IN "
                    f"(SELECT id FROM deliveries WHERE {gone})", [*job_ids, *job_ids])
    tx.conn.execute(f"DELETE FROM deliveries WHERE {gone}", [*job_ids, *job_ids])
    tx.conn.execute(f"DELETE FROM job_webhooks WHERE {gone}", [*job_ids, *job_ids])
