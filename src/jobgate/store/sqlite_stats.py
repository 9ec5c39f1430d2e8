"""SQLite's reads for the queue's statistics (`Store.recent_spans`, `Store.owner_counts`):
functions of an open transaction, which `SqliteStore` hands to its connection thread."""

from __future__ import annotations

from jobgate.store.base import Span
from jobgate.store.sqlite_conn import Tx


def recent_spans(tx: Tx, since: float, limit: int) -> list[Span]:
    # A walk down the partial index on finished_at, newest first, stopped by the LIMIT.
    return [Span(str(kind), float(wait_s), float(run_s), int(attempt))
            for kind, wait_s, run_s, attempt in tx.conn.execute(
                "SELECT kind, started_at - created_at, finished_at - started_at, attempt "
                "FROM jobs WHERE finished_at IS NOT NULL AND finished_at >= ? "
                "AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
                (since, limit))]


def owner_counts(tx: Tx) -> dict[str, tuple[int, int]]:
    # SQLite reads it from the covering index jobs_owner_state (owner, state, …), in owner
    # order: no row of the table itself.
    counts: dict[str, tuple[int, int]] = {}
    for owner, queued, running in tx.conn.execute(
            "SELECT owner, sum(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), "
            "sum(CASE WHEN state = 'running' THEN 1 ELSE 0 END) FROM jobs "
            "WHERE state IN ('queued', 'running') GROUP BY owner ORDER BY owner"):
        counts[str(owner)] = (int(queued), int(running))
    return counts
