"""The outbox's columns as Python values, for both backends (no SQL statements here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jobgate.deliveries import Attempt, Delivery
from jobgate.store.rows import from_json, to_json

#: The deliveries table's columns, in the order `delivery_from_row` and `delivery_values` use.
DELIVERY_COLUMNS = (
    "id, job_id, owner, channel, source, target, event, payload, state, attempts, "
    "created_at, due_at, lease_expires_at, worker, finished_at, last_status, "
    "last_response, last_error"
)
_NAMES = [c.strip() for c in DELIVERY_COLUMNS.split(",")]
ATTEMPT_COLUMNS = "delivery_id, n, started_at, duration_ms, status, response, error, worker"
#: What an attempt's result may change (`deliveries.after_attempt`'s fields).
SETTLED_COLUMNS = ("state", "attempts", "due_at", "lease_expires_at", "finished_at",
                   "last_status", "last_response", "last_error")


def delivery_from_row(row: Sequence[Any], tries: Sequence[Attempt] = ()) -> Delivery:
    """A delivery from a row of `DELIVERY_COLUMNS`."""
    values = dict(zip(_NAMES, row, strict=True))
    values["payload"] = from_json(values["payload"])
    return Delivery(**values, tries=tuple(tries))


def delivery_values(d: Delivery) -> tuple[Any, ...]:
    """A delivery as a row of `DELIVERY_COLUMNS`."""
    return (d.id, d.job_id, d.owner, d.channel, d.source, d.target, d.event,
            to_json(d.payload), d.state, d.attempts, d.created_at, d.due_at,
            d.lease_expires_at, d.worker, d.finished_at, d.last_status, d.last_response,
            d.last_error)


def attempt_from_row(row: Sequence[Any]) -> Attempt:
    """An attempt from a row of `ATTEMPT_COLUMNS` (its delivery's id first)."""
    return Attempt(*row[1:])


def attempt_values(delivery_id: str, a: Attempt) -> tuple[Any, ...]:
    return (delivery_id, a.n, a.started_at, a.duration_ms, a.status, a.response, a.error,
            a.worker)


def settled_values(fields: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """The columns and values an attempt's result writes (only the known columns)."""
    names = [c for c in SETTLED_COLUMNS if c in fields]
    return names, [fields[c] for c in names]
