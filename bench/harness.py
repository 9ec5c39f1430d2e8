"""What every benchmark needs: temp folders, free ports, subprocesses that always die,
waits with deadlines, percentiles, and the rows of the result table."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
_STOP_GRACE_S = 10.0


class BenchError(RuntimeError):
    """A benchmark could not run (a process died, a deadline passed)."""


@dataclass
class Row:
    """One line of the result table."""

    item: str  # the numbering: "1" end-to-end, "2" submit, ...
    measurement: str
    system: str
    configuration: str
    result: str
    target: str = "reference"
    met: str = "—"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without JOBGATE_* (so nothing outside the bench leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Procs:
    """Subprocesses of one benchmark, each in its own session; all stopped on exit.

    Use as a context manager: whatever happens inside, every process started through it is
    sent SIGTERM (its process group, by id), then SIGKILL after a grace period.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{name}-{len(self._procs)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env or clean_env(),
                                    cwd=cwd, start_new_session=True)
        self._procs.append((proc, log_path))
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        for p, path in self._procs:
            if p is proc:
                return _tail(path)
        return ""

    def check_alive(self, proc: subprocess.Popen[bytes], what: str) -> None:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode}:\n{self.log_of(proc)}")

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int | None:
        """Stop one process group: `sig`, then SIGKILL after the grace period."""
        if proc.poll() is None:
            _signal_group(proc.pid, sig)
            try:
                proc.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(_STOP_GRACE_S)
        # Anything the process left in its group goes too.
        _signal_group(proc.pid, signal.SIGKILL)
        return proc.returncode

    def stop_all(self) -> None:
        for proc, _ in reversed(self._procs):
            with contextlib.suppress(Exception):
                self.stop(proc)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_cli(argv: Sequence[str], env: dict[str, str] | None = None, timeout_s: float = 60
            ) -> str:
    """Run a short command to its end; its stdout, or BenchError with its output."""
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env or clean_env(),
                          timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    return done.stdout


def run_producer(script: str, env: dict[str, str], *args: str, timeout_s: float
                 ) -> dict[str, float]:
    """Run a peer's producer script (in bench/) to its end; its last line of output is a
    JSON object of its figures."""
    out = run_cli([PYTHON, str(BENCH_DIR / script), *args], env=env, timeout_s=timeout_s)
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def runs_counted(path: str) -> int:
    """How many tasks ran, from the file a peer's no-op task appends one byte to."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def wait_until(check: Callable[[], bool], timeout_s: float, what: str,
               interval_s: float = 0.002) -> float:
    """Poll `check` until true; returns the time.time() at which it was seen true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return time.time()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Say on stderr what runs now and how long it took."""
    print(f"[bench] {title} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        yield
    finally:
        print(f"[bench]   {title}: {time.monotonic() - started:.1f} s", file=sys.stderr,
              flush=True)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p50 of 200 values is the 100th, p99 the 198th)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def fmt_rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} jobs/s ({n:,} in {seconds:.2f} s)"


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.1f} µs" if us < 100 else f"{us:.0f} µs"
