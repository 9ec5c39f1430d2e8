"""A chaos campaign: `jobgate worker` processes SIGKILLed, SIGSTOPped past their lease
and SIGTERMed at random under load, on SQLite and on PostgreSQL; then every invariant is
checked from the store's events and the side effects the jobs left (bench/chaos_checks.py).

    uv run python bench/chaos.py --backend both --jobs 3000 --kills 50 --stops 10 --seed 1

Prints a table of figures per backend and exits 1 on any violation. Everything it starts
(workers, their jobs' processes, the PostgreSQL server) is stopped however it ends.

Each job runs `sh -c` that appends `start JOB NODE PID PPID EPOCH SECONDS` to a file of its
own, starts a grandchild (`sleep 600` in the background, so an orphan shows; for half the
jobs it drops JOBGATE_JOB_ID from its environment, as a program that cleans its environment
would, so that only its process group leads to it), sleeps SECONDS, stops the grandchild
and appends `end JOB NODE PID PPID EPOCH`. Every job process inherits
CHAOS_RUN (this campaign) and CHAOS_NODE (the index of its worker process) from the
worker's environment, and JOBGATE_JOB_ID from jobgate: a sampler thread reads /proc every
`--sample-ms` and records each job process seen.

How processes are counted against the limits: a job counts while one of its processes is
alive (not a zombie) and not stopped, unless its worker was already SIGKILLed (those are
judged by the orphan check, which fails on any still alive `orphan_deadline` after).
A SIGSTOP models a paused machine: the worker, then every process under it, is stopped;
after 2-3 leases the worker is continued first and its jobs' processes half a lease later,
so the worker has had the time to see which leases it lost and stop those runs. (Resumed
all at once, a job that ends in the first instant after the pause is a second run no lease
can prevent; this way, two ended runs of one job always mean a defect.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from chaos_checks import JobView, NodeLife, Observed, ProcTrack, Sample, Verdict, check, parse_runs  # noqa: E402
from harness import clean_env  # noqa: E402
from jobgate.config import load_settings  # noqa: E402
from jobgate.queue import JobQueue  # noqa: E402
from jobgate.store import store_for_url  # noqa: E402
from jobgate.store.base import Store  # noqa: E402

USERS = ("alice", "bob", "carol")
# $0 job id, $1 folder, $2 seconds, $3 "hide": the grandchild drops JOBGATE_JOB_ID (as a
# program that cleans its environment would), so only its process group leads to it.
_SCRIPT = (
    'export CHAOS_JOB="$0"; f="$1/$0"; '
    'echo "start $0 $CHAOS_NODE $$ $PPID $(date +%s.%N) $2" >> "$f"; '
    'if [ "$3" = true ]; then env -u JOBGATE_JOB_ID sleep 600 >/dev/null 2>&1 & g=$!; '
    "else sleep 600 >/dev/null 2>&1 & g=$!; fi; "
    'sleep "$2"; kill $g 2>/dev/null; wait $g; '
    'echo "end $0 $CHAOS_NODE $$ $PPID $(date +%s.%N)" >> "$f"'
)


@dataclass
class Plan:
    backend: str = "sqlite"
    jobs: int = 3000
    kills: int = 50
    stops: int = 10
    terms: int = 10
    seed: int = 1
    workers: int = 3
    slots: int = 4
    max_running: int = 8
    per_user_running: int = 3
    lease_s: float = 2.0
    job_s: tuple[float, float] = (0.05, 0.5)
    long_share: float = 0.05  # of the jobs: long enough to be re-run while a stop lasts
    long_s: tuple[float, float] = (4.0, 8.0)
    start_kill_share: float = 0.2  # of the kills: SIGKILL as the worker starts a job
    sample_s: float = 0.03
    drain_s: float = 180.0

    @property
    def orphan_deadline_s(self) -> float:
        # Recovery may only reap once the lease ran out and a recovery pass ran (every
        # max(1 s, lease/3)): a lease, plus another for a loaded machine, plus a second.
        return 2 * self.lease_s + 1


def config_text(folder: Path, url: str, plan: Plan) -> str:
    argv = ["sh", "-c", _SCRIPT, "{job_id}", "{dir}", "{seconds}", "{hide}"]
    quoted = ", ".join("'" + a + "'" for a in argv)
    return (
        f'[server]\ndata_dir = "{folder / "data"}"\ninput_dir = "{folder}"\n'
        f'[storage]\nurl = "{url}"\n'
        f"[limits]\nmax_running = {plan.max_running}\n"
        f"per_user_running = {plan.per_user_running}\n"
        f"[worker]\nlease_s = {plan.lease_s}\ncancel_grace_s = 1\n"
        f"[kinds.chaos]\nargv = [{quoted}]\nmax_attempts = 100\nbackoff = \"0.1s\"\n"
        "[kinds.chaos.args]\n"
        'dir = { type = "string" }\nseconds = { type = "number", min = 0, max = 60 }\n'
        'hide = { type = "boolean", default = false }\n'
    )


# --- the job processes, seen from /proc ----------------------------------------------------

class ProcWatch:
    """Finds every job process of this campaign (CHAOS_RUN in its environment) in /proc.

    Runs in a process of its own (`--sample-procs`), so that sampling keeps its pace
    whatever the campaign's own event loop does; it writes one line per sweep
    (`@ EPOCH`) and one per live job process (`PID START JOB NODE STATE`) to a file.
    """

    def __init__(self, tag: str) -> None:
        self.tag = f"CHAOS_RUN={tag}".encode()
        self._known: dict[tuple[int, int, bytes], tuple[str, int] | None] = {}

    def _identify(self, pid: int) -> tuple[str, int] | None:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            return None
        if self.tag not in env:
            return None
        job = next((e[15:].decode() for e in env if e.startswith(b"JOBGATE_JOB_ID=")), None) \
            or next((e[10:].decode() for e in env if e.startswith(b"CHAOS_JOB=")), None)
        node = next((e[11:].decode() for e in env if e.startswith(b"CHAOS_NODE=")), None)
        return (job, int(node)) if job and node and node.isdigit() else None

    def sweep(self) -> list[tuple[int, int, str, int, str]]:
        """One look at /proc: (pid, start time, job, node, state) of each live job process.
        A process that changed program since the last look (fork, then exec) is looked at
        again: before its exec, a job's process still has its worker's environment."""
        known: dict[tuple[int, int, bytes], tuple[str, int] | None] = {}
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            close = stat.rfind(b")")
            comm, fields = stat[stat.find(b"(") + 1:close], stat[close + 2:].split()
            key = (pid, int(fields[19]), comm)  # pids are reused: also its start time
            info = self._known[key] if key in self._known else self._identify(pid)
            known[key] = info
            if info is not None and fields[0] not in (b"Z", b"X", b"x"):
                found.append((pid, key[1], info[0], info[1], fields[0].decode()))
        self._known = known
        return found


def sample_procs(tag: str, interval_s: float, out: Path) -> None:
    """The sampler process: sweep every `interval_s` until SIGTERM or the campaign dies."""
    parent, halt = os.getppid(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: halt.set())
    watch = ProcWatch(tag)
    with out.open("w") as f:
        due = time.monotonic()
        while not halt.wait(max(0.0, due - time.monotonic())) and os.getppid() == parent:
            due = time.monotonic() + interval_s
            now = time.time()
            found = watch.sweep()
            f.write(f"@ {now:.6f}\n" + "".join(f"{p} {s} {j} {n} {st}\n"
                                                for p, s, j, n, st in found))


def read_samples(path: Path, nodes: list[NodeLife]) -> tuple[list[Sample], list[ProcTrack]]:
    """The sampler's file as limit samples and process tracks. A sample counts the jobs with
    a process that is not stopped, of a worker not yet SIGKILLed or gone."""
    ended = {n.index: n.ended for n in nodes}
    samples: list[Sample] = []
    tracks: dict[tuple[int, int], ProcTrack] = {}
    ts, jobs = 0.0, set[str]()
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[0] == "@":
            if ts:
                samples.append(Sample(ts, tuple(sorted(jobs))))
            ts, jobs = float(parts[1]), set()
            continue
        if len(parts) != 5:
            continue  # the last line, cut by the sampler's end
        pid, start, job, node, state = int(parts[0]), int(parts[1]), parts[2], \
            int(parts[3]), parts[4]
        track = tracks.setdefault((pid, start), ProcTrack(pid, job, node, ts, ts))
        track.last_alive = ts
        dead = ended.get(node)
        if state not in ("T", "t") and (dead is None or dead > ts):
            jobs.add(job)
    if ts:
        samples.append(Sample(ts, tuple(sorted(jobs))))
    return samples, list(tracks.values())


# --- the worker processes ------------------------------------------------------------------

class Fleet:
    """The `jobgate worker` processes, slot by slot; even slots are started with --name."""

    def __init__(self, folder: Path, plan: Plan, tag: str) -> None:
        self.folder, self.plan, self.tag = folder, plan, tag
        self.lives: list[NodeLife] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # node index -> process
        self.current: dict[int, int] = {}  # slot -> node index
        self.stopping: set[int] = set()  # node indexes being stopped now
        self.sampler: subprocess.Popen[bytes] | None = None

    def start(self, slot: int) -> NodeLife:
        index = len(self.lives)
        named = slot % 2 == 0
        argv = [sys.executable, "-m", "jobgate", "worker", "--slots", str(self.plan.slots)]
        argv += ["--name", f"NODE-{slot}"] if named else []
        env = clean_env(JOBGATE_CONFIG=str(self.folder / "jobgate.toml"),
                        CHAOS_RUN=self.tag, CHAOS_NODE=str(index))
        with (self.folder / f"worker-{index}.log").open("wb") as log:
            proc = subprocess.Popen(argv, cwd=self.folder, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        name = f"NODE-{slot}" if named else f"{socket.gethostname()}:{proc.pid}"
        life = NodeLife(index, slot, name, named, proc.pid, time.time())
        self.lives.append(life)
        self.procs[index] = proc
        self.current[slot] = index
        return life

    def alive(self) -> list[NodeLife]:
        return [self.lives[i] for i in self.current.values() if i not in self.stopping]

    async def kill(self, life: NodeLife, at_start: bool) -> None:
        proc = self.procs[life.index]
        caught = None
        if at_start:  # as soon as a child is forked but not yet exec'd (up to 3 s)
            caught = await asyncio.to_thread(_kill_when_forking, life.pid, 3.0)
        life.ended = caught or time.time()
        life.how = "kill-at-start" if caught else "kill"
        proc.kill()
        await asyncio.to_thread(proc.wait)
        self.start(life.slot)

    async def term(self, life: NodeLife) -> None:
        proc = self.procs[life.index]
        life.termed = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        life.ended, life.how = time.time(), "term"
        self.start(life.slot)

    async def pause(self, life: NodeLife, seconds: float) -> None:
        """SIGSTOP the worker and everything under it; continue the worker after
        `seconds`, its jobs' processes half a lease later.

        A signal takes effect when its target next runs, so each step waits until what it
        stopped is stopped: the worker first (then it forks no more), then each job's
        process group (a group signal reaches a child being forked, too), then any process
        that left its group or the worker's tree (found by CHAOS_NODE: a paused machine
        pauses those too)."""
        self.stopping.add(life.index)
        try:
            stopped = time.time()
            os.kill(life.pid, signal.SIGSTOP)
            await _wait(lambda: _is_stopped(life.pid), 5, 0.002)
            groups = {p.pid for p in _children(life.pid)}
            for group in groups:
                with contextlib.suppress(OSError):
                    os.killpg(group, signal.SIGSTOP)
            kids: list[psutil.Process] = []
            for _ in range(100):
                kids = _descendants(life.pid) + self._marked(life.index)
                moving = [p for p in kids if not _is_stopped(p.pid)]
                if not moving:
                    break
                for p in moving:
                    with contextlib.suppress(psutil.Error):
                        p.suspend()
                await asyncio.sleep(0.005)
            kids_stopped = time.time()
            await asyncio.sleep(seconds)
            os.kill(life.pid, signal.SIGCONT)
            await asyncio.sleep(self.plan.lease_s / 2)
            for group in groups:
                with contextlib.suppress(OSError):
                    os.killpg(group, signal.SIGCONT)
            for p in kids:
                with contextlib.suppress(psutil.Error):
                    p.resume()
            life.stops.append((stopped, kids_stopped, time.time()))
        finally:
            self.stopping.discard(life.index)

    def _marked(self, index: int) -> list[psutil.Process]:
        """The processes of this worker's jobs, wherever they are in the process tree."""
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                env = p.environ()
                if env.get("CHAOS_RUN") == self.tag and env.get("CHAOS_NODE") == str(index) \
                        and ("JOBGATE_JOB_ID" in env or "CHAOS_JOB" in env):
                    found.append(p)
        return found

    def stop_all(self, how: str) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
        for index, proc in self.procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            life = self.lives[index]
            if life.ended is None:
                life.ended, life.how = time.time(), how


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.Error:
        return []


def _is_stopped(pid: int) -> bool:
    """Every thread of the process stopped (or the process gone)?"""
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat", "rb") as f:
                stat = f.read()
            if stat[stat.rfind(b")") + 2:][:1] not in (b"T", b"t", b"Z", b"X"):
                return False
    except OSError:
        return True
    return True


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_when_forking(pid: int, timeout_s: float) -> float | None:
    """SIGKILL the worker the moment it has a child that is still a copy of itself (forked,
    its job's program not yet exec'd); when that was, or None if it never had one."""
    deadline = time.monotonic() + timeout_s
    seen = set(os.listdir("/proc"))
    while time.monotonic() < deadline:
        now = set(os.listdir("/proc"))  # look at the processes that are new alone
        fresh, seen = now - seen, now
        for child in fresh:
            try:
                with open(f"/proc/{child}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            close = stat.rfind(b")")
            if int(stat[close + 2:].split()[1]) == pid and \
                    stat[stat.find(b"(") + 1:close].startswith(b"python"):
                when = time.time()
                os.kill(pid, signal.SIGKILL)
                return when
    return None


def kill_leftovers(tag: str) -> int:
    """SIGKILL every process still carrying this campaign's tag (its workers' jobs)."""
    killed = 0
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.pid != os.getpid() and p.environ().get("CHAOS_RUN") == tag:
                p.kill()
                killed += 1
    return killed


# --- the campaign --------------------------------------------------------------------------

@dataclass
class Live:
    """What the producer, samplers and chaos share while the campaign runs."""

    acknowledged: dict[str, str] = field(default_factory=dict)
    submit_errors: int = 0
    finished: int = 0
    running_by_worker: dict[str, int] = field(default_factory=dict)
    db_samples: list[tuple[float, int, dict[str, int]]] = field(default_factory=list)
    submitting: bool = True


async def _produce(queue: JobQueue, plan: Plan, live: Live, rng: random.Random,
                   runs_dir: Path) -> None:
    sent = 0
    depth = max(4 * plan.max_running, 40)
    while sent < plan.jobs:
        if len(live.acknowledged) - live.finished >= depth:
            await asyncio.sleep(0.02)
            continue
        batch = min(20, plan.jobs - sent)
        sent += batch
        specs = [(rng.choice(USERS), round(rng.uniform(
                      *(plan.long_s if rng.random() < plan.long_share else plan.job_s)), 2),
                  rng.random() < 0.5) for _ in range(batch)]
        done = await asyncio.gather(
            *(queue.submit(owner, "chaos", {"dir": str(runs_dir), "seconds": s, "hide": hide})
              for owner, s, hide in specs), return_exceptions=True)
        for (owner, _, _), result in zip(specs, done, strict=True):
            if isinstance(result, BaseException):
                live.submit_errors += 1
            else:
                live.acknowledged[result[0].id] = owner
    live.submitting = False


async def _sample_db(store: Store, live: Live) -> None:
    while True:
        try:
            await _sample_db_once(store, live)
        except Exception as exc:  # a busy database: the next look will do
            print(f"[chaos] database sample failed: {exc!r}", file=sys.stderr, flush=True)
        await asyncio.sleep(0.05)


async def _sample_db_once(store: Store, live: Live) -> None:
    running = await store.running_jobs()
    per_user: dict[str, int] = {}
    by_worker: dict[str, int] = {}
    for job in running:
        per_user[job.owner] = per_user.get(job.owner, 0) + 1
        by_worker[job.worker or "?"] = by_worker.get(job.worker or "?", 0) + 1
    live.db_samples.append((time.time(), len(running), per_user))
    live.running_by_worker = by_worker
    stats = await store.stats()
    live.finished = sum(stats.counts.get(s, 0) for s in ("completed", "failed", "cancelled"))


async def _chaos(fleet: Fleet, plan: Plan, live: Live, rng: random.Random) -> None:
    start_kills = round(plan.kills * plan.start_kill_share)
    actions = (["kill-at-start"] * start_kills + ["kill"] * (plan.kills - start_kills)
               + ["stop"] * plan.stops + ["term"] * plan.terms)
    rng.shuffle(actions)
    pausing: asyncio.Task[None] | None = None
    kills = 0
    for i, action in enumerate(actions):
        goal = (i + 1) * plan.jobs // (len(actions) + 1)
        deadline = time.monotonic() + 120
        while live.finished < goal and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(rng.uniform(0, 0.3))
        if action == "stop" and pausing is not None:
            await pausing
        candidates = fleet.alive()
        if action.startswith("kill"):  # kills alternate: --name workers, host:pid ones
            kind = [n for n in candidates if n.named == (kills % 2 == 0)]
            candidates, kills = kind or candidates, kills + 1
        busy = [n for n in candidates if live.running_by_worker.get(n.name, 0) > 0]
        victim = rng.choice(busy or candidates)
        print(f"[chaos] {i + 1}/{len(actions)} {action} {victim.name} (node {victim.index}, "
              f"{live.finished:,} finished)", file=sys.stderr, flush=True)
        if action == "stop":
            pausing = asyncio.create_task(
                fleet.pause(victim, rng.uniform(2, 3) * plan.lease_s))
        elif action == "term":
            await fleet.term(victim)
        else:
            await fleet.kill(victim, at_start=action == "kill-at-start")
    if pausing is not None:
        await pausing


async def _wait(condition: Any, timeout_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every_s)
    return True


async def campaign(plan: Plan, folder: Path, url: str) -> tuple[Verdict, float]:
    """Run one campaign in `folder` on the (empty) database at `url`."""
    started = time.monotonic()
    rng = random.Random(plan.seed)
    tag = uuid.uuid4().hex
    runs_dir = folder / "runs"
    runs_dir.mkdir(parents=True)
    (folder / "jobgate.toml").write_text(config_text(folder, url, plan))
    settings = load_settings(folder / "jobgate.toml", env={})
    queue = JobQueue(settings, store_for_url(settings.storage.url), positions=False)
    await queue.open()  # the schema exists before any worker opens the database
    fleet = Fleet(folder, plan, tag)
    samples_path = folder / "procs.txt"
    live = Live()
    tasks: list[asyncio.Task[None]] = []
    try:
        sampler = subprocess.Popen(
            [sys.executable, __file__, "--sample-procs", tag, str(plan.sample_s),
             str(samples_path)], stdin=subprocess.DEVNULL)
        fleet.sampler = sampler
        for slot in range(plan.workers):
            fleet.start(slot)
        deadline = time.monotonic() + 60
        while len(await queue.store.nodes()) < plan.workers:
            if any(p.poll() is not None for p in fleet.procs.values()) or \
                    time.monotonic() > deadline:
                raise RuntimeError(f"a worker did not start; see {folder}/worker-*.log")
            await asyncio.sleep(0.1)
        tasks.append(asyncio.create_task(_sample_db(queue.store, live)))
        producer = asyncio.create_task(_produce(queue, plan, live, rng, runs_dir))
        await _chaos(fleet, plan, live, rng)
        await producer
        if not await _wait(lambda: live.finished >= len(live.acknowledged), plan.drain_s):
            print("[chaos] drain deadline passed", file=sys.stderr)
        # Let the orphan deadline of the last worker that ended run out, then look.
        last = max((n.ended for n in fleet.lives if n.ended is not None), default=0.0)
        await asyncio.sleep(max(0.0, last + plan.orphan_deadline_s + 0.5 - time.time()))
    finally:
        for task in tasks:
            task.cancel()
        fleet.stop_all("final")
        time.sleep(4 * plan.sample_s)  # the sampler sees what their end left (no await:
        if fleet.sampler is not None:  # this also runs when the campaign is cancelled)
            fleet.sampler.terminate()
            fleet.sampler.wait(30)
        kill_leftovers(tag)
    events = []
    seq = 0
    while batch := await queue.store.events_after(seq, limit=5000):
        events += [(e.seq, e.type, e.ts, e.job_id, e.data) for e in batch]
        seq = batch[-1].seq
    jobs: dict[str, JobView] = {}
    ids = list(live.acknowledged)
    for i in range(0, len(ids), 200):
        for job in await asyncio.gather(*(queue.store.get(j) for j in ids[i:i + 200])):
            if job is not None:
                jobs[job.id] = JobView(job.state.value, job.worker, job.error)
    await queue.close()
    with (folder / "events.jsonl").open("w") as f:  # for a look afterwards
        f.writelines(json.dumps(e) + "\n" for e in events)
    (folder / "nodes.json").write_text(json.dumps([asdict(n) for n in fleet.lives], indent=1))
    (folder / "record.json").write_text(json.dumps({
        "plan": asdict(plan), "acknowledged": live.acknowledged,
        "submit_errors": live.submit_errors, "db_samples": live.db_samples,
        "jobs": {i: asdict(j) for i, j in jobs.items()}}))
    return recheck(folder), time.monotonic() - started


def recheck(folder: Path) -> Verdict:
    """The invariants checked again from what a campaign left in `folder`."""
    record = json.loads((folder / "record.json").read_text())
    plan = Plan(**{**record["plan"], "job_s": tuple(record["plan"]["job_s"]),
                   "long_s": tuple(record["plan"].get("long_s", Plan.long_s))})
    nodes = [NodeLife(**{**n, "stops": [tuple(s) for s in n["stops"]]})
             for n in json.loads((folder / "nodes.json").read_text())]
    events = [tuple(json.loads(line))
              for line in (folder / "events.jsonl").read_text().splitlines()]
    runs, malformed = parse_runs({p.name: p.read_text() for p in (folder / "runs").iterdir()})
    samples, tracks = read_samples(folder / "procs.txt", nodes)
    observed = Observed(
        record["acknowledged"], record["submit_errors"],
        {i: JobView(**j) for i, j in record["jobs"].items()}, events,
        runs, malformed, nodes, tracks, samples,
        [(t, n, d) for t, n, d in record["db_samples"]], plan.max_running,
        plan.per_user_running, plan.lease_s, plan.orphan_deadline_s)
    verdict = check(observed)
    (folder / "violations.txt").write_text("".join(f"{v}\n" for v in verdict.every_violation))
    return verdict


def run_backend(plan: Plan, folder: Path) -> tuple[Verdict, float]:
    """One campaign on `plan.backend`: SQLite in `folder`, or a throwaway PostgreSQL."""
    folder.mkdir(parents=True, exist_ok=True)
    if plan.backend == "sqlite":
        return asyncio.run(campaign(plan, folder, f"sqlite:///{folder / 'jobgate.db'}"))
    from pg import pg_server

    with pg_server() as server:
        return asyncio.run(campaign(plan, folder, server.new_database()))


def table(results: dict[str, tuple[Verdict, float]]) -> str:
    names = list(results)
    keys: list[str] = []
    for verdict, _ in results.values():
        keys += [k for k in verdict.figures if k not in keys]
    lines = ["| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        cells = [results[n][0].figures.get(key, "—") for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("| duration | " + " | ".join(f"{results[n][1]:.0f} s" for n in names) + " |")
    lines.append("| violations | " + " | ".join(
        ", ".join(f"{k} {c}" for k, c in results[n][0].counts.items()) or "none"
        for n in names) + " |")
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--sample-procs"]:
        sample_procs(argv[1], float(argv[2]), Path(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--stops", type=int, default=10)
    parser.add_argument("--terms", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--sample-ms", type=float, default=30)
    parser.add_argument("--folder", type=Path, default=None,
                        help="keep the campaign's files here (default: a temporary folder)")
    parser.add_argument("--recheck", type=Path, default=None, metavar="FOLDER",
                        help="check again what a campaign left in FOLDER/BACKEND, run nothing")
    args = parser.parse_args(argv)
    if args.recheck is not None:
        rechecked = {b.name: (recheck(b), 0.0) for b in sorted(args.recheck.iterdir())
                     if (b / "record.json").exists()}
        print(table(rechecked))
        return 1 if any(v.counts for v, _ in rechecked.values()) else 0
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    print(f"[chaos] seed {seed}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    import tempfile

    root = args.folder or Path(tempfile.mkdtemp(prefix="jobgate-chaos-"))
    results = {}
    for backend in (["sqlite", "postgresql"] if args.backend == "both" else [args.backend]):
        plan = Plan(backend, args.jobs, args.kills, args.stops, args.terms, seed,
                    workers=args.workers, sample_s=args.sample_ms / 1000)
        results[backend] = run_backend(plan, root / backend)
    print(f"seed {seed}, files in {root}\n")
    print(table(results))
    bad = False
    for backend, (verdict, _) in results.items():
        for line in verdict.violations:
            print(f"[{backend}] {line}")
        bad = bad or bool(verdict.counts)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
