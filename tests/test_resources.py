"""Resource-aware admission with real processes that allocate and hold memory.

The memory budget is checked by sampling the live `hog` processes and their resident
memory, not by trusting the store's own counts.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Callable

import httpx
import psutil
import pytest

from conftest import TEST_KINDS, Server, wait_for, wait_state
from jobgate.arguments import ArgumentError
from jobgate.model import State
from jobgate.store.base import Stats
from jobgate.stream import stats_json

PY = sys.executable
MARK = "jgres-"

# Allocates `mb` MB (touching every page, so it is resident), holds it `seconds`, exits.
_HOG = json.dumps([PY, "-c", "import sys, time; b = bytearray(int(sys.argv[1]) * 1048576); "
                   "b[::4096] = b'x' * len(b[::4096]); time.sleep(float(sys.argv[2]))",
                   "{mb}", "{seconds}", MARK + "{job_id}"])
# Grows by 20 MB every 50 ms, up to 400 MB, unless something stops it first.
_GROW = json.dumps([PY, "-c", "import time\nchunks = []\nfor _ in range(20):\n"
                    "    chunks.append(bytearray(20 * 1048576)); time.sleep(0.05)\n"
                    "time.sleep(5)", MARK + "{job_id}"])


def kinds(hog_mb: int, big_mb: int = 300) -> str:
    return TEST_KINDS + f"""
[kinds.hog]
argv = {_HOG}
memory_mb = {hog_mb}
[kinds.hog.args]
mb = {{ type = "integer", min = 1, max = 500, default = {hog_mb} }}
seconds = {{ type = "number", min = 0, max = 60, default = 0.6 }}

[kinds.big]
argv = {_HOG}
memory_mb = {big_mb}
[kinds.big.args]
mb = {{ type = "integer", min = 1, max = 500, default = {big_mb} }}
seconds = {{ type = "number", min = 0, max = 60, default = 0.3 }}

[kinds.grow]
argv = {_GROW}
memory_limit_mb = 100
max_attempts = 3
backoff = "0.1s"
"""


def hogs() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if cmdline and cmdline[-1].startswith(MARK):
            found.append(p)
    return found


def resident_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 1048576


async def test_the_memory_budget_is_never_exceeded(make_settings, open_queue):
    """8 jobs of 80 MB under a 250 MB budget: at most 3 hold their memory at once, and
    the budget is reached."""
    settings = make_settings("[limits]\nmax_running = 8\nmemory_budget_mb = 250\n",
                             kinds=kinds(80, big_mb=200))
    queue, _ = await open_queue(settings)
    jobs = [(await queue.submit(f"user{i % 3}", "hog", {"mb": 80}))[0] for i in range(8)]
    most, most_mb = 0, 0.0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = hogs()
        most, most_mb = max(most, len(live)), max(most_mb, resident_mb(live))
        running = await queue.store.running_jobs()
        assert sum(j.memory_mb for j in running) <= 250
        if all(j.state.value == "completed" for j in
               [await queue.get(job.id) or job for job in jobs]):
            break
        await asyncio.sleep(0.02)
    assert most == 3, most  # 3 x 80 = 240 of 250: the budget was reached, never passed
    assert most_mb < 250 + 3 * 30  # what they hold (plus each interpreter's own memory)
    for job in jobs:
        done = await queue.get(job.id)
        assert done is not None and done.state is State.COMPLETED
        # Sampled, so a loaded machine may see the peak a few pages short (77.2 in CI).
        assert done.peak_memory_mb is not None and done.peak_memory_mb >= 72


async def test_a_big_job_at_the_head_is_not_starved_by_small_ones(make_settings, open_queue):
    """With small jobs arriving all the time, the big one still starts: nothing that
    needs memory passes it while it waits, so memory frees up for it."""
    settings = make_settings("[limits]\nmax_running = 10\nmemory_budget_mb = 300\n",
                             kinds=kinds(100, big_mb=300))
    queue, _ = await open_queue(settings)
    for _ in range(3):
        await queue.submit("alice", "hog", {"mb": 20, "seconds": 0.5})
    await wait_for(lambda: len(hogs()) == 3, what="three small jobs running")
    big, _ = await queue.submit("bob", "big", {"mb": 20})
    later = []
    for _ in range(10):  # a steady stream of small jobs behind it
        later.append((await queue.submit("carol", "hog", {"mb": 20, "seconds": 0.5}))[0])
        await asyncio.sleep(0.1)
    started = await wait_state(queue, big.id, "running", "completed", timeout_s=30)
    assert started.started_at is not None
    for job in later:
        current = await queue.get(job.id)
        assert current is not None
        # Nobody who came after the big job started before it.
        assert current.started_at is None or current.started_at >= started.started_at


async def test_memory_pressure_pauses_starts_until_it_passes(make_settings, open_queue):
    """With less memory available than `min_free_memory_mb`, queued jobs wait with the
    reason as their message; when the threshold is met again, they start."""
    machine_mb = psutil.virtual_memory().total // 1048576
    settings = make_settings(f"[limits]\nmin_free_memory_mb = {machine_mb + 1}\n",
                             kinds=kinds(10))
    queue, _ = await open_queue(settings)
    job, _ = await queue.submit("alice", "sleep", {"seconds": 0})
    await wait_for(lambda: queue.pressure == "memory pressure", what="pressure seen")
    await asyncio.sleep(1.5)  # more than one look at the machine
    current = await queue.get(job.id)
    assert current is not None and current.state is State.QUEUED
    assert queue.to_json(current)["message"] == "waiting: memory pressure"
    settings.limits.min_free_memory_mb = 1  # the machine "recovers"
    await wait_state(queue, job.id, "completed", timeout_s=10)
    assert queue.pressure is None


async def test_load_above_max_load_pauses_starts(make_settings, open_queue):
    settings = make_settings("[limits]\nmax_load = 0.000001\n", kinds=kinds(10))
    queue, _ = await open_queue(settings)
    job, _ = await queue.submit("alice", "sleep", {"seconds": 0})
    if psutil.getloadavg()[0] <= 0.000001:  # an idle machine: nothing to show
        await wait_state(queue, job.id, "completed", timeout_s=10)
        return
    await wait_for(lambda: queue.pressure == "load", what="load seen")
    current = await queue.get(job.id)
    assert current is not None and current.state is State.QUEUED
    settings.limits.max_load = 10_000.0
    await wait_state(queue, job.id, "completed", timeout_s=10)


async def test_a_job_over_its_memory_limit_is_killed_and_not_retried(make_settings,
                                                                    open_queue):
    settings = make_settings(kinds=kinds(10))
    queue, _ = await open_queue(settings)
    job, _ = await queue.submit("alice", "grow")
    failed = await wait_state(queue, job.id, "failed", "completed", timeout_s=30)
    assert failed.state is State.FAILED
    assert failed.error == "exceeded memory limit (100 MB)"
    assert failed.attempt == 1  # max_attempts = 3, but a memory limit is not retried
    assert failed.peak_memory_mb is not None and failed.peak_memory_mb > 100
    await wait_for(lambda: not hogs(), what="the job's processes gone")


async def test_a_kind_may_run_its_processes_at_a_lower_cpu_priority(make_settings,
                                                                   open_queue):
    niced = TEST_KINDS + f"""
[kinds.gentle]
argv = {json.dumps([PY, "-c", "import os, time; print(os.nice(0)); time.sleep(0.3)",
                    MARK + "{job_id}"])}
nice = 7
"""
    queue, _ = await open_queue(make_settings(kinds=niced))
    job, _ = await queue.submit("alice", "gentle")
    await wait_state(queue, job.id, "completed")
    lines = [line for _, line in await queue.store.logs(job.id)]
    assert lines == [str(os.nice(0) + 7)]


# --- learned estimates, per-job overrides, visibility ---------------------------------------

def auto_kinds(limit_mb: int | None = None) -> str:
    return kinds(10, big_mb=10) + f"""
[kinds.learner]
argv = {_HOG}
memory_mb = "auto"
{f"memory_limit_mb = {limit_mb}" if limit_mb else ""}
[kinds.learner.args]
mb = {{ type = "integer", min = 1, max = 500, default = 60 }}
seconds = {{ type = "number", min = 0, max = 60, default = 1.2 }}
"""


async def test_an_auto_kind_learns_its_estimate_from_measured_peaks(make_settings, open_queue):
    """Before any history a job reserves `auto_memory_default_mb`; after three jobs that
    each held 60 MB, a new one reserves their 90th percentile peak plus the margin."""
    settings = make_settings("[limits]\nmax_running = 3\nauto_memory_default_mb = 32\n"
                             "auto_memory_margin_pct = 25\n", kinds=auto_kinds())
    queue, _ = await open_queue(settings)
    with queue.bus.subscribe(lambda e: e.type == "job.completed") as done:
        first = [(await queue.submit("alice", "learner"))[0] for _ in range(3)]
        assert [j.memory_mb for j in first] == [32, 32, 32]
        for _ in first:
            await asyncio.wait_for(done.get(), 30)
    peaks = []
    for job in first:
        current = await queue.get(job.id)
        assert current is not None and current.state is State.COMPLETED
        assert current.peak_memory_mb is not None and current.peak_memory_mb >= 60
        peaks.append(current.peak_memory_mb)
    learned, _ = await queue.submit("bob", "learner", {"mb": 1})
    assert learned.memory_mb >= 60
    assert learned.memory_mb == math.ceil(max(peaks) * 1.25)  # p90 of 3 = the largest
    memory = (await queue.kind_memory(queue.kind("learner"))).to_json()
    assert memory["memory_estimate_mb"] == learned.memory_mb
    assert memory["memory_estimate_from"] == "learned"
    assert memory["peak_memory_jobs"] == 3
    assert memory["peak_memory_max_mb"] == max(peaks)
    assert memory["peak_memory_p50_mb"] == sorted(peaks)[1]
    await wait_state(queue, learned.id, "completed")


async def test_a_learned_estimate_is_capped_by_the_kinds_limit_and_the_budget(make_settings,
                                                                         open_queue):
    settings = make_settings("[limits]\nmemory_budget_mb = 70\nauto_memory_default_mb = 500\n",
                             kinds=auto_kinds(limit_mb=200))
    queue, _ = await open_queue(settings)
    job, _ = await queue.submit("alice", "learner", {"mb": 50})
    assert job.memory_mb == 70  # the default, capped by the budget
    await wait_state(queue, job.id, "completed")
    learned, _ = await queue.submit("alice", "learner", {"mb": 1})
    # 50 MB plus the interpreter, plus 25 %: more than the budget, so the budget.
    assert learned.memory_mb == 70
    assert (await queue.kind_memory(queue.kind("learner"))).source == "learned"


async def test_a_job_may_override_its_kinds_memory_estimate(make_settings, open_queue):
    """An override is what admission reserves: with 200 of a 250 MB budget taken, an 80 MB
    job waits until the big one ends."""
    settings = make_settings("[limits]\nmax_running = 4\nmemory_budget_mb = 250\n",
                             kinds=kinds(80, big_mb=200))
    queue, _ = await open_queue(settings)
    big, _ = await queue.submit("alice", "hog", {"mb": 20, "seconds": 1.5}, memory_mb=200)
    assert big.memory_mb == 200
    await wait_state(queue, big.id, "running")
    assert (await queue.stats()).memory_reserved_mb == 200
    small, _ = await queue.submit("bob", "hog", {"mb": 20, "seconds": 0})
    assert small.memory_mb == 80
    ended = await wait_state(queue, small.id, "completed")
    big_done = await wait_state(queue, big.id, "completed")
    assert ended.started_at is not None and big_done.finished_at is not None
    assert ended.started_at >= big_done.finished_at  # 200 + 80 > 250: it waited


async def test_an_override_beyond_the_limits_is_refused(make_settings, open_queue):
    settings = make_settings("[limits]\nmemory_budget_mb = 1000\n",
                             kinds=auto_kinds(limit_mb=300))
    queue, _ = await open_queue(settings, worker=False)
    for memory_mb, reason in ((-1, "expected a whole number of MB >= 0, got -1"),
                              (301, "more than the memory_limit_mb of kind learner (300 MB)"),
                              (1001, "more than the memory budget (1000 MB): such a job "
                                     "could never start")):
        kind = "learner" if memory_mb != 1001 else "hog"
        with pytest.raises(ArgumentError) as info:
            await queue.submit("alice", kind, memory_mb=memory_mb)
        assert info.value.field == "memory_mb" and reason in info.value.reason, info.value
    job, _ = await queue.submit("alice", "learner", memory_mb=0)
    assert job.memory_mb == 0
    job, _ = await queue.submit("alice", "hog", memory_mb=1000)
    assert job.memory_mb == 1000


async def test_without_a_budget_a_job_larger_than_the_machine_is_refused(make_settings,
                                                                        open_queue):
    """Nothing configured: the node's budget is the machine's memory, and a job (or a
    kind's estimate) that could never fit in it is refused instead of queued forever."""
    machine_mb = psutil.virtual_memory().total // 1048576
    huge = f'[kinds.huge]\nargv = ["true"]\nmemory_mb = {machine_mb + 1}\n'
    settings = make_settings(kinds=kinds(10) + huge)
    queue, _ = await open_queue(settings, worker=False)
    assert queue.node_memory_budget_mb == queue.memory_ceiling_mb == machine_mb
    with pytest.raises(ArgumentError, match="could never start"):
        await queue.submit("alice", "huge")
    with pytest.raises(ArgumentError, match="could never start"):
        await queue.submit("alice", "hog", memory_mb=machine_mb + 1)


async def test_queue_stats_show_the_machine_and_running_jobs_memory(make_settings,
                                                                   open_queue):
    settings = make_settings(kinds=kinds(10))
    queue, worker = await open_queue(settings)
    assert worker is not None
    idle = stats_json(queue, settings, await queue.stats())
    machine_mb = psutil.virtual_memory().total // 1048576
    assert idle["node_memory_budget_mb"] == machine_mb == worker.node_budget_mb
    assert 0 < idle["memory_available_mb"] <= machine_mb
    assert idle["pressure"] is None
    assert idle["running_rss_mb"] == idle["running_peak_mb"] == 0
    job, _ = await queue.submit("alice", "hog", {"mb": 60, "seconds": 3})
    await wait_state(queue, job.id, "running")
    await wait_for(lambda: stats_json(queue, settings, Stats({}, 0, 0, None, None))
                   ["running_rss_mb"] >= 60, what="the hog's memory measured")
    busy = stats_json(queue, settings, await queue.stats())
    assert busy["running_peak_mb"] >= busy["running_rss_mb"] >= 60
    assert busy["running_rss_mb"] < 60 + 40  # the hog and its interpreter, nothing else
    await wait_state(queue, job.id, "completed")
    await wait_for(lambda: not queue.job_memory, what="the ended job forgotten")


async def test_queue_stats_show_memory_pressure(make_settings, open_queue):
    machine_mb = psutil.virtual_memory().total // 1048576
    settings = make_settings(f"[limits]\nmin_free_memory_mb = {machine_mb + 1}\n",
                             kinds=kinds(10))
    queue, _ = await open_queue(settings)
    await wait_for(lambda: queue.pressure is not None, what="pressure seen")
    stats = stats_json(queue, settings, await queue.stats())
    assert stats["pressure"] == "memory pressure"


async def test_progress_events_carry_the_jobs_current_memory(make_settings, open_queue):
    """A hog that reports nothing still gets `job.progress` events with its RSS, a few
    seconds apart; a job that reports progress has its RSS on those events."""
    settings = make_settings(kinds=kinds(10))
    queue, _ = await open_queue(settings)
    with queue.bus.subscribe(lambda e: e.type == "job.progress") as sub:
        hog, _ = await queue.submit("alice", "hog", {"mb": 60, "seconds": 3.5})
        steps, _ = await queue.submit("alice", "steps", {"count": 4, "delay": 0.2})
        await wait_state(queue, steps.id, "completed")
        await wait_state(queue, hog.id, "completed")
        events = []
        while not sub.queue.empty():
            events.append(sub.queue.get_nowait())
    quiet = [e.data for e in events if e.job_id == hog.id]
    assert 1 <= len(quiet) <= 3, quiet  # one every 2 s, not one per sample
    assert all(d["progress"] is None and d["message"] is None for d in quiet)
    assert max(d["rss_mb"] for d in quiet) >= 60
    chatty = [e.data for e in events if e.job_id == steps.id]
    assert [d["progress"] for d in chatty if d["progress"] is not None][-1] == 100
    assert any(d.get("rss_mb", 0) > 0 for d in chatty), chatty


# --- through the API and the command line (a real `jobgate serve`) --------------------------

def test_the_api_checks_a_jobs_memory_override(start_server: Callable[..., Server]) -> None:
    server = start_server("[limits]\nmemory_budget_mb = 1000\nauto_memory_default_mb = 48\n",
                          kinds=auto_kinds(limit_mb=300))
    later = "2999-01-01T00:00:00Z"  # queued, not run: only the reservation matters here

    def post(user: str, kind: str, memory_mb: object) -> httpx.Response:
        with server.client(user) as http:
            return http.post("/api/jobs", json={"kind": kind, "memory_mb": memory_mb,
                                                "run_at": later})

    for user, kind, memory_mb, status, text in (
        ("bob", "hog", -5, 422, "memory_mb: expected a whole number of MB >= 0, got -5"),
        ("bob", "learner", 301, 422, "memory_mb: 301 MB is more than the memory_limit_mb of "
                                     "kind learner (300 MB)"),
        ("bob", "hog", 1001, 422, "memory_mb: 1001 MB is more than the memory budget "
                                  "(1000 MB): such a job could never start"),
        ("bob", "hog", "lots", 422, "memory_mb"),
        ("bob", "hog", 5, 403, "only an admin may lower a job's memory_mb below its kind's "
                               "estimate (10 MB)"),
        ("bob", "learner", 47, 403, "below its kind's estimate (48 MB)"),
    ):
        response = post(user, kind, memory_mb)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert text in error["message"], error
    for user, kind, memory_mb in (("bob", "hog", 600), ("bob", "learner", 48),
                                  ("alice", "hog", 0), ("alice", "learner", 1)):
        response = post(user, kind, memory_mb)
        assert response.status_code == 201, response.text
        assert response.json()["memory_mb"] == memory_mb
    with server.client("bob") as http:
        response = http.post("/api/jobs", json={"kind": "learner", "run_at": later})
        assert response.status_code == 201 and response.json()["memory_mb"] == 48


def test_kinds_and_stats_show_estimates_and_measured_peaks(start_server):
    server = start_server("[limits]\nauto_memory_default_mb = 48\n", kinds=auto_kinds())
    with server.client("bob") as http:
        kinds_before = {k["name"]: k for k in http.get("/api/kinds").json()["kinds"]}
        assert kinds_before["learner"]["memory_mb"] == "auto"
        assert {k: v for k, v in kinds_before["learner"].items()
                if k.startswith(("memory_estimate", "peak_memory"))} == {
            "memory_estimate_mb": 48, "memory_estimate_from": "default",
            "peak_memory_jobs": 0, "peak_memory_p50_mb": None, "peak_memory_max_mb": None}
        assert (kinds_before["hog"]["memory_estimate_mb"],
                kinds_before["hog"]["memory_estimate_from"]) == (10, "declared")
    job_id = server.cli("submit", "learner", "mb=60", "--memory-mb", "64", "--watch",
                        user="bob")
    assert job_id.returncode == 0, job_id.stderr
    with server.client("bob") as http:
        done = http.get("/api/jobs", params={"kind": "learner"}).json()["jobs"][0]
        assert done["state"] == "completed" and done["memory_mb"] == 64
        learner = {k["name"]: k for k in http.get("/api/kinds").json()["kinds"]}["learner"]
    peak = done["peak_memory_mb"]
    assert peak >= 60
    assert learner["peak_memory_jobs"] == 1
    assert learner["peak_memory_p50_mb"] == learner["peak_memory_max_mb"] == peak
    assert learner["memory_estimate_from"] == "learned"
    assert learner["memory_estimate_mb"] == math.ceil(peak * 1.25)

    stats = server.cli("stats", user="bob")
    assert stats.returncode == 0, stats.stderr
    rows = {line.split()[0]: line.split() for line in stats.stdout.splitlines() if line}
    assert rows["KIND"] == ["KIND", "ESTIMATE_MB", "FROM", "PEAK_P50_MB", "PEAK_MAX_MB", "JOBS"]
    assert rows["learner"] == ["learner", str(math.ceil(peak * 1.25)), "learned", f"{peak:g}",
                               f"{peak:g}", "1"]
    assert rows["hog"] == ["hog", "10", "declared", "-", "-", "0"]
    assert rows["pressure"] == ["pressure", "-"]
    assert int(rows["memory_available_mb"][1]) > 0

    refused = server.cli("submit", "learner", "--memory-mb", "-3", user="bob")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "jobgate: memory_mb: expected a whole number of MB >= 0, " \
        "got -3 (HTTP 422)"
