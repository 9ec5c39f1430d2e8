"""The shortest path through jobgate: submit over HTTP, a real process runs, it completes."""

from __future__ import annotations

import time


def test_a_submitted_command_job_runs_to_completion(start_server):
    server = start_server("[limits]\nmax_running = 2\n")
    with server.client("bob") as http:
        response = http.post("/api/jobs", json={"kind": "steps", "args": {"count": 3}})
        assert response.status_code == 201, response.text
        job = response.json()
        assert job["state"] == "queued" and job["owner"] == "bob"
        deadline = time.monotonic() + 30
        while job["state"] not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
            job = http.get(f"/api/jobs/{job['id']}").json()
        assert job["state"] == "completed", job
        assert job["progress"] == 100.0
        assert job["attempt"] == 1
        logs = http.get(f"/api/jobs/{job['id']}/logs").json()["lines"]
        assert [line["line"] for line in logs] == [
            "progress=33 step 1", "progress=66 step 2", "progress=100 step 3"]
