"""Event streams: delay from a job's `ctx.progress()` to the event at SSE clients, with 1,
100 and 1,000 clients connected, and the server's memory with 1,000 idle SSE clients.

The clients are minimal asyncio HTTP/1.1 readers in the bench process (httpx would spend
more CPU than the server on 1,000 streams); each stamps the arrival of a chunk with
time.time() before anything else, and parses afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from harness import BENCH_DIR, PYTHON, BenchError, Procs, clean_env, free_port, run_cli, wait_until
from jobgate.model import parse_iso

_CONNECT_BATCH = 100
_START_TIMEOUT_S = 60.0
_CALL = re.compile(rb'"message":"t=([0-9.]+)"')
_COMMIT = re.compile(rb'"ts":"([^"]+)"')


@dataclass(frozen=True)
class StreamSite:
    folder: Path
    config: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def make_site(folder: Path, max_streams: int) -> StreamSite:
    """A server for many streams of one user: no rate limits, a stream cap above the test."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "jobgate.toml"
    config.write_text(
        f'[server]\nport = {port}\ndata_dir = "{folder / "data"}"\n'
        f'[storage]\nurl = "sqlite:///{folder / "jobgate.db"}"\n'
        f"[streams]\nmax_per_user = {max_streams}\n"
        '[rate_limits]\nsubmit_per_user = "off"\nsubmit_per_ip = "off"\n'
        '[kinds.ticker]\nfunction = "stream_kinds:ticker"\nin_process = true\n')
    return StreamSite(folder, config, port)


def start(site: StreamSite, procs: Procs) -> tuple[psutil.Process, str]:
    base = [PYTHON, "-m", "jobgate"]
    env = clean_env(PYTHONPATH=str(BENCH_DIR))
    run_cli([*base, "user", "add", "bench", "--admin", "--config", str(site.config)], env=env)
    token = run_cli([*base, "token", "bench", "--config", str(site.config)],
                    env=env).strip().splitlines()[-1]
    proc = procs.start("jobgate-serve-streams", [*base, "serve", "--config", str(site.config)],
                       env=env)

    def healthy() -> bool:
        procs.check_alive(proc, "jobgate serve")
        try:
            return httpx.get(f"{site.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, _START_TIMEOUT_S, "jobgate serve to answer /health", interval_s=0.05)
    return psutil.Process(proc.pid), token


@dataclass
class SseClient:
    """One `GET /api/events` on a plain asyncio connection; keeps progress chunks."""

    port: int
    token: str
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    _writer: asyncio.StreamWriter | None = None
    _task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(
            f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise BenchError(f"GET /api/events: {head[:200]!r}")
        await self._chunk(reader)  # the first queue.stats frame: the stream is live
        self._task = asyncio.create_task(self._read(reader))

    @staticmethod
    async def _chunk(reader: asyncio.StreamReader) -> bytes:
        size = int((await reader.readline()).strip() or b"0", 16)
        return (await reader.readexactly(size + 2))[:-2]

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ValueError):
            while True:
                chunk = await self._chunk(reader)
                now = time.time()  # first, before any parsing
                if b"job.progress" in chunk:
                    self.chunks.append((now, chunk))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()


_SEQ = re.compile(rb"^id: ([0-9]+)", re.M)


def _events_seen(clients: list[SseClient]) -> int:
    """How many progress events there were (two calls within one reporting tick make one)."""
    return len({m.group(1) for c in clients for _, chunk in c.chunks
                if (m := _SEQ.search(chunk)) is not None})


def _delays(clients: list[SseClient]) -> tuple[list[float], list[float]]:
    """(from the ctx.progress() call, from the event's commit) for every event at every client."""
    from_call, from_commit = [], []
    for client in clients:
        for arrived, chunk in client.chunks:
            call, commit = _CALL.search(chunk), _COMMIT.search(chunk)
            if call is None or commit is None:
                continue
            from_call.append(arrived - float(call.group(1)))
            from_commit.append(arrived - parse_iso(commit.group(1).decode()))
    return from_call, from_commit


async def _run_ticker(site: StreamSite, token: str, count: int) -> None:
    async with httpx.AsyncClient(base_url=site.url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        job = (await http.post("/api/jobs", json={"kind": "ticker", "args": {"count": count}}
                               )).json()
        deadline = time.monotonic() + count * 1.0 + 60
        while (await http.get(f"/api/jobs/{job['id']}")).json()["state"] != "completed":
            if time.monotonic() > deadline:
                raise BenchError("the ticker job did not complete")
            await asyncio.sleep(0.2)


async def measure(site: StreamSite, proc: psutil.Process, token: str, counts: tuple[int, ...],
                  calls: int, settle_s: float) -> dict[str, Any]:
    """For each client count: delays of `calls` progress events at every client; and the
    server's RSS idle with no stream, then with the most clients connected and idle."""
    out: dict[str, Any] = {"rss_base": proc.memory_info().rss, "runs": {}}
    clients: list[SseClient] = []
    try:
        for n in counts:
            while len(clients) < n:
                batch = [SseClient(site.port, token)
                         for _ in range(min(_CONNECT_BATCH, n - len(clients)))]
                await asyncio.gather(*(c.connect() for c in batch))
                clients += batch
            if n == max(counts):
                await asyncio.sleep(settle_s)
                out["rss_idle"] = proc.memory_info().rss
            for c in clients:
                c.chunks.clear()
            cpu_before = proc.cpu_times()
            await _run_ticker(site, token, calls)
            await asyncio.sleep(1.0)  # stragglers
            cpu_after = proc.cpu_times()
            from_call, from_commit = _delays(clients)
            expected = n * _events_seen(clients)
            out["runs"][n] = {
                "from_call": from_call, "from_commit": from_commit,
                "received": len(from_call), "expected": expected,
                "server_cpu_s": (cpu_after.user + cpu_after.system)
                - (cpu_before.user + cpu_before.system),
            }
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return out
