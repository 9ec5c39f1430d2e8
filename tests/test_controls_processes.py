"""Operator controls across real processes, on both backends: `jobgate serve --no-worker` as
the API node and two `jobgate worker` processes on its database, changed with the CLI. A
live `max_running` raised from 1 to 3 runs 3 jobs across both nodes; `jobgate pause` holds
the rest while running jobs finish; `jobgate resume` starts them, woken by the event (the
nodes' fallback poll is far longer than the waits here)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from conftest import Server, wait_job
from test_nodes import NODE_KINDS, Nodes

CONFIG = """
[limits]
max_running = 1
[worker]
poll_s = 60
"""


@pytest.fixture
def api_node(start_server: Callable[..., Server], db_url: str) -> Server:
    return start_server(CONFIG, NODE_KINDS, db_url=db_url, args=("--no-worker",))


@pytest.fixture
def workers(api_node: Server) -> Iterator[Nodes]:
    started = Nodes(api_node.folder)
    yield started
    started.stop_all()


def running(http: httpx.Client) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = http.get("/api/jobs", params={"state": "running"}).json()["jobs"]
    return jobs


def until(check: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_two_worker_processes_follow_a_live_limit_a_pause_and_a_resume(api_node, workers):
    go = api_node.folder / "go"
    workers.start("node-a", slots=2)
    workers.start("node-b", slots=2)
    with api_node.client("alice") as http:
        until(lambda: len(http.get("/api/queue").json()["nodes"]) == 2, "both nodes live")
        jobs = [http.post("/api/jobs", json={"kind": "hold", "args": {"until": str(go)}}
                          ).json() for _ in range(4)]
        until(lambda: len(running(http)) == 1, "one job running")

        out = api_node.cli("limits", "--max-running", "3")
        assert out.returncode == 0, out.stderr
        now = until(lambda: (r := running(http)) and len(r) == 3 and r, "3 jobs running")
        print("max_running 1 -> 3:", sorted(j["worker"] for j in now))
        assert {j["worker"] for j in now} == {"node-a", "node-b"}

        assert api_node.cli("pause").returncode == 0
        assert http.get("/api/queue").json()["paused"] is True
        go.touch()  # the running jobs go on to their end
        for job in now:
            assert wait_job(http, job["id"], "completed", "failed")["state"] == "completed"
        [last] = [j for j in jobs if j["id"] not in {r["id"] for r in now}]
        deadline = time.monotonic() + 1.5  # both nodes came back for more: nothing for them
        while time.monotonic() < deadline:
            shown = http.get(f"/api/jobs/{last['id']}").json()
            assert (shown["state"], shown["message"]) == ("queued", "queue paused")
            time.sleep(0.1)

        began = time.monotonic()
        assert api_node.cli("resume").returncode == 0
        assert wait_job(http, last["id"], "completed", "failed", timeout_s=30)[
            "state"] == "completed"
        print(f"resume: the held job completed {time.monotonic() - began:.2f} s after "
              "`jobgate resume` began (a CLI process start included)")
