"""Storage conformance, `listen_own`: a store hands its own listeners the events it
committed itself, once each, before the call returns, and never another node's (which
`listen` hears). jobgate's transition log lines (logs.py) are made from these, so each
transition is logged once in all, by the process that made it. Runs on every backend."""

from __future__ import annotations

from conftest import wait_for
from jobgate.model import Event
from jobgate.store.base import Store
from storekit import claim_one, done, submit


async def test_own_listeners_hear_only_their_own_stores_commits(store: Store,
                                                                other_node: Store):
    mine: list[Event] = []
    theirs: list[Event] = []
    heard: list[Event] = []
    store.listen_own(mine.extend)
    other_node.listen_own(theirs.extend)
    store.listen(heard.extend)

    job = await submit(store, kind="solo")
    assert [e.type for e in mine] == ["job.queued"]  # already, as the call returns
    claimed = await claim_one(other_node, kinds=["solo"])
    await other_node.finish(job.id, claimed.lease_token, done())
    assert [e.type for e in theirs] == ["job.started", "job.completed"]
    # Once this store has heard the other node's events, its own listeners still have
    # only the submit.
    await wait_for(lambda: [e.type for e in heard if e.job_id == job.id] ==
                   ["job.queued", "job.started", "job.completed"], what="the events")
    assert [e.type for e in mine] == ["job.queued"]
    assert [e.seq for e in mine + theirs] == [e.seq for e in heard if e.job_id == job.id]


async def test_a_failing_own_listener_does_not_fail_the_commit(store: Store):
    def broken(events: list[Event]) -> None:
        raise RuntimeError("a listener's bug")

    calls: list[Event] = []
    store.listen_own(broken)
    store.listen_own(calls.extend)
    job = await submit(store)
    assert [e.job_id for e in calls] == [job.id]
