"""Python jobs in the worker's process pool against in-process ones (row 11), side by side
in one run: no-op jobs per second end to end, and the delay from submit to start.

Both modes run the same functions from `jobgate.demo` under one config: kind `pool` (the
default: a pool process per running job) and kind `inproc` (`in_process = true`: a thread
of the worker). End to end as row 1 (the Python API in the bench process, a `jobgate
worker` subprocess); the delay as row 3 (`jobgate serve` with its embedded worker, jobs
POSTed 20 ms apart, the two kinds alternating), read two ways: `started_at - created_at`
in the database (the claim) and the job's own `time.time()` at its start minus
`created_at` (the code running, after the hand-over to its process).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import jobgate_bench as jg
from harness import PYTHON, BenchError, Procs, free_port, median, percentile

KINDS = {"pool": "", "inproc": "in_process = true\n"}
E2E_MAX_RUNNING = 8  # slots of the worker: as many pool processes once warm


def make_site(folder: Path, max_running: int, function: str) -> jg.Site:
    """A config like row 1's, with both kinds running `function`."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "jobgate.toml"
    config.write_text(
        f'[server]\nport = {port}\ndata_dir = "{folder / "data"}"\n'
        f'[storage]\nurl = "sqlite:///{folder / "jobgate.db"}"\n'
        f"[limits]\nmax_running = {max_running}\n"
        '[rate_limits]\nsubmit_per_user = "off"\nsubmit_per_ip = "off"\n'
        + "".join(f'[kinds.{name}]\nfunction = "{function}"\n{extra}'
                  for name, extra in KINDS.items()))
    return jg.Site(folder, config, port)


async def _submit(queue: Any, kind: str, n: int) -> None:
    for start in range(0, n, jg.CHUNK):
        await asyncio.gather(*(queue.submit("user0", kind)
                               for _ in range(min(jg.CHUNK, n - start))))


async def end_to_end(site: jg.Site, kind: str, n: int, procs: Procs) -> float:
    """Seconds from the first submit to the last completion of `n` no-op jobs of `kind`,
    run by a `jobgate worker` subprocess whose pool has been warmed to its slots."""
    queue = await jg.open_queue(site)
    ends = jg._Ends(queue)
    proc = procs.start("jobgate-worker", [PYTHON, "-m", "jobgate", "worker",
                                          "--config", str(site.config)])

    def alive() -> None:
        procs.check_alive(proc, "jobgate worker")

    try:
        warm = 2 * E2E_MAX_RUNNING  # every slot busy at once: the pool has them all
        await _submit(queue, kind, warm)
        await jg._wait_completed(queue, ends, warm, True, alive)
        started = time.time()
        await _submit(queue, kind, n)
        return await jg._wait_completed(queue, ends, warm + n, True, alive) - started
    finally:
        ends.close()
        await queue.close()


async def latency(site: jg.Site, n: int, interval_ms: float, procs: Procs
                  ) -> dict[str, dict[str, list[float]]]:
    """Per kind: delays (s) from submit to the claim and to the code's own start."""
    _, token = jg.start_serve(site, procs, worker=True)
    names = list(KINDS)
    ids: dict[str, list[str]] = {k: [] for k in names}
    async with jg._client(site, token) as client:
        for kind in names:  # warm-up: each mode has run a job
            response = await client.post("/api/jobs", json={"kind": kind, "args": {}})
            await jg._wait_final(client, [response.json()["id"]])
        started = time.perf_counter()
        for i in range(2 * n):
            pause = started + i * interval_ms / 1000 - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            kind = names[i % 2]
            response = await client.post("/api/jobs", json={"kind": kind, "args": {}})
            if response.status_code != 201:
                raise BenchError(f"POST /api/jobs: {response.status_code} {response.text}")
            ids[kind].append(response.json()["id"])
        for kind in names:
            for job in await jg._wait_final(client, ids[kind]):
                if job["state"] != "completed":
                    raise BenchError(f"job {job['id']} ended {job['state']}: {job['error']}")
    out: dict[str, dict[str, list[float]]] = {}
    with sqlite3.connect(f"file:{site.db}?mode=ro", uri=True) as conn:
        for kind in names:
            marks = ", ".join("?" for _ in ids[kind])
            rows = conn.execute(f"SELECT created_at, started_at, result FROM jobs "
                                f"WHERE id IN ({marks})", ids[kind]).fetchall()
            out[kind] = {"claim": [s - c for c, s, _ in rows],
                         "code": [float(r) - c for c, _, r in rows]}
    conn.close()
    return out


def summary(e2e: dict[str, list[float]], n: int, delays: dict[str, dict[str, list[float]]]
            ) -> dict[str, str]:
    """One result text per kind."""
    def ms(values: list[float], pct: float) -> str:
        return f"{percentile(values, pct) * 1e3:.1f} ms"

    texts = {}
    for kind in KINDS:
        seconds = median(e2e[kind])
        d = delays[kind]
        texts[kind] = (
            f"{n / seconds:,.0f} jobs/s ({n:,} in {seconds:.2f} s, median of "
            f"{len(e2e[kind])}: " + ", ".join(f"{n / s:,.0f}" for s in e2e[kind]) + "); "
            f"submit→start p50 {ms(d['claim'], 50)}, p99 {ms(d['claim'], 99)}; "
            f"submit→code running p50 {ms(d['code'], 50)}, p99 {ms(d['code'], 99)}")
    return texts
