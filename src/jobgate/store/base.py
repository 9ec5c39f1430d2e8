"""The storage seam: what every backend persists and claims atomically.

The domain verbs in `queue.py` do the bookkeeping; a backend turns each call into one
transaction, takes every state change from `moves.py` (which checks it against
`model.TRANSITIONS`), and writes the event of every change in that same transaction, so an
event exists exactly when its change does.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobgate.batches import Batch
from jobgate.deliveries import Attempt, Delivery, Rules
from jobgate.eta import Snapshot
from jobgate.model import DispatchKey, Event, Job, Output, State
from jobgate.scheduler import Limits
from jobgate.schedules import Firing

if TYPE_CHECKING:
    from jobgate.controls import Change, Controls


class StoreError(Exception):
    """Base of the errors a store raises on purpose."""


class NotFound(StoreError):
    """No such job (or user)."""


class QueueFull(StoreError):
    """A queue limit refuses the job (HTTP 429)."""


class Conflict(StoreError):
    """A name or key already taken (HTTP 409)."""


@dataclass(frozen=True)
class Quota:
    """Limits checked when a job enters the queue."""

    max_queued: int | None = None
    per_user_queued: int | None = None


@dataclass(frozen=True)
class LogSize:
    """How much a job's log holds: `total` lines counted (numbered 1..total as produced),
    `dropped` the numbers (first, last) of those not kept (None: all kept)."""

    total: int
    dropped: tuple[int, int] | None = None


@dataclass(frozen=True)
class Outcome:
    """How a running job ended, reported by its worker and persisted by `finish`."""

    state: State
    result: Any = None
    error: str | None = None
    message: str | None = None
    peak_memory_mb: float | None = None
    outputs: list[Output] = field(default_factory=list)
    retry_at: float | None = None  # set when the job goes back to the queue
    hand_back: bool = False  # going back because its worker stops: the attempt is not counted


@dataclass(frozen=True)
class User:
    name: str
    admin: bool
    password_hash: str | None = None
    # When this user was made: a user removed and made again under the same name is
    # another user, whom the first one's login tokens do not stand for.
    created_at: float = 0.0
    # Login generation: a login JWT issued at a lower one is refused (auth.py).
    generation: int = 0


@dataclass(frozen=True)
class UserInfo:
    """A user as `jobgate user list` shows them: never a password hash."""

    name: str
    admin: bool
    created_at: float
    generation: int
    has_password: bool
    queued: int  # their jobs queued now
    running: int  # their jobs running now
    tokens: int  # their API tokens


@dataclass(frozen=True)
class TokenInfo:
    """An API token as it is listed: its public id, never the secret or its hash."""

    id: str
    user: str
    name: str | None
    created_at: float
    last_used_at: float | None


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next: str | None


@dataclass(frozen=True)
class Stats:
    counts: dict[str, int]
    memory_reserved_mb: int
    finished_last_min: int
    avg_duration_s: float | None
    success_rate: float | None
    waiting: int = 0  # queued jobs waiting for their dependencies (in counts' "queued" too)
    completed_last_15min: int = 0
    completed_last_hour: int = 0
    # Jobs that ended (completed, failed, cancelled) by their end state, over the last
    # hour and the last day (`ended_counts`).
    ended_last_hour: dict[str, int] = field(default_factory=dict)
    ended_last_day: dict[str, int] = field(default_factory=dict)
    # When the queued job that has been due the longest became due (its `run_at`; jobs
    # waiting for their dependencies left out): None when none is due.
    oldest_due_at: float | None = None


HOUR_S, DAY_S = 3600.0, 86400.0
#: The end states `Stats.ended_last_hour` and `ended_last_day` count.
ENDED_STATES = ("completed", "failed", "cancelled")


def ended_counts(rows: Iterable[tuple[Any, Any, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """`Stats.ended_last_hour` and `ended_last_day` from rows of (state, jobs that ended in
    the last day, of which in the last hour); every end state is there, 0 if none."""
    hour, day = dict.fromkeys(ENDED_STATES, 0), dict.fromkeys(ENDED_STATES, 0)
    for state, in_day, in_hour in rows:
        day[str(state)], hour[str(state)] = int(in_day or 0), int(in_hour or 0)
    return hour, day


@dataclass(frozen=True)
class Span:
    """A finished job that ran, as `Store.recent_spans` reads it: its queue wait
    (`started_at - created_at`), its (last) run time, and its attempts."""

    kind: str
    wait_s: float
    run_s: float
    attempt: int


@dataclass(frozen=True)
class Durations:
    """A histogram of one kind's finished jobs over one span (queue wait or run time):
    `buckets[i]` counts the jobs whose span was at most the i-th bound asked for."""

    count: int
    total_s: float
    buckets: tuple[int, ...]


@dataclass(frozen=True)
class MetricCounts:
    """What `GET /metrics` reads of the database at a scrape (see `Store.metric_counts`)."""

    jobs: dict[tuple[str, str], int]  # (state, kind) -> jobs in the table
    deliveries: dict[tuple[str, str], int]  # (channel, state) -> rows of the outbox
    waits: dict[str, Durations]  # by kind: started_at - created_at
    runs: dict[str, Durations]  # by kind: finished_at - started_at


@dataclass(frozen=True)
class Node:
    """A worker node as it registered itself. `heartbeat_at` is set by the store on every
    `heartbeat`; `busy` (how many jobs it runs now) and `running` (their ids) are filled in
    by `nodes`. `running_rss_mb` (what its running jobs' process trees hold, MB) and
    `memory_available_mb` (what its machine has available, MB) are as the node measured
    them for its last heartbeat; None when not known (a node of an older version)."""

    name: str
    host: str
    pid: int
    slots: int
    version: str
    started_at: float
    heartbeat_at: float = 0.0
    busy: int = 0
    running: tuple[str, ...] = ()
    running_rss_mb: float | None = None
    memory_available_mb: int | None = None


@dataclass(frozen=True)
class Upload:
    """A file a user uploaded whole (its bytes are in the data folder, see uploads.py)."""

    id: str
    owner: str
    name: str  # the file name the uploader gave, sanitised
    size: int  # bytes
    sha256: str  # hex
    created_at: float


@dataclass(frozen=True)
class ScheduleState:
    """What the database keeps of a schedule: the spec its next due time was worked out
    from (`Schedule.spec`), that time, and its last firing (by due time), if any."""

    name: str
    spec: str
    next_due: float
    last: Firing | None = None


EventListener = Callable[[list[Event]], None]


def hand_own(listeners: list[EventListener], events: list[Event]) -> None:
    """`listen_own`'s delivery: a listener that fails is logged, never the commit's caller's
    failure (its change is committed)."""
    for callback in listeners:
        try:
            callback(events)
        except Exception:
            logging.getLogger("jobgate.store").exception("an own-events listener failed")


class Store(ABC):
    """One database. Backends: `SqliteStore` and `PostgresStore` (same conformance tests).
    What happens to a job is decided once, in `moves.py`; a backend reads, calls the rule
    and writes."""

    @abstractmethod
    async def open(self, stalled_session_s: float | None = None) -> None:
        """Connect and migrate; events committed from now on reach `listen` callbacks.

        `stalled_session_s`: where the database can, a session of this store's left inside
        a transaction that long is ended by the database (its process was stopped: SIGSTOP,
        a paused VM), so that the locks it held do not hold every other node's writes, and
        their lease renewals, for as long as it stays stopped (PostgreSQL:
        `idle_in_transaction_session_timeout`; SQLite has no server to do it)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def schema_version(self) -> int:
        """The database's schema version as it is (0: no schema yet), read without
        migrating or creating anything; works whether the store is open or not."""

    @abstractmethod
    def latest_schema_version(self) -> int:
        """The schema version this jobgate migrates a database to."""

    @abstractmethod
    def listen(self, callback: EventListener) -> None:
        """Call `callback` (on the event loop that opened the store) with every committed
        event of this database, in `seq` order, including other processes' events."""

    @abstractmethod
    def listen_own(self, callback: EventListener) -> None:
        """Call `callback` with the events this store itself committed (never another
        process's), once each, right after their commit and before the call that made them
        returns; on whichever thread committed them (jobgate's own log lines, logs.py)."""

    # --- jobs -----------------------------------------------------------------------
    @abstractmethod
    async def submit(self, job: Job, quota: Quota) -> tuple[Job, bool]:
        """Insert a queued job (vt assigned here). Returns (job, created): an existing job
        with the same owner and idempotency key, or an active one of the same
        owner with the same unique_key, is returned instead of a new one. QueueFull past the
        quota."""

    @abstractmethod
    async def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    async def list_jobs(
        self,
        owner: str | None,
        state: State | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
        q: str | None = None,
    ) -> Page:
        """Newest first; `before` is the `next` cursor of the previous page. With `q`: only
        the jobs whose id starts with it or whose arguments' JSON text holds it (both
        case-insensitive, `search_terms` says how)."""

    @abstractmethod
    async def claim(
        self, worker: str, slots: int, limits: Limits, lease_s: float, kinds: list[str]
    ) -> list[Job]:
        """Atomically move up to `slots` ready jobs (of `kinds`) to running, in dispatch
        order, honouring `limits` across every node."""

    @abstractmethod
    async def renew(self, worker: str, leases: dict[str, int], lease_s: float,
                    wait: bool = True) -> set[str]:
        """Extend the leases of running jobs {id: token}; returns the ids this worker must
        stop: lease lost (the token moved on) or cancel requested. With `wait` False, a
        row another write holds is renewed in the background once it is free and counts
        as held meanwhile (a periodic renewal must not stall on one row)."""

    @abstractmethod
    async def set_pid(self, job_id: str, token: int, pid: int | None) -> None: ...

    @abstractmethod
    async def finish(self, job_id: str, token: int, outcome: Outcome) -> State | None:
        """Persist how a running job ended, if `token` still holds its lease: the state it
        moved to (`outcome.state`), or None if the lease had moved on."""

    async def finish_and_claim(
        self, ends: list[tuple[str, int, Outcome]], worker: str, slots: int, limits: Limits,
        lease_s: float, kinds: list[str],
    ) -> tuple[list[State | None], list[Job]]:
        """`finish` each of `ends` (job id, token, outcome), then `claim`: the slots the
        ends free are filled at once. A backend may do both in one transaction (SQLite
        does: one commit instead of two for a worker whose jobs end in waves)."""
        ended = list(await asyncio.gather(*(self.finish(*end) for end in ends)))
        return ended, await self.claim(worker, slots, limits, lease_s, kinds)

    @abstractmethod
    async def progress(
        self, job_id: str, token: int, percent: float | None, message: str | None,
        rss_mb: float | None = None,
    ) -> None:
        """Record a running job's progress; its `job.progress` event carries `rss_mb`, the
        job's current resident memory, when given (it is not stored)."""

    @abstractmethod
    async def append_logs(self, job_id: str, lines: list[str], cap: int) -> int | None:
        """Add log lines, numbered on from the job's last; past `cap` lines per job, the
        first and the last lines are kept and those between counted (`moves.kept_log`).
        Returns the number of the first line added (None: no such job)."""

    @abstractmethod
    async def replace_logs(self, job_id: str, lines: Mapping[int, str]) -> None:
        """Give lines already added a new text ({n: line}: a progress bar redrawn in
        place); each that is still kept has a `job.log` event with `replace`."""

    @abstractmethod
    async def logs(self, job_id: str, after: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        """(n, line) with n > after, at most `limit`; where lines were dropped, the gap
        line (`moves.gap_line`) stands numbered as the first of them."""

    @abstractmethod
    async def log_size(self, job_id: str) -> LogSize | None:
        """How many lines a job's log counted, and the gap of those dropped (None: no
        such job)."""

    @abstractmethod
    async def cancel(self, job_id: str) -> Job:
        """Queued: cancelled now. Running: cancel requested, the worker ends it."""

    @abstractmethod
    async def retry(self, job_id: str) -> Job:
        """Failed or cancelled → queued again, attempts counted afresh."""

    @abstractmethod
    async def delete(self, job_id: str) -> Job:
        """Delete a finished job with its logs; IllegalMove if it is not finished."""

    @abstractmethod
    async def recover(self, lost_workers: Collection[str] = (),
                      keep: Mapping[str, int] | None = None,
                      expired_before: float | None = None,
                      stall_grace_s: float = 0.0) -> list[Job]:
        """Running jobs whose lease expired, or whose worker is known dead: queued again
        while attempts remain (and not cancel-requested), else failed with "worker lost".
        `keep` ({id: lease token}) are the runs the caller holds and still runs: never
        taken, whatever their lease says. `expired_before` (default: now) is when the
        caller decided to look: a lease that ran out while this call waited for the
        database (another writer stalled, so no one could renew) is not lost; nor, until
        `stall_grace_s` after the end of a stall this node saw (where the backend can see
        one: SQLite's whole-file write lock), one that ran out while it lasted. The jobs
        returned carry the `pid`, `worker` and `lease_token` of the run that was lost (to
        reap what it left running)."""

    @abstractmethod
    async def expire_queued(self, start_timeout_s: float) -> list[Job]:
        """Fail jobs still queued `start_timeout_s` after they became ready."""

    @abstractmethod
    async def finished_before(
        self, ts: float, owner: str | None = None, keep_per_user: int | None = None
    ) -> list[str]:
        """Ids of finished jobs to clean: finished before `ts`, or past the per-user cap."""

    @abstractmethod
    async def delete_many(self, job_ids: list[str]) -> int: ...

    # --- the queue ------------------------------------------------------------------
    @abstractmethod
    async def queued_keys(self) -> list[tuple[DispatchKey, float]]:
        """(dispatch key, run_at) of every queued job, to rebuild the position index."""

    @abstractmethod
    async def next_run_at(self) -> float | None:
        """The earliest run_at among queued jobs (to sleep until it, not poll)."""

    @abstractmethod
    async def stats(self) -> Stats: ...

    @abstractmethod
    async def metric_counts(self, bounds: tuple[float, ...]) -> MetricCounts:
        """The jobs table's rows counted by state and kind, the outbox's by channel and
        state, and, by kind, the histograms (at most each of `bounds`, ascending seconds)
        of the queue wait and the run time of the finished jobs that ran, all of them
        still in the database: every node's numbers, in one read."""

    @abstractmethod
    async def owner_counts(self) -> dict[str, tuple[int, int]]:
        """Per owner with a queued or running job: (queued, running), in one GROUP BY."""

    @abstractmethod
    async def recent_spans(self, since: float, limit: int) -> list[Span]:
        """The finished jobs that ran and finished at `since` or later, the `limit` most
        recently finished (newest first): a bounded read of the finished-time index."""

    @abstractmethod
    async def running_jobs(self, worker: str | None = None) -> list[Job]: ...

    @abstractmethod
    async def eta_snapshot(self, queued_limit: int, history: int, live_within_s: float
                           ) -> tuple[Snapshot, dict[str, list[float]] | None]:
        """What the estimates read (eta.py), in one transaction: the first `queued_limit`
        ready queued jobs in dispatch order and as many waiting ones, the running jobs, the
        slots of the nodes alive within `live_within_s`; with `history` > 0 also the run
        times of each kind's last `history` finished runs (else None)."""

    @abstractmethod
    async def recent_peaks(self, kind: str, limit: int) -> list[float]:
        """The measured `peak_memory_mb` of the kind's last `limit` completed jobs (those
        that have one), most recently finished first."""

    @abstractmethod
    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]: ...

    @abstractmethod
    async def prune_events(self, before_ts: float) -> int: ...

    # --- worker nodes ---------------------------------------------------------------------
    @abstractmethod
    async def heartbeat(self, node: Node) -> None:
        """Register `node` or refresh it (upsert by name): its heartbeat is now."""

    @abstractmethod
    async def nodes(self, alive_within_s: float | None = None,
                    owner: str | None = None) -> list[Node]:
        """Registered nodes by name, each with the jobs it runs (in `running`, only
        `owner`'s when given); with `alive_within_s`, only nodes whose last heartbeat is
        at most that old."""

    @abstractmethod
    async def remove_node(self, name: str) -> bool:
        """Unregister a node (it stops gracefully); False if it was not registered."""

    @abstractmethod
    async def forget_nodes(self, before_ts: float) -> int:
        """Unregister nodes whose last heartbeat is older than `before_ts` (killed ones)."""

    # --- users ----------------------------------------------------------------------
    @abstractmethod
    async def add_user(self, name: str, password_hash: str | None, admin: bool) -> User: ...

    @abstractmethod
    async def get_user(self, name: str) -> User | None: ...

    @abstractmethod
    async def add_token(self, user: str, token_hash: str, name: str | None = None
                        ) -> TokenInfo:
        """Keep a new API token's hash for `user` (NotFound if no such user), with a new
        public id and an optional name."""

    @abstractmethod
    async def user_for_token(self, token_hash: str) -> User | None: ...

    # The operator's side (store/sqlite_users.py, store/postgres_users.py).
    @abstractmethod
    async def list_users(self) -> list[UserInfo]:
        """Every user by name, with how many jobs they have queued and running now."""

    @abstractmethod
    async def remove_user(self, name: str) -> bool:
        """Delete a user and their API tokens (not their jobs); False if there was none."""

    @abstractmethod
    async def update_user(self, name: str, *, password_hash: str | None = None,
                          admin: bool | None = None, bump_generation: bool = False) -> User:
        """Change what is given (a new password hash, admin or not) and, with
        `bump_generation`, raise the login generation by one, in one transaction; the user
        as it is now. NotFound if no such user."""

    @abstractmethod
    async def list_tokens(self, user: str) -> list[TokenInfo]:
        """`user`'s API tokens, oldest first (NotFound if no such user)."""

    @abstractmethod
    async def revoke_token(self, token_id: str, user: str | None = None) -> TokenInfo | None:
        """Delete the API token with public id `token_id` (only if it is `user`'s, when
        given); the token as it was, or None if there is no such token."""

    @abstractmethod
    async def touch_token(self, token_hash: str, at: float) -> None:
        """Record that the token was used at `at` (callers do it at most once a minute)."""

    # --- uploads --------------------------------------------------------------------
    @abstractmethod
    async def add_upload(self, upload: Upload) -> None:
        """Record an upload whose file is complete."""

    @abstractmethod
    async def get_upload(self, upload_id: str) -> Upload | None: ...

    @abstractmethod
    async def list_uploads(self, owner: str) -> list[Upload]:
        """`owner`'s uploads, newest first."""

    @abstractmethod
    async def uploads_size(self, owner: str) -> int:
        """The bytes of all of `owner`'s uploads."""

    @abstractmethod
    async def uploads_before(self, before_ts: float, limit: int = 1000) -> list[Upload]:
        """Uploads created before `before_ts`, oldest first."""

    @abstractmethod
    async def delete_upload(self, upload_id: str, reference: str = "",
                            busy: Collection[State] = ()) -> bool:
        """Delete an upload's row; False if there is none, or if a job of its owner in a
        state of `busy` has `reference` (a JSON string literal) in its args."""

    # --- schedules ------------------------------------------------------------------
    @abstractmethod
    async def sync_schedules(self, starts: list[tuple[str, str, float]]) -> None:
        """Record each schedule of `starts` (name, spec, first due time): a new one, or one
        recorded under another spec, gets that next due time; one whose spec is unchanged
        keeps its own (what came due while no node ran is still due)."""

    @abstractmethod
    async def schedule_states(self) -> dict[str, ScheduleState]:
        """Every recorded schedule by name, with its last firing."""

    @abstractmethod
    async def fire_schedule(self, name: str, expected_due: float, next_due: float,
                            firings: list[Firing], quota: Quota) -> list[Firing] | None:
        """If the schedule's next due time is still `expected_due` (no other node fired it
        meanwhile), in one transaction: move it to `next_due`, submit each firing's `job`
        (as `submit` does: quota, unique_key), record each firing as
        `schedules.outcome_of` says, with its `schedule.*` event. The firings as recorded,
        or None when another node had moved the due time on (nothing written)."""

    @abstractmethod
    async def schedule_firings(self, name: str, limit: int = 100) -> list[Firing]:
        """The schedule's recorded firings, latest due time first."""

    @abstractmethod
    async def prune_firings(self, before_ts: float) -> int:
        """Delete the records of firings made before `before_ts`."""

    # --- batches --------------------------------------------------------------------
    @abstractmethod
    async def submit_batch(self, batch: Batch, jobs: list[Job], quota: Quota) -> list[Job]:
        """Insert a batch and its jobs in one transaction, all or none: QueueFull (saying
        how many would fit) if the quota cannot take them all, DependencyError if one
        depends on a job that is gone. `jobs` come in an order where each follows those
        of the batch it depends on; they are returned in that order, as stored (waiting,
        ready, or failed at once when a dependency had failed). Emits `batch.created`."""

    @abstractmethod
    async def get_batch(self, batch_id: str) -> Batch | None:
        """A batch with its jobs' counts per state, their running progress and ids."""

    # --- operator controls (controls.py) -------------------------------------------
    @abstractmethod
    async def controls(self) -> Controls:
        """The operator's controls as stored (every claim reads them in its own
        transaction: `controls.dispatch`)."""

    @abstractmethod
    async def change_controls(self, change: Change, by: str) -> Controls:
        """Apply `change` in one transaction, ordered with every claim: the controls
        after it, written with its event (`change.event`, with `by` and the whole new
        `controls`); nothing is written when it changes nothing."""

    # --- deliveries (webhooks and notifications of jobs' ends) -------------------------
    #: What final states make (set by `JobQueue` from the settings): every backend writes
    #: a job's deliveries (`deliveries.planned`) in the transaction of its final state.
    delivery_rules: Rules = Rules()

    @abstractmethod
    async def add_webhook(self, job_id: str, url: str) -> None:
        """Keep the webhook URL a job was submitted with (before the job is written, so
        no end of it can miss it)."""

    @abstractmethod
    async def remove_webhook(self, job_id: str) -> None:
        """Forget a job's webhook URL (a submit that made no job)."""

    @abstractmethod
    async def claim_deliveries(self, worker: str, limit: int, lease_s: float
                               ) -> list[Delivery]:
        """Atomically take up to `limit` due pending deliveries for one attempt each: the
        attempt is counted (`attempts` is its number) and leased for `lease_s`, so across
        nodes each attempt is made once; a lease that runs out frees the next attempt."""

    @abstractmethod
    async def record_attempt(self, delivery_id: str, attempt: Attempt,
                             permanent: bool = False) -> Delivery | None:
        """Record an attempt and settle its delivery as `deliveries.after_attempt` says
        (delivered, tried again later, or failed for good: each with its event); None if
        the attempt no longer holds the delivery (its lease ran out and it was taken)."""

    @abstractmethod
    async def deliveries(self, job_id: str) -> list[Delivery]:
        """A job's deliveries, oldest first, each with its attempts (`tries`)."""


class SchemaTooNew(StoreError, RuntimeError):
    """The database was migrated by a newer jobgate: this one refuses to touch it."""
