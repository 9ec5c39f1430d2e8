"""`GET /metrics`: the Prometheus scrape (see `jobgate.metrics`).

Open to anyone who can reach the server, as Prometheus' targets usually are, unless
`[metrics] token` is set: then a scrape must send `Authorization: Bearer <token>` (compared
in constant time), else it gets the API's 401. The token is never logged nor echoed.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from jobgate.api.core import ApiError, services_of
from jobgate.config import Settings
from jobgate.metrics import new_registry, read_snapshot, render
from jobgate.worker import default_name


def install(app: FastAPI, settings: Settings) -> None:
    """Add `GET /metrics`, with a registry of this app's own."""
    registry, collector = new_registry(settings)

    @app.get("/metrics", tags=["health"], response_class=Response, responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {}}},
        401: {"description": "`[metrics] token` is set and was not sent"},
        503: {"description": "the database cannot be read"}})
    async def metrics(request: Request) -> Response:
        """The queue's numbers (every node's, read from the database) in Prometheus' text
        format; with `[metrics] token` set, only for `Authorization: Bearer <token>`."""
        services = services_of(request)
        _check_token(settings.metrics.token, request.headers.get("authorization"))
        worker = services.worker
        node = worker.name if worker is not None else settings.worker.name or default_name()
        try:
            snapshot = await read_snapshot(services.queue, node, len(services.hub.streams))
        except Exception as exc:  # as /health says it: the scrape fails, visibly, not 500
            raise ApiError(503, "unavailable",
                           f"the database cannot be read: {type(exc).__name__}") from exc
        return Response(render(registry, collector, snapshot), media_type=CONTENT_TYPE_LATEST)


def _check_token(token: str | None, header: str | None) -> None:
    if token is None:
        return
    scheme, _, given = (header or "").partition(" ")
    if header is None or scheme.lower() != "bearer":
        raise ApiError(401, "unauthorized", "GET /metrics needs Authorization: Bearer "
                       "<token> ([metrics] token)")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "wrong metrics token")
