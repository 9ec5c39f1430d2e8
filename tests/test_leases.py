"""Leases at the edges, on both backends: a claim that waited, a worker that slept.

A lease is what keeps another node from taking a job back from a live worker: it must
count from the moment the claim commits, and a node must never take back a job that it
runs itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import psutil
import pytest

from conftest import TEST_KINDS, alive, survivors, wait_for, wait_state
from jobgate.model import Job, State, new_id
from jobgate.scheduler import Limits
from jobgate.store.base import Quota, Store
from nodekit import claims_held, write_row

LEASE_S = 1.0


async def submit(store: Store, kind: str = "noop") -> Job:
    now = time.time()
    job, _ = await store.submit(Job(id=new_id(now), kind=kind, owner="alice", args={},
                                    created_at=now, run_at=now), Quota())
    return job


async def test_a_claim_that_waited_longer_than_a_lease_still_gets_a_whole_lease(
        db_url, store, other_node):
    job = await submit(store)
    with claims_held(db_url):
        claim: asyncio.Task[Any] = asyncio.create_task(
            store.claim("node-a", 1, Limits(max_running=10), LEASE_S, ["noop"]))
        # Held past a whole lease on purpose: that is the wait being tested.
        held_until = time.monotonic() + LEASE_S * 1.5
        while time.monotonic() < held_until:
            assert not claim.done(), "the claim did not wait for the lock"
            await asyncio.sleep(0.05)
        released = time.time()
    [claimed] = await claim
    returned = time.time()
    assert claimed.id == job.id
    stored = await store.get(job.id)
    assert stored is not None and stored.lease_expires_at is not None
    assert released + LEASE_S <= stored.lease_expires_at <= returned + LEASE_S
    assert claimed.lease_expires_at == pytest.approx(stored.lease_expires_at)
    assert stored.started_at is not None and stored.started_at >= released
    # So another node, looking at once, finds a live lease and takes nothing back.
    assert await other_node.recover() == []


# --- a worker's runs ----------------------------------------------------------------------

# A run that ignores SIGTERM (so a worker stopping it waits out its grace, then kills),
# and whose processes carry MARK + the job's id in their argv.
MARK = "jgtest-lease-"
_STUBBORN = json.dumps(["sh", "-c", "trap '' TERM; sleep \"$0\" & wait", "{seconds}",
                        MARK + "{job_id}"])
KINDS = TEST_KINDS + f"""
[kinds.stubborn]
argv = {_STUBBORN}
max_attempts = 2
[kinds.stubborn.args]
seconds = {{ type = "number", default = 6 }}

[kinds.nap]
argv = ["sleep", "{{seconds}}"]
[kinds.nap.args]
seconds = {{ type = "number", default = 3 }}
"""


async def run_tree(queue: Any, job_id: str, worker: str) -> tuple[Job, list[psutil.Process]]:
    """The job as `worker` runs it, and the processes of that run (leader and children)."""
    deadline = time.monotonic() + 15
    while True:
        job = await queue.get(job_id)
        if job.state is State.RUNNING and job.worker == worker and job.pid is not None:
            with contextlib.suppress(psutil.Error):
                leader = psutil.Process(job.pid)
                if children := leader.children(recursive=True):
                    return job, [leader, *children]
        assert time.monotonic() < deadline, f"{worker} does not run {job_id}: {job}"
        await asyncio.sleep(0.02)


async def test_a_run_that_lost_its_lease_stops_without_killing_the_re_run_of_its_job(
        make_settings, open_queue):
    settings = make_settings("[worker]\nlease_s = 1\ncancel_grace_s = 1\n", kinds=KINDS)
    queue, node_a = await open_queue(settings, name="node-a", slots=1)
    job, _ = await queue.submit("bob", "stubborn", {"seconds": 8})
    first, stale = await run_tree(queue, job.id, "node-a")
    other, _ = await open_queue(settings, name="node-b", slots=1)
    rerun: list[psutil.Process] = []
    try:
        # node-a's lease is taken from it (as when it was stopped past it); node-b, the
        # only node with a free slot, runs the job again on this same machine.
        deadline = time.monotonic() + 10
        while not (taken := await other.store.recover(["node-a"])):  # a renewal held it
            assert time.monotonic() < deadline, "node-a's job was never taken"
            await asyncio.sleep(0.02)
        [lost] = taken
        assert (lost.id, lost.lease_token) == (job.id, first.lease_token)
        second, rerun = await run_tree(other, job.id, "node-b")
        assert second.lease_token > first.lease_token
        # node-a notices the loss and stops its own run (SIGTERM, the grace, SIGKILL) ...
        assert await survivors(stale, timeout_s=15) == []
        assert node_a is not None
        await wait_for(lambda: node_a.running == [], timeout_s=15,
                       what="node-a to end its stale run")
        # ... and only its own: the re-run lives on and completes.
        assert [p for p in rerun if not alive(p)] == []
        done = await wait_state(other, job.id, "completed", "failed", "cancelled",
                                timeout_s=30)
        assert (done.state, done.attempt, done.worker) == (State.COMPLETED, 2, "node-b"), \
            done.error
    finally:
        for p in stale + rerun:
            with contextlib.suppress(psutil.Error):
                p.kill()


def expire_lease(db_url: str, job_id: str) -> None:
    """Date a running job's lease in the past, as a node finds it after sleeping past it."""
    write_row(db_url, "UPDATE jobs SET lease_expires_at = ? WHERE id = ?",
              (time.time() - 60, job_id))


async def test_a_node_never_takes_back_a_job_it_still_runs_though_its_lease_ran_out(
        db_url, make_settings, open_queue):
    # A long lease: the lease thread renews nothing during the test by itself.
    settings = make_settings("[worker]\nlease_s = 60\n", kinds=KINDS)
    queue, worker = await open_queue(settings, name="node-a", slots=1)
    job, _ = await queue.submit("bob", "stubborn", {"seconds": 3})
    running, procs = await run_tree(queue, job.id, "node-a")
    expire_lease(db_url, job.id)
    assert worker is not None
    await worker._recover()  # a round of node-a's own recovery loop, now
    current = await queue.get(job.id)
    assert (current.state, current.lease_token) == (State.RUNNING, running.lease_token)
    assert [p for p in procs if not alive(p)] == []
    done = await wait_state(queue, job.id, "completed", "failed", timeout_s=30)
    assert (done.state, done.attempt) == (State.COMPLETED, 1), done.error


def test_a_server_paused_past_its_leases_does_not_fail_its_own_running_jobs(start_server):
    # The one-process deployment (API and worker) with a short lease, stopped for three
    # leases while it runs jobs (a laptop lid, a Pi swapping), then resumed.
    server = start_server("[limits]\nmax_running = 3\n[worker]\nlease_s = 1\n", kinds=KINDS)
    with server.client("bob") as http:
        ids = []
        for _ in range(3):
            response = http.post("/api/jobs", json={"kind": "nap", "args": {"seconds": 6}})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        deadline = time.monotonic() + 30
        while any(http.get(f"/api/jobs/{i}").json()["state"] != "running" for i in ids):
            assert time.monotonic() < deadline, "the jobs did not start"
            time.sleep(0.05)
        assert server.proc is not None
        serve = psutil.Process(server.proc.pid)
        serve.suspend()
        try:
            resume_at = time.monotonic() + 3.0  # paused that long on purpose
            while time.monotonic() < resume_at:
                time.sleep(0.05)
        finally:
            serve.resume()
        deadline = time.monotonic() + 60
        while True:
            jobs = [http.get(f"/api/jobs/{i}").json() for i in ids]
            if all(j["state"] not in ("queued", "running") for j in jobs):
                break
            assert time.monotonic() < deadline, jobs
            time.sleep(0.1)
    assert [(j["state"], j["attempt"], j["error"]) for j in jobs] == \
        [("completed", 1, None)] * 3
