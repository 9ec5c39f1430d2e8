"""The HTTP API: a thin layer over `JobQueue`, errors in the contract's shape.

Every job route is owner-only (an admin sees all); someone else's job is a 404, so ids do
not leak. No input yields a 500: every refusal is a 4xx with a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote_plus, unquote_to_bytes

from fastapi import Depends, FastAPI, Header, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobgate.auth import Authenticator, AuthError, Principal, load_or_create_key
from jobgate.config import Settings
from jobgate.dashboard import add_dashboard
from jobgate.kinds import ArgumentError
from jobgate.model import FINAL, IllegalMove, Job, State, iso, parse_iso
from jobgate.queue import JobQueue
from jobgate.ratelimit import RateLimiter, RateLimits, retry_after
from jobgate.sanitize import INT64_MAX, checked_text, scrub, shown, stored_text, text_problem
from jobgate.store import store_for_url
from jobgate.store.base import Conflict, NotFound, QueueFull, User
from jobgate.stream import Hub, stats_json
from jobgate.worker import Worker, node_live_s

log = logging.getLogger("jobgate.api")


class ApiError(Exception):
    """An error response: status, a stable code, a message for people."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


#: Every string the API takes (body fields, query parameters, headers) refuses NULs and
#: lone surrogates with a 422 naming the field; `_QueryText` does it for query strings.
SafeStr = Annotated[str, AfterValidator(checked_text)]


class SubmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: SafeStr = Field(min_length=1, max_length=64)
    args: dict[SafeStr, Any] = Field(default_factory=dict)
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    run_at: Annotated[StrictStr, AfterValidator(checked_text)] | StrictInt | StrictFloat | \
        None = None
    unique_key: SafeStr | None = Field(default=None, min_length=1, max_length=200)
    depends_on: list[SafeStr] | None = Field(default=None, max_length=1000)
    webhook_url: SafeStr | None = Field(default=None, max_length=4096)
    # The memory this job reserves, in place of its kind's estimate (checked by the queue).
    memory_mb: StrictInt | None = None


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: SafeStr = Field(min_length=1, max_length=64)
    password: SafeStr = Field(min_length=1, max_length=1024)


class CleanBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    older_than_s: float = Field(default=0, ge=0, le=1e11, allow_inf_nan=False)


@dataclass
class App:
    """What the routes share: set up by the lifespan, reached through `request.app.state`."""

    settings: Settings
    queue: JobQueue
    worker: Worker | None
    started_at: float
    auth: Authenticator
    hub: Hub
    limits: RateLimits


def create_app(settings: Settings, run_worker: bool = True) -> FastAPI:
    """The ASGI app: opens the store at start-up, runs an embedded worker unless told not to."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = store_for_url(settings.storage.url, settings.storage.durability)
        queue = JobQueue(settings, store)
        await queue.open()
        key = await asyncio.to_thread(load_or_create_key, settings.data_path)
        auth = Authenticator(store, key, settings.auth.token_ttl, settings.auth.ticket_ttl)
        hub = Hub(queue, settings)
        await hub.start()
        worker = Worker(queue) if run_worker else None
        task = asyncio.create_task(worker.run()) if worker else None
        app.state.jg = App(settings, queue, worker, time.time(), auth, hub,
                           RateLimits.from_settings(settings.rate_limits))
        try:
            yield
        finally:
            await hub.stop()
            if worker is not None and task is not None:
                worker.stop()
                await task
            await queue.close()

    app = FastAPI(title="jobgate", version="0.1.0", lifespan=lifespan,
                  description="A job queue for heavy, long-running work shared by many people.")
    _install_errors(app)
    _install_routes(app, settings)
    add_dashboard(app)
    from jobgate import stream_api  # it builds on this module's App and errors

    stream_api.install(app)
    app.add_middleware(_BodyLimit, limit_bytes=settings.server.max_request_kb * 1024)
    app.add_middleware(_QueryText)
    return app


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


class _BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """Refuse request bodies over the limit with 413, by Content-Length or as they stream."""

    def __init__(self, app: Any, limit_bytes: int) -> None:
        self.app, self.limit = app, limit_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
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


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _limit(limiter: RateLimiter, key: str, what: str) -> None:
    """429 with Retry-After when `limiter` refuses one more request for `key`."""
    wait = limiter.hit(key)
    if wait > 0:
        rate = limiter.rate
        assert rate is not None  # a limiter without a rate never refuses
        raise ApiError(429, "rate_limited", f"too many {what}: at most {rate.count} per "
                       f"{rate.per_s:g} s; retry in {retry_after(wait)} s",
                       retry_after_s=retry_after(wait))


def _jg(request: Request) -> App:
    state: App = request.app.state.jg
    return state


# The bearer token, declared as OpenAPI's security scheme (the docs' "Authorize" button);
# the header itself is read as it came, for the messages of `Authenticator.bearer`.
_BEARER = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")


async def _principal(request: Request,
                     _: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None
                     ) -> Principal:
    jg = _jg(request)
    if not jg.settings.auth.enabled:
        return Principal(User(jg.settings.auth.anonymous_user, admin=True))
    try:
        return await jg.auth.bearer(request.headers.get("authorization"))
    except AuthError as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None


async def _user(principal: Annotated[Principal, Depends(_principal)]) -> User:
    return principal.user


CurrentPrincipal = Annotated[Principal, Depends(_principal)]
CurrentUser = Annotated[User, Depends(_user)]


_ID_TEXT = re.compile(r"[0-9A-Za-z_-]{1,64}")


def no_job(job_id: str) -> ApiError:
    """The 404 for an id that names no job the caller may see: the id is echoed only if it
    looks like one (never control characters, invalid text or a whole page of it)."""
    shown_id = job_id if _ID_TEXT.fullmatch(job_id) else "with that id"
    return ApiError(404, "not_found", f"no job {shown_id}")


async def _own_job(request: Request, job_id: str, user: User) -> Job:
    looked_up = len(job_id) <= 64 and text_problem(job_id) is None
    job = await _jg(request).queue.get(job_id) if looked_up else None
    if job is None or (job.owner != user.name and not user.admin):
        raise no_job(job_id)
    return job


def _install_routes(app: FastAPI, settings: Settings) -> None:
    _install_auth_routes(app, settings)
    @app.post("/api/jobs", status_code=201, tags=["jobs"])
    async def submit(body: SubmitBody, request: Request, user: CurrentUser,
                     idempotency_key: Annotated[SafeStr | None,
                                                Header(min_length=1, max_length=200)] = None
                     ) -> Response:
        """Submit a job; a repeated `Idempotency-Key` returns the first job (200)."""
        jg = _jg(request)
        _limit(jg.limits.submit_per_user, user.name, f"submits by {user.name}")
        _limit(jg.limits.submit_per_ip, _client_ip(request), "submits from this address")
        if body.depends_on:
            raise ApiError(422, "unsupported", "depends_on is not supported yet",
                           field="depends_on")
        if body.webhook_url:
            raise ApiError(422, "unsupported", "webhook_url is not supported yet",
                           field="webhook_url")
        spec = jg.queue.kind(body.kind)
        if body.priority is not None and body.priority > spec.priority and not user.admin:
            raise ApiError(403, "forbidden", "only an admin may raise a job's priority")
        run_at = _parse_run_at(body.run_at)
        if body.memory_mb is not None:
            jg.queue.check_memory(spec, body.memory_mb)
        if body.memory_mb is not None and not user.admin:
            estimate = (await jg.queue.kind_memory(spec)).estimate_mb
            if body.memory_mb < estimate:
                # Less reserved memory would let a job pass the budget: safe only by choice
                # of an admin, as raising a priority is.
                raise ApiError(403, "forbidden", f"only an admin may lower a job's memory_mb "
                               f"below its kind's estimate ({estimate} MB)",
                               field="memory_mb")
        job, created = await jg.queue.submit(
            user.name, body.kind, body.args, priority=body.priority, run_at=run_at,
            unique_key=body.unique_key, idempotency_key=idempotency_key,
            memory_mb=body.memory_mb)
        return JSONResponse(jg.queue.to_json(job), status_code=201 if created else 200)

    @app.get("/api/jobs", tags=["jobs"])
    async def list_jobs(
        request: Request, user: CurrentUser,
        state: State | None = None,
        kind: Annotated[SafeStr | None, Query(max_length=64)] = None,
        owner: Annotated[SafeStr | None, Query(max_length=64)] = None,
        cursor: Annotated[SafeStr | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """The caller's jobs, newest first (an admin: anyone's, or `owner`'s)."""
        jg = _jg(request)
        if owner is not None and owner != user.name and not user.admin:
            raise ApiError(403, "forbidden", "only an admin may list other users' jobs")
        who = owner if owner is not None else (None if user.admin else user.name)
        page = await jg.queue.store.list_jobs(who, state, kind, cursor, limit)
        return {"jobs": [jg.queue.to_json(j) for j in page.jobs], "next": page.next}

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str, request: Request, user: CurrentUser) -> dict[str, Any]:
        return _jg(request).queue.to_json(await _own_job(request, job_id, user))

    @app.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
    async def cancel(job_id: str, request: Request, user: CurrentUser) -> dict[str, Any]:
        """Cancel a queued job, or stop a running one's process (SIGTERM, then SIGKILL)."""
        jg = _jg(request)
        await _own_job(request, job_id, user)
        wait_s = jg.settings.worker.cancel_grace_s + 2 if jg.worker else 0
        return jg.queue.to_json(await jg.queue.cancel(job_id, wait_s=wait_s))

    @app.post("/api/jobs/{job_id}/retry", tags=["jobs"])
    async def retry(job_id: str, request: Request, user: CurrentUser) -> dict[str, Any]:
        jg = _jg(request)
        await _own_job(request, job_id, user)
        return jg.queue.to_json(await jg.queue.retry(job_id))

    @app.delete("/api/jobs/{job_id}", status_code=204, tags=["jobs"])
    async def delete(job_id: str, request: Request, user: CurrentUser) -> Response:
        job = await _own_job(request, job_id, user)
        if job.state not in FINAL:
            raise ApiError(409, "illegal_state",
                           f"job {job_id} is {job.state.value}: cancel it before deleting")
        await _jg(request).queue.delete(job_id)
        return Response(status_code=204)

    @app.get("/api/jobs/{job_id}/logs", tags=["jobs"])
    async def logs(job_id: str, request: Request, user: CurrentUser,
                   after: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict[str, Any]:
        """Log lines numbered from 1; pass the last `n` you have as `after`."""
        job = await _own_job(request, job_id, user)
        lines = await _jg(request).queue.store.logs(job_id, after, limit)
        return {"lines": [{"n": n, "line": stored_text(line)} for n, line in lines],
                "next": lines[-1][0] if lines else after, "state": job.state.value}

    @app.get("/api/jobs/{job_id}/outputs/{name:path}", tags=["jobs"])
    async def output(job_id: str, name: str, request: Request, user: CurrentUser) -> Response:
        await _own_job(request, job_id, user)
        folder = _jg(request).queue.job_dir(job_id).resolve()
        missing = ApiError(404, "not_found", f"job {job_id} has no output {shown(name)}")
        if text_problem(name) is not None:
            raise missing
        try:
            path = (folder / name).resolve()
            found = path.is_relative_to(folder) and path.is_file()
        except (OSError, ValueError):  # a name too long for the file system, a loop
            found = False
        if not found:
            raise missing
        return FileResponse(path, filename=Path(name).name)

    @app.get("/api/kinds", tags=["queue"])
    async def kinds(request: Request, user: CurrentUser) -> dict[str, Any]:
        """The kinds this server runs, with their argument schemas and memory: what a job
        submitted now reserves (`memory_estimate_mb`, `memory_estimate_from`) and the
        measured peaks of recent completed jobs (`peak_memory_*`)."""
        queue = _jg(request).queue
        return {"kinds": [{**k.schema(), **(await queue.kind_memory(k)).to_json()}
                          for k in settings.kinds.values()]}

    @app.get("/api/queue", tags=["queue"])
    async def queue_stats(request: Request, user: CurrentUser) -> dict[str, Any]:
        jg = _jg(request)
        # A user sees which nodes run their own jobs; an admin sees every job's node.
        nodes = await jg.queue.store.nodes(node_live_s(settings),
                                           None if user.admin else user.name)
        return stats_json(jg.queue, settings, await jg.queue.stats(), nodes)

    @app.post("/api/clean", tags=["queue"])
    async def clean(body: CleanBody, request: Request, user: CurrentUser) -> dict[str, Any]:
        """Delete finished jobs older than `older_than_s` (an admin: everyone's)."""
        count = await _jg(request).queue.clean(body.older_than_s,
                                               None if user.admin else user.name)
        return {"deleted": count}

    @app.get("/health", tags=["health"])
    async def health(request: Request) -> Response:
        jg = _jg(request)
        try:
            await asyncio.wait_for(jg.queue.store.next_run_at(), 5)
        except Exception as exc:  # any database trouble means not ready
            return JSONResponse({"status": "unavailable", "database": str(exc)}, 503)
        return JSONResponse({
            "status": "ok",
            "database": "ok",
            "worker": jg.worker.name if jg.worker else None,
            "running": len(jg.worker.running) if jg.worker else None,
            "uptime_s": round(time.time() - jg.started_at, 1),
        })


def _install_auth_routes(app: FastAPI, settings: Settings) -> None:
    @app.post("/api/auth/token", tags=["auth"])
    async def login(body: LoginBody, request: Request) -> dict[str, Any]:
        """Username and password → a bearer token (JWT) good for `[auth] token_ttl`."""
        jg = _jg(request)
        if not settings.auth.enabled:
            raise ApiError(400, "auth_disabled", "auth is disabled on this server: "
                           "no token is needed")
        # The client's address: the socket's, or what a proxy of
        # `[server] trusted_proxies` forwarded (uvicorn's proxy headers).
        limits, ip = jg.limits, _client_ip(request)
        # Logins and failures count per (user, address): a guesser elsewhere spends their
        # own allowance and waits longer after every miss, and cannot lock the user out;
        # one address guessing across many users waits too.
        key = f"{body.username}\0{ip}"
        wait = max(limits.bad_logins.wait_s(key), limits.bad_logins_per_ip.wait_s(ip))
        if wait > 0:
            raise ApiError(429, "rate_limited", f"too many failed logins: try again in "
                           f"{retry_after(wait)} s", retry_after_s=retry_after(wait))
        _limit(limits.login_per_ip, ip, "logins from this address")
        _limit(limits.login_per_user, key, f"logins as {body.username} from this address")
        user = await jg.auth.login(body.username, body.password)
        if user is None:
            limits.bad_logins.failed(key)
            limits.bad_logins_per_ip.failed(ip)
            raise ApiError(401, "unauthorized", "wrong user name or password")
        limits.bad_logins.succeeded(key)
        limits.bad_logins_per_ip.succeeded(ip)
        token, expires_at = jg.auth.issue(user)
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
        jg = _jg(request)
        return {"ticket": jg.auth.ticket(principal),
                "expires_in_s": round(settings.auth.ticket_ttl)}


_LAST_TIME_S = 253402300799.0  # 9999-12-31T23:59:59Z


def _parse_run_at(value: str | float | None) -> float | None:
    if value is None:
        return None
    try:
        ts = float(value) if isinstance(value, int | float) else parse_iso(value)
    except (ValueError, OverflowError):
        ts = math.nan
    if not 0 <= ts <= _LAST_TIME_S:
        raise ApiError(422, "invalid_argument",
                       "run_at: expected an ISO-8601 time (or epoch seconds) before year 10000",
                       field="run_at")
    return ts


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
