"""Storage conformance, schedules: a schedule's next due time kept across syncs, a firing
recorded and its job submitted in one transaction only by the node that moved the due time
on (never twice, also when two nodes race), a unique_key job still queued making a firing
skipped, a full queue making it failed, and old firings forgotten. Runs on every backend
(`store`, `other_node`: tests/conftest.py)."""

from __future__ import annotations

import asyncio

from jobgate.model import State
from jobgate.schedules import FAILED, FIRED, SKIPPED, Firing
from jobgate.store.base import Quota, Store
from storekit import NO_QUOTA, make_job

T = 1_800_000_000.0  # a due time (whole seconds, as cron's are)


def fired(due_at: float, unique_key: str | None = None, name: str = "nightly") -> Firing:
    """A firing as `schedules.firings` makes it, with its job to submit."""
    job = make_job("alice", "noop", unique_key=unique_key)
    return Firing(name, "alice", due_at, FIRED, "fired", job, job.id)


async def test_sync_records_a_new_schedule_and_keeps_its_due_time_until_its_spec_changes(
        store: Store):
    await store.sync_schedules([("nightly", "0 3 * * *|UTC|on", T)])
    await store.sync_schedules([("nightly", "0 3 * * *|UTC|on", T + 86400)])  # a restart
    assert (await store.schedule_states())["nightly"].next_due == T
    await store.sync_schedules([("nightly", "0 4 * * *|UTC|on", T + 3600)])  # cron changed
    state = (await store.schedule_states())["nightly"]
    assert (state.spec, state.next_due, state.last) == ("0 4 * * *|UTC|on", T + 3600, None)


async def test_a_firing_submits_its_job_records_itself_and_emits_schedule_fired(store: Store):
    await store.sync_schedules([("nightly", "spec", T)])
    firing = fired(T)
    [recorded] = await store.fire_schedule("nightly", T, T + 1, [firing], NO_QUOTA) or []
    assert (recorded.outcome, recorded.job_id, recorded.due_at) == (FIRED, firing.job_id, T)
    assert recorded.fired_at > 0
    job = await store.get(firing.job_id or "")
    assert job is not None and job.state is State.QUEUED and job.owner == "alice"
    state = (await store.schedule_states())["nightly"]
    assert state.next_due == T + 1
    assert state.last is not None and state.last.job_id == firing.job_id
    events = [(e.type, e.job_id, e.owner) for e in await store.events_after(0)]
    assert events == [("job.queued", firing.job_id, "alice"),
                      ("schedule.fired", None, "alice")]
    [event] = [e for e in await store.events_after(0) if e.type == "schedule.fired"]
    assert event.data["schedule"] == "nightly" and event.data["job"] == firing.job_id
    assert event.data["due_at"].startswith("2027-01-15T08:00:00")


async def test_a_due_time_already_moved_on_fires_nothing(store: Store):
    await store.sync_schedules([("nightly", "spec", T)])
    assert await store.fire_schedule("nightly", T, T + 1, [fired(T)], NO_QUOTA)
    late = fired(T)
    assert await store.fire_schedule("nightly", T, T + 1, [late], NO_QUOTA) is None
    assert await store.get(late.job_id or "") is None
    assert [f.due_at for f in await store.schedule_firings("nightly")] == [T]


async def test_two_nodes_firing_the_same_due_time_at_once_fire_it_once(
        store: Store, other_node: Store):
    await store.sync_schedules([("every", "spec", T)])
    for due in (T, T + 1, T + 2, T + 3, T + 4):
        a, b = fired(due, name="every"), fired(due, name="every")
        won = await asyncio.gather(
            store.fire_schedule("every", due, due + 1, [a], NO_QUOTA),
            other_node.fire_schedule("every", due, due + 1, [b], NO_QUOTA))
        assert sorted(w is None for w in won) == [False, True], won
        jobs = [await store.get(f.job_id or "") for f in (a, b)]
        assert sum(j is not None for j in jobs) == 1
    assert [f.due_at for f in await store.schedule_firings("every")] == \
        [T + 4, T + 3, T + 2, T + 1, T]


async def test_a_firing_whose_unique_key_job_is_still_queued_is_skipped(store: Store):
    await store.sync_schedules([("nightly", "spec", T)])
    first = fired(T, unique_key="playlist")
    await store.fire_schedule("nightly", T, T + 1, [first], NO_QUOTA)
    second = fired(T + 1, unique_key="playlist")
    [recorded] = await store.fire_schedule("nightly", T + 1, T + 2, [second], NO_QUOTA) or []
    assert (recorded.outcome, recorded.job_id) == (SKIPPED, first.job_id)
    assert "still queued" in recorded.message and "'playlist'" in recorded.message
    assert await store.get(second.job_id or "") is None
    types = [e.type for e in await store.events_after(0)]
    assert types == ["job.queued", "schedule.fired", "schedule.skipped"]


async def test_a_firing_refused_by_a_full_queue_is_recorded_as_failed(store: Store):
    await store.submit(make_job("alice"), NO_QUOTA)
    await store.sync_schedules([("nightly", "spec", T)])
    firing = fired(T)
    [recorded] = await store.fire_schedule("nightly", T, T + 1, [firing],
                                           Quota(max_queued=1)) or []
    assert recorded.outcome == FAILED and recorded.job_id is None
    assert "not fired" in recorded.message
    assert await store.get(firing.job_id or "") is None
    assert (await store.schedule_states())["nightly"].next_due == T + 1  # the time is used


async def test_a_firing_without_a_job_is_recorded_with_its_reason(store: Store):
    await store.sync_schedules([("nightly", "spec", T)])
    missed = Firing("nightly", "alice", T, SKIPPED, "missed while no node ran")
    failed = Firing("nightly", "alice", T + 1, FAILED, "not fired: owner 'zed' does not exist")
    await store.fire_schedule("nightly", T, T + 2, [missed, failed], NO_QUOTA)
    history = await store.schedule_firings("nightly")
    assert [(f.due_at, f.outcome, f.message) for f in history] == [
        (T + 1, FAILED, "not fired: owner 'zed' does not exist"),
        (T, SKIPPED, "missed while no node ran")]
    types = [e.type for e in await store.events_after(0)]
    assert types == ["schedule.skipped", "schedule.failed"]


async def test_old_firings_are_pruned(store: Store):
    await store.sync_schedules([("nightly", "spec", T)])
    await store.fire_schedule("nightly", T, T + 1, [fired(T)], NO_QUOTA)
    [recorded] = await store.schedule_firings("nightly")
    assert await store.prune_firings(recorded.fired_at - 1) == 0
    assert await store.prune_firings(recorded.fired_at + 1) == 1
    assert await store.schedule_firings("nightly") == []
