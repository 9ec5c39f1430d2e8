"""What this process saw happen since it started, counted from the committed events the
store hands it (every node's, in one database): the "since start" totals of
`GET /api/queue`. Costs no database read."""

from __future__ import annotations

import time
from collections import Counter

from jobgate.model import FINAL_EVENTS, Event, EventType
from jobgate.moves import HANDED_BACK, RETRIED_BY_HAND

#: The totals since start, in the order they are shown.
TOTALS = ("completed", "failed", "cancelled", "retried", "retried_by_hand")


class Tally:
    """Counts of job ends and retries since `started_at` (this process's start)."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self._counts: Counter[str] = Counter()

    def count(self, event: Event) -> None:
        """Count one committed event (an `EventBus.on` callback: cheap, never blocks).

        `retried` are the runs that went back to the queue to be tried again (a
        `job.retrying` event: after a failed attempt, or from a lost worker; a run handed
        back by a worker that stops is not a retry); `retried_by_hand` the `retry` verb's."""
        kind = event.type
        if kind in FINAL_EVENTS:
            self._counts[kind.removeprefix("job.")] += 1
        elif kind == EventType.RETRYING:
            if event.data.get("message") != HANDED_BACK:
                self._counts["retried"] += 1
        elif kind == EventType.QUEUED and event.data.get("message") == RETRIED_BY_HAND:
            self._counts["retried_by_hand"] += 1

    def uptime_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.started_at)

    def totals(self) -> dict[str, int]:
        return {name: self._counts[name] for name in TOTALS}
