"""PostgreSQL's operator controls (`Store.controls`, `change_controls`, and the read of
every claim): functions of an open transaction. What a change does is decided in
controls.py. A change takes the claim lock (as every claim does, before it reads the
controls): changes are made one at a time, and a claim either ends before a change or
reads it, so no claim admits anything under controls a committed change replaced."""

from __future__ import annotations

from jobgate.controls import Change, Controls, written
from jobgate.store.postgres_conn import Tx
from jobgate.store.rows import from_json, to_json


async def read(tx: Tx) -> Controls:
    return Controls.from_rows((name, from_json(value), version) for name, value, version in
                              await tx.rows("SELECT name, value, version FROM controls"))


async def change(tx: Tx, what: Change, by: str, claim_lock: int) -> Controls:
    """Apply `what` and emit its event; nothing (no write, no event) if it changes nothing."""
    await tx.lock(claim_lock)
    before = await read(tx)
    plan = written(before, what, by)
    if plan is None:
        return before
    await tx.cur.executemany(
        "INSERT INTO controls (name, value, version, updated_at, updated_by) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
        "version = excluded.version, updated_at = excluded.updated_at, "
        "updated_by = excluded.updated_by",
        [(name, to_json(value), plan.stored.version, tx.now, by)
         for name, value in plan.rows])
    tx.pending.append((plan.event, None, None, plan.data))
    return plan.stored
