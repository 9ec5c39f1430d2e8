"""Storage conformance, how a run ends: outcomes persisted, fencing by lease token,
retries and hand-backs, progress, finish-and-claim. Runs on every backend."""

from __future__ import annotations

import time

import pytest

from jobgate.model import Output, State
from jobgate.scheduler import Limits
from jobgate.store.base import Outcome
from jobgate.store.rows import from_json, to_json
from storekit import (
    KINDS,
    claim,
    claim_one,
    done,
    events_of,
    running,
    state,
    submit,
)


async def test_finish_completed_persists_the_outcome(store):
    job = await running(store)
    outcome = Outcome(State.COMPLETED, result={"frames": 10}, message="completed",
                      peak_memory_mb=42.5, outputs=[Output("out.mp4", 9, "video/mp4")])
    finished = await store.finish(job.id, job.lease_token, outcome)
    assert finished is State.COMPLETED
    got = await store.get(job.id)
    assert got is not None
    assert (got.state, got.result, got.outputs, got.peak_memory_mb, got.progress,
            got.error) == (State.COMPLETED, {"frames": 10}, [Output("out.mp4", 9, "video/mp4")],
                           42.5, 100.0, None)
    assert got.finished_at is not None and got.started_at is not None
    assert got.finished_at >= got.started_at
    assert got.lease_expires_at is None
    events = [e for e in await store.events_after(0) if e.job_id == job.id]
    assert events[-1].type == "job.completed"
    assert events[-1].data["result"] == {"frames": 10}


async def test_a_result_comes_back_exactly_as_it_was_given(store):
    # Ints past 64 bits and non-ASCII text too (the JSON writer falls back for them).
    result = {"big": 2**70, "negative": -(2**64), "text": "été ✓ 🎬", "ratio": 0.1,
              "nested": [[], {}, None, True]}
    job = await running(store)
    assert await store.finish(job.id, job.lease_token, done(result=result)) is State.COMPLETED
    got = await store.get(job.id)
    assert got is not None and got.result == result
    assert type(got.result["big"]) is int
    [event] = [e for e in await store.events_after(0)
               if e.job_id == job.id and e.type == "job.completed"]
    assert event.data["result"] == result


def test_json_text_reads_back_what_was_written():
    for value in [{"a": 1}, 2**70, "\ud800 lone surrogate", [1.5, None], {"é": "✓"}]:
        assert from_json(to_json(value)) == value
    # Text written before orjson, by json.dumps: NaN and a lone surrogate escaped.
    assert from_json('{"x": "\\ud800"}') == {"x": "\ud800"}
    nan = from_json('[NaN]')[0]
    assert nan != nan


async def test_finish_failed_and_cancelled_persist(store):
    job = await running(store)
    await store.finish(job.id, job.lease_token, Outcome(State.FAILED, error="exit code 3"))
    got = await store.get(job.id)
    assert got is not None and (got.state, got.error) == (State.FAILED, "exit code 3")
    assert got.finished_at is not None
    job = await running(store)
    await store.finish(job.id, job.lease_token, done(State.CANCELLED))
    assert await state(store, job.id) is State.CANCELLED
    assert (await events_of(store, job.id))[-1] == "job.cancelled"


async def test_finish_with_a_stale_token_does_nothing(store):
    job = await submit(store, max_attempts=3)
    first = await claim_one(store)
    await store.recover(lost_workers=["w1"])  # w1 is declared dead; the job goes back
    second = await claim_one(store, worker="w2")
    assert second.id == job.id and second.lease_token > first.lease_token
    n_events = len(await store.events_after(0))
    assert await store.finish(job.id, first.lease_token, done()) is None
    await store.progress(job.id, first.lease_token, 50.0, "from the dead")
    got = await store.get(job.id)
    assert got is not None
    assert (got.state, got.worker, got.progress, got.message) == (State.RUNNING, "w2", None,
                                                                  None)
    assert len(await store.events_after(0)) == n_events
    assert await store.finish(job.id, second.lease_token, done()) is State.COMPLETED
    assert await store.finish(job.id, second.lease_token, done(State.FAILED)) is None
    assert await state(store, job.id) is State.COMPLETED


async def test_finish_of_an_unknown_job_is_none(store):
    assert await store.finish("nope", 1, done()) is None


async def test_a_retry_waits_behind_its_owners_queued_peers(store):
    first = await submit(store, max_attempts=3)
    peers = [await submit(store) for _ in range(2)]
    job = await claim_one(store)
    assert job.id == first.id
    retry_at = time.time()
    back = await store.finish(job.id, job.lease_token,
                              Outcome(State.QUEUED, error="exit code 1", retry_at=retry_at,
                                      message="retrying"))
    assert back is State.QUEUED
    got = await store.get(job.id)
    assert got is not None
    assert (got.state, got.attempt, got.error, got.worker) == (State.QUEUED, 1, "exit code 1",
                                                              None)
    assert got.run_at == pytest.approx(retry_at)
    assert got.lease_token > job.lease_token
    assert (await events_of(store, job.id))[-1] == "job.retrying"
    order = [(await claim_one(store)).id for _ in range(3)]
    assert order == [peers[0].id, peers[1].id, first.id]
    again = await store.get(first.id)
    assert again is not None and again.attempt == 2


async def test_a_retry_in_backoff_is_not_claimed_before_its_time(store):
    job = await running(store)
    retry_at = time.time() + 60
    await store.finish(job.id, job.lease_token, Outcome(State.QUEUED, retry_at=retry_at))
    assert await claim(store) == []
    assert await store.next_run_at() == pytest.approx(retry_at)


async def test_a_handed_back_job_does_not_count_the_attempt(store):
    job = await running(store)
    await store.finish(job.id, job.lease_token,
                       Outcome(State.QUEUED, retry_at=time.time(), hand_back=True))
    got = await store.get(job.id)
    assert got is not None and (got.state, got.attempt) == (State.QUEUED, 0)
    assert (await claim_one(store)).attempt == 1


async def test_progress_is_stored_and_announced(store):
    job = await running(store)
    await store.progress(job.id, job.lease_token, 42.0, "step 2 of 5")
    got = await store.get(job.id)
    assert got is not None and (got.progress, got.message) == (42.0, "step 2 of 5")
    await store.progress(job.id, job.lease_token, None, "still going")
    got = await store.get(job.id)
    assert got is not None and (got.progress, got.message) == (42.0, "still going")
    events = [e for e in await store.events_after(0) if e.type == "job.progress"]
    assert [(e.data["progress"], e.data["message"]) for e in events] == [
        (42.0, "step 2 of 5"), (None, "still going")]


async def test_a_progress_event_may_carry_the_jobs_current_memory(store):
    job = await running(store)
    await store.progress(job.id, job.lease_token, None, None, rss_mb=61.5)
    await store.progress(job.id, job.lease_token, 10.0, "a step")
    got = await store.get(job.id)
    assert got is not None and (got.progress, got.message) == (10.0, "a step")
    events = [e.data for e in await store.events_after(0) if e.type == "job.progress"]
    assert events == [{"progress": None, "message": None, "rss_mb": 61.5},
                      {"progress": 10.0, "message": "a step"}]


async def test_recent_peaks_are_a_kinds_last_completed_jobs_newest_first(store):
    async def finish(kind: str, state: State, peak: float | None) -> None:
        await submit(store, kind=kind)
        job = await claim_one(store, kinds=[kind])
        await store.finish(job.id, job.lease_token, Outcome(state, peak_memory_mb=peak))

    for peak in (10.0, 30.0, 20.0, 40.5):
        await finish("big", State.COMPLETED, peak)
    await finish("big", State.COMPLETED, None)  # a Python job: nothing measured
    await finish("big", State.FAILED, 999.0)  # only completed jobs count
    await finish("small", State.COMPLETED, 5.0)
    assert await store.recent_peaks("big", 3) == [40.5, 20.0, 30.0]
    assert await store.recent_peaks("big", 100) == [40.5, 20.0, 30.0, 10.0]
    assert await store.recent_peaks("small", 100) == [5.0]
    assert await store.recent_peaks("noop", 100) == []


async def test_finish_and_claim_fills_the_slots_its_ends_free_in_one_call(store):
    limits = Limits(max_running=2)
    for _ in range(3):
        await submit(store)
    a, b = await claim(store, limits=limits)
    [waiting] = [key[2] for key, _ in await store.queued_keys()]
    stale = (b.id, b.lease_token + 1, done())  # a lease that moved on ends nothing
    ended, claimed = await store.finish_and_claim(
        [(a.id, a.lease_token, done()), stale], "w1", 2, limits, 30, KINDS)
    assert ended == [State.COMPLETED, None]
    # a's slot went to the waiting job; b still runs, so max_running 2 leaves no more room.
    assert [j.id for j in claimed] == [waiting]
    still = await store.get(b.id)
    assert still is not None and still.state is State.RUNNING
    assert await events_of(store, a.id) == ["job.queued", "job.started", "job.completed"]
    assert await store.finish_and_claim([], "w1", 2, limits, 30, KINDS) == ([], [])
