"""The HTTP API as one ASGI app: `create_app(settings)`.

Its parts, each a flat module that imports `core` and nothing else of this package:
`core` (the Services on `app.state`, lifespan, errors, guards, the caller), `jobs` (job,
queue and health routes), `auth` (login and tickets), `streams` (SSE and WebSocket),
`uploads` (files in), `batches` (many jobs at once), `bulk` (an action on many jobs),
`schedules` (the configured schedules), `deliveries` (a job's webhooks and notifications),
`metrics` (the Prometheus scrape), `users` (users and API tokens), `controls` (the
operator's pause, limits and drains), `cors` (`[server] cors_origins`).
"""

from __future__ import annotations

from fastapi import FastAPI

from jobgate import __version__
from jobgate.api import (
    auth,
    batches,
    bulk,
    controls,
    core,
    deliveries,
    jobs,
    metrics,
    schedules,
    streams,
    uploads,
    users,
)
from jobgate.api.core import ApiError, Services, error_response
from jobgate.api.cors import add_cors
from jobgate.config import Settings
from jobgate.dashboard import add_dashboard
from jobgate.resolver import UserResolver

__all__ = ["ApiError", "Services", "create_app", "error_response"]


def create_app(settings: Settings, run_worker: bool = True,
               user_resolver: UserResolver | None = None) -> FastAPI:
    """The ASGI app: opens the store at start-up, runs an embedded worker unless told not to;
    `user_resolver` lets a host app name the caller (`jobgate.mount`)."""
    app = FastAPI(title="jobgate", version=__version__,
                  lifespan=core.lifespan(settings, run_worker, user_resolver),
                  description="A job queue for heavy, long-running work shared by many people.")
    core.install_guards(app, settings, uncapped=(uploads.UPLOAD_PATH,))
    jobs.install(app, settings)
    batches.install(app)
    bulk.install(app)
    auth.install(app, settings)
    uploads.install(app)
    schedules.install(app)
    deliveries.install(app)
    controls.install(app)
    metrics.install(app, settings)
    users.install(app)
    add_dashboard(app)
    streams.install(app)
    add_cors(app, settings.server.cors_origins)  # outermost: errors get its headers too
    return app
