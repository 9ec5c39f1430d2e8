"""The queue's statistics (stats.py, tally.py) on each backend: throughput windows, per-kind
run time and queue wait percentiles, retries, totals since start and in the database,
uptime and limits, checked against a known workload; `jobgate stats` rounds them for
people and `--json` says them exactly."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from conftest import Server, wait_for, wait_job, wait_state
from jobgate import stats as queue_stats
from jobgate.cli_stats import duration
from jobgate.config import Settings
from jobgate.model import Job, parse_iso

LIMITS = """
[limits]
max_running = 8
max_queued = 500
per_user_running = 6
per_user_queued = 200
"""
EXPECTED_LIMITS: dict[str, Any] = {"max_running": 8, "max_queued": 500, "per_user_running": 6,
                   "per_user_queued": 200, "memory_budget_mb": None, "kind_max_running": {}}
SLEEPS = (0.1, 0.1, 0.1, 0.2, 0.2, 0.4)  # the `sleep` jobs' seconds


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def runs(jobs: list[Job]) -> list[float]:
    return [j.finished_at - j.started_at for j in jobs
            if j.finished_at is not None and j.started_at is not None]


def waits(jobs: list[Job]) -> list[float]:
    return [j.started_at - j.created_at for j in jobs if j.started_at is not None]


async def test_the_numbers_of_a_known_workload(make_settings: Callable[..., Settings],
                                               open_queue: Any) -> None:
    queue, _ = await open_queue(make_settings(LIMITS))
    sleeps = [(await queue.submit("bob", "sleep", {"seconds": s}))[0] for s in SLEEPS]
    noops = [(await queue.submit("carol", "noop"))[0] for _ in range(4)]
    failing = (await queue.submit("bob", "fail", {"code": 3}))[0]  # 3 attempts, 2 retries
    for job in [*sleeps, *noops]:
        await wait_state(queue, job.id, "completed")
    await wait_state(queue, failing.id, "failed")
    await wait_for(lambda: queue.tally.totals()["failed"] == 1, what="the failure counted")

    out = await queue_stats.extra_json(queue, await queue.stats())

    done = {j.id: j for j in [await queue.get(j.id) for j in [*sleeps, *noops, failing]]
            if j is not None}
    by_kind = out["by_kind"]
    assert set(by_kind) == {"noop", "sleep", "steps", "fail"}  # every configured kind
    for kind, ids in (("sleep", sleeps), ("noop", noops), ("fail", [failing])):
        jobs = [done[j.id] for j in ids]
        numbers = by_kind[kind]
        assert numbers["jobs"] == len(ids)
        for q, name in ((0.5, "p50"), (0.95, "p95")):  # exact: the same floats
            assert numbers["run_s"][name] == nearest_rank(runs(jobs), q), (kind, name)
            assert numbers["wait_s"][name] == nearest_rank(waits(jobs), q), (kind, name)
    # The known durations, plus what starting a process costs (a loaded machine: seconds).
    assert 0.1 <= by_kind["sleep"]["run_s"]["p50"] <= by_kind["sleep"]["run_s"]["p95"]
    assert 0.4 <= by_kind["sleep"]["run_s"]["p95"] < 0.4 + 10  # rank 6 of 6: the 0.4 s job
    assert by_kind["steps"] == {"jobs": 0, "run_s": {"p50": None, "p95": None},
                                "wait_s": {"p50": None, "p95": None}, "retries": 0}
    assert [by_kind[k]["retries"] for k in ("sleep", "noop", "fail")] == [0, 0, 2]
    assert out["by_kind_window"] == {"window_s": queue_stats.WINDOW_S,
                                     "max_jobs": queue_stats.WINDOW_JOBS, "jobs": 11}

    each_window = {"completed": 10, "failed": 1, "cancelled": 0}
    assert out["ended"] == {"1h": each_window, "24h": each_window}
    assert out["throughput"] == {"1m": {"completed": 10, "per_min": 10.0},
                                 "15m": {"completed": 10, "per_min": 10 / 15},
                                 "60m": {"completed": 10, "per_min": 10 / 60}}
    assert out["totals"]["since_start"] == {"completed": 10, "failed": 1, "cancelled": 0,
                                            "retried": 2, "retried_by_hand": 0}
    assert out["totals"]["in_database"] == {"queued": 0, "running": 0, "completed": 10,
                                            "failed": 1, "cancelled": 0, "total": 11}
    assert out["limits"] == EXPECTED_LIMITS
    assert 0 < out["uptime_s"] < 600
    assert abs(parse_iso(out["started_at"]) - queue.tally.started_at) < 0.002

    # A retry by hand is counted; the per-kind numbers are the cached ones until they age.
    await queue.retry(failing.id)
    await wait_for(lambda: queue.tally.totals()["retried_by_hand"] == 1,
                   what="the retry by hand counted")
    extra = (await queue.submit("carol", "noop"))[0]
    await wait_state(queue, extra.id, "completed")
    cached, _ = await queue_stats.kinds_json(queue)
    assert cached["noop"]["jobs"] == 4
    fresh, _ = await queue_stats.kinds_json(queue, max_age_s=0)
    assert fresh["noop"]["jobs"] == 5


async def test_a_cancelled_job_that_never_ran_has_no_span(
        make_settings: Callable[..., Settings], open_queue: Any) -> None:
    queue, _ = await open_queue(make_settings(), worker=False)
    job = (await queue.submit("bob", "sleep", run_at=time.time() + 3600))[0]
    await queue.cancel(job.id)
    await wait_for(lambda: queue.tally.totals()["cancelled"] == 1, what="the cancel counted")
    out = await queue_stats.extra_json(queue, await queue.stats())
    assert out["by_kind_window"]["jobs"] == 0
    assert out["totals"]["in_database"]["cancelled"] == 1
    assert out["throughput"]["1m"] == {"completed": 0, "per_min": 0.0}


def _iso_run(job: dict[str, Any]) -> float:
    return parse_iso(job["finished_at"]) - parse_iso(job["started_at"])


def test_stats_cli_is_rounded_for_people_and_json_is_exact(
        start_server: Callable[..., Server]) -> None:
    server = start_server(LIMITS)
    with server.client("bob") as bob:
        ids = [bob.post("/api/jobs", json={"kind": "noop"}).json()["id"] for _ in range(3)]
        failed = bob.post("/api/jobs", json={"kind": "fail", "args": {"code": 3}}).json()["id"]
        jobs = [wait_job(bob, job_id, "completed") for job_id in ids]
        wait_job(bob, failed, "failed")
        api = _settled(bob)

    as_json = server.cli("stats", "--json", user="bob")
    text = server.cli("stats", user="bob")

    assert as_json.returncode == 0, as_json.stderr
    exact = json.loads(as_json.stdout)
    noop = exact["by_kind"]["noop"]
    # The API's job times are ISO-8601 with milliseconds: the exact p50 is within them.
    assert abs(noop["run_s"]["p50"] - nearest_rank([_iso_run(j) for j in jobs], 0.5)) <= 0.002
    assert noop["run_s"] == api["by_kind"]["noop"]["run_s"]  # as the API says it, unrounded
    assert exact["throughput"]["15m"] == {"completed": 3, "per_min": 3 / 15}
    assert exact["throughput"]["60m"] == {"completed": 3, "per_min": 3 / 60}
    assert exact["success_rate"] == 3 / 4
    assert exact["by_kind"]["fail"]["retries"] == 2
    assert exact["totals"]["since_start"]["retried"] == 2
    assert exact["limits"] == EXPECTED_LIMITS

    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()

    def line(start: str) -> str:
        found = [x for x in lines if x.startswith(start) and x[len(start)] == " "]
        assert len(found) == 1, (start, text.stdout)
        return found[0]

    assert line("success_rate").split()[1] == "75.0%"
    assert line("avg_duration_s").split()[1:] == duration(exact["avg_duration_s"]).split()
    assert line("throughput").split() == ["throughput", "1m", "3.0/min", "15m", "0.20/min",
                                          "60m", "0.05/min"]
    assert line("since start").split()[2:] == ["completed", "3", "failed", "1", "cancelled",
                                               "0", "retried", "2", "retried_by_hand", "0"]
    assert "total 4" in line("in database")
    assert line("limits").split()[1:] == ["max_running", "8", "max_queued", "500",
                                          "per_user_running", "6", "per_user_queued", "200",
                                          "memory_budget_mb", "-", "kind_max_running", "-"]
    uptime = line("uptime")
    assert " s (since " in uptime or " min " in uptime
    [table] = [s for s in text.stdout.split("\n\n") if s.startswith("finished in the last")]
    assert table.splitlines()[0] == "finished in the last 1 d 00 h (the last 1000 at most): " \
        "4 jobs"
    [row] = [x.split() for x in table.splitlines() if x.startswith("noop ")]
    assert row[:2] == ["noop", "3"]
    # Rounded: "0.01 s" for the 0.0123... of the JSON.
    assert " ".join(row[2:4]) == duration(noop["run_s"]["p50"])
    assert len(row[2].split(".")[1]) == 2


def _settled(http: httpx.Client) -> dict[str, Any]:
    """`GET /api/queue` once its totals since start counted the workload's four ends."""
    deadline = time.monotonic() + 30
    while True:
        stats: dict[str, Any] = http.get("/api/queue").json()
        if sum(stats["totals"]["since_start"][s] for s in ("completed", "failed")) == 4:
            return stats
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
