"""SQLite's operator controls (`Store.controls`, `change_controls`, and the read of every
claim): functions of an open transaction. What a change does is decided in controls.py;
the write lock (`BEGIN IMMEDIATE`) orders changes and claims, so a claim sees every change
committed before it."""

from __future__ import annotations

from jobgate.controls import Change, Controls, written
from jobgate.store.rows import from_json, to_json
from jobgate.store.sqlite_conn import Tx


def read(tx: Tx) -> Controls:
    return Controls.from_rows((name, from_json(value), version) for name, value, version in
                              tx.conn.execute("SELECT name, value, version FROM controls"))


def change(tx: Tx, what: Change, by: str) -> Controls:
    """Apply `what` and emit its event; nothing (no write, no event) if it changes nothing."""
    before = read(tx)
    plan = written(before, what, by)
    if plan is None:
        return before
    tx.conn.executemany(
        "INSERT INTO controls (name, value, version, updated_at, updated_by) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
        "version = excluded.version, updated_at = excluded.updated_at, "
        "updated_by = excluded.updated_by",
        [(name, to_json(value), plan.stored.version, tx.now, by)
         for name, value in plan.rows])
    tx.pending.append((plan.event, None, None, plan.data))
    return plan.stored
