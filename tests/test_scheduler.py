"""Admission (pure functions): every limit alone and together, fair turns, backoff."""

from __future__ import annotations

import random

import pytest

from jobgate.model import new_id
from jobgate.scheduler import (
    Candidate,
    Limits,
    Running,
    admit,
    backoff_s,
    blocked,
    free_slots,
    next_vt,
    owner_last,
    serving_turn,
)


def job(owner: str = "alice", kind: str = "noop", memory_mb: int = 0) -> Candidate:
    return Candidate(new_id(), kind, owner, memory_mb)


def names(jobs: list[Candidate], everyone: list[Candidate]) -> list[int]:
    """Indexes of `jobs` in `everyone`, to compare admissions by position."""
    return [everyone.index(j) for j in jobs]


# --- admit ---------------------------------------------------------------------------------

def test_admit_takes_candidates_in_order_up_to_the_slots():
    candidates = [job() for _ in range(5)]
    chosen = admit(candidates, Limits(max_running=10), Running(), slots=3)
    assert chosen == candidates[:3]


def test_admit_honours_global_max_running_counting_what_runs():
    running = Running()
    running.add("bob", "noop", 0, count=2)
    candidates = [job() for _ in range(5)]
    chosen = admit(candidates, Limits(max_running=3), running, slots=5)
    assert chosen == candidates[:1]
    assert running.total == 3


def test_admit_nothing_when_full_or_no_slots():
    running = Running()
    running.add("bob", "noop", 0, count=3)
    assert admit([job()], Limits(max_running=3), running, slots=5) == []
    assert admit([job()], Limits(max_running=3), Running(), slots=0) == []


def test_admit_honours_per_user_running_and_skips_to_other_users():
    running = Running()
    running.add("alice", "noop", 0)
    cands = [job("alice"), job("alice"), job("bob"), job("bob"), job("carol")]
    chosen = admit(cands, Limits(max_running=10, per_user_running=2), running, slots=10)
    assert names(chosen, cands) == [0, 2, 3, 4]
    assert running.by_owner == {"alice": 2, "bob": 2, "carol": 1}


def test_admit_honours_per_kind_max_running():
    running = Running()
    running.add("bob", "compress", 0)
    cands = [job(kind="compress"), job(kind="download"), job(kind="compress"),
             job(kind="download")]
    limits = Limits(max_running=10, kind_max_running={"compress": 2, "download": 1})
    chosen = admit(cands, limits, running, slots=10)
    assert names(chosen, cands) == [0, 1]
    assert running.by_kind == {"compress": 2, "download": 1}


def test_admit_honours_the_memory_budget_in_dispatch_order():
    running = Running()
    running.add("bob", "noop", 300)
    cands = [job(memory_mb=500), job(memory_mb=400), job(memory_mb=200), job(memory_mb=0)]
    chosen = admit(cands, Limits(max_running=10, memory_budget_mb=1000), running, slots=10)
    # 400 does not fit (800 + 400): it waits at the head, so 200 may not pass it; a job
    # that reserves no memory still starts.
    assert names(chosen, cands) == [0, 3]
    assert running.memory_mb == 800


def test_a_big_job_waiting_for_memory_is_not_passed_by_small_ones():
    """The head-of-line policy: the big job gets the memory as running jobs end."""
    limits = Limits(max_running=10, memory_budget_mb=1000)
    running = Running()
    running.add("bob", "noop", 600)  # three small jobs of 200 run
    big, smalls = job("alice", memory_mb=900), [job("carol", memory_mb=200) for _ in range(5)]
    assert admit([big, *smalls], limits, running, slots=10) == []
    freed = Running()  # the small ones ended: nothing runs
    assert admit([big, *smalls], limits, freed, slots=10) == [big]


def test_a_job_this_node_can_never_hold_does_not_hold_up_the_rest():
    limits = Limits(max_running=10, memory_budget_mb=10_000, node_memory_budget_mb=1000,
                    node_memory_free_mb=1000)
    huge, small = job(memory_mb=4000), job(memory_mb=300)
    assert admit([huge, small], limits, Running(), slots=10) == [small]


def test_the_node_budget_counts_this_nodes_own_jobs():
    limits = Limits(max_running=10, node_memory_budget_mb=1000, node_memory_free_mb=500)
    cands = [job(memory_mb=300), job(memory_mb=300), job(memory_mb=100)]
    # The second does not fit what this node has left: it waits, and holds the third.
    assert names(admit(cands, limits, Running(), slots=10), cands) == [0]


def test_admit_a_job_exactly_filling_the_budget():
    chosen = admit([job(memory_mb=1000)], Limits(max_running=1, memory_budget_mb=1000),
                   Running(), slots=1)
    assert len(chosen) == 1


def test_admit_with_every_limit_at_once():
    running = Running()
    running.add("alice", "compress", 400)
    cands = [
        job("alice", "compress", 100),   # 0: compress is at its cap of 1
        job("alice", "noop", 100),       # 1: ok, alice now at 2
        job("alice", "noop", 100),       # 2: alice at her cap of 2
        job("bob", "noop", 300),         # 3: ok, budget now 800
        job("bob", "noop", 600),         # 4: 800 + 600 > 1000: waits for memory
        job("carol", "noop", 100),       # 5: may not pass the job waiting for memory
        job("carol", "noop", 0),         # 6: needs no memory: ok, global cap of 4 reached
    ]
    limits = Limits(max_running=4, per_user_running=2, memory_budget_mb=1000,
                    kind_max_running={"compress": 1})
    chosen = admit(cands, limits, running, slots=10)
    assert names(chosen, cands) == [1, 3, 6]
    assert running.total == 4 and running.memory_mb == 800


def test_admit_never_breaks_a_limit_over_random_inputs():
    rng = random.Random(1234)
    for _ in range(300):
        limits = Limits(
            max_running=rng.randint(1, 6),
            per_user_running=rng.choice([None, 1, 2]),
            memory_budget_mb=rng.choice([None, 500, 1000]),
            kind_max_running=rng.choice([{}, {"a": 1}, {"a": 2, "b": 1}]),
        )
        running = Running()
        cands = [job(rng.choice("xyz"), rng.choice("abc"), rng.choice([0, 100, 300]))
                 for _ in range(rng.randint(0, 12))]
        chosen = admit(cands, limits, running, slots=rng.randint(0, 6))
        assert running.total == len(chosen) <= limits.max_running
        if limits.per_user_running is not None:
            assert max(running.by_owner.values(), default=0) <= limits.per_user_running
        if limits.memory_budget_mb is not None:
            assert running.memory_mb <= limits.memory_budget_mb
        for kind, cap in limits.kind_max_running.items():
            assert running.by_kind[kind] <= cap
        assert [c for c in cands if c in chosen] == chosen  # order kept


def test_free_slots_and_blocked():
    running = Running()
    running.add("alice", "compress", 0, count=2)
    limits = Limits(max_running=3, per_user_running=2, kind_max_running={"compress": 2,
                                                                         "other": 1})
    assert free_slots(limits, running, slots=5) == 1
    assert free_slots(limits, running, slots=0) == 0
    assert free_slots(Limits(max_running=1), running, slots=5) == 0
    assert blocked(limits, running) == ({"alice"}, {"compress"})
    assert blocked(Limits(max_running=3), running) == (set(), set())


# --- fair turns ----------------------------------------------------------------------------

def test_next_vt_numbers_a_users_jobs_from_the_turn_being_served():
    assert next_vt(head_vt=None, owner_last_vt=None) == 1  # an empty queue
    assert next_vt(head_vt=None, owner_last_vt=3) == 4  # behind the owner's running jobs
    assert next_vt(head_vt=10, owner_last_vt=None) == 10  # a newcomer joins the current turn
    assert next_vt(head_vt=10, owner_last_vt=3) == 10  # an old job gives no head start
    assert next_vt(head_vt=10, owner_last_vt=12) == 13  # behind the owner's own queue


def test_next_vt_interleaves_users_first_in_first_out():
    """alice queues 5, then bob 1 and carol 2: everybody's first job before anyone's second."""
    last: dict[str, int] = {}
    queue: list[tuple[int, int, str]] = []
    for seq, owner in enumerate(["alice"] * 5 + ["bob"] + ["carol"] * 2):
        head = min((vt for vt, _, _ in queue), default=None)
        vt = next_vt(head, last.get(owner))
        last[owner] = vt
        queue.append((vt, seq, owner))
    order = [owner for _, _, owner in sorted(queue)]
    assert order == ["alice", "bob", "carol", "alice", "carol", "alice", "alice", "alice"]


def test_the_turn_served_is_the_oldest_queued_or_the_newest_running_when_older():
    assert serving_turn(queued_min=None, running_max=None) is None
    assert serving_turn(queued_min=2, running_max=1) == 1  # a1 runs, a2 waits: turn 1
    assert serving_turn(queued_min=480, running_max=479) == 479
    assert serving_turn(queued_min=4, running_max=None) == 4
    assert serving_turn(queued_min=None, running_max=7) == 7


def test_an_owners_finished_jobs_count_while_their_turn_is_still_open():
    assert owner_last(None, None, head=3, newest=9) is None
    assert owner_last(None, 5, head=3, newest=9) == 5  # finished in an open turn
    assert owner_last(None, 2, head=3, newest=9) is None  # that turn is long past
    assert owner_last(7, 5, head=3, newest=9) == 7
    assert owner_last(None, 5, head=None, newest=None) is None  # a new busy spell


# --- backoff -------------------------------------------------------------------------------

@pytest.mark.parametrize(("attempt", "nominal"), [(0, 5), (1, 5), (2, 10), (3, 20), (4, 40)])
def test_backoff_doubles_and_jitter_stays_within_half_to_full(attempt, nominal):
    assert backoff_s(attempt, 5, 3600, jitter=0.0) == nominal / 2
    assert backoff_s(attempt, 5, 3600, jitter=0.5) == pytest.approx(nominal * 0.75)
    assert backoff_s(attempt, 5, 3600, jitter=0.999) < nominal
    rng = random.Random(attempt)
    for _ in range(200):
        assert nominal / 2 <= backoff_s(attempt, 5, 3600, rng.random()) < nominal


def test_backoff_is_capped_by_max():
    assert backoff_s(30, 5, 60, jitter=0.0) == 30
    assert backoff_s(30, 5, 60, jitter=0.999) < 60


def test_backoff_does_not_overflow_on_huge_attempt_counts():
    # Kinds pass seconds as floats; max_attempts has no upper bound in the config.
    assert backoff_s(2000, 5.0, 60.0, jitter=0.5) == 45.0
