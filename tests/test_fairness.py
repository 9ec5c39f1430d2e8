"""Fair turns between users (`vt`, scheduler.py), on every backend: a newcomer's first job
comes before anyone's second, also while other users' jobs run; a user who submits again
after each job ends does not pass the others; positions follow the same order. Checked on
the store, against a brute-force model of the rule, and through a real server."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import httpx

from jobgate.model import Job, State, new_id
from jobgate.scheduler import Limits
from jobgate.store.base import Outcome, Quota, Store

_last_stamp = 0.0


def make_job(owner: str, priority: int = 0) -> Job:
    global _last_stamp
    now = time.time()
    _last_stamp = max(now, _last_stamp + 0.002)  # ids strictly by creation
    return Job(id=new_id(_last_stamp), kind="noop", owner=owner, args={}, priority=priority,
               created_at=now, run_at=now)


async def submit(store: Store, owner: str, priority: int = 0) -> Job:
    job, created = await store.submit(make_job(owner, priority), Quota())
    assert created
    return job


async def claim_one(store: Store) -> Job | None:
    jobs = await store.claim("w1", 1, Limits(max_running=1000), 30, ["noop"])
    return jobs[0] if jobs else None


async def finish(store: Store, job: Job) -> None:
    assert await store.finish(job.id, job.lease_token, Outcome(State.COMPLETED)) \
        is State.COMPLETED


async def test_newcomers_first_jobs_go_before_the_second_job_of_a_user_whose_first_runs(store):
    alice = [await submit(store, "alice") for _ in range(5)]
    first = await claim_one(store)
    assert first is not None and first.id == alice[0].id
    bob, carol = await submit(store, "bob"), await submit(store, "carol")
    await finish(store, first)
    order = []
    while (job := await claim_one(store)) is not None:
        order.append(job.id)
        await finish(store, job)
    assert order == [bob.id, carol.id, *(j.id for j in alice[1:])]


async def test_a_user_resubmitting_after_each_end_does_not_pass_a_waiting_second_job(store):
    """alice's first job runs long; bob submits one job at a time in the other slot: his
    second goes after alice's second, not before it every time."""
    alice = [await submit(store, "alice") for _ in range(3)]
    long_one = await claim_one(store)
    assert long_one is not None and long_one.id == alice[0].id
    started = []
    for _ in range(3):
        await submit(store, "bob")
        job = await claim_one(store)
        assert job is not None
        started.append(job.owner)
        await finish(store, job)
    assert started == ["bob", "alice", "bob"]


async def test_a_long_running_job_does_not_hold_the_turn_back_for_later_users(store):
    """alice's first job runs on while bob and carol take turns in the other slot; then
    dave, new, joins the turn being served (before bob's and carol's next), and eve,
    whose only job ended many turns ago, gets no credit for the turns she missed."""
    await submit(store, "alice")
    long_one = await claim_one(store)
    assert long_one is not None
    await submit(store, "eve")
    eve_done = await claim_one(store)
    assert eve_done is not None and eve_done.owner == "eve"
    await finish(store, eve_done)
    for _ in range(6):
        await submit(store, "bob")
        await submit(store, "carol")
    previous = None
    for _ in range(6):  # one at a time in the second slot: b1 c1 b2 c2 b3 c3
        job = await claim_one(store)
        assert job is not None
        if previous is not None:
            await finish(store, previous)
        previous = job
    assert previous is not None
    dave, eve = await submit(store, "dave"), await submit(store, "eve")
    assert dave.vt == eve.vt == previous.vt
    order = []
    while (job := await claim_one(store)) is not None:
        order.append(job.owner)
        await finish(store, job)
    assert order[:4] == ["dave", "eve", "bob", "carol"], order


def model_vt(jobs: list[dict[str, Any]], owner: str, priority: int) -> int:
    """The rule of scheduler.py, worked out from every job there is, the slow way."""
    same = [j for j in jobs if j["priority"] == priority]
    queued = [j["vt"] for j in same if j["state"] == "queued"]
    running = [j["vt"] for j in same if j["state"] == "running"]
    # The oldest turn queued, or the newest running when that is older.
    head = min([min(q) for q in [queued] if q] + [max(r) for r in [running] if r],
               default=None)
    newest = max(queued + running) if queued or running else None
    mine = [j for j in same if j["owner"] == owner]
    lasts = [j["vt"] for j in mine if j["state"] in ("queued", "running")]
    if head is not None and newest is not None:
        lasts += [j["vt"] for j in mine if j["state"] not in ("queued", "running")
                  and head <= j["vt"] <= newest]
    return max(head or 1, max(lasts, default=0) + 1)


async def test_turns_match_a_brute_force_model_of_the_rule_over_random_runs(store):
    rng = random.Random(12)
    model: dict[str, dict[str, Any]] = {}
    owners = ["alice", "bob", "carol", "dave"]
    running: list[Job] = []
    for _ in range(300):
        action = rng.random()
        if action < 0.5:
            owner, priority = rng.choice(owners), rng.choice([0, 0, 0, 5])
            expected = model_vt(list(model.values()), owner, priority)
            job = await submit(store, owner, priority)
            assert job.vt == expected, (owner, priority, sorted(
                (j["owner"], j["state"], j["priority"], j["vt"]) for j in model.values()))
            model[job.id] = {"owner": owner, "priority": priority, "vt": job.vt,
                             "state": "queued"}
        elif action < 0.8:
            claimed = await claim_one(store)
            queued = [(-j["priority"], j["vt"], i) for i, j in model.items()
                      if j["state"] == "queued"]
            if not queued:
                assert claimed is None
                continue
            assert claimed is not None and claimed.id == min(queued)[2]
            model[claimed.id]["state"] = "running"
            running.append(claimed)
        elif running:
            job = running.pop(rng.randrange(len(running)))
            await finish(store, job)
            model[job.id]["state"] = "completed"


# --- through a real server ------------------------------------------------------------------

SERVER = """
[limits]
max_running = 1
[rate_limits]
submit_per_user = "off"
submit_per_ip = "off"
"""


def test_start_order_and_positions_through_the_server(start_server):
    """max_running = 1: alice queues 5; while her first runs, bob and carol submit one
    each. They start a1 b1 c1 a2 a3 a4 a5, and the positions say so while they wait."""
    server = start_server(SERVER)
    clients = {name: server.client(name) for name in ("alice", "bob", "carol")}

    def submit_http(user: str, seconds: float) -> str:
        r = clients[user].post("/api/jobs", json={"kind": "sleep",
                                                  "args": {"seconds": seconds}})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    a1 = submit_http("alice", 5)
    rest_of_alice = [submit_http("alice", 0) for _ in range(4)]
    with httpx.stream("GET", f"{server.url}/api/jobs/{a1}/events", timeout=30,
                      headers={"Authorization": f"Bearer {server.tokens['alice']}"}) as r:
        for line in r.iter_lines():
            if '"job.started"' in line:
                break
    b1, c1 = submit_http("bob", 0), submit_http("carol", 0)
    expected = [b1, c1, *rest_of_alice]
    positions = [clients["alice"].get(f"/api/jobs/{j}").json()["position"] for j in expected]
    assert clients["alice"].get(f"/api/jobs/{a1}").json()["state"] == "running"
    assert positions == [1, 2, 3, 4, 5, 6]
    ids = {a1, *expected}
    started, completed = [], set()
    with httpx.stream("GET", f"{server.url}/api/events", timeout=30, headers={
            "Authorization": f"Bearer {server.tokens['alice']}", "Last-Event-ID": "0"}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line.removeprefix("data: "))
            if event.get("job_id") not in ids:
                continue
            if event["type"] == "job.started":
                started.append(event["job_id"])
            elif event["type"] == "job.completed":
                completed.add(event["job_id"])
                if completed == ids:
                    break
    assert started == [a1, *expected]
    for client in clients.values():
        client.close()
