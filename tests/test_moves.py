"""The rules of a job's life (moves.py), and the admission loop and fair turns every
backend drives (scheduler.Admission, scheduler.Turns): pure, without a database."""

from __future__ import annotations

from typing import Any

import pytest

from jobgate import moves
from jobgate.model import IllegalMove, Job, Output, State, event_data
from jobgate.scheduler import Admission, Candidate, Limits, Running, Turns, next_vt
from jobgate.store.base import Outcome, QueueFull

NOW = 1_000.0


def job(state: State = State.QUEUED, **fields: Any) -> Job:
    base: dict[str, Any] = {"id": "J1", "kind": "k", "owner": "alice", "args": {"n": 1},
                            "state": state, "max_attempts": 3, "created_at": 1.0,
                            "run_at": 1.0, "priority": 2, "vt": 4}
    return Job(**{**base, **fields})


def running(**fields: Any) -> Job:
    base: dict[str, Any] = {"attempt": 1, "lease_token": 7, "worker": "w1",
                            "started_at": 900.0, "lease_expires_at": 1_030.0, "pid": 42,
                            "progress": 30.0, "message": "going"}
    return job(State.RUNNING, **{**base, **fields})


def test_a_move_leaves_the_job_as_read_alone_and_says_what_to_write_and_emit():
    before = running()
    move = moves.ended(before, Outcome(State.COMPLETED, result={"a": 1}), NOW)
    assert before.state is State.RUNNING and before.finished_at is None
    assert move.job.state is State.COMPLETED and move.fields["state"] is State.COMPLETED
    for name, value in move.fields.items():
        assert getattr(move.job, name) == value
    assert move.event == "job.completed" and move.data == event_data(move.job)


def test_submitted_enters_the_queue_at_its_turn():
    move = moves.submitted(job(vt=0), 9)
    assert move.job.vt == 9 and move.job.state is State.QUEUED
    assert move.fields == {"state": State.QUEUED, "vt": 9}
    assert move.event == "job.queued" and move.data["vt"] == 9


def test_queue_full_refuses_at_the_cap_only():
    moves.queue_full(4, 5)
    moves.queue_full(100, None)
    with pytest.raises(QueueFull, match=r"queue full: 5/5"):
        moves.queue_full(5, 5)
    with pytest.raises(QueueFull, match=r"queue full for bob: 2/2"):
        moves.queue_full(2, 2, "bob")


def test_claimed_starts_the_next_attempt_with_a_new_lease_and_a_clean_slate():
    move = moves.claimed(job(attempt=1, lease_token=3, error="old", result=5, progress=9.0,
                             message="m", cancel_requested=True, pid=8), "w2", NOW, 30)
    after = move.job
    assert (after.state, after.attempt, after.lease_token, after.worker) == \
        (State.RUNNING, 2, 4, "w2")
    assert after.started_at == NOW and after.lease_expires_at == NOW + 30
    assert (after.progress, after.message, after.error, after.result, after.pid,
            after.cancel_requested, after.finished_at) == (None,) * 5 + (False, None)
    assert move.event == "job.started"
    with pytest.raises(IllegalMove):
        moves.claimed(running(), "w2", NOW, 30)


def test_ended_persists_the_outcome_and_completed_is_100_percent():
    outcome = Outcome(State.COMPLETED, result=[1], message="ok", peak_memory_mb=5.5,
                      outputs=[Output("a.txt", 3, "text/plain")])
    after = moves.ended(running(cancel_requested=True), outcome, NOW).job
    assert (after.finished_at, after.result, after.outputs, after.progress) == \
        (NOW, [1], [Output("a.txt", 3, "text/plain")], 100.0)
    assert (after.lease_expires_at, after.pid, after.cancel_requested) == (None, None, False)
    assert after.peak_memory_mb == 5.5 and after.message == "ok"
    failed = moves.ended(running(), Outcome(State.FAILED, error="boom"), NOW)
    assert failed.job.progress == 30.0 and failed.job.error == "boom"
    assert failed.event == "job.failed"
    with pytest.raises(ValueError):
        moves.ended(running(), Outcome(State.QUEUED, retry_at=NOW), NOW)
    with pytest.raises(IllegalMove):
        moves.ended(job(), Outcome(State.COMPLETED), NOW)


def test_requeued_goes_behind_its_peers_and_a_hand_back_does_not_count_the_attempt():
    retry = moves.requeued(running(), Outcome(State.QUEUED, error="e", retry_at=NOW + 5), 11)
    assert (retry.job.state, retry.job.vt, retry.job.run_at, retry.job.attempt) == \
        (State.QUEUED, 11, NOW + 5, 1)
    assert (retry.job.worker, retry.job.lease_token, retry.job.pid) == (None, 8, None)
    assert retry.event == "job.retrying"
    back = moves.requeued(running(), Outcome(State.QUEUED, retry_at=NOW, hand_back=True), 11)
    assert back.job.attempt == 0
    with pytest.raises(ValueError):
        moves.requeued(running(), Outcome(State.QUEUED), 11)


def test_runs_to_end_fences_by_token_and_counts_a_repeated_end_once():
    current = {"J1": running(), "J2": job(id="J2")}
    ok = Outcome(State.COMPLETED)
    items = [("J1", 7, ok), ("J1", 6, ok), ("J1", 7, ok), ("J2", 0, ok), ("J3", 1, ok)]
    assert moves.runs_to_end(items, current) == [current["J1"], None, None, None, None]


def test_settle_runs_ends_for_good_together_and_sends_requeues_for_their_turns():
    current = {"J1": running(), "J2": running(id="J2"), "J3": running(id="J3")}
    back = Outcome(State.QUEUED, retry_at=NOW)
    settled = moves.settle_runs(
        [("J1", 7, Outcome(State.COMPLETED)), ("J2", 7, back), ("J3", 1, back),
         ("J1", 7, Outcome(State.FAILED))], current, NOW)
    assert settled.states == [State.COMPLETED, State.QUEUED, None, None]
    assert [m.job.id for m in settled.ended] == ["J1"]
    assert settled.ended[0].job.state is State.COMPLETED
    assert settled.requeue == [(current["J2"], back)]


def test_still_held_needs_the_running_state_the_token_and_no_cancel():
    assert moves.still_held("running", 3, 3, False)
    assert not moves.still_held("running", 4, 3, False)
    assert not moves.still_held("queued", 3, 3, False)
    assert not moves.still_held("running", 3, 3, True)


def test_recovered_cancels_requeues_or_fails_and_fences_the_lost_lease():
    cancel = moves.recovered(running(cancel_requested=True), NOW)
    assert cancel.job.state is State.CANCELLED
    assert cancel.job.message == "cancelled (worker lost)" and cancel.job.finished_at == NOW
    again = moves.recovered(running(), NOW, vt=12)
    assert (again.job.state, again.job.vt, again.job.run_at, again.job.worker) == \
        (State.QUEUED, 12, NOW, None)
    assert again.job.message == "recovered after its worker was lost"
    assert again.event == "job.retrying"
    lost = moves.recovered(running(attempt=3), NOW)
    assert (lost.job.state, lost.job.error, lost.job.message) == \
        (State.FAILED, "worker lost", "worker lost")
    for move in (cancel, again, lost):
        assert (move.job.lease_token, move.job.lease_expires_at, move.job.pid) == (8, None, None)
    with pytest.raises(ValueError):
        moves.recovered(running(), NOW)  # into the queue without a turn


def test_recovery_state_and_held_runs():
    assert moves.recovery_state(running(cancel_requested=True, attempt=3)) is State.CANCELLED
    assert moves.recovery_state(running()) is State.QUEUED
    assert moves.recovery_state(running(attempt=3)) is State.FAILED
    assert moves.is_held(running(), {"J1": 7})
    assert not moves.is_held(running(), {"J1": 6}) and not moves.is_held(running(), {})


def test_a_lost_run_is_returned_with_what_it_left_running():
    before = running()
    move = moves.recovered(before, NOW, vt=1)
    lost = moves.lost_run(move, before)
    assert lost.state is State.QUEUED and lost.vt == 1
    assert (lost.pid, lost.worker, lost.lease_token) == (42, "w1", 7)


def test_cancelled_ends_a_queued_job_and_asks_a_running_ones_worker_once():
    queued = moves.cancelled(job(), NOW)
    assert queued is not None and queued.job.state is State.CANCELLED
    assert (queued.job.finished_at, queued.job.message, queued.event) == \
        (NOW, "cancelled", "job.cancelled")
    asked = moves.cancelled(running(), NOW)
    assert asked is not None and "state" not in asked.fields
    assert asked.fields == {"cancel_requested": True, "message": "cancelling"}
    assert asked.event == "job.progress"
    assert asked.data == {"progress": 30.0, "message": "cancelling", "cancel_requested": True}
    assert moves.cancelled(running(cancel_requested=True), NOW) is None
    for final in (State.COMPLETED, State.FAILED, State.CANCELLED):
        with pytest.raises(IllegalMove):
            moves.cancelled(job(final), NOW)


def test_retried_queues_a_failed_or_cancelled_job_afresh():
    for final in (State.FAILED, State.CANCELLED):
        move = moves.retried(job(final, attempt=3, error="e", result=1, progress=5.0,
                                 finished_at=5.0, started_at=4.0, worker="w",
                                 cancel_requested=True), NOW, 6)
        after = move.job
        assert (after.state, after.vt, after.run_at, after.attempt) == (State.QUEUED, 6, NOW, 0)
        assert (after.finished_at, after.started_at, after.error, after.result,
                after.progress, after.worker, after.lease_expires_at) == (None,) * 7
        assert after.message == "retried by hand" and not after.cancel_requested
        assert move.event == "job.queued"
    for state in (State.QUEUED, State.RUNNING, State.COMPLETED):
        with pytest.raises(IllegalMove):
            moves.retried(job(state), NOW, 6)


def test_only_a_finished_job_is_deletable():
    for final in (State.COMPLETED, State.FAILED, State.CANCELLED):
        moves.check_deletable(job(final))
    for active in (State.QUEUED, State.RUNNING):
        with pytest.raises(IllegalMove):
            moves.check_deletable(job(active))


def test_expired_says_how_long_it_waited():
    move = moves.expired(job(), NOW, 120)
    assert (move.job.state, move.job.finished_at, move.job.message) == \
        (State.FAILED, NOW, "start timeout")
    assert move.job.error == "not started within 2 min (limits.start_timeout)"
    assert moves.expired(job(), NOW, 1.5).job.error == \
        "not started within 1.5 s (limits.start_timeout)"
    with pytest.raises(IllegalMove):
        moves.expired(running(), NOW, 1)


def test_events_that_move_nothing():
    assert moves.progress_data(5.0, "m") == {"progress": 5.0, "message": "m"}
    assert moves.progress_data(5.0, None, 2.0) == {"progress": 5.0, "message": None,
                                                   "rss_mb": 2.0}
    assert moves.log_data(2, ["a"]) == {"first": 2, "lines": ["a"]}
    assert moves.log_data(2, ["a"], replace=True) == {"first": 2, "lines": ["a"],
                                                      "replace": True}


# --- admission and fair turns, as the backends drive them ---------------------------------

def _candidate(n: int, owner: str = "alice", kind: str = "k", memory_mb: int = 0) -> Candidate:
    return Candidate(f"J{n:02d}", kind, owner, memory_mb)


def test_admission_reads_on_past_limits_and_stops_after_its_rounds():
    limits = Limits(max_running=10, per_user_running=1)
    admission = Admission(limits, Running(), 3, ["k"])
    ask = admission.ask()
    assert ask is not None and ask.limit == 3 * 2 + 8 and ask.owners == set()
    admission.offer([_candidate(1), _candidate(2), _candidate(3, "bob")])
    assert [c.id for c in admission.admitted] == ["J01", "J03"]
    ask = admission.ask()
    assert ask is not None and ask.owners == {"alice", "bob"} and ask.limit == 1 * 2 + 8
    assert ask.seen == {"J01", "J02", "J03"}
    admission.offer([_candidate(2), _candidate(4, "carol")])  # J02 was seen: skipped
    assert [c.id for c in admission.admitted] == ["J01", "J03", "J04"]
    assert admission.ask() is None  # every slot taken

    rounds = Admission(Limits(max_running=10, per_user_running=1), Running(), 5, ["k"])
    for n in range(Admission.ROUNDS):
        assert rounds.ask() is not None
        rounds.offer([_candidate(n, "alice")])
    assert rounds.ask() is None and len(rounds.admitted) == 1


def test_admission_stops_when_a_read_finds_nothing_new_or_every_kind_is_full():
    admission = Admission(Limits(max_running=10), Running(), 2, ["k"])
    admission.offer([])
    assert admission.ask() is None
    full = Running()
    full.add("bob", "k", 0)
    capped = Admission(Limits(max_running=10, kind_max_running={"k": 1}), full, 2, ["k"])
    assert capped.ask() is None
    busy = Admission(Limits(max_running=1), full, 2, ["k"])
    assert busy.room == 0 and busy.ask() is None


def test_running_of_rows_counts_by_owner_and_kind():
    running = Running.of([("alice", "k", 2, 10), ("bob", "k", 1, 0)])
    assert (running.total, running.memory_mb, running.by_owner["alice"],
            running.by_kind["k"]) == (3, 10, 2, 3)


def test_turns_follow_jobs_entering_the_queue_from_what_was_read():
    turns = Turns()
    assert not turns.knows_priority(0)
    turns.add_priority(0, 3, 5, 4)  # queued turns 3..5, newest running 4
    assert turns.newest(0) == 5
    assert not turns.knows_owner("alice", 0)
    turns.add_owner("alice", 0, 5, (None, 4))
    turns.add_owner("bob", 0, None, (None,))
    assert turns.next("alice", 0) == next_vt(3, 5) == 6
    assert turns.next("alice", 0) == 7  # numbered on from the last one
    assert turns.next("bob", 0) == 3  # a newcomer gets the turn being served
    empty = Turns()
    empty.add_priority(1, None, None, None)
    assert empty.newest(1) == -1
    empty.add_owner("carol", 1, None, (9,))  # a finished turn outside the open ones
    assert empty.next("carol", 1) == 1
    assert empty.newest(1) == 1


def test_a_job_read_in_a_later_round_does_not_pass_one_held_for_memory():
    """On PostgreSQL each read of one claim sees jobs committed since the last: a small
    job submitted after a big one that waits for memory, found by the second read, still
    waits behind it (it once started first, seen in CI)."""
    running = Running()
    running.add("alice", "k", 60)
    admission = Admission(Limits(max_running=10, memory_budget_mb=300), running, 7, ["k"])
    admission.offer([_candidate(1, "bob", memory_mb=300)])  # the big job: it must wait
    assert admission.admitted == [] and admission.ask() is not None
    admission.offer([_candidate(2, "carol", memory_mb=20)])  # committed since
    assert admission.admitted == []


def test_the_node_memory_a_claim_hands_out_in_one_round_is_gone_in_the_next():
    limits = Limits(max_running=10, node_memory_budget_mb=100, node_memory_free_mb=100)
    admission = Admission(limits, Running(), 5, ["k"])
    admission.offer([_candidate(1, memory_mb=80)])
    admission.offer([_candidate(2, "bob", memory_mb=80), _candidate(3, "bob", memory_mb=20)])
    # J02 does not fit what this node has left, so J03 waits behind it.
    assert [c.id for c in admission.admitted] == ["J01"]
