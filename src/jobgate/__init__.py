"""jobgate: a job queue for heavy, long-running work shared by many people.

Embed it in an asyncio program::

    from jobgate import JobQueue, Worker, load_settings, store_for_url

    settings = load_settings("jobgate.toml")
    queue = JobQueue(settings, store_for_url(settings.storage.url))
    await queue.open()
    job, _ = await queue.submit("alice", "compress", {"input": "film.mkv"})
    worker = Worker(queue)          # run it with `await worker.run()`, end with `stop()`

or mount the HTTP API in an ASGI server with `create_app(settings)`.

Names are imported on first use, so the command line starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobgate.api import create_app
    from jobgate.config import ConfigError, Settings, load_settings
    from jobgate.executor import JobContext
    from jobgate.kinds import ArgumentError, Kind
    from jobgate.model import Event, IllegalMove, Job, State
    from jobgate.pychild import NonRetryable
    from jobgate.queue import JobQueue
    from jobgate.store import store_for_url
    from jobgate.store.base import NotFound, QueueFull, Store
    from jobgate.worker import Worker

_EXPORTS = {
    "create_app": "jobgate.api",
    "ConfigError": "jobgate.config",
    "Settings": "jobgate.config",
    "load_settings": "jobgate.config",
    "JobContext": "jobgate.executor",
    "NonRetryable": "jobgate.pychild",  # light: a pool process imports it for job code
    "ArgumentError": "jobgate.kinds",
    "Kind": "jobgate.kinds",
    "Event": "jobgate.model",
    "IllegalMove": "jobgate.model",
    "Job": "jobgate.model",
    "State": "jobgate.model",
    "JobQueue": "jobgate.queue",
    "store_for_url": "jobgate.store",
    "NotFound": "jobgate.store.base",
    "QueueFull": "jobgate.store.base",
    "Store": "jobgate.store.base",
    "Worker": "jobgate.worker",
}
__all__ = [
    "ArgumentError", "ConfigError", "Event", "IllegalMove", "Job", "JobContext", "JobQueue",
    "Kind", "NonRetryable", "NotFound", "QueueFull", "Settings", "State", "Store", "Worker",
    "create_app", "load_settings", "store_for_url",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jobgate' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
