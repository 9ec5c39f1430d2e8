"""PostgreSQL's schedule operations (`Store.sync_schedules`, `fire_schedule`, …): functions
of an open transaction, which `PostgresStore` runs. What a firing becomes is decided in
`schedules.py`; a firing's job is submitted by `submit_many`, the same code as any submit,
in the transaction that records it."""

from __future__ import annotations

import dataclasses

from jobgate.schedules import Firing, outcome_of
from jobgate.store.base import Quota, ScheduleState
from jobgate.store.postgres_conn import Tx
from jobgate.store.postgres_grouped import submit_many
from jobgate.store.rows import FIRING_COLUMNS, firing_from_row, firing_values

_FIRING_MARKS = ", ".join("%s" for _ in FIRING_COLUMNS.split(","))


async def sync(tx: Tx, starts: list[tuple[str, str, float]]) -> None:
    await tx.cur.executemany(
        "INSERT INTO schedules (name, spec, next_due, updated_at) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, next_due = excluded.next_due, "
        "updated_at = excluded.updated_at WHERE schedules.spec <> excluded.spec",
        [(name, spec, next_due, tx.now) for name, spec, next_due in starts])


async def states(tx: Tx) -> dict[str, ScheduleState]:
    # Each schedule's last firing is one walk down the primary key (name, due_at), however
    # many firings are kept.
    columns = ", ".join(f"f.{c.strip()}" for c in FIRING_COLUMNS.split(","))
    out = {}
    for name, spec, next_due, *last in await tx.rows(
            f"SELECT s.name, s.spec, s.next_due, {columns} FROM schedules s "
            "LEFT JOIN LATERAL (SELECT * FROM schedule_firings WHERE name = s.name "
            "ORDER BY due_at DESC LIMIT 1) f ON TRUE ORDER BY s.name"):
        out[name] = ScheduleState(name, spec, float(next_due),
                                  None if last[0] is None else firing_from_row(last))
    return out


async def advance(tx: Tx, name: str, expected_due: float, next_due: float) -> bool:
    """Move the schedule's next due time on, if it is still `expected_due`. Of two nodes
    that read the same due time, the second waits for the first's row lock, then finds the
    row changed and moves nothing (READ COMMITTED re-reads the row it waited for)."""
    await tx.execute(
        "UPDATE schedules SET next_due = %s, updated_at = %s WHERE name = %s AND next_due = %s",
        (next_due, tx.now, name, expected_due))
    return bool(tx.cur.rowcount)


async def record(tx: Tx, firings: list[Firing], quota: Quota) -> list[Firing]:
    """Submit the firings' jobs and record the firings (the caller holds the turns lock,
    which `submit_many` needs)."""
    submitted = iter(await submit_many(tx, [(f.job, quota) for f in firings
                                            if f.job is not None]))
    out = []
    for firing in firings:
        recorded = outcome_of(dataclasses.replace(firing, fired_at=tx.now),
                              next(submitted) if firing.job is not None else None)
        await tx.execute(f"INSERT INTO schedule_firings ({FIRING_COLUMNS}) "
                         f"VALUES ({_FIRING_MARKS})", firing_values(recorded))
        tx.pending.append((recorded.event_type, None, recorded.owner, recorded.event_data()))
        out.append(recorded)
    return out


async def history(tx: Tx, name: str, limit: int) -> list[Firing]:
    return [firing_from_row(row) for row in await tx.rows(
        f"SELECT {FIRING_COLUMNS} FROM schedule_firings WHERE name = %s "
        "ORDER BY due_at DESC LIMIT %s", (name, limit))]


async def prune(tx: Tx, before_ts: float) -> int:
    await tx.execute("DELETE FROM schedule_firings WHERE fired_at < %s", (before_ts,))
    return tx.cur.rowcount
