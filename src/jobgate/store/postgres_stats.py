"""PostgreSQL's reads for the queue's statistics (`Store.recent_spans`): functions of an
open transaction, which `PostgresStore` runs."""

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
