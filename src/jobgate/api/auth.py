"""The login routes: `POST /api/auth/token` (user name and password → a bearer token),
`POST /api/auth/ticket` (a single-use ticket for the event streams) and `GET /api/me`.

Logins are limited per (user, address) and per address, with a wait that doubles after
each failure past `[rate_limits] login_free_failures`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from jobgate.api.core import (
    ApiError,
    CurrentPrincipal,
    CurrentUser,
    SafeStr,
    client_ip,
    limit,
    services_of,
)
from jobgate.config import Settings
from jobgate.model import iso
from jobgate.ratelimit import retry_after


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: SafeStr = Field(min_length=1, max_length=64)
    password: SafeStr = Field(min_length=1, max_length=1024)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the login, ticket and `/api/me` routes to `app`."""

    @app.post("/api/auth/token", tags=["auth"])
    async def login(body: LoginBody, request: Request) -> dict[str, Any]:
        """Username and password → a bearer token (JWT) good for `[auth] token_ttl`."""
        services = services_of(request)
        if not settings.auth.enabled:
            raise ApiError(400, "auth_disabled", "auth is disabled on this server: "
                           "no token is needed")
        limits, ip = services.limits, client_ip(request)
        # Logins and failures count per (user, address): a guesser elsewhere spends their
        # own allowance and waits longer after every miss, and cannot lock the user out;
        # one address guessing across many users waits too.
        key = f"{body.username}\0{ip}"
        wait = max(limits.bad_logins.wait_s(key), limits.bad_logins_per_ip.wait_s(ip))
        if wait > 0:
            raise ApiError(429, "rate_limited", f"too many failed logins: try again in "
                           f"{retry_after(wait)} s", retry_after_s=retry_after(wait))
        limit(limits.login_per_ip, ip, "logins from this address")
        limit(limits.login_per_user, key, f"logins as {body.username} from this address")
        user = await services.auth.login(body.username, body.password)
        if user is None:
            limits.bad_logins.failed(key)
            limits.bad_logins_per_ip.failed(ip)
            raise ApiError(401, "unauthorized", "wrong user name or password")
        limits.bad_logins.succeeded(key)
        limits.bad_logins_per_ip.succeeded(ip)
        token, expires_at = services.auth.issue(user)
        return {"token": token, "token_type": "bearer", "expires_at": iso(expires_at),
                "user": {"name": user.name, "admin": user.admin}}

    @app.get("/api/me", tags=["auth"])
    async def me(user: CurrentUser) -> dict[str, Any]:
        """Who the bearer token stands for."""
        return {"name": user.name, "admin": user.admin}

    @app.post("/api/auth/ticket", tags=["auth"])
    async def ticket(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
        """A single-use ticket for `?ticket=` on the event streams (EventSource and
        WebSocket cannot send headers); good for `[auth] ticket_ttl` (at most 60 s). A
        stream opened with it ends when the token behind it would have expired."""
        services = services_of(request)
        return {"ticket": services.auth.ticket(principal),
                "expires_in_s": round(settings.auth.ticket_ttl)}
