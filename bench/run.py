"""jobgate's benchmark, with Huey's SqliteHuey (SQLite) and Procrastinate (PostgreSQL) as
the reference peers, in one run.

    uv run --group bench python bench/run.py [--quick] [--only PARTS] [--out FILE]

Prints a Markdown table (also written to bench/results.md) with a target and a "met?"
column for each of the issue's targets; see bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psutil

import huey_bench
import jobgate_bench as jg
import pg_bench
import pyproc_bench
import stream_bench
from harness import BENCH_DIR, BenchError, Procs, Row, fmt_rate, fmt_us, median, percentile, step

HUEY_WORKERS = (1, 4)
HUEY_SETUPS = (huey_bench.Setup("default"), huey_bench.Setup("true"))
LATENCY_JOBS = 200
LATENCY_INTERVAL_MS = 20.0
IDLE_S = 3.0
DEPTH_OWNERS = 10
CLAIMS = 50
LOOKUPS = 1000
STREAM_CLIENTS = (1, 100, 1000)
STREAM_SETTLE_S = 3.0
MB = 1_000_000
MIB = 1 << 20
_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


@dataclass(frozen=True)
class Plan:
    quick: bool
    jobs: int  # end-to-end and submit-only
    http_jobs: int
    depths: tuple[int, int]
    repeats: int  # end-to-end runs per configuration; the median is reported
    progress_calls: int = 40  # ctx.progress() calls per stream measurement

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 1_000, 1_000, (1_000, 10_000), 1, 15)
        return cls(False, 5_000, 5_000, (1_000, 100_000), 3, 40)


@dataclass
class Report:
    plan: Plan
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: bool = False

    def section(self, title: str, fn: Callable[[], None], item: str) -> None:
        """Run one part; a failure becomes a row saying so, and the rest still runs."""
        with step(title):
            try:
                fn()
            except Exception as exc:
                traceback.print_exc()
                self.failed = True
                self.rows.append(Row(item, title, "—", "—", f"ERROR: {exc}".splitlines()[0],
                                     "", _met(False)))

    def markdown(self, command: str, elapsed_s: float, load: str) -> str:
        head = ["#", "measurement", "system", "configuration", "result", "target", "met?"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.item, r.measurement, r.system, r.configuration, r.result, r.target, r.met]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        notes = "\n".join(f"- {n}" for n in self.notes)
        mode = "quick" if self.plan.quick else "full"
        return (f"# jobgate benchmark ({mode} run)\n\n`{command}` — {_machine()}; "
                f"finished {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC in "
                f"{elapsed_s:.0f} s; load average {load}.\n\n" + "\n".join(lines)
                + "\n\nNotes:\n\n" + notes + "\n")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{psutil.cpu_count()} CPUs ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB"
            f", Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"jobgate {metadata.version('jobgate')}, huey {metadata.version('huey')}, "
            f"procrastinate {metadata.version('procrastinate')}")


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


class Bench:
    def __init__(self, plan: Plan, root: Path) -> None:
        self.plan = plan
        self.root = root
        self.report = Report(plan)
        self._n = 0
        self.huey_e2e: dict[tuple[str, int], list[float]] = {}
        self.huey_sync: dict[str, int] = {}
        self.huey_latency_workers = 1  # the better -w of the end-to-end runs

    def folder(self, name: str) -> Path:
        self._n += 1
        path = self.root / f"{self._n:02d}-{name}"
        path.mkdir(parents=True)
        return path

    def run(self, only: str | None = None) -> Report:
        r = self.report
        parts = {
            "huey": ("Huey's synchronous setting", self.huey_pragma, "0"),
            "e2e": ("end-to-end", self.end_to_end, "1"),
            "submit": ("submit-only", self.submit_only, "2"),
            "latency": ("submit-to-start delay", self.latency, "3"),
            "rss": ("idle RSS", self.idle_rss, "4"),
            "depth": ("claim and position at depth", self.depth, "5"),
            "streams": ("event streams (SSE)", self.streams, "6"),
            "pg": ("PostgreSQL: jobgate nodes and Procrastinate", self.pg, "8"),
            "pyproc": ("Python jobs: process pool against in-process", self.pyproc, "11"),
        }
        for name, (title, fn, item) in parts.items():
            if only is None or name in only.split(","):
                r.section(title, fn, item)
        return r

    # --- 0: what "Huey's defaults" mean on this machine --------------------------------
    def huey_pragma(self) -> None:
        names = _SYNCHRONOUS
        for setup in HUEY_SETUPS:
            value = huey_bench.synchronous(setup, self.folder(f"huey-pragma-{setup.fsync}"))
            self.huey_sync[setup.fsync] = value
        self.report.notes.append(
            "Huey 3.x's `SqliteHuey` default is `fsync=None`, which leaves SQLite's own "
            "default; Huey's connection reads `PRAGMA synchronous` = "
            f"{self.huey_sync['default']} ({names.get(self.huey_sync['default'], '?')}) with "
            f"the defaults and {self.huey_sync['true']} "
            f"({names.get(self.huey_sync['true'], '?')}) with `fsync=True` on this machine, "
            "so both Huey rows run at the same durability as jobgate (`synchronous=FULL`, "
            "WAL). All databases live in a temporary folder on "
            f"{_fs_type(self.root)}.")

    def _huey_label(self, setup: huey_bench.Setup) -> str:
        sync = self.huey_sync.get(setup.fsync)
        return setup.label + (f" → synchronous={_SYNCHRONOUS.get(sync, sync)}"
                              if sync is not None else "")

    # --- 1: end to end -------------------------------------------------------------------
    def end_to_end(self) -> None:
        n, plan = self.plan.jobs, self.plan
        runs: dict[str, list[dict[str, float]]] = {"worker": [], "embedded": []}
        for rep in range(plan.repeats):
            # Interleaved, so a noisy minute hits every system alike.
            for kind in ("worker", "embedded"):
                site = jg.make_site(self.folder(f"e2e-jobgate-{kind}-{rep}"))
                with step(f"jobgate end-to-end ({kind}) #{rep + 1}"), Procs(site.folder) as p:
                    runs[kind].append(asyncio.run(jg.end_to_end(site, n, p, kind == "embedded")))
            for setup in HUEY_SETUPS:
                for workers in HUEY_WORKERS:
                    folder = self.folder(f"e2e-huey-{setup.fsync}-w{workers}-{rep}")
                    with step(f"Huey end-to-end ({setup.fsync}, -w {workers}) #{rep + 1}"):
                        timing = huey_bench.end_to_end(setup, folder, workers, n)
                    self.huey_e2e.setdefault((setup.fsync, workers), []).append(
                        n / timing["seconds"])

        huey_best: dict[str, tuple[float, int]] = {}
        for setup in HUEY_SETUPS:
            rates = {w: median(self.huey_e2e[(setup.fsync, w)]) for w in HUEY_WORKERS}
            best = max(rates, key=lambda w: rates[w])
            huey_best[setup.fsync] = (rates[best], best)
        reference = max(rate for rate, _ in huey_best.values())
        of = f"median of {plan.repeats}" if plan.repeats > 1 else "one run"
        jg_config = (f"SQLite, durability=full (synchronous=FULL, WAL); [limits] "
                     f"max_running={jg.MAX_RUNNING} (worker slots {jg.MAX_RUNNING}); "
                     f"producer: Python API in the bench process, {jg.CHUNK} concurrent "
                     "submits at a time")
        for kind, system in (("worker", "jobgate, one `jobgate worker` process"),
                             ("embedded", "jobgate, `Worker` embedded in the producer's "
                                          "process (same asyncio loop)")):
            seconds = median([r["seconds"] for r in runs[kind]])
            rate = n / seconds
            result = (f"{fmt_rate(n, seconds)}, {of}; {rate / reference:.2f}x best "
                      "SqliteHuey")
            if kind == "worker":
                target = f"≥ 2x best SqliteHuey row (≥ {2 * reference:,.0f} jobs/s)"
                met = _met(rate >= 2 * reference)
            else:
                target, met = "info (same target would need " \
                    f"≥ {2 * reference:,.0f} jobs/s)", "—"
            self.report.rows.append(Row("1", f"end-to-end, {n:,} no-op jobs", system,
                                        jg_config, result, target, met))
            self.report.notes.append(
                f"End-to-end jobgate ({kind}) runs: "
                + ", ".join(f"{n / r['seconds']:,.0f} jobs/s (all submits acknowledged after "
                            f"{r['submit_s']:.2f} s)" for r in runs[kind]) + ".")
        for setup in HUEY_SETUPS:
            rate, workers = huey_best[setup.fsync]
            other = next(w for w in HUEY_WORKERS if w != workers)
            other_rate = median(self.huey_e2e[(setup.fsync, other)])
            config = (f"`huey_consumer -k thread -w {workers}` (better than -w {other}: "
                      f"{other_rate:,.0f} jobs/s) {' '.join(huey_bench.CONSUMER_FLAGS[2:])}"
                      "; producer: one process, enqueue loop")
            self.report.rows.append(Row(
                "1", f"end-to-end, {n:,} no-op jobs", self._huey_label(setup), config,
                f"{rate:,.0f} jobs/s, {of}", "reference", "—"))
        for (fsync, workers), measured in sorted(self.huey_e2e.items()):
            self.report.notes.append(
                f"End-to-end SqliteHuey fsync={fsync} -w {workers} runs: "
                + ", ".join(f"{r:,.0f}" for r in measured) + " jobs/s.")
        self.huey_latency_workers = huey_best["default"][1]

    # --- 2: submit only ------------------------------------------------------------------
    def submit_only(self) -> None:
        n, rows = self.plan.jobs, self.report.rows
        seconds = asyncio.run(jg.submit_api(jg.make_site(self.folder("submit-api")), n))
        rows.append(Row("2", "submit-only, Python API", "jobgate",
                        f"SQLite, durability=full; `await queue.submit(...)`, {jg.CHUNK} "
                        "concurrent at a time; no worker", fmt_rate(n, seconds), "—", "—"))
        for setup in HUEY_SETUPS:
            seconds = huey_bench.submit_only(setup, self.folder(f"submit-huey-{setup.fsync}"), n)
            rows.append(Row("2", "submit-only, Python API", self._huey_label(setup),
                            "one producer process, enqueue loop (`noop()` calls); no consumer",
                            fmt_rate(n, seconds), "reference", "—"))
        n = self.plan.http_jobs
        for raw, client in ((False, "an `httpx.AsyncClient` each"),
                            (True, "a minimal asyncio HTTP/1.1 client each")):
            site = jg.make_site(self.folder(f"submit-http-{'raw' if raw else 'httpx'}"))
            with Procs(site.folder) as procs:
                result = asyncio.run(jg.submit_http(site, n, procs, raw))
            rows.append(Row(
                "2", "submit-only, HTTP", "jobgate, `jobgate serve --no-worker`",
                f"POST /api/jobs with a bearer token from {jg.HTTP_CONCURRENCY} concurrent "
                f"senders on their own keep-alive connection, {client}",
                f"{fmt_rate(n, result['seconds']).replace('jobs/s', 'req/s')}; CPU: server "
                f"{result['server_cpu_s']:.1f} s, client {result['client_cpu_s']:.1f} s",
                "—", "—"))
        self.report.notes.append(
            "HTTP submit: the client runs in the bench process on the same two cores as the "
            "server; its CPU seconds are shown so the two can be told apart. One "
            "`httpx.AsyncClient` shared by all 32 senders spends more CPU in its connection "
            "pool than the server needs, hence one client (one connection) per sender.")

    # --- 3: submit to start --------------------------------------------------------------
    def latency(self) -> None:
        n, interval = LATENCY_JOBS, LATENCY_INTERVAL_MS
        site = jg.make_site(self.folder("latency-jobgate"))
        with Procs(site.folder) as procs:
            result = asyncio.run(jg.latency(site, n, interval, procs))
        p50 = percentile(result["json"], 50)
        self.report.rows.append(Row(
            "3", f"submit→start delay, {n} jobs {interval:g} ms apart",
            "jobgate, `jobgate serve` (embedded worker)",
            "POST /api/jobs over HTTP, one at a time; delay = started_at - created_at of "
            "each job's JSON (millisecond ISO-8601), fetched after it completed",
            f"p50 {p50 * 1e3:.1f} ms, p99 {percentile(result['json'], 99) * 1e3:.1f} ms "
            f"(database floats: p50 {percentile(result['db'], 50) * 1e3:.2f} ms, p99 "
            f"{percentile(result['db'], 99) * 1e3:.2f} ms); the client's POST round trip: "
            f"p50 {percentile(result['post'], 50) * 1e3:.1f} ms, p99 "
            f"{percentile(result['post'], 99) * 1e3:.1f} ms",
            "p50 < 5 ms", _met(p50 < 0.005)))
        self.report.notes.append(
            f"`jobgate serve` RSS after the {n + 1} jobs of the submit→start run: "
            f"{result['rss_after'] / MB:.1f} MB.")
        workers = self.huey_latency_workers
        setup = HUEY_SETUPS[0]
        delays = huey_bench.latency(setup, self.folder("latency-huey"), workers, n, interval)
        self.report.rows.append(Row(
            "3", f"submit→start delay, {n} tasks {interval:g} ms apart", self._huey_label(setup),
            f"`huey_consumer -w {workers}` {' '.join(huey_bench.CONSUMER_FLAGS[2:])}; the task's "
            "time.time() at start - the producer's just before enqueue",
            f"p50 {percentile(delays, 50) * 1e3:.1f} ms, p99 "
            f"{percentile(delays, 99) * 1e3:.1f} ms", "reference", "—"))

    # --- 4: memory -----------------------------------------------------------------------
    def idle_rss(self) -> None:
        site = jg.make_site(self.folder("rss"))
        with Procs(site.folder) as procs:
            rss = jg.idle_rss(site, procs, IDLE_S)
        self.report.rows.append(Row(
            "4", "idle RSS", "jobgate, `jobgate serve` (embedded worker)",
            f"psutil RSS {IDLE_S:g} s after /health first answered, no jobs yet",
            f"{rss / MB:.1f} MB ({rss / MIB:.1f} MiB)", "< 60 MB (10^6 bytes)",
            _met(rss < 60 * MB)))

    # --- 5: depth ------------------------------------------------------------------------
    def depth(self) -> None:
        small, large = self.plan.depths
        sites = {n: jg.make_site(self.folder(f"depth-{n}")) for n in (small, large)}
        results = asyncio.run(jg.depths(sites, DEPTH_OWNERS, CLAIMS, LOOKUPS, seed=small))
        what = {
            "claim": (f"claim time (median of {CLAIMS})",
                      "`await store.claim(name, 1, queue.limits, 30.0, ['noop'])`: one job, "
                      "one write transaction (fsync) each"),
            "position": (f"position lookup (median of {LOOKUPS})",
                         "`queue.position(job)` for random queued jobs"),
            "get_position": (f"get + position (median of {LOOKUPS})",
                             "`await queue.get(id)` then `queue.position(job)`: what the "
                             "API pays to answer"),
        }
        for metric, (name, config) in what.items():
            base = results[small][metric]
            for n in (small, large):
                value = results[n][metric]
                if n == small:
                    result, target, met = fmt_us(value), "—", "—"
                else:
                    ratio = value / base
                    result = f"{fmt_us(value)} (ratio {n:,}/{small:,}: {ratio:.2f}x)"
                    target, met = f"≤ 2x depth {small:,}", _met(ratio <= 2)
                self.report.rows.append(Row(
                    "5", f"{name} at depth {n:,}", "jobgate",
                    f"{config}; SQLite, durability=full; {DEPTH_OWNERS} owners",
                    result, target, met))
        self.report.notes.append(
            "Depth: the two queues are measured in turns (one sample at one depth, then one at "
            "the other), so a noisy moment hits both alike. Fill (not a measurement of the "
            "targets): "
            + ", ".join(f"{n:,} jobs in {r['fill_s']:.1f} s ({n / r['fill_s']:,.0f} jobs/s)"
                        for n, r in results.items()) + ".")


    # --- 6 and 7: event streams ---------------------------------------------------------
    def streams(self) -> None:
        counts, calls = STREAM_CLIENTS, self.plan.progress_calls
        site = stream_bench.make_site(self.folder("streams"), max(counts) + 10)
        with Procs(site.folder) as procs:
            proc, token = stream_bench.start(site, procs)
            result = asyncio.run(stream_bench.measure(site, proc, token, counts, calls,
                                                      STREAM_SETTLE_S))
        config = (f"`jobgate serve` (embedded worker); a Python job calls ctx.progress() "
                  f"{calls} times, 260-400 ms apart, each message its time.time(); clients "
                  "on `GET /api/events` (minimal asyncio readers in the bench process) stamp "
                  "each chunk on arrival")
        for n in counts:
            run = result["runs"][n]
            call, commit = run["from_call"], run["from_commit"]
            if not call:
                raise BenchError(f"no progress event reached the {n} clients")
            p99 = percentile(call, 99)
            result_text = (
                f"from ctx.progress(): p50 {percentile(call, 50) * 1e3:.0f} ms, p99 "
                f"{p99 * 1e3:.0f} ms; from the event's commit (fan-out alone): p50 "
                f"{percentile(commit, 50) * 1e3:.0f} ms, p99 {percentile(commit, 99) * 1e3:.0f}"
                f" ms; {run['received']:,} of {run['expected']:,} deliveries (progress "
                f"events x clients); server CPU "
                f"{run['server_cpu_s']:.1f} s")
            target, met = ("p99 < 50 ms", _met(p99 < 0.050)) if n == 100 else ("—", "—")
            self.report.rows.append(Row(
                "6", f"progress→SSE delay, {n:,} client{'s' if n > 1 else ''}", "jobgate",
                config, result_text, target, met))
        base, idle = result["rss_base"], result["rss_idle"]
        cost = idle - base
        self.report.rows.append(Row(
            "7", f"memory with {max(counts):,} idle SSE clients", "jobgate, `jobgate serve`",
            f"psutil RSS of the server {STREAM_SETTLE_S:g} s after the last of "
            f"{max(counts):,} `GET /api/events` streams opened, minus its RSS before any",
            f"{cost / MB:.1f} MB for {max(counts):,} clients ({cost / max(counts) / 1e3:.0f} kB "
            f"each); RSS {base / MB:.1f} MB → {idle / MB:.1f} MB",
            "< 100 MB", _met(cost < 100 * MB)))
        self.report.notes.append(
            "Progress→SSE: the worker writes a job's progress as soon as it comes after a "
            "quiet spell of 250 ms, and coalesces what follows within 250 ms (so a chatty job "
            "costs at most 4 writes a second); the bench's calls are 260-400 ms apart, so each "
            "is written at once. The delay from the event's commit (its `ts`, millisecond "
            "precision) is what the event pipeline and the fan-out add. The clients share one "
            "process and one core with each other, so at 1,000 clients a part of the delay is "
            "the bench reading 1,000 sockets in turn.")

    # --- 8 to 10: PostgreSQL ------------------------------------------------------------
    def pg(self) -> None:
        part = pg_bench.PgPart(self.plan.jobs, self.plan.repeats, LATENCY_JOBS,
                               LATENCY_INTERVAL_MS, self.folder)
        try:
            part.run()
        finally:  # what was measured before a failure still shows
            self.report.rows.extend(part.rows)
            self.report.notes.extend(part.notes)

    # --- 11: Python jobs in pool processes against in-process ---------------------------
    def pyproc(self) -> None:
        n, plan, slots = self.plan.jobs, self.plan, pyproc_bench.E2E_MAX_RUNNING
        e2e: dict[str, list[float]] = {k: [] for k in pyproc_bench.KINDS}
        for rep in range(plan.repeats):
            for kind in pyproc_bench.KINDS:  # interleaved, as row 1
                site = pyproc_bench.make_site(self.folder(f"pyproc-e2e-{kind}-{rep}"), slots,
                                              "jobgate.demo:noop")
                with step(f"Python jobs end-to-end ({kind}) #{rep + 1}"), \
                        Procs(site.folder) as procs:
                    e2e[kind].append(asyncio.run(pyproc_bench.end_to_end(site, kind, n, procs)))
        site = pyproc_bench.make_site(self.folder("pyproc-latency"), jg.MAX_RUNNING,
                                      "jobgate.demo:clock")
        with step("Python jobs submit→start"), Procs(site.folder) as procs:
            delays = asyncio.run(pyproc_bench.latency(site, LATENCY_JOBS, LATENCY_INTERVAL_MS,
                                                      procs))
        texts = pyproc_bench.summary(e2e, n, delays)
        config = (f"SQLite, durability=full; end to end: {n:,} no-op jobs (`jobgate.demo:noop`) "
                  f"through the Python API, one `jobgate worker` with {slots} slots, its pool "
                  f"warmed by {2 * slots} jobs first; delay: {LATENCY_JOBS} jobs of each kind "
                  f"(`jobgate.demo:clock`) POSTed {LATENCY_INTERVAL_MS:g} ms apart, the kinds "
                  "alternating, to `jobgate serve`; \"code running\" is the job's own "
                  "time.time() at its start")
        pool = median(e2e["pool"])
        inproc = median(e2e["inproc"])
        for kind, system in (("pool", "jobgate, Python kind in the process pool (default)"),
                             ("inproc", "jobgate, Python kind with `in_process = true`")):
            extra = f"; {inproc / pool:.2f}x in-process" if kind == "pool" else ""
            self.report.rows.append(Row("11", "Python jobs: no-op end to end, submit→start",
                                        system, config, texts[kind] + extra, "info", "—"))


def _fs_type(path: Path) -> str:
    best, fstype = "", "an unknown file system"
    for part in psutil.disk_partitions(all=True):
        if str(path).startswith(part.mountpoint) and len(part.mountpoint) > len(best):
            best, fstype = part.mountpoint, f"{part.fstype} ({part.device})"
    return fstype


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1,000 jobs, depths 1,000 and 10,000, one run each")
    parser.add_argument("--only", help="comma-separated parts: huey, e2e, submit, latency, "
                        "rss, depth, streams, pg, pyproc (default: all)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results.md",
                        help="where to write the table (default: bench/results.md)")
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick)
    command = "uv run --group bench python bench/run.py" + (" --quick" if args.quick else "") \
        + (f" --only {args.only}" if args.only else "")
    started, load_before = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="jobgate-bench-", ignore_cleanup_errors=True) as tmp:
        report = Bench(plan, Path(tmp)).run(args.only)
    load = f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    text = report.markdown(command, time.monotonic() - started, load)
    print(text)
    args.out.write_text(text)
    print(f"[bench] written to {args.out}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
