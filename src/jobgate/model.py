"""The job, its states, the legal moves between them and the dispatch order."""

from __future__ import annotations

import datetime as dt
import functools
import math
import mimetypes
import os
import re
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from jobgate.sanitize import scrub, stored_text


class State(StrEnum):
    """Where a job is in its life. Values are the JSON names of the contract."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: What a user's name may be (checked when one is added; the config's `[notify.users]`
#: is checked against it at start, without the weight of the auth module).
USER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")

FINAL = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED})
ACTIVE = frozenset({State.QUEUED, State.RUNNING})

#: The only moves a job may make; every store write is checked against this table.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.CANCELLED, State.FAILED}),
    State.RUNNING: frozenset({State.COMPLETED, State.FAILED, State.CANCELLED, State.QUEUED}),
    State.COMPLETED: frozenset(),
    State.FAILED: frozenset({State.QUEUED}),
    State.CANCELLED: frozenset({State.QUEUED}),
}
# queued→failed exists for `start_timeout` and failed dependencies: a job that can never
# start must end, and "cancelled" would wrongly say somebody asked for it.


class IllegalMove(Exception):
    """A state change the transition table forbids (HTTP 409)."""

    def __init__(self, job_id: str, src: State, dst: State) -> None:
        super().__init__(f"job {job_id} is {src.value}: cannot move it to {dst.value}")
        self.job_id, self.src, self.dst = job_id, src, dst


def check_move(job_id: str, src: State, dst: State) -> None:
    """Raise IllegalMove unless TRANSITIONS allows src → dst."""
    if dst not in TRANSITIONS[src]:
        raise IllegalMove(job_id, src, dst)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every pair of digits, by the 10 bits it stands for: an id is 13 lookups, not 26 steps.
_DIGIT_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_SHIFTS = tuple(range(120, -1, -10))


class _IdClock:
    """Keeps ids of one process increasing within a millisecond (a monotonic ULID)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last = 0

    def next(self, ms: int) -> int:
        with self.lock:
            n = (ms << 80) | int.from_bytes(os.urandom(10), "big")
            if n <= self.last:
                n = self.last + 1  # same (or an earlier) millisecond: count up from the last
            self.last = n
            return n


_ids = _IdClock()


def new_id(now_s: float | None = None) -> str:
    """A 26-character ULID: 48 bits of milliseconds, 80 random bits; sorts by creation,
    also among ids made in the same millisecond by one process."""
    ms = int((time.time() if now_s is None else now_s) * 1000)
    n = _ids.next(ms)
    return "".join([_DIGIT_PAIRS[(n >> shift) & 1023] for shift in _PAIR_SHIFTS])


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC with milliseconds, or None."""
    if ts is None:
        return None
    return _iso(ts)


@functools.lru_cache(maxsize=64)  # a batch stamps all its jobs with one time
def _iso(ts: float) -> str:
    # What datetime's isoformat(timespec="milliseconds") gives, at a fraction of its cost
    # (every event carries a time or two): the whole second is formatted once.
    seconds = math.floor(ts)
    micros = round((ts - seconds) * 1e6)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    return f"{_iso_second(seconds)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=64)
def _iso_second(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_iso(text: str) -> float:
    """ISO-8601 (a naive time is taken as UTC) to epoch seconds; ValueError if malformed."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


DispatchKey = tuple[int, int, str]


@dataclass(frozen=True, slots=True)
class Output:
    """A file a job left in its folder: its name (a path relative to the folder), its size
    when the run ended, its content type (from the name) and whether it is `partial`: left
    by a run that did not complete, so not the job's result."""

    name: str
    size: int = 0
    content_type: str = "application/octet-stream"
    partial: bool = False

    def to_json(self) -> dict[str, Any]:
        """The entry of a job's `outputs`, as the API, events and the store show it."""
        return {"name": _text(self.name), "size": self.size,
                "content_type": self.content_type, "partial": self.partial}

    @classmethod
    def from_json(cls, value: Any) -> Output:
        """An entry as stored: an object of `to_json`, or a plain name (what jobgate stored
        before outputs carried their size; such a file's size and type are not known)."""
        if isinstance(value, str):
            return cls(stored_text(value), content_type=content_type(value))
        if not isinstance(value, dict):
            return cls(stored_text(str(value)))
        name = stored_text(str(value.get("name", "")))
        size = value.get("size")
        kind = value.get("content_type")
        return cls(name, size if isinstance(size, int) and not isinstance(size, bool) else 0,
                   kind if isinstance(kind, str) else content_type(name),
                   value.get("partial") is True)


def content_type(name: str) -> str:
    """The content type a file's name suggests (`application/octet-stream` if none)."""
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def outputs_from_json(value: Any) -> list[Output]:
    """A job's outputs as stored (a list of entries, old or new: `Output.from_json`)."""
    return [Output.from_json(v) for v in value] if isinstance(value, list) else []


@dataclass
class Job:
    """One unit of work. Times are epoch seconds; `to_json` renders the contract's shape."""

    id: str
    kind: str
    owner: str
    args: dict[str, Any]
    priority: int = 0
    state: State = State.QUEUED
    progress: float | None = None
    message: str | None = None
    attempt: int = 0
    max_attempts: int = 1
    created_at: float = 0.0
    run_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    worker: str | None = None
    memory_mb: int = 0
    peak_memory_mb: float | None = None
    depends_on: list[str] = field(default_factory=list)
    unique_key: str | None = None
    outputs: list[Output] = field(default_factory=list)
    # Bookkeeping the contract does not show.
    vt: int = 0  # virtual time for fair sharing between users; see scheduler.py
    lease_token: int = 0  # fencing token: bumped by every claim, checked by every finish
    lease_expires_at: float | None = None
    cancel_requested: bool = False
    pid: int | None = None  # process group of a running command, to reap orphans
    idempotency_key: str | None = None

    def but(self, **changes: Any) -> Job:
        """A copy with `changes` (field names, unchecked): `dataclasses.replace` runs
        `__init__` over every field, and a worker copies each job it runs several times."""
        copy = Job.__new__(Job)
        copy.__dict__.update(self.__dict__, **changes)
        return copy

    @property
    def dispatch_key(self) -> DispatchKey:
        """Sort key of the dispatch order: priority first, then fair turn, then age."""
        return (-self.priority, self.vt, self.id)

    def to_json(self, position: int | None = None) -> dict[str, Any]:
        """The job as the API and events show it. What a job's code or an older version
        may have stored unsafely (a lone surrogate, NaN) is shown safely (`scrub`)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "owner": self.owner,
            "args": scrub(self.args) if self.args else self.args,
            "priority": self.priority,
            "state": self.state.value,
            "position": position if self.state is State.QUEUED else None,
            "progress": self.progress if self.progress is None or math.isfinite(self.progress)
            else None,
            "message": _text(self.message),
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "created_at": iso(self.created_at),
            "run_at": iso(self.run_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "result": None if self.result is None else scrub(self.result),
            "error": _text(self.error),
            "worker": self.worker,
            "memory_mb": self.memory_mb,
            "peak_memory_mb": self.peak_memory_mb,
            "depends_on": self.depends_on,
            "unique_key": _text(self.unique_key),
            "outputs": [o.to_json() for o in self.outputs],
        }


def _text(value: str | None) -> str | None:
    return value if value is None or value.isascii() else stored_text(value)


class EventType(StrEnum):
    """Every event's `type`, as the contract names it. Members are `str`, so they compare
    equal to the types of stored events and go into JSON as their value."""

    QUEUED = "job.queued"
    STARTED = "job.started"
    PROGRESS = "job.progress"
    LOG = "job.log"
    RETRYING = "job.retrying"
    COMPLETED = "job.completed"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"
    QUEUE_STATS = "queue.stats"  # live only, never stored: the queue's numbers
    STREAM_RESET = "stream.reset"  # to one stream: what it missed is gone, reload
    # A schedule's firing (schedules.py): its job submitted; none (its unique_key job still
    # runs, or missed while no node ran); or none because it could not be (owner unknown,
    # arguments refused, queue full). Stored, with the schedule's owner, no job_id.
    SCHEDULE_FIRED = "schedule.fired"
    SCHEDULE_SKIPPED = "schedule.skipped"
    SCHEDULE_FAILED = "schedule.failed"
    BATCH_CREATED = "batch.created"  # a batch of jobs was submitted (batches.py)
    BATCH_COMPLETED = "batch.completed"  # the last job of a batch ended (its state says how)
    # A webhook or notification of a job's end (deliveries.py): sent, to be tried again,
    # or given up.
    DELIVERY_SUCCEEDED = "delivery.succeeded"
    DELIVERY_RETRYING = "delivery.retrying"
    DELIVERY_FAILED = "delivery.failed"
    # An operator's control (controls.py): stored, no job_id or owner; admins see them.
    QUEUE_PAUSED = "queue.paused"
    QUEUE_RESUMED = "queue.resumed"
    LIMITS_CHANGED = "limits.changed"
    NODE_DRAINED = "node.drained"
    NODE_UNDRAINED = "node.undrained"


#: A job ended for good: it is in a final state after it.
FINAL_EVENTS = frozenset({EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED})
#: A job is queued after it (submitted, retried, recovered, or waiting out a backoff).
QUEUED_EVENTS = frozenset({EventType.QUEUED, EventType.RETRYING})
#: A job changed state: each is one move of the transition table (see `event_type`).
STATE_EVENTS = FINAL_EVENTS | QUEUED_EVENTS | {EventType.STARTED}
#: A run ended, for good or to be tried again: its slot is free after it.
RUN_END_EVENTS = FINAL_EVENTS | {EventType.RETRYING}
#: Stored with a job, numbered by `seq`; the others are made for a stream as it goes.
JOB_EVENTS = STATE_EVENTS | {EventType.PROGRESS, EventType.LOG}
#: Stored too, about a schedule (no job_id; `job` in the data names the job fired).
SCHEDULE_EVENTS = frozenset({EventType.SCHEDULE_FIRED, EventType.SCHEDULE_SKIPPED,
                             EventType.SCHEDULE_FAILED})
#: A delivery of a job's end was tried (stored, with the job's id and owner).
DELIVERY_EVENTS = frozenset({EventType.DELIVERY_SUCCEEDED, EventType.DELIVERY_RETRYING,
                             EventType.DELIVERY_FAILED})

#: An operator changed the controls (each carries the whole new `controls`).
CONTROL_EVENTS = frozenset({EventType.QUEUE_PAUSED, EventType.QUEUE_RESUMED,
                            EventType.LIMITS_CHANGED, EventType.NODE_DRAINED,
                            EventType.NODE_UNDRAINED})

_STATE_EVENT = {
    State.QUEUED: EventType.QUEUED,
    State.RUNNING: EventType.STARTED,
    State.COMPLETED: EventType.COMPLETED,
    State.FAILED: EventType.FAILED,
    State.CANCELLED: EventType.CANCELLED,
}


def event_type(src: State | None, dst: State) -> EventType:
    """The event a transition emits: `job.retrying` for running→queued, else `job.<dst>`."""
    if src is State.RUNNING and dst is State.QUEUED:
        return EventType.RETRYING
    return _STATE_EVENT[dst]


@dataclass(frozen=True)
class Event:
    """Something that happened, in the contract's shape once `to_json` renders it."""

    seq: int
    type: str
    ts: float
    job_id: str | None
    owner: str | None
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "seq": self.seq, "ts": iso(self.ts)}
        if self.job_id is not None:
            out["job_id"] = self.job_id
        out.update(self.data)
        return out


def event_data(job: Job) -> dict[str, Any]:
    """What a state event carries: the fields a change can touch (the rest stay as read)."""
    data: dict[str, Any] = {  # `_value_`: the member's value without the descriptor's cost
        "state": job.state._value_, "kind": job.kind, "owner": job.owner,
        "attempt": job.attempt, "max_attempts": job.max_attempts, "message": job.message,
        "progress": job.progress,
    }
    if job.state is State.QUEUED:
        data.update(priority=job.priority, run_at=iso(job.run_at), vt=job.vt)
    elif job.state is State.RUNNING:
        data.update(worker=job.worker, started_at=iso(job.started_at))
    else:
        data.update(finished_at=iso(job.finished_at), error=job.error, result=job.result,
                    outputs=[o.to_json() for o in job.outputs],
                    peak_memory_mb=job.peak_memory_mb)
    return data
