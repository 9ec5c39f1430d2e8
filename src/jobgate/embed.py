"""jobgate inside your own app: `jobgate.mount(app, settings, prefix="/jobs")`.

A mounted ASGI app's own lifespan never runs (Starlette runs only the host's), so `mount`
adds jobgate's to the host's: the store opens (and the embedded worker starts, unless
`run_worker=False`) before the host's own start-up code runs, and closes after the host's
shutdown code ran; a host's lifespan (or its `on_startup` handlers) stays as it was, and
the state it yields still reaches its requests. Everything of jobgate is then under the
prefix: the API (`/jobs/api/...`), its streams (SSE and `WS /jobs/api/ws`), the dashboard
(`/jobs/`, whose page uses only URLs relative to itself), `/jobs/health`, `/jobs/metrics`
and the OpenAPI schema (`/jobs/docs`, `/jobs/openapi.json`).

With `user_resolver`, the host's users are jobgate's owners (see `jobgate.resolver`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette

from jobgate.api import create_app
from jobgate.config import Settings
from jobgate.resolver import UserResolver


def mount(app: Starlette, settings: Settings, prefix: str = "/jobs", *,
          run_worker: bool = True, user_resolver: UserResolver | None = None) -> FastAPI:
    """Mount jobgate at `prefix` of the FastAPI or Starlette `app` and run its start-up and
    shutdown with `app`'s lifespan; returns the mounted jobgate app.

    `run_worker=False`: this process only serves the API (worker nodes run the jobs, e.g.
    `jobgate worker` on a shared PostgreSQL database). `user_resolver(connection)` names
    the caller from the host's own session or token as `(name, is_admin)`; a request it
    answers None for is authenticated by jobgate itself (bearer token, stream ticket).
    Call it before the server starts (where the app is built).
    """
    path = _prefix(prefix)
    jobgate_app = create_app(settings, run_worker=run_worker, user_resolver=user_resolver)
    app.mount(path, jobgate_app, name="jobgate")
    host_lifespan = app.router.lifespan_context
    own_lifespan = jobgate_app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def both(host: Any) -> AsyncIterator[Any]:
        async with own_lifespan(jobgate_app), host_lifespan(host) as state:
            yield state

    app.router.lifespan_context = both
    return jobgate_app


def _prefix(prefix: str) -> str:
    """`prefix` as Starlette mounts it: `/name…` without a trailing slash."""
    path = prefix.rstrip("/")
    if not path.startswith("/") or "//" in path or any(c in path for c in "?#{} "):
        raise ValueError(f"mount prefix {prefix!r}: expected a path like '/jobs' "
                         "(not '/' itself: serve `create_app(settings)` for that)")
    return path
