"""The pool of processes that run a worker's Python jobs, each job in a process of its own.

A pool process (`jobgate.pychild`) is started fresh with exec, in its own session and
process group, with the configured kinds' modules imported before any job needs them. It
runs one job at a time; the run is not over, and the worker's slot not free, until the job's
code has stopped. Cancel and timeout send SIGTERM to the process group (the job sees
`ctx.cancelled`), then SIGKILL after `[worker] cancel_grace_s`, as for a command. Memory is
measured and limited as for a command (`executor._Peak` over the process tree, plus the
kernel's exact peak of the process itself, reset for each job).

Reuse: a process is reused only after a clean end (the function returned or raised, no
stop was asked, it left no thread or child process behind, no `nice`). After any kill, a
crash, a `MemoryError` or a stop it is replaced, so no state of a stopped job (its cancel
flag, a half-done import, a corrupted heap) can reach the next one. Starting one costs
tens of milliseconds; a stop is rare, so being strict costs little.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobgate import executor
from jobgate.executor import RunResult
from jobgate.kinds import Kind
from jobgate.logtext import split_ends
from jobgate.model import Job
from jobgate.pychild import HEADER, MAX_FRAME, encode

log = logging.getLogger("jobgate.pyproc")

_START_TIMEOUT_S = 60.0  # a pool process that has not said `ready` by then is broken
_CLOSE_S = 2.0  # how long a process may take to leave after its socket closed
_FRAMES_DRAIN_S = 1.0  # after an exit: how long its last frames may take to be read
_MAX_LINE = 8192
# Not `-m jobgate.pychild`: that would run it as `__main__`, and a job raising
# `jobgate.NonRetryable` would raise another class than the one the child catches.
_CHILD_MAIN = "import sys; from jobgate.pychild import main; sys.exit(main(sys.argv))"
_READ_CHUNK = 65536


@dataclass
class _Current:
    """The job a pool process runs now: where its reports go."""

    progress: executor.ProgressFn
    log: executor.LogFn
    done: asyncio.Future[dict[str, Any]]


class _Proc:
    """One pool process: its exit, its protocol socket and its output pipe."""

    def __init__(self, transport: asyncio.SubprocessTransport, protocol: Any,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.pid: int = transport.get_pid()
        self.transport = transport
        self.exited: asyncio.Future[None] = protocol.exited
        self.writer = writer
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.current: _Current | None = None
        self.pending = b""  # output not yet ended by a newline
        self.frames = asyncio.create_task(self._read_frames(reader))
        self.output = asyncio.create_task(self._read_output(protocol.stdout))

    @property
    def returncode(self) -> int | None:
        return self.transport.get_returncode()

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(encode(message))

    def end_job(self) -> None:
        """What the job printed without a final newline is its log's last line."""
        if self.current is not None:  # and a progress bar's line ends with it
            self.current.log(self.pending[:_MAX_LINE].decode("utf-8", "replace"), "out", False)
        self.pending = b""
        self.current = None

    async def _read_frames(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                if size > MAX_FRAME:
                    raise ValueError(f"a frame of {size} bytes")
                self._on_frame(json.loads(await reader.readexactly(size)))
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the process is gone or going: its exit says how
        except (ValueError, KeyError, TypeError):
            # Not our protocol any more (a job wrote to the socket?): nothing it says counts.
            log.warning("pool process %d broke the protocol; killing it", self.pid,
                        exc_info=True)
            executor._killpg(self.pid, signal.SIGKILL)

    def _on_frame(self, message: dict[str, Any]) -> None:
        kind, current = message["t"], self.current
        if kind == "ready":
            if not self.ready.done():
                self.ready.set_result(None)
        elif current is None:
            return  # a report after its job's end (a thread it left): dropped
        elif kind == "progress":
            percent = message["percent"]
            if percent is not None:
                try:
                    percent = max(0.0, min(100.0, float(percent)))
                except (TypeError, ValueError):
                    percent = None
            text = message["message"]
            current.progress(percent, None if text is None else str(text))
        elif kind == "log":
            current.log(str(message["line"]))
        elif kind == "done" and not current.done.done():
            current.done.set_result(message)

    async def _read_output(self, stream: asyncio.StreamReader) -> None:
        """The job's stdout and stderr, split as a command's (`executor._read_lines`): on
        \\n, and on \\r, a progress bar's redraw of its line."""
        while chunk := await stream.read(_READ_CHUNK):
            self.pending += chunk.replace(b"\r\n", b"\n")
            ended, self.pending = split_ends(self.pending)
            if len(self.pending) > _MAX_LINE:
                ended.append((self.pending, False))
                self.pending = b""
            for raw, redraw in ended:
                self._line(raw[:_MAX_LINE].decode("utf-8", "replace"), redraw)
        if self.pending:
            self._line(self.pending[:_MAX_LINE].decode("utf-8", "replace"), False)
            self.pending = b""

    def _line(self, line: str, redraw: bool) -> None:
        if self.current is not None:
            self.current.log(line, "out", redraw)
        elif line:  # between jobs: an import's warning, say
            log.info("pool process %d: %s", self.pid, line)


class PyPool:
    """Up to `size` pool processes (the worker's slots), importing `modules` at start."""

    def __init__(self, size: int, modules: Iterable[str]) -> None:
        self.size = size
        self.modules = sorted(set(modules))
        self._idle: list[_Proc] = []
        self._procs: set[_Proc] = set()
        self._starting = 0
        self._waiters: collections.deque[asyncio.Future[_Proc]] = collections.deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @classmethod
    def for_kinds(cls, size: int, kinds: Iterable[Kind]) -> PyPool:
        """A pool for the Python kinds that do not run in-process."""
        return cls(size, (k.function.partition(":")[0] for k in kinds
                          if k.function is not None and not k.in_process))

    def start(self) -> None:
        """Warm processes in the background (as many as CPUs at most: more would only
        compete for them while they import); more start as jobs need them."""
        if self.modules:
            for _ in range(min(self.size, os.cpu_count() or 1)):
                self._warm()

    @property
    def pids(self) -> list[int]:
        """The pool's live processes, idle or busy."""
        return [p.pid for p in self._procs if p.returncode is None]

    async def close(self) -> None:
        """End every process: idle ones leave when their socket closes, others are killed."""
        self._closed = True
        while self._tasks:  # warming ones first, so none is left behind
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for waiter in self._waiters:
            waiter.cancel()
        procs, self._idle = list(self._procs), []
        for proc in procs:
            proc.writer.close()
        await asyncio.gather(*(self._retire(p, _CLOSE_S) for p in procs))

    # --- one job ----------------------------------------------------------------------
    async def run(self, job: Job, kind: Kind, folder: Path, progress: executor.ProgressFn,
                  log_line: executor.LogFn, cancel: executor.Stop, grace_s: float,
                  on_memory: executor.MemoryFn | None = None) -> RunResult:
        """Run a job in a pool process to its end: the process has returned it, or has
        exited or been killed."""
        try:
            proc = await self._take()
        except Exception as exc:
            return RunResult(ok=False, error=f"cannot start the job's process: {exc}",
                             retryable=False)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, Any]] = loop.create_future()
        proc.current = _Current(progress, log_line, done)
        peak = executor._Peak(proc.pid, kind.memory_limit_mb, on_memory)
        assert kind.function is not None
        proc.send({"t": "run", "id": job.id, "attempt": job.attempt, "owner": job.owner,
                   "function": kind.function, "key": f"kinds.{kind.name}.function",
                   "args": job.args, "folder": str(folder), "nice": kind.nice,
                   "env": _job_marks(job.id, job.lease_token)})
        sampler = asyncio.create_task(_sample(peak, proc))
        stopper: asyncio.Future[Any] = asyncio.ensure_future(cancel.wait())
        watched: list[asyncio.Future[Any]] = [done, proc.exited, stopper]
        finished, _ = await asyncio.wait(watched, timeout=kind.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        sampler.cancel()
        timed_out = not finished
        end: dict[str, Any] = {}
        if done in finished:
            await asyncio.sleep(0)  # output read with the end goes to this job's log
            end = done.result()
        elif proc.exited in finished:
            # Its end may be on the socket still (a job that raised MemoryError reports,
            # then exits): read to the end of the stream before calling it a crash.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.frames), _FRAMES_DRAIN_S)
            if done.done():
                end = done.result()
        else:  # cancel or timeout: stop it for real
            peak.sample()  # know the whole tree before stopping it
            await executor._stop_group(proc.pid, proc.exited, grace_s)
            if done.done():
                end = done.result()
        if end.get("peak_mb") is not None:
            peak.peak_mb = max(peak.peak_mb or 0.0, end["peak_mb"])
            if kind.memory_limit_mb is not None and end["peak_mb"] > kind.memory_limit_mb:
                peak.over_limit = True  # too short for the watchdog to see, not too small
        reuse = bool(end.get("clean")) and not peak.over_limit and not cancel.is_set() \
            and proc.exited not in finished and not timed_out
        if reuse:
            proc.end_job()
            self._give_back(proc)
        else:
            if proc.returncode is None:
                peak.sample()  # a clean end that left children: find them all first
            await self._retire(proc, 0, peak, (job.id, job.lease_token))
            proc.end_job()
            if not self._closed:
                self._warm()  # its replacement, ready for the next job
        result = _result(kind, end, proc, peak, timed_out, cancel)
        # A retry may find files of an earlier attempt in the folder: they are outputs too.
        if end.get("folder_used") or job.attempt > 1 or not reuse:
            result = dataclasses.replace(result, outputs=executor._outputs(folder))
        return result

    # --- processes --------------------------------------------------------------------
    async def _take(self) -> _Proc:
        while self._idle:
            proc = self._idle.pop()
            if proc.returncode is None:
                return proc
            await self._retire(proc, 0)
        if self._closed:
            raise RuntimeError("the worker is stopping")
        if self._starting <= len(self._waiters):
            self._warm()  # none on its way for this job: start one
        waiter: asyncio.Future[_Proc] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _give_back(self, proc: _Proc) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(proc)
                return
        if len(self._idle) < self.size and not self._closed:
            self._idle.append(proc)
        else:
            proc.writer.close()
            self._spawn_task(self._retire(proc, _CLOSE_S))

    def _warm(self) -> None:
        self._starting += 1
        self._spawn_task(self._start_one())

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self) -> None:
        try:
            proc = await self._spawn()
        except Exception as exc:
            log.error("cannot start a pool process: %s", exc)
            if self._waiters:  # the job that asked for it fails with the reason
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        finally:
            self._starting -= 1
        if self._closed:
            proc.writer.close()
            await self._retire(proc, _CLOSE_S)
        else:
            self._give_back(proc)

    async def _spawn(self) -> _Proc:
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: executor._Protocol(loop), sys.executable, "-c", _CHILD_MAIN,
                str(os.getpid()), str(theirs.fileno()), pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=_child_env())
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=mine)
        proc = _Proc(transport, protocol, reader, writer)
        self._procs.add(proc)
        proc.send({"t": "init", "path": sys.path, "modules": self.modules})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.wait([proc.ready, proc.exited],
                                                return_when=asyncio.FIRST_COMPLETED),
                                   _START_TIMEOUT_S)
        if not proc.ready.done():
            await self._retire(proc, 0)
            raise RuntimeError(f"the pool process did not start ({_ended(proc.returncode)})")
        return proc

    async def _retire(self, proc: _Proc, wait_s: float, peak: executor._Peak | None = None,
                      run: tuple[str, int] | None = None) -> None:
        """Make sure a process is gone (after `wait_s` to leave by itself), with its group,
        every descendant seen and, for a job, every process carrying its mark."""
        if wait_s and proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.exited), wait_s)
        executor._killpg(proc.pid, signal.SIGKILL)
        if peak is not None:
            peak.kill_descendants()
        await proc.exited
        executor._killpg(proc.pid, signal.SIGKILL)  # what it started while dying
        if run is not None:  # (job id, lease token): that run's processes only
            await asyncio.to_thread(executor.kill_marked, *run)
        proc.writer.close()
        proc.frames.cancel()
        self._procs.discard(proc)
        if proc in self._idle:
            self._idle.remove(proc)
        with contextlib.suppress(TimeoutError):  # the last lines it printed (a crash's)
            await asyncio.wait_for(asyncio.shield(proc.output), executor._PIPE_DRAIN_S)
        proc.output.cancel()
        proc.transport.close()


async def _sample(peak: executor._Peak, proc: _Proc) -> None:
    """Sample the job's tree (and watch its limit) from one period in: a shorter job is
    measured exactly by the kernel's peak of its process, which it reports at its end."""
    every_s = executor._MEMORY_SAMPLE_S if peak.limit_mb is None else \
        executor._WATCHDOG_SAMPLE_S
    while proc.returncode is None and not peak.over_limit:
        await asyncio.sleep(every_s)
        peak.sample()


def _result(kind: Kind, end: dict[str, Any], proc: _Proc, peak: executor._Peak,
            timed_out: bool, cancel: executor.Stop) -> RunResult:
    peak_mb = peak.peak_mb
    if peak.over_limit:
        return RunResult(ok=False, error=f"exceeded memory limit ({kind.memory_limit_mb} MB)",
                         retryable=kind.retry_on_memory_limit, peak_memory_mb=peak_mb)
    if timed_out:
        return RunResult(ok=False, timed_out=True, peak_memory_mb=peak_mb,
                         error=f"timed out after {executor._human(kind.timeout_s or 0)}")
    if cancel.is_set() or end.get("cancelled"):
        return RunResult(ok=False, cancelled=True, peak_memory_mb=peak_mb)
    if not end:
        return RunResult(ok=False, error=f"the job's process died: {_ended(proc.returncode)}",
                         exit_code=proc.returncode, peak_memory_mb=peak_mb)
    if end["ok"]:
        return RunResult(ok=True, result=end.get("result"), peak_memory_mb=peak_mb)
    return RunResult(ok=False, error=end.get("error") or "failed",
                     retryable=end.get("retryable", True), peak_memory_mb=peak_mb)


def _ended(code: int | None) -> str:
    if code is None:
        return "still running"
    return f"exit code {code}" if code >= 0 else f"killed by signal {-code}"


def _child_env() -> dict[str, str]:
    """The server's environment without jobgate's own settings (secrets among them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}


def _job_marks(job_id: str, token: int) -> dict[str, str]:
    """The variables that mark a run's processes (as a command's carry them): set in the
    pool process for the job's run, so everything it starts can be found and killed."""
    return {executor._JOB_ENV: job_id, executor._RUN_ENV: executor.run_mark(job_id, token)}
