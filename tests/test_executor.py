"""The executor with real subprocesses and real Python functions, through a queue and a worker.

Command jobs: progress parsing, logs per stream, the log cap, exit codes and the stderr
tail, commands that cannot start, outputs, timeouts, cancel of a whole process tree,
peak memory, and arguments that arrive verbatim without any shell. Python jobs: the
context (progress, log, output folder), results, exceptions, `NonRetryable`, cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from typing import Any

import psutil

from conftest import alive, survivors, wait_for, wait_state
from jobgate.executor import NonRetryable
from jobgate.model import Event

PY = sys.executable


def q(text: str) -> str:
    """A TOML basic string holding `text` exactly (JSON string syntax is valid TOML)."""
    return json.dumps(text)


def argv(*items: str) -> str:
    return "[" + ", ".join(q(item) for item in items) + "]"


# --- Python kinds: this module is importable by its own name, so the kinds name it -------

#: What the cancellation tests' functions saw, by tag (their kinds run in this process).
SEEN: dict[str, str] = {}


def sync_report(ctx: Any, tag: str = "x") -> dict[str, Any]:
    ctx.progress(50, "half way")
    ctx.log(f"hello from sync {tag}")
    (ctx.output_dir / "made-by-sync.txt").write_text("sync output")
    return {"answer": 42, "tag": tag, "attempt": ctx.attempt}


async def async_report(ctx: Any, tag: str = "x") -> list[Any]:
    ctx.progress(25, "a quarter")
    ctx.log(f"hello from async {tag}")
    await asyncio.sleep(0)
    return ["done", tag]


def context_classes(ctx: Any) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in type(ctx).__mro__]


def raises(ctx: Any) -> None:
    raise ValueError("bad input 7")


async def raises_non_retryable(ctx: Any) -> None:
    raise NonRetryable("this input can never work")


async def waits_async(ctx: Any, tag: str = "x") -> str:
    SEEN[tag] = "started"
    try:
        await asyncio.sleep(300)
    except asyncio.CancelledError:
        SEEN[tag] = "cancelled"
        raise
    return "slept"


def waits_sync(ctx: Any, tag: str = "x") -> str:
    SEEN[tag] = "started"
    deadline = time.monotonic() + 60
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    SEEN[tag] = "saw ctx.cancelled" if ctx.cancelled else "never saw ctx.cancelled"
    return "stopped"


_PROGRESS = argv("sh", "-c",
                 'echo "42.5% half way there"; while [ ! -e "$0" ]; do sleep 0.02; done',
                 "{flag}")
_STREAMS = argv("sh", "-c", r'printf "out1\nout2\rout3\r\n"; printf "err1\nerr2\r" >&2; '
                r'printf "out4\r\nout5"')
# A bar drawn 21 times on stderr over a second, between two lines on stdout.
_BAR = argv(PY, "-c", r"""
import sys, time
print("before", flush=True)
for p in range(0, 101, 5):
    sys.stderr.write("\r\x1b[K\x1b[32m[download] %3d%%\x1b[0m" % p)
    sys.stderr.flush()
    time.sleep(0.05)
sys.stderr.write("\n")
sys.stderr.flush()
print("after", flush=True)
""")
_CHATTY = argv("sh", "-c", 'for i in $(seq 1 12); do echo "line $i"; done')
_BAD_EXIT = argv("sh", "-c",
                 'echo "to stdout"; for i in $(seq 1 30); do echo "err $i" >&2; done; exit 3')
_WRITER = argv("sh", "-c",
               'echo hello > report.txt; mkdir -p "$0/sub"; printf data > "$0/sub/b.bin"',
               "{output_dir}")
_SLOW = argv("sh", "-c", "sleep 30 & wait")
_TREE = argv("sh", "-c", "sleep 300 & sleep 300 & wait")
_STUBBORN = argv("sh", "-c", "trap '' TERM; sleep 300 & sleep 300 & wait")
_ESCAPEE = argv("sh", "-c", "setsid sleep 300 & wait")
_DETACHER = argv("sh", "-c",
                 """setsid sh -c 'echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; exec sleep 300' "$0" & """
                 'while [ ! -e "$0" ]; do sleep 0.01; done; echo "parent done"',
                 "{output_dir}/detached.pid")
_HOG = argv(PY, "-c", "import time; b = b'x' * (50 * 1024 * 1024); time.sleep(1.5); print(len(b))")
_ECHO = argv(PY, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))",
             "{a}", "{b}", "--opt={a}")
_MODULE = __name__

COMMAND_KINDS = f"""
[kinds.progress]
argv = {_PROGRESS}
progress = '(?P<percent>[0-9.]+)% (?P<message>.*)'
[kinds.progress.args]
flag = {{ type = "string" }}

[kinds.streams]
argv = {_STREAMS}

[kinds.chatty]
argv = {_CHATTY}

[kinds.bar]
argv = {_BAR}

[kinds.bad_exit]
argv = {_BAD_EXIT}

[kinds.missing]
argv = ["jobgate-test-no-such-command"]
max_attempts = 3
backoff = "0.1s"

[kinds.writer]
argv = {_WRITER}

[kinds.slow]
argv = {_SLOW}
timeout = "1s"

[kinds.tree]
argv = {_TREE}

[kinds.stubborn]
argv = {_STUBBORN}

[kinds.escapee]
argv = {_ESCAPEE}

[kinds.detacher]
argv = {_DETACHER}

[kinds.hog]
argv = {_HOG}

[kinds.echo]
argv = {_ECHO}
[kinds.echo.args]
a = {{ type = "string" }}
b = {{ type = "string" }}

"""

PYTHON_KINDS = f"""
[kinds.py_sync]
function = "{_MODULE}:sync_report"

[kinds.py_async]
function = "{_MODULE}:async_report"

[kinds.py_context]
function = "{_MODULE}:context_classes"

[kinds.py_context_local]
function = "{_MODULE}:context_classes"
in_process = true

[kinds.py_raises]
function = "{_MODULE}:raises"
max_attempts = 2
backoff = "0.1s"

[kinds.py_non_retryable]
function = "{_MODULE}:raises_non_retryable"
max_attempts = 3
backoff = "0.1s"

# In-process: these two report to SEEN in this process (their process-pool
# counterparts are in test_pyproc.py).
[kinds.py_wait_async]
function = "{_MODULE}:waits_async"
in_process = true

[kinds.py_wait_sync]
function = "{_MODULE}:waits_sync"
in_process = true
"""

KINDS = COMMAND_KINDS + PYTHON_KINDS


class Recorder:
    """Every event the queue publishes from now on, to look at afterwards."""

    def __init__(self, queue: Any) -> None:
        self._sub = queue.bus.subscribe(buffer=100_000)
        self._seen: list[Event] = []

    def events(self, job_id: str, *types: str) -> list[Event]:
        while not self._sub.queue.empty():
            self._seen.append(self._sub.queue.get_nowait())
        return [e for e in self._seen
                if e.job_id == job_id and (not types or e.type in types)]


async def open_with(make_settings, open_queue, extra: str = "", kinds: str = COMMAND_KINDS,
                    **worker_kw: Any):
    """A queue and a worker on `kinds`: the command kinds unless a test runs Python jobs
    (a worker with pool kinds starts pool processes that import this module, and waits for
    them when it stops: seconds a command job's test would spend for nothing)."""
    settings = make_settings(extra, kinds=kinds)
    queue, _ = await open_queue(settings, **worker_kw)
    return queue


async def log_lines(queue, job_id: str) -> list[str]:
    return [line for _, line in await queue.store.logs(job_id)]


async def running_pid(queue, job_id: str) -> int:
    """The process group leader of a running command job, once its worker recorded it."""
    job = await wait_state(queue, job_id, "running")
    deadline = time.monotonic() + 10
    while job.pid is None:
        assert time.monotonic() < deadline, "the worker never recorded the job's pid"
        await asyncio.sleep(0.02)
        job = await queue.get(job_id)
    return int(job.pid)


async def process_tree(pid: int, children: int) -> list[psutil.Process]:
    """The leader and its descendants, once it has started `children` of them."""
    leader = psutil.Process(pid)
    deadline = time.monotonic() + 10
    while len(found := leader.children(recursive=True)) < children:
        assert time.monotonic() < deadline, f"only {len(found)} children appeared"
        await asyncio.sleep(0.02)
    return [leader, *found]





# --- command jobs ----------------------------------------------------------------------

async def test_progress_regex_sets_progress_and_message(make_settings, open_queue, tmp_path):
    queue = await open_with(make_settings, open_queue)
    flag = tmp_path / "release"
    job, _ = await queue.submit("bob", "progress", {"flag": str(flag)})
    await wait_state(queue, job.id, "running")
    deadline = time.monotonic() + 15
    while (current := await queue.get(job.id)).progress is None:
        assert time.monotonic() < deadline, "the progress line never reached the job"
        await asyncio.sleep(0.05)
    assert current.state.value == "running"
    assert current.progress == 42.5
    assert current.message == "half way there"
    flag.touch()
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    assert done.progress == 100.0


async def test_stdout_and_stderr_lines_become_the_log_in_order(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "streams")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    lines = await log_lines(queue, job.id)
    # \r\n ends a line like \n; a \r redraws the line it ends (a progress bar), so the
    # text after it is that line's new text; a line left open at the end is a line too.
    assert [line for line in lines if line.startswith("out")] == [
        "out1", "out3", "out4", "out5"]
    assert [line for line in lines if line.startswith("err")] == ["err1", "err2"]
    assert len(lines) == 6


async def test_log_cap_keeps_the_first_and_last_lines_and_reports_the_rest(
        make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, "[worker]\nlog_max_lines = 5\n")
    job, _ = await queue.submit("bob", "chatty")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    logs = await queue.store.logs(job.id)
    # 12 lines, a cap of 5: lines 1-2 and the last 3 (10-12), the gap line where 3-9 were.
    assert [n for n, _ in logs] == [1, 2, 3, 10, 11, 12]
    assert [line for n, line in logs if n != 3] == [f"line {n}" for n in (1, 2, 10, 11, 12)]
    note = logs[2][1]
    assert "7 more lines not kept (lines 3-9" in note and "log_max_lines" in note


async def test_a_progress_bar_redrawn_with_cr_is_one_line_updated_in_place(
        make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, "[worker]\nlog_max_lines = 5\n")
    events = Recorder(queue)
    job, _ = await queue.submit("bob", "bar")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    # 21 redraws on stderr, colours and erase-line among them: one line, its last text,
    # which does not fill a cap of 5 lines.
    assert await queue.store.logs(job.id) == [
        (1, "before"), (2, "\x1b[32m[download] 100%\x1b[0m"), (3, "after")]
    logged = [e.data for e in events.events(job.id, "job.log")]
    redraws = [d for d in logged if d.get("replace")]
    assert redraws, logged  # the bar was sent again as it moved, as line 2 each time
    assert {(d["first"], len(d["lines"])) for d in redraws} == {(2, 1)}
    assert redraws[-1]["lines"] == ["\x1b[32m[download] 100%\x1b[0m"]
    added = [n for d in logged if not d.get("replace")
             for n in range(d["first"], d["first"] + len(d["lines"]))]
    assert added == [1, 2, 3]


async def test_exit_zero_completes(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "chatty")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed"
    assert done.error is None
    assert done.attempt == 1
    assert done.finished_at is not None


async def test_non_zero_exit_fails_with_the_stderr_tail(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "bad_exit")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "failed"
    assert done.error is not None
    assert "exit code 3" in done.error
    assert done.error.rstrip().endswith("err 30")  # the tail: the last lines of stderr
    assert "err 29" in done.error
    assert "err 1\n" not in done.error  # not the whole of stderr
    assert "to stdout" not in done.error  # stderr only
    assert "to stdout" in await log_lines(queue, done.id)


async def test_a_command_that_is_not_found_fails_clearly_without_retry(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    events = Recorder(queue)
    job, _ = await queue.submit("bob", "missing")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "failed"
    assert done.max_attempts == 3
    assert done.attempt == 1  # retrying cannot make a missing program appear
    assert "jobgate-test-no-such-command" in (done.error or "")
    assert "is not installed on this server" in (done.error or "")
    assert events.events(job.id, "job.retrying") == []
    assert len(events.events(job.id, "job.started")) == 1


def test_files_written_into_the_job_folder_are_outputs(start_server):
    server = start_server("[limits]\nmax_running = 2\n", kinds=COMMAND_KINDS)
    with server.client("bob") as http:
        job = http.post("/api/jobs", json={"kind": "writer"}).json()
        deadline = time.monotonic() + 30
        while job["state"] not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
            job = http.get(f"/api/jobs/{job['id']}").json()
        assert job["state"] == "completed", job
        assert [o["name"] for o in job["outputs"]] == ["report.txt", "sub/b.bin"]
        report = http.get(f"/api/jobs/{job['id']}/outputs/report.txt")
        assert report.status_code == 200
        assert report.text == "hello\n"
        nested = http.get(f"/api/jobs/{job['id']}/outputs/sub/b.bin")
        assert nested.status_code == 200
        assert nested.content == b"data"
        assert http.get(f"/api/jobs/{job['id']}/outputs/nothing.txt").status_code == 404
    with server.client("carol") as other:
        assert other.get(f"/api/jobs/{job['id']}/outputs/report.txt").status_code == 404


async def test_timeout_fails_the_job_and_the_process_is_gone(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "slow")
    procs = await process_tree(await running_pid(queue, job.id), children=1)
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "failed"
    assert done.error == "timed out after 1 s"
    assert done.finished_at - done.started_at >= 1.0
    assert await survivors(procs) == []


async def test_cancel_kills_the_whole_process_tree(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "tree")
    procs = await process_tree(await running_pid(queue, job.id), children=2)
    assert all(alive(p) for p in procs)
    await queue.cancel(job.id)
    done = await wait_state(queue, job.id, "cancelled", "failed", "completed")
    assert done.state.value == "cancelled"
    assert done.error is None
    assert await survivors(procs) == []


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(
        make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, "[worker]\ncancel_grace_s = 0.5\n")
    job, _ = await queue.submit("bob", "stubborn")
    procs = await process_tree(await running_pid(queue, job.id), children=2)
    asked = time.monotonic()
    await queue.cancel(job.id)
    done = await wait_state(queue, job.id, "cancelled", "failed", "completed")
    assert done.state.value == "cancelled"
    assert time.monotonic() - asked >= 0.5  # SIGTERM was ignored: SIGKILL waited for grace
    assert await survivors(procs) == []


async def test_cancel_also_ends_a_child_that_left_the_process_group(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, "[worker]\ncancel_grace_s = 0.5\n")
    job, _ = await queue.submit("bob", "escapee")
    procs = await process_tree(await running_pid(queue, job.id), children=1)
    try:
        await queue.cancel(job.id)
        done = await wait_state(queue, job.id, "cancelled", "failed", "completed", timeout_s=5)
        assert done.state.value == "cancelled"
        assert await survivors(procs) == []
    finally:
        for p in procs:
            if alive(p):
                with contextlib.suppress(psutil.NoSuchProcess):  # it ended in between
                    p.kill()


async def test_a_command_that_exits_ends_even_if_a_detached_child_holds_its_output(
        make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "detacher")
    pid_file = queue.job_dir(job.id) / "detached.pid"
    await wait_for(pid_file.exists, what="the detached child to start")
    child = psutil.Process(int(pid_file.read_text()))
    try:
        done = await wait_state(queue, job.id, "completed", "failed", "cancelled", timeout_s=5)
        assert done.state.value == "completed"
        assert "parent done" in await log_lines(queue, job.id)
        assert await survivors([child]) == []  # no process of a finished job lives on
    finally:
        if alive(child):
            child.kill()
        await wait_state(queue, job.id, "completed", "failed", "cancelled")


async def test_peak_memory_of_the_process_is_measured(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "hog")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    assert done.peak_memory_mb is not None
    assert done.peak_memory_mb >= 40


async def test_arguments_arrive_verbatim_as_one_argv_element_without_a_shell(
        make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    nasty = """it's a "quoted" arg; echo pwned > pwned.txt $(touch pwned2) `id` && | * \\ $HOME"""
    job, _ = await queue.submit("bob", "echo", {"a": nasty, "b": ""})
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    lines = await log_lines(queue, job.id)
    assert len(lines) == 1
    assert json.loads(lines[0]) == [nasty, "", f"--opt={nasty}"]
    assert done.outputs == []  # nothing was redirected or touched by a shell
    folder = queue.job_dir(job.id)
    assert not (folder / "pwned.txt").exists() and not (folder / "pwned2").exists()


# --- Python jobs -------------------------------------------------------------------------

async def test_sync_python_job_reports_progress_logs_outputs_and_result(
        make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, kinds=KINDS)
    events = Recorder(queue)
    job, _ = await queue.submit("bob", "py_sync", {"tag": "s1"})
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    assert done.result == {"answer": 42, "tag": "s1", "attempt": 1}
    assert "hello from sync s1" in await log_lines(queue, job.id)
    progress = [(e.data["progress"], e.data["message"])
                for e in events.events(job.id, "job.progress")]
    assert (50, "half way") in progress
    assert [o.name for o in done.outputs] == ["made-by-sync.txt"]
    assert (queue.job_dir(job.id) / "made-by-sync.txt").read_text() == "sync output"


async def test_async_python_job_reports_progress_logs_and_result(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, kinds=KINDS)
    events = Recorder(queue)
    job, _ = await queue.submit("bob", "py_async", {"tag": "a1"})
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    assert done.result == ["done", "a1"]
    assert "hello from async a1" in await log_lines(queue, job.id)
    progress = [(e.data["progress"], e.data["message"])
                for e in events.events(job.id, "job.progress")]
    assert (25, "a quarter") in progress


async def test_an_exception_fails_the_python_job_with_its_message(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, kinds=KINDS)
    events = Recorder(queue)
    job, _ = await queue.submit("bob", "py_raises")
    done = await wait_state(queue, job.id, "failed", "completed", timeout_s=30)
    assert done.state.value == "failed"
    assert "bad input 7" in (done.error or "")
    assert done.attempt == 2  # an ordinary exception is retried while attempts remain
    assert len(events.events(job.id, "job.retrying")) == 1


async def test_non_retryable_fails_the_python_job_without_retry(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, kinds=KINDS)
    events = Recorder(queue)
    job, _ = await queue.submit("bob", "py_non_retryable")
    done = await wait_state(queue, job.id, "failed", "completed")
    assert done.state.value == "failed"
    assert "this input can never work" in (done.error or "")
    assert done.attempt == 1
    assert done.max_attempts == 3
    assert events.events(job.id, "job.retrying") == []


async def test_cancelling_an_async_python_job_cancels_the_coroutine(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, kinds=KINDS)
    tag = uuid.uuid4().hex
    job, _ = await queue.submit("bob", "py_wait_async", {"tag": tag})
    await wait_state(queue, job.id, "running")
    await wait_for(lambda: SEEN.get(tag) == "started", what="the function to start")
    await queue.cancel(job.id)
    done = await wait_state(queue, job.id, "cancelled", "failed", "completed")
    assert done.state.value == "cancelled"
    await wait_for(lambda: SEEN.get(tag) == "cancelled", what="the coroutine to be cancelled")


async def test_a_sync_python_job_sees_ctx_cancelled(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, kinds=KINDS)
    tag = uuid.uuid4().hex
    job, _ = await queue.submit("bob", "py_wait_sync", {"tag": tag})
    await wait_state(queue, job.id, "running")
    await wait_for(lambda: SEEN.get(tag) == "started", what="the function to start")
    await queue.cancel(job.id)
    done = await wait_state(queue, job.id, "cancelled", "failed", "completed")
    assert done.state.value == "cancelled"
    await wait_for(lambda: SEEN.get(tag) == "saw ctx.cancelled", what="ctx.cancelled")


async def test_a_job_sees_the_one_job_context_in_a_pool_process_and_in_process(
        make_settings, open_queue):
    import jobgate
    from jobgate import pychild

    assert jobgate.JobContext is pychild.JobContext
    queue = await open_with(make_settings, open_queue, kinds=KINDS)
    pooled, _ = await queue.submit("alice", "py_context")
    local, _ = await queue.submit("alice", "py_context_local")
    for job, first in ((pooled, "jobgate.pychild.ChildContext"),
                       (local, "jobgate.executor.LocalContext")):
        done = await wait_state(queue, job.id, "completed", "failed")
        assert done.state.value == "completed", done.error
        assert done.result[:2] == [first, "jobgate.pychild.JobContext"]
