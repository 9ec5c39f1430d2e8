"""jobgate: a job queue for heavy, long-running work shared by many people.

Embed it in an asyncio program::

    from jobgate import JobQueue, Worker, load_settings, store_for_url

    settings = load_settings("jobgate.toml")
    queue = JobQueue(settings, store_for_url(settings.storage.url))
    await queue.open()
    job, _ = await queue.submit("alice", "compress", {"input": "film.mkv"})
    worker = Worker(queue)          # run it with `await worker.run()`, end with `stop()`

or serve the HTTP API in an ASGI server with `create_app(settings)`, or put it inside your
own FastAPI or Starlette app with `mount(app, settings, prefix="/jobs")` (its users
jobgate's owners through a `UserResolver`).

Public means: every name in `__all__`, and nothing else of this top-level package. It is
what a program embedding jobgate meets: the verbs and their objects (JobQueue, Worker,
Settings, Job, Event, ...), and every exception they raise to it: each exception class
of the modules those names come from (`tests/test_public.py` checks that none is left
out, that each name imports and has a docstring, and that the list for type checkers
below names the same as `_EXPORTS`). The exceptions of the command line and of the HTTP
layer (`CliError`, `ApiError`, `AuthError`) are not: a caller meets their answers, not
them. The HTTP client (`Client`, `AsyncClient`, `jobgate.sdk`) raises `ClientError`s; its
`RemoteNotFound`, `RemoteConflict` and `RemoteQueueFull` are also `NotFound`, `Conflict` and
`QueueFull`, so one `except` serves the embedded queue and the remote one. Modules' other
names may change between versions.

Names are imported on first use, so the command line starts fast. `_EXPORTS` is the one
list; `__all__` is made from it, and the imports under TYPE_CHECKING only tell type
checkers what the names are.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what each name is, for type checkers (`X as X`: re-exported)
    from jobgate.api import create_app as create_app
    from jobgate.arguments import ArgumentError as ArgumentError
    from jobgate.batches import Batch as Batch
    from jobgate.batches import BatchItem as BatchItem
    from jobgate.config import Settings as Settings
    from jobgate.config import load_settings as load_settings
    from jobgate.dependencies import DependencyError as DependencyError
    from jobgate.embed import mount as mount
    from jobgate.kinds import Kind as Kind
    from jobgate.model import Event as Event
    from jobgate.model import EventType as EventType
    from jobgate.model import IllegalMove as IllegalMove
    from jobgate.model import Job as Job
    from jobgate.model import State as State
    from jobgate.pychild import JobContext as JobContext
    from jobgate.pychild import NonRetryable as NonRetryable
    from jobgate.queue import JobQueue as JobQueue
    from jobgate.queue import UnknownKind as UnknownKind
    from jobgate.registry import Arg as Arg
    from jobgate.registry import KindRegistry as KindRegistry
    from jobgate.resolver import UserResolver as UserResolver
    from jobgate.sdk import AsyncClient as AsyncClient
    from jobgate.sdk import Client as Client
    from jobgate.sdk_types import ClientError as ClientError
    from jobgate.sdk_types import Forbidden as Forbidden
    from jobgate.sdk_types import InvalidRequest as InvalidRequest
    from jobgate.sdk_types import JobInfo as JobInfo
    from jobgate.sdk_types import Page as Page
    from jobgate.sdk_types import RateLimited as RateLimited
    from jobgate.sdk_types import RemoteConflict as RemoteConflict
    from jobgate.sdk_types import RemoteNotFound as RemoteNotFound
    from jobgate.sdk_types import RemoteQueueFull as RemoteQueueFull
    from jobgate.sdk_types import StreamEvent as StreamEvent
    from jobgate.sdk_types import Unauthorized as Unauthorized
    from jobgate.sdk_types import Unavailable as Unavailable
    from jobgate.store import store_for_url as store_for_url
    from jobgate.store.base import Conflict as Conflict
    from jobgate.store.base import NotFound as NotFound
    from jobgate.store.base import QueueFull as QueueFull
    from jobgate.store.base import SchemaTooNew as SchemaTooNew
    from jobgate.store.base import Store as Store
    from jobgate.store.base import StoreError as StoreError
    from jobgate.units import ConfigError as ConfigError
    from jobgate.worker import Worker as Worker

#: Each public name → the module that defines it.
_EXPORTS = {
    "create_app": "jobgate.api",
    "Settings": "jobgate.config",
    "load_settings": "jobgate.config",
    "JobContext": "jobgate.pychild",
    "NonRetryable": "jobgate.pychild",  # light: a pool process imports it for job code
    "ArgumentError": "jobgate.arguments",
    "Batch": "jobgate.batches",
    "BatchItem": "jobgate.batches",
    "DependencyError": "jobgate.dependencies",
    "mount": "jobgate.embed",
    "Kind": "jobgate.kinds",
    "Event": "jobgate.model",
    "EventType": "jobgate.model",
    "IllegalMove": "jobgate.model",
    "Job": "jobgate.model",
    "State": "jobgate.model",
    "JobQueue": "jobgate.queue",
    "UnknownKind": "jobgate.queue",
    "Arg": "jobgate.registry",
    "KindRegistry": "jobgate.registry",
    "UserResolver": "jobgate.resolver",
    "AsyncClient": "jobgate.sdk",
    "Client": "jobgate.sdk",
    "ClientError": "jobgate.sdk_types",
    "Forbidden": "jobgate.sdk_types",
    "InvalidRequest": "jobgate.sdk_types",
    "JobInfo": "jobgate.sdk_types",
    "Page": "jobgate.sdk_types",
    "RateLimited": "jobgate.sdk_types",
    "RemoteConflict": "jobgate.sdk_types",
    "RemoteNotFound": "jobgate.sdk_types",
    "RemoteQueueFull": "jobgate.sdk_types",
    "StreamEvent": "jobgate.sdk_types",
    "Unauthorized": "jobgate.sdk_types",
    "Unavailable": "jobgate.sdk_types",
    "store_for_url": "jobgate.store",
    "Conflict": "jobgate.store.base",
    "NotFound": "jobgate.store.base",
    "QueueFull": "jobgate.store.base",
    "SchemaTooNew": "jobgate.store.base",
    "Store": "jobgate.store.base",
    "StoreError": "jobgate.store.base",
    "ConfigError": "jobgate.units",
    "Worker": "jobgate.worker",
}
__all__ = sorted(_EXPORTS)


def _version() -> str:
    """This jobgate's version, as installed from pyproject.toml (its one written place)."""
    try:
        return importlib.metadata.version("jobgate")
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


#: Read on first use, as the names are (the package's metadata is a few files to scan).
__version__: str


def __getattr__(name: str) -> Any:
    """A public name, imported from its module when first asked for."""
    if name == "__version__":
        globals()["__version__"] = version = _version()
        return version
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jobgate' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
