"""Procrastinate as the PostgreSQL peer: `procrastinate worker`, a producer process, a file.

Every scenario gets its own database on the bench's server and its own folder.
Executions are counted from the file the task appends to (see `procrastinate_app.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import BENCH_DIR, PYTHON, Procs, clean_env, run_producer, runs_counted, wait_until

CHUNK = 500  # jobs per batch_defer_async call, as jobgate's 500 submits in flight
# --log-level warning: Procrastinate logs two lines per job at its default level (INFO);
# jobgate's worker logs nothing per job either.
WORKER_FLAGS = ["--log-level", "warning"]
_START_TIMEOUT_S = 60.0
_RUN_TIMEOUT_S = 300.0


def _env(folder: Path, url: str) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return clean_env(PYTHONPATH=str(BENCH_DIR), BENCH_PROCRASTINATE_DB=url,
                     BENCH_PROCRASTINATE_OUT=str(folder / "ran.out"))


def worker_argv(concurrency: int) -> list[str]:
    return [PYTHON, "-m", "procrastinate", "--app", "procrastinate_app.app", *WORKER_FLAGS,
            "worker", "--concurrency", str(concurrency)]


def _produce(env: dict[str, str], *args: str) -> dict[str, float]:
    return run_producer("procrastinate_producer.py", env, *args, timeout_s=_RUN_TIMEOUT_S)


def _executed(env: dict[str, str]) -> int:
    return runs_counted(env["BENCH_PROCRASTINATE_OUT"])


def _start_worker(procs: Procs, env: dict[str, str], concurrency: int) -> None:
    """Apply the schema, start `procrastinate worker` and see one job through it, so
    start-up is not timed."""
    _produce(env, "schema")
    worker = procs.start("procrastinate-worker", worker_argv(concurrency), env=env,
                         cwd=BENCH_DIR)
    _produce(env, "noop", "1", "1")

    def warmed() -> bool:
        procs.check_alive(worker, "procrastinate worker")
        return _executed(env) >= 1

    wait_until(warmed, _START_TIMEOUT_S, "procrastinate worker to run a first job")


def end_to_end(folder: Path, url: str, concurrency: int, n: int) -> dict[str, float]:
    """Seconds from the producer's first defer until the worker has run all `n`."""
    env = _env(folder, url)
    with Procs(folder) as procs:
        _start_worker(procs, env, concurrency)
        base = _executed(env)
        producer = procs.start(
            "procrastinate-producer",
            [PYTHON, str(BENCH_DIR / "procrastinate_producer.py"), "noop", str(n), str(CHUNK)],
            env=env)
        done_at = wait_until(lambda: _executed(env) >= base + n, _RUN_TIMEOUT_S,
                             f"Procrastinate to run {n} jobs", interval_s=0.001)
        if producer.wait(_RUN_TIMEOUT_S) != 0:
            raise RuntimeError(f"procrastinate producer failed:\n{procs.log_of(producer)}")
        times = json.loads(procs.log_of(producer).strip().splitlines()[-1])
    return {"seconds": done_at - times["started"], "submit_s": times["ended"] - times["started"]}


def latency(folder: Path, url: str, concurrency: int, n: int, interval_ms: float
            ) -> list[float]:
    """Delays (s) from just before each defer to the task's start, `interval_ms` apart."""
    env = _env(folder, url)
    with Procs(folder) as procs:
        _start_worker(procs, env, concurrency)
        out = Path(env["BENCH_PROCRASTINATE_OUT"])
        base = out.stat().st_size
        _produce(env, "stamp", str(n), str(interval_ms))

        def lines() -> list[str]:
            with out.open("rb") as f:
                f.seek(base)
                return [ln for ln in f.read().decode().splitlines() if ln.strip()]

        wait_until(lambda: len(lines()) >= n, _RUN_TIMEOUT_S,
                   f"Procrastinate to start {n} jobs", interval_s=0.01)
        pairs = [tuple(map(float, ln.split())) for ln in lines()]
    return [started - enqueued for enqueued, started in pairs]
