"""The public Python client of jobgate's HTTP API: `Client` (sync) and `AsyncClient`.

    from jobgate import Client, RateLimited

    with Client("http://127.0.0.1:8000", token=TOKEN) as jobs:
        job = jobs.submit("compress", {"input": "film.mkv"}, idempotency_key="film-1")
        for event in jobs.follow(job.id):       # resumes across a server restart
            print(event.type, event.data.get("progress"))
        done = jobs.wait(job.id, timeout_s=600)

Answers are typed (`JobInfo`, `Page`, `StreamEvent`); every refusal is a `ClientError` of the
class its status and code say (`RemoteNotFound`, `Forbidden`, `RemoteQueueFull` with
`retry_after_s`, ...). `RemoteNotFound`, `RemoteConflict` and `RemoteQueueFull` are also
the embedded queue's `NotFound`, `Conflict` and `QueueFull`, so one `except` serves a
program that talks to either.

Both clients share everything but the transport: requests are built and answers parsed
(into the types of `sdk_types`) by the functions of this module; SSE frames are read by
`_Frames` and resumed by `_Resume`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx

from jobgate.model import EventType, State
from jobgate.sdk_types import (
    ClientError,
    JobInfo,
    Page,
    RateLimited,
    StreamEvent,
    Unavailable,
    error_of,
    unreachable,
)

#: A dropped event stream is retried this long (a restart) before `Unavailable`.
RECONNECT_FOR_S = 60.0
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.2, 5.0
_POLL_S = 0.5
_CHUNK = 1 << 16


# --- requests, shared by both clients -------------------------------------------------

def _submit_body(kind: str, args: dict[str, Any] | None, priority: int | None,
                 run_at: str | None, depends_on: builtins.list[str] | None,
                 unique_key: str | None, webhook_url: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "args": args or {}}
    for key, value in (("priority", priority), ("run_at", run_at),
                       ("depends_on", depends_on), ("unique_key", unique_key),
                       ("webhook_url", webhook_url)):
        if value is not None:
            body[key] = value
    return body


def _list_params(state: State | str | None, kind: str | None, owner: str | None,
                 limit: int | None, cursor: str | None) -> dict[str, Any]:
    params = {"state": state.value if isinstance(state, State) else state, "kind": kind,
              "owner": owner, "limit": limit, "cursor": cursor}
    return {k: v for k, v in params.items() if v is not None}


def _answer(response: httpx.Response) -> Any:
    """The JSON of a successful answer (None for 204), or the mapped error raised."""
    if response.status_code >= 400:
        raise error_of(response)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def _page(data: dict[str, Any]) -> Page:
    return Page([JobInfo.from_json(j) for j in data.get("jobs", [])], data.get("next"))


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _stream_path(job_id: str | None) -> str:
    return f"/api/jobs/{job_id}/events" if job_id is not None else "/api/events"


class _Frames:
    """SSE lines in, events out: `feed(line)` returns an Event when a frame ends."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._id: int | None = None

    def feed(self, line: str) -> StreamEvent | None:
        if line == "":
            data, frame_id = self._data, self._id
            self._data, self._id = [], None
            if not data:
                return None  # a comment (keep-alive) only
            try:
                parsed = json.loads("\n".join(data))
            except ValueError:
                return None
            return StreamEvent.from_json(parsed, frame_id) if isinstance(parsed, dict) else None
        if line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
        elif line.startswith("id:"):
            with contextlib.suppress(ValueError):
                self._id = int(line[3:].strip())
        return None


class _Resume:
    """Where a stream is and how long it has been trying to get back: the last seq seen
    (sent as `Last-Event-ID`; anything at or before it is a duplicate, dropped), back-off
    between attempts, and the end."""

    def __init__(self, url: str, last_event_id: int | None, job_stream: bool,
                 reconnect_for_s: float) -> None:
        self.url, self.last, self.job_stream = url, last_event_id, job_stream
        self.reconnect_for_s = reconnect_for_s
        self.failing_since: float | None = None
        self.backoff_s = _BACKOFF_FIRST_S
        self.ended = False

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": str(self.last)} if self.last is not None else {}

    def connected(self) -> None:
        self.failing_since, self.backoff_s = None, _BACKOFF_FIRST_S

    def take(self, event: StreamEvent) -> bool:
        """Whether to yield `event` (not a duplicate); notes its seq and a job's end."""
        if event.seq is not None:
            if self.last is not None and event.seq <= self.last \
                    and event.type != EventType.STREAM_RESET:
                return False
            self.last = event.seq
        if self.job_stream and event.final:
            self.ended = True
        return True

    def failed(self, exc: Exception) -> float:
        """The wait before the next attempt; raises `Unavailable` once it is too long."""
        now = time.monotonic()
        self.failing_since = self.failing_since or now
        if now - self.failing_since >= self.reconnect_for_s:
            raise unreachable(self.url, exc) from exc
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            return exc.retry_after_s
        wait, self.backoff_s = self.backoff_s, min(self.backoff_s * 2, _BACKOFF_MAX_S)
        return wait


def _transient(exc: ClientError) -> bool:
    """A refusal a stream waits out (a server starting, too many streams just now)."""
    return isinstance(exc, (Unavailable, RateLimited)) or exc.status >= 500


# --- the sync client ------------------------------------------------------------------

class Client:
    """jobgate's HTTP API at `url` as the user of `token` (sync; a context manager)."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30,
                 reconnect_for_s: float = RECONNECT_FOR_S) -> None:
        self.url = url.rstrip("/")
        self.reconnect_for_s = reconnect_for_s
        self.http = httpx.Client(base_url=self.url, headers=_headers(token),
                                 timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request: its JSON answer, or the mapped error raised."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        return _answer(response)

    def submit(self, kind: str, args: dict[str, Any] | None = None, *,
               priority: int | None = None, run_at: str | None = None,
               depends_on: builtins.list[str] | None = None, unique_key: str | None = None,
               webhook_url: str | None = None, idempotency_key: str | None = None
               ) -> JobInfo:
        """Submit a job; with `idempotency_key`, a repeat returns the first job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = _submit_body(kind, args, priority, run_at, depends_on, unique_key, webhook_url)
        return JobInfo.from_json(self.call("POST", "/api/jobs", json=body, headers=headers))

    def get(self, job_id: str) -> JobInfo:
        """One job (`RemoteNotFound` for none, or one of someone else's)."""
        return JobInfo.from_json(self.call("GET", f"/api/jobs/{job_id}"))

    def list(self, state: State | str | None = None, kind: str | None = None,
             owner: str | None = None, limit: int | None = None, cursor: str | None = None
             ) -> Page:
        """One page of jobs, newest first."""
        return _page(self.call("GET", "/api/jobs",
                               params=_list_params(state, kind, owner, limit, cursor)))

    def iter_jobs(self, state: State | str | None = None, kind: str | None = None,
                  owner: str | None = None, limit: int | None = None) -> Iterator[JobInfo]:
        """Every job the filters match, page after page (`limit`: per page)."""
        cursor: str | None = None
        while True:
            page = self.list(state, kind, owner, limit, cursor)
            yield from page.jobs
            if not page.next or not page.jobs:
                return
            cursor = page.next

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a queued or running job."""
        return JobInfo.from_json(self.call("POST", f"/api/jobs/{job_id}/cancel"))

    def retry(self, job_id: str) -> JobInfo:
        """Queue a failed or cancelled job again."""
        return JobInfo.from_json(self.call("POST", f"/api/jobs/{job_id}/retry"))

    def delete(self, job_id: str) -> None:
        """Delete a finished job with its logs and outputs."""
        self.call("DELETE", f"/api/jobs/{job_id}")

    def logs(self, job_id: str, after: int = 0) -> builtins.list[tuple[int, str]]:
        """The job's log lines after line `after`, as (n, line)."""
        data = self.call("GET", f"/api/jobs/{job_id}/logs", params={"after": after})
        return [(int(x["n"]), str(x["line"])) for x in data["lines"]]

    def queue(self) -> dict[str, Any]:
        """The queue's statistics (`GET /api/queue`)."""
        found: dict[str, Any] = self.call("GET", "/api/queue")
        return found

    def upload(self, path: str | Path) -> dict[str, Any]:
        """Upload a file (streamed from disk); `ref` of the answer is what a `path`
        argument takes."""
        path = Path(path)
        with path.open("rb") as file:
            found: dict[str, Any] = self.call("POST", "/api/uploads",
                                              files={"file": (path.name, file)})
        return found

    def download(self, job_id: str, name: str, dest_path: str | Path) -> Path:
        """Stream the output `name` of the job into `dest_path` (written whole or not at
        all: a partial file is removed)."""
        dest = Path(dest_path)
        part = dest.with_name(dest.name + ".part")
        try:
            with self.http.stream("GET", f"/api/jobs/{job_id}/outputs/{name}") as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_of(response)
                with part.open("wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
            part.replace(dest)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        finally:
            part.unlink(missing_ok=True)
        return dest

    def events(self, job_id: str | None = None, last_event_id: int | None = None,
               deadline: float | None = None) -> Iterator[StreamEvent]:
        """The event stream (one job's, or every event the caller may see), resumed from
        the last seq across dropped connections and server restarts: nothing lost, nothing
        twice. A `stream.reset` event means what was missed is gone: reload. One job's
        stream ends after its final event. `deadline` (a `time.monotonic()` time) raises
        TimeoutError when reached."""
        resume = _Resume(self.url, last_event_id, job_id is not None, self.reconnect_for_s)
        path = _stream_path(job_id)
        while not resume.ended:
            frames = _Frames()
            try:
                timeout = httpx.Timeout(self.http.timeout.connect,
                                        read=_read_timeout(deadline))
                with self.http.stream("GET", path, headers=resume.headers(),
                                      timeout=timeout) as response:
                    if response.status_code == 204:
                        return  # a finished job with nothing after our last seq
                    if response.status_code >= 400:
                        response.read()
                        raise error_of(response)
                    resume.connected()
                    for line in response.iter_lines():
                        _check_deadline(deadline)
                        event = frames.feed(line)
                        if event is not None and resume.take(event):
                            yield event
                            if resume.ended:
                                return
                # The server ended the stream before the job's end: it stopped. Resume.
                wait = resume.failed(ConnectionError("stream ended"))
            except httpx.ReadTimeout as exc:
                _check_deadline(deadline)
                wait = resume.failed(exc)
            except httpx.TransportError as exc:
                wait = resume.failed(exc)
            except ClientError as exc:
                if not _transient(exc):
                    raise
                wait = resume.failed(exc)
            _check_deadline(deadline, wait)
            time.sleep(wait)

    def follow(self, job_id: str, last_event_id: int | None = None) -> Iterator[StreamEvent]:
        """The job's events until its final one (see `events`)."""
        return self.events(job_id, last_event_id)

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobInfo:
        """The job once it is finished: watched on its event stream, polled if the stream
        fails. TimeoutError after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        job = self.get(job_id)
        if job.done:
            return job
        try:
            for _event in self.events(job_id, deadline=deadline):
                pass
        except (ClientError, httpx.HTTPError):
            pass  # polled below
        while True:
            job = self.get(job_id)
            if job.done:
                return job
            _check_deadline(deadline, _POLL_S)
            time.sleep(_POLL_S)


def _read_timeout(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.05, deadline - time.monotonic())


def _check_deadline(deadline: float | None, wait_s: float = 0) -> None:
    if deadline is not None and time.monotonic() + wait_s >= deadline:
        raise TimeoutError("timed out waiting on the job")


# --- the async client -----------------------------------------------------------------

class AsyncClient:
    """The same as `Client`, for asyncio (`async with`, `await`, `async for`)."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30,
                 reconnect_for_s: float = RECONNECT_FOR_S) -> None:
        self.url = url.rstrip("/")
        self.reconnect_for_s = reconnect_for_s
        self.http = httpx.AsyncClient(base_url=self.url, headers=_headers(token),
                                      timeout=timeout_s)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request: its JSON answer, or the mapped error raised."""
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        return _answer(response)

    async def submit(self, kind: str, args: dict[str, Any] | None = None, *,
                     priority: int | None = None, run_at: str | None = None,
                     depends_on: builtins.list[str] | None = None,
                     unique_key: str | None = None, webhook_url: str | None = None,
                     idempotency_key: str | None = None) -> JobInfo:
        """Submit a job; with `idempotency_key`, a repeat returns the first job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = _submit_body(kind, args, priority, run_at, depends_on, unique_key, webhook_url)
        return JobInfo.from_json(await self.call("POST", "/api/jobs", json=body,
                                                 headers=headers))

    async def get(self, job_id: str) -> JobInfo:
        """One job (`RemoteNotFound` for none, or one of someone else's)."""
        return JobInfo.from_json(await self.call("GET", f"/api/jobs/{job_id}"))

    async def list(self, state: State | str | None = None, kind: str | None = None,
                   owner: str | None = None, limit: int | None = None,
                   cursor: str | None = None) -> Page:
        """One page of jobs, newest first."""
        return _page(await self.call("GET", "/api/jobs",
                                     params=_list_params(state, kind, owner, limit, cursor)))

    async def iter_jobs(self, state: State | str | None = None, kind: str | None = None,
                        owner: str | None = None, limit: int | None = None
                        ) -> AsyncIterator[JobInfo]:
        """Every job the filters match, page after page (`limit`: per page)."""
        cursor: str | None = None
        while True:
            page = await self.list(state, kind, owner, limit, cursor)
            for job in page.jobs:
                yield job
            if not page.next or not page.jobs:
                return
            cursor = page.next

    async def cancel(self, job_id: str) -> JobInfo:
        """Cancel a queued or running job."""
        return JobInfo.from_json(await self.call("POST", f"/api/jobs/{job_id}/cancel"))

    async def retry(self, job_id: str) -> JobInfo:
        """Queue a failed or cancelled job again."""
        return JobInfo.from_json(await self.call("POST", f"/api/jobs/{job_id}/retry"))

    async def delete(self, job_id: str) -> None:
        """Delete a finished job with its logs and outputs."""
        await self.call("DELETE", f"/api/jobs/{job_id}")

    async def logs(self, job_id: str, after: int = 0) -> builtins.list[tuple[int, str]]:
        """The job's log lines after line `after`, as (n, line)."""
        data = await self.call("GET", f"/api/jobs/{job_id}/logs", params={"after": after})
        return [(int(x["n"]), str(x["line"])) for x in data["lines"]]

    async def queue(self) -> dict[str, Any]:
        """The queue's statistics (`GET /api/queue`)."""
        found: dict[str, Any] = await self.call("GET", "/api/queue")
        return found

    async def upload(self, path: str | Path) -> dict[str, Any]:
        """Upload a file (streamed from disk); `ref` of the answer is what a `path`
        argument takes."""
        path = Path(path)
        with path.open("rb") as file:
            found: dict[str, Any] = await self.call("POST", "/api/uploads",
                                                    files={"file": (path.name, file)})
        return found

    async def download(self, job_id: str, name: str, dest_path: str | Path) -> Path:
        """Stream the output `name` of the job into `dest_path` (whole or not at all)."""
        dest = Path(dest_path)
        part = dest.with_name(dest.name + ".part")
        try:
            async with self.http.stream("GET", f"/api/jobs/{job_id}/outputs/{name}"
                                        ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_of(response)
                with part.open("wb") as out:
                    async for chunk in response.aiter_bytes(_CHUNK):
                        out.write(chunk)
            part.replace(dest)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        finally:
            part.unlink(missing_ok=True)
        return dest

    async def events(self, job_id: str | None = None, last_event_id: int | None = None
                     ) -> AsyncIterator[StreamEvent]:
        """The event stream, resumed across restarts (see `Client.events`; bound it in
        time with `asyncio.timeout`)."""
        resume = _Resume(self.url, last_event_id, job_id is not None, self.reconnect_for_s)
        path = _stream_path(job_id)
        while not resume.ended:
            frames = _Frames()
            try:
                timeout = httpx.Timeout(self.http.timeout.connect, read=None)
                async with self.http.stream("GET", path, headers=resume.headers(),
                                            timeout=timeout) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_of(response)
                    resume.connected()
                    async for line in response.aiter_lines():
                        event = frames.feed(line)
                        if event is not None and resume.take(event):
                            yield event
                            if resume.ended:
                                return
                wait = resume.failed(ConnectionError("stream ended"))
            except httpx.TransportError as exc:
                wait = resume.failed(exc)
            except ClientError as exc:
                if not _transient(exc):
                    raise
                wait = resume.failed(exc)
            await asyncio.sleep(wait)

    def follow(self, job_id: str, last_event_id: int | None = None) -> AsyncIterator[StreamEvent]:
        """The job's events until its final one."""
        return self.events(job_id, last_event_id)

    async def wait(self, job_id: str, timeout_s: float | None = None) -> JobInfo:
        """The job once it is finished (its event stream, else polling); TimeoutError
        after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            job = await self.get(job_id)
            if job.done:
                return job
            with contextlib.suppress(ClientError, httpx.HTTPError):
                async for _event in self.events(job_id):
                    pass
            while not (job := await self.get(job_id)).done:
                await asyncio.sleep(_POLL_S)
            return job
