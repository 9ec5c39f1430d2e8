"""`GET /api/queue`'s latency with many finished jobs in one SQLite file: the route that
dashboards poll.

    uv run python bench/queue_stats.py [--jobs 10000] [--calls 200]

Fills a fresh SQLite database with `--jobs` finished jobs of two kinds (through the store,
as a worker would leave them), then calls the route `--calls` times in this process (the
app's own ASGI interface, no socket) and prints the median, p95 and mean latency in ms:
once as a dashboard polls (one call after another), once with the per-process cache of the
route's heavier numbers emptied before each call (every call reads them afresh).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from jobgate.api import create_app
from jobgate.config import load_settings
from jobgate.model import Job, State, new_id
from jobgate.scheduler import Limits
from jobgate.store import store_for_url
from jobgate.store.base import Outcome, Quota

KINDS = ("alpha", "beta")
CONFIG = """
[auth]
enabled = false
[kinds.alpha]
argv = ["true"]
[kinds.beta]
argv = ["true"]
"""


async def fill(url: str, n: int) -> None:
    """`n` finished jobs: about one in ten failed, the rest completed."""
    store = store_for_url(url)
    await store.open()
    try:
        chunk = 500
        for start in range(0, n, chunk):
            now = time.time()
            jobs = [Job(id=new_id(), kind=KINDS[i % 2], owner=f"user{i % 7}", args={},
                        created_at=now, run_at=now) for i in range(start, min(n, start + chunk))]
            await asyncio.gather(*(store.submit(j, Quota()) for j in jobs))
            claimed = await store.claim("bench", len(jobs), Limits(max_running=10**9), 600,
                                        list(KINDS))
            await asyncio.gather(*(store.finish(j.id, j.lease_token, Outcome(
                State.FAILED if k % 10 == 0 else State.COMPLETED))
                for k, j in enumerate(claimed)))
    finally:
        await store.close()


async def measure(folder: Path, calls: int) -> list[tuple[str, list[float], float]]:
    """Per way of calling: the wall-clock latencies (ms), and the CPU time per call (ms, of
    every thread of this process: less swayed by other processes on a busy machine)."""
    settings = load_settings(_config(folder), env={})
    app = create_app(settings, run_worker=False)
    out: list[tuple[str, list[float], float]] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            for name, drop_cache in (("one after another", False),
                                     ("cache emptied before each", True)):
                wall: list[float] = []
                cpu0 = time.process_time()
                for _ in range(calls):
                    if drop_cache:
                        _drop_cache()
                    t0 = time.perf_counter()
                    response = await http.get("/api/queue")
                    wall.append((time.perf_counter() - t0) * 1000)
                    assert response.status_code == 200, response.text
                out.append((name, wall, (time.process_time() - cpu0) * 1000 / calls))
    return out


def _drop_cache() -> None:
    try:
        from jobgate import stats
    except ImportError:  # before the route had a cache: nothing to drop
        return
    stats.drop_cache()


def _config(folder: Path) -> Path:
    path = folder / "jobgate.toml"
    path.write_text(f'[server]\ndata_dir = "{folder / "data"}"\n'
                    f'[storage]\nurl = "sqlite:///{folder / "jobgate.db"}"\n' + CONFIG)
    return path


def _row(name: str, ms: list[float], cpu_ms: float) -> str:
    ordered = sorted(ms)
    p95 = ordered[max(0, int(0.95 * len(ordered)) - 1)]
    return (f"| {name} | {statistics.median(ms):.2f} | {p95:.2f} | "
            f"{statistics.fmean(ms):.2f} | {cpu_ms:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        asyncio.run(fill(f"sqlite:///{folder / 'jobgate.db'}", args.jobs))
        print(f"{args.jobs} finished jobs written in {time.perf_counter() - t0:.1f} s")
        rows = asyncio.run(measure(folder, args.calls))
    print(f"\nGET /api/queue, {args.calls} calls each, ms\n")
    print("| calls | median | p95 | mean | CPU per call |\n| --- | --- | --- | --- | --- |")
    for name, wall, cpu_ms in rows:
        print(_row(name, wall, cpu_ms))


if __name__ == "__main__":
    main()
