"""CORS for a frontend on another origin: `[server] cors_origins` may call the HTTP API and
its SSE streams from the browser, with credentials (cookies, or the bearer header).

Starlette's CORSMiddleware answers for the listed origins: each is echoed exactly in
`Access-Control-Allow-Origin` (never `*`, which browsers refuse with credentials), with
`Access-Control-Allow-Credentials: true` and `Vary: Origin`; a preflight is answered with
the methods and headers the API reads. A request from any other origin passes by it and
gets no CORS header at all (a refused preflight: 403 in the contract's shape), so the
browser keeps the answer from that page. WebSocket origins are not CORS: `/api/ws` keeps
checking `[server] allowed_origins` itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from jobgate.api.core import error_response

#: The request headers a browser may send to the API: the bearer token, JSON bodies, a
#: resumed stream, a repeated submit.
ALLOWED_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key")
#: The answer's headers a page may read besides the safelisted ones.
EXPOSED_HEADERS = ("Retry-After", "Content-Disposition", "X-Jobgate-Partial")
MAX_AGE_S = 600


def add_cors(app: FastAPI, origins: list[str]) -> None:
    """Answer CORS for `origins` (none: no CORS middleware at all)."""
    if not origins:
        return
    app.add_middleware(_OnlyListed, origins=frozenset(origins))


class _OnlyListed:
    """CORSMiddleware for the listed origins; everyone else's requests go straight on."""

    def __init__(self, app: Any, origins: frozenset[str]) -> None:
        self.app, self.origins = app, origins
        self.cors = CORSMiddleware(app, allow_origins=sorted(origins), allow_credentials=True,
                                   allow_methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"],
                                   allow_headers=ALLOWED_HEADERS,
                                   expose_headers=EXPOSED_HEADERS, max_age=MAX_AGE_S)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin", b"").decode("latin-1")
        if origin in self.origins:
            await self.cors(scope, receive, send)
            return
        if origin and scope["method"] == "OPTIONS" and \
                b"access-control-request-method" in headers:
            await error_response(403, "forbidden_origin",
                                 f"origin {origin[:100]!r} may not call this API "
                                 "([server] cors_origins)")(scope, receive, send)
            return
        await self.app(scope, receive, send)
