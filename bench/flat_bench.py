"""Costs that should stay flat as work grows (issue 19, item 5): the list and queue pages
with a long history, the server's memory with a deep queue and a long event log, and on
PostgreSQL what a worker node spends on the jobs it does not run.

Histories are written with SQL straight into a migrated database (running a million jobs
would take the whole bench's time); what they hold is what finished jobs leave behind.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

import jobgate_bench as jg
import pg_bench
from harness import BENCH_DIR, PYTHON, BenchError, Procs, clean_env, percentile, wait_until

OWNERS = 100  # owners of the finished history
KINDS = ("noop", "other")
FINISHED = ("completed", "failed", "cancelled")  # 80 %, 15 %, 5 % of the history
RECENT = 1_000  # finished in the last hour, whatever the history: the same recent work
HOUR_S = 3_600.0
HISTORY_S = 6 * 86_400.0  # the rest, over the six days before, inside the default
#                           retention (a week)
SETTLE_S = 2.0


def _filling(db: Path) -> sqlite3.Connection:
    """A connection for one big insert: a page cache that holds the indexes it grows (the
    default 2 MB would write and read them back all the way)."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA cache_size = -524288")  # KiB: 512 MiB
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def fill_finished_sqlite(db: Path, n: int) -> float:
    """`n` finished jobs in the SQLite file (already migrated); seconds it took. One
    INSERT ... SELECT, not a statement per row: the count triggers (sqlite_011) make each
    statement keep a statement journal, which a million one-row statements pay for one by
    one. Ids sort below any real ULID (those start with the millisecond's "01..."), in
    the order of the finish times, as real ones would."""
    t = time.perf_counter()
    old = n - RECENT
    with _filling(db) as conn:
        conn.execute(
            "WITH RECURSIVE i(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM i WHERE i + 1 < ?1), "
            "f(i, fin) AS (SELECT i, CASE WHEN i >= ?2 "
            "THEN ?3 - ?4 + ?4 * (i - ?2) / ?5 "
            "ELSE ?3 - ?4 - ?6 + ?6 * i / max(?2, 1) END FROM i) "
            "INSERT INTO jobs (id, kind, owner, args, state, attempt, created_at, run_at, "
            "started_at, finished_at) "
            "SELECT printf('00%024d', i), CASE WHEN i % 7 = 0 THEN ?8 ELSE ?7 END, "
            "'user' || (i % ?9), '{}', CASE WHEN i % 20 < 16 THEN 'completed' "
            "WHEN i % 20 < 19 THEN 'failed' ELSE 'cancelled' END, 1, fin - 0.2, fin - 0.2, "
            "fin - 0.1, fin FROM f",
            (n, old, time.time(), HOUR_S, float(RECENT), HISTORY_S, KINDS[0], KINDS[1],
             OWNERS))
    return time.perf_counter() - t


def fill_queued_sqlite(db: Path, n: int, owners: int) -> float:
    """`n` ready queued jobs from `owners` users (one statement, as above)."""
    t = time.perf_counter()
    now = time.time()
    with _filling(db) as conn:
        conn.execute(
            "WITH RECURSIVE i(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM i WHERE i + 1 < ?1) "
            "INSERT INTO jobs (id, kind, owner, args, state, created_at, run_at, vt) "
            "SELECT printf('00%024d', i), 'noop', 'user' || (i % ?2), '{}', 'queued', ?3, "
            "?3, i FROM i", (n, owners, now))
    return time.perf_counter() - t


def fill_events_sqlite(db: Path, n: int) -> float:
    """`n` progress events of finished jobs, as a busy hour leaves in the outbox."""
    t = time.perf_counter()
    now = time.time()
    data = json.dumps({"percent": 50.0, "message": "half way"})
    with _filling(db) as conn:
        conn.executemany(
            "INSERT INTO events (type, ts, job_id, owner, data) "
            "VALUES ('job.progress', ?, ?, ?, ?)",
            ((now - 600 + 600 * i / n, f"00{i // 10:024d}", f"user{i % OWNERS}", data)
             for i in range(n)))
    return time.perf_counter() - t


async def migrated(site: jg.Site) -> None:
    """Open and close the site's store once: its schema is then the current one."""
    queue = await jg.open_queue(site)
    await queue.close()


# --- list and queue pages ---------------------------------------------------------------
#: Each page the bench asks for: a label and the query string of `GET /api/jobs`.
PAGES = (
    ("all, newest", "limit=50"),
    ("state=failed", "state=failed&limit=50"),
    ("kind=other", "kind=other&limit=50"),
    ("owner+state", "owner=user7&state=completed&limit=50"),
    ("owner+state+kind, rare", "owner=user7&state=cancelled&kind=other&limit=50"),
)
DEEP_PAGES = 10  # a walk down the cursor of one filter


def pages(sites: dict[int, jg.Site], procs: Procs, samples: int) -> dict[int, dict[str, Any]]:
    """For each {finished jobs: site}, a `jobgate serve --no-worker` on it; then in turns
    (a noisy moment hits both alike) each page of PAGES, a walk of DEEP_PAGES pages down
    one filter's cursor, and `GET /api/queue`: seconds per request, all samples."""
    servers = {n: jg.start_serve(site, procs, worker=False) for n, site in sites.items()}
    clients = {n: httpx.Client(base_url=sites[n].url, timeout=60,
                               headers={"Authorization": f"Bearer {token}"})
               for n, (_, token) in servers.items()}
    times: dict[int, dict[str, list[float]]] = {
        n: {**{label: [] for label, _ in PAGES}, "deep page": [], "queue": []}
        for n in sites}
    try:
        for _ in range(samples):
            for n, client in clients.items():
                for label, query in PAGES:
                    times[n][label].append(_timed(client, f"/api/jobs?{query}")[0])
                times[n]["queue"].append(_timed(client, "/api/queue")[0])
        for n, client in clients.items():
            cursor: str | None = None
            for _ in range(DEEP_PAGES * max(1, samples // 20)):
                query = "state=completed&limit=50" + (f"&cursor={cursor}" if cursor else "")
                seconds, body = _timed(client, f"/api/jobs?{query}")
                times[n]["deep page"].append(seconds)
                cursor = body["next"]
        return {n: {"times": t, "rss": psutil.Process(servers[n][0]).memory_info().rss}
                for n, t in times.items()}
    finally:
        for client in clients.values():
            client.close()


def _timed(client: httpx.Client, path: str) -> tuple[float, Any]:
    t = time.perf_counter()
    response = client.get(path)
    seconds = time.perf_counter() - t
    if response.status_code != 200:
        raise BenchError(f"GET {path}: {response.status_code} {response.text[:200]}")
    return seconds, response.json()


def p99(values: list[float]) -> float:
    return percentile(values, 99)


# --- memory -----------------------------------------------------------------------------
def serve_rss(site: jg.Site, procs: Procs) -> int:
    """RSS (bytes) of `jobgate serve --no-worker` on the site, SETTLE_S after /health, once
    it answered `GET /api/queue` and a page of `GET /api/jobs`."""
    pid, token = jg.start_serve(site, procs, worker=False)
    with httpx.Client(base_url=site.url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        _timed(client, "/api/queue")
        _timed(client, "/api/jobs?limit=50")
    time.sleep(SETTLE_S)
    return int(psutil.Process(pid).memory_info().rss)


# --- PostgreSQL: what a node spends on the jobs it does not run --------------------------
def _cpu_s(procs: list[psutil.Process]) -> list[float]:
    return [sum(p.cpu_times()[:2]) for p in procs]


async def pg_nodes(runner: jg.Site, observer: jg.Site | None, n: int, nodes: int,
                   procs: Procs, idle_s: float = 3.0) -> dict[str, Any]:
    """`n` no-op jobs through the Python API here, run by `nodes` worker nodes of
    `runner`'s config, with (if given) one more node of `observer`'s config, whose kinds
    none of the jobs have: it sees every event and claims nothing. Each node's CPU seconds
    over the run, less what it spends idle (measured for `idle_s` before), and how many
    jobs each node started."""
    queue = await jg.open_queue(runner)
    ends = jg._Ends(queue)
    per_node: dict[str, int] = {}

    def started(event: Any) -> None:
        if event.type == "job.started":
            name = str(event.data.get("worker"))
            per_node[name] = per_node.get(name, 0) + 1

    off = queue.bus.on(started)
    try:
        workers = pg_bench._start_nodes(runner, procs, nodes, None)
        if observer is not None:
            workers += _observer(observer, procs)
        ps = [psutil.Process(w.pid) for w in workers]

        def alive() -> None:
            for proc in workers:
                procs.check_alive(proc, "jobgate worker")

        await pg_bench._submit_many(queue, 1, "noop")  # warm-up: a node ran one job
        await jg._wait_completed(queue, ends, 1, False, alive)
        await asyncio.sleep(SETTLE_S)  # past what a node does once, after its first job
        before = _cpu_s(ps)
        await asyncio.sleep(idle_s)
        idle = [(b - a) / idle_s for a, b in zip(before, _cpu_s(ps), strict=True)]
        per_node.clear()
        t0 = time.time()
        before = _cpu_s(ps)
        await pg_bench._submit_many(queue, n, "noop")
        done = await jg._wait_completed(queue, ends, n + 1, False, alive)
        seconds = done - t0
        after = _cpu_s(ps)
        spent = [b - a - rate * seconds
                 for a, b, rate in zip(before, after, idle, strict=True)]
        names = [f"node{i + 1}" for i in range(nodes)] + (["observer"] if observer else [])
        return {"seconds": seconds, "cpu_s": dict(zip(names, spent, strict=True)),
                "raw_cpu_s": dict(zip(names, (b - a for a, b in zip(before, after, strict=True)),
                                      strict=True)),
                "idle_cpu_per_s": dict(zip(names, idle, strict=True)),
                "per_node": dict(per_node)}
    finally:
        off()
        ends.close()
        await queue.close()


def _observer(site: jg.Site, procs: Procs) -> list[Any]:
    proc = procs.start("jobgate-observer", [
        PYTHON, "-m", "jobgate", "worker", "--config", str(site.config), "--name", "observer"],
        env=clean_env(PYTHONPATH=str(BENCH_DIR)))

    def ready() -> bool:
        procs.check_alive(proc, "jobgate worker (observer)")
        return "jobgate: worker" in procs.log_of(proc)

    wait_until(ready, 60.0, "the observer node to start", interval_s=0.05)
    return [proc]
