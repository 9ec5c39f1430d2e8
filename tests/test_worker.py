"""The worker with real processes: limits, positions, retries, delays, timeouts, leases.

Limits are checked by sampling the live processes of the jobs while they run, not by
trusting the store's own counts; leases by stealing them through a second connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

import psutil
import pytest

from conftest import TEST_KINDS, alive, survivors, wait_for, wait_state
from jobgate.config import load_settings
from jobgate.model import Event, IllegalMove, Job, State, parse_iso
from jobgate.store import store_for_url
from jobgate.store.base import Outcome, QueueFull, Store

PY = sys.executable
MARK = "jgtest-"  # every `hold`/`solo` process carries MARK + its job id in its argv


def argv(*items: str) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


#: What this module's Python kinds saw, by tag (they run in this process).
SEEN: dict[str, str] = {}


async def stolen_once(ctx: Any, tag: str = "x") -> str:
    """The first attempt waits to be stopped; a later one returns at once."""
    if ctx.attempt > 1:
        return f"finished by attempt {ctx.attempt}"
    SEEN[tag] = "started"
    try:
        await asyncio.sleep(300)
    except asyncio.CancelledError:
        SEEN[tag] = "stopped"
        raise
    return "the first attempt must never finish"


_HOLD = argv(PY, "-c", "import sys, time; time.sleep(float(sys.argv[1]))", "{seconds}",
             MARK + "{job_id}")
_MODULE = __name__

KINDS = TEST_KINDS + f"""
[kinds.hold]
argv = {_HOLD}
[kinds.hold.args]
seconds = {{ type = "number", default = 0.3 }}

[kinds.solo]
argv = {_HOLD}
max_running = 1
[kinds.solo.args]
seconds = {{ type = "number", default = 0.3 }}

[kinds.quick]
argv = ["true"]

[kinds.once]
argv = {argv("sh", "-c", "echo 'no luck' >&2; exit 1")}

[kinds.picky]
argv = {argv("sh", "-c", 'echo "exiting with $0" >&2; exit $0', "{code}")}
max_attempts = 3
backoff = "0.1s"
retry_on_exit_codes = [75]
[kinds.picky.args]
code = {{ type = "integer" }}

[kinds.tree]
argv = {argv("sh", "-c", "sleep 300 & wait")}
max_attempts = 2

[kinds.stolen]
function = "{_MODULE}:stolen_once"
max_attempts = 2
in_process = true  # it reports to SEEN, in this process
"""


class Recorder:
    """Every event the queue publishes from now on, to look at afterwards."""

    def __init__(self, queue: Any) -> None:
        self._sub = queue.bus.subscribe(buffer=100_000)
        self._seen: list[Event] = []

    def events(self, job_id: str | None = None, *types: str) -> list[Event]:
        while not self._sub.queue.empty():
            self._seen.append(self._sub.queue.get_nowait())
        return [e for e in self._seen if (job_id is None or e.job_id == job_id)
                and (not types or e.type in types)]





async def running_tree(queue, job_id: str, token: int | None = None) -> list[psutil.Process]:
    """The processes of a running command job (its leader and the leader's children)."""
    deadline = time.monotonic() + 10
    while True:
        job = await queue.get(job_id)
        if job.state is State.RUNNING and job.pid is not None and \
                (token is None or job.lease_token == token):
            leader = psutil.Process(job.pid)
            if children := leader.children(recursive=True):
                return [leader, *children]
        assert time.monotonic() < deadline, f"job {job_id} has no running process tree"
        await asyncio.sleep(0.02)


async def steal(store: Store, worker: str, timeout_s: float = 10) -> list[Job]:
    """Another node's recovery declaring `worker` dead: the jobs it took (on PostgreSQL a
    row that a renewal holds that moment is skipped, so it looks again)."""
    deadline = time.monotonic() + timeout_s
    while not (lost := await store.recover([worker])):
        assert time.monotonic() < deadline, f"nothing of {worker} to recover"
        await asyncio.sleep(0.02)
    return lost


async def stop_everything(queue, job_id: str, procs: list[psutil.Process]) -> None:
    """Clean up after a test that may have left a run its worker no longer controls."""
    with contextlib.suppress(IllegalMove):
        await queue.cancel(job_id)  # the run the worker knows of
    for p in procs:  # and the one it may have lost track of
        if alive(p):
            with contextlib.suppress(psutil.NoSuchProcess):  # the cancel got there first
                p.kill()
    await wait_state(queue, job_id, "cancelled", "failed", "completed")


class Sampler:
    """Samples, every `interval_s`, which job ids have a live process (by their marker)."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.samples: list[frozenset[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            ids: set[str] = set()
            for child in me.children(recursive=True):
                try:
                    if child.status() == psutil.STATUS_ZOMBIE:
                        continue
                    ids.update(a[len(MARK):] for a in child.cmdline() if a.startswith(MARK))
                except psutil.Error:
                    continue
            self.samples.append(frozenset(ids))
            self._stop.wait(self.interval_s)


async def settle(queue, ids: list[str], timeout_s: float = 60) -> dict[str, Any]:
    return {i: await wait_state(queue, i, "completed", "failed", "cancelled",
                                timeout_s=timeout_s) for i in ids}


# --- limits ------------------------------------------------------------------------------

async def test_limits_hold_for_live_processes_while_20_jobs_from_3_users_run(
        make_settings, open_queue):
    settings = make_settings("[limits]\nmax_running = 3\nper_user_running = 2\n", kinds=KINDS)
    # Two worker nodes on one database, each with more slots than the global limit: the
    # limits must hold across nodes, in the store, not by a node's slot count.
    queue, _ = await open_queue(settings, name="node-a", slots=5)
    await open_queue(settings, name="node-b", slots=5)
    owners = ["alice"] * 12 + ["bob"] * 5 + ["carol"] * 3  # alice alone at the end
    jobs: dict[str, tuple[str, str]] = {}
    with Sampler() as sampler:
        for i, owner in enumerate(owners):
            kind = "solo" if i % 4 == 0 else "hold"
            # Long enough that three overlap even on a loaded machine (0.3 s did not).
            job, _ = await queue.submit(owner, kind, {"seconds": 0.8})
            jobs[job.id] = (owner, kind)
        done = await settle(queue, list(jobs))
    assert [j.state.value for j in done.values()] == ["completed"] * 20
    assert all(j.attempt == 1 for j in done.values())

    seen = [s for s in sampler.samples if s]
    assert len(seen) >= 20, "the sampler saw too few running processes to judge"
    assert set().union(*seen) == set(jobs)  # every job's process was seen running
    most = Counter[str]()
    for sample in seen:
        by_owner = Counter(jobs[i][0] for i in sample)
        by_kind = Counter(jobs[i][1] for i in sample)
        assert len(sample) <= 3, f"global limit exceeded: {sample}"
        assert max(by_owner.values()) <= 2, f"per-user limit exceeded: {by_owner}"
        assert by_kind["solo"] <= 1, f"per-kind limit exceeded: {by_kind}"
        most["total"] = max(most["total"], len(sample))
        most["user"] = max(most["user"], max(by_owner.values()))
    assert most["total"] == 3  # the limits were reached, so the checks above meant something
    assert most["user"] == 2


# --- positions ---------------------------------------------------------------------------

async def test_positions_are_exact_and_are_the_order_jobs_start(make_settings, open_queue):
    queue, _ = await open_queue(make_settings("[limits]\nmax_running = 1\n", kinds=KINDS))
    events = Recorder(queue)
    blocker, _ = await queue.submit("carol", "sleep", {"seconds": 300})
    await wait_state(queue, blocker.id, "running")
    submitted = []
    for owner in ["alice"] * 4 + ["bob"] * 2 + ["carol"]:
        submitted.append((await queue.submit(owner, "quick"))[0].id)
    urgent, _ = await queue.submit("bob", "quick", priority=5)
    submitted.append(urgent.id)
    # A queued job leaving makes room: the rest close up, in the same order.
    dropped = submitted.pop(1)
    await queue.cancel(dropped)

    jobs = {i: await queue.get(i) for i in submitted}
    positions = {i: queue.position(job) for i, job in jobs.items()}
    assert sorted(positions.values()) == list(range(1, len(submitted) + 1))
    assert all(queue.to_json(jobs[i])["position"] == p for i, p in positions.items())
    assert queue.position(await queue.get(blocker.id)) is None
    assert queue.position(await queue.get(dropped)) is None
    by_position = sorted(submitted, key=positions.__getitem__)
    owners = [jobs[i].owner for i in by_position]
    # Priority first; then one job per user per turn, first in, first out within a user.
    # carol's blocker is running, so her queued job waits for the next turn; alice's second
    # job (cancelled) leaves a gap in its turn rather than reshuffling everyone.
    assert by_position[0] == urgent.id
    assert sorted(owners[1:3]) == ["alice", "bob"]
    assert sorted(owners[3:5]) == ["bob", "carol"]
    assert owners[5:] == ["alice", "alice"]
    alice = [i for i in submitted if jobs[i].owner == "alice"]
    assert [i for i in by_position if i in alice] == alice

    await queue.cancel(blocker.id)
    await settle(queue, submitted)
    started = [e.job_id for e in events.events(None, "job.started") if e.job_id != blocker.id]
    assert started == by_position


async def test_a_delayed_job_does_not_start_early_and_does_start(make_settings, open_queue):
    queue, _ = await open_queue(make_settings("[limits]\nmax_running = 1\n", kinds=KINDS))
    run_at = time.time() + 1.5
    delayed, _ = await queue.submit("bob", "quick", run_at=run_at)
    assert delayed.state is State.QUEUED
    assert queue.position(delayed) is None  # not in the running order until it is due
    now, _ = await queue.submit("bob", "quick")  # a delayed job holds nobody back
    first = await wait_state(queue, now.id, "completed", "failed")
    assert first.state.value == "completed"
    seen = await queue.get(delayed.id)
    if time.time() < run_at:  # a loaded machine may take longer than the delay to get here
        assert seen is not None and seen.state is State.QUEUED
    done = await wait_state(queue, delayed.id, "completed", "failed")
    assert done.state.value == "completed"
    assert done.started_at >= run_at
    assert done.attempt == 1



async def test_a_delayed_job_is_waited_for_without_polling_the_database(make_settings,
                                                                        open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS))
    store = queue.store
    looks: list[float] = []
    claim = store.finish_and_claim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        looks.append(time.time())
        return await claim(*args, **kwargs)

    store.finish_and_claim = counted
    run_at = time.time() + 1.5
    delayed, _ = await queue.submit("bob", "quick", run_at=run_at)
    done = await wait_state(queue, delayed.id, "completed", "failed")
    assert done.state.value == "completed" and done.started_at >= run_at
    # The worker sleeps until the job is due: a look when it was queued, one when it is
    # due (a poller would have made hundreds in 1.5 s).
    before_start = [t for t in looks if t < done.started_at]
    assert 1 <= len(before_start) <= 4, before_start


# --- retries -----------------------------------------------------------------------------

async def test_failing_job_is_attempted_three_times_with_backoff(make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS))
    events = Recorder(queue)
    job, _ = await queue.submit("bob", "fail", {"label": "L1"})
    done = await wait_state(queue, job.id, "failed", "completed")
    assert done.state.value == "failed"
    assert done.attempt == 3 and done.max_attempts == 3
    assert "exit code 3" in done.error and "boom L1" in done.error
    assert "doing" not in done.error  # stdout is in the log, not in the error

    started = events.events(job.id, "job.started")
    retrying = events.events(job.id, "job.retrying")
    assert [e.data["attempt"] for e in started] == [1, 2, 3]
    assert [e.data["attempt"] for e in retrying] == [1, 2]
    assert len(events.events(job.id, "job.failed")) == 1
    # Backoff 0.2 s doubling, jitter never below half: at least 0.1 s, then 0.2 s.
    for floor, before, retry, after in zip((0.1, 0.2), started, retrying, started[1:],
                                           strict=False):
        assert after.ts - before.ts >= floor
        assert parse_iso(retry.data["run_at"]) - before.ts >= floor
        assert after.ts >= parse_iso(retry.data["run_at"]) - 0.001  # ms in ISO times


async def test_retry_on_exit_codes_retries_only_those_codes(make_settings, open_queue):
    queue, _ = await open_queue(make_settings("[limits]\nmax_running = 2\n", kinds=KINDS))
    events = Recorder(queue)
    temporary, _ = await queue.submit("bob", "picky", {"code": 75})
    permanent, _ = await queue.submit("bob", "picky", {"code": 3})
    done = await settle(queue, [temporary.id, permanent.id])
    assert done[temporary.id].state.value == "failed"
    assert done[temporary.id].attempt == 3
    assert len(events.events(temporary.id, "job.retrying")) == 2
    assert "exiting with 75" in done[temporary.id].error
    assert done[permanent.id].state.value == "failed"
    assert done[permanent.id].attempt == 1
    assert events.events(permanent.id, "job.retrying") == []
    assert "exiting with 3" in done[permanent.id].error


async def test_manual_retry_of_a_failed_job_runs_it_again(make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS))
    events = Recorder(queue)
    job, _ = await queue.submit("bob", "once")
    failed = await wait_state(queue, job.id, "failed", "completed")
    assert failed.state.value == "failed" and failed.attempt == 1
    again = await queue.retry(job.id)
    assert again.state is State.QUEUED
    assert again.attempt == 0 and again.error is None and again.finished_at is None
    done = await wait_state(queue, job.id, "failed", "completed")
    assert done.state.value == "failed"
    assert done.attempt == 1  # attempts are counted afresh
    assert len(events.events(job.id, "job.started")) == 2


async def test_manual_retry_of_a_cancelled_job_runs_it(make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS))
    job, _ = await queue.submit("bob", "quick", run_at=time.time() + 3600)
    cancelled = await queue.cancel(job.id)
    assert cancelled.state is State.CANCELLED
    again = await queue.retry(job.id)
    assert again.state is State.QUEUED
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed" and done.attempt == 1


async def test_a_completed_job_cannot_be_retried(make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS))
    job, _ = await queue.submit("bob", "quick")
    await wait_state(queue, job.id, "completed")
    with pytest.raises(IllegalMove):
        await queue.retry(job.id)
    assert (await queue.get(job.id)).state is State.COMPLETED


async def test_a_running_job_cannot_be_retried(make_settings, open_queue):
    queue, _ = await open_queue(make_settings(kinds=KINDS))
    job, _ = await queue.submit("bob", "tree")
    first = await wait_state(queue, job.id, "running")
    procs = await running_tree(queue, job.id, first.lease_token)
    try:
        with pytest.raises(IllegalMove):
            await queue.retry(job.id)
        current = await queue.get(job.id)
        assert current.state is State.RUNNING
        assert current.lease_token == first.lease_token
    finally:
        await stop_everything(queue, job.id, procs)


async def test_an_automatic_retry_waits_behind_its_owners_peers(make_settings, open_queue):
    queue, _ = await open_queue(make_settings("[limits]\nmax_running = 1\n", kinds=KINDS))
    events = Recorder(queue)
    failing, _ = await queue.submit("alice", "fail")
    peers = [(await queue.submit("alice", "sleep", {"seconds": 0.3}))[0].id for _ in range(2)]
    done = await settle(queue, [failing.id, *peers])
    assert done[failing.id].state.value == "failed" and done[failing.id].attempt == 3
    started = [e.job_id for e in events.events(None, "job.started")]
    assert started == [failing.id, *peers, failing.id, failing.id]


async def test_a_manual_retry_is_queued_behind_its_owners_peers(make_settings, open_queue):
    queue, _ = await open_queue(make_settings("[limits]\nmax_running = 1\n", kinds=KINDS))
    events = Recorder(queue)
    failed, _ = await queue.submit("alice", "once")
    await wait_state(queue, failed.id, "failed")
    blocker, _ = await queue.submit("carol", "sleep", {"seconds": 300})
    await wait_state(queue, blocker.id, "running")
    peers = [(await queue.submit("alice", "quick"))[0].id for _ in range(2)]
    other, _ = await queue.submit("bob", "quick")
    retried = await queue.retry(failed.id)
    assert queue.position(retried) == 4  # behind alice's two peers, and bob's turn too
    await queue.cancel(blocker.id)
    await settle(queue, [*peers, other.id, failed.id])
    started = [e.job_id for e in events.events(None, "job.started")]
    assert started[-1] == failed.id
    assert set(started[-4:-1]) == {*peers, other.id}


# --- limits on the queue -----------------------------------------------------------------

async def test_start_timeout_fails_a_job_that_could_not_start(make_settings, open_queue):
    settings = make_settings('[limits]\nmax_running = 1\nstart_timeout = "1s"\n', kinds=KINDS)
    queue, _ = await open_queue(settings)
    blocker, _ = await queue.submit("alice", "sleep", {"seconds": 300})
    await wait_state(queue, blocker.id, "running")
    waiting, _ = await queue.submit("bob", "quick")
    done = await wait_state(queue, waiting.id, "failed", "completed", "running")
    assert done.state.value == "failed"
    assert "start_timeout" in done.error
    assert done.started_at is None and done.attempt == 0
    assert done.finished_at - done.created_at >= 1.0
    assert (await queue.get(blocker.id)).state is State.RUNNING  # a running job is not touched
    await queue.cancel(blocker.id)
    await wait_state(queue, blocker.id, "cancelled")


async def test_max_queued_and_per_user_queued_refuse_with_queue_full(make_settings, open_queue):
    settings = make_settings("[limits]\nmax_queued = 3\nper_user_queued = 2\n", kinds=KINDS)
    queue, _ = await open_queue(settings, worker=False)
    first, _ = await queue.submit("alice", "quick")
    await queue.submit("alice", "quick")
    with pytest.raises(QueueFull, match=r"queue full.*2/2"):
        await queue.submit("alice", "quick")
    await queue.submit("bob", "quick")  # alice's quota is hers alone
    with pytest.raises(QueueFull, match="queue full: 3/3"):
        await queue.submit("carol", "quick")
    await queue.cancel(first.id)  # room again
    await queue.submit("carol", "quick")
    assert (await queue.stats()).counts["queued"] == 3


# --- leases ------------------------------------------------------------------------------

async def test_a_job_longer_than_its_lease_runs_once(make_settings, open_queue):
    queue, _ = await open_queue(make_settings("[worker]\nlease_s = 1\n", kinds=KINDS))
    events = Recorder(queue)
    job, _ = await queue.submit("bob", "sleep", {"seconds": 4})
    done = await wait_state(queue, job.id, "completed", "failed", timeout_s=60)
    assert done.state.value == "completed"
    assert done.attempt == 1
    assert done.finished_at - done.started_at >= 4
    assert len(events.events(job.id, "job.started")) == 1
    assert events.events(job.id, "job.retrying") == []


async def test_a_stale_lease_token_can_neither_finish_nor_renew(make_settings, open_queue):
    settings = make_settings(kinds=KINDS)
    queue, _ = await open_queue(settings, worker=False)
    store, kinds = queue.store, sorted(settings.kinds)
    job, _ = await queue.submit("bob", "tree")  # max_attempts = 2; no worker runs it here
    [first] = await store.claim("node-x", 1, queue.limits, 30, kinds)
    [lost] = await store.recover(["node-x"])  # node-x is declared dead
    assert lost.id == job.id
    [second] = await store.claim("node-y", 1, queue.limits, 30, kinds)
    assert second.id == job.id and second.attempt == 2
    assert second.lease_token > first.lease_token
    assert await store.renew("node-x", {job.id: first.lease_token}, 30) == {job.id}
    ended = Outcome(State.COMPLETED, result="from node-x")
    assert await store.finish(job.id, first.lease_token, ended) is None
    current = await queue.get(job.id)
    assert current.state is State.RUNNING and current.worker == "node-y"
    assert await store.renew("node-y", {job.id: second.lease_token}, 30) == set()
    done = await store.finish(job.id, second.lease_token, Outcome(State.COMPLETED, result=2))
    assert done is State.COMPLETED
    assert (await queue.get(job.id)).result == 2


async def test_a_worker_whose_lease_was_stolen_stops_and_never_finishes_the_job(
        make_settings, open_queue):
    settings = make_settings("[worker]\nlease_s = 1\n", kinds=KINDS)
    queue, worker = await open_queue(settings, name="node-a", slots=1)
    other, _ = await open_queue(settings, worker=False)  # another node's connection
    events = Recorder(queue)
    tag = uuid.uuid4().hex
    job, _ = await queue.submit("bob", "stolen", {"tag": tag})
    await wait_state(queue, job.id, "running")
    await wait_for(lambda: SEEN.get(tag) == "started", what="the first attempt to start")
    [lost] = await steal(other.store, worker.name)  # as if node-a's lease had run out
    assert lost.id == job.id
    await wait_for(lambda: SEEN.get(tag) == "stopped", what="node-a to stop its stale run")
    done = await wait_state(queue, job.id, "completed", "failed", "cancelled")
    assert done.state.value == "completed"
    assert done.result == "finished by attempt 2"
    assert done.attempt == 2
    assert len(events.events(job.id, "job.started")) == 2
    assert events.events(job.id, "job.cancelled", "job.failed") == []


async def test_a_stolen_lease_stops_the_first_workers_process(make_settings, open_queue):
    settings = make_settings("[worker]\nlease_s = 1\ncancel_grace_s = 0.5\n", kinds=KINDS)
    queue, worker = await open_queue(settings, name="node-a", slots=1)
    other, _ = await open_queue(settings, worker=False)
    events = Recorder(queue)
    job, _ = await queue.submit("bob", "tree")
    first = await wait_state(queue, job.id, "running")
    stale = await running_tree(queue, job.id, first.lease_token)
    try:
        [lost] = await steal(other.store, worker.name)
        assert lost.id == job.id
        assert await survivors(stale, timeout_s=15) == []
        deadline = time.monotonic() + 15
        while (again := await queue.get(job.id)).state is not State.RUNNING or \
                again.attempt != 2:
            assert time.monotonic() < deadline, again
            await asyncio.sleep(0.02)
        assert again.lease_token > first.lease_token
        assert events.events(job.id, "job.cancelled", "job.failed", "job.completed") == []
    finally:
        await stop_everything(queue, job.id, stale)


async def test_a_stale_run_is_stopped_even_when_the_same_worker_claims_the_job_again(
        make_settings, open_queue):
    settings = make_settings("[worker]\nlease_s = 6\ncancel_grace_s = 0.5\n", kinds=KINDS)
    queue, worker = await open_queue(settings, name="node-a", slots=2)
    other, _ = await open_queue(settings, worker=False)
    job, _ = await queue.submit("bob", "tree")
    first = await wait_state(queue, job.id, "running")
    stale = await running_tree(queue, job.id, first.lease_token)
    try:
        # Steal right after a renewal, so node-a has a free slot and time to claim again
        # before its next renewal tells it the first lease is gone.
        before = first.lease_expires_at
        deadline = time.monotonic() + 10
        while (await queue.get(job.id)).lease_expires_at == before:
            assert time.monotonic() < deadline, "the lease was never renewed"
            await asyncio.sleep(0.01)
        [lost] = await steal(other.store, worker.name)
        assert lost.id == job.id
        again = await wait_state(queue, job.id, "running", timeout_s=10)
        assert again.attempt == 2
        # Within a renewal period and the grace, the first attempt's processes are gone.
        assert await survivors(stale, timeout_s=5) == []
    finally:
        await stop_everything(queue, job.id, stale)


def test_lease_renewal_is_not_starved_by_a_job_that_blocks_the_event_loop(
        start_server, tmp_path, monkeypatch):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "jgtest_busy.py").write_text(
        "import time\n\n\n"
        "async def hog(ctx, seconds: float = 4.0) -> str:\n"
        "    time.sleep(seconds)  # blocks the worker's event loop on purpose\n"
        "    return 'done'\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(modules))
    monkeypatch.syspath_prepend(str(modules))
    server = start_server("[worker]\nlease_s = 1\n",
                          kinds='[kinds.hog]\nfunction = "jgtest_busy:hog"\nmax_attempts = 2\n'
                          'in_process = true\n')  # its point: it blocks the worker's loop
    with server.client("bob") as http:
        response = http.post("/api/jobs", json={"kind": "hog", "args": {"seconds": 4}})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]

    async def watch() -> Any:
        # Another node's recovery, run all along: it takes any job whose lease ran out.
        settings = load_settings(server.config, env={})
        store = store_for_url(settings.storage.url)
        await store.open()
        try:
            deadline = time.monotonic() + 60
            while True:
                recovered = await store.recover()
                assert recovered == [], "the lease of a running job ran out"
                # The node's heartbeat goes on too: it stays live (two lease periods).
                assert len(await store.nodes(alive_within_s=2.0)) == 1, "heartbeat starved"
                job = await store.get(job_id)
                assert job is not None
                if job.state not in (State.QUEUED, State.RUNNING):
                    return job
                assert time.monotonic() < deadline, job
                await asyncio.sleep(0.1)
        finally:
            await store.close()

    done = asyncio.run(watch())
    assert done.state is State.COMPLETED, done.error
    assert done.attempt == 1
    assert done.result == "done"
