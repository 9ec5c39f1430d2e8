"""What jobgate's Python client answers and raises: `JobInfo`, `Page`, `StreamEvent` and the
`ClientError` family, with `error_of` mapping an HTTP error answer to its exception.

Kept apart from the transports in `sdk` so a program can type against these without
importing httpx's clients, and so each module stays one concept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from jobgate.model import FINAL, FINAL_EVENTS, State
from jobgate.store.base import Conflict, NotFound, QueueFull

# --- errors ---------------------------------------------------------------------------

class ClientError(Exception):
    """A refusal of the API (or no API to ask): `status` (0 when unreachable), the API's
    stable `code` and its `message`."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None
                 ) -> None:
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status, self.code, self.message, self.field = status, code, message, field


class Unauthorized(ClientError):
    """401: no token, or one the server does not accept (expired, revoked)."""


class Forbidden(ClientError):
    """403: the caller may not do this (not an admin, an expired download link)."""


class RemoteNotFound(ClientError, NotFound):
    """404: no such job (or one of someone else's), upload or output."""


class RemoteConflict(ClientError, Conflict):
    """409: an illegal state move (cancel a finished job, delete a running one) or a taken
    name."""


class InvalidRequest(ClientError):
    """400/422: bad input; `field` names the part of the request when the API says."""


class RateLimited(ClientError):
    """429: too many requests or streams; try again in `retry_after_s`."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(status, code, message, field)
        self.retry_after_s = retry_after_s


class RemoteQueueFull(RateLimited, QueueFull):
    """429 `queue_full`: a queue limit refuses the job; try again in `retry_after_s`."""


class Unavailable(ClientError):
    """503, or the server cannot be reached (status 0)."""


_BY_STATUS: dict[int, type[ClientError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: RemoteNotFound,
    409: RemoteConflict, 422: InvalidRequest, 503: Unavailable,
}


def error_of(response: httpx.Response) -> ClientError:
    """The exception an error answer stands for (its body read)."""
    status = response.status_code
    try:
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
        where = body.get("field")
    except (ValueError, KeyError, TypeError):
        code = "http_error"
        message = response.text.strip()[:200] or response.reason_phrase
        where = None
    if status == 429:
        cls = RemoteQueueFull if code == "queue_full" else RateLimited
        return cls(status, code, message, where, _retry_after(response))
    return _BY_STATUS.get(status, ClientError)(status, code, message,
                                               where if isinstance(where, str) else None)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def unreachable(url: str, exc: Exception) -> Unavailable:
    return Unavailable(0, "unreachable",
                       f"cannot reach jobgate at {url} ({exc.__class__.__name__}: {exc})")


# --- typed answers --------------------------------------------------------------------

@dataclass(frozen=True)
class JobInfo:
    """A job as the API shows it. Unknown keys are kept in `raw` (the whole answer)."""

    id: str
    kind: str
    owner: str
    state: State
    args: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    position: int | None = None
    eta_s: float | None = None
    remaining_s: float | None = None
    progress: float | None = None
    message: str | None = None
    error: str | None = None
    result: Any = None
    outputs: tuple[dict[str, Any], ...] = ()
    attempt: int = 0
    max_attempts: int = 1
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether the job is in a final state (completed, failed, cancelled)."""
        return self.state in FINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobInfo:
        """Parse the API's job object; keys this version does not know are ignored."""
        outputs = tuple(o if isinstance(o, dict) else {"name": o}
                        for o in data.get("outputs") or ())
        return cls(
            id=str(data["id"]), kind=str(data.get("kind", "")),
            owner=str(data.get("owner", "")), state=State(data["state"]),
            args=dict(data.get("args") or {}), priority=int(data.get("priority") or 0),
            position=data.get("position"), eta_s=data.get("eta_s"),
            remaining_s=data.get("remaining_s"), progress=data.get("progress"),
            message=data.get("message"), error=data.get("error"), result=data.get("result"),
            outputs=outputs, attempt=int(data.get("attempt") or 0),
            max_attempts=int(data.get("max_attempts") or 1),
            created_at=data.get("created_at"), started_at=data.get("started_at"),
            finished_at=data.get("finished_at"), raw=dict(data))


@dataclass(frozen=True)
class Page:
    """One page of `GET /api/jobs`: its jobs and the cursor of the next (None: the last)."""

    jobs: list[JobInfo]
    next: str | None


@dataclass(frozen=True)
class StreamEvent:
    """One event of a stream: `type` (`job.progress`, `stream.reset`, ...), `seq` (None
    for `queue.stats`, which are not stored), `ts`, `job_id`, and the whole JSON."""

    type: str
    seq: int | None
    ts: str | None
    job_id: str | None
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        """Whether this event ends its job (completed, failed, cancelled)."""
        return self.type in FINAL_EVENTS

    @classmethod
    def from_json(cls, data: dict[str, Any], frame_id: int | None = None) -> StreamEvent:
        """Parse one event's JSON (`frame_id`: the SSE `id:` line, when there was one)."""
        seq = data.get("seq")
        return cls(str(data.get("type", "")), seq if isinstance(seq, int) else frame_id,
                   data.get("ts"), data.get("job_id"), data)
