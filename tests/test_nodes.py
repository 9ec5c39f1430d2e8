"""Several `jobgate worker` processes on one PostgreSQL database: the global limits hold
across nodes, and every job runs once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobgate.config import Settings
from jobgate.store import store_for_url

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def _start_workers(settings_path: Path, n: int, slots: int, folder: Path
                   ) -> list[subprocess.Popen[bytes]]:
    procs = []
    env = {**os.environ, "JOBGATE_CONFIG": str(settings_path)}
    for i in range(n):
        with (folder / f"node{i}.log").open("wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "jobgate", "worker", "--slots", str(slots),
                 "--name", f"node{i}"],
                cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_three_worker_nodes_never_exceed_the_global_limit(
        make_settings: Callable[..., Settings], open_queue: Any, tmp_path: Path) -> None:
    settings = make_settings("[limits]\nmax_running = 4\n")
    queue, _ = await open_queue(settings, worker=False)
    jobs = [(await queue.submit(owner, "sleep", {"seconds": 0.3}))[0]
            for owner in ["alice", "bob", "carol"] * 10]
    procs = _start_workers(tmp_path / "jobgate.toml", 3, 3, tmp_path)
    store = store_for_url(settings.storage.url)
    await store.open()
    try:
        peak, deadline = 0, time.monotonic() + 60
        while True:
            running = await store.running_jobs()
            peak = max(peak, len(running))
            assert len(running) <= 4, [j.worker for j in running]
            stats = await store.stats()
            if stats.counts["completed"] + stats.counts["failed"] == len(jobs):
                break
            assert all(p.poll() is None for p in procs), "a worker node exited"
            assert time.monotonic() < deadline, stats.counts
            await asyncio.sleep(0.02)
        assert stats.counts["completed"] == len(jobs)
        assert peak >= 2  # the nodes did run jobs side by side
        events = await store.events_after(0, limit=10_000)
        started = Counter(e.job_id for e in events if e.type == "job.started")
        assert set(started) == {j.id for j in jobs} and set(started.values()) == {1}
        nodes = {e.data["worker"] for e in events if e.type == "job.started"}
        assert len(nodes) >= 2, nodes
    finally:
        _stop(procs)
        await store.close()
