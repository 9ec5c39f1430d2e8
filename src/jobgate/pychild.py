"""A pool process: runs the worker's Python jobs, one at a time (`jobgate.pychild.main`).

The worker starts it fresh with exec (never a fork of itself, which holds database
connections and threads), hands it a socket on an inherited file descriptor and talks to it
in frames: a 4-byte big-endian length, then one UTF-8 JSON object. The job's own stdout
and stderr are a pipe the worker reads as log lines, so nothing a job prints can corrupt
the frames.

Worker → here: `init` (the worker's `sys.path`, the kinds' modules to import now, so the
first job does not pay the import), then one `run` per job. Here → worker: `ready`, then
per job any number of `progress` / `log`, and one `done`. SIGTERM means stop: it sets
`ctx.cancelled` (and cancels an async job's coroutine); the process exits once the job has
returned, and the worker SIGKILLs its group if it has not after the grace period.

Kept light on purpose (no psutil, no database code): every pool process pays its imports.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import faulthandler
import fcntl
import functools
import importlib
import inspect
import json
import os
import signal
import socket
import struct
import sys
import termios
import threading
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # a result is one frame; more than this is a broken stream
_DRAIN_S = 1.0  # how long the end of a job waits for the worker to read what it printed
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


class NonRetryable(Exception):
    """Raise from a Python job to fail it without retry, whatever attempts remain."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame. `ensure_ascii` keeps lone surrogates as escapes, valid on the wire."""
    data = json.dumps(message, default=str).encode()
    return HEADER.pack(len(data)) + data


class _Flag(Protocol):
    """A cancel flag: a `threading.Event` here, the run's stop signal in the worker."""

    def is_set(self) -> bool: ...


class JobContext:
    """What a Python job's function receives first, wherever it runs: its id, attempt and
    owner, its folder, whether it was cancelled, and how it reports progress and log lines.

    Defined once for both places a job runs: `ChildContext` (below) sends its reports as
    frames from a pool process, `jobgate.executor.LocalContext` hands them to the worker's
    event loop for an `in_process` kind. They only say how a report travels.
    """

    def __init__(self, job_id: str, attempt: int, owner: str, output_dir: Path,
                 cancel: _Flag) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.owner = owner
        self.folder_used = False
        self._output_dir = output_dir
        self._cancel = cancel

    @property
    def output_dir(self) -> Path:
        """The job's own folder: files written here become its outputs."""
        self._output_dir.mkdir(parents=True, exist_ok=True)
        self.folder_used = True
        return self._output_dir

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or timed out: stop soon and return."""
        return self._cancel.is_set()

    def progress(self, percent: float | None = None, message: str | None = None) -> None:
        """Report progress (0-100) and/or a short message; cheap to call often."""
        self._report_progress(percent, message)

    def log(self, line: str) -> None:
        """Add a line to the job's log."""
        self._report_log(str(line))

    def _report_progress(self, percent: float | None, message: str | None) -> None:
        raise NotImplementedError

    def _report_log(self, line: str) -> None:
        raise NotImplementedError


class ChildContext(JobContext):
    """The context of a job in a pool process: its reports are frames to the worker."""

    def __init__(self, job: dict[str, Any], send: Callable[[dict[str, Any]], None],
                 cancel: threading.Event) -> None:
        super().__init__(job["id"], job["attempt"], job["owner"], Path(job["folder"]), cancel)
        self._send = send

    def _report_progress(self, percent: float | None, message: str | None) -> None:
        self._send({"t": "progress", "percent": percent, "message": message})

    def _report_log(self, line: str) -> None:
        self._send({"t": "log", "line": line})


class _Child:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()  # a job may report from threads of its own
        self.cancel = threading.Event()
        self.busy = False
        self.loop: Any = None  # an async job's event loop and task, for SIGTERM to cancel
        self.task: Any = None
        self.functions: dict[str, Callable[..., Any]] = {}
        self.cwd = os.getcwd()

    def send(self, message: dict[str, Any]) -> None:
        frame = encode(message)
        with self.send_lock:
            self.sock.sendall(frame)

    def recv(self) -> dict[str, Any] | None:
        header = self._exactly(HEADER.size)
        if header is None:
            return None
        (size,) = HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes")
        data = self._exactly(size)
        if data is None:
            return None
        message: dict[str, Any] = json.loads(data)
        return message

    def _exactly(self, size: int) -> bytes | None:
        chunks, left = [], size
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                return None  # the worker closed the socket: time to go
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.cancel.set()
        if not self.busy:
            os._exit(0)  # between jobs: nothing to stop cleanly
        if self.loop is not None and self.task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                self.loop.call_soon_threadsafe(self.task.cancel)

    def function(self, target: str, key: str) -> Callable[..., Any]:
        func = self.functions.get(target)
        if func is None:
            module_name, _, attr = target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                raise NonRetryable(f"{key}: cannot import {module_name}: {exc}") from None
            func = getattr(module, attr, None)
            if not callable(func):
                raise NonRetryable(f"{key}: {module_name} has no function {attr}")
            self.functions[target] = func
        return func

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one job; the `done` frame to send, with whether this process may run another."""
        os.environ.update(job["env"])  # the job's mark: whatever it starts inherits it
        if job.get("nice"):
            os.nice(job["nice"])  # cannot be undone: this process is not reused after
        reset = _reset_peak()
        ctx = ChildContext(job, self.send, self.cancel)
        started = time.monotonic()
        clean = not job.get("nice")
        done: dict[str, Any]
        try:
            func = self.function(job["function"], job["key"])
            args = function_args(func, job["args"])
            if inspect.iscoroutinefunction(func):
                value = _run_async(self, func, ctx, args)
            else:
                value = func(ctx, **args)
        except NonRetryable as exc:
            done = {"ok": False, "error": str(exc) or "failed", "retryable": False}
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            ctx.log(f"[jobgate] {error} after {time.monotonic() - started:.1f} s")
            done = {"ok": False, "error": error}
            clean = clean and not isinstance(exc, MemoryError)  # the heap may be in pieces
        except BaseException as exc:  # CancelledError, SystemExit, KeyboardInterrupt
            text = str(exc)
            done = {"ok": False, "cancelled": self.cancel.is_set(),
                    "error": f"{type(exc).__name__}: {text}" if text else type(exc).__name__}
            clean = False
        else:
            done = {"ok": True, "result": _jsonable(value)}
        for name in job["env"]:
            os.environ.pop(name, None)
        if os.getcwd() != self.cwd:
            os.chdir(self.cwd)
        # Reused only if the job left nothing behind that could act in the next one.
        clean = clean and not self.cancel.is_set() and threading.active_count() == 1 \
            and not _has_children()
        done.update(t="done", clean=clean, folder_used=ctx.folder_used,
                    peak_mb=_peak_mb() if reset else None)
        return done


def _run_async(child: _Child, func: Callable[..., Any], ctx: ChildContext,
               args: dict[str, Any]) -> Any:
    import asyncio  # only async jobs pay for it

    async def main() -> Any:
        child.loop, child.task = asyncio.get_running_loop(), asyncio.current_task()
        if child.cancel.is_set():
            raise asyncio.CancelledError
        return await func(ctx, **args)

    try:
        return asyncio.run(main())
    finally:
        child.loop = child.task = None


def function_args(func: Callable[..., Any], args: dict[str, Any]) -> dict[str, Any]:
    """`args` as `func` takes them: a path argument (a string in the job's JSON) becomes a
    `pathlib.Path` where the parameter is annotated `Path` or `Path | None`."""
    wanted = _path_parameters(func)
    if not wanted:
        return args
    return {name: Path(value) if name in wanted and isinstance(value, str) else value
            for name, value in args.items()}


@functools.lru_cache(maxsize=256)
def _path_parameters(func: Callable[..., Any]) -> frozenset[str]:
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an annotation that does not resolve here: take the args as they are
        return frozenset()
    return frozenset(name for name, hint in hints.items() if hint is Path or (
        typing.get_origin(hint) in (typing.Union, types.UnionType)
        and Path in typing.get_args(hint)))


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _has_children() -> bool:
    """Whether this process has a child (a subreaper: any descendant orphaned comes here)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True  # one still runs
        # A zombie the job never waited for, now reaped: look again.


def _reset_peak() -> bool:
    """Reset the kernel's peak RSS of this process (VmHWM), so each job measures its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _drain_output() -> None:
    """Wait (briefly) until the worker has read all the job printed: its lines then land in
    its own log, not the next job's."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    unread = array.array("i", [0])
    deadline = time.monotonic() + _DRAIN_S
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(1, termios.FIONREAD, unread)  # works on the pipe's write end
        except OSError:
            return
        if unread[0] == 0:
            return
        time.sleep(0.001)


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the worker dies (Linux); exit now if it already has: a worker killed
    while it started this process must not leave it running unsupervised."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - not Linux
        return
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)
    # Orphans of a job's own subprocesses stay this process's descendants: found and
    # killed with it, and a job that leaves any behind does not get this process reused.
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)


def main(argv: list[str]) -> int:
    parent, fd = int(argv[1]), int(argv[2])
    _die_with_parent(parent)
    faulthandler.enable()  # a segfault's traceback goes to the job's log
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when this ends
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    child = _Child(socket.socket(fileno=fd))
    signal.signal(signal.SIGTERM, child.on_sigterm)
    init = child.recv()
    if init is None:
        return 0
    sys.path[:] = init["path"]
    for module in init["modules"]:
        try:
            importlib.import_module(module)
        except Exception as exc:  # the kind's jobs will fail with it; others still run
            print(f"[jobgate] cannot import {module}: {exc}", file=sys.stderr)
    child.send({"t": "ready", "pid": os.getpid()})
    while (job := child.recv()) is not None:
        child.busy = True
        done = child.run(job)
        _drain_output()
        child.send(done)
        child.busy = False
        if child.cancel.is_set() or not done["clean"]:
            return 0  # the worker replaces this process
    return 0

