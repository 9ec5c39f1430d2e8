"""In-process fan-out of committed events to whoever listens in this process.

The store delivers every committed event once, in `seq` order (its own and, through the
outbox, other processes'); the bus hands them to subscribers, each with a bounded buffer
so a slow reader is dropped instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from jobgate.model import Event

DEFAULT_BUFFER = 10_000


class Subscription:
    """A reader's queue of events. `dropped` is set if it could not keep up."""

    def __init__(self, bus: EventBus, accept: Callable[[Event], bool], buffer: int) -> None:
        self._bus = bus
        self.accept = accept
        self.queue: asyncio.Queue[Event] = asyncio.Queue(buffer)
        self.dropped = False

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self._bus._subs.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fan-out of committed events inside one process."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._callbacks: list[Callable[[Event], None]] = []
        self.last_seq = 0

    def on(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback(event)` for every event, synchronously; returns an unsubscriber.

        For cheap in-process reactions (waking the worker); a callback must not block.
        """
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def subscribe(
        self, accept: Callable[[Event], bool] = lambda e: True, buffer: int = DEFAULT_BUFFER
    ) -> Subscription:
        sub = Subscription(self, accept, buffer)
        self._subs.add(sub)
        return sub

    def publish(self, events: list[Event]) -> None:
        for event in events:
            self.last_seq = max(self.last_seq, event.seq)
            for callback in self._callbacks:
                callback(event)
            for sub in list(self._subs):
                if not sub.accept(event):
                    continue
                try:
                    sub.queue.put_nowait(event)
                except asyncio.QueueFull:
                    sub.dropped = True
                    sub.close()

    async def wait_for(self, accept: Callable[[Event], bool], timeout_s: float) -> Event | None:
        """The next event `accept` takes, or None after `timeout_s`."""
        with self.subscribe(accept, buffer=1000) as sub:
            try:
                return await asyncio.wait_for(sub.get(), timeout_s)
            except TimeoutError:
                return None
