"""Queue positions without counting rows: an order-statistic index of queued jobs.

A waiting job's dispatch key never changes (see scheduler.py), so its position is its rank
among the keys of ready queued jobs, kept in sorted blocks: at most O(log n), and usually
a few lookups (each entry remembers where its key was), where `COUNT(*)` over an index
would cost O(position). The index follows the store's committed events, including
other processes' (`Store.listen`), and is rebuilt from the database at start.

Jobs whose `run_at` is still in the future (delayed, or in retry backoff) have no position:
they join the order, at their key, once they are due. Nor have jobs waiting for their
dependencies (their `job.queued` says `waiting`): they join it with the `job.queued` of
their release, at the turn they get then.
"""

from __future__ import annotations

import heapq
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate

from jobgate.kinds import PRIORITY_LIMIT
from jobgate.model import QUEUED_EVENTS, STATE_EVENTS, DispatchKey, Event, parse_iso

_BLOCK = 1000  # keys per block: split in two past twice this (a new last block past it)


def sort_key(key: DispatchKey) -> str:
    """A dispatch key as one string that sorts the same way: comparing strings is one
    memcmp, comparing tuples a call per element, and a rank takes a dozen comparisons."""
    neg_priority, vt, job_id = key
    return f"{neg_priority + PRIORITY_LIMIT:05d}{vt:020d}{job_id}"


class _Block(list[str]):
    """Consecutive keys of the order, sorted."""

    __slots__ = ("offset", "pos")

    def __init__(self, keys: list[str], pos: int) -> None:
        super().__init__(keys)
        self.pos = pos  # its index among the blocks
        # How far its keys moved by inserts and removals at its front (each moves every
        # other key by one): a key's index seen earlier is corrected by the change.
        self.offset = 0


class Entry:
    """One job's key, and where in the order it was last found: a hint, checked by
    identity before it is trusted, so that a rank need not search at all."""

    __slots__ = ("block", "index", "key", "offset")

    def __init__(self, key: str) -> None:
        self.key = key
        self.block: _Block | None = None  # None: not in the order (delayed, or removed)
        self.index = 0
        self.offset = 0

    def _seen(self, block: _Block, index: int) -> None:
        self.block, self.index, self.offset = block, index, block.offset


class RankedKeys:
    """Sorted keys in blocks, with each block's starting rank kept beside them.

    A key's rank is its block's start plus its index in the block. Each entry remembers
    where its key was, and most of the time it is still there (keys move only when one
    is inserted or removed before them in the same block), so a rank is a few lookups
    whatever the depth, instead of a search that touches memory all over a deep queue.
    When the hint is stale, two C bisects find the key again. An insert or removal moves
    at most one block's worth of pointers and marks the rank table for rebuilding (one
    pass over the block sizes, in C, on the next rank asked for).
    """

    def __init__(self) -> None:
        self._blocks: list[_Block] = []
        self._maxes: list[str] = []
        self._starts: list[int] | None = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def clear(self) -> None:
        self._blocks, self._maxes, self._starts, self._len = [], [], [], 0

    def add(self, entry: Entry) -> None:
        key = entry.key
        self._len += 1
        self._starts = None
        last = len(self._blocks) - 1
        if last < 0 or (key > self._maxes[last] and len(self._blocks[last]) >= _BLOCK):
            # A new last block when the last one is full: a queue filling up moves no key.
            block = _Block([key], last + 1)
            self._blocks.append(block)
            self._maxes.append(key)
            entry._seen(block, 0)
            return
        p = min(bisect_left(self._maxes, key), last)
        block = self._blocks[p]
        i = bisect_left(block, key)
        block.insert(i, key)
        if i == 0 and len(block) > 1:
            block.offset += 1
        self._maxes[p] = block[-1]
        entry._seen(block, i)
        if len(block) > 2 * _BLOCK:
            tail = _Block(block[_BLOCK:], p + 1)
            del block[_BLOCK:]
            self._blocks.insert(p + 1, tail)
            self._maxes[p:p + 1] = [block[-1], tail[-1]]
            self._renumber(p + 2)

    def discard(self, entry: Entry) -> None:
        if entry.block is None:
            return
        p, i = self._find(entry)
        block = self._blocks[p]
        del block[i]
        entry.block = None
        self._len -= 1
        self._starts = None
        if block:
            if i == 0:
                block.offset -= 1
            self._maxes[p] = block[-1]
        else:
            del self._blocks[p]
            del self._maxes[p]
            self._renumber(p)

    def rank(self, entry: Entry) -> int:
        """How many keys sort before the entry's key (which must be in the order)."""
        p, i = self._find(entry)
        if self._starts is None:
            self._starts = [0, *accumulate(map(len, self._blocks))]
        return self._starts[p] + i

    def _find(self, entry: Entry) -> tuple[int, int]:
        """(block, index in it) of a key in the order."""
        block, key = entry.block, entry.key
        assert block is not None
        i = entry.index + block.offset - entry.offset
        if 0 <= i < len(block) and block[i] is key:
            return block.pos, i
        p = bisect_left(self._maxes, key)
        block = self._blocks[p]
        i = bisect_left(block, key)
        entry._seen(block, i)
        return p, i

    def _renumber(self, start: int) -> None:
        for pos in range(start, len(self._blocks)):
            self._blocks[pos].pos = pos

    def __iter__(self) -> Iterator[str]:
        for block in self._blocks:
            yield from block


class PositionIndex:
    """Ranks of queued jobs in dispatch order."""

    def __init__(self) -> None:
        self._ready = RankedKeys()
        self._entries: dict[str, Entry] = {}  # job id: its key (in the order once due)
        self._delayed: list[tuple[float, str, str]] = []  # heap of (run_at, sort key, id)

    def load(self, keys: Iterable[tuple[DispatchKey, float]]) -> None:
        self._ready.clear()
        self._entries.clear()
        self._delayed.clear()
        for key, run_at in keys:
            self._add(key, run_at)

    def __len__(self) -> int:
        return len(self._entries)

    def position(self, job_id: str, now_s: float | None = None) -> int | None:
        """1-based place among ready queued jobs, or None (not queued, or not yet due)."""
        if self._delayed:
            self._promote(time.time() if now_s is None else now_s)
        entry = self._entries.get(job_id)
        if entry is None or entry.block is None:
            return None
        return self._ready.rank(entry) + 1

    def ready_count(self, now_s: float | None = None) -> int:
        self._promote(time.time() if now_s is None else now_s)
        return len(self._ready)

    def apply(self, events: list[Event]) -> None:
        """Follow committed events: enter on queued/retrying, leave on anything final."""
        for event in events:
            if event.job_id is None:
                continue
            if event.type in QUEUED_EVENTS:
                data = event.data
                self._remove(event.job_id)
                if data.get("waiting"):
                    continue  # waits for its dependencies: in the order once released
                key = (-int(data["priority"]), int(data["vt"]), event.job_id)
                self._add(key, parse_iso(data["run_at"]))
            elif event.type in STATE_EVENTS:  # started or ended: no longer queued
                self._remove(event.job_id)

    def _add(self, dispatch_key: DispatchKey, run_at: float) -> None:
        job_id = dispatch_key[2]
        entry = self._entries[job_id] = Entry(sort_key(dispatch_key))
        if run_at <= time.time():
            self._ready.add(entry)
        else:
            heapq.heappush(self._delayed, (run_at, entry.key, job_id))

    def _remove(self, job_id: str) -> None:
        entry = self._entries.pop(job_id, None)
        if entry is not None:
            self._ready.discard(entry)  # a delayed key is skipped when it comes due

    def _promote(self, now_s: float) -> None:
        while self._delayed and self._delayed[0][0] <= now_s:
            _, key, job_id = heapq.heappop(self._delayed)
            entry = self._entries.get(job_id)
            if entry is not None and entry.key == key and entry.block is None:
                self._ready.add(entry)
