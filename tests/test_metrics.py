"""`GET /metrics` of a real `jobgate serve`, on each backend: the Prometheus text format
(parsed with prometheus_client's own parser), its numbers checked against what the API
says of the same jobs, and the optional `[metrics] token`."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server, free_port, wait_job
from jobgate.config import ConfigError, Settings, load_settings

TOKEN = "scrape-me-0123456789abcdef"
KINDS = ("noop", "sleep", "steps", "fail")


class Scrape:
    """One scrape's samples by (name, labels); `families` by name with their type."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self.samples, f"sample {key} twice"
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def labelled(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for (n, labels) in self.samples if n == name]


def scrape(server: Server, token: str | None = None) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return Scrape(response.text)


def submit(http: httpx.Client, kind: str, args: dict[str, Any] | None = None,
           **fields: Any) -> str:
    response = http.post("/api/jobs", json={"kind": kind, "args": args or {}, **fields})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def later(hours: float = 1) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)).isoformat()


def jobs_of(http: httpx.Client, kind: str, state: str) -> int:
    page = http.get("/api/jobs", params={"kind": kind, "state": state, "limit": 200}).json()
    assert page["next"] is None
    return len(page["jobs"])


def test_a_scrape_counts_what_the_api_shows(start_server: Callable[..., Server]) -> None:
    # Every job's end makes a webhook delivery; nothing listens on its port, so each one
    # stays pending (its next attempt minutes away).
    server = start_server(
        "[limits]\nmax_running = 3\nmemory_budget_mb = 4096\n"
        f'[webhooks]\nurl = "http://127.0.0.1:{free_port()}/hook"\n')
    with server.client("bob") as bob, server.client("alice") as alice:
        done = [submit(bob, "noop") for _ in range(2)]
        failed = submit(bob, "fail", {"code": 3})  # 3 attempts, 0.2 s apart
        held = submit(bob, "sleep", {"seconds": 0}, run_at=later())
        dropped = submit(bob, "sleep", {"seconds": 0}, run_at=later())
        assert bob.post(f"/api/jobs/{dropped}/cancel").status_code == 200
        running = submit(bob, "sleep", {"seconds": 120})
        for job_id in done:
            wait_job(bob, job_id, "completed")
        wait_job(bob, failed, "failed")
        wait_job(bob, running, "running")
        assert bob.get(f"/api/jobs/{held}").json()["state"] == "queued"

        metrics = scrape(server)
        stats = alice.get("/api/queue").json()
        assert metrics.types["jobgate_jobs"] == "gauge"
        assert metrics.types["jobgate_jobs_finished"] == "counter"
        assert metrics.types["jobgate_job_run_seconds"] == "histogram"
        for state in ("queued", "running", "completed", "failed", "cancelled"):
            by_kind = {k: metrics.value("jobgate_jobs", state=state, kind=k) for k in KINDS}
            assert sum(by_kind.values()) == stats[state], state
            for kind in KINDS:
                assert by_kind[kind] == jobs_of(alice, kind, state), (state, kind)
        assert metrics.value("jobgate_jobs", state="completed", kind="noop") == 2
        assert metrics.value("jobgate_jobs", state="failed", kind="fail") == 1
        assert metrics.value("jobgate_jobs", state="queued", kind="sleep") == 1
        assert metrics.value("jobgate_jobs", state="running", kind="sleep") == 1
        assert metrics.value("jobgate_jobs", state="cancelled", kind="sleep") == 1
        for kind in KINDS:
            for state in ("completed", "failed", "cancelled"):
                assert metrics.value("jobgate_jobs_finished_total", kind=kind, state=state) \
                    == jobs_of(alice, kind, state)
        assert sum(metrics.value("jobgate_jobs_submitted_total", kind=k) for k in KINDS) == 6
        assert metrics.value("jobgate_jobs_submitted_total", kind="sleep") == 3
        assert metrics.value("jobgate_jobs_waiting") == stats["waiting"] == 0

        assert metrics.value("jobgate_running") == stats["running"] == 1
        assert metrics.value("jobgate_max_running") == stats["max_running"] == 3
        assert metrics.value("jobgate_memory_reserved_mb") == stats["memory_reserved_mb"]
        assert metrics.value("jobgate_memory_budget_mb") == stats["memory_budget_mb"] == 4096
        assert metrics.value("jobgate_nodes_live") == len(stats["nodes"]) == 1
        assert metrics.labelled("jobgate_stream_clients") == [{"node": stats["nodes"][0]["name"]}]

        # One webhook per final state, written with it: the API lists the same ones.
        ends = [*done, failed, dropped]
        listed = [d for job_id in ends for d in bob.get(f"/api/jobs/{job_id}/deliveries")
                  .json()["deliveries"]]
        assert len(listed) == len(ends)
        for channel in ("webhook", "notify"):
            for state in ("pending", "delivered", "failed"):
                assert metrics.value("jobgate_deliveries", channel=channel, state=state) == \
                    sum(d["channel"] == channel and d["state"] == state for d in listed)

        # Histograms over the finished jobs that ran: the completed noops and the failed
        # job; the cancelled one never started.
        jobs = {job_id: bob.get(f"/api/jobs/{job_id}").json() for job_id in [*done, failed]}
        for kind, ids in (("noop", done), ("fail", [failed])):
            for name in ("jobgate_job_run_seconds", "jobgate_job_queue_wait_seconds"):
                assert metrics.value(f"{name}_count", kind=kind) == len(ids)
                assert metrics.value(f"{name}_bucket", kind=kind, le="+Inf") == len(ids)
                buckets = sorted((float(b["le"]), metrics.value(f"{name}_bucket", **b))
                                 for b in metrics.labelled(f"{name}_bucket") if b["kind"] == kind)
                counts = [n for _, n in buckets]
                assert counts == sorted(counts)  # cumulative
            run_s = sum(_seconds(jobs[i]["finished_at"]) - _seconds(jobs[i]["started_at"])
                        for i in ids)
            assert abs(metrics.value("jobgate_job_run_seconds_sum", kind=kind) - run_s) < 0.01
        for kind in ("sleep", "steps"):
            assert metrics.value("jobgate_job_run_seconds_count", kind=kind) == 0

        # Read at scrape time: the next scrape sees the running job's end.
        assert bob.post(f"/api/jobs/{running}/cancel").status_code == 200
        wait_job(bob, running, "cancelled")
        after = scrape(server)
        assert after.value("jobgate_running") == 0
        assert after.value("jobgate_jobs_finished_total", kind="sleep", state="cancelled") == 2
        assert after.value("jobgate_job_run_seconds_count", kind="sleep") == 1


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def test_a_second_node_counts_the_whole_database(start_server: Callable[..., Server]
                                                 ) -> None:
    """An API-only server on the same database reports the jobs another node ran."""
    first = start_server()
    with first.client("bob") as bob:
        job_id = submit(bob, "noop")
        wait_job(bob, job_id, "completed")
    url = load_settings(first.config, env={}).storage.url
    second = start_server(db_url=url, args=("--no-worker",))
    metrics = scrape(second)
    assert metrics.value("jobgate_jobs", state="completed", kind="noop") == 1
    assert metrics.value("jobgate_nodes_live") == 1  # the first server's worker
    assert metrics.value("jobgate_job_run_seconds_count", kind="noop") == 1


def test_without_a_token_metrics_are_open_and_count_this_servers_streams(
        start_server: Callable[..., Server]) -> None:
    server = start_server("[streams]\nkeepalive = 1\n")  # a closed stream is seen in 1 s
    first = scrape(server)  # no Authorization header at all
    assert first.value("jobgate_running") == 0
    node = first.labelled("jobgate_stream_clients")[0]["node"]
    assert first.value("jobgate_stream_clients", node=node) == 0
    headers = {"Authorization": f"Bearer {server.tokens['bob']}"}
    with httpx.stream("GET", f"{server.url}/api/events", headers=headers,
                      timeout=httpx.Timeout(20, read=10)) as response:
        assert response.status_code == 200
        # A bearer header meant for something else does not matter either.
        assert scrape(server, "anything-at-all-0123").value(
            "jobgate_stream_clients", node=node) == 1
    _wait(lambda: scrape(server).value("jobgate_stream_clients", node=node) == 0,
          "the closed stream to stop counting")


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_metrics_token_is_required_when_set(start_server: Callable[..., Server]) -> None:
    server = start_server(f'[metrics]\ntoken = "{TOKEN}"\n')
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {server.tokens['alice']}"}):
        response = httpx.get(f"{server.url}/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in response.text
    metrics = scrape(server, TOKEN)
    assert metrics.value("jobgate_max_running") == 2
    assert TOKEN not in server.log.read_text()


def test_the_token_setting_is_checked_and_never_quoted(tmp_path: Path) -> None:
    def load(**env: str) -> Settings:
        return load_settings(env={"JOBGATE_SERVER_DATA_DIR": str(tmp_path / "data"), **env})

    assert load().metrics.token is None
    assert load(JOBGATE_METRICS_TOKEN=TOKEN).metrics.token == TOKEN
    assert load(JOBGATE_METRICS_TOKEN="off").metrics.token is None
    for bad, why in (("short-secret", "at least 16"), ("with a space in it 0123", "no spaces"),
                     ("tab\tinside-0123456789", "no spaces")):
        with pytest.raises(ConfigError, match=why) as caught:
            load(JOBGATE_METRICS_TOKEN=bad)
        assert bad not in str(caught.value)
        assert str(caught.value).startswith("metrics.token: ")
