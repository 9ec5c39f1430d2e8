"""Deliveries (webhooks and notifications): which ones a job's final state makes, and
what an attempt's result makes of one. Pure rules, no I/O; both backends call them.

A job's end is announced to the targets that ask for its final state: the job's own
`webhook_url` (given at submit), its kind's (`[kinds.X] webhook_url`, `notify`), its
owner's (`[notify.users] NAME`) and the global ones (`[webhooks] url`, `[notify] urls`); a
URL named by more than one of them is sent to once. Each (job end, target) is one row of the
outbox, written in the transaction of the final state itself (`planned`, `outbox_rows`),
then sent by a worker's side loop (`deliverer.py`) until it succeeds or grows older than
`max_age` (`after_attempt`).

A target the config names is kept in the outbox as `config:<hash of its URL>`, not as the
URL: notification URLs carry secrets (bot tokens, passwords), and the database should not.
It is found again in the config when sent (`Rules.resolve`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobgate.model import FINAL, EventType, Job, State, iso, new_id

WEBHOOK = "webhook"
NOTIFY = "notify"
CHANNELS = (WEBHOOK, NOTIFY)

PENDING = "pending"  # waiting for its next attempt (or in one: see `lease_expires_at`)
DELIVERED = "delivered"
FAILED = "failed"  # given up: refused for good, or still failing after max_age

#: The final states a webhook announces unless `[webhooks] events` says otherwise.
DEFAULT_WEBHOOK_ON = frozenset(FINAL)
#: ... and a notification, unless `[notify] on` does.
DEFAULT_NOTIFY_ON = frozenset({State.COMPLETED, State.FAILED})
#: Seconds before each retry: the 1st failed attempt waits the first, and so on; the last
#: repeats until `max_age`.
DEFAULT_BACKOFF_S = (10.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
DEFAULT_MAX_AGE_S = 86400.0
CONFIG_PREFIX = "config:"
_EXCERPT_CHARS = 500  # of a response body, kept with each attempt


def config_ref(url: str) -> str:
    """How the outbox names a target the config gives: a hash of its URL."""
    return CONFIG_PREFIX + hashlib.sha256(url.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Target:
    """Where a job's end goes: a channel, where it was configured (`job`, `kind`, `user`,
    `global`), what the outbox keeps of it (`ref`) and which final states it wants."""

    channel: str
    source: str
    ref: str
    on: frozenset[State]


@dataclass(frozen=True)
class Rules:
    """What the config asks for, as the store's rules read it (`rules_from` builds it
    from settings)."""

    global_targets: tuple[Target, ...] = ()
    kind_targets: Mapping[str, tuple[Target, ...]] = field(default_factory=dict)
    job_webhook_on: frozenset[State] = DEFAULT_WEBHOOK_ON
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S
    max_age_s: float = DEFAULT_MAX_AGE_S
    # config_ref -> the URL it stands for (resolved when sent; never stored)
    urls: Mapping[str, str] = field(default_factory=dict)
    # A user's own targets (`[notify.users]`): only the config names them, never a request.
    user_targets: Mapping[str, tuple[Target, ...]] = field(default_factory=dict)

    def targets(self, kind: str, webhook_url: str | None, owner: str = "") -> list[Target]:
        """Every target of a job of `kind` owned by `owner` (with its own `webhook_url`, if
        any), most general first."""
        out = [*self.global_targets, *self.kind_targets.get(kind, ()),
               *self.user_targets.get(owner, ())]
        if webhook_url:
            out.append(Target(WEBHOOK, "job", webhook_url, self.job_webhook_on))
        return out

    def resolve(self, target: str) -> str | None:
        """The URL an outbox row's target stands for; None if the config no longer has it."""
        if target.startswith(CONFIG_PREFIX):
            return self.urls.get(target)
        return target


@dataclass(frozen=True)
class Attempt:
    """One try of a delivery, as recorded."""

    n: int
    started_at: float
    duration_ms: float
    status: int | None = None  # the HTTP status (a webhook), None without an answer
    response: str | None = None  # the first characters of the answer's body
    error: str | None = None  # why it failed, if it did
    worker: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "at": iso(self.started_at), "duration_ms": self.duration_ms,
                "status": self.status, "response": self.response, "error": self.error,
                "worker": self.worker}


@dataclass(frozen=True)
class Delivery:
    """One row of the outbox: a job's end, to one target."""

    id: str  # also the webhook's `webhook-id` (the same on every retry of the message)
    job_id: str
    owner: str
    channel: str
    source: str
    target: str
    event: str  # the final state's event (`job.completed`, …)
    payload: Any  # the job as GET /api/jobs/{id} showed it at its end
    state: str = PENDING
    attempts: int = 0
    created_at: float = 0.0
    due_at: float = 0.0
    lease_expires_at: float | None = None
    worker: str | None = None
    finished_at: float | None = None
    last_status: int | None = None
    last_response: str | None = None
    last_error: str | None = None
    tries: tuple[Attempt, ...] = ()  # filled in by `Store.deliveries`

    def to_json(self, shown_target: str) -> dict[str, Any]:
        """The delivery as the API shows it; `shown_target` is its target made safe to
        show (`webhooks.shown_url`, `notify.shown_url`)."""
        return {"id": self.id, "job_id": self.job_id, "channel": self.channel,
                "source": self.source, "target": shown_target, "event": self.event,
                "state": self.state, "attempts": self.attempts,
                "created_at": iso(self.created_at),
                "next_attempt_at": iso(self.due_at) if self.state == PENDING else None,
                "finished_at": iso(self.finished_at), "last_status": self.last_status,
                "last_response": self.last_response, "last_error": self.last_error,
                "history": [a.to_json() for a in self.tries]}


# --- at a job's end ------------------------------------------------------------------------
def planned(rules: Rules, ended: Iterable[Job], webhooks: Mapping[str, str]
            ) -> list[tuple[Job, Target]]:
    """The deliveries the final states of `ended` make: (job, target) for each target that
    wants its state. `webhooks` are the jobs' own webhook URLs, by job id.

    One URL reached several ways (the global list and a user's, a kind's and a job's own
    webhook) is one delivery: a person told twice of one end would take it for two jobs.
    The first way listed names its source."""
    out: list[tuple[Job, Target]] = []
    for job in ended:
        if job.state not in FINAL:
            continue
        seen: set[tuple[str, str]] = set()
        for target in rules.targets(job.kind, webhooks.get(job.id), job.owner):
            key = (target.channel, rules.resolve(target.ref) or target.ref)
            if job.state in target.on and key not in seen:
                seen.add(key)
                out.append((job, target))
    return out


def outbox_rows(plan: Iterable[tuple[Job, Target]], jobs: Mapping[str, Job], now: float
                ) -> list[Delivery]:
    """The outbox rows of a plan, each carrying its job as read whole now (`jobs`), in the
    shape GET /api/jobs/{id} shows (a finished job has no position)."""
    out = []
    for ended, target in plan:
        job = jobs.get(ended.id, ended)
        out.append(Delivery(new_id(now), job.id, job.owner, target.channel, target.source,
                            target.ref, EVENT_OF[job.state], job.to_json(None), PENDING, 0,
                            now, now))
    return out


EVENT_OF = {State.COMPLETED: EventType.COMPLETED.value, State.FAILED: EventType.FAILED.value,
            State.CANCELLED: EventType.CANCELLED.value}


# --- after an attempt ----------------------------------------------------------------------
@dataclass(frozen=True)
class Settled:
    """What an attempt makes of its delivery: the columns to write and the event."""

    fields: dict[str, Any]
    event: EventType
    data: dict[str, Any]


def excerpt(text: str | None) -> str | None:
    """The part of a response body kept with an attempt."""
    if text is None:
        return None
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "…"


def next_delay_s(rules: Rules, attempts: int) -> float:
    """How long to wait after the `attempts`-th failed attempt."""
    backoff = rules.backoff_s or DEFAULT_BACKOFF_S
    return backoff[min(attempts, len(backoff)) - 1]


def after_attempt(rules: Rules, delivery: Delivery, attempt: Attempt, now: float,
                  permanent: bool = False) -> Settled:
    """Delivered after a good attempt; else tried again after the backoff, unless the
    failure is `permanent` (a target no longer configured, a refused address) or the next
    try would come past `max_age` from the job's end: then failed for good."""
    common = {"attempts": attempt.n, "lease_expires_at": None, "last_status": attempt.status,
              "last_response": attempt.response, "last_error": attempt.error}
    # Under one key: a client merging a job's events into the job (the dashboard does)
    # must not take a delivery's state or error for the job's.
    about = {"id": delivery.id, "channel": delivery.channel, "source": delivery.source,
             "attempt": attempt.n, "status": attempt.status, "error": attempt.error}
    if attempt.ok:
        return Settled({**common, "state": DELIVERED, "finished_at": now},
                       EventType.DELIVERY_SUCCEEDED, {"delivery": {**about, "state": DELIVERED}})
    due = now + next_delay_s(rules, attempt.n)
    if permanent or due > delivery.created_at + rules.max_age_s:
        return Settled({**common, "state": FAILED, "finished_at": now},
                       EventType.DELIVERY_FAILED, {"delivery": {**about, "state": FAILED}})
    return Settled({**common, "state": PENDING, "due_at": due}, EventType.DELIVERY_RETRYING,
                   {"delivery": {**about, "state": PENDING,
                                 "next_attempt_in_s": round(due - now, 3)}})


def holds(delivery: Delivery | None, attempt: int) -> bool:
    """Whether the result of attempt `attempt` still counts: the delivery is pending and
    nobody claimed it again since (its lease ran out, another node took the next try)."""
    return delivery is not None and delivery.state == PENDING and delivery.attempts == attempt
