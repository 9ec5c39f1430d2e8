"""Operator controls seen by two worker nodes on one database, on both backends: a pause
stops every node's claims while running jobs finish and a resume starts them again at
once (woken by the control event: the nodes' poll is far longer than the waits here), a
live `max_running` raised from 1 to 3 runs 3 jobs across the two nodes, a paused kind,
per-user overrides (config and live), and a node drained while it runs a job."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import TEST_KINDS, wait_state
from jobgate.config import Settings
from jobgate.controls import LimitsChange
from jobgate.model import Event, EventType, Job
from jobgate.queue import JobQueue
from jobgate.worker import Worker

# A claim loop's fallback poll far past every wait of these tests: whatever starts a job
# here within them was woken by an event.
SLOW_POLL = "[worker]\npoll_s = 60\n"

HOLD_KINDS = TEST_KINDS + """
[kinds.hold]
argv = ["sh", "-c", "while [ ! -e \\"$0\\" ]; do sleep 0.02; done", "{until}"]
[kinds.hold.args]
until = { type = "string" }
"""

ADMIN = "root"


class Cluster:
    """An API-side queue (no worker) and two worker nodes, each with its own store."""

    def __init__(self, api: JobQueue, nodes: dict[str, Worker]) -> None:
        self.api, self.nodes = api, nodes
        self.claims: dict[str, list[tuple[float, list[str]]]] = {n: [] for n in nodes}
        for name, node in nodes.items():
            self._record_claims(name, node)

    def _record_claims(self, name: str, node: Worker) -> None:
        """Every claim a node's loop makes, with when it came back and the ids it got."""
        real = node.queue.claim
        log = self.claims[name]

        async def claim(*args: Any, **kwargs: Any) -> list[Job]:
            jobs = await real(*args, **kwargs)
            log.append((time.monotonic(), [j.id for j in jobs]))
            return jobs

        node.queue.claim = claim  # type: ignore[method-assign]

    async def running(self) -> list[Job]:
        return await self.api.store.running_jobs()

    async def until_running(self, count: int, timeout_s: float = 30) -> list[Job]:
        deadline = time.monotonic() + timeout_s
        with self.api.bus.subscribe() as sub:
            while True:
                running = await self.running()
                if len(running) == count:
                    return running
                assert time.monotonic() < deadline, f"{len(running)} running, not {count}"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.get(), 0.5)

    async def claims_after(self, since: float, timeout_s: float = 30) -> None:
        """Wait until each node made a claim round after `since` (what it claimed in them is
        then in `claims`)."""
        deadline = time.monotonic() + timeout_s
        while not all(any(at > since for at, _ in log) for log in self.claims.values()):
            assert time.monotonic() < deadline, "a node made no claim round"
            await asyncio.sleep(0.02)

    def claimed_after(self, since: float) -> list[str]:
        return [i for log in self.claims.values() for at, ids in log if at > since for i in ids]


OpenCluster = Callable[..., Any]


@pytest.fixture
def cluster(make_settings: Callable[..., Settings], open_queue: Any) -> OpenCluster:
    async def open_(config: str = "", slots: int = 2) -> Cluster:
        settings = make_settings(SLOW_POLL + textwrap.dedent(config), kinds=HOLD_KINDS)
        api, _ = await open_queue(settings, worker=False)
        nodes = {}
        for name in ("node-a", "node-b"):
            _, worker = await open_queue(settings, name=name, slots=slots)
            assert worker is not None
            nodes[name] = worker
        return Cluster(api, nodes)

    return open_


async def started_within(queue: JobQueue, job_ids: set[str], act: Callable[[], Any],
                         timeout_s: float = 15) -> float:
    """Run `act`, then wait on events until every job of `job_ids` started; the seconds it
    took."""
    with queue.bus.subscribe(lambda e: e.type == EventType.STARTED and e.job_id in job_ids
                             ) as sub:
        began = time.monotonic()
        await act()
        seen: set[str] = set()
        while seen != job_ids:
            event: Event = await asyncio.wait_for(sub.get(), timeout_s)
            seen.add(event.job_id or "")
        return time.monotonic() - began


async def no_start_within(queue: JobQueue, timeout_s: float) -> None:
    """Nothing starts anywhere for `timeout_s` (waiting on the events, not sleeping)."""
    with queue.bus.subscribe(lambda e: e.type == EventType.STARTED) as sub, \
            contextlib.suppress(TimeoutError):
        event = await asyncio.wait_for(sub.get(), timeout_s)
        raise AssertionError(f"job {event.job_id} started on {event.data.get('worker')}")


async def test_a_pause_stops_both_nodes_claims_running_jobs_finish_and_resume_starts_them(
        cluster: OpenCluster, tmp_path: Path) -> None:
    c = await cluster("[limits]\nmax_running = 4\n", slots=1)
    go = tmp_path / "go"
    held = [(await c.api.submit(owner, "hold", {"until": str(go)}))[0]
            for owner in ("alice", "bob")]
    running = await c.until_running(2)
    assert {j.worker for j in running} == {"node-a", "node-b"}

    await c.api.live.pause(None, ADMIN)
    waiting = [(await c.api.submit("carol", "noop"))[0] for _ in range(2)]
    assert c.api.to_json(waiting[0])["message"] == "queue paused"
    paused_at = time.monotonic()
    go.touch()  # the running jobs go on to their end
    for job in held:
        assert (await wait_state(c.api, job.id, "completed", "failed")).state.value == \
            "completed"
    await c.claims_after(paused_at)  # each node came back for more with its slot free ...
    await no_start_within(c.api, 1.5)  # ... and got nothing
    assert c.claimed_after(paused_at) == []
    stats = (await c.api.store.stats()).counts
    assert (stats["queued"], stats["running"]) == (2, 0)

    took = await started_within(c.api, {j.id for j in waiting},
                                lambda: c.api.live.resume(None, ADMIN))
    print(f"resume: both queued jobs started on the nodes {took:.3f} s after it")
    assert took < 10  # the nodes poll every 60 s: the resume's event woke them
    for job in waiting:
        assert (await wait_state(c.api, job.id, "completed")).state.value == "completed"


async def test_a_live_max_running_raised_from_1_to_3_runs_3_jobs_across_the_two_nodes(
        cluster: OpenCluster, tmp_path: Path) -> None:
    c = await cluster("[limits]\nmax_running = 1\n", slots=2)
    go = tmp_path / "go"
    jobs = [(await c.api.submit(owner, "hold", {"until": str(go)}))[0]
            for owner in ("alice", "bob", "carol", "dave")]
    await c.until_running(1)
    changed = await c.api.live.set_limits(LimitsChange({"max_running": 3}), ADMIN)
    assert changed.limits == {"max_running": 3} and c.api.live.limits.max_running == 3
    running = await c.until_running(3)
    print(f"max_running 1 -> 3: running on {sorted(j.worker or '' for j in running)}")
    assert {j.worker for j in running} == {"node-a", "node-b"}  # 2 slots each
    await no_start_within(c.api, 1.0)  # and no fourth
    assert len(await c.running()) == 3
    # Both nodes follow it back down: with 3 running and max_running 1, the fourth waits
    # until all of those ended.
    await c.api.live.set_limits(LimitsChange({"max_running": None}), ADMIN)
    assert c.api.live.limits.max_running == 1
    go.touch()
    for job in jobs:
        await wait_state(c.api, job.id, "completed")
    events = await c.api.store.events_after(0, limit=10_000)
    assert [e.data["controls"]["limits"] for e in events
            if e.type == EventType.LIMITS_CHANGED] == [{"max_running": 3}, {}]


async def test_a_paused_kind_waits_while_other_kinds_run_until_it_is_resumed(
        cluster: OpenCluster, tmp_path: Path) -> None:
    c = await cluster("[limits]\nmax_running = 4\n")
    await c.api.live.pause("sleep", ADMIN)
    sleeper, _ = await c.api.submit("alice", "sleep", {"seconds": 0})
    quick, _ = await c.api.submit("alice", "noop")
    assert (await wait_state(c.api, quick.id, "completed")).state.value == "completed"
    assert c.api.to_json(sleeper)["message"] == "kind sleep paused"
    await no_start_within(c.api, 1.0)
    assert (await c.api.get(sleeper.id)).state.value == "queued"
    took = await started_within(c.api, {sleeper.id},
                                lambda: c.api.live.resume("sleep", ADMIN))
    print(f"kind sleep resumed: its job started {took:.3f} s after")
    assert took < 10


async def test_per_user_overrides_from_config_and_live_are_honoured_by_both_nodes(
        cluster: OpenCluster, tmp_path: Path) -> None:
    c = await cluster("""
        [limits]
        max_running = 6
        per_user_running = 1
        [limits.users.alice]
        per_user_running = 2
        priority = 5
        """, slots=3)
    go = tmp_path / "go"
    jobs = [(await c.api.submit(owner, "hold", {"until": str(go)}))[0]
            for owner in ("alice", "bob") for _ in range(3)]
    assert [j.priority for j in jobs] == [5, 5, 5, 0, 0, 0]  # alice is "premium"
    running = await c.until_running(3)
    assert sorted(j.owner for j in running) == ["alice", "alice", "bob"]

    await c.api.live.set_limits(LimitsChange(users={"bob": {"per_user_running": 3}}), ADMIN)
    running = await c.until_running(5)
    assert sorted(j.owner for j in running) == ["alice", "alice", "bob", "bob", "bob"]
    assert c.api.live.user("bob") is not None and c.api.live.user("alice") is not None
    go.touch()
    for job in jobs:
        await wait_state(c.api, job.id, "completed")


async def test_a_drained_node_finishes_its_job_and_claims_no_more_the_other_takes_the_rest(
        make_settings: Callable[..., Settings], open_queue: Any, tmp_path: Path) -> None:
    settings = make_settings(SLOW_POLL + "[limits]\nmax_running = 4\n", kinds=HOLD_KINDS)
    api, _ = await open_queue(settings, worker=False)
    go = tmp_path / "go"
    _, node_a = await open_queue(settings, name="node-a", slots=2)
    first, _ = await api.submit("alice", "hold", {"until": str(go)})
    assert (await wait_state(api, first.id, "running")).worker == "node-a"
    _, node_b = await open_queue(settings, name="node-b", slots=1)
    assert node_a is not None and node_b is not None

    with pytest.raises(Exception, match="no node 'nosuch'"):
        await api.live.drain("nosuch", ADMIN)
    await api.live.drain("node-a", ADMIN)
    rest = [(await api.submit("bob", "sleep", {"seconds": 0.1}))[0] for _ in range(4)]
    go.touch()
    assert (await wait_state(api, first.id, "completed")).worker == "node-a"
    done = [await wait_state(api, j.id, "completed") for j in rest]
    assert {j.worker for j in done} == {"node-b"}  # one at a time on its one slot
    assert node_a.running == [] and "node-a" in {n.name for n in await api.nodes()}

    await api.live.drain("node-a", ADMIN, drained=False)
    again, _ = await api.submit("bob", "hold", {"until": str(go)})
    again2, _ = await api.submit("carol", "hold", {"until": str(go)})
    finished = [await wait_state(api, j.id, "completed") for j in (again, again2)]
    assert all(j.worker in ("node-a", "node-b") for j in finished)
    events = [e.type for e in await api.store.events_after(0, limit=10_000)
              if e.type in (EventType.NODE_DRAINED, EventType.NODE_UNDRAINED)]
    assert events == ["node.drained", "node.undrained"]
