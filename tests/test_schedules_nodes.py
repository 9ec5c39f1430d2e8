"""Schedules on real `jobgate worker` processes sharing one database (each backend): a
schedule due every second fires once per second across two nodes, one of them killed on
the way, with no double and no gap; firings missed while every node was down are skipped
or run once, as the schedule says; a firing is skipped while the job of its unique_key
still runs."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend
from jobgate.model import State
from jobgate.schedules import FIRED, SKIPPED, Firing
from jobgate.store import store_for_url
from jobgate.store.base import Store

KINDS = """
[kinds.tick]
argv = ["true"]

[kinds.hold]
argv = ["sh", "-c", "while [ ! -e \\"$0\\" ]; do sleep 0.05; done", "{until}"]
[kinds.hold.args]
until = { type = "string" }
"""


class Nodes:
    """`jobgate worker` processes on one config and database; all stopped after the test."""

    def __init__(self, folder: Path, db_url: str) -> None:
        self.folder = folder
        self.db_url = db_url
        self.procs: list[subprocess.Popen[bytes]] = []
        (folder / "input").mkdir(exist_ok=True)

    def configure(self, schedules: str) -> None:
        (self.folder / "jobgate.toml").write_text(
            f'[server]\ndata_dir = "{self.folder / "data"}"\n'
            f'input_dir = "{self.folder / "input"}"\n'
            f'[storage]\nurl = "{self.db_url}"\n' + KINDS + schedules)

    def start(self, name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "JOBGATE_CONFIG": str(self.folder / "jobgate.toml")}
        with (self.folder / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobgate", "worker", "--name", name], cwd=self.folder,
                env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

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

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in self.folder.glob("*.log"))


@pytest.fixture
def nodes(tmp_path: Path, backend: Backend) -> Iterator[Nodes]:
    started = Nodes(tmp_path, backend.new_url(tmp_path))
    yield started
    started.stop_all()


@pytest.fixture
async def db(nodes: Nodes) -> AsyncIterator[Store]:
    """The nodes' database, seen from the test, with the user the schedules fire for."""
    store = store_for_url(nodes.db_url)
    await store.open()
    await store.add_user("alice", None, admin=False)
    yield store
    await store.close()


async def until(check: Callable[[], Awaitable[Any]], what: str, nodes: Nodes,
                timeout_s: float = 60) -> Any:
    """Poll the async `check` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{nodes.logs()}"
        await asyncio.sleep(0.05)
    return value


async def firings(db: Store, name: str) -> list[Firing]:
    """The schedule's firings, oldest due time first."""
    return list(reversed(await db.schedule_firings(name, limit=10_000)))


def consecutive(found: list[Firing]) -> bool:
    return [f.due_at for f in found] == [found[0].due_at + i for i in range(len(found))]


async def test_two_nodes_fire_a_schedule_once_per_second_with_no_double_and_no_gap(
        nodes: Nodes, db: Store):
    nodes.configure('[schedules.every]\ncron = "* * * * * *"\nkind = "tick"\n'
                    'owner = "alice"\n')
    node_a, _ = nodes.start("node-a"), nodes.start("node-b")
    await until(lambda: _count(db, 5), "5 firings on two nodes", nodes)
    node_a.kill()  # mid-flight, whatever it was doing: its firing committed whole or not
    node_a.wait()
    await until(lambda: _count(db, 12), "7 more firings on the node left", nodes)
    nodes.stop_all()
    found = await firings(db, "every")
    assert len(found) >= 12
    assert consecutive(found), [f.due_at for f in found]
    assert all(f.outcome == FIRED and not f.catch_up for f in found), found
    # Each firing is one job, and each job one firing.
    jobs = (await db.list_jobs("alice", kind="tick", limit=1000)).jobs
    assert sorted(j.id for j in jobs) == sorted(f.job_id or "" for f in found)
    assert all(f.fired_at >= f.due_at for f in found)  # never before its time


async def _count(db: Store, n: int) -> bool:
    return len(await db.schedule_firings("every", limit=10_000)) >= n


@pytest.mark.parametrize("missed", ["skip", "run_once"])
async def test_firings_missed_while_every_node_was_down_are_skipped_or_run_once(
        nodes: Nodes, db: Store, missed: str):
    nodes.configure('[schedules.every]\ncron = "* * * * * *"\nkind = "tick"\n'
                    f'owner = "alice"\nmissed = "{missed}"\nmissed_after = "2s"\n')
    nodes.start("node-a")
    await until(lambda: _count(db, 3), "3 firings", nodes)
    nodes.stop_all()
    before = await firings(db, "every")
    down_at = time.time()
    # Every node stays down over several due times, well past missed_after.
    await until(lambda: _later_than(down_at + 6), "6 s with no node", nodes)
    restart = time.time()
    nodes.start("node-b")
    await until(lambda: _count(db, len(before) + 4), "firings after the restart", nodes)
    nodes.stop_all()

    found = await firings(db, "every")
    assert consecutive(found[:len(before)]) and found[:len(before)] == before
    # Nothing fired while no node ran; then one record stands for all the missed firings,
    # due at the last of them; then every due time again, each once.
    gap, *after = found[len(before):]
    assert consecutive([gap, *after]), [f.due_at for f in found]
    assert before[-1].due_at + 1 < gap.due_at < gap.fired_at - 2  # older than missed_after
    assert gap.due_at > restart - 10
    first_missed = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before[-1].due_at + 1))
    assert first_missed in gap.message
    assert all(f.outcome == FIRED and not f.catch_up for f in after)
    jobs = {j.id for j in (await db.list_jobs("alice", kind="tick", limit=1000)).jobs}
    if missed == "skip":
        assert (gap.outcome, gap.catch_up, gap.job_id) == (SKIPPED, False, None), gap
        assert gap.message.startswith("missed while no node ran")
        assert jobs == {f.job_id for f in before + after}
    else:
        assert (gap.outcome, gap.catch_up) == (FIRED, True), gap
        assert gap.message.startswith("catch-up run for the firings missed")
        assert jobs == {f.job_id for f in found}  # one job more: the catch-up run


async def _later_than(ts: float) -> bool:
    return time.time() > ts


async def test_a_firing_is_skipped_while_its_unique_key_job_still_runs(
        nodes: Nodes, db: Store, tmp_path: Path):
    release = tmp_path / "release"
    nodes.configure(f'[schedules.slow]\ncron = "* * * * * *"\nkind = "hold"\n'
                    f'owner = "alice"\nunique_key = "slow"\nargs = {{ until = "{release}" }}\n')
    nodes.start("node-a")

    async def running_and_skipped_twice() -> list[Firing] | None:
        found = await firings(db, "slow")
        if not found:
            return None
        job = await db.get(found[0].job_id or "")
        skipped = [f for f in found if f.outcome == SKIPPED]
        return found if job is not None and job.state is State.RUNNING and \
            len(skipped) >= 2 else None

    first, *rest = await until(running_and_skipped_twice, "a running job and 2 skips", nodes)
    assert first.outcome == FIRED
    assert all((f.outcome, f.job_id) == (SKIPPED, first.job_id) for f in rest), rest
    assert all(re.fullmatch(f"skipped: job {first.job_id} with unique_key 'slow' is still "
                            "(queued|running)", f.message) for f in rest), rest
    release.touch()  # the slow run ends: the next firing runs again

    async def fired_again() -> Firing | None:
        found = await firings(db, "slow")
        return next((f for f in found[len(rest) + 1:] if f.outcome == FIRED), None)

    again = await until(fired_again, "a firing after the slow run ended", nodes)
    nodes.stop_all()
    done = await db.get(first.job_id or "")
    assert done is not None and done.state is State.COMPLETED
    assert again.job_id != first.job_id
    jobs = (await db.list_jobs("alice", kind="hold", limit=1000)).jobs
    assert len(jobs) == len([f for f in await firings(db, "slow") if f.outcome == FIRED])
