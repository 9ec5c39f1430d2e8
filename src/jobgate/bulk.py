"""Bulk actions: cancel, retry or delete every job a filter selects, one job at a time.

`run` selects the jobs (`select`: the owner's, in some states, of a kind, older than some
age, up to a limit), then applies the queue's own verb to each (`act`: `JobQueue.cancel`,
`retry`, `delete`), so every job's move is its own transaction with its usual event, under
the same rules as a single call. A job that moved on between the selection and its turn
(someone else cancelled, retried or deleted it) is skipped and counted by reason, not an
error. The answer is counts: `{matched, done, skipped: {reason: n}, more}`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jobgate.arguments import ArgumentError
from jobgate.model import FINAL, IllegalMove, Job, State
from jobgate.queue import JobQueue
from jobgate.store.base import Conflict, NotFound

#: Each action and the states it applies to (the default when a filter names none).
ACTIONS: dict[str, tuple[State, ...]] = {
    "cancel": (State.QUEUED, State.RUNNING),
    "retry": (State.FAILED, State.CANCELLED),
    "delete": tuple(s for s in State if s in FINAL),
}
#: The most jobs one bulk action takes (a filter's `limit` may ask for fewer); `more` in
#: the answer says that others matched too.
MAX_JOBS = 10_000
_PAGE = 500  # jobs read per page while selecting
_AT_ONCE = 16  # jobs acted on concurrently (each in its own transaction)


@dataclass(frozen=True)
class Filter:
    """Which jobs a bulk action takes. `owner` None: anyone's (only an admin may ask);
    `states` empty: every state of the action; `older_than_s`: finished that long ago or
    more (a job not finished: created that long ago)."""

    owner: str | None = None
    states: tuple[State, ...] = ()
    kind: str | None = None
    older_than_s: float | None = None
    limit: int = MAX_JOBS

    def is_empty(self) -> bool:
        return not self.states and self.kind is None and self.owner is None and \
            self.older_than_s is None


@dataclass
class Result:
    """What a bulk action did: jobs matched, acted on, skipped (by reason)."""

    action: str
    matched: int = 0
    done: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    more: bool = False  # more jobs matched than the limit took

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "matched": self.matched, "done": self.done,
                "skipped": dict(sorted(self.skipped.items())), "more": self.more}


def check(action: str, flt: Filter, explicit_owner: bool) -> None:
    """ArgumentError unless `flt` suits `action`: the action is known, its states are the
    action's, its limit within `MAX_JOBS`; a cancel or delete must say what it takes (a
    state, kind, owner or age), so that no empty filter takes everything by accident.
    `explicit_owner`: the caller named the owner (not just the owner it is confined to)."""
    if action not in ACTIONS:
        raise ArgumentError("action", f"unknown action {action!r} (known: "
                            f"{', '.join(ACTIONS)})")
    wrong = [s.value for s in flt.states if s not in ACTIONS[action]]
    if wrong:
        raise ArgumentError("filter.state", f"{action} takes jobs that are "
                            f"{' or '.join(s.value for s in ACTIONS[action])}, not "
                            f"{', '.join(wrong)}")
    if not 1 <= flt.limit <= MAX_JOBS:
        raise ArgumentError("filter.limit", f"expected 1 to {MAX_JOBS}, got {flt.limit}")
    unnamed = flt.owner is None or not explicit_owner
    if action in ("cancel", "delete") and unnamed and not flt.states and \
            flt.kind is None and flt.older_than_s is None:
        raise ArgumentError("filter", f"a bulk {action} needs a filter: at least one of "
                            "state, kind, owner or older_than_s (an empty one would take "
                            "every job)")


async def run(queue: JobQueue, action: str, flt: Filter, dry_run: bool = False) -> Result:
    """Select the jobs of `flt` and apply `action` to each (with `dry_run`, only count
    them). `check` the filter first."""
    jobs, more = await select(queue, action, flt)
    if dry_run:
        return Result(action, matched=len(jobs), more=more)
    result = await act(queue, action, jobs)
    result.more = more
    return result


async def select(queue: JobQueue, action: str, flt: Filter) -> tuple[list[Job], bool]:
    """The jobs `flt` selects for `action` (newest first, state by state), at most
    `flt.limit`; and whether more matched."""
    cutoff = None if flt.older_than_s is None else time.time() - flt.older_than_s
    found: list[Job] = []
    for state in flt.states or ACTIONS[action]:
        cursor: str | None = None
        while len(found) <= flt.limit:
            page = await queue.store.list_jobs(flt.owner, state, flt.kind, cursor, _PAGE)
            found += [j for j in page.jobs if cutoff is None or _age_ts(j) < cutoff]
            cursor = page.next
            if cursor is None:
                break
    return found[:flt.limit], len(found) > flt.limit


async def act(queue: JobQueue, action: str, jobs: Iterable[Job]) -> Result:
    """Apply `action` to each of `jobs` (as selected), each with the queue's own verb in its
    own transaction; a job that moved on meanwhile is skipped, with the reason."""
    result = Result(action)
    chosen = list(jobs)
    result.matched = len(chosen)
    for start in range(0, len(chosen), _AT_ONCE):
        reasons = await asyncio.gather(*(_one(queue, action, job)
                                         for job in chosen[start:start + _AT_ONCE]))
        for reason in reasons:
            if reason is None:
                result.done += 1
            else:
                result.skipped[reason] += 1
    return result


async def _one(queue: JobQueue, action: str, job: Job) -> str | None:
    """Apply `action` to one job: None if done, else why it was skipped."""
    try:
        if action == "cancel":
            if job.state is State.RUNNING and job.cancel_requested:
                return "already_cancelling"
            await queue.cancel(job.id)
        elif action == "retry":
            await queue.retry(job.id)
        else:
            await queue.delete(job.id)
    except NotFound:
        return "not_found"  # deleted meanwhile
    except IllegalMove:
        return "illegal_state"  # it moved on to a state the action does not take
    except Conflict:
        return "conflict"  # e.g. a retry whose dependency did not complete
    return None


def _age_ts(job: Job) -> float:
    """The time a job's age counts from: its end, or (not finished) its creation."""
    return job.finished_at if job.finished_at is not None else job.created_at
