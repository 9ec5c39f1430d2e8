"""The domain model: states, the transition table, events, ids, times and the job's JSON."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import time

import pytest

from jobgate.model import (
    ACTIVE,
    FINAL,
    FINAL_EVENTS,
    JOB_EVENTS,
    QUEUED_EVENTS,
    RUN_END_EVENTS,
    STATE_EVENTS,
    TRANSITIONS,
    Event,
    EventType,
    IllegalMove,
    Job,
    Output,
    State,
    check_move,
    event_type,
    iso,
    new_id,
    parse_iso,
)

Q, R, C, F, X = (State.QUEUED, State.RUNNING, State.COMPLETED, State.FAILED,
                 State.CANCELLED)

#: DESIGN.md "States", plus queued→failed, which `start_timeout` implies.
CONTRACT_MOVES = {
    (Q, R), (Q, X),
    (R, C), (R, F), (R, X), (R, Q),
    (F, Q), (X, Q),
    (Q, F),
}

#: DESIGN.md "Job": the JSON field names, no more and no fewer.
CONTRACT_JOB_FIELDS = {
    "id", "kind", "owner", "args", "priority", "state", "position", "progress", "message",
    "attempt", "max_attempts", "created_at", "run_at", "started_at", "finished_at", "result",
    "error", "worker", "memory_mb", "peak_memory_mb", "depends_on", "unique_key", "outputs",
}

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# --- states --------------------------------------------------------------------------------

def test_state_values_are_the_contract_names():
    assert [s.value for s in State] == ["queued", "running", "completed", "failed",
                                        "cancelled"]
    assert State("queued") is State.QUEUED
    assert json.dumps({"state": State.RUNNING}) == '{"state": "running"}'


def test_final_and_active_split_the_states():
    assert {C, F, X} == FINAL
    assert {Q, R} == ACTIVE
    assert FINAL.isdisjoint(ACTIVE)
    assert set(State) == FINAL | ACTIVE


def test_transition_table_is_exactly_the_contract():
    assert set(TRANSITIONS) == set(State)
    table = {(src, dst) for src, dsts in TRANSITIONS.items() for dst in dsts}
    assert table == CONTRACT_MOVES


def test_completed_is_a_dead_end_and_nothing_moves_to_itself():
    assert TRANSITIONS[C] == frozenset()
    for state in State:
        assert state not in TRANSITIONS[state]


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(State, State)))
def test_check_move_allows_only_table_moves(src, dst):
    if (src, dst) in CONTRACT_MOVES:
        check_move("J1", src, dst)
    else:
        with pytest.raises(IllegalMove) as info:
            check_move("J1", src, dst)
        assert (info.value.job_id, info.value.src, info.value.dst) == ("J1", src, dst)
        assert str(info.value) == f"job J1 is {src.value}: cannot move it to {dst.value}"


# --- events --------------------------------------------------------------------------------

@pytest.mark.parametrize(("src", "dst", "expected"), [
    (None, Q, "job.queued"),
    (Q, R, "job.started"),
    (Q, X, "job.cancelled"),
    (Q, F, "job.failed"),
    (R, C, "job.completed"),
    (R, F, "job.failed"),
    (R, X, "job.cancelled"),
    (R, Q, "job.retrying"),
    (F, Q, "job.queued"),
    (X, Q, "job.queued"),
])
def test_event_type_of_each_move(src, dst, expected):
    assert event_type(src, dst) == expected


def test_event_json_has_type_seq_ts_and_job_id_only_when_set():
    event = Event(7, "job.progress", 0.0, "J1", "alice", {"progress": 50.0})
    assert event.to_json() == {"type": "job.progress", "seq": 7,
                               "ts": "1970-01-01T00:00:00.000Z", "job_id": "J1",
                               "progress": 50.0}
    stats = Event(8, "queue.stats", 0.0, None, None, {"queued": 1}).to_json()
    assert "job_id" not in stats and stats["type"] == "queue.stats"


# --- ids -----------------------------------------------------------------------------------

def test_new_id_is_26_crockford_characters():
    for _ in range(100):
        assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", new_id())


def test_new_id_reads_back_as_its_milliseconds_and_80_random_bits(monkeypatch):
    import jobgate.model
    # A clock of its own: the process's counts up past the latest id it made.
    monkeypatch.setattr(jobgate.model, "_ids", jobgate.model._IdClock())
    crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    for now_s in (0.0, 1.0, 1_700_000_000.123, 2**48 / 1000 - 0.001):
        value = 0
        for char in new_id(now_s):
            value = value * 32 + crockford.index(char)
        assert value >> 80 == int(now_s * 1000)
        assert value < 2**128


def test_new_id_is_unique_over_10000_ids():
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)


def test_new_id_sorts_by_its_timestamp():
    base = time.time()
    ids = [new_id(base + i * 0.001) for i in range(1000)]
    assert sorted(ids) == ids


def test_new_id_sorts_by_creation_even_within_one_millisecond():
    ids = [new_id() for _ in range(10_000)]
    assert sorted(ids) == ids


# --- times ---------------------------------------------------------------------------------

def test_iso_is_utc_with_milliseconds_and_z():
    assert iso(None) is None
    assert iso(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"
    assert ISO_UTC.match(iso(time.time()) or "")


@pytest.mark.parametrize("ts", [0.0, 0.9995, 0.9999996, 59.9999999, 1_700_000_000.0005,
                                1_700_000_000.9999995, 4_102_444_799.999, 1e9 + 0.1234565])
def test_iso_is_what_datetime_itself_writes(ts):
    # iso() formats the second once and adds the milliseconds: no drift from datetime's own
    # rounding, even at a second's edge.
    expected = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")
    assert iso(ts) == expected.replace("+00:00", "Z")


@pytest.mark.parametrize("ts", [0.0, 1.5, 1_700_000_000.123, 4_102_444_800.999])
def test_iso_parse_iso_round_trip_to_the_millisecond(ts):
    assert parse_iso(iso(ts) or "") == pytest.approx(ts, abs=0.0005)
    assert iso(parse_iso(iso(ts) or "")) == iso(ts)


def test_parse_iso_reads_offsets_and_takes_naive_times_as_utc():
    assert parse_iso("2024-01-01T00:00:00Z") == dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp()
    assert parse_iso("2024-01-01T00:00:00") == parse_iso("2024-01-01T00:00:00Z")
    assert parse_iso("2024-01-01T02:00:00+02:00") == parse_iso("2024-01-01T00:00:00Z")


@pytest.mark.parametrize("text", ["", "yesterday", "2024-13-01T00:00:00Z", "12:00"])
def test_parse_iso_refuses_garbage(text):
    with pytest.raises(ValueError):
        parse_iso(text)


# --- the job -------------------------------------------------------------------------------

def _job(**fields) -> Job:
    base = {"id": new_id(1_700_000_000), "kind": "compress", "owner": "alice",
            "args": {"input": "a.mp4"}, "created_at": 1_700_000_000.0,
            "run_at": 1_700_000_000.0}
    return Job(**{**base, **fields})


def test_job_json_has_exactly_the_contract_fields():
    assert set(_job().to_json(3)) == CONTRACT_JOB_FIELDS


def test_job_json_hides_bookkeeping():
    doc = _job(vt=9, lease_token=4, pid=123, idempotency_key="k", cancel_requested=True)
    text = json.dumps(doc.to_json())
    for secret in ("vt", "lease_token", "lease_expires_at", "pid", "idempotency_key",
                   "cancel_requested"):
        assert f'"{secret}"' not in text


def test_job_json_values():
    job = _job(state=State.COMPLETED, started_at=1_700_000_001.0,
               finished_at=1_700_000_002.5, result={"n": 1},
               outputs=[Output("out.mp4", 9, "video/mp4")],
               attempt=1, max_attempts=3, memory_mb=512, peak_memory_mb=100.5,
               progress=100.0)
    doc = job.to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["state"] == "completed"
    assert doc["created_at"] == "2023-11-14T22:13:20.000Z"
    assert doc["finished_at"] == "2023-11-14T22:13:22.500Z"
    assert doc["result"] == {"n": 1} and doc["outputs"] == [
        {"name": "out.mp4", "size": 9, "content_type": "video/mp4", "partial": False}]
    assert (doc["attempt"], doc["max_attempts"], doc["memory_mb"]) == (1, 3, 512)
    assert _job().to_json()["started_at"] is None


def test_job_defaults():
    doc = _job().to_json(1)
    assert doc["priority"] == 0
    assert doc["state"] == "queued"
    assert doc["progress"] is None and doc["result"] is None and doc["error"] is None
    assert doc["depends_on"] == [] and doc["outputs"] == []


@pytest.mark.parametrize("state", list(State))
def test_position_is_shown_only_while_queued(state):
    doc = _job(state=state).to_json(position=4)
    assert doc["position"] == (4 if state is State.QUEUED else None)


def test_dispatch_key_orders_priority_then_turn_then_age():
    older, newer = new_id(1000.0), new_id(1001.0)
    jobs = [
        _job(id=newer, priority=0, vt=1),
        _job(id=older, priority=0, vt=2),
        _job(id=older, priority=5, vt=9),
        _job(id=older, priority=0, vt=1),
    ]
    ordered = sorted(jobs, key=lambda j: j.dispatch_key)
    assert [(j.priority, j.vt, j.id) for j in ordered] == [
        (5, 9, older), (0, 1, older), (0, 1, newer), (0, 2, older)]


def test_event_types_are_the_contracts_names():
    """DESIGN.md's events, plus the stream's own `stream.reset`, the batches' (DESIGN's
    `batch.*`), the schedules', the deliveries' and the operator's controls'; members are
    `str`."""
    assert {t.value for t in EventType} == {
        "job.queued", "job.started", "job.progress", "job.log", "job.retrying",
        "job.completed", "job.failed", "job.cancelled", "queue.stats", "stream.reset",
        "schedule.fired", "schedule.skipped", "schedule.failed",
        "batch.created", "batch.completed",
        "delivery.succeeded", "delivery.retrying", "delivery.failed",
        "queue.paused", "queue.resumed", "limits.changed", "node.drained", "node.undrained"}
    completed: str = EventType.COMPLETED  # a str: it compares equal to the wire name
    assert completed == "job.completed" and "job.completed" in FINAL_EVENTS
    assert json.dumps({"type": EventType.LOG}) == '{"type": "job.log"}'


def test_the_state_events_are_the_moves_of_the_transition_table():
    emitted = {event_type(src, dst) for src, dsts in TRANSITIONS.items() for dst in dsts}
    emitted |= {event_type(None, State.QUEUED)}  # a submit
    assert emitted == STATE_EVENTS
    assert {event_type(State.RUNNING, s) for s in FINAL} == FINAL_EVENTS
    assert {event_type(s, State.QUEUED) for s in (None, State.RUNNING)} == QUEUED_EVENTS
    assert {event_type(State.RUNNING, s) for s in TRANSITIONS[State.RUNNING]} == RUN_END_EVENTS
    assert STATE_EVENTS | {EventType.PROGRESS, EventType.LOG} == JOB_EVENTS
    assert not JOB_EVENTS & {EventType.QUEUE_STATS, EventType.STREAM_RESET}
