"""Several `jobgate worker` processes on one database, with `jobgate serve --no-worker` as
the API node: the global limits hold across nodes, every job runs once at a time, a killed
node's jobs are recovered elsewhere, a stopped node hands its jobs back, cancel and events
cross nodes, and the nodes show in `GET /api/queue` and `jobgate stats`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from conftest import TEST_KINDS, Server, survivors, wait_state
from jobgate.config import Settings
from jobgate.queue import JobQueue
from jobgate.store.base import Node

PG = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
BOTH = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)

# Short leases: a killed node's jobs come back within seconds, its heartbeat expires after
# two lease periods (queue.NODE_LIVE_LEASES).
LEASE = "[worker]\nlease_s = 1\n"

NODE_KINDS = TEST_KINDS + """
[kinds.hold]
argv = ["sh", "-c", "while [ ! -e \\"$0\\" ]; do sleep 0.05; done", "{until}"]
max_attempts = 2
backoff = "0.1s"
[kinds.hold.args]
until = { type = "string" }

[kinds.hold_once]
argv = ["sh", "-c", "while [ ! -e \\"$0\\" ]; do sleep 0.05; done", "{until}"]
[kinds.hold_once.args]
until = { type = "string" }

[kinds.record]
argv = [
    "sh", "-c",
    "r() ( echo \\"$1 $0 $(date +%s%N) $PPID\\" >> \\"$F\\" ); F=$1; r start; sleep $2; r end",
    "{job_id}", "{log}", "{seconds}",
]
max_attempts = 3
backoff = "0.1s"
[kinds.record.args]
log = { type = "string" }
seconds = { type = "number", default = 0.2 }

[kinds.ticks]
argv = [
    "sh", "-c",
    "for i in $(seq 1 $0); do echo \\"progress=$((i*100/$0)) t=$(date +%s.%N)\\"; sleep $1; done",
    "{count}", "{delay}",
]
progress = 'progress=(?P<percent>[0-9.]+) (?P<message>.*)'
[kinds.ticks.args]
count = { type = "integer", default = 8 }
delay = { type = "number", default = 0.3 }
"""


class Nodes:
    """`jobgate worker` processes on the test's configuration; all stopped after the test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str | None = None, slots: int = 2) -> subprocess.Popen[bytes]:
        env = {**os.environ, "JOBGATE_CONFIG": str(self.folder / "jobgate.toml")}
        argv = [sys.executable, "-m", "jobgate", "worker", "--slots", str(slots)]
        argv += ["--name", name] if name else []
        with (self.folder / f"{name or 'node'}-{len(self.procs)}.log").open("wb") as log:
            proc = subprocess.Popen(argv, cwd=self.folder, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill9(proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait()

    @staticmethod
    def term(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout_s)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path)
    yield started
    started.stop_all()


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 30) -> Any:
    """Poll the async `check` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# --- limits and exclusivity ----------------------------------------------------------------

@PG
async def test_three_worker_nodes_never_exceed_the_global_limit(
        make_settings: Callable[..., Settings], open_queue: Any, nodes: Nodes) -> None:
    settings = make_settings("[limits]\nmax_running = 4\n")
    queue, _ = await open_queue(settings, worker=False)
    jobs = [(await queue.submit(owner, "sleep", {"seconds": 0.3}))[0]
            for owner in ["alice", "bob", "carol"] * 10]
    procs = [nodes.start(f"node{i}", slots=3) for i in range(3)]
    store = queue.store
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
    workers = {e.data["worker"] for e in events if e.type == "job.started"}
    assert len(workers) >= 2, workers


@PG
async def test_two_nodes_never_run_the_same_job_at_once_even_when_one_is_killed(
        make_settings: Callable[..., Settings], open_queue: Any, nodes: Nodes,
        tmp_path: Path) -> None:
    """Every run appends its start and end (with its node's pid) to one shared file; a
    node is killed while it runs long jobs. Per job, runs never overlap: a run without an
    end is one of the killed node's, and the next run of that job starts after the kill."""
    settings = make_settings(LEASE, kinds=NODE_KINDS)
    queue: JobQueue
    queue, _ = await open_queue(settings, worker=False)
    runs_log = tmp_path / "runs.log"
    victim = nodes.start("node1", slots=2)
    jobs = [(await queue.submit("alice", "record", {"log": str(runs_log), "seconds": s}))[0]
            for s in [2.0] * 6 + [0.2] * 18]
    long_ids = {j.id for j in jobs[:6]}

    async def victim_runs_a_long_job() -> bool:
        mine = await queue.store.running_jobs("node1")
        return any(j.id in long_ids and j.pid is not None for j in mine)

    await until(victim_runs_a_long_job, "node1 running a long job")
    nodes.start("node0", slots=2)
    nodes.start("node2", slots=2)
    nodes.kill9(victim)
    killed_ns = time.time_ns()

    async def all_done() -> bool:
        stats = await queue.store.stats()
        return stats.counts["completed"] + stats.counts["failed"] == len(jobs)

    await until(all_done, "every job to end", timeout_s=90)
    assert (await queue.store.stats()).counts["completed"] == len(jobs)

    lines = [line.split() for line in runs_log.read_text().splitlines()]
    by_job: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for what, job_id, at_ns, parent in lines:
        by_job[job_id].append((int(at_ns), what, int(parent)))
    assert set(by_job) == {j.id for j in jobs}
    interrupted = 0
    for job_id, marks in by_job.items():
        open_run: tuple[int, int] | None = None  # (start ns, node pid) of the run going on
        for ns, what, ppid in sorted(marks):
            if what == "start":
                if open_run is not None:  # the run before never ended: killed with its node
                    assert open_run[1] == victim.pid and ns > killed_ns, (job_id, marks)
                    interrupted += 1
                open_run = (ns, ppid)
            else:
                assert open_run is not None and open_run[1] == ppid, (job_id, marks)
                open_run = None
        assert open_run is None, (job_id, marks)  # every job's last run ended
    assert interrupted >= 1  # the kill did cut a run short, and it ran again elsewhere
    events = await queue.store.events_after(0, limit=10_000)
    starts = Counter(e.job_id for e in events if e.type == "job.started")
    # Every logged start is a claim (a claimed run killed before it logged is not logged).
    assert sum(starts.values()) >= sum(1 for m in lines if m[0] == "start")


# --- a node killed, a node stopped ---------------------------------------------------------

@PG
async def test_a_killed_nodes_jobs_are_recovered_by_another_node(
        make_settings: Callable[..., Settings], open_queue: Any, nodes: Nodes,
        tmp_path: Path) -> None:
    settings = make_settings(LEASE, kinds=NODE_KINDS)
    queue, _ = await open_queue(settings, worker=False)
    go = tmp_path / "go"
    node_a = nodes.start("nodeA", slots=2)
    again, _ = await queue.submit("alice", "hold", {"until": str(go)})  # 2 attempts
    once, _ = await queue.submit("bob", "hold_once", {"until": str(go)})  # 1 attempt

    async def both_run_with_pids() -> list[Any]:
        running = await queue.store.running_jobs()
        return running if len(running) == 2 and all(j.pid for j in running) else []

    running = await until(both_run_with_pids, "both jobs running on nodeA")
    assert {j.worker for j in running} == {"nodeA"}
    lost_runs = [psutil.Process(j.pid) for j in running]
    nodes.start("nodeB", slots=2)
    await until(lambda: _names(queue.store, "nodeB"), "nodeB registered")

    nodes.kill9(node_a)

    # The runs die with their node (PR_SET_PDEATHSIG), before anyone runs them again.
    assert await survivors(lost_runs) == []
    failed = await wait_state(queue, once.id, "failed", "completed")
    assert (failed.state.value, failed.error, failed.attempt) == ("failed", "worker lost", 1)
    rerun = await wait_state(queue, again.id, "running")
    assert (rerun.worker, rerun.attempt) == ("nodeB", 2)
    go.touch()
    done = await wait_state(queue, again.id, "completed", "failed")
    assert (done.state.value, done.attempt) == ("completed", 2)
    history = [e for e in await queue.store.events_after(0) if e.job_id == again.id]
    assert [e.type for e in history if e.type != "job.progress"] == [
        "job.queued", "job.started", "job.retrying", "job.started", "job.completed"]
    started = [e.data["worker"] for e in history if e.type == "job.started"]
    assert started == ["nodeA", "nodeB"]
    retrying = next(e for e in history if e.type == "job.retrying")
    assert retrying.data["message"] == "recovered after its worker was lost"


@PG
async def test_a_node_stopped_with_sigterm_hands_its_jobs_back(
        make_settings: Callable[..., Settings], open_queue: Any, nodes: Nodes,
        tmp_path: Path) -> None:
    settings = make_settings(LEASE, kinds=NODE_KINDS)
    queue, _ = await open_queue(settings, worker=False)
    go = tmp_path / "go"
    node_a = nodes.start("nodeA", slots=2)
    jobs = [(await queue.submit("alice", "hold_once", {"until": str(go)}))[0] for _ in range(2)]

    async def both_run_with_pids() -> list[Any]:
        running = await queue.store.running_jobs("nodeA")
        return running if len(running) == 2 and all(j.pid for j in running) else []

    runs = [psutil.Process(j.pid) for j in await until(both_run_with_pids, "both running")]

    assert nodes.term(node_a) == 0
    assert await survivors(runs) == []
    for job in jobs:
        back = await queue.get(job.id)
        assert back is not None
        # Handed back uncounted: the one attempt this kind has is still there.
        assert (back.state.value, back.attempt, back.worker, back.message) == (
            "queued", 0, None, "handed back: its worker stopped")
    assert await queue.store.nodes() == []  # it unregistered itself on the way out

    nodes.start("nodeB", slots=2)
    for job in jobs:
        await wait_state(queue, job.id, "running")
    go.touch()
    for job in jobs:
        done = await wait_state(queue, job.id, "completed", "failed")
        assert (done.state.value, done.attempt, done.worker) == ("completed", 1, "nodeB")


# --- cancel and events across nodes --------------------------------------------------------

@BOTH
async def test_cancel_on_the_api_node_stops_the_process_on_a_worker_node(
        db_url: str, make_settings: Callable[..., Settings], open_queue: Any, nodes: Nodes,
        start_server: Callable[..., Server]) -> None:
    settings = make_settings(LEASE, kinds=NODE_KINDS)
    queue, _ = await open_queue(settings, worker=False)
    server = await _api_node(start_server, db_url)
    node = nodes.start("nodeA")
    with server.client("bob") as bob:
        job = bob.post("/api/jobs", json={"kind": "sleep", "args": {"seconds": 300}}).json()

        async def run_with_pid() -> Any:
            current = await queue.get(job["id"])
            return current if current and current.state.value == "running" and current.pid \
                else None

        running = await until(run_with_pid, "the job running on nodeA")
        assert running.worker == "nodeA"
        process = psutil.Process(running.pid)

        answer = bob.post(f"/api/jobs/{job['id']}/cancel")
        assert answer.status_code == 200, answer.text

        ended = await wait_state(queue, job["id"], "cancelled", "completed", "failed")
        assert ended.state.value == "cancelled"
        assert await survivors([process]) == []
        assert bob.get(f"/api/jobs/{job['id']}").json()["state"] == "cancelled"
    assert node.poll() is None  # the node lives on, running nothing
    assert await queue.store.running_jobs("nodeA") == []


async def _api_node(start_server: Callable[..., Server], db_url: str) -> Server:
    """`jobgate serve --no-worker` on the test's database (started off the event loop)."""
    return await asyncio.to_thread(start_server, LEASE, NODE_KINDS, db_url=db_url,
                                   args=("--no-worker",))


class SseReader(threading.Thread):
    """Reads `GET /api/events` into (arrival time, id, event) until `done(event)`."""

    def __init__(self, server: Server, user: str, done: Callable[[dict[str, Any]], bool],
                 last_event_id: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url = f"{server.url}/api/events"
        self.headers = {"Authorization": f"Bearer {server.tokens[user]}"}
        if last_event_id is not None:
            self.headers["Last-Event-ID"] = str(last_event_id)
        self.done = done
        self.frames: list[tuple[float, int | None, dict[str, Any]]] = []
        self.connected = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers,
                              timeout=httpx.Timeout(60, read=60)) as response:
                assert response.status_code == 200, response.status_code
                self.connected.set()
                seq, data = None, []
                for line in response.iter_lines():
                    if line.startswith("id:"):
                        seq = int(line[3:])
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        event = json.loads("\n".join(data))
                        self.frames.append((time.time(), seq, event))
                        seq, data = None, []
                        if self.done(event):
                            return
        except BaseException as exc:  # handed to the test
            self.error = exc
            self.connected.set()

    def result(self, timeout_s: float = 60) -> list[tuple[float, int | None, dict[str, Any]]]:
        self.join(timeout_s)
        assert not self.is_alive(), "the stream did not deliver the end in time"
        if self.error is not None:
            raise self.error
        return self.frames


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@BOTH
async def test_a_worker_nodes_events_reach_sse_clients_of_api_nodes_in_order(
        db_url: str, make_settings: Callable[..., Settings], open_queue: Any, nodes: Nodes,
        start_server: Callable[..., Server]) -> None:
    settings = make_settings(LEASE, kinds=NODE_KINDS)
    queue, _ = await open_queue(settings, worker=False)
    api = await _api_node(start_server, db_url)
    nodes.start("nodeA")
    job_id: list[str] = []

    def ended(event: dict[str, Any]) -> bool:
        return event.get("job_id") in job_id and event["type"] == "job.completed"

    reader = SseReader(api, "alice", ended)
    reader.start()
    assert reader.connected.wait(30)
    with api.client("alice") as alice:
        job_id.append(alice.post("/api/jobs", json={
            "kind": "ticks", "args": {"count": 8, "delay": 0.3}}).json()["id"])
    frames = await asyncio.to_thread(reader.result)

    mine = [(at, seq, e) for at, seq, e in frames if e.get("job_id") == job_id[0]]
    seqs = [seq for _, seq, _ in mine if seq is not None]
    assert len(seqs) == len(mine) and seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    types = [e["type"] for _, _, e in mine]
    assert types[:2] == ["job.queued", "job.started"] and types[-1] == "job.completed"
    progress = [e for _, _, e in mine if e["type"] == "job.progress"]
    assert len(progress) >= 4  # each step comes after a quiet spell: written at once
    percents = [e["progress"] for e in progress]
    assert percents == sorted(percents) and percents[-1] == 100
    started = next(e for _, _, e in mine if e["type"] == "job.started")
    assert started["worker"] == "nodeA"

    # The delay, measured (not asserted): from the job's own clock reading in its progress
    # line, and from the event's commit (`ts`, stamped by the worker node), to arrival here.
    from_line = sorted(at - float(e["message"].removeprefix("t="))
                       for at, _, e in mine if e["type"] == "job.progress")
    from_commit = sorted(at - _ts(e["ts"]) for at, _, e in mine)
    print(f"\n[{db_url.split(':')[0]}] worker node → API node SSE delay: from the job's "
          f"progress line p50 {from_line[len(from_line) // 2] * 1000:.1f} ms, max "
          f"{from_line[-1] * 1000:.1f} ms; from the event's ts p50 "
          f"{from_commit[len(from_commit) // 2] * 1000:.1f} ms, max "
          f"{from_commit[-1] * 1000:.1f} ms ({len(mine)} events)")

    # Resume on another API node from the middle of the run: exactly what came after, no
    # gap, no duplicate (an admin sees every job event, so the seqs are consecutive).
    other = await _api_node(start_server, db_url)
    middle = seqs[len(seqs) // 2]
    resuming = SseReader(other, "alice", ended, last_event_id=middle)
    resuming.start()
    resumed = await asyncio.to_thread(resuming.result)
    again = [seq for _, seq, e in resumed if seq is not None]
    assert again == list(range(middle + 1, seqs[-1] + 1))
    assert [seq for seq in again if seq in set(seqs)] == [s for s in seqs if s > middle]
    stored = [e.seq for e in await queue.store.events_after(middle) if e.seq <= seqs[-1]]
    assert again == stored


# --- nodes in GET /api/queue and jobgate stats -----------------------------------------------

async def _names(store: Any, *expected: str) -> bool:
    live = {n.name for n in await store.nodes(alive_within_s=2.0)}
    return set(expected) <= live


def _queue(server: Server, user: str = "alice") -> dict[str, Any]:
    with server.client(user) as http:
        body: dict[str, Any] = http.get("/api/queue").json()
    return body


@BOTH
async def test_live_nodes_show_in_the_queue_and_stats_and_a_killed_one_expires(
        db_url: str, make_settings: Callable[..., Settings], open_queue: Any, nodes: Nodes,
        start_server: Callable[..., Server], tmp_path: Path) -> None:
    settings = make_settings(LEASE, kinds=NODE_KINDS)
    queue, _ = await open_queue(settings, worker=False)
    api = await _api_node(start_server, db_url)
    procs = {"nodeA": nodes.start("nodeA", slots=2), "nodeB": nodes.start("nodeB", slots=3)}

    async def both_listed() -> bool:
        return [n["name"] for n in _queue(api)["nodes"]] == ["nodeA", "nodeB"]

    await until(both_listed, "both nodes in GET /api/queue")
    job, _ = await queue.submit("alice", "hold_once", {"until": str(tmp_path / "never")})
    running = await wait_state(queue, job.id, "running")
    busy, idle = running.worker, ({"nodeA", "nodeB"} - {running.worker}).pop()

    listed = {n["name"]: n for n in _queue(api)["nodes"]}
    assert (listed[busy]["running"], listed[busy]["running_count"]) == ([job.id], 1)
    assert (listed[idle]["running"], listed[idle]["running_count"]) == ([], 0)
    for name, proc in procs.items():
        node = listed[name]
        assert (node["slots"], node["pid"], node["host"]) == (
            {"nodeA": 2, "nodeB": 3}[name], proc.pid, socket.gethostname())
        assert node["version"] and node["heartbeat_age_s"] >= 0
        assert _ts(node["started_at"]) <= _ts(node["heartbeat_at"])
    # Each node's own memory, from its heartbeat: its machine's, and its job's once sampled.
    total_mb = psutil.virtual_memory().total // 1048576
    for node in listed.values():
        assert 0 < node["memory_available_mb"] <= total_mb, node
        assert isinstance(node["running_rss_mb"], int | float), node
    assert listed[idle]["running_rss_mb"] == 0

    async def busy_memory() -> bool:
        return bool(next(n for n in _queue(api)["nodes"] if n["name"] == busy)["running_rss_mb"])

    await until(busy_memory, f"{busy}'s heartbeat to carry its job's memory")
    # Bob sees the nodes and how busy they are, not the ids of alice's jobs.
    seen_by_bob = {n["name"]: n for n in _queue(api, "bob")["nodes"]}
    assert (seen_by_bob[busy]["running"], seen_by_bob[busy]["running_count"]) == ([], 1)

    stats = await asyncio.to_thread(api.cli, "stats")
    assert stats.returncode == 0, stats.stderr
    table = next(part for part in stats.stdout.split("\n\n")
                 if part.startswith("live nodes")).splitlines()
    assert table[0] == "live nodes: 2"
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert rows[busy][2:4] == [str(listed[busy]["slots"]), "1"]
    assert rows[idle][2:4] == [str(listed[idle]["slots"]), "0"]
    assert rows[busy][7:] == ["s", "ago"]
    # JOBS_MB and FREE_MB: the busy node's job holds memory; both machines have some free.
    assert float(rows[busy][4]) > 0 and int(rows[busy][5]) > 0 and int(rows[idle][5]) > 0

    nodes.kill9(procs[busy])

    async def busy_expired() -> bool:
        names = [n["name"] for n in _queue(api)["nodes"]]
        assert idle in names  # the other one stays live all along
        return busy not in names

    await until(busy_expired, f"{busy} to drop out of GET /api/queue")
    assert busy in {n.name for n in await queue.store.nodes()}  # registered, not live

    assert nodes.term(procs[idle]) == 0
    assert _queue(api)["nodes"] == []  # a node that stops gracefully leaves at once
    assert "live nodes: 0" in (await asyncio.to_thread(api.cli, "stats")).stdout


@BOTH
async def test_the_queues_nodes_carry_the_memory_each_heartbeat_wrote_and_null_if_none(
        db_url: str, make_settings: Callable[..., Settings], open_queue: Any,
        start_server: Callable[..., Server]) -> None:
    """`GET /api/queue`'s nodes carry the memory each node's last heartbeat wrote; a node
    of an older version writes none, and its entry says null."""
    queue, _ = await open_queue(make_settings(LEASE, kinds=NODE_KINDS), worker=False)
    api = await _api_node(start_server, db_url)
    now = time.time()
    await queue.heartbeat(Node("newer", "host-b", 11, 2, "0.2.0", now, running_rss_mb=512.5,
                               memory_available_mb=4096))
    await queue.heartbeat(Node("older", "host-c", 12, 1, "0.1.0", now))
    listed = {n["name"]: n for n in _queue(api)["nodes"]}
    assert set(listed) == {"newer", "older"}
    assert (listed["newer"]["running_rss_mb"], listed["newer"]["memory_available_mb"]) == (
        512.5, 4096)
    assert (listed["older"]["running_rss_mb"], listed["older"]["memory_available_mb"]) == (
        None, None)
    assert {n["name"]: n["memory_available_mb"] for n in _queue(api, "bob")["nodes"]} == {
        "newer": 4096, "older": None}  # a user sees them as well
