"""SQLite's schedule operations (`Store.sync_schedules`, `fire_schedule`, …): functions of
an open transaction, which `SqliteStore` hands to its connection thread. What a firing
becomes is decided in `schedules.py`; a firing's job is submitted by `submit_many`, the
same code as any submit, in the transaction that records it."""

from __future__ import annotations

import dataclasses

from jobgate.schedules import Firing, outcome_of
from jobgate.store.base import Quota, ScheduleState
from jobgate.store.rows import FIRING_COLUMNS, firing_from_row, firing_values
from jobgate.store.sqlite_conn import Tx, placeholders
from jobgate.store.sqlite_grouped import submit_many

_FIRING_MARKS = placeholders(FIRING_COLUMNS.split(","))


def sync(tx: Tx, starts: list[tuple[str, str, float]]) -> None:
    tx.conn.executemany(
        "INSERT INTO schedules (name, spec, next_due, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, next_due = excluded.next_due, "
        "updated_at = excluded.updated_at WHERE schedules.spec <> excluded.spec",
        [(name, spec, next_due, tx.now) for name, spec, next_due in starts])


def states(tx: Tx) -> dict[str, ScheduleState]:
    # Each schedule's last firing is one seek of the primary key (name, due_at), however
    # many firings are kept.
    columns = ", ".join(f"f.{c.strip()}" for c in FIRING_COLUMNS.split(","))
    out = {}
    for name, spec, next_due, *last in tx.conn.execute(
            f"SELECT s.name, s.spec, s.next_due, {columns} FROM schedules s "
            "LEFT JOIN schedule_firings f ON f.name = s.name AND f.due_at = "
            "(SELECT max(due_at) FROM schedule_firings WHERE name = s.name) ORDER BY s.name"):
        out[name] = ScheduleState(name, spec, float(next_due),
                                  None if last[0] is None else firing_from_row(last))
    return out


def fire(tx: Tx, name: str, expected_due: float, next_due: float, firings: list[Firing],
         quota: Quota) -> list[Firing] | None:
    # The write lock is held (BEGIN IMMEDIATE): of two nodes that read the same due time,
    # the second finds it moved on and writes nothing.
    moved = tx.conn.execute(
        "UPDATE schedules SET next_due = ?, updated_at = ? WHERE name = ? AND next_due = ?",
        (next_due, tx.now, name, expected_due)).rowcount
    if not moved:
        return None
    submitted = iter(submit_many(tx, [(f.job, quota) for f in firings if f.job is not None]))
    out = []
    for firing in firings:
        recorded = outcome_of(dataclasses.replace(firing, fired_at=tx.now),
                              next(submitted) if firing.job is not None else None)
        tx.conn.execute(f"INSERT INTO schedule_firings ({FIRING_COLUMNS}) "
                        f"VALUES ({_FIRING_MARKS})", firing_values(recorded))
        tx.pending.append((recorded.event_type, None, recorded.owner, recorded.event_data()))
        out.append(recorded)
    return out


def history(tx: Tx, name: str, limit: int) -> list[Firing]:
    return [firing_from_row(row) for row in tx.conn.execute(
        f"SELECT {FIRING_COLUMNS} FROM schedule_firings WHERE name = ? "
        "ORDER BY due_at DESC LIMIT ?", (name, limit))]


def prune(tx: Tx, before_ts: float) -> int:
    return tx.conn.execute("DELETE FROM schedule_firings WHERE fired_at < ?",
                           (before_ts,)).rowcount
