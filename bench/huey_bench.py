"""Huey's `SqliteHuey` as the reference peer: a producer process, `huey_consumer`, a file.

Every scenario gets its own folder and database. Executions are counted from the file the
task appends to (see `huey_app.py`), never from Huey's queue size, which only says what
was dequeued.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness import BENCH_DIR, PYTHON, Procs, clean_env, run_producer, runs_counted, wait_until

# Polling is tightened from Huey's defaults (0.1 s, backing off to 10 s when idle) so that
# an idle back-off never counts against Huey; -q keeps it from logging two lines per task
# (jobgate's worker logs nothing per job either); -n: no periodic tasks to schedule.
CONSUMER_FLAGS = ["-k", "thread", "-d", "0.001", "-m", "0.01", "-n", "-q"]
_START_TIMEOUT_S = 60.0
_RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Setup:
    """One Huey configuration: `fsync` is "default" (fsync=None) or "true"."""

    fsync: str

    @property
    def label(self) -> str:
        return "SqliteHuey defaults (fsync=None)" if self.fsync == "default" else \
            "SqliteHuey fsync=True"

    def env(self, folder: Path) -> dict[str, str]:
        folder.mkdir(parents=True, exist_ok=True)
        return clean_env(PYTHONPATH=str(BENCH_DIR), BENCH_HUEY_DB=str(folder / "huey.db"),
                         BENCH_HUEY_FSYNC=self.fsync, BENCH_HUEY_OUT=str(folder / "ran.out"))


def consumer_argv(workers: int) -> list[str]:
    return [PYTHON, "-m", "huey.bin.huey_consumer", "huey_app.huey", "-w", str(workers),
            *CONSUMER_FLAGS]


def _produce(env: dict[str, str], *args: str) -> dict[str, float]:
    return run_producer("huey_producer.py", env, *args, timeout_s=_RUN_TIMEOUT_S)


def _executed(env: dict[str, str]) -> int:
    return runs_counted(env["BENCH_HUEY_OUT"])


def synchronous(setup: Setup, folder: Path) -> int:
    """The `PRAGMA synchronous` Huey's own connection runs with (0 OFF, 1 NORMAL, 2 FULL)."""
    return int(_produce(setup.env(folder), "pragma")["synchronous"])


def _start_consumer(procs: Procs, env: dict[str, str], workers: int) -> None:
    """Start `huey_consumer` and see one task through it, so start-up is not timed."""
    consumer = procs.start("huey-consumer", consumer_argv(workers), env=env, cwd=BENCH_DIR)
    _produce(env, "noop", "1")

    def warmed() -> bool:
        procs.check_alive(consumer, "huey_consumer")
        return _executed(env) >= 1

    wait_until(warmed, _START_TIMEOUT_S, "huey_consumer to run a first task")


def end_to_end(setup: Setup, folder: Path, workers: int, n: int) -> dict[str, float]:
    """Seconds from the producer's first enqueue until the consumer has run all `n`."""
    env = setup.env(folder)
    with Procs(folder) as procs:
        _start_consumer(procs, env, workers)
        base = _executed(env)
        producer = procs.start("huey-producer",
                               [PYTHON, str(BENCH_DIR / "huey_producer.py"), "noop", str(n)],
                               env=env)
        done_at = wait_until(lambda: _executed(env) >= base + n, _RUN_TIMEOUT_S,
                             f"Huey to run {n} tasks", interval_s=0.001)
        if producer.wait(_RUN_TIMEOUT_S) != 0:
            raise RuntimeError(f"huey producer failed:\n{procs.log_of(producer)}")
        lines = procs.log_of(producer).strip().splitlines()
        times = json.loads(lines[-1])
    return {"seconds": done_at - times["started"], "enqueue_s": times["ended"] - times["started"]}


def submit_only(setup: Setup, folder: Path, n: int) -> float:
    """Seconds one producer's enqueue loop takes for `n` tasks (no consumer running)."""
    times = _produce(setup.env(folder), "noop", str(n))
    return times["ended"] - times["started"]


def latency(setup: Setup, folder: Path, workers: int, n: int, interval_ms: float
            ) -> list[float]:
    """Delays (s) from just before each enqueue to the task's start, `interval_ms` apart."""
    env = setup.env(folder)
    with Procs(folder) as procs:
        _start_consumer(procs, env, workers)
        out = Path(env["BENCH_HUEY_OUT"])
        base = out.stat().st_size
        _produce(env, "stamp", str(n), str(interval_ms))

        def lines() -> list[str]:
            with out.open("rb") as f:
                f.seek(base)
                return [ln for ln in f.read().decode().splitlines() if ln.strip()]

        wait_until(lambda: len(lines()) >= n, _RUN_TIMEOUT_S, f"Huey to start {n} tasks",
                   interval_s=0.01)
        pairs = [tuple(map(float, ln.split())) for ln in lines()]
    return [started - enqueued for enqueued, started in pairs]


