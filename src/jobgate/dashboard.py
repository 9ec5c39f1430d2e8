"""The web dashboard: plain HTML, CSS and JavaScript from `jobgate/web`, served at `/`.

Nothing is built or fetched from elsewhere: the files ship inside the package, so
the page works offline on a home network. The page talks to the same JSON API as every
other client, with the bearer token it gets by signing in (or, inside a host app with a
`user_resolver`, with the host's own session cookie). Every URL in the page is relative to
it, so it works at `/` and mounted under a prefix (`jobgate.mount`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

from jobgate.resolver import resolve

WEB_DIR = Path(__file__).parent / "web"

#: The files the page is made of, by the name in its URL, with their media types.
_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "signin.js": "text/javascript; charset=utf-8",
    "submit.js": "text/javascript; charset=utf-8",
    "waiting.js": "text/javascript; charset=utf-8",
    "list.js": "text/javascript; charset=utf-8",
    "detail.js": "text/javascript; charset=utf-8",
    "log.js": "text/javascript; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "admin.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

# Everything comes from this server; no inline script, no frames of this page elsewhere.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate each time (cheap: FileResponse answers If-None-Match with 304), so an
    # upgraded server never runs with yesterday's script.
    "Cache-Control": "no-cache",
}


def add_dashboard(app: FastAPI) -> None:
    """Serve the dashboard: the page at `/`, its script, style and icon under `/ui/`."""

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers=_HEADERS)

    @app.get("/ui/session", include_in_schema=False)
    async def session(request: Request) -> dict[str, Any]:
        """Whether this visit is signed in without a token of its own (a host app's
        session, or a server without auth), answered 200 either way: the page asks on
        every signed-out visit, and a 401 there would be an error in its console."""
        services = request.app.state.services  # jobgate.api.core.Services (it imports us)
        principal = None if services.resolver is None else \
            await resolve(services.resolver, services.queue.store, request)
        if principal is not None:
            user = principal.user
        elif not services.settings.auth.enabled:
            return {"signed_in": True, "user": {"name": services.settings.auth.anonymous_user,
                                                "admin": True}}
        else:
            return {"signed_in": False, "user": None}
        return {"signed_in": True, "user": {"name": user.name, "admin": user.admin}}

    @app.api_route("/ui/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise HTTPException(404, f"no such file: /ui/{name}")
        return FileResponse(WEB_DIR / name, media_type=media_type, headers=_HEADERS)
