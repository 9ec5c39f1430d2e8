"""Queue positions without counting rows: an order-statistic index of queued jobs.

A waiting job's dispatch key never changes (see scheduler.py), so its position is its rank
among the keys of ready queued jobs: O(log n) in a sorted list, where `COUNT(*)` over an
index would cost O(position). The index follows the store's committed events, including
other processes' (`Store.listen`), and is rebuilt from the database at start.

Jobs whose `run_at` is still in the future (delayed, or in retry backoff) have no position:
they join the order, at their key, once they are due.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable

from sortedcontainers import SortedList

from jobgate.model import DispatchKey, Event, parse_iso


class PositionIndex:
    """Ranks of queued jobs in dispatch order."""

    def __init__(self) -> None:
        self._ready: SortedList = SortedList()
        self._keys: dict[str, DispatchKey] = {}
        self._delayed: list[tuple[float, DispatchKey]] = []  # heap by run_at
        self._not_due: set[str] = set()  # ids in the heap, not yet in the order

    def load(self, keys: Iterable[tuple[DispatchKey, float]]) -> None:
        self._ready.clear()
        self._keys.clear()
        self._delayed.clear()
        self._not_due.clear()
        for key, run_at in keys:
            self._add(key, run_at)

    def __len__(self) -> int:
        return len(self._keys)

    def position(self, job_id: str, now_s: float | None = None) -> int | None:
        """1-based place among ready queued jobs, or None (not queued, or not yet due)."""
        if self._delayed:
            self._promote(time.time() if now_s is None else now_s)
        key = self._keys.get(job_id)
        if key is None or job_id in self._not_due:
            return None
        return int(self._ready.bisect_left(key)) + 1

    def ready_count(self, now_s: float | None = None) -> int:
        self._promote(time.time() if now_s is None else now_s)
        return len(self._ready)

    def apply(self, events: list[Event]) -> None:
        """Follow committed events: enter on queued/retrying, leave on anything final."""
        for event in events:
            if event.job_id is None:
                continue
            if event.type in ("job.queued", "job.retrying"):
                data = event.data
                self._remove(event.job_id)
                key = (-int(data["priority"]), int(data["vt"]), event.job_id)
                self._add(key, parse_iso(data["run_at"]))
            elif event.type in ("job.started", "job.cancelled", "job.failed", "job.completed"):
                self._remove(event.job_id)

    def _add(self, key: DispatchKey, run_at: float) -> None:
        self._keys[key[2]] = key
        if run_at <= time.time():
            self._ready.add(key)
        else:
            heapq.heappush(self._delayed, (run_at, key))
            self._not_due.add(key[2])

    def _remove(self, job_id: str) -> None:
        key = self._keys.pop(job_id, None)
        self._not_due.discard(job_id)
        if key is not None:
            self._ready.discard(key)  # a delayed key is skipped when it comes due

    def _promote(self, now_s: float) -> None:
        while self._delayed and self._delayed[0][0] <= now_s:
            _, key = heapq.heappop(self._delayed)
            if self._keys.get(key[2]) == key and key[2] in self._not_due:
                self._not_due.discard(key[2])
                self._ready.add(key)
