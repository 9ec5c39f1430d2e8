"""PostgreSQL's outbox of deliveries (webhooks and notifications): written with the final
states that make them (`enqueue`, called by `Tx.apply_all`), claimed `FOR UPDATE SKIP
LOCKED` so two nodes never make the same attempt, settled after each attempt under the
row's lock. What a final state or an attempt makes of a delivery is decided in
`deliveries.py`."""

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
from jobgate.store.postgres_conn import Tx

_ROW_MARKS = ", ".join("%s" for _ in DELIVERY_COLUMNS.split(","))
_ATTEMPT_MARKS = ", ".join("%s" for _ in ATTEMPT_COLUMNS.split(","))
_D_COLUMNS = ", ".join(f"d.{c.strip()}" for c in DELIVERY_COLUMNS.split(","))


async def enqueue(tx: Tx, moves: list[Move], rules: Rules) -> None:
    """The outbox rows the final states among `moves` make, in their transaction."""
    ended = [m.job for m in moves if m.job.state in FINAL]
    if not ended:
        return
    webhooks = {str(r[0]): str(r[1]) for r in await tx.rows(
        "SELECT job_id, url FROM job_webhooks WHERE job_id = ANY(%s)",
        ([j.id for j in ended],))}
    plan = deliveries.planned(rules, ended, webhooks)
    if not plan:
        return
    jobs = {j.id: j for j in await tx.select("id = ANY(%s)", (sorted({j.id for j, _ in plan}),))}
    await tx.cur.executemany(
        f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES ({_ROW_MARKS})",
        [delivery_values(d) for d in deliveries.outbox_rows(plan, jobs, tx.now)])


async def add_webhook(tx: Tx, job_id: str, url: str) -> None:
    await tx.execute("INSERT INTO job_webhooks (job_id, url, created_at) VALUES (%s, %s, %s) "
                     "ON CONFLICT (job_id) DO UPDATE SET url = excluded.url",
                     (job_id, url, tx.now))


async def remove_webhook(tx: Tx, job_id: str) -> None:
    await tx.execute("DELETE FROM job_webhooks WHERE job_id = %s", (job_id,))


async def claim(tx: Tx, worker: str, limit: int, lease_s: float) -> list[Delivery]:
    """Take up to `limit` due deliveries for one attempt each: the attempt is counted and
    leased now; rows another node is claiming are skipped, not waited for."""
    rows = await tx.rows(
        "UPDATE deliveries d SET attempts = d.attempts + 1, lease_expires_at = %s, "
        "worker = %s FROM (SELECT id FROM deliveries WHERE state = 'pending' AND due_at <= %s "
        "AND (lease_expires_at IS NULL OR lease_expires_at < %s) ORDER BY due_at LIMIT %s "
        f"FOR UPDATE SKIP LOCKED) c WHERE d.id = c.id RETURNING {_D_COLUMNS}",
        (tx.now + lease_s, worker, tx.now, tx.now, limit))
    return sorted((delivery_from_row(r) for r in rows), key=lambda d: (d.due_at, d.id))


async def record(tx: Tx, delivery_id: str, attempt: Attempt, rules: Rules, permanent: bool
                 ) -> Delivery | None:
    """Record an attempt and settle its delivery, if that attempt still holds it."""
    await tx.execute(f"INSERT INTO delivery_attempts ({ATTEMPT_COLUMNS}) VALUES "
                     f"({_ATTEMPT_MARKS}) ON CONFLICT DO NOTHING",
                     attempt_values(delivery_id, attempt))
    row = await tx.row(f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = %s FOR UPDATE",
                       (delivery_id,))
    current = None if row is None else delivery_from_row(row)
    if current is None or not deliveries.holds(current, attempt.n):
        return None
    settled = deliveries.after_attempt(rules, current, attempt, tx.now, permanent)
    names, values = settled_values(settled.fields)
    row = await tx.row(f"UPDATE deliveries SET {', '.join(f'{n} = %s' for n in names)} "
                       f"WHERE id = %s RETURNING {DELIVERY_COLUMNS}", (*values, delivery_id))
    tx.emit(settled.event, Job(current.job_id, "", current.owner, {}), settled.data)
    assert row is not None
    return delivery_from_row(row)


async def of_job(tx: Tx, job_id: str) -> list[Delivery]:
    """A job's deliveries, oldest first, each with its attempts."""
    rows = await tx.rows(f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE job_id = %s "
                         "ORDER BY id", (job_id,))
    tries: dict[str, list[Attempt]] = {}
    for r in await tx.rows(
            f"SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts WHERE delivery_id IN "
            "(SELECT id FROM deliveries WHERE job_id = %s) ORDER BY delivery_id, n", (job_id,)):
        tries.setdefault(r[0], []).append(attempt_from_row(r))
    return [delivery_from_row(r, tries.get(r[0], ())) for r in rows]


async def forget_deleted(tx: Tx, job_ids: list[str]) -> None:
    """Drop the deliveries and webhooks of jobs of `job_ids` that are gone (deleted)."""
    gone = "job_id = ANY(%s) AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = job_id)"
    await tx.execute("DELETE FROM delivery_attempts WHERE delivery_id IN "
                     f"(SELECT id FROM deliveries WHERE {gone})", (job_ids,))
    await tx.execute(f"DELETE FROM deliveries WHERE {gone}", (job_ids,))
    await tx.execute(f"DELETE FROM job_webhooks WHERE {gone}", (job_ids,))
