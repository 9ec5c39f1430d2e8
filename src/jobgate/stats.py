"""The queue's statistics past the contract's first fields, for `GET /api/queue` and
`jobgate stats`: throughput over the last 1, 15 and 60 minutes, run time and queue wait
percentiles and retries per kind, totals since this process started and in the database,
its uptime, and the limits in force.

Kept cheap for dashboards that poll the route: the throughput windows and the database's
totals come with `Store.stats` (read by the route anyway), the totals since start from the
events this process counts (`tally.py`, no read at all), and the per-kind numbers from one
bounded read (`Store.recent_spans`: the last `WINDOW_JOBS` finished jobs of the last
`WINDOW_S`), kept for `CACHE_S` per process. Every number is exact; the CLI rounds them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any
from weakref import WeakKeyDictionary

from jobgate.model import State, iso
from jobgate.queue import JobQueue, percentile
from jobgate.store.base import Span, Stats

#: The per-kind numbers are over the jobs that finished in this window (seconds)...
WINDOW_S = 86400.0
#: ... at most this many of them, the most recently finished (of all kinds together).
WINDOW_JOBS = 1000
#: How long one process reuses its read of those jobs (seconds).
CACHE_S = 5.0
#: The throughput windows, in minutes.
WINDOWS_MIN = (1, 15, 60)

# Per queue (one per app): when its window was read, `by_kind` of it, and its jobs.
_by_kind: WeakKeyDictionary[JobQueue, tuple[float, dict[str, dict[str, Any]], int]] = \
    WeakKeyDictionary()


async def extra_json(queue: JobQueue, stats: Stats) -> dict[str, Any]:
    """The keys `GET /api/queue` adds to `stream.stats_json`, from `stats` (just read) and
    the per-kind read (cached)."""
    kinds, jobs = await kinds_json(queue)
    completed = dict(zip(WINDOWS_MIN, (stats.finished_last_min, stats.completed_last_15min,
                                       stats.completed_last_hour), strict=True))
    in_db = {s.value: stats.counts.get(s.value, 0) for s in State}
    return {
        "throughput": {f"{m}m": {"completed": n, "per_min": n / m}
                       for m, n in completed.items()},
        # The last hour's and day's ends by state: what the dashboard's stat strip shows.
        "ended": {"1h": stats.ended_last_hour, "24h": stats.ended_last_day},
        "by_kind": kinds,
        "by_kind_window": {"window_s": WINDOW_S, "max_jobs": WINDOW_JOBS, "jobs": jobs},
        "totals": {
            "since_start": queue.tally.totals(),
            "in_database": {**in_db, "total": sum(in_db.values())},
        },
        "started_at": iso(queue.tally.started_at),
        "uptime_s": queue.tally.uptime_s(),
        "limits": limits_json(queue),
    }


def by_owner_json(counts: dict[str, tuple[int, int]]) -> dict[str, dict[str, int]]:
    """`by_owner` of `GET /api/queue` (admins only): each owner's queued and running jobs,
    as `Store.owner_counts` read them."""
    return {owner: {"queued": queued, "running": running}
            for owner, (queued, running) in sorted(counts.items())}


def limits_json(queue: JobQueue) -> dict[str, Any]:
    """The limits the queue enforces now (the one place their source is read)."""
    limits, quota = queue.live.limits, queue.live.quota_for("")
    return {
        "max_running": limits.max_running,
        "max_queued": quota.max_queued,
        "per_user_running": limits.per_user_running,
        "per_user_queued": quota.per_user_queued,
        "memory_budget_mb": limits.memory_budget_mb,
        "kind_max_running": dict(sorted(limits.kind_max_running.items())),
    }


async def kinds_json(queue: JobQueue, max_age_s: float = CACHE_S
                     ) -> tuple[dict[str, dict[str, Any]], int]:
    """`by_kind` of the window's finished jobs, and how many there were, as worked out at
    most `max_age_s` ago by this process."""
    now = time.monotonic()
    cached = _by_kind.get(queue)
    if cached is not None and now - cached[0] < max_age_s:
        return cached[1], cached[2]
    spans = await queue.store.recent_spans(time.time() - WINDOW_S, WINDOW_JOBS)
    kinds = by_kind(spans, queue.settings.kinds)
    _by_kind[queue] = (now, kinds, len(spans))
    return kinds, len(spans)


def drop_cache() -> None:
    """Forget every queue's cached read (the next call reads afresh)."""
    _by_kind.clear()


def by_kind(spans: Iterable[Span], kinds: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Per kind (each of `kinds`, and any other the spans name): how many jobs, their run
    time and queue wait at the 50th and 95th percentile (nearest rank; null without
    jobs), and the retries they took (attempts past the first)."""
    grouped: defaultdict[str, list[Span]] = defaultdict(list)
    for name in kinds:
        grouped[name] = []
    for span in spans:
        grouped[span.kind].append(span)
    return {name: _kind_json(grouped[name]) for name in sorted(grouped)}


def _kind_json(spans: list[Span]) -> dict[str, Any]:
    runs = sorted(s.run_s for s in spans)
    waits = sorted(s.wait_s for s in spans)
    return {
        "jobs": len(spans),
        "run_s": _quantiles(runs),
        "wait_s": _quantiles(waits),
        "retries": sum(max(0, s.attempt - 1) for s in spans),
    }


def _quantiles(ordered: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(ordered, 0.5) if ordered else None,
            "p95": percentile(ordered, 0.95) if ordered else None}
