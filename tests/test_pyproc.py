"""Python jobs in their own processes: the worker's pool (`jobgate.pyproc`, `jobgate.pychild`).

A timeout or a cancel stops the job's code for real (SIGTERM, SIGKILL after the grace), so
`max_running` is exact; what a job reports crosses the process boundary; a crash fails that
job alone; memory is measured and limited; pool processes die with their worker; a kind
with `in_process = true` still runs in the worker. Real processes throughout, through a
queue and a worker on each backend.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import alive, survivors, wait_for, wait_state
from jobgate.config import ConfigError
from jobgate.kinds import parse_kind
from jobgate.model import Event
from jobgate.pychild import NonRetryable

_MODULE = __name__
TESTS = Path(__file__).parent


# --- the jobs (this module is importable by its name, so the kinds name it) ---------------

def _mark(ctx: Any) -> None:
    """Leave this process's pid in the job's folder, for the test to find the process."""
    (ctx.output_dir / "pid").write_text(str(os.getpid()))


def blocks(ctx: Any, seconds: float = 4.0) -> dict[str, Any]:
    """Blocks without ever looking at ctx.cancelled; says when it really started."""
    started = time.time()
    _mark(ctx)
    time.sleep(seconds)
    return {"pid": os.getpid(), "started": started}


def ignores_sigterm(ctx: Any) -> str:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _mark(ctx)
    time.sleep(120)
    return "never"


def cooperates(ctx: Any) -> str:
    """Polls ctx.cancelled and stops when it turns true."""
    _mark(ctx)
    deadline = time.monotonic() + 120
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    (ctx.output_dir / "saw-cancel").write_text(str(ctx.cancelled))
    return "stopped"


async def waits_async(ctx: Any) -> str:
    _mark(ctx)
    try:
        await asyncio.sleep(120)
    except asyncio.CancelledError:
        (ctx.output_dir / "saw-cancel").write_text("cancelled")
        raise
    return "slept"


def reports(ctx: Any, tag: str = "x") -> dict[str, Any]:
    ctx.progress(50, f"half way {tag}")
    ctx.log(f"ctx.log line {tag}")
    print(f"printed to stdout {tag}")
    print(f"printed to stderr {tag}", file=sys.stderr)
    (ctx.output_dir / "out.txt").write_text(f"made by {tag}")
    return {"job_id": ctx.job_id, "attempt": ctx.attempt, "owner": ctx.owner,
            "pid": os.getpid(), "cancelled": ctx.cancelled}


def draws_a_bar(ctx: Any) -> None:
    """A tqdm-like bar printed to stderr (redrawn with \\r), and one logged whole."""
    for i in range(0, 11):
        sys.stderr.write(f"\r{i * 10:3d}%|{'#' * i:<10}|")
        sys.stderr.flush()
    sys.stderr.write("\n")
    sys.stderr.flush()
    ctx.log("logged 1%\rlogged 2%\rlogged 3%")


def unjsonable(ctx: Any) -> Any:
    return {1, 2}


async def async_reports(ctx: Any) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    ctx.progress(25, "a quarter")
    ctx.log("async line")
    return {"pid": os.getpid(), "job_id": ctx.job_id}


def whoami(ctx: Any) -> dict[str, Any]:
    return {"pid": os.getpid(), "cancelled": ctx.cancelled}


def crashes(ctx: Any, how: str) -> None:
    ctx.log(f"about to crash: {how}")
    if how == "segfault":
        ctypes.string_at(0)
    elif how == "exit":
        os._exit(3)
    elif how == "memory":
        raise MemoryError("no more memory in the job")
    elif how == "non-retryable":
        raise NonRetryable("never works")


def allocates(ctx: Any, mb: int, hold_s: float = 0.0) -> int:
    block = bytearray(mb * 1048576)
    for i in range(0, len(block), 4096):  # touched, so it is resident
        block[i] = 1
    time.sleep(hold_s)
    return len(block)


KINDS = f"""
[kinds.block]
function = "{_MODULE}:blocks"
timeout = "1s"

[kinds.stubborn]
function = "{_MODULE}:ignores_sigterm"

[kinds.cooperative]
function = "{_MODULE}:cooperates"

[kinds.await]
function = "{_MODULE}:waits_async"

[kinds.reports]
function = "{_MODULE}:reports"

[kinds.unjsonable]
function = "{_MODULE}:unjsonable"

[kinds.async_reports]
function = "{_MODULE}:async_reports"

[kinds.bar]
function = "{_MODULE}:draws_a_bar"

[kinds.whoami]
function = "{_MODULE}:whoami"

[kinds.crash]
function = "{_MODULE}:crashes"

[kinds.give_up]
function = "{_MODULE}:crashes"
max_attempts = 3

[kinds.alloc]
function = "{_MODULE}:allocates"

[kinds.alloc_limited]
function = "{_MODULE}:allocates"
memory_limit_mb = 150

[kinds.alloc_auto]
function = "{_MODULE}:allocates"
memory_mb = "auto"

[kinds.inproc]
function = "{_MODULE}:reports"
in_process = true
"""

ONE_AT_A_TIME = "[limits]\nmax_running = 1\n[worker]\ncancel_grace_s = 0.5\n"


async def open_with(make_settings, open_queue, extra: str = ONE_AT_A_TIME):
    queue, worker = await open_queue(make_settings(extra, kinds=KINDS))
    return queue, worker


async def job_process(queue, job_id: str) -> psutil.Process:
    """The process running the job, from the pid it left in its folder."""
    pid_file = queue.job_dir(job_id) / "pid"
    await wait_for(lambda: pid_file.exists() and pid_file.read_text() != "",
                   timeout_s=30, what="the job to write its pid")
    proc = psutil.Process(int(pid_file.read_text()))
    assert proc.pid != os.getpid(), "the job runs inside the worker's process"
    return proc


async def log_lines(queue, job_id: str) -> list[str]:
    return [line for _, line in await queue.store.logs(job_id)]


def recorder(queue) -> tuple[list[Event], Any]:
    events: list[Event] = []
    return events, queue.bus.on(events.append)


def progress_of(events: list[Event], job_id: str) -> list[tuple[Any, Any]]:
    return [(e.data["progress"], e.data["message"]) for e in events
            if e.type == "job.progress" and e.job_id == job_id]


# --- stopping for real ------------------------------------------------------------------

async def test_a_timed_out_sync_job_is_stopped_and_the_next_starts_only_after(
        make_settings, open_queue):
    queue, _ = await open_with(make_settings, open_queue)
    first, _ = await queue.submit("bob", "block", {"seconds": 4})
    proc = await job_process(queue, first.id)
    second, _ = await queue.submit("bob", "block", {"seconds": 0})
    failed = await wait_state(queue, first.id, "failed", "completed", timeout_s=30)
    assert failed.error == "timed out after 1 s"
    assert not alive(proc), "the job's code still runs after it was failed"
    done = await wait_state(queue, second.id, "completed", "failed", timeout_s=30)
    assert done.state.value == "completed", done.error
    # max_running = 1 held for real: the second job's code began after the first ended.
    assert done.result["started"] >= failed.finished_at - 0.05
    assert done.result["pid"] != proc.pid


async def test_cancel_kills_a_job_that_ignores_it_after_the_grace(make_settings, open_queue):
    queue, _ = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "stubborn")
    proc = await job_process(queue, job.id)
    asked = time.monotonic()
    await queue.cancel(job.id)
    done = await wait_state(queue, job.id, "cancelled", "failed", "completed")
    assert done.state.value == "cancelled"
    assert time.monotonic() - asked >= 0.5  # SIGTERM was ignored: SIGKILL after the grace
    assert not alive(proc)


@pytest.mark.parametrize("kind", ["cooperative", "await"])
async def test_a_job_that_honours_cancel_stops_before_the_grace(
        make_settings, open_queue, kind):
    queue, _ = await open_with(make_settings, open_queue,
                               "[limits]\nmax_running = 1\n[worker]\ncancel_grace_s = 60\n")
    job, _ = await queue.submit("bob", kind)
    proc = await job_process(queue, job.id)
    asked = time.monotonic()
    await queue.cancel(job.id)
    done = await wait_state(queue, job.id, "cancelled", "failed", "completed")
    assert done.state.value == "cancelled"
    assert time.monotonic() - asked < 30, "it waited for the SIGKILL"
    assert (queue.job_dir(job.id) / "saw-cancel").read_text() in ("True", "cancelled")
    assert not alive(proc)
    # The next job gets a fresh process: nothing of the cancel reaches it.
    after, _ = await queue.submit("bob", "whoami")
    ended = await wait_state(queue, after.id, "completed", "failed")
    assert ended.result == {"pid": ended.result["pid"], "cancelled": False}
    assert ended.result["pid"] != proc.pid


async def test_a_process_is_reused_after_a_clean_end(make_settings, open_queue):
    queue, worker = await open_with(make_settings, open_queue)
    pids = []
    for _ in range(3):
        job, _ = await queue.submit("bob", "whoami")
        done = await wait_state(queue, job.id, "completed", "failed")
        pids.append(done.result["pid"])
    assert len(set(pids)) == 1 and pids[0] != os.getpid()
    assert worker is not None and worker._pool.pids == pids[:1]


# --- across the boundary ----------------------------------------------------------------

async def test_progress_logs_output_files_and_result_cross_the_boundary(
        make_settings, open_queue):
    queue, _ = await open_with(make_settings, open_queue)
    events, unsubscribe = recorder(queue)
    job, _ = await queue.submit("carol", "reports", {"tag": "t1"})
    done = await wait_state(queue, job.id, "completed", "failed")
    unsubscribe()
    assert done.state.value == "completed", done.error
    assert done.result["pid"] != os.getpid()
    assert {k: v for k, v in done.result.items() if k != "pid"} == {
        "job_id": job.id, "attempt": 1, "owner": "carol", "cancelled": False}
    lines = await log_lines(queue, job.id)
    for line in ("ctx.log line t1", "printed to stdout t1", "printed to stderr t1"):
        assert line in lines
    assert (50, "half way t1") in progress_of(events, job.id)
    assert [o.name for o in done.outputs] == ["out.txt"]
    assert (queue.job_dir(job.id) / "out.txt").read_text() == "made by t1"
    odd, _ = await queue.submit("bob", "unjsonable")
    assert (await wait_state(queue, odd.id, "completed", "failed")).result == "{1, 2}"


async def test_a_bar_a_pool_job_prints_or_logs_is_one_line_with_its_last_text(
        make_settings, open_queue):
    queue, _ = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("carol", "bar")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    # (Printed output and ctx.log come on two channels: in either order.) The bar is one
    # line ending on its last draw, even when the bar ends while its first draw is still
    # being written (seen once in CI on PostgreSQL as "  0%|" kept; the case is
    # tests/test_logtext.py's bar that ends while its first draw is being written).
    assert sorted(await log_lines(queue, job.id)) == ["100%|##########|", "logged 3%"]


async def test_an_async_function_runs_in_a_pool_process(make_settings, open_queue):
    queue, _ = await open_with(make_settings, open_queue)
    events, unsubscribe = recorder(queue)
    job, _ = await queue.submit("bob", "async_reports")
    done = await wait_state(queue, job.id, "completed", "failed")
    unsubscribe()
    assert done.state.value == "completed", done.error
    assert done.result["pid"] != os.getpid() and done.result["job_id"] == job.id
    assert "async line" in await log_lines(queue, job.id)
    assert (25, "a quarter") in progress_of(events, job.id)


# --- crashes ----------------------------------------------------------------------------

@pytest.mark.parametrize(("how", "error"), [
    ("segfault", "the job's process died: killed by signal 11"),
    ("exit", "the job's process died: exit code 3"),
    ("memory", "MemoryError: no more memory in the job"),
])
async def test_a_crash_fails_that_job_alone_and_the_next_one_runs(
        make_settings, open_queue, how, error):
    queue, _ = await open_with(make_settings, open_queue)
    before, _ = await queue.submit("bob", "whoami")
    first_pid = (await wait_state(queue, before.id, "completed", "failed")).result["pid"]
    job, _ = await queue.submit("bob", "crash", {"how": how})
    done = await wait_state(queue, job.id, "failed", "completed")
    assert done.error == error
    assert f"about to crash: {how}" in await log_lines(queue, job.id)
    after, _ = await queue.submit("bob", "whoami")
    ended = await wait_state(queue, after.id, "completed", "failed")
    assert ended.state.value == "completed", ended.error
    # The worker ran on, in a process that replaced the crashed one.
    assert ended.result["pid"] not in (first_pid, os.getpid())
    assert not psutil.pid_exists(first_pid) or not alive(psutil.Process(first_pid))


async def test_non_retryable_from_a_pool_process_fails_at_once_and_keeps_the_process(
        make_settings, open_queue):
    queue, _ = await open_with(make_settings, open_queue)
    before, _ = await queue.submit("bob", "whoami")
    first_pid = (await wait_state(queue, before.id, "completed", "failed")).result["pid"]
    job, _ = await queue.submit("bob", "give_up", {"how": "non-retryable"})
    done = await wait_state(queue, job.id, "failed", "completed")
    assert (done.error, done.attempt, done.max_attempts) == ("never works", 1, 3)
    after, _ = await queue.submit("bob", "whoami")
    # A raised exception is a clean end: the same process runs the next job.
    ended = await wait_state(queue, after.id, "completed", "failed")
    assert ended.result["pid"] == first_pid != os.getpid()


# --- memory -----------------------------------------------------------------------------

@pytest.mark.parametrize("hold_s", [5.0, 0.0])
async def test_a_job_allocating_past_its_memory_limit_is_killed(
        make_settings, open_queue, hold_s):
    queue, _ = await open_with(make_settings, open_queue)
    started = time.monotonic()
    job, _ = await queue.submit("bob", "alloc_limited", {"mb": 300, "hold_s": hold_s})
    done = await wait_state(queue, job.id, "failed", "completed")
    assert done.error == "exceeded memory limit (150 MB)"
    assert done.peak_memory_mb is not None and done.peak_memory_mb > 150
    assert time.monotonic() - started < hold_s + 4 or hold_s == 0
    after, _ = await queue.submit("bob", "alloc_limited", {"mb": 10})
    assert (await wait_state(queue, after.id, "completed", "failed")).state.value == "completed"


async def test_peak_memory_is_measured_and_sampled(make_settings, open_queue):
    queue, _ = await open_with(make_settings, open_queue)
    quick, _ = await queue.submit("bob", "alloc", {"mb": 80})
    done = await wait_state(queue, quick.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    assert done.peak_memory_mb is not None and 80 < done.peak_memory_mb < 200
    events, unsubscribe = recorder(queue)
    slow, _ = await queue.submit("bob", "alloc", {"mb": 60, "hold_s": 3.0})
    done = await wait_state(queue, slow.id, "completed", "failed")
    unsubscribe()
    assert done.peak_memory_mb is not None and done.peak_memory_mb > 60
    rss = [e.data["rss_mb"] for e in events if e.type == "job.progress"
           and e.job_id == slow.id and e.data.get("rss_mb")]
    assert rss and max(rss) > 60, "no memory sample reached the job's events"


async def test_an_auto_python_kind_learns_its_estimate_from_measured_peaks(
        make_settings, open_queue):
    queue, _ = await open_with(make_settings, open_queue)
    kind = queue.settings.kinds["alloc_auto"]
    assert (await queue.kind_memory(kind)).source == "default"
    job, _ = await queue.submit("bob", "alloc_auto", {"mb": 80})
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    learned = await queue.kind_memory(kind)
    assert learned.source == "learned" and learned.estimate_mb > 80


# --- in-process mode --------------------------------------------------------------------

async def test_an_in_process_kind_still_runs_in_the_worker(make_settings, open_queue):
    queue, _ = await open_with(make_settings, open_queue)
    events, unsubscribe = recorder(queue)
    job, _ = await queue.submit("bob", "inproc", {"tag": "here"})
    done = await wait_state(queue, job.id, "completed", "failed")
    unsubscribe()
    assert done.state.value == "completed", done.error
    assert done.result["pid"] == os.getpid()
    assert "ctx.log line here" in await log_lines(queue, job.id)
    assert (50, "half way here") in progress_of(events, job.id)
    assert [o.name for o in done.outputs] == ["out.txt"]
    assert done.peak_memory_mb is None  # not measured: it shares the worker's memory


def test_in_process_is_a_python_kind_setting():
    kind = parse_kind("k", {"function": f"{_MODULE}:whoami", "in_process": True}, ConfigError)
    assert kind.in_process and kind.schema()["in_process"] is True
    assert not parse_kind("k", {"function": f"{_MODULE}:whoami"}, ConfigError).in_process
    with pytest.raises(ConfigError, match="in_process: only for a Python kind"):
        parse_kind("k", {"argv": ["true"], "in_process": True}, ConfigError)
    with pytest.raises(ConfigError, match="in_process: expected true or false"):
        parse_kind("k", {"function": f"{_MODULE}:whoami", "in_process": "yes"}, ConfigError)


# --- no orphans -------------------------------------------------------------------------

def _pool_processes(server_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(server_pid).children()
            if "jobgate.pychild" in " ".join(p.cmdline())]


def test_no_pool_process_outlives_a_killed_worker(start_server, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the server imports this module's kinds
    server = start_server("[limits]\nmax_running = 2\n", kinds=KINDS)
    assert server.proc is not None
    serve_pid = server.proc.pid
    with server.client("bob") as http:
        response = http.post("/api/jobs", json={"kind": "stubborn"})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
    pid_file = server.folder / "data" / "jobs" / job_id / "pid"
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    job_proc = psutil.Process(int(pid_file.read_text()))
    pool = _pool_processes(serve_pid)
    assert job_proc in pool and len(pool) == 2
    server.kill9()
    assert asyncio.run(survivors(pool, timeout_s=10)) == []


def test_a_pool_process_whose_worker_is_already_gone_exits_at_once():
    from jobgate.pyproc import _CHILD_MAIN
    # Its parent is not the pid it was given: the worker died while starting it.
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _CHILD_MAIN, "1", "0"],
                          stdin=subprocess.DEVNULL, timeout=30, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
