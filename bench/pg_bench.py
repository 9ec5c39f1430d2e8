"""The PostgreSQL rows: jobgate's `jobgate worker` nodes and Procrastinate, side by side on
one throwaway PostgreSQL server that this bench starts and stops itself.

The server is the tests' (tests/pg.py: Debian's binaries, a temporary folder, a free
loopback port) with PostgreSQL's default durability (`fsync`, `synchronous_commit` and
`full_page_writes` on; the tests turn them off for speed). Every scenario gets a database
of its own. jobgate's producer is the Python API in the bench process, as in row 1;
Procrastinate's is a process of its own, deferring in bulk with `batch_defer_async`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jobgate_bench as jg
import procrastinate_bench as pb
from harness import (
    BENCH_DIR,
    PYTHON,
    BenchError,
    Procs,
    Row,
    clean_env,
    fmt_rate,
    median,
    percentile,
    step,
    wait_until,
)
from jobgate.model import Event, Job
from jobgate.queue import JobQueue

NOOP_MAX_RUNNING = 64  # as row 1
SCALE_SLOTS = 30  # each node's `--slots` in the 50 ms row
SCALE_NODES = 3
PROCRASTINATE_CONCURRENCY = (1, 10)
_TEST_ONLY = ("fsync", "synchronous_commit", "full_page_writes")
_DURABILITY = ("fsync", "synchronous_commit", "full_page_writes", "wal_level",
               "shared_buffers", "max_connections")
_READY_TIMEOUT_S = 60.0


@contextlib.contextmanager
def server() -> Iterator[Any]:
    """tests/pg.py's throwaway server, without the settings that only suit tests."""
    sys.path.insert(0, str(BENCH_DIR.parent / "tests"))
    import pg

    saved = dict(pg._SETTINGS)
    for key in _TEST_ONLY:
        pg._SETTINGS.pop(key, None)
    try:
        with pg.pg_server() as srv:
            yield srv
    finally:
        pg._SETTINGS.clear()
        pg._SETTINGS.update(saved)


def server_facts(srv: Any) -> dict[str, str]:
    import psycopg

    with psycopg.connect(srv.url("postgres"), autocommit=True) as conn:
        facts = {key: str(conn.execute(f"SHOW {key}").fetchone()[0])  # type: ignore[index]
                 for key in _DURABILITY}
        facts["version"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    return facts


def make_site(folder: Path, url: str, max_running: int) -> jg.Site:
    return jg.make_site(folder, url, max_running,
                        {"noop": "pg_kinds:noop", "sleep50": "pg_kinds:sleep50"})


async def _submit_many(queue: JobQueue, n: int, kind: str) -> list[Job]:
    jobs: list[Job] = []
    for start in range(0, n, jg.CHUNK):
        done = await asyncio.gather(*(queue.submit("user0", kind)
                                      for _ in range(min(jg.CHUNK, n - start))))
        jobs.extend(job for job, _ in done)
    return jobs


def _start_nodes(site: jg.Site, procs: Procs, nodes: int, slots: int | None) -> list[Any]:
    """`nodes` `jobgate worker` processes, each past opening its store."""
    started = []
    for i in range(nodes):
        argv = [PYTHON, "-m", "jobgate", "worker", "--config", str(site.config),
                "--name", f"node{i + 1}"]
        if slots is not None:
            argv += ["--slots", str(slots)]
        started.append(procs.start(f"jobgate-worker{i + 1}", argv,
                                   env=clean_env(PYTHONPATH=str(BENCH_DIR))))

    def ready() -> bool:
        for proc in started:
            procs.check_alive(proc, "jobgate worker")
        return all("jobgate: worker" in procs.log_of(p) for p in started)

    wait_until(ready, _READY_TIMEOUT_S, "the jobgate workers to start", interval_s=0.05)
    return started


async def jobgate_e2e(site: jg.Site, n: int, nodes: int, procs: Procs, kind: str = "noop",
                      slots: int | None = None) -> dict[str, Any]:
    """`n` jobs of `kind` submitted through the Python API here, run by `nodes` worker
    processes: seconds from the first submit to the last completion seen here, and how
    many jobs each node started."""
    queue = await jg.open_queue(site)
    ends = jg._Ends(queue)
    per_node: dict[str, int] = {}

    def started(event: Event) -> None:
        if event.type == "job.started":
            name = str(event.data.get("worker"))
            per_node[name] = per_node.get(name, 0) + 1

    off = queue.bus.on(started)
    try:
        workers = _start_nodes(site, procs, nodes, slots)

        def alive() -> None:
            for proc in workers:
                procs.check_alive(proc, "jobgate worker")

        await _submit_many(queue, 1, kind)  # warm-up: a node has run one job
        await jg._wait_completed(queue, ends, 1, False, alive)
        per_node.clear()
        t0 = time.time()
        await _submit_many(queue, n, kind)
        submitted = time.time()
        done = await jg._wait_completed(queue, ends, n + 1, False, alive)
        return {"seconds": done - t0, "submit_s": submitted - t0, "per_node": dict(per_node)}
    finally:
        off()
        ends.close()
        await queue.close()


async def jobgate_latency(site: jg.Site, n: int, interval_ms: float, procs: Procs
                          ) -> list[float]:
    """Submit-to-start delays (s) of `n` jobs submitted `interval_ms` apart through the
    Python API here to one `jobgate worker`: `started_at - created_at` from the database."""
    queue = await jg.open_queue(site)
    ends = jg._Ends(queue)
    try:
        workers = _start_nodes(site, procs, 1, None)

        def alive() -> None:
            procs.check_alive(workers[0], "jobgate worker")

        await _submit_many(queue, 1, "noop")
        await jg._wait_completed(queue, ends, 1, False, alive)
        ids = []
        t0 = time.perf_counter()
        for i in range(n):
            pause = t0 + i * interval_ms / 1000 - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            job, _ = await queue.submit("user0", "noop")
            ids.append(job.id)
        await jg._wait_completed(queue, ends, n + 1, False, alive)
        delays = []
        for job_id in ids:
            done = await queue.get(job_id)
            if done is None or done.started_at is None:
                raise BenchError(f"job {job_id} has no start")
            delays.append(done.started_at - done.created_at)
        return delays
    finally:
        ends.close()
        await queue.close()


@dataclass
class PgPart:
    """Rows 8-10: runs every scenario, interleaved, and turns them into table rows."""

    jobs: int
    repeats: int
    latency_jobs: int
    latency_interval_ms: float
    folder: Any  # Callable[[str], Path]: a fresh folder per scenario
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def run(self) -> None:
        with step("PostgreSQL server"), server() as srv:
            facts = server_facts(srv)
            self._end_to_end(srv)
            self._scaling(srv)
            self._latency(srv)
        self.rows.sort(key=lambda row: int(row.item))  # stable: 8, 9, 10 in table order
        self.notes.append(
            f"PostgreSQL {facts['version']} (Debian's binaries, started by the bench on a "
            "loopback port, tests/pg.py) with its default durability: fsync="
            f"{facts['fsync']}, synchronous_commit={facts['synchronous_commit']}, "
            f"full_page_writes={facts['full_page_writes']}, wal_level={facts['wal_level']}; "
            f"shared_buffers={facts['shared_buffers']}. Each scenario has a database of its "
            "own; jobgate and Procrastinate run in turns on the same server.")

    def _of(self) -> str:
        return f"median of {self.repeats}" if self.repeats > 1 else "one run"

    # --- 8: end to end ---------------------------------------------------------------
    def _end_to_end(self, srv: Any) -> None:
        n = self.jobs
        runs: dict[str, list[dict[str, Any]]] = {}
        for rep in range(self.repeats):
            # A, B, A, B ...: a noisy minute hits both systems alike.
            for nodes in (1, SCALE_NODES):
                site = make_site(self.folder(f"pg-e2e-jobgate-{nodes}n-{rep}"),
                                 srv.new_database(), NOOP_MAX_RUNNING)
                with step(f"jobgate on PostgreSQL, {nodes} node(s) #{rep + 1}"), \
                        Procs(site.folder) as procs:
                    runs.setdefault(f"jobgate-{nodes}", []).append(
                        asyncio.run(jobgate_e2e(site, n, nodes, procs)))
                if nodes == 1:
                    for conc in PROCRASTINATE_CONCURRENCY:
                        with step(f"Procrastinate, concurrency {conc} #{rep + 1}"):
                            runs.setdefault(f"proc-{conc}", []).append(pb.end_to_end(
                                self.folder(f"pg-e2e-procrastinate-c{conc}-{rep}"),
                                srv.new_database(), conc, n))
        rate = {key: n / median([r["seconds"] for r in rs]) for key, rs in runs.items()}
        best_conc = max(PROCRASTINATE_CONCURRENCY, key=lambda c: rate[f"proc-{c}"])
        reference = rate[f"proc-{best_conc}"]
        self.procrastinate_concurrency = best_conc
        config = (f"PostgreSQL (default durability); [limits] max_running={NOOP_MAX_RUNNING} "
                  f"(worker slots {NOOP_MAX_RUNNING} each); producer: Python API in the bench "
                  f"process, {jg.CHUNK} concurrent submits at a time")
        one, three = rate["jobgate-1"], rate[f"jobgate-{SCALE_NODES}"]
        for nodes, system in ((1, "jobgate, one `jobgate worker` node"),
                              (SCALE_NODES, f"jobgate, {SCALE_NODES} `jobgate worker` nodes")):
            seconds = median([r["seconds"] for r in runs[f"jobgate-{nodes}"]])
            value = n / seconds
            result = (f"{fmt_rate(n, seconds)}, {self._of()}; {value / reference:.2f}x best "
                      f"Procrastinate, {value / rate['proc-1']:.2f}x Procrastinate "
                      "concurrency 1")
            if nodes == 1:
                target = f"≥ 2x best Procrastinate (≥ {2 * reference:,.0f} jobs/s)"
                met = "yes" if value >= 2 * reference else "**no**"
            else:
                result += f"; {three / one:.2f}x one node"
                target, met = "info (no-op jobs: CPU-bound on 2 cores)", "—"
            self.rows.append(Row("8", f"end-to-end, {n:,} no-op jobs, PostgreSQL", system,
                                 config, result, target, met))
        for conc in PROCRASTINATE_CONCURRENCY:
            other = [c for c in PROCRASTINATE_CONCURRENCY if c != conc]
            better = " (the better one)" if conc == best_conc and other else ""
            self.rows.append(Row(
                "8", f"end-to-end, {n:,} no-op jobs, PostgreSQL",
                f"Procrastinate, one `procrastinate worker` process{better}",
                f"`procrastinate worker --concurrency {conc}` {' '.join(pb.WORKER_FLAGS)}; "
                f"async no-op task; producer: one process, `batch_defer_async` of "
                f"{pb.CHUNK} jobs at a time",
                f"{rate[f'proc-{conc}']:,.0f} jobs/s, {self._of()}", "reference", "—"))
        for key, rs in runs.items():
            what = (f"jobgate {key.split('-')[1]} node(s)" if key.startswith("jobgate")
                    else f"Procrastinate concurrency {key.split('-')[1]}")
            runs_text = ", ".join(
                f"{n / r['seconds']:,.0f} jobs/s (submits done after {r['submit_s']:.2f} s"
                + (", jobs per node " + "/".join(str(v) for _, v in sorted(
                    r["per_node"].items())) if "per_node" in r else "") + ")" for r in rs)
            self.notes.append(f"End-to-end on PostgreSQL, {what}: {runs_text}.")

    # --- 10: three nodes against one, 50 ms jobs ----------------------------------------
    def _scaling(self, srv: Any) -> None:
        n = self.jobs
        runs: dict[int, list[dict[str, Any]]] = {1: [], SCALE_NODES: []}
        max_running = SCALE_SLOTS * SCALE_NODES
        for rep in range(self.repeats):
            for nodes in (1, SCALE_NODES):
                site = make_site(self.folder(f"pg-scale-{nodes}n-{rep}"), srv.new_database(),
                                 max_running)
                with step(f"jobgate 50 ms jobs, {nodes} node(s) #{rep + 1}"), \
                        Procs(site.folder) as procs:
                    runs[nodes].append(asyncio.run(
                        jobgate_e2e(site, n, nodes, procs, "sleep50", SCALE_SLOTS)))
        rate = {k: n / median([r["seconds"] for r in v]) for k, v in runs.items()}
        ratio = rate[SCALE_NODES] / rate[1]
        ideal = SCALE_SLOTS / 0.05
        self.rows.append(Row(
            "10", f"{n:,} jobs of 50 ms, {SCALE_NODES} nodes vs 1 node, PostgreSQL", "jobgate",
            f"`jobgate worker --slots {SCALE_SLOTS}` per node ([limits] max_running="
            f"{max_running}, never the bound); an async job sleeping 50 ms; producer as row 8",
            f"1 node {rate[1]:,.0f} jobs/s ({rate[1] / ideal:.0%} of {ideal:,.0f}, "
            f"{SCALE_SLOTS} slots x 20/s), {SCALE_NODES} nodes {rate[SCALE_NODES]:,.0f} "
            f"jobs/s: {ratio:.2f}x, {self._of()}",
            "≥ 2x one node", "yes" if ratio >= 2 else "**no**"))
        for nodes, rs in runs.items():
            self.notes.append(
                f"50 ms jobs, {nodes} node(s): " + ", ".join(
                    f"{n / r['seconds']:,.0f} jobs/s (jobs per node "
                    + "/".join(str(v) for _, v in sorted(r["per_node"].items())) + ")"
                    for r in rs) + ".")

    # --- 9: submit to start -------------------------------------------------------------
    def _latency(self, srv: Any) -> None:
        n, interval = self.latency_jobs, self.latency_interval_ms
        site = make_site(self.folder("pg-latency-jobgate"), srv.new_database(),
                         NOOP_MAX_RUNNING)
        with step("jobgate submit→start on PostgreSQL"), Procs(site.folder) as procs:
            delays = asyncio.run(jobgate_latency(site, n, interval, procs))
        self.rows.append(Row(
            "9", f"submit→start delay, {n} jobs {interval:g} ms apart, PostgreSQL",
            "jobgate, one `jobgate worker` node",
            "`await queue.submit(...)` in the bench process, one at a time; delay = "
            "started_at - created_at (database floats: the submitter's clock, then the "
            "claiming node's; one machine)",
            f"p50 {percentile(delays, 50) * 1e3:.1f} ms, p99 "
            f"{percentile(delays, 99) * 1e3:.1f} ms", "—", "—"))
        conc = getattr(self, "procrastinate_concurrency", PROCRASTINATE_CONCURRENCY[0])
        with step("Procrastinate submit→start"):
            delays = pb.latency(self.folder("pg-latency-procrastinate"), srv.new_database(),
                                conc, n, interval)
        self.rows.append(Row(
            "9", f"submit→start delay, {n} jobs {interval:g} ms apart, PostgreSQL",
            "Procrastinate, one `procrastinate worker` process",
            f"`procrastinate worker --concurrency {conc}` (LISTEN/NOTIFY on); `defer_async` "
            "one at a time from a producer process; the task's time.time() at start - the "
            "producer's just before the defer",
            f"p50 {percentile(delays, 50) * 1e3:.1f} ms, p99 "
            f"{percentile(delays, 99) * 1e3:.1f} ms", "reference", "—"))
