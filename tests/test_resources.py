"""Resource-aware admission with real processes that allocate and hold memory.

The memory budget is checked by sampling the live `hog` processes and their resident
memory, not by trusting the store's own counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import psutil

from conftest import TEST_KINDS, wait_for, wait_state
from jobgate.model import State

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
        assert done.peak_memory_mb is not None and done.peak_memory_mb >= 80


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
