"""jobgate's side of the benchmark: the Python API in this process, real `jobgate worker`
and `jobgate serve` subprocesses, and the store's claim and position at depth.

Every scenario gets its own folder, config file, SQLite file and loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from harness import (
    PYTHON,
    BenchError,
    Procs,
    clean_env,
    free_port,
    median,
    run_cli,
    wait_until,
)
from jobgate.config import load_settings
from jobgate.model import Event, Job, State, parse_iso
from jobgate.queue import JobQueue
from jobgate.store import store_for_url
from jobgate.worker import Worker

MAX_RUNNING = 64
CHUNK = 500  # submits in flight at once from the Python API
HTTP_CONCURRENCY = 32
KIND = "noop"
_TIMEOUT_S = 300.0
_START_TIMEOUT_S = 60.0
_ENDS = frozenset({"job.completed", "job.failed", "job.cancelled"})


@dataclass(frozen=True)
class Site:
    """One scenario's folder, config file and port."""

    folder: Path
    config: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.folder / "jobgate.db"


def make_site(folder: Path, url: str | None = None, max_running: int = MAX_RUNNING,
              kinds: dict[str, str] | None = None) -> Site:
    """A config like the brief's: default durability (synchronous=FULL), max_running 64,
    a SQLite file in `folder` unless `url` names another database; `kinds` maps kind
    names to their functions (by default the no-op one)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "jobgate.toml"
    url = url or f"sqlite:///{folder / 'jobgate.db'}"
    kinds = kinds or {KIND: "jobgate.demo:noop"}
    config.write_text(
        "[server]\n"
        f"port = {port}\n"
        f'data_dir = "{folder / "data"}"\n'
        "[storage]\n"
        f'url = "{url}"\n'
        "[limits]\n"
        f"max_running = {max_running}\n"
        # The HTTP submit rows send thousands of submits from one user on purpose.
        '[rate_limits]\nsubmit_per_user = "off"\nsubmit_per_ip = "off"\n'
        # In-process, as the peers' tasks run in their worker processes: these rows
        # measure the queue, row 11 what a pool process per job adds.
        + "".join(f'[kinds.{name}]\nfunction = "{function}"\nin_process = true\n'
                  for name, function in kinds.items())
    )
    return Site(folder, config, port)


async def open_queue(site: Site) -> JobQueue:
    settings = load_settings(site.config, env={})
    queue = JobQueue(settings, store_for_url(settings.storage.url, settings.storage.durability))
    await queue.open()
    return queue


async def submit_many(queue: JobQueue, n: int, owners: int = 1) -> list[Job]:
    """`n` no-op jobs, `CHUNK` submits in flight at a time (group commit batches them)."""
    jobs: list[Job] = []
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        done = await asyncio.gather(*(queue.submit(f"user{(start + i) % owners}", KIND)
                                      for i in range(count)))
        jobs.extend(job for job, _ in done)
    return jobs


class _Ends:
    """Counts jobs that ended, from the queue's own events (no polling of the jobs table)."""

    def __init__(self, queue: JobQueue) -> None:
        self.completed = 0
        self.other: list[Event] = []
        self.changed = asyncio.Event()
        self._off = queue.bus.on(self._on)

    def _on(self, event: Event) -> None:
        if event.type == "job.completed":
            self.completed += 1
            self.changed.set()
        elif event.type in _ENDS:
            self.other.append(event)
            self.changed.set()

    def close(self) -> None:
        self._off()


async def _wait_completed(queue: JobQueue, ends: _Ends, n: int, nudge: bool,
                          alive: Callable[[], None]) -> float:
    """time.time() when `n` jobs have completed. With `nudge`, a cheap read every 2 ms
    makes this process's store pick up another process's events (it otherwise looks for
    them every 0.2 s when idle)."""
    deadline = time.monotonic() + _TIMEOUT_S
    while ends.completed < n:
        if ends.other:
            raise BenchError(f"a job did not complete: {ends.other[0]}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out: {ends.completed}/{n} jobs completed")
        alive()
        ends.changed.clear()
        if nudge:
            await queue.store.next_run_at()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ends.changed.wait(), 0.002 if nudge else 1.0)
    return time.time()


async def end_to_end(site: Site, n: int, procs: Procs, embedded: bool) -> dict[str, float]:
    """`n` jobs submitted through the API; run by a `jobgate worker` subprocess, or by a
    `Worker` in this event loop (`embedded`). Seconds from the first submit to the last
    completion seen here."""
    queue = await open_queue(site)
    ends = _Ends(queue)
    worker_task: asyncio.Task[None] | None = None
    worker: Worker | None = None
    try:
        if embedded:
            worker = Worker(queue, name="bench-embedded")
            worker_task = asyncio.create_task(worker.run())

            def alive() -> None:
                if worker_task is not None and worker_task.done():
                    worker_task.result()
                    raise BenchError("the embedded worker stopped")
        else:
            proc = procs.start("jobgate-worker", [PYTHON, "-m", "jobgate", "worker",
                                                  "--config", str(site.config)])

            def alive() -> None:
                procs.check_alive(proc, "jobgate worker")
        await submit_many(queue, 1)  # warm-up: the worker is up and has run one job
        await _wait_completed(queue, ends, 1, not embedded, alive)
        started = time.time()
        await submit_many(queue, n)
        submitted = time.time()
        done = await _wait_completed(queue, ends, n + 1, not embedded, alive)
        return {"seconds": done - started, "submit_s": submitted - started}
    finally:
        ends.close()
        if worker is not None and worker_task is not None:
            worker.stop()
            await asyncio.gather(worker_task, return_exceptions=True)
        await queue.close()


async def submit_api(site: Site, n: int) -> float:
    """Seconds for `n` submits through the Python API, no worker running."""
    queue = await open_queue(site)
    try:
        await submit_many(queue, 1)
        started = time.perf_counter()
        jobs = await submit_many(queue, n)
        seconds = time.perf_counter() - started
        if len(jobs) != n:
            raise BenchError(f"submitted {len(jobs)} of {n}")
        return seconds
    finally:
        await queue.close()


def _token(site: Site) -> str:
    base = [PYTHON, "-m", "jobgate"]
    run_cli([*base, "user", "add", "bench", "--admin", "--config", str(site.config)])
    out = run_cli([*base, "token", "bench", "--config", str(site.config)])
    return out.strip().splitlines()[-1].strip()


def start_serve(site: Site, procs: Procs, worker: bool) -> tuple[int, str]:
    """A `jobgate serve` on the site's port, answering /health; (pid, token)."""
    token = _token(site)
    argv = [PYTHON, "-m", "jobgate", "serve", "--config", str(site.config)]
    proc = procs.start("jobgate-serve", argv if worker else [*argv, "--no-worker"],
                       env=clean_env())

    def healthy() -> bool:
        procs.check_alive(proc, "jobgate serve")
        try:
            return httpx.get(f"{site.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, _START_TIMEOUT_S, "jobgate serve to answer /health", interval_s=0.05)
    return proc.pid, token


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: a fraction of httpx's CPU
    per request, so on two cores the server, not the client, sets the pace."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawHttp:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await self._reader.readexactly(length)


def _client(site: Site, token: str) -> httpx.AsyncClient:
    """One httpx client with one connection: a client shared by many concurrent requests
    spends more CPU in its connection pool than the server spends answering."""
    return httpx.AsyncClient(base_url=site.url, headers={"Authorization": f"Bearer {token}"},
                             limits=httpx.Limits(max_connections=1), timeout=60)


async def _post_job(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/api/jobs", json={"kind": KIND, "args": {}})
    if response.status_code != 201:
        raise BenchError(f"POST /api/jobs: {response.status_code} {response.text}")
    job: dict[str, Any] = response.json()
    return job


async def submit_http(site: Site, n: int, procs: Procs, raw: bool) -> dict[str, float]:
    """Seconds for `n` POST /api/jobs from `HTTP_CONCURRENCY` concurrent senders, each on
    its own keep-alive connection, to `serve --no-worker`; with the CPU seconds the server
    and this client spent. Senders use httpx.AsyncClient, or `RawHttp` if `raw`."""
    pid, token = start_serve(site, procs, worker=False)
    server = psutil.Process(pid)
    body = json.dumps({"kind": KIND, "args": {}}).encode()
    left = n

    async def sender() -> None:
        nonlocal left
        if raw:
            async with RawHttp(site.port, token) as conn:
                await ready.wait()
                while left > 0:
                    left -= 1
                    status, text = await conn.post("/api/jobs", body)
                    if status != 201:
                        raise BenchError(f"POST /api/jobs: {status} {text!r}")
        else:
            async with _client(site, token) as client:
                await _post_job(client)  # connected and warm
                await ready.wait()
                while left > 0:
                    left -= 1
                    await _post_job(client)

    ready = asyncio.Event()
    senders = [asyncio.create_task(sender()) for _ in range(HTTP_CONCURRENCY)]
    try:
        await asyncio.sleep(0.5)  # every sender connected
        server_cpu, client_cpu = _cpu(server), time.process_time()
        started = time.perf_counter()
        ready.set()
        await asyncio.gather(*senders)
        seconds = time.perf_counter() - started
    finally:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    return {"seconds": seconds, "server_cpu_s": _cpu(server) - server_cpu,
            "client_cpu_s": time.process_time() - client_cpu}


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def latency(site: Site, n: int, interval_ms: float, procs: Procs) -> dict[str, Any]:
    """Submit-to-start delays (s) of `n` jobs POSTed `interval_ms` apart to `jobgate serve`
    with its embedded worker: `started_at - created_at` of each job's JSON (millisecond
    ISO-8601), the same from the database's own float seconds, and the POST round trips."""
    pid, token = start_serve(site, procs, worker=True)
    server = psutil.Process(pid)
    async with _client(site, token) as client:
        warm = await _post_job(client)
        await _wait_final(client, [warm["id"]])
        ids, posts = [], []
        started = time.perf_counter()
        for i in range(n):
            pause = started + i * interval_ms / 1000 - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            sent = time.perf_counter()
            ids.append((await _post_job(client))["id"])
            posts.append(time.perf_counter() - sent)
        jobs = await _wait_final(client, ids)
        rss_after = server.memory_info().rss
    delays = []
    for job in jobs:
        if job["state"] != State.COMPLETED.value:
            raise BenchError(f"job {job['id']} ended {job['state']}: {job['error']}")
        delays.append(parse_iso(job["started_at"]) - parse_iso(job["created_at"]))
    with sqlite3.connect(f"file:{site.db}?mode=ro", uri=True) as conn:
        marks = ", ".join("?" for _ in ids)
        exact = [s - c for c, s in conn.execute(
            f"SELECT created_at, started_at FROM jobs WHERE id IN ({marks})", ids)]
    conn.close()
    return {"json": delays, "db": exact, "post": posts, "rss_after": rss_after}


async def _wait_final(client: httpx.AsyncClient, ids: list[str]) -> list[dict[str, Any]]:
    """The jobs' JSON once every one of them has ended."""
    deadline = time.monotonic() + _TIMEOUT_S
    final = {"completed", "failed", "cancelled"}
    done: dict[str, dict[str, Any]] = {}
    while len(done) < len(ids):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out: {len(done)}/{len(ids)} jobs ended")
        for job_id in ids:
            if job_id in done:
                continue
            response = await client.get(f"/api/jobs/{job_id}")
            response.raise_for_status()
            job = response.json()
            if job["state"] not in final:
                await asyncio.sleep(0.05)
                break
            done[job_id] = job
    return [done[i] for i in ids]


def idle_rss(site: Site, procs: Procs, idle_s: float) -> int:
    """RSS (bytes) of `jobgate serve` (with its embedded worker) `idle_s` after /health."""
    pid, _ = start_serve(site, procs, worker=True)
    time.sleep(idle_s)
    return int(psutil.Process(pid).memory_info().rss)


async def depths(sites: dict[int, Site], owners: int, claims: int, lookups: int, seed: int
                 ) -> dict[int, dict[str, float]]:
    """For each {depth: site}, a queue filled to that depth with jobs from `owners` users;
    then, taking turns between the queues so that a noisy moment hits every depth alike, the
    median seconds of one claim of one job through the store, of `queue.position(job)` for
    a random queued job, and of `queue.get(id)` + position."""
    queues: dict[int, JobQueue] = {}
    try:
        for n, site in sites.items():
            queues[n] = await open_queue(site)
        rng = random.Random(seed)
        fill_s: dict[int, float] = {}
        picks: dict[int, list[Job]] = {}
        for n, queue in queues.items():
            started = time.perf_counter()
            jobs = await submit_many(queue, n, owners)
            fill_s[n] = time.perf_counter() - started
            picks[n] = [rng.choice(jobs) for _ in range(lookups)]
        samples: dict[int, dict[str, list[float]]] = {
            n: {"claim": [], "position": [], "get_position": []} for n in queues}

        for i in range(lookups):
            for n, queue in queues.items():
                t = time.perf_counter()
                position = queue.position(picks[n][i])
                samples[n]["position"].append(time.perf_counter() - t)
                if position is None:
                    raise BenchError(f"queued job {picks[n][i].id} has no position")
        for i in range(lookups):
            for n, queue in queues.items():
                t = time.perf_counter()
                found = await queue.get(picks[n][i].id)
                position = queue.position(found) if found is not None else None
                samples[n]["get_position"].append(time.perf_counter() - t)
                if position is None:
                    raise BenchError(f"queued job {picks[n][i].id} has no position after get")
        for _ in range(claims):
            for n, queue in queues.items():
                t = time.perf_counter()
                claimed = await queue.store.claim("bench-claimer", 1, queue.limits, 30.0,
                                                  [KIND])
                samples[n]["claim"].append(time.perf_counter() - t)
                if len(claimed) != 1:
                    raise BenchError(f"a claim at depth {n} returned {len(claimed)} jobs")
        return {n: {"fill_s": fill_s[n], **{k: median(v) for k, v in samples[n].items()}}
                for n in queues}
    finally:
        for queue in queues.values():
            await queue.close()
