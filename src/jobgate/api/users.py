"""Users and API tokens over HTTP: the admin routes under `/api/users`, and every user's
own tokens under `/api/tokens`.

- admin only (403 for anyone else): `GET /api/users`, `POST /api/users`,
  `DELETE /api/users/{name}?delete_data=true`, `POST /api/users/{name}/password`,
  `POST /api/users/{name}/admin`, `GET|POST /api/users/{name}/tokens`;
- `POST /api/users/{name}/logout` (end every login JWT of theirs): an admin, or the user
  themselves;
- anyone signed in: `GET /api/tokens` (their own tokens), `POST /api/tokens` (a new one,
  shown once), `DELETE /api/tokens/{id}` (their own; an admin: anyone's).

No answer holds a password hash or a token's hash; a token's secret is in the answer that
makes it and nowhere else. The verbs are users.py's, the same the CLI runs.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from jobgate import users
from jobgate.api.core import ApiError, CurrentUser, SafeStr, services_of
from jobgate.auth import check_name, hash_password, new_named_token
from jobgate.model import USER_NAME
from jobgate.store.base import NotFound, User

_TOKEN_ID = re.compile(r"[0-9a-f]{1,64}")


class NewUserBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: SafeStr = Field(min_length=1, max_length=64)
    password: SafeStr | None = Field(default=None, max_length=users.MAX_PASSWORD)
    admin: bool = False


class PasswordBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: SafeStr = Field(max_length=users.MAX_PASSWORD)


class AdminBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    admin: bool


class NewTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: SafeStr | None = Field(default=None, min_length=1, max_length=100)


def _admin(user: User) -> None:
    if not user.admin:
        raise ApiError(403, "forbidden", "only an admin may manage users")


def _name(name: str) -> str:
    """A path's user name, or the 404 for one that names no user (echoed only if it
    could be a user's name)."""
    if not USER_NAME.fullmatch(name):
        raise ApiError(404, "not_found", "no user with that name")
    return name


def _token_id(token_id: str) -> str:
    if not _TOKEN_ID.fullmatch(token_id):
        raise ApiError(404, "not_found", "no token with that id")
    return token_id


def _password(password: str) -> str:
    try:
        return users.check_password(password)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"password: {exc}", field="password") from None


async def _new_token(request: Request, owner: str, body: NewTokenBody | None
                     ) -> dict[str, Any]:
    store = services_of(request).queue.store
    token, info = await new_named_token(store, owner, body.name if body else None)
    return {**users.token_json(info), "token": token}


def install(app: FastAPI) -> None:
    """Add the user and token routes to `app`."""

    @app.get("/api/users", tags=["users"])
    async def list_users(request: Request, caller: CurrentUser) -> dict[str, Any]:
        """Every user, with their queued and running jobs and how many tokens they hold."""
        _admin(caller)
        found = await services_of(request).queue.store.list_users()
        return {"users": [users.user_json(u) for u in found]}

    @app.post("/api/users", tags=["users"], status_code=201)
    async def add_user(body: NewUserBody, request: Request, caller: CurrentUser
                       ) -> dict[str, Any]:
        """Add a user (with a password to log in with, or none: API tokens only)."""
        _admin(caller)
        try:
            name = check_name(body.name)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"name: {exc}", field="name") from None
        hashed = None
        if body.password is not None:
            hashed = await asyncio.to_thread(hash_password, _password(body.password))
        user = await services_of(request).queue.store.add_user(name, hashed, body.admin)
        return users.user_json(user)

    @app.delete("/api/users/{name}", tags=["users"])
    async def remove_user(name: str, request: Request, caller: CurrentUser,
                          delete_data: Annotated[bool, Query()] = False) -> dict[str, Any]:
        """Remove a user and their tokens: their queued jobs are cancelled and running
        ones stopped; with `delete_data`, their finished jobs and uploads are deleted too
        (else their jobs stay, listed by an admin with `?owner=`)."""
        _admin(caller)
        removal = await users.remove_user(services_of(request).queue, _name(name),
                                          delete_data=delete_data)
        return removal.to_json()

    @app.post("/api/users/{name}/password", tags=["users"])
    async def set_password(name: str, body: PasswordBody, request: Request,
                           caller: CurrentUser) -> dict[str, Any]:
        """Set a user's password; every login JWT of theirs ends (API tokens stay)."""
        _admin(caller)
        user = await users.change_password(services_of(request).queue.store, _name(name),
                                           _password(body.password))
        return users.user_json(user)

    @app.post("/api/users/{name}/admin", tags=["users"])
    async def set_admin(name: str, body: AdminBody, request: Request, caller: CurrentUser
                        ) -> dict[str, Any]:
        """Make a user an admin or not, at once on every API node."""
        _admin(caller)
        user = await users.set_admin(services_of(request).queue.store, _name(name),
                                     body.admin)
        return users.user_json(user)

    @app.post("/api/users/{name}/logout", tags=["users"])
    async def log_out(name: str, request: Request, caller: CurrentUser) -> dict[str, Any]:
        """End every login JWT of the user (an admin, or the user themselves)."""
        if caller.name != name:
            _admin(caller)
        user = await users.log_out_everywhere(services_of(request).queue.store, _name(name))
        return users.user_json(user)

    @app.get("/api/users/{name}/tokens", tags=["users"])
    async def user_tokens(name: str, request: Request, caller: CurrentUser
                          ) -> dict[str, Any]:
        """A user's API tokens: id, name, created_at, last_used_at (never the secret)."""
        _admin(caller)
        found = await services_of(request).queue.store.list_tokens(_name(name))
        return {"tokens": [users.token_json(t) for t in found]}

    @app.post("/api/users/{name}/tokens", tags=["users"], status_code=201)
    async def new_user_token(name: str, request: Request, caller: CurrentUser,
                             body: NewTokenBody | None = None) -> dict[str, Any]:
        """A new API token for the user: `token` is its secret, shown this once."""
        _admin(caller)
        return await _new_token(request, _name(name), body)

    @app.get("/api/tokens", tags=["users"])
    async def my_tokens(request: Request, caller: CurrentUser) -> dict[str, Any]:
        """The caller's own API tokens."""
        try:
            found = await services_of(request).queue.store.list_tokens(caller.name)
        except NotFound:  # auth off: the anonymous user holds none
            found = []
        return {"tokens": [users.token_json(t) for t in found]}

    @app.post("/api/tokens", tags=["users"], status_code=201)
    async def new_my_token(request: Request, caller: CurrentUser,
                           body: NewTokenBody | None = None) -> dict[str, Any]:
        """A new API token for the caller: `token` is its secret, shown this once."""
        return await _new_token(request, caller.name, body)

    @app.delete("/api/tokens/{token_id}", tags=["users"])
    async def revoke(token_id: str, request: Request, caller: CurrentUser
                     ) -> dict[str, Any]:
        """Revoke an API token: refused at once on every API node. A user may revoke
        their own tokens; an admin anyone's (someone else's is a 404 to anyone else)."""
        token = await users.revoke_token(services_of(request).queue.store,
                                         _token_id(token_id),
                                         None if caller.admin else caller.name)
        return {"revoked": users.token_json(token)}
