"""Crash safety with a real `jobgate serve`: kill -9, restart, and nothing acknowledged is lost.

On both backends: on SQLite the server's file is what outlives it; on PostgreSQL the
database server does, and the restarted node recovers the jobs of the one that died.

The `crashy` kinds stand for a job that was running when the server died: the first
attempt leaves a flag file and waits on a grandchild (which carries a unique marker, so
an orphan can be found with psutil); any later attempt sees the flag and succeeds.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from conftest import TEST_KINDS, alive

T = TypeVar("T")

# A lease far longer than any test: recovery after a restart must not wait for it.
CONFIG = """
[limits]
max_running = 3
[worker]
lease_s = 3600
"""

_SLEEPER = "import time; time.sleep(300)"
_CRASHY = json.dumps([
    "sh", "-c",
    'if [ -e "$0" ]; then echo "second run"; exit 0; fi; touch "$0"; '
    f'{shlex.quote(sys.executable)} -c {shlex.quote(_SLEEPER)} "$1" & wait',
    "{flag}", "{marker}",
])

KINDS = TEST_KINDS + f"""
[kinds.crashy]
argv = {_CRASHY}
max_attempts = 3
[kinds.crashy.args]
flag = {{ type = "string" }}
marker = {{ type = "string" }}

[kinds.crashy_once]
argv = {_CRASHY}
max_attempts = 1
[kinds.crashy_once.args]
flag = {{ type = "string" }}
marker = {{ type = "string" }}

[kinds.nap]
argv = ["sleep", "{{seconds}}"]
max_attempts = 3
[kinds.nap.args]
seconds = {{ type = "number", default = 0.2 }}
"""


def marked(marker: str) -> list[psutil.Process]:
    """The live (not zombie) grandchildren of crashy jobs started with `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if marker in cmdline and _SLEEPER in cmdline and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_until(predicate: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique marker for this test's job processes; any left over are killed after."""
    mark = f"jgtest-orphan-{uuid.uuid4().hex}"
    yield mark
    for proc in marked(mark):
        proc.kill()


def jobs_by_id(http: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every job on the server (the client is an admin's)."""
    out: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = http.get("/api/jobs", params=params).json()
        out.update((job["id"], job) for job in page["jobs"])
        if not (cursor := page["next"]):
            return out


def wait_final(http: httpx.Client, ids: list[str], timeout_s: float = 60
               ) -> dict[str, dict[str, Any]]:
    final = ("completed", "failed", "cancelled")

    def all_final() -> dict[str, dict[str, Any]] | None:
        jobs = jobs_by_id(http)
        if all(i in jobs and jobs[i]["state"] in final for i in ids):
            return {i: jobs[i] for i in ids}
        return None

    return wait_until(all_final, timeout_s, f"{len(ids)} jobs to end")


def submit(http: httpx.Client, kind: str, args: dict[str, Any]) -> str:
    response = http.post("/api/jobs", json={"kind": kind, "args": args})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def crash_while_running(server, http: httpx.Client, job_ids: list[str], marker: str,
                        orphans: int) -> None:
    """Wait until the jobs run and their grandchildren exist, then kill -9 the server."""
    wait_until(lambda: all(http.get(f"/api/jobs/{i}").json()["state"] == "running"
                           for i in job_ids), 30, "the jobs to run")
    wait_until(lambda: len(marked(marker)) == orphans, 30, "the jobs' children")
    server.kill9()


def test_kill_9_then_restart_loses_no_acknowledged_job(start_server, tmp_path, marker):
    server = start_server(CONFIG, kinds=KINDS)
    users = ["alice", "bob", "carol"]
    clients = {user: server.client(user) for user in users}
    try:
        crashed = [submit(clients["bob"], "crashy",
                          {"flag": str(tmp_path / f"flag{i}"), "marker": marker})
                   for i in range(2)]
        naps = [submit(clients[users[i % 3]], "nap", {"seconds": 0.2}) for i in range(28)]
        crash_while_running(server, clients["alice"], crashed, marker, orphans=2)
    finally:
        for http in clients.values():
            http.close()

    server.start()
    # The dead server's pid is gone, so recovery is immediate: the lease is an hour long.
    with server.client("alice") as http:
        jobs = wait_final(http, crashed + naps, timeout_s=60)
    assert {job["state"] for job in jobs.values()} == {"completed"}
    # Running at the kill: queued again, and the lost run counts as an attempt.
    assert [jobs[i]["attempt"] for i in crashed] == [2, 2]
    assert all(jobs[i]["attempt"] in (1, 2) for i in naps)
    assert sorted({jobs[i]["owner"] for i in naps}) == users


def test_jobs_acknowledged_up_to_the_kill_are_all_there(start_server):
    server = start_server("[limits]\nmax_running = 1\n", kinds=KINDS)
    acknowledged: list[str] = []
    enough = threading.Event()

    def flood() -> None:
        with server.client("carol") as http:
            while True:
                try:
                    response = http.post("/api/jobs", json={"kind": "nap",
                                                            "args": {"seconds": 0}})
                except httpx.HTTPError:
                    return  # the server is gone: this request was never acknowledged
                if response.status_code != 201:
                    return
                acknowledged.append(response.json()["id"])
                if len(acknowledged) >= 40:
                    enough.set()

    submitter = threading.Thread(target=flood)
    submitter.start()
    try:
        assert enough.wait(60), "the server acknowledged too few jobs"
    finally:
        server.kill9()
        submitter.join(60)
    server.start()
    with server.client("alice") as http:
        jobs = wait_final(http, acknowledged)
    assert {job["state"] for job in jobs.values()} == {"completed"}


def test_a_job_running_at_the_kill_fails_with_worker_lost_when_no_attempts_remain(
        start_server, tmp_path, marker):
    server = start_server(CONFIG, kinds=KINDS)
    with server.client("bob") as http:
        job_id = submit(http, "crashy_once", {"flag": str(tmp_path / "flag"), "marker": marker})
        crash_while_running(server, http, [job_id], marker, orphans=1)
    server.start()
    with server.client("bob") as http:
        job = wait_final(http, [job_id])[job_id]
    assert job["state"] == "failed"
    assert job["attempt"] == 1
    assert "worker lost" in job["error"]
    wait_until(lambda: not marked(marker), 30, "the orphan to be reaped")


def test_orphans_of_a_job_requeued_at_restart_are_reaped(start_server, tmp_path, marker):
    server = start_server(CONFIG, kinds=KINDS)
    with server.client("bob") as http:
        job_id = submit(http, "crashy", {"flag": str(tmp_path / "flag"), "marker": marker})
        crash_while_running(server, http, [job_id], marker, orphans=1)
    # The job's own process died with the server; its child lives on, orphaned.
    [orphan] = marked(marker)
    server.start()
    with server.client("bob") as http:
        job = wait_final(http, [job_id])[job_id]
    assert job["state"] == "completed" and job["attempt"] == 2
    wait_until(lambda: not marked(marker), 10, "the orphan to be reaped")
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("successor", ["gpu-box", "other-box"])
def test_a_killed_named_worker_is_recovered_at_once_and_its_orphans_reaped(
        start_server, tmp_path, marker, successor):
    # A worker node with a name of its own (not `host:pid`), killed while it runs a job
    # whose child outlives it; then a worker starts on this machine: the same one
    # restarted under its name, or another. The lease is an hour: only the node registry
    # (its row names this host and a pid that is gone) can tell that the node died.
    server = start_server(CONFIG, kinds=KINDS, args=("--no-worker",))

    def worker(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "jobgate", "worker", "--name", name],
                                cwd=server.folder, env=server.env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    first = worker("gpu-box")
    second = None
    try:
        with server.client("bob") as http:
            job_id = submit(http, "crashy", {"flag": str(tmp_path / "flag"), "marker": marker})
            wait_until(lambda: http.get(f"/api/jobs/{job_id}").json()["state"] == "running",
                       30, "the job to run")
            assert http.get(f"/api/jobs/{job_id}").json()["worker"] == "gpu-box"
            wait_until(lambda: len(marked(marker)) == 1, 30, "the job's child")
            first.kill()
            first.wait()
            [orphan] = marked(marker)  # the job's own process died with its worker
            second = worker(successor)
            job = wait_final(http, [job_id], timeout_s=60)[job_id]
        assert (job["state"], job["attempt"]) == ("completed", 2)
        wait_until(lambda: not marked(marker), 10, "the orphan to be reaped")
        assert not alive(orphan)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
