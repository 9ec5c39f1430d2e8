"""Running one job: a command in its own process group, or a Python function.

A Python function runs in a process of the worker's pool (`jobgate.pyproc`) unless its
kind sets `in_process = true`: then in a thread of the worker (or on its event loop, if
async), with a `JobContext` (defined once, in `jobgate.pychild`) as its context. The
executor only runs and reports (progress, log lines, the end as a `RunResult`); the
worker persists what it reports, through the verbs of `jobgate.queue`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import functools
import inspect
import json
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import psutil

from jobgate.kinds import RESULT_FILE, Kind, load_function, render_argv
from jobgate.logtext import plain, split_ends
from jobgate.model import Job, Output, content_type
from jobgate.progress import FfmpegProgress, is_progress_block_line
from jobgate.pychild import JobContext as JobContext  # `jobgate.JobContext`
from jobgate.pychild import NonRetryable as NonRetryable  # where job code finds it
from jobgate.pychild import function_args
from jobgate.threads import JobThreads

if TYPE_CHECKING:
    from jobgate.pyproc import PyPool

ProgressFn = Callable[[float | None, str | None], None]


class LogFn(Protocol):
    """Where a run's log goes: `log(text)` is text logged whole (it may hold several lines);
    `log(segment, stream, redraw)` one segment of output `stream` ("out", "err"), ended by a
    `\\r` (`redraw`: its line is drawn again next, one log line updated in place) or by a
    line's end (`runlog.RunLog.add`)."""

    def __call__(self, line: str, stream: str | None = None, redraw: bool = False, /
                 ) -> None: ...


MemoryFn = Callable[[float, float], None]  # (current, peak) RSS of the job's tree, in MB

_STDERR_TAIL_LINES = 20
_STDOUT_TAIL_LINES = 5  # the error's tail when a program said nothing on stderr
_MAX_RESULT_BYTES = 4 * 1048576  # a result line or result.json larger than this is refused
_MEMORY_SAMPLE_S = 0.5
_WATCHDOG_SAMPLE_S = 0.1  # with a memory limit: how fast a runaway job is caught
_READ_CHUNK = 65536
_MAX_LINE = 8192
_PIPE_DRAIN_S = 2.0  # how long output may stay open after the job's process tree is gone

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None
_PR_SET_PDEATHSIG = 1


_ORPHANED_EXIT = 111  # a child that found its worker already gone (never seen by one)


def _die_with_parent(parent_pid: int, nice: int | None = None) -> None:
    """In the child, before exec: get SIGKILL if the worker (`parent_pid`) dies (Linux
    only), and take the kind's lower CPU priority.

    The signal is armed only from here on: a worker that died between the fork and now is
    no longer this process's parent, and the child exits at once instead of running
    unsupervised. Children the command starts itself are reaped (by their run's mark and
    the stored process group) when a worker recovers the job after a crash.
    """
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(_ORPHANED_EXIT)
    if nice:
        os.nice(nice)


class Stop(asyncio.Event):
    """A run's stop signal (cancel, a lost lease), which can also call back when set:
    watching it costs a callback, not a task per job."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], None]) -> None:
        if self.is_set():
            callback()
        else:
            self._callbacks.append(callback)


class LocalContext(JobContext):
    """The context of an in-process Python job: its reports go to the worker's event loop,
    from the job's thread or from that loop itself."""

    def __init__(self, job: Job, output_dir: Path, progress: ProgressFn, log: LogFn,
                 cancel: Stop, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(job.id, job.attempt, job.owner, output_dir, cancel)
        self._progress, self._log, self._loop = progress, log, loop

    def _report_progress(self, percent: float | None, message: str | None) -> None:
        self._call(self._progress, percent, message)

    def _report_log(self, line: str) -> None:
        self._call(self._log, line)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)


@dataclass(frozen=True)
class RunResult:
    """What the executor saw of one run; `JobQueue.outcome` decides what it means for the
    job."""

    ok: bool
    result: Any = None
    error: str | None = None
    exit_code: int | None = None
    cancelled: bool = False
    timed_out: bool = False
    retryable: bool = True
    peak_memory_mb: float | None = None
    outputs: tuple[Output, ...] = ()
    message: str | None = None  # the last progress message the run reported
    # Output lines that matched the kind's `no_retry_on` / `retry_on` patterns: what
    # `JobQueue.outcome` weighs, with the error, to decide whether a failure retries.
    matched: tuple[str, ...] = ()


def _outputs(folder: Path) -> tuple[Output, ...]:
    """The files in a job's folder as the run left them, by name (whether they are the
    job's result or `partial` is the queue's to say: `moves.ended_outputs`)."""
    if not folder.is_dir():
        return ()
    found = []
    for path in folder.rglob("*"):
        try:
            if not path.is_file():
                continue
            size = path.stat().st_size
        except OSError:  # gone since the listing (a program tidying up as it ends)
            continue
        name = path.relative_to(folder).as_posix()
        found.append(Output(name, size, content_type(name)))
    return tuple(sorted(found, key=lambda o: o.name))


async def run(job: Job, kind: Kind, folder: Path, progress: ProgressFn, log: LogFn,
              cancel: Stop, grace_s: float, threads: JobThreads,
              on_pid: Callable[[int], Awaitable[None]] | None = None,
              on_memory: MemoryFn | None = None, pool: PyPool | None = None) -> RunResult:
    """Run a job to its end; `cancel` being set stops it (SIGTERM, then SIGKILL).

    `on_memory` gets each sample of the job's process tree (an in-process Python job runs
    inside the worker's own process and is not measured). A Python kind runs in `pool`
    unless it is `in_process`. The result carries the run's last progress message.
    """
    said: list[str] = []

    def reported(percent: float | None, message: str | None) -> None:
        if message is not None:
            said[:] = [message]
        progress(percent, message)

    if kind.argv is None:
        result = await _run_python(job, kind, folder, reported, log, cancel, threads, pool,
                                   grace_s, on_memory)
        return replace(result, message=said[0] if said else None)
    folder.mkdir(parents=True, exist_ok=True)
    result = await _run_command(job, kind, folder, reported, log, cancel, grace_s, on_pid,
                                on_memory)
    outputs = _outputs(folder)
    if kind.result == "json-file":
        outputs = tuple(o for o in outputs if o.name != RESULT_FILE)  # it is the result
    return replace(result, outputs=outputs, message=said[0] if said else None)


# --- commands ---------------------------------------------------------------------------

async def _run_command(job: Job, kind: Kind, folder: Path, progress: ProgressFn, log: LogFn,
                       cancel: Stop, grace_s: float,
                       on_pid: Callable[[int], Awaitable[None]] | None,
                       on_memory: MemoryFn | None = None) -> RunResult:
    argv = render_argv(kind, job.args, folder, job.id)
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _Protocol(loop), *argv, cwd=folder, env=_job_env(job.id, job.lease_token),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, os.getpid(), kind.nice),
        )
        proc = asyncio.subprocess.Process(transport, protocol, loop)
    except OSError as exc:
        return RunResult(ok=False, error=_start_error(argv[0], exc), retryable=False)
    if on_pid is not None:
        await on_pid(proc.pid)
    tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
    out_tail: collections.deque[str] = collections.deque(maxlen=_STDOUT_TAIL_LINES)
    matched: dict[re.Pattern[str], str] = {}
    patterns = (*kind.no_retry_on, *(kind.retry_on or ()))
    peak = _Peak(proc.pid, kind.memory_limit_mb, on_memory)
    parser = kind.progress() if kind.progress is not None else None
    # ffmpeg's `-progress` blocks are a dozen lines every half second: read, not logged.
    quiet_blocks = isinstance(parser, FfmpegProgress)
    last_json: list[Any] = []  # `result = "json-last-line"`: the last one seen

    shown: dict[bool, str] = {False: "", True: ""}  # what each stream's line shows so far

    def on_line(line: str, is_err: bool, redraw: bool) -> None:
        # Every segment, each redraw of a progress bar included, is read for progress and
        # the retry patterns; the log and the error's tail get a redrawn line once. An
        # empty one only ends the line a bar redrew (as the parsers have always seen it).
        if line and parser is not None and (report := parser.feed(line)) is not None:
            if report.warning:
                log(f"[jobgate] {report.warning}")
            if report.percent is not None or report.message is not None:
                progress(report.percent, report.message)
        if quiet_blocks and is_progress_block_line(line):
            return
        log(line, "err" if is_err else "out", redraw)
        for pattern in patterns if line else ():
            if pattern not in matched and pattern.search(line):
                matched[pattern] = line  # the first line each pattern found is enough
        text = line if plain(line) else ""  # as printed: the error quotes it as it is
        if redraw:
            shown[is_err] = text or shown[is_err]
            return
        if text := text or shown[is_err]:
            (tail if is_err else out_tail).append(text)
        shown[is_err] = ""

    def on_whole_stdout(raw: bytes) -> None:
        if raw.lstrip()[:1] in (b"{", b"["):
            with contextlib.suppress(ValueError, RecursionError):  # nested past the stack
                value = json.loads(raw)
                last_json[:] = [value]

    assert proc.stdout is not None and proc.stderr is not None
    readers = asyncio.gather(
        _read_lines(proc.stdout, lambda s, r: on_line(s, False, r),
                    on_whole_stdout if kind.result == "json-last-line" else None),
        _read_lines(proc.stderr, lambda s, r: on_line(s, True, r)))
    sampler = asyncio.create_task(peak.sample_until(proc))
    waiter = protocol.exited
    stopper: asyncio.Future[Any] = asyncio.ensure_future(cancel.wait())
    timed_out = False
    done, _ = await asyncio.wait([waiter, stopper], timeout=kind.timeout_s,
                                 return_when=asyncio.FIRST_COMPLETED)
    stopped = waiter not in done  # else it ended by itself, whatever came at that moment
    if stopped and has_exited(proc.pid):
        # It ended by itself before the stop came, and the event loop (busy, on a loaded
        # machine) had not yet heard: its work is done, and stopping it now would hand
        # back, or cancel, a job that completed.
        stopped = False
    if stopped:
        timed_out = stopper not in done
        peak.sample()  # know the whole tree before stopping it
        await _stop_group(proc.pid, waiter, grace_s)
    stopper.cancel()
    # Whatever is left goes too: the group, and descendants that left it (setsid).
    _killpg(proc.pid, signal.SIGKILL)
    peak.kill_descendants()
    await waiter
    await asyncio.to_thread(kill_marked, job.id, job.lease_token)
    try:
        await asyncio.wait_for(readers, _PIPE_DRAIN_S)
    except TimeoutError:
        log(f"[jobgate] output still open {_PIPE_DRAIN_S:g} s after the job ended; "
            "stopped reading")
    transport.close()
    sampler.cancel()
    peak_mb = peak.peak_mb
    code = proc.returncode
    found = tuple(dict.fromkeys(matched.values()))
    if peak.over_limit:
        return RunResult(ok=False, error=f"exceeded memory limit ({kind.memory_limit_mb} MB)",
                         exit_code=code, retryable=kind.retry_on_memory_limit,
                         peak_memory_mb=peak_mb, matched=found)
    if timed_out:
        return RunResult(ok=False, error=f"timed out after {_human(kind.timeout_s or 0)}",
                         exit_code=code, timed_out=True, peak_memory_mb=peak_mb, matched=found)
    if code == 0 and not stopped:
        # Done before the cancel (or the worker's stop) reached it: its work is complete,
        # and handing it back would run it a second time.
        return _completed(kind, folder, last_json, peak_mb)
    if cancel.is_set():
        return RunResult(ok=False, cancelled=True, exit_code=code, peak_memory_mb=peak_mb)
    if code == 0:
        return _completed(kind, folder, last_json, peak_mb)
    reason = f"exit code {code}" if code is not None and code >= 0 else \
        f"killed by signal {-(code or 0)}"
    # Some programs (spotdl, many scripts) report their error on stdout.
    detail = "\n".join(tail or out_tail)
    return RunResult(ok=False, error=f"{reason}: {detail}" if detail else reason,
                     exit_code=code, peak_memory_mb=peak_mb, matched=found)


def _start_error(program: str, exc: OSError) -> str:
    """Why a command could not start, as its user should read it."""
    name = os.path.basename(program) or program  # not the server's folders
    if exc.errno == errno.ENOENT:
        return f"{name} is not installed on this server"
    if exc.errno == errno.EACCES:
        return f"{name} cannot be run on this server (permission denied)"
    return f"cannot start {name}: {exc.strerror or exc}"


def _completed(kind: Kind, folder: Path, last_json: list[Any],
               peak_mb: float | None) -> RunResult:
    """A command that ended well, with its result if its kind takes one from the run."""
    if kind.result is None:
        return RunResult(ok=True, exit_code=0, peak_memory_mb=peak_mb)
    # No retry: a run that gave no readable result would give none the next time either.
    if kind.result == "json-last-line":
        if not last_json:
            return RunResult(ok=False, exit_code=0, retryable=False, peak_memory_mb=peak_mb,
                             error="no result: no line of the output was a JSON object or "
                                   'array (the kind has result = "json-last-line")')
        return RunResult(ok=True, result=last_json[0], exit_code=0, peak_memory_mb=peak_mb)
    file = folder / RESULT_FILE
    try:
        if file.stat().st_size > _MAX_RESULT_BYTES:
            raise ValueError(f"larger than {_MAX_RESULT_BYTES // 1048576} MB")
        value = json.loads(file.read_bytes())
    except FileNotFoundError:
        reason = f"the job wrote no {RESULT_FILE} into its output folder"
    except (OSError, ValueError, RecursionError) as exc:
        reason = f"{RESULT_FILE} is not valid JSON: {exc}"
    else:
        file.unlink(missing_ok=True)  # now the job's result, not one of its files
        return RunResult(ok=True, result=value, exit_code=0, peak_memory_mb=peak_mb)
    return RunResult(ok=False, exit_code=0, retryable=False, peak_memory_mb=peak_mb,
                     error=f'no result: {reason} (the kind has result = "json-file")')


async def _read_lines(stream: asyncio.StreamReader, on_line: Callable[[str, bool], None],
                     on_whole: Callable[[bytes], None] | None = None) -> None:
    """Split output where a line ends (\\n) and where a progress bar redraws it (\\r):
    `on_line` gets each segment with whether a \\r ended it; very long lines are cut for it.
    `on_whole`, if given, gets each segment whole (up to `_MAX_RESULT_BYTES`; a longer one
    not at all): a result printed as one line of JSON can be long."""
    keep = _MAX_RESULT_BYTES if on_whole is not None else _MAX_LINE
    pending = b""
    shown = False  # the start of `pending` already went to on_line, cut
    dropped = False  # `pending` is the rest of a line too long to keep whole

    def end_line(raw: bytes, redraw: bool) -> None:
        if not shown and (raw or not redraw):
            on_line(raw[:_MAX_LINE].decode("utf-8", "replace"), redraw)
        if raw and on_whole is not None and not dropped:
            on_whole(raw)

    while chunk := await stream.read(_READ_CHUNK):
        pending += chunk.replace(b"\r\n", b"\n")
        ended, pending = split_ends(pending)
        for raw, redraw in ended:
            end_line(raw, redraw)
            shown = dropped = False
        if len(pending) > _MAX_LINE and not shown:
            on_line(pending[:_MAX_LINE].decode("utf-8", "replace"), False)
            shown = True
        if len(pending) > keep:
            if on_whole is None:  # as before: the rest of a long line reads as new lines
                pending, shown = b"", False
            else:
                pending, dropped = b"", True
    end_line(pending, False)


_JOB_ENV = "JOBGATE_JOB_ID"
_RUN_ENV = "JOBGATE_RUN_ID"


def run_mark(job_id: str, token: int) -> str:
    """What marks the processes of one run of a job: its id and the run's lease token (a
    new one for every claim), so two runs of one job never share a mark."""
    return f"{job_id}/{token}"


def _job_env(job_id: str, token: int) -> dict[str, str]:
    """The server's environment without jobgate's own settings, plus the job's id and its
    run's mark: every process the run starts inherits them, which finds them even after
    they left its group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    env[_JOB_ENV] = job_id
    env[_RUN_ENV] = run_mark(job_id, token)
    return env


def _mark_of(p: psutil.Process) -> str | None:
    try:
        return p.environ().get(_RUN_ENV)
    except psutil.Error:
        return None


def kill_marked(job_id: str, token: int) -> int:
    """SIGKILL every process of this run of the job (marked in its environment), and only
    those: never another run's, such as a re-run of the job elsewhere on this machine after
    this run lost its lease."""
    mark = run_mark(job_id, token)
    killed = 0
    me = os.getpid()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        if _mark_of(p) == mark:
            with contextlib.suppress(psutil.Error):
                p.kill()
                killed += 1
    return killed


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def has_exited(pid: int) -> bool:
    """Whether child `pid` has exited, without reaping it (the event loop's watcher does)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped already: it has exited
        return True


async def _stop_group(pgid: int, exited: asyncio.Future[None], grace_s: float) -> None:
    _killpg(pgid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(exited), grace_s)
    except TimeoutError:
        _killpg(pgid, signal.SIGKILL)


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's stream protocol plus a future for the process's exit alone: `wait()` also
    waits for the output pipes, which a detached child could hold open forever."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=_READ_CHUNK, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class _Peak:
    """Peak resident memory of a process tree, sampled; remembers every descendant seen.

    With a limit it is also the watchdog: a tree found over it is killed at once. (Not
    RLIMIT_AS: it caps address space, not memory, and programs that map much more than
    they use, as ffmpeg and Python itself do, fail under it.)
    """

    def __init__(self, pid: int, limit_mb: int | None = None,
                 on_sample: MemoryFn | None = None) -> None:
        self.pid = pid
        self.limit_mb = limit_mb
        self.on_sample = on_sample
        self.over_limit = False
        self.peak_mb: float | None = None
        self.seen: dict[int, psutil.Process] = {}

    def kill_descendants(self) -> None:
        for p in self.seen.values():
            with contextlib.suppress(psutil.Error):
                p.kill()  # psutil checks it is still the same process (pid reuse)

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs[1:]:
            self.seen.setdefault(p.pid, p)
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        mb = round(total / 1048576, 1)
        if mb and (self.peak_mb is None or mb > self.peak_mb):
            self.peak_mb = mb
        if mb and self.on_sample is not None:
            self.on_sample(mb, self.peak_mb or mb)
        if self.limit_mb is not None and mb > self.limit_mb and not self.over_limit:
            self.over_limit = True
            _killpg(self.pid, signal.SIGKILL)
            self.kill_descendants()

    async def sample_until(self, proc: asyncio.subprocess.Process) -> None:
        every_s = _MEMORY_SAMPLE_S if self.limit_mb is None else _WATCHDOG_SAMPLE_S
        while proc.returncode is None and not self.over_limit:
            self.sample()
            await asyncio.sleep(every_s)


def reap(job_id: str, token: int, pgid: int | None, started_at: float | None) -> bool:
    """Kill what is left of a lost run (`token`) of a job: its marked processes, and its
    process group if the group is still that run's."""
    found = kill_marked(job_id, token) > 0
    if pgid:
        found = reap_group(pgid, started_at, run_mark(job_id, token)) or found
    return found


def reap_group(pgid: int, started_at: float | None, mark: str | None = None) -> bool:
    """Kill a lost run's process group, if it is still that run's: not when the number
    now names an older process's group, or one with a process of another run (`mark`)."""
    ours = False
    for p in psutil.process_iter(["pid", "create_time"]):
        try:
            if os.getpgid(p.pid) != pgid:
                continue
        except (ProcessLookupError, PermissionError):
            continue
        if started_at is not None and p.info["create_time"] < started_at - 2:
            continue  # an older process that reused the number: not ours
        if mark is not None and _mark_of(p) not in (None, mark):
            return False  # the number leads another run's group now
        ours = True
    if ours:
        _killpg(pgid, signal.SIGKILL)
    return ours


def _human(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


# --- Python functions -------------------------------------------------------------------

async def _run_python(job: Job, kind: Kind, folder: Path, progress: ProgressFn, log: LogFn,
                      cancel: Stop, threads: JobThreads, pool: PyPool | None, grace_s: float,
                      on_memory: MemoryFn | None) -> RunResult:
    if not kind.in_process:
        if pool is None:
            raise RuntimeError(f"kind {kind.name} runs in a process pool; none was given")
        return await pool.run(job, kind, folder, progress, log, cancel, grace_s, on_memory)
    # In-process: no hard stop (a sync function only sees ctx.cancelled), no memory
    # measurement, and a crash of the function takes the worker with it.
    loop = asyncio.get_running_loop()
    func = _function(kind)
    ctx = LocalContext(job, folder, progress, log, cancel, loop)
    args = function_args(func, job.args)
    if inspect.iscoroutinefunction(func):
        task: asyncio.Future[Any] = asyncio.ensure_future(func(ctx, **args))
    else:
        task = threads.submit(func, ctx, **args)
    # One future woken by whichever comes first: the end, a cancel, the timeout.
    woken: asyncio.Future[None] = loop.create_future()

    def wake(*_: Any) -> None:
        if not woken.done():
            woken.set_result(None)

    task.add_done_callback(wake)
    cancel.on_set(wake)
    timer = loop.call_later(kind.timeout_s, wake) if kind.timeout_s else None
    started = time.monotonic()
    await woken
    if timer is not None:
        timer.cancel()
    if not task.done():
        timed_out = not cancel.is_set()
        cancel.set()  # a sync function sees ctx.cancelled; an async one is cancelled
        task.cancel()
        if timed_out:
            return RunResult(ok=False, timed_out=True,
                             error=f"timed out after {_human(kind.timeout_s or 0)}")
        return RunResult(ok=False, cancelled=True)
    # A retry may find files of an earlier attempt in the folder: they are outputs too.
    outputs = _outputs(folder) if ctx.folder_used or job.attempt > 1 else ()
    try:
        value = task.result()
    except asyncio.CancelledError:
        return RunResult(ok=False, cancelled=True, outputs=outputs)
    except NonRetryable as exc:
        return RunResult(ok=False, error=str(exc) or "failed", retryable=False, outputs=outputs)
    except Exception as exc:
        log(f"[jobgate] {type(exc).__name__}: {exc} after {time.monotonic() - started:.1f} s")
        return RunResult(ok=False, error=f"{type(exc).__name__}: {exc}", outputs=outputs)
    if cancel.is_set():
        return RunResult(ok=False, cancelled=True, outputs=outputs)
    return RunResult(ok=True, result=_jsonable(value), outputs=outputs)


def _function(kind: Kind) -> Callable[..., Any]:
    assert kind.function is not None
    func = _functions.get(kind.function)
    if func is None:
        func = _functions[kind.function] = load_function(
            kind.function, f"kinds.{kind.name}.function", RuntimeError)
    return func


_functions: dict[str, Callable[..., Any]] = {}  # imported once per process


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
