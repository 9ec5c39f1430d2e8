"""Estimates: the simulation of eta.py (pure), and `eta_s` / `remaining_s` / the queued
message through the API of a real server, on both backends."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conftest import wait_job
from jobgate.eta import (
    Active,
    History,
    Queued,
    Snapshot,
    estimate,
    humanise,
    queued_message,
    remaining_s,
)
from jobgate.scheduler import Limits
from jobgate.store.base import Node, Store
from storekit import NO_QUOTA, claim_one, done, make_job, submit

NOW = 1_000_000.0
TEN = History({"ten": [10.0] * 5, "five": [5.0] * 5})


def q(job_id: str, owner: str = "alice", kind: str = "ten", vt: int = 0, *,
      memory_mb: int = 0, priority: int = 0, run_at: float = NOW,
      depends_on: tuple[str, ...] = ()) -> Queued:
    return Queued(job_id, kind, owner, memory_mb, priority, vt, run_at, depends_on)


def run(job_id: str, owner: str = "zed", kind: str = "ten", elapsed: float = 0.0, *,
        memory_mb: int = 0, progress: float | None = None) -> Active:
    return Active(job_id, kind, owner, memory_mb, NOW - elapsed, progress)


def etas(queued: list[Queued], running: list[Active] | None = None,
         limits: Limits | None = None, history: History = TEN, slots: int | None = None
         ) -> dict[str, float | None]:
    snap = Snapshot(queued, running or [], slots)
    return estimate(snap, limits or Limits(max_running=1), history, NOW).eta_s


def test_one_slot_queued_jobs_start_one_typical_run_after_another() -> None:
    out = etas([q("a", vt=1), q("b", vt=2), q("c", vt=3)], [run("r", elapsed=4)])
    assert out == {"a": 6.0, "b": 16.0, "c": 26.0}


def test_the_order_is_the_dispatch_order_not_the_list_order() -> None:
    out = etas([q("late", vt=3), q("urgent", vt=9, priority=5), q("early", vt=1)])
    assert out == {"urgent": 0.0, "early": 10.0, "late": 20.0}


def test_two_slots_fill_from_whichever_frees_first() -> None:
    out = etas([q("a", vt=1), q("b", vt=2), q("c", vt=3)],
               [run("r1", elapsed=8), run("r2", elapsed=3)], Limits(max_running=2))
    # r1 ends at 2, r2 at 7; a takes r1's slot (ends 12), b r2's (ends 17), c a's.
    assert out == {"a": 2.0, "b": 7.0, "c": 12.0}


def test_the_live_nodes_slots_bound_the_limit() -> None:
    out = etas([q("a", vt=1), q("b", vt=2)], limits=Limits(max_running=8), slots=1)
    assert out == {"a": 0.0, "b": 10.0}


def test_a_per_user_cap_lets_another_users_later_job_go_first() -> None:
    out = etas([q("a1", "alice", vt=1), q("a2", "alice", vt=2), q("b1", "bob", vt=3)],
               [run("ra", "alice", elapsed=0)], Limits(max_running=2, per_user_running=1))
    # alice runs one already: a1 waits for it (10 s), bob's job takes the free slot now.
    assert out == {"b1": 0.0, "a1": 10.0, "a2": 20.0}


def test_a_per_kind_cap_holds_its_kind_only() -> None:
    out = etas([q("t1", kind="ten", vt=1), q("t2", kind="ten", vt=2), q("f", kind="five", vt=3)],
               limits=Limits(max_running=3, kind_max_running={"ten": 1}))
    assert out == {"t1": 0.0, "f": 0.0, "t2": 10.0}


def test_the_memory_budget_holds_a_big_job_until_memory_frees() -> None:
    out = etas([q("big", vt=1, memory_mb=800), q("small", vt=2, memory_mb=300),
                q("free", vt=3, kind="five")],
               [run("r", elapsed=5, memory_mb=500)],
               Limits(max_running=4, memory_budget_mb=1000))
    # big waits for r's memory (5 s); small (it would fit now) may not pass it (head of
    # line), nor fit beside it, so it waits for big's end; a job reserving nothing passes.
    assert out["free"] == 0.0
    assert out["big"] == 5.0
    assert out["small"] == 15.0


def test_a_job_that_can_never_fit_has_no_eta() -> None:
    out = etas([q("huge", vt=1, memory_mb=5000)], limits=Limits(max_running=2,
                                                                memory_budget_mb=1000))
    assert out == {"huge": None}


def test_run_at_in_the_future_waits_for_it_and_lets_others_pass() -> None:
    out = etas([q("later", vt=1, run_at=NOW + 30), q("now", vt=2)], limits=Limits(max_running=1))
    assert out == {"now": 0.0, "later": 30.0}


def test_a_dependency_starts_the_job_when_the_dependency_ends() -> None:
    out = etas([q("first", vt=1), q("then", vt=0, kind="five", depends_on=("first",)),
                q("other", "bob", vt=1, kind="five")], limits=Limits(max_running=2))
    # `first` runs 0..10; `then` can only start at 10 although a slot frees at 5.
    assert out == {"first": 0.0, "other": 0.0, "then": 10.0}


def test_a_dependency_that_runs_now_counts_from_its_remaining_time() -> None:
    out = etas([q("then", vt=0, depends_on=("r",))], [run("r", elapsed=7)],
               Limits(max_running=4))
    assert out == {"then": 3.0}


def test_remaining_time_from_the_progress_rate() -> None:
    assert remaining_s(run("r", elapsed=30, progress=50), TEN, NOW) == 30.0
    # No history: the rate alone; too little progress and no history: unknown.
    assert remaining_s(run("r", "x", "new", elapsed=10, progress=10), TEN, NOW) == 90.0
    assert remaining_s(run("r", "x", "new", elapsed=10, progress=1), TEN, NOW) is None
    # Early progress is blended with the kind's history (10 s typical, 2 s gone: 8 left).
    blended = remaining_s(run("r", elapsed=2, progress=10), TEN, NOW)
    assert blended is not None and 8.0 < blended < 18.0


def test_remaining_time_from_history_past_the_typical_run() -> None:
    history = History({"k": [10, 20, 30, 40]})
    assert remaining_s(run("r", kind="k", elapsed=0), history, NOW) == 25.0
    assert remaining_s(run("r", kind="k", elapsed=25), history, NOW) == 10.0  # 30, 40 left
    assert remaining_s(run("r", kind="k", elapsed=99), history, NOW) == 2.5  # overrun


def test_the_typical_run_is_a_trimmed_mean_one_hung_run_does_not_move() -> None:
    assert History({"k": [1.0, 2.0, 6.0]}).typical("k") == 3.0  # the mean, not the median
    assert History({"k": [10.0] * 9 + [1000.0]}).typical("k") == 10.0
    assert History({}).typical("k") is None


def test_an_unknown_kind_hides_the_starts_that_depend_on_its_end() -> None:
    out = etas([q("a", vt=1, kind="new"), q("b", vt=2), q("c", vt=3)],
               limits=Limits(max_running=2))
    # a starts now (known), b too (the other slot); c needs a slot that a may free first.
    assert out == {"a": 0.0, "b": 0.0, "c": None}
    running_unknown = etas([q("a", vt=1)], [run("r", kind="new", elapsed=3)])
    assert running_unknown == {"a": None}
    est = estimate(Snapshot([], [run("r", kind="new", elapsed=3)]), Limits(max_running=1),
                   TEN, NOW)
    assert est.remaining_s == {"r": None}


def test_a_released_job_takes_its_owners_next_turn() -> None:
    # bob's job waits for alice's `dep`; once released it goes behind alice's turn-2 job
    # only if its turn says so: here bob had nothing, so it gets the served turn.
    out = etas([q("dep", vt=1), q("a2", vt=2), q("a3", vt=3),
                q("b", "bob", vt=0, depends_on=("dep",))])
    assert out["dep"] == 0.0
    assert out["b"] is not None and out["a3"] is not None
    assert out["b"] < out["a3"]


def test_humanised_durations_and_the_message() -> None:
    assert humanise(0) == "under a minute"
    assert humanise(59) == "under a minute"
    assert humanise(170) == "about 3 min"
    assert humanise(7000) == "about 2 h"
    assert humanise(3 * 86400) == "about 3 days"
    assert queued_message(4, 170) == "position 4, starts in about 3 min"
    assert queued_message(4, None) == "position 4"
    assert queued_message(None, 7200) == "starts in about 2 h"
    assert queued_message(None, None) is None


def test_a_thousand_queued_jobs_estimate_quickly() -> None:
    queued = [q(f"j{i:05d}", f"u{i % 7}", kind=("ten", "five")[i % 2], vt=i // 7 + 1,
                memory_mb=i % 3 * 100) for i in range(1000)]
    begin = time.perf_counter()
    out = etas(queued, limits=Limits(max_running=4, per_user_running=2,
                                     memory_budget_mb=1000))
    assert time.perf_counter() - begin < 2.0
    assert all(v is not None for v in out.values())


# --- the store's read, on both backends ----------------------------------------------------
async def test_the_snapshot_reads_queued_running_slots_and_history_at_once(store: Store) -> None:
    for _ in range(2):
        await submit(store, "alice", "sleep")
        job = await claim_one(store)
        await store.finish(job.id, job.lease_token, done())
    running = await submit(store, "bob", "sleep", memory_mb=64)
    running = await claim_one(store)
    ready = [await submit(store, owner, "noop") for owner in ("alice", "bob", "alice")]
    waiting, _ = await store.submit(make_job("carol", depends_on=[running.id]), NO_QUOTA)
    await store.heartbeat(Node("n1", "host", 1, 3, "0", time.time()))

    snap, runs = await store.eta_snapshot(100, 10, 60)
    assert [j.id for j in snap.queued] == [ready[0].id, ready[1].id, ready[2].id, waiting.id]
    assert snap.queued[3].depends_on == (running.id,) and snap.queued[0].depends_on == ()
    assert [(a.id, a.owner, a.memory_mb) for a in snap.running] == [(running.id, "bob", 64)]
    assert snap.running[0].started_at > 0 and snap.slots == 3
    assert runs is not None and list(runs) == ["sleep"] and len(runs["sleep"]) == 2
    assert all(r >= 0 for r in runs["sleep"])

    limited, none = await store.eta_snapshot(1, 0, 60)
    assert none is None and [j.id for j in limited.queued] == [ready[0].id, waiting.id]


# --- through the API ---------------------------------------------------------------------
def _submit(http: Any, seconds: float, kind: str = "sleep") -> dict[str, Any]:
    args = {"seconds": seconds} if kind == "sleep" else {"count": 2, "delay": 0.1}
    r = http.post("/api/jobs", json={"kind": kind, "args": args})
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


def test_api_shows_eta_and_remaining_and_says_when_it_starts(start_server: Any) -> None:
    server = start_server("[limits]\nmax_running = 1\n")
    with server.client() as http:
        _api_checks(http)


def _api_checks(http: Any) -> None:
    for _ in range(2):  # history: `sleep` takes about 0.3 s
        wait_job(http, _submit(http, 0.3)["id"], "completed")
    long = _submit(http, 60)
    wait_job(http, long["id"], "running")
    queued = [_submit(http, 0.3) for _ in range(3)]
    assert [j["position"] for j in queued] == [1, 2, 3]
    first = queued[0]
    assert first["eta_s"] is not None
    assert first["message"] == "position 1, starts in under a minute"
    assert first["remaining_s"] is None
    etas_ = [j["eta_s"] for j in queued]
    assert etas_[0] < etas_[1] < etas_[2], etas_

    listed = {j["id"]: j for j in http.get("/api/jobs", params={"limit": 20}).json()["jobs"]}
    assert listed[long["id"]]["remaining_s"] is not None
    assert listed[long["id"]]["eta_s"] is None
    assert [listed[j["id"]]["eta_s"] for j in queued] == pytest.approx(etas_, abs=2)
    one = http.get(f"/api/jobs/{queued[2]['id']}").json()
    assert one["message"].startswith("position 3, starts in ")
    assert one["eta_s"] is not None and one["eta_s"] > one["position"] * 0.2

    # A kind with no history yet: its start is known, what follows it is not.
    new = _submit(http, 0, kind="steps")
    after = _submit(http, 0.3)
    assert new["eta_s"] is not None
    assert after["eta_s"] is None and after["message"] == "position 5"
    still = http.get(f"/api/jobs/{queued[0]['id']}").json()
    assert still["state"] == "queued" and still["eta_s"] is not None
    http.post(f"/api/jobs/{long['id']}/cancel")
    done = wait_job(http, after["id"], "completed")
    assert done["eta_s"] is None and done["remaining_s"] is None
