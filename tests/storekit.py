"""What the storage conformance tests (tests/test_store_*.py) share: jobs made as
`JobQueue.submit` hands them over, and short ways to submit, claim and end them. The
`store` and `other_node` fixtures are in tests/conftest.py."""

from __future__ import annotations

import time
from typing import Any

from jobgate.model import TRANSITIONS, Job, State, new_id
from jobgate.scheduler import Limits
from jobgate.store.base import Outcome, Quota, Store

KINDS = ["noop", "sleep", "big", "small", "solo"]
OPEN = Limits(max_running=1000)
NO_QUOTA = Quota()
STATE_EVENTS = {"job.queued", "job.started", "job.completed", "job.failed", "job.cancelled",
                "job.retrying"}
LEGAL = {(src, dst) for src, dsts in TRANSITIONS.items() for dst in dsts}

_last_stamp = 0.0


def make_job(owner: str = "alice", kind: str = "noop", **fields: Any) -> Job:
    """A new job as `JobQueue.submit` would hand it over, with ids strictly by creation."""
    global _last_stamp
    now = time.time()
    _last_stamp = max(now, _last_stamp + 0.002)
    base: dict[str, Any] = {"args": {"n": 1}, "created_at": now, "run_at": now}
    return Job(id=new_id(_last_stamp), kind=kind, owner=owner, **{**base, **fields})


async def submit(store: Store, owner: str = "alice", kind: str = "noop", **fields: Any) -> Job:
    job, created = await store.submit(make_job(owner, kind, **fields), NO_QUOTA)
    assert created
    return job


async def claim(store: Store, slots: int = 100, limits: Limits = OPEN, lease_s: float = 30,
                kinds: list[str] | None = None, worker: str = "w1") -> list[Job]:
    return await store.claim(worker, slots, limits, lease_s, KINDS if kinds is None else kinds)


async def claim_one(store: Store, **kw: Any) -> Job:
    jobs = await claim(store, slots=1, **kw)
    assert len(jobs) == 1, jobs
    return jobs[0]


async def running(store: Store) -> Job:
    """A fresh job, claimed (the only way into `running`), whatever else is queued."""
    job = await submit(store, kind="solo")
    claimed = await claim_one(store, kinds=["solo"])
    assert claimed.id == job.id
    return claimed


async def state(store: Store, job_id: str) -> State:
    job = await store.get(job_id)
    assert job is not None
    return job.state


async def events_of(store: Store, job_id: str) -> list[str]:
    return [e.type for e in await store.events_after(0) if e.job_id == job_id]


def done(state_: State = State.COMPLETED, **kw: Any) -> Outcome:
    return Outcome(state_, message=state_.value, **kw)


async def finished_jobs(store: Store) -> dict[State, Job]:
    """One job in each final state."""
    out = {}
    for final in (State.COMPLETED, State.FAILED, State.CANCELLED):
        job = await running(store)
        await store.finish(job.id, job.lease_token, done(final))
        out[final] = job
    return out
