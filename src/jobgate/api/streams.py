"""The event routes: `GET /api/events`, `GET /api/jobs/{id}/events` (Server-Sent Events)
and `WS /api/ws`, over the hub in `stream.py`.

SSE frames are `id: <seq>` + `data: <event JSON>` for stored events, `data:` alone for
`queue.stats`; there are no `event:` lines, so a browser's `EventSource.onmessage` gets
every frame. `Last-Event-ID` (or `?last_event_id=`, for a browser opening a new
EventSource with a fresh ticket) resumes. Browsers cannot set headers on EventSource or
WebSocket: they pass a single-use `?ticket=` from `POST /api/auth/ticket` instead.

WebSocket messages from the client (JSON objects):
`{"subscribe": "jobs"}` (every job the caller may see), `{"subscribe": "job", "id": ID}`,
`{"subscribe": "queue"}` (queue.stats), each optionally with `"resume": SEQ`;
`{"unsubscribe": …}` alike; `{"resume": SEQ}` (for the subscriptions made so far and
after); `{"ping": ANY}` → `{"type": "pong", "ping": ANY}`. Answers: `subscribed`,
`unsubscribed`, `pong`, `error` (`{"type": "error", "error": {"code", "message"}}`),
`stream.reset`; events have the same JSON as over SSE. Close codes: 4001 token expired,
4008 too slow, 1001 server going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request, WebSocket
from fastapi.responses import Response, StreamingResponse
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from jobgate.api.core import (
    ApiError,
    Services,
    error_response,
    host_principal,
    no_job,
    services_of,
)
from jobgate.auth import AuthError, Principal
from jobgate.connection import current_transport
from jobgate.model import (
    FINAL,
    FINAL_EVENTS,
    QUEUED_EVENTS,
    STATE_EVENTS,
    Event,
    EventType,
    State,
    iso,
)
from jobgate.sanitize import INT64_MAX, shown, text_problem
from jobgate.store.base import User
from jobgate.stream import (
    Frame,
    Hub,
    Stream,
    TooManyStreams,
    opened,
    visible_to,
)
from jobgate.tasks import cancel_and_wait

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CLOSE_EXPIRED, CLOSE_SLOW, CLOSE_GOING_AWAY = 4001, 4008, 1001
_CLOSE_WAIT_S = 15.0
_ABORT_GRACE_S = 1.0  # an ended SSE response has this long to finish, then it is cut
_WRITE_BYTES = 65536  # SSE bytes per write: a client's unsent bytes stay near this
_CLOCK_SLACK_S = 5.0  # events' times come from several processes' clocks


async def stream_principal(services: Services, connection: HTTPConnection,
                           authorization: str | None, ticket: str | None) -> Principal:
    """Who opens a stream: the host app's user (`user_resolver`: its cookies come with
    EventSource and WebSocket), a single-use ticket (browsers) or a bearer header."""
    if ticket is None and (hosted := await host_principal(services, connection)) is not None:
        return hosted
    if not services.settings.auth.enabled:
        return Principal(User(services.settings.auth.anonymous_user, admin=True))
    try:
        if ticket is not None:
            return await services.auth.redeem(ticket)
        return await services.auth.bearer(authorization)
    except AuthError as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None


_SEQ_TEXT = re.compile(r"[0-9]{1,18}")  # ASCII digits: `isdigit()` takes "²", int() does not


def _resume_point(header: str | None, query: str | None) -> int | None:
    text = header if header is not None else query
    if text is None or text == "":
        return None
    text = text.strip()
    if not _SEQ_TEXT.fullmatch(text):
        raise ApiError(400, "invalid_request", f"Last-Event-ID: expected an event seq "
                       f"(a whole number), got {shown(text, 40)}", field="Last-Event-ID")
    return int(text)


def _open(services: Services, principal: Principal, sse: bool = True, **kwargs: Any) -> Stream:
    # Open streams end when their login is revoked.
    services.hub.login_check = services.auth.current
    try:
        stream = services.hub.open(principal, **kwargs)
    except TooManyStreams as exc:
        raise ApiError(429, "too_many_streams", str(exc), retry_after_s=5) from None
    transport = current_transport() if sse else None  # a WebSocket closes by itself
    if transport is not None:
        # A dropped client that reads nothing is cut off, not left holding the socket.
        stream.abort_on_end(transport.abort, _ABORT_GRACE_S)
    return stream


def _pieces(data: bytes) -> Iterator[bytes]:
    """`data` in writes of at most `_WRITE_BYTES`: each waits for the client to take the
    one before, so a client never has more than about that much sent but unread."""
    if len(data) <= _WRITE_BYTES:
        yield data
        return
    view = memoryview(data)
    for start in range(0, len(data), _WRITE_BYTES):
        yield bytes(view[start:start + _WRITE_BYTES])


def _reset_frame(hub: Hub) -> Frame:
    # With an id, so a browser that reconnects after it resumes from here, not from before.
    return Frame.control({"type": EventType.STREAM_RESET, "seq": hub.head}, seq=hub.head)


def _closing(reason: str | None) -> bytes:
    return f": closed: {reason or 'closed'}\n\n".encode()


def install(app: FastAPI) -> None:
    """Add the SSE and WebSocket routes to `app` (built by `jobgate.api.create_app`)."""

    @app.get("/api/events", tags=["events"], response_class=StreamingResponse)
    async def events(
        request: Request,
        ticket: Annotated[str | None, Query(max_length=200)] = None,
        last_event_id: Annotated[str | None, Query(max_length=40)] = None,
        positions: bool = False,
        authorization: Annotated[str | None, Header()] = None,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        """Server-Sent Events: every event the caller may see (own jobs; an admin: all)
        and `queue.stats`. With `?positions=true` each `queue.stats` also carries
        `positions` (job id → place, null while not due) of the caller's queued jobs (the
        newest 1,000): sent whenever anyone's job starts, ends or is cancelled, so a
        page's places never wait for an event of its own jobs. `Last-Event-ID` resumes."""
        services = services_of(request)
        after = _resume_point(last_event_id_header, last_event_id)
        principal = await stream_principal(services, request, authorization, ticket)
        hub = services.hub
        stream = _open(services, principal, match=visible_to(principal), stats=True,
                       positions=positions)
        try:
            reset = after is not None and await hub.too_old(after)
            await hub.seed_positions(stream)
        except BaseException:
            stream.close()
            raise

        async def body() -> AsyncIterator[bytes]:
            with opened(stream):
                if reset:
                    yield _reset_frame(hub).sse
                elif after is not None:
                    async for event in hub.history(after, stream.opened_head, stream.match):
                        for piece in _pieces(Frame.of_event(event).sse):
                            yield piece
                if hub.stats_frame is not None:
                    yield hub.stats_for(hub.stats_frame, stream).sse
                async for chunk in _live(stream, stream.opened_head):
                    yield chunk

        return StreamingResponse(body(), media_type="text/event-stream", headers=_SSE_HEADERS)

    @app.get("/api/jobs/{job_id}/events", tags=["events"], response_class=StreamingResponse)
    async def job_events(
        job_id: str,
        request: Request,
        ticket: Annotated[str | None, Query(max_length=200)] = None,
        last_event_id: Annotated[str | None, Query(max_length=40)] = None,
        authorization: Annotated[str | None, Header()] = None,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        """Server-Sent Events of one job: its kept events so far (or those after
        `Last-Event-ID`), then live ones, ending after its final event. While it is
        queued, `queue.stats` frames carry its `position`. A job already finished with
        nothing after `Last-Event-ID` answers 204 (which tells EventSource to stop)."""
        services = services_of(request)
        after = _resume_point(last_event_id_header, last_event_id)
        principal = await stream_principal(services, request, authorization, ticket)
        hub = services.hub
        user = principal.user
        stream = _open(services, principal, job_id=job_id,
                       match=lambda e: e.job_id == job_id and (user.admin or e.owner == user.name))
        try:
            job = await services.queue.get(job_id) if len(job_id) <= 64 \
                and text_problem(job_id) is None else None
            if job is None or (job.owner != user.name and not user.admin):
                raise no_job(job_id)
            reset = after is not None and await hub.too_old(after)
            # From the start: nothing of this job happened before it was made.
            start = after if after is not None else \
                await hub.seq_before(job.created_at - _CLOCK_SLACK_S)
            replay = [] if reset else [
                e async for e in hub.history(start, stream.opened_head, stream.match)]
            states = [e.type for e in replay if e.type in STATE_EVENTS]
            stream.job_queued = states[-1] in QUEUED_EVENTS if states else \
                job.state is State.QUEUED
            # Finished, and nothing newer on its way: after the replay there is no more.
            done = job.state in FINAL and not stream.pending_for(job_id)
            if done and not replay and not reset:
                stream.close()
                return Response(status_code=204)
        except BaseException:
            stream.close()
            raise

        async def body() -> AsyncIterator[bytes]:
            with opened(stream):
                if reset:
                    yield _reset_frame(hub).sse
                for event in replay:
                    for piece in _pieces(Frame.of_event(event).sse):
                        yield piece
                if done and not stream.pending_for(job_id):
                    return
                if stream.job_queued and hub.stats_frame is not None:
                    yield hub.position_frame(hub.stats_frame, job_id).sse
                async for chunk in _live(stream, stream.opened_head, end_job=job_id):
                    yield chunk

        return StreamingResponse(body(), media_type="text/event-stream", headers=_SSE_HEADERS)

    @app.websocket("/api/ws")
    async def websocket(ws: WebSocket) -> None:
        services = services_of(ws)
        origin = ws.headers.get("origin")
        allowed = services.settings.server.allowed_origins
        if not origin_allowed(origin, ws.headers.get("host"), allowed):
            await ws.send_denial_response(error_response(
                403, "forbidden_origin",
                f"origin {origin!r} is not allowed ([server] allowed_origins)"))
            return
        try:
            ticket = ws.query_params.get("ticket")
            principal = await stream_principal(services, ws, ws.headers.get("authorization"),
                                               ticket)
            stream = _open(services, principal, sse=False, match=lambda e: False)
        except ApiError as exc:
            await ws.send_denial_response(error_response(exc.status, exc.code, exc.message,
                                                         **exc.extra))
            return
        with opened(stream):
            await ws.accept()
            await _WsSession(services, ws, stream).run()


async def _live(stream: Stream, cursor: int, end_job: str | None = None
                ) -> AsyncIterator[bytes]:
    """SSE bytes of live frames after `cursor`; with `end_job`, ends after its final event.

    Frames that are already waiting go out together, in writes of up to `_WRITE_BYTES`: a
    burst (a log batch, its progress, the queue's stats) costs one send per client, not
    one per frame, and a big event is sent in pieces from the one copy every client
    shares. Frames leave the stream's buffer only as they are written, so what a slow
    client holds up is counted there (and drops it past `buffer_kb`) until it is sent.
    """
    frame = await stream.next()
    while frame is not None:
        out: list[bytes] = []
        size = 0
        item: Frame | None = frame
        while item is not None:
            if item.kind != "keepalive":
                stream.idle = False
            if item.seq is None or item.seq > cursor:  # else already sent by the replay
                cursor = item.seq if item.seq is not None else cursor
                if out and size + len(item.sse) > _WRITE_BYTES:
                    yield b"".join(out)
                    out, size = [], 0
                if len(item.sse) > _WRITE_BYTES:
                    for piece in _pieces(item.sse):
                        yield piece
                else:
                    out.append(item.sse)
                    size += len(item.sse)
                if end_job is not None and item.event is not None and \
                        item.event.type in FINAL_EVENTS and not stream.pending_for(end_job):
                    if out:
                        yield b"".join(out)
                    return
            item = stream.take()
        if out:
            yield b"".join(out)
        frame = await stream.next()
    yield _closing(stream.closed)


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """A browser's WebSocket may come from the allowed origins or this server's own pages;
    a client that sends no Origin is not a browser and is let through to the token check."""
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    return host is not None and origin in (f"http://{host}", f"https://{host}")


class _WsSession:
    """One WebSocket: a reader of commands and a writer of frames, both on `stream`."""

    def __init__(self, services: Services, ws: WebSocket, stream: Stream) -> None:
        self.services, self.ws, self.stream, self.hub = services, ws, stream, services.hub
        self.everything = False  # "jobs": every job the caller may see
        self.job_ids: set[str] = set()
        self.resume: int | None = None  # from a standalone {"resume": seq}
        self._visible = visible_to(stream.principal)
        stream.match = self._match

    def _match(self, event: Event) -> bool:
        if event.job_id in self.job_ids:
            return True
        return self.everything and self._visible(event)

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        writer = asyncio.create_task(self._write())
        done, pending = await asyncio.wait({reader, writer},
                                           return_when=asyncio.FIRST_COMPLETED)
        await cancel_and_wait(pending)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect | OSError):
                raise exc

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                text = (message.get("bytes") or b"").decode("utf-8", "replace")
            self.stream.push(Frame("command", text))

    async def _write(self) -> None:
        stream = self.stream
        while (frame := await stream.next()) is not None:
            if frame.kind == "command":
                await self._command(frame.text)
            elif frame.kind == "event":
                if frame.event is not None and self._match(frame.event) and \
                        frame.seq is not None and not stream.was_sent(frame.seq):
                    stream.mark_sent(frame.seq)
                    await self.ws.send_text(frame.text)
            elif frame.kind == "stats" and stream.stats:
                await self.ws.send_text(frame.text)
        reason = stream.closed or "closed"
        code = CLOSE_EXPIRED if "expired" in reason or "revoked" in reason else \
            CLOSE_SLOW if reason.startswith("too slow") else CLOSE_GOING_AWAY
        # The close frame queues behind what the transport still holds: give a slow reader
        # a while to take it, then give up (the connection goes when the handler returns).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason[:120]), _CLOSE_WAIT_S)

    async def _send(self, data: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps(data, separators=(",", ":")))

    async def _error(self, message: str, code: str = "invalid_request") -> None:
        await self._send({"type": "error", "error": {"code": code, "message": message}})

    async def _command(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's stack
            await self._error("expected a JSON object")
            return
        if not isinstance(msg, dict):
            await self._error("expected a JSON object")
            return
        resume = msg.get("resume")
        if resume is not None and (isinstance(resume, bool) or not isinstance(resume, int)
                                   or not 0 <= resume <= INT64_MAX):
            await self._error("resume: expected an event seq (a whole number)")
            return
        if "ping" in msg:
            await self._send({"type": "pong", "ping": msg["ping"], "ts": iso(time.time())})
        elif "subscribe" in msg:
            await self._subscribe(msg, resume)
        elif "unsubscribe" in msg:
            await self._unsubscribe(msg)
        elif resume is not None:
            if self.everything or self.job_ids or self.stream.stats:
                await self._replay(resume)
            else:
                self.resume = resume  # for the subscriptions that follow
        else:
            await self._error("expected subscribe, unsubscribe, resume or ping")

    async def _target(self, msg: dict[str, Any], verb: str) -> tuple[str, str | None] | None:
        what = msg[verb]
        if what not in ("job", "jobs", "queue"):
            await self._error(f"{verb}: expected 'job', 'jobs' or 'queue', got {shown(what)}")
            return None
        job_id = msg.get("id")
        if what == "job":
            if not isinstance(job_id, str) or not job_id or len(job_id) > 64:
                await self._error(f"{verb} job: expected an 'id'")
                return None
            if (problem := text_problem(job_id)) is not None:
                await self._error(f"{verb} job: id {problem}")
                return None
            if verb == "subscribe":
                job = await self.services.queue.get(job_id)
                user = self.stream.principal.user
                if job is None or (job.owner != user.name and not user.admin):
                    await self._error(no_job(job_id).message, "not_found")
                    return None
            return what, job_id
        return what, None

    async def _subscribe(self, msg: dict[str, Any], resume: int | None) -> None:
        target = await self._target(msg, "subscribe")
        if target is None:
            return
        what, job_id = target
        await self._follow(what, job_id, True)
        if what == "queue" and self.hub.stats_frame is not None:
            await self.ws.send_text(self.hub.stats_frame.text)
        point = resume if resume is not None else self.resume
        if point is not None and what != "queue":
            await self._replay(point)

    async def _unsubscribe(self, msg: dict[str, Any]) -> None:
        target = await self._target(msg, "unsubscribe")
        if target is None:
            return
        await self._follow(*target, False)

    async def _follow(self, what: str, job_id: str | None, on: bool) -> None:
        """Start (or stop) sending one job's, all own jobs' or the queue's events; say so."""
        if what == "job" and job_id is not None:
            if on:
                self.job_ids.add(job_id)
            else:
                self.job_ids.discard(job_id)
        elif what == "jobs":
            self.everything = on
        else:
            self.stream.stats = on
        verb = "subscribe" if on else "unsubscribe"
        await self._send({"type": f"{verb}d", verb: what, **({"id": job_id} if job_id else {})})

    async def _replay(self, after: int) -> None:
        """Stored events after `after` that the subscriptions take and were not sent yet."""
        if await self.hub.too_old(after):
            await self.ws.send_text(_reset_frame(self.hub).text)
            return
        async for event in self.hub.history(after, self.hub.head, self._match):
            if not self.stream.was_sent(event.seq):
                self.stream.mark_sent(event.seq)
                await self.ws.send_text(Frame.of_event(event).text)

