"""PostgreSQL's reads for the queue's statistics (`Store.recent_spans`,
`Store.owner_counts`): functions of an open transaction, which `PostgresStore` runs."""

from __future__ import annotations

from jobgate.store.base import Span
from jobgate.store.postgres_conn import Tx


async def recent_spans(tx: Tx, since: float, limit: int) -> list[Span]:
    # A walk down the partial index on finished_at, newest first, stopped by the LIMIT.
    return [Span(str(kind), float(wait_s), float(run_s), int(attempt))
            for kind, wait_s, run_s, attempt in await tx.rows(
                "SELECT kind, started_at - created_at, finished_at - started_at, attempt "
                "FROM jobs WHERE finished_at IS NOT NULL AND finished_at >= %s "
                "AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT %s",
                (since, limit))]


async def owner_counts(tx: Tx) -> dict[str, tuple[int, int]]:
    # The index on (owner, state, …) covers it; the planner may prefer a scan of a small
    # table.
    counts: dict[str, tuple[int, int]] = {}
    for owner, queued, running in await tx.rows(
            "SELECT owner, sum(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), "
            "sum(CASE WHEN state = 'running' THEN 1 ELSE 0 END) FROM jobs "
            "WHERE state IN ('queued', 'running') GROUP BY owner ORDER BY owner"):
        counts[str(owner)] = (int(queued), int(running))
    return counts
