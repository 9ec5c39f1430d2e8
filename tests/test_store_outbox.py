"""Storage conformance, the outbox of deliveries: each path into a final state (finish,
cancel, recovery, start timeout) writes its job's deliveries in the same transaction;
attempts are claimed once across nodes under a lease, recorded and settled. Runs on every
backend."""

from __future__ import annotations

import asyncio
import time

from jobgate.deliveries import NOTIFY, WEBHOOK, Attempt, Rules, Target, config_ref
from jobgate.model import FINAL, Job, State
from jobgate.store.base import Store
from storekit import NO_QUOTA, claim_one, done, make_job, running, submit

HOOK = "https://hooks.example.org/in"
NOTE = "ntfy://jobgate-test-topic"


def rules(on: frozenset[State] = frozenset(FINAL), backoff_s: tuple[float, ...] = (5.0,),
          max_age_s: float = 3600.0) -> Rules:
    targets = (Target(WEBHOOK, "global", config_ref(HOOK), on),
               Target(NOTIFY, "global", config_ref(NOTE), frozenset({State.COMPLETED})))
    return Rules(targets, {}, frozenset(FINAL), backoff_s, max_age_s,
                 {config_ref(HOOK): HOOK, config_ref(NOTE): NOTE})


def ok(n: int) -> Attempt:
    return Attempt(n, time.time(), 1.0, 200, "ok", worker="w1")


def refused(n: int, status: int = 500) -> Attempt:
    return Attempt(n, time.time(), 1.0, status, "no", f"HTTP {status}", worker="w1")


async def test_a_completed_job_writes_one_delivery_per_target_with_its_json(store: Store):
    store.delivery_rules = rules()
    job = await running(store)
    assert await store.finish(job.id, job.lease_token, done(result={"n": 3})) is \
        State.COMPLETED
    hook, note = await store.deliveries(job.id)
    assert (hook.channel, hook.source, hook.target) == (WEBHOOK, "global", config_ref(HOOK))
    assert (note.channel, note.target) == (NOTIFY, config_ref(NOTE))
    for d in (hook, note):
        assert (d.state, d.attempts, d.event, d.owner) == ("pending", 0, "job.completed",
                                                          job.owner)
        assert d.payload["id"] == job.id
        assert d.payload["state"] == "completed"
        assert d.payload["result"] == {"n": 3}
        assert d.payload["args"] == job.args  # the whole job, not only what finish read
        assert d.due_at <= time.time()
    assert NOTE not in str(hook) + str(note)  # a configured target is kept by its hash


async def test_only_the_states_a_target_asks_for_make_deliveries(store: Store):
    store.delivery_rules = rules(on=frozenset({State.COMPLETED}))
    job = await running(store)
    await store.finish(job.id, job.lease_token, done(State.FAILED, error="boom"))
    assert await store.deliveries(job.id) == []
    retried = await running(store)
    await store.finish(retried.id, retried.lease_token,
                       done(State.QUEUED, retry_at=time.time() + 60))
    assert await store.deliveries(retried.id) == []  # going back to the queue: no end


async def test_no_rules_and_no_webhook_make_no_delivery(store: Store):
    job = await running(store)
    await store.finish(job.id, job.lease_token, done())
    assert await store.deliveries(job.id) == []


async def test_a_jobs_own_webhook_is_written_when_it_is_cancelled(store: Store):
    store.delivery_rules = Rules()
    job = await _with_webhook(store, "https://me.example.org/hook?key=1")
    await store.cancel(job.id)
    (d,) = await store.deliveries(job.id)
    assert (d.channel, d.source, d.target, d.event) == (
        WEBHOOK, "job", "https://me.example.org/hook?key=1", "job.cancelled")
    assert d.payload["state"] == "cancelled"


async def test_recovery_and_the_start_timeout_write_deliveries_too(store: Store):
    store.delivery_rules = rules()
    lost = await submit(store, kind="solo", max_attempts=1)
    await claim_one(store, kinds=["solo"], lease_s=0.05)
    stale = await submit(store, run_at=time.time() - 120)
    await asyncio.sleep(0.1)
    assert [j.id for j in await store.recover()] == [lost.id]
    assert [j.id for j in await store.expire_queued(60)] == [stale.id]
    (lost_hook,) = await store.deliveries(lost.id)
    (stale_hook,) = await store.deliveries(stale.id)
    assert (lost_hook.event, lost_hook.payload["error"]) == ("job.failed", "worker lost")
    assert stale_hook.event == "job.failed"
    assert "start_timeout" in stale_hook.payload["error"]


async def test_each_attempt_is_claimed_by_one_node_until_its_lease_runs_out(
        store: Store, other_node: Store):
    store.delivery_rules = other_node.delivery_rules = rules()
    jobs = [await running(store) for _ in range(5)]
    for job in jobs:
        await store.finish(job.id, job.lease_token, done())
    mine, theirs = await asyncio.gather(store.claim_deliveries("w1", 100, 0.2),
                                        other_node.claim_deliveries("w2", 100, 0.2))
    assert len(mine) + len(theirs) == 10  # a webhook and a notification per job
    assert not {d.id for d in mine} & {d.id for d in theirs}
    assert {d.attempts for d in mine + theirs} == {1}
    assert await store.claim_deliveries("w1", 100, 0.2) == []  # leased
    await asyncio.sleep(0.3)
    again = await other_node.claim_deliveries("w2", 100, 30)
    assert len(again) == 10 and {d.attempts for d in again} == {2}
    late = mine[0] if mine else theirs[0]
    assert await store.record_attempt(late.id, ok(1)) is None  # its lease moved on


async def test_a_failed_attempt_is_due_again_after_the_backoff_and_a_good_one_ends_it(
        store: Store):
    store.delivery_rules = rules(backoff_s=(0.2, 60.0))
    job = await running(store)
    await store.finish(job.id, job.lease_token, done())
    claimed = await store.claim_deliveries("w1", 100, 30)
    hook = next(d for d in claimed if d.channel == WEBHOOK)
    retry = await store.record_attempt(hook.id, refused(1))
    assert retry is not None
    assert (retry.state, retry.attempts, retry.last_status) == ("pending", 1, 500)
    assert retry.lease_expires_at is None
    assert 0.1 < retry.due_at - time.time() <= 0.2
    assert hook.id not in {d.id for d in await store.claim_deliveries("w1", 100, 30)}
    await asyncio.sleep(0.25)
    (second,) = await store.claim_deliveries("w1", 100, 30)
    assert (second.id, second.attempts) == (hook.id, 2)
    delivered = await store.record_attempt(hook.id, ok(2))
    assert delivered is not None
    assert (delivered.state, delivered.attempts, delivered.last_status) == ("delivered", 2, 200)
    assert delivered.finished_at is not None
    (listed,) = [d for d in await store.deliveries(job.id) if d.id == hook.id]
    assert [(a.n, a.status, a.ok) for a in listed.tries] == [(1, 500, False), (2, 200, True)]
    types = [e.type for e in await store.events_after(0) if e.type.startswith("delivery.")]
    assert types == ["delivery.retrying", "delivery.succeeded"]


async def test_a_delivery_is_given_up_past_max_age_or_when_refused_for_good(store: Store):
    store.delivery_rules = rules(backoff_s=(10.0,), max_age_s=5.0)
    job = await running(store)
    await store.finish(job.id, job.lease_token, done())
    first, second = await store.claim_deliveries("w1", 100, 30)
    aged = await store.record_attempt(first.id, refused(1, 503))  # next try past max_age
    gone = await store.record_attempt(second.id, refused(1), permanent=True)
    assert aged is not None and gone is not None
    assert (aged.state, gone.state) == ("failed", "failed")
    assert await store.claim_deliveries("w1", 100, 30) == []
    failed = [e for e in await store.events_after(0) if e.type == "delivery.failed"]
    assert {e.data["delivery"]["id"] for e in failed} == {first.id, second.id}
    assert {e.data["delivery"]["state"] for e in failed} == {"failed"}
    assert "state" not in failed[0].data  # the job's own state is not a delivery's
    assert {e.job_id for e in failed} == {job.id}


async def test_deleting_a_job_deletes_its_deliveries(store: Store):
    store.delivery_rules = rules()
    job = await _with_webhook(store, "https://me.example.org/hook")
    claimed = await claim_one(store)
    await store.finish(job.id, claimed.lease_token, done())
    (d, *_) = await store.claim_deliveries("w1", 100, 30)
    await store.record_attempt(d.id, refused(1))
    assert len(await store.deliveries(job.id)) == 3
    await store.delete(job.id)
    assert await store.deliveries(job.id) == []
    assert await store.claim_deliveries("w1", 100, 30) == []


async def _with_webhook(store: Store, url: str) -> Job:
    job = make_job()
    await store.add_webhook(job.id, url)
    submitted, created = await store.submit(job, NO_QUOTA)
    assert created
    return submitted
