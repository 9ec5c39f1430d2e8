"""What the recipes' tests do through a real server: submit, follow a job's events to its
end, read its outputs, look for the processes it left."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from conftest import Server

FINAL = ("job.completed", "job.failed", "job.cancelled")


def api(server: Server, method: str, path: str, user: str = "bob", **kw: Any
        ) -> httpx.Response:
    """One request as `user` (a client of its own, closed at once)."""
    with server.client(user) as http:
        response = http.request(method, path, **kw)
        response.read()
        return response


def submit(server: Server, kind: str, user: str = "bob", **args: Any) -> str:
    response = api(server, "POST", "/api/jobs", user, json={"kind": kind, "args": args})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def follow(server: Server, job_id: str, user: str = "bob",
           on_event: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """The job's events from its start to its final one, as its SSE stream gives them
    (the stream ends after the final event); `on_event` sees each as it comes."""
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{server.url}/api/jobs/{job_id}/events", timeout=120,
                      headers={"Authorization": f"Bearer {server.tokens[user]}"}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event.get("job_id") != job_id:
                continue
            events.append(event)
            if on_event is not None:
                on_event(event)
            if event["type"] in FINAL:  # a retry is `job.retrying`: the stream goes on
                break
    return events


def run_job(server: Server, kind: str, user: str = "bob", **args: Any
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Submit, follow to the end: (the job as the API shows it then, its events)."""
    job_id = submit(server, kind, user, **args)
    events = follow(server, job_id, user)
    job = api(server, "GET", f"/api/jobs/{job_id}", user).json()
    return job, events


def percents(events: list[dict[str, Any]]) -> list[float]:
    return [e["progress"] for e in events
            if e["type"] == "job.progress" and e.get("progress") is not None]


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in events if e["type"] == "job.progress" and e.get("message")]


def output_names(job: dict[str, Any]) -> list[str]:
    """The names of a job's outputs, whether listed as names or as objects."""
    return [o["name"] if isinstance(o, dict) else o for o in job.get("outputs") or []]


def download_output(server: Server, job_id: str, name: str, to: Path, user: str = "bob"
                    ) -> Path:
    response = api(server, "GET", f"/api/jobs/{job_id}/outputs/{name}", user)
    assert response.status_code == 200, response.text
    to.write_bytes(response.content)
    return to


def marked_processes(job_id: str) -> list[psutil.Process]:
    """The live processes carrying the job's mark (its id in their environment)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("JOBGATE_JOB_ID") == job_id and \
                    p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_no_marked(job_id: str, timeout_s: float = 20) -> list[psutil.Process]:
    """Wait until no process of the job is left; the ones still there after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := marked_processes(job_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def job_folder(server: Server, job_id: str) -> Path:
    return server.folder / "data" / "jobs" / job_id


def files_in(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

