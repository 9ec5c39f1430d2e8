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
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from itertools import accumulate

from jobgate.kinds import PRIORITY_LIMIT
from jobgate.model import DispatchKey, Event, parse_iso

_BLOCK = 1000  # keys per block: a block is split in two past twice this


def sort_key(key: DispatchKey) -> str:
    """A dispatch key as one string that sorts the same way: comparing strings is one
    memcmp, comparing tuples a call per element, and a rank takes a dozen comparisons."""
    neg_priority, vt, job_id = key
    return f"{neg_priority + PRIORITY_LIMIT:05d}{vt:020d}{job_id}"


class RankedKeys:
    """Sorted keys in blocks, with each block's starting rank kept beside them.

    A rank is two C bisects (which block, where in it) plus a table lookup, so it costs
    about the same at 1,000 keys as at 100,000; an insert or removal moves at most one
    block's worth of pointers and marks the rank table for rebuilding (one pass over the
    block sizes, in C, on the next rank asked for).
    """

    def __init__(self) -> None:
        self._blocks: list[list[str]] = []
        self._maxes: list[str] = []
        self._starts: list[int] | None = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def clear(self) -> None:
        self._blocks, self._maxes, self._starts, self._len = [], [], [], 0

    def add(self, key: str) -> None:
        self._len += 1
        self._starts = None
        if not self._blocks:
            self._blocks.append([key])
            self._maxes.append(key)
            return
        i = min(bisect_left(self._maxes, key), len(self._blocks) - 1)
        block = self._blocks[i]
        insort(block, key)
        self._maxes[i] = block[-1]
        if len(block) > 2 * _BLOCK:
            self._blocks[i:i + 1] = [block[:_BLOCK], block[_BLOCK:]]
            self._maxes[i:i + 1] = [block[_BLOCK - 1], block[-1]]

    def discard(self, key: str) -> None:
        i = bisect_left(self._maxes, key)
        if i == len(self._blocks):
            return
        block = self._blocks[i]
        j = bisect_left(block, key)
        if j == len(block) or block[j] != key:
            return
        del block[j]
        self._len -= 1
        self._starts = None
        if block:
            self._maxes[i] = block[-1]
        else:
            del self._blocks[i]
            del self._maxes[i]

    def rank(self, key: str) -> int:
        """How many keys sort before `key`."""
        i = bisect_left(self._maxes, key)
        if i == len(self._blocks):
            return self._len
        if self._starts is None:
            self._starts = [0, *accumulate(map(len, self._blocks))]
        return self._starts[i] + bisect_left(self._blocks[i], key)

    def __iter__(self) -> Iterator[str]:
        for block in self._blocks:
            yield from block


class PositionIndex:
    """Ranks of queued jobs in dispatch order."""

    def __init__(self) -> None:
        self._ready = RankedKeys()
        self._keys: dict[str, str] = {}  # job id: its sort_key
        self._delayed: list[tuple[float, str, str]] = []  # heap of (run_at, sort key, id)
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
        return self._ready.rank(key) + 1

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

    def _add(self, dispatch_key: DispatchKey, run_at: float) -> None:
        job_id, key = dispatch_key[2], sort_key(dispatch_key)
        self._keys[job_id] = key
        if run_at <= time.time():
            self._ready.add(key)
        else:
            heapq.heappush(self._delayed, (run_at, key, job_id))
            self._not_due.add(job_id)

    def _remove(self, job_id: str) -> None:
        key = self._keys.pop(job_id, None)
        self._not_due.discard(job_id)
        if key is not None:
            self._ready.discard(key)  # a delayed key is skipped when it comes due

    def _promote(self, now_s: float) -> None:
        while self._delayed and self._delayed[0][0] <= now_s:
            _, key, job_id = heapq.heappop(self._delayed)
            if self._keys.get(job_id) == key and job_id in self._not_due:
                self._not_due.discard(job_id)
                self._ready.add(key)
