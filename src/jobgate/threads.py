"""Threads for Python jobs whose function is not async.

Unlike `loop.run_in_executor`, the results come back to the event loop in batches: one
wake-up of the loop for however many jobs ended meanwhile, not one per job, which is what
a worker full of short jobs spends its time on.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

_Work = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


class JobThreads:
    """Up to `size` threads, started as work needs them; `close()` lets them end."""

    def __init__(self, size: int, name: str = "jobgate-job") -> None:
        self.size = size
        self.name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._ended: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Run `fn(*args, **kwargs)` in a thread; the future resolves on this event loop."""
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            start = self._idle == 0 and len(self._threads) < self.size
            if start:
                self._idle += 1  # counted before it runs, so a burst starts enough of them
        if start:
            thread = threading.Thread(target=self._serve, name=f"{self.name}-{len(self._threads)}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
        self._work.put((fn, args, kwargs, future))
        return future

    def close(self) -> None:
        """Let the threads end once the work given to them is done (without waiting)."""
        for _ in self._threads:
            self._work.put(None)
        self._threads = []

    def _serve(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            with self._lock:
                self._idle -= 1
            fn, args, kwargs, future = work
            try:
                ended: tuple[asyncio.Future[Any], Any, BaseException | None] = (
                    future, fn(*args, **kwargs), None)
            except BaseException as exc:  # the job's own failure, handed to its future
                ended = (future, None, exc)
            with self._lock:
                self._idle += 1
                self._ended.append(ended)
                first = len(self._ended) == 1
            if first and self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                    self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            ended, self._ended = self._ended, []
        for future, value, exc in ended:
            if future.done():  # cancelled: the job timed out or was cancelled
                continue
            if exc is None:
                future.set_result(value)
            else:
                future.set_exception(exc)
