"""The rules of a job's life, written once for every backend. Pure functions, no I/O.

Each move takes the job as a backend read it (a `Job`) and what the move needs (the time,
an outcome, a fair turn) and returns a `Move`: the job after it, the columns to write and
the event to emit. The job as read is not changed. Every state change is checked against
`model.TRANSITIONS` here, so a backend only reads rows, calls the rule and writes
`Move.fields` and `Move.event` in one transaction: SQL, locking and batching, nothing
else. A fair turn (`vt`) is worked out by `scheduler.Turns` from what the backend read;
a move into the queue takes it as an argument.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from jobgate.model import (
    FINAL,
    EventType,
    IllegalMove,
    Job,
    Output,
    State,
    check_move,
    event_data,
    event_type,
)
from jobgate.sanitize import stored_text
from jobgate.store.base import Outcome, QueueFull, Quota

#: The message of a job a user queued again (`retried`), which its `job.queued` event carries.
RETRIED_BY_HAND = "retried by hand"
#: The message of a run handed back by a worker that stops (not a retry: not an attempt).
HANDED_BACK = "handed back: its worker stopped"

class Move(NamedTuple):
    """One change of one job: the job after it, the columns that change (by name, with
    `state` when the state changes) and the event (type and data) that says so. A tuple:
    made for every job that enters, starts and ends, in the write transaction, where a
    frozen dataclass's `__init__` cost twice what the rest of the move does."""

    job: Job
    fields: dict[str, Any]
    event: str
    data: dict[str, Any]


def _move(job: Job, dst: State, **fields: Any) -> Move:
    """The move of `job` to `dst` with `fields`, checked against the transition table."""
    check_move(job.id, job.state, dst)
    fields["state"] = dst
    after = job.but(**fields)
    return Move(after, fields, event_type(job.state, dst), event_data(after))


# --- into the queue ------------------------------------------------------------------------
def submitted(job: Job, vt: int) -> Move:
    """A new job entering the queue at its fair turn `vt` (its whole row is written)."""
    after = job.but(state=State.QUEUED, vt=vt)
    return Move(after, {"state": State.QUEUED, "vt": vt}, event_type(None, State.QUEUED),
                event_data(after))


def queue_full(queued: int, cap: int | None, owner: str | None = None) -> None:
    """Refuse a job (QueueFull) when `queued` jobs (the owner's, with `owner`) already
    fill the cap of `Quota.max_queued` (or `per_user_queued`)."""
    if cap is not None and queued >= cap:
        raise QueueFull(f"queue full: {queued}/{cap}" if owner is None
                        else f"queue full for {owner}: {queued}/{cap}")


# --- a run ---------------------------------------------------------------------------------
def claimed(job: Job, worker: str, now: float, lease_s: float) -> Move:
    """A queued job starting on `worker`: the next attempt, a new lease token (which
    fences off every earlier run), a lease of `lease_s` from `now`, and a clean slate."""
    return _move(job, State.RUNNING, attempt=job.attempt + 1, started_at=now,
                 finished_at=None, worker=worker, lease_token=job.lease_token + 1,
                 lease_expires_at=now + lease_s, progress=None, message=None, error=None,
                 result=None, cancel_requested=False, pid=None)


def runs_to_end(items: list[tuple[str, int, Outcome]], current: Mapping[str, Job]
                ) -> list[Job | None]:
    """Which ends count: for each (job id, lease token, outcome), the job as read if the
    token still holds its running lease, else None (the lease moved on: somebody else owns
    the job now). The same end reported twice counts once, the first time."""
    out: list[Job | None] = []
    taken: set[tuple[str, int]] = set()
    for job_id, token, _ in items:
        job = current.get(job_id)
        if job is None or job.state is not State.RUNNING or job.lease_token != token or \
                (job_id, token) in taken:
            out.append(None)
            continue
        taken.add((job_id, token))
        out.append(job)
    return out


class Ends(NamedTuple):
    """What a batch of reported ends comes to (`settle_runs`)."""

    ended: list[Move]  # runs that ended for good, to be written together
    requeue: list[tuple[Job, Outcome]]  # runs going back to the queue: each needs its turn
    states: list[State | None]  # per reported end: the state its job moves to, or None


def settle_runs(items: list[tuple[str, int, Outcome]], current: Mapping[str, Job],
                now: float) -> Ends:
    """The ends of runs (job id, lease token, outcome) that count (`runs_to_end`), given
    the jobs as read: the moves of those that end for good (`ended`), and those that go
    back to the queue (`requeued` once the backend has read their turns)."""
    out = Ends([], [], [])
    for (_, _, outcome), job in zip(items, runs_to_end(items, current), strict=True):
        if job is None:
            out.states.append(None)
        elif outcome.state is State.QUEUED:
            out.requeue.append((job, outcome))
            out.states.append(State.QUEUED)
        else:
            out.ended.append(ended(job, outcome, now))
            out.states.append(outcome.state)
    return out


def ended(job: Job, outcome: Outcome, now: float) -> Move:
    """A run that ended for good (completed, failed, cancelled) as `outcome` says."""
    if outcome.state is State.QUEUED:
        raise ValueError("a run going back to the queue is `requeued`")
    return _move(job, outcome.state, finished_at=now, result=outcome.result,
                 outputs=list(outcome.outputs), cancel_requested=False,
                 progress=100.0 if outcome.state is State.COMPLETED else job.progress,
                 lease_expires_at=None, pid=None, error=outcome.error,
                 message=outcome.message, peak_memory_mb=outcome.peak_memory_mb)


def ended_outputs(outputs: Iterable[Output], state: State, partial_outputs: str
                  ) -> tuple[list[Output], list[Output]]:
    """What a run's end makes of the files it left (`outputs`, as the executor found
    them): (the outputs to list, the files to delete). A completed run's files are the
    job's result. Those of a run that ends otherwise are not finished files: listed as
    `partial` (kind setting `partial_outputs = "keep"`), or deleted (`"delete"`) once the
    job has ended for good; a retry keeps them for its next attempt."""
    found = list(outputs)
    if state is State.COMPLETED:
        return [dataclasses.replace(o, name=stored_text(o.name), partial=False)
                for o in found], []
    if partial_outputs == "delete" and state is not State.QUEUED:
        return [], found
    return [dataclasses.replace(o, name=stored_text(o.name), partial=True) for o in found], []


def requeued(job: Job, outcome: Outcome, vt: int) -> Move:
    """A run going back to the queue (a retry after failure, due at `outcome.retry_at`, or
    handed back by a worker that stops: that attempt is not counted), behind its owner's
    peers at turn `vt`."""
    if outcome.state is not State.QUEUED or outcome.retry_at is None:
        raise ValueError("a requeue needs a queued outcome with its retry_at")
    return _move(job, State.QUEUED, vt=vt, run_at=outcome.retry_at, worker=None,
                 attempt=job.attempt - 1 if outcome.hand_back else job.attempt,
                 lease_token=job.lease_token + 1, lease_expires_at=None, pid=None,
                 error=outcome.error, message=outcome.message,
                 peak_memory_mb=outcome.peak_memory_mb)


def still_held(state: str, token: int, held: int, cancel_requested: bool) -> bool:
    """Whether a worker renewing lease `held` keeps running its job: the job still runs
    under that token and nobody asked to cancel it."""
    return state == State.RUNNING.value and token == held and not cancel_requested


# --- recovery ------------------------------------------------------------------------------
def is_held(job: Job, keep: Mapping[str, int]) -> bool:
    """A run the recovering caller holds and still runs (`keep`: {id: lease token}): a
    late renewal, not a lost run, whatever its lease says."""
    return keep.get(job.id) == job.lease_token


def recovery_state(job: Job) -> State:
    """Where a running job whose worker was lost goes: cancelled if a cancel was asked,
    queued again while attempts remain, else failed."""
    if job.cancel_requested:
        return State.CANCELLED
    return State.QUEUED if job.attempt < job.max_attempts else State.FAILED


def recovered(job: Job, now: float, vt: int | None = None) -> Move:
    """A running job whose worker was lost (`recovery_state` says where it goes; into the
    queue it needs its fair turn `vt`, behind its owner's peers). Its lease is fenced off."""
    common: dict[str, Any] = {"lease_expires_at": None, "pid": None,
                              "lease_token": job.lease_token + 1}
    dst = recovery_state(job)
    if dst is State.CANCELLED:
        return _move(job, dst, finished_at=now, message="cancelled (worker lost)", **common)
    if dst is State.QUEUED:
        if vt is None:
            raise ValueError("a recovered job going back to the queue needs its turn")
        return _move(job, dst, vt=vt, run_at=now, worker=None,
                     message="recovered after its worker was lost", **common)
    return _move(job, dst, finished_at=now, error="worker lost", message="worker lost",
                 **common)


def lost_run(move: Move, job: Job) -> Job:
    """The recovered job as `Store.recover` returns it: after its move, but with the `pid`,
    `worker` and `lease_token` of the run that was lost (to reap what it left running)."""
    return move.job.but(pid=job.pid, worker=job.worker,
                               lease_token=job.lease_token)


# --- a user's moves ------------------------------------------------------------------------
def cancelled(job: Job, now: float) -> Move | None:
    """Cancel: a queued job is cancelled at once; a running one has its cancel requested
    (its worker ends it; the request is announced as progress); None if it already was.
    IllegalMove for a finished job."""
    if job.state is State.QUEUED:
        return _move(job, State.CANCELLED, finished_at=now, message="cancelled")
    if job.state is State.RUNNING:
        if job.cancel_requested:
            return None
        after = job.but(cancel_requested=True, message="cancelling")
        return Move(after, {"cancel_requested": True, "message": after.message},
                    EventType.PROGRESS, {"progress": after.progress, "message": after.message,
                                     "cancel_requested": True})
    raise IllegalMove(job.id, job.state, State.CANCELLED)


def retried(job: Job, now: float, vt: int) -> Move:
    """A failed or cancelled job queued again by hand at turn `vt`, its attempts counted
    afresh and the traces of its last run cleared. Running→queued is the worker's move (a
    retry after failure), not a user's: IllegalMove for anything but failed or cancelled."""
    if job.state not in (State.FAILED, State.CANCELLED):
        raise IllegalMove(job.id, job.state, State.QUEUED)
    return _move(job, State.QUEUED, vt=vt, run_at=now, attempt=0, finished_at=None,
                 started_at=None, error=None, result=None, progress=None,
                 message=RETRIED_BY_HAND, worker=None, cancel_requested=False,
                 lease_expires_at=None)


def check_deletable(job: Job) -> None:
    """Only a finished job may be deleted (IllegalMove otherwise)."""
    if job.state not in FINAL:
        raise IllegalMove(job.id, job.state, job.state)


def expired(job: Job, now: float, start_timeout_s: float) -> Move:
    """A job still queued `start_timeout_s` after it became ready: it fails, and says so."""
    if job.state is not State.QUEUED:  # a job that started did not time out waiting
        raise IllegalMove(job.id, job.state, State.FAILED)
    waited = f"{start_timeout_s / 60:g} min" if start_timeout_s >= 60 else \
        f"{start_timeout_s:g} s"
    return _move(job, State.FAILED, finished_at=now,
                 error=f"not started within {waited} (limits.start_timeout)",
                 message="start timeout")


# --- events that move nothing --------------------------------------------------------------
def progress_data(percent: float | None, message: str | None,
                  rss_mb: float | None = None) -> dict[str, Any]:
    """What a `job.progress` event carries; `rss_mb` (the job's current resident memory,
    not stored) only when given."""
    data: dict[str, Any] = {"progress": percent, "message": message}
    if rss_mb is not None:
        data["rss_mb"] = rss_mb
    return data


# --- a job's log ---------------------------------------------------------------------------
# A log of more than `[worker] log_max_lines` (`cap`) lines keeps its head (the first
# cap // 2 lines) and a rolling tail (the last cap - cap // 2), where a program prints
# its errors: the lines between are counted, not kept. Lines keep their numbers (1..N as
# produced), so what was dropped is one gap of numbers, `dropped` (first, last), which the
# job's row holds. The backend runs what `kept_log` says: one insert of the kept lines,
# one delete of a range of stored numbers, one update of the count and the gap.
class KeptLog(NamedTuple):
    """What a batch of log lines does to a job's log (`kept_log`)."""

    runs: list[tuple[int, list[str]]]  # lines to insert: (first number, lines), in order
    delete: tuple[int, int] | None  # stored lines to delete: numbers first..last
    dropped: tuple[int, int] | None  # the gap after the batch: numbers first..last


def kept_log(lines: list[str], count: int, cap: int,
             dropped: tuple[int, int] | None = None) -> KeptLog:
    """What adding `lines` to a log of `count` lines (numbered 1..count) with the gap
    `dropped` keeps of it under `cap` (see above): a gap once opened keeps its first line
    (a cap changed since moves only its end)."""
    total = count + len(lines)
    if total <= cap and dropped is None:
        return KeptLog([(count + 1, lines)] if lines else [], None, None)
    tail = cap - cap // 2
    first = dropped[0] if dropped is not None else cap // 2 + 1
    last = max(total - tail, dropped[1] if dropped is not None else first - 1)
    if last < first:  # not over the cap yet
        return KeptLog([(count + 1, lines)] if lines else [], None, None)
    runs: list[tuple[int, list[str]]] = []
    head = lines[: max(0, first - 1 - count)]  # those still in the head
    if head:
        runs.append((count + 1, head))
    rest = lines[max(0, last - count):]  # those after the gap
    if rest:
        runs.append((total - len(rest) + 1, rest))
    # Stored lines that fall in the gap now: from the first not yet dropped, to the end
    # of the gap or of what was stored.
    start = dropped[1] + 1 if dropped is not None else first
    end = min(last, count)
    return KeptLog(runs, (start, end) if start <= end else None, (first, last))


def log_data(first: int, lines: list[str], replace: bool = False) -> dict[str, Any]:
    """What a `job.log` event carries: the kept lines, numbered from `first`; with
    `replace`, the new text of lines already sent (a progress bar redrawn in place)."""
    return {"first": first, "lines": lines, "replace": True} if replace else \
        {"first": first, "lines": lines}


def dropped_count(dropped: tuple[int, int] | None) -> int:
    """How many lines the gap `dropped` holds."""
    return 0 if dropped is None else dropped[1] - dropped[0] + 1


def gap_line(dropped: tuple[int, int]) -> str:
    """The line that stands in the gap of a log read in order (`Store.logs`, the text
    download), numbered as the gap's first line."""
    first, last = dropped
    return (f"[jobgate] {dropped_count(dropped)} more lines not kept (lines {first}-{last}; "
            "worker.log_max_lines keeps the first and the last lines)")


def is_gap_line(line: str) -> bool:
    """Whether `line`, read where a gap starts, is its gap line (not a line the job printed
    there before the gap reached it: a page read as the log passed its cap)."""
    return line.startswith("[jobgate] ") and "more lines not kept (lines " in line


def with_gap_line(rows: list[tuple[int, str]], after: int, limit: int,
                  dropped: tuple[int, int] | None) -> list[tuple[int, str]]:
    """A page of stored lines (`rows`: (n, line) with n > `after`, at most `limit`, in
    order) with the gap line in its place when the page reaches the gap: after the last
    line before it, numbered as its first line (so a reader going on after it reads the
    tail next). At most `limit` lines."""
    if dropped is None or after >= dropped[0]:
        return rows
    before = [row for row in rows if row[0] < dropped[0]]
    if len(before) == len(rows) and len(rows) >= limit:
        return rows  # the page ends before the gap
    page = [*before, (dropped[0], gap_line(dropped)), *rows[len(before):]]
    return page[:limit]


# --- dependencies ----------------------------------------------------------------------------
# A job with `depends_on` is queued but waits outside the dispatch order until each of its
# dependencies completed (the backend keeps how many it waits for in a column of its own);
# the rules below say what a job's dependencies, as read in one transaction, come to.
class Dependencies(NamedTuple):
    """What a job's dependencies come to now (`dependencies`)."""

    failed: str | None  # the first that failed or was cancelled: the job fails
    waiting: int  # how many are still queued or running (0 and no failure: ready)


#: What no dependencies come to: ready.
NO_DEPENDENCIES = Dependencies(None, 0)


def dependencies(states: Mapping[str, State | None]) -> Dependencies:
    """What dependencies in these states ({id: state}; None: deleted, which only a finished
    job can be, and that ended before: it does not hold the job back) come to."""
    failed = next((dep for dep, state in sorted(states.items())
                   if state in (State.FAILED, State.CANCELLED)), None)
    waiting = sum(1 for state in states.values() if state in (State.QUEUED, State.RUNNING))
    return Dependencies(failed, waiting)


def waiting_message(count: int) -> str:
    """A waiting job's `message`: "waiting for 2 jobs"."""
    return f"waiting for {count} job{'' if count == 1 else 's'}"


def submitted_waiting(job: Job, count: int) -> Move:
    """A new job entering the queue to wait for `count` dependencies: outside the
    dispatch order (no turn yet: it gets one when it becomes ready, `released`). Its event
    says `waiting`, which keeps it out of the queue positions."""
    after = job.but(state=State.QUEUED, vt=0, message=waiting_message(count))
    return Move(after, {"state": State.QUEUED, "vt": 0, "message": after.message},
                event_type(None, State.QUEUED), {**event_data(after), "waiting": count})


def still_waiting(job: Job, count: int) -> Move:
    """A waiting job one of whose dependencies completed, still waiting for `count`: its
    message says so (a `job.progress` event)."""
    after = job.but(message=waiting_message(count))
    return Move(after, {"message": after.message}, EventType.PROGRESS,
                {"progress": job.progress, "message": after.message, "waiting": count})


def released(job: Job, now: float, vt: int) -> Move:
    """A waiting job whose dependencies all completed: it enters the dispatch order as if
    submitted `now`, at the fair turn `vt` worked out now (a `job.queued` event; a delayed
    job keeps its later `run_at`, and `start_timeout` counts from now)."""
    if job.state is not State.QUEUED:
        raise IllegalMove(job.id, job.state, State.QUEUED)
    after = job.but(vt=vt, run_at=max(job.run_at, now), message=None)
    return Move(after, {"vt": vt, "run_at": after.run_at, "message": None},
                EventType.QUEUED, event_data(after))


def dependency_failed(job: Job, dep_id: str, now: float) -> Move:
    """A waiting job whose dependency `dep_id` failed or was cancelled: it can never start,
    so it fails, and says which (its own dependants fail after it)."""
    reason = f"dependency failed: {dep_id}"
    return _move(job, State.FAILED, finished_at=now, error=reason, message=reason)


def retried_waiting(job: Job, now: float, count: int) -> Move:
    """A failed or cancelled job retried by hand while `count` of its dependencies are
    still queued or running (retried too): it waits for them again, outside the order."""
    move = retried(job, now, 0)
    after = move.job.but(message=waiting_message(count))
    return Move(after, {**move.fields, "message": after.message}, move.event,
                {**event_data(after), "waiting": count})


def batch_fits(count: int, queued: int | None, owner_queued: int | None, quota: Quota,
               owner: str) -> None:
    """Refuse a whole batch of `count` jobs (QueueFull) unless the queue takes them all:
    `queued` jobs (and `owner_queued` of the owner's) are queued now, each counted up to
    its cap of `quota`. The message says how many would fit."""
    room: list[tuple[int, str]] = []
    if quota.max_queued is not None and queued is not None:
        room.append((quota.max_queued - queued, f"limits.max_queued {quota.max_queued}"))
    if quota.per_user_queued is not None and owner_queued is not None:
        room.append((quota.per_user_queued - owner_queued,
                     f"limits.per_user_queued {quota.per_user_queued} for {owner}"))
    if not room:
        return
    fit, why = min(room)
    if count > fit:
        raise QueueFull(f"queue full: {max(0, fit)} of the batch's {count} jobs would fit "
                        f"({why})")


def is_waiting(job: Job) -> bool:
    """Whether a job as read waits for its dependencies (queued, its message says so)."""
    return job.state is State.QUEUED and bool(job.depends_on) and \
        (job.message or "").startswith("waiting for ")
