"""The queue's depth and wait over the last hour, for the dashboard's chart (`depth` of an
admin's `GET /api/queue`): one sample per `EVERY_S` seconds, in a bounded ring in this
process's memory (gone at a restart; each API node keeps its own).

A sample holds the most jobs queued, and running, seen in its `EVERY_S` slot, and the
longest any due job had waited for its turn (`wait_s`: since its `run_at`): the hub notes
every count it reads (each queue.stats, each `GET /api/queue`) and reads one itself each
`EVERY_S` when nothing changes, so a burst between two readings is not missed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from jobgate.model import iso

#: One sample per this many seconds...
EVERY_S = 30.0
#: ... and this many of them: an hour.
KEEP = 120


@dataclass
class Sample:
    """One slot's peaks; `at` is the slot's start (epoch seconds)."""

    at: float
    queued: int
    running: int
    wait_s: float = 0.0


class DepthRing:
    """The last `keep` slots of `every_s` seconds each, oldest first."""

    def __init__(self, every_s: float = EVERY_S, keep: int = KEEP) -> None:
        self.every_s = every_s
        self.samples: deque[Sample] = deque(maxlen=keep)

    def note(self, now: float, queued: int, running: int, wait_s: float = 0.0) -> None:
        """Count `queued`, `running` and the longest wait `wait_s`, read at `now`, in their
        slot."""
        at = math.floor(now / self.every_s) * self.every_s
        last = self.samples[-1] if self.samples else None
        if last is not None and last.at == at:
            last.queued = max(last.queued, queued)
            last.running = max(last.running, running)
            last.wait_s = max(last.wait_s, wait_s)
        elif last is None or at > last.at:
            self.samples.append(Sample(at, queued, running, wait_s))
        # An older slot (a clock stepped back): dropped rather than written out of order.

    def to_json(self) -> dict[str, Any]:
        """`depth` of `GET /api/queue`: the slot length and the samples, oldest first."""
        return {"every_s": self.every_s,
                "samples": [{"at": iso(s.at), "queued": s.queued, "running": s.running,
                             "wait_s": round(s.wait_s, 1)} for s in self.samples]}
