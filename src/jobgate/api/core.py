"""What every part of the HTTP API shares: the Services on `app.state`, the lifespan that
builds them, errors in the contract's shape, the guards on every request, and the
dependencies that name the caller.

No input yields a 500: every refusal is an ApiError (or an exception of the queue mapped
here) answered as a 4xx with a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote_plus, unquote_to_bytes

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from jobgate.arguments import ArgumentError
from jobgate.auth import Authenticator, AuthError, Principal, load_or_create_key
from jobgate.config import Settings
from jobgate.model import IllegalMove
from jobgate.queue import JobQueue
from jobgate.ratelimit import RateLimiter, RateLimits, retry_after
from jobgate.resolver import UserResolver, resolve
from jobgate.sanitize import checked_text, scrub, shown, stored_text, text_problem
from jobgate.store import store_for_url
from jobgate.store.base import Conflict, NotFound, QueueFull, User
from jobgate.stream import Hub
from jobgate.worker import Worker

log = logging.getLogger("jobgate.api")


class ApiError(Exception):
    """An error response: status, a stable code, a message for people."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


#: Every string the API takes (body fields, query parameters, headers) refuses NULs and
#: lone surrogates with a 422 naming the field; `_QueryText` does it for query strings.
SafeStr = Annotated[str, AfterValidator(checked_text)]


@dataclass
class Services:
    """What the routes share: built by the lifespan, kept as `app.state.services`."""

    settings: Settings
    queue: JobQueue
    worker: Worker | None
    started_at: float
    auth: Authenticator
    hub: Hub
    limits: RateLimits
    resolver: UserResolver | None = None  # the host app's users (`jobgate.embed`)


def lifespan(settings: Settings, run_worker: bool, resolver: UserResolver | None = None
             ) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: opens the store and builds its Services at start-up, runs an
    embedded worker unless told not to, and closes them all at shutdown."""

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        store = store_for_url(settings.storage.url, settings.storage.durability)
        queue = JobQueue(settings, store)
        await queue.open()
        key = await asyncio.to_thread(load_or_create_key, settings.data_path)
        auth = Authenticator(store, key, settings.auth.token_ttl, settings.auth.ticket_ttl)
        hub = Hub(queue, settings)
        await hub.start()
        worker = Worker(queue) if run_worker else None
        task = asyncio.create_task(worker.run()) if worker else None
        app.state.services = Services(settings, queue, worker, time.time(), auth, hub,
                                      RateLimits.from_settings(settings.rate_limits),
                                      resolver)
        try:
            yield
        finally:
            await hub.stop()
            if worker is not None and task is not None:
                worker.stop()
                await task
            await queue.close()

    return run


def install_guards(app: FastAPI, settings: Settings, uncapped: tuple[str, ...] = ()) -> None:
    """The error handlers (every error in the contract's shape) and the middleware that
    refuses bodies over `[server] max_request_kb` (but to POSTs on the paths of `uncapped`,
    which stream their bodies and limit them themselves) and query strings that are not
    text."""
    _install_errors(app)
    app.add_middleware(_BodyLimit, limit_bytes=settings.server.max_request_kb * 1024,
                       uncapped=frozenset(uncapped))
    app.add_middleware(_QueryText)


class _QueryText:
    """Refuse a query string holding a NUL or text that is not UTF-8 (a lone surrogate
    among it) with 422, naming the parameter, before any route sees it: once, for every
    route, as the API's models do for body fields."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (problem := _query_problem(scope["query_string"])):
            await _error(422, "invalid_request", problem[1], field=problem[0])(
                scope, receive, send)
            return
        await self.app(scope, receive, send)


def _query_problem(query: bytes) -> tuple[str, str] | None:
    """(parameter, why) for the first query parameter that is not storable text."""
    if not query:
        return None
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        label = shown(unquote_plus(name.decode("latin-1"), errors="replace"), 64)[1:-1]
        for part in (name, value):
            raw = unquote_to_bytes(part.replace(b"+", b" "))
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return label, f"{label}: must be valid UTF-8 text"
            if (why := text_problem(text)) is not None:
                return label, f"{label}: {why}"
    return None


def _route_path(scope: Any) -> str:
    """The request's path inside this app: without the prefix it is mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root + "/") else path


class _BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """Refuse request bodies over the limit with 413, by Content-Length or as they stream."""

    def __init__(self, app: Any, limit_bytes: int, uncapped: frozenset[str] = frozenset()
                 ) -> None:
        self.app, self.limit, self.uncapped = app, limit_bytes, uncapped

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST" and
                                       _route_path(scope) in self.uncapped):
            await self.app(scope, receive, send)
            return
        too_large = _error(413, "too_large", f"request body over {self.limit // 1024} KB")
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            await too_large(scope, receive, send)
            return
        seen = 0
        started = exceeded = False

        async def counting_receive() -> Any:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                exceeded = True
                raise _BodyTooLarge
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a body cut short gives way to the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if exceeded and not started:
            await too_large(scope, receive, send)


def client_ip(request: Request) -> str:
    """The client's address: the socket's, or what a proxy of `[server] trusted_proxies`
    forwarded (uvicorn's proxy headers)."""
    return request.client.host if request.client else "unknown"


def limit(limiter: RateLimiter, key: str, what: str) -> None:
    """429 with Retry-After when `limiter` refuses one more request for `key`."""
    wait = limiter.hit(key)
    if wait > 0:
        rate = limiter.rate
        assert rate is not None  # a limiter without a rate never refuses
        raise ApiError(429, "rate_limited", f"too many {what}: at most {rate.count} per "
                       f"{rate.per_s:g} s; retry in {retry_after(wait)} s",
                       retry_after_s=retry_after(wait))


def services_of(connection: HTTPConnection) -> Services:
    """The Services of the app that a request or WebSocket came to."""
    found: Services = connection.app.state.services
    return found


# The bearer token, declared as OpenAPI's security scheme (the docs' "Authorize" button);
# the header itself is read as it came, for the messages of `Authenticator.bearer`.
_BEARER = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")


async def _principal(request: Request,
                     _: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None
                     ) -> Principal:
    services = services_of(request)
    if (hosted := await host_principal(services, request)) is not None:
        return hosted
    if not services.settings.auth.enabled:
        return Principal(User(services.settings.auth.anonymous_user, admin=True))
    try:
        return await services.auth.bearer(request.headers.get("authorization"))
    except AuthError as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None


async def host_principal(services: Services, connection: HTTPConnection) -> Principal | None:
    """The caller as the host app's `user_resolver` names them (None: no resolver, or it
    does not know them, and jobgate's own auth decides)."""
    if services.resolver is None:
        return None
    return await resolve(services.resolver, services.queue.store, connection)


async def _user(principal: Annotated[Principal, Depends(_principal)]) -> User:
    return principal.user


#: The caller, from the bearer token (anyone, as an admin, when auth is off).
CurrentPrincipal = Annotated[Principal, Depends(_principal)]
CurrentUser = Annotated[User, Depends(_user)]


_ID_TEXT = re.compile(r"[0-9A-Za-z_-]{1,64}")


def no_job(job_id: str) -> ApiError:
    """The 404 for an id that names no job the caller may see: the id is echoed only if it
    looks like one (never control characters, invalid text or a whole page of it)."""
    shown_id = job_id if _ID_TEXT.fullmatch(job_id) else "with that id"
    return ApiError(404, "not_found", f"no job {shown_id}")


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """The contract's error shape, with Retry-After on 429 and WWW-Authenticate on 401."""
    return _error(status, code, message, **extra)


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """Every error answer is built here: what it quotes of the request is made valid text
    (a lone surrogate would fail the UTF-8 encoding of the answer itself)."""
    message, extra = stored_text(message), scrub(extra)
    headers = {}
    if status == 429:
        headers["Retry-After"] = str(extra.pop("retry_after_s", 5))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status,
                        headers=headers)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, **exc.extra)

    @app.exception_handler(ArgumentError)
    async def argument_error(request: Request, exc: ArgumentError) -> JSONResponse:
        return _error(422, "invalid_argument", str(exc), field=exc.field)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(429, "queue_full", str(exc))

    @app.exception_handler(IllegalMove)
    async def illegal(request: Request, exc: IllegalMove) -> JSONResponse:
        return _error(409, "illegal_state", str(exc))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, "not_found", str(exc))

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return _error(409, "conflict", str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query",
                                                                       "header", "path"))
        where = shown(where, 64)[1:-1]  # a key of the request's own may be anything
        status = 400 if first.get("type") == "json_invalid" else 422
        why = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        if first.get("type") == "string_unicode":  # pydantic's words for a lone surrogate
            why = text_problem("\ud800") or why
        message = f"{where}: {why}" if where else why
        return _error(status, "invalid_request", message, field=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                 413: "too_large", 415: "unsupported_media_type"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"),
                      str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal error; the server log has the details")
