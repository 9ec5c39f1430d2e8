"""Shared auth for an app that embeds jobgate: a `UserResolver` names the caller from the
host's own session or token, so the host's users are jobgate's owners without a second
login.

The resolver is asked first on every API request and stream (SSE and WebSocket: the
browser sends the host's cookies with them on the same origin). It answers
`(name, is_admin)` or None; on None jobgate's own auth decides, as without a resolver
(bearer token, stream ticket, or the anonymous admin when `[auth] enabled = false`).
A name seen for the first time becomes a jobgate user without a password (the store keeps
an owner's row: download links and `jobgate user list` look it up); its admin right is the
resolver's on every request.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable
from typing import Protocol, TypeAlias

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from jobgate.auth import Principal
from jobgate.model import USER_NAME
from jobgate.store.base import Conflict, Store, User

log = logging.getLogger("jobgate.api")

#: What a resolver answers: the user's name (1-64 letters, digits, `_ - . @`) and whether
#: they are an admin (who sees and manages everyone's jobs); None: not one of the host's.
ResolvedUser: TypeAlias = "tuple[str, bool] | None"


class UserResolver(Protocol):
    """`resolver(connection) -> (name, is_admin) | None`, plain or `async def`.

    `connection` is Starlette's `HTTPConnection`: a `Request` on HTTP routes and SSE, a
    `WebSocket` on `/api/ws`; both have `.cookies`, `.headers` and (behind the host's
    `SessionMiddleware`) `.session`. A plain function runs in a thread (it may block on
    the host's database), an `async def` on the event loop. None lets jobgate's own auth
    decide. An exception in it is the host's bug: it is logged and answered 500.
    """

    def __call__(self, connection: HTTPConnection, /
                 ) -> ResolvedUser | Awaitable[ResolvedUser]: ...


async def resolve(resolver: UserResolver, store: Store, connection: HTTPConnection
                  ) -> Principal | None:
    """The principal `resolver` names for `connection` (its user row made on first sight),
    or None when it answers None."""
    if inspect.iscoroutinefunction(resolver) or \
            inspect.iscoroutinefunction(getattr(resolver, "__call__", None)):  # noqa: B004 - an async __call__
        answer = resolver(connection)
    else:
        answer = await run_in_threadpool(resolver, connection)
    if inspect.isawaitable(answer):
        answer = await answer
    if answer is None:
        return None
    if not (isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], str)
            and isinstance(answer[1], bool)):
        raise TypeError(f"user_resolver must answer (name, is_admin) or None, "
                                f"got {type(answer).__name__}")
    name, admin = answer
    if not USER_NAME.fullmatch(name):
        raise ValueError(f"user_resolver answered the name {name[:80]!r}: a jobgate "
                                "user name is 1-64 letters, digits, '_', '-', '.', '@'")
    user = await _owner(store, name, admin)
    return Principal(User(name, admin, None, user.created_at))


async def _owner(store: Store, name: str, admin: bool) -> User:
    """The stored user `name`, made (without a password) if there is none yet."""
    user = await store.get_user(name)
    if user is not None:
        return user
    try:
        made = await store.add_user(name, None, admin)
    except Conflict:  # another request (or server) made it just now
        again = await store.get_user(name)
        if again is None:  # made and removed again in between: try no further
            raise
        return again
    log.info("user %s from the host's user_resolver: added as a jobgate user", name)
    return made
