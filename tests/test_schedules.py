"""Schedules: the rule of what is due, missed and skipped (no database), the checks of
`[schedules.NAME]` at start (one-line errors from `jobgate serve` and `jobgate worker`),
and a real server firing a schedule: `GET /api/schedules` (what each user sees),
`jobgate schedules`, the `schedule.*` events on the stream and the jobs fired."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import TEST_KINDS, Server, wait_job
from jobgate.config import ConfigError, load_settings
from jobgate.model import Job, State
from jobgate.schedules import FAILED, FIRED, SKIPPED, Firing, Schedule, firings, outcome_of, plan
from jobgate.store.base import QueueFull

EVERY_SECOND = "* * * * * *"  # six fields: the seconds first


def schedule(cron: str = EVERY_SECOND, **fields: Any) -> Schedule:
    return Schedule(**{"name": "s", "cron": cron, "kind": "noop", "owner": "bob", "args": {},
                       **fields})


def utc(year: int, month: int, day: int, hour: int) -> float:
    return dt.datetime(year, month, day, hour, tzinfo=dt.UTC).timestamp()


# --- the rule ---------------------------------------------------------------------------

def test_due_times_follow_the_cron_in_its_time_zone_across_a_clock_change():
    paris = schedule("0 3 * * *", timezone="Europe/Paris")
    # 03:00 in Paris is 02:00 UTC in winter, 01:00 UTC from the last Sunday of March.
    assert paris.next_after(utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1)
    assert paris.next_after(utc(2026, 3, 27, 12)) == utc(2026, 3, 28, 2)
    assert schedule("0 3 * * *").next_after(utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 3)
    every = schedule()
    assert every.next_after(100.0) == 101.0 and every.next_after(100.5) == 101.0
    assert every.last_before(100.0) == 99.0 and every.last_before(100.5) == 100.0


def test_a_due_time_fires_when_reached_and_not_before():
    every = schedule()
    assert plan(every, 101.0, 100.9).due == []
    on_time = plan(every, 101.0, 101.2)
    assert (on_time.due, on_time.missed_last, on_time.next_due) == ([101.0], None, 102.0)


def test_a_late_round_fires_every_due_time_it_finds_within_missed_after():
    late = plan(schedule(missed_after_s=60), 101.0, 105.5)
    assert (late.due, late.missed_last, late.next_due) == ([101.0, 102.0, 103.0, 104.0,
                                                             105.0], None, 106.0)


def test_one_round_fires_at_most_the_round_limit_and_leaves_the_rest_due():
    capped = plan(schedule(missed_after_s=3600), 101.0, 1000.0, limit=10)
    assert capped.due == [float(t) for t in range(101, 111)] and capped.next_due == 111.0


def test_firings_missed_while_no_node_ran_are_skipped_once_or_run_once():
    now = 1000.5  # the nodes were down from 101 on; missed_after 5 s
    for missed, outcome, catch_up in (("skip", SKIPPED, False), ("run_once", FIRED, True)):
        s = schedule(missed=missed, missed_after_s=5)
        planned = plan(s, 101.0, now)
        assert (planned.missed_from, planned.missed_last) == (101.0, 995.0)
        assert planned.due == [996.0, 997.0, 998.0, 999.0, 1000.0]
        made = firings(s, planned, lambda due: Job(f"J{due:.0f}", "noop", "bob", {}))
        first, *rest = made
        assert (first.due_at, first.outcome, first.catch_up) == (995.0, outcome, catch_up)
        assert "1970-01-01T00:01:41.000Z to 1970-01-01T00:16:35.000Z" in first.message
        assert [(f.due_at, f.outcome) for f in rest] == [(t, FIRED) for t in planned.due]
        assert (first.job_id is None) == (missed == "skip")


def test_a_disabled_schedule_is_never_due():
    assert plan(schedule(enabled=False), 101.0, 5000.0).due == []
    assert schedule(enabled=False).spec != schedule().spec  # enabling starts it afresh


def test_a_firing_whose_job_cannot_be_made_fails_with_the_reason():
    [made] = firings(schedule(), plan(schedule(), 101.0, 101.0),
                     lambda due: "owner 'bob' does not exist")
    assert (made.outcome, made.message, made.job) == (
        FAILED, "not fired: owner 'bob' does not exist", None)


def test_what_the_submit_answers_decides_the_outcome():
    job = Job("J1", "noop", "bob", {}, unique_key="k")
    firing = Firing("s", "bob", 101.0, FIRED, "fired", job, job.id)
    assert outcome_of(firing, (job, True)).outcome == FIRED
    running = Job("J0", "noop", "bob", {}, unique_key="k", state=State.RUNNING)
    skipped = outcome_of(firing, (running, False))
    assert (skipped.outcome, skipped.job_id, skipped.job) == (SKIPPED, "J0", None)
    assert skipped.message == "skipped: job J0 with unique_key 'k' is still running"
    full = outcome_of(firing, QueueFull("queue full: 5 jobs queued"))
    assert (full.outcome, full.job_id) == (FAILED, None) and "queue full" in full.message


# --- configuration ----------------------------------------------------------------------

def _config(tmp_path: Path, schedules: str) -> Path:
    (tmp_path / "input").mkdir(exist_ok=True)
    path = tmp_path / "jobgate.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                    f'input_dir = "{tmp_path / "input"}"\n'
                    f'[storage]\nurl = "sqlite:///{tmp_path / "j.db"}"\n'
                    + TEST_KINDS + schedules)
    return path


def test_a_schedule_is_read_with_its_defaults(tmp_path: Path):
    settings = load_settings(_config(tmp_path, """
[schedules.nightly]
cron = "0  3 * * *"
kind = "sleep"
owner = "bob"
args = { seconds = 2 }
"""), env={})
    nightly = settings.schedules["nightly"]
    assert (nightly.cron, nightly.timezone, nightly.missed, nightly.missed_after_s,
            nightly.enabled, nightly.unique_key, nightly.args) == (
        "0 3 * * *", "UTC", "skip", 60.0, True, None, {"seconds": 2})


BAD_SCHEDULES = {
    "bad cron": ('cron = "0 3 * *"', "schedules.bad.cron: invalid cron expression '0 3 * *'"),
    "cron out of range": ('cron = "0 25 * * *"', "schedules.bad.cron: invalid cron"),
    "unknown kind": ('cron = "@daily"\nkind = "nope"', "schedules.bad.kind: unknown kind 'nope'"),
    "unknown time zone": ('timezone = "Mars/Olympus"',
                          "schedules.bad.timezone: unknown time zone 'Mars/Olympus'"),
    "args refused": ('args = { seconds = "soon" }', "schedules.bad.args: seconds:"),
    "unknown argument": ('args = { speed = 1 }', "schedules.bad.args: speed: unknown argument"),
    "missed policy": ('missed = "twice"', "schedules.bad.missed: must be 'skip' or 'run_once'"),
    "unknown key": ('every = "1h"', "schedules.bad.every: unknown key"),
}


def _bad(fragment: str) -> str:
    lines = {"cron": 'cron = "0 3 * * *"', "kind": 'kind = "sleep"', "owner": 'owner = "bob"'}
    for line in fragment.splitlines():
        lines[line.split("=")[0].strip()] = line
    return "\n[schedules.bad]\n" + "\n".join(lines.values()) + "\n"


@pytest.mark.parametrize("case", sorted(BAD_SCHEDULES))
def test_a_bad_schedule_is_refused_at_load_naming_it(tmp_path: Path, case: str):
    fragment, expected = BAD_SCHEDULES[case]
    with pytest.raises(ConfigError) as caught:
        load_settings(_config(tmp_path, _bad(fragment)), env={})
    assert str(caught.value).startswith(expected), caught.value
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("command", "case"), [
    ("serve", "bad cron"), ("worker", "bad cron"), ("serve", "unknown kind"),
    ("worker", "unknown kind"), ("serve", "unknown time zone"), ("worker", "unknown time zone"),
])
def test_serve_and_worker_refuse_a_bad_schedule_in_one_line(tmp_path: Path, command: str,
                                                            case: str):
    fragment, expected = BAD_SCHEDULES[case]
    config = _config(tmp_path, _bad(fragment))
    done = subprocess.run([sys.executable, "-m", "jobgate", command, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"jobgate: {expected}"), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "j.db").exists()  # refused before the database was touched


# --- a server firing a schedule -------------------------------------------------------------

SERVER_SCHEDULES = f"""
[schedules.tick]
cron = "{EVERY_SECOND}"
kind = "noop"
owner = "bob"
unique_key = "tick"

[schedules.nightly]
cron = "30 2 * * *"
timezone = "Europe/Paris"
kind = "sleep"
owner = "carol"
args = {{ seconds = 1 }}
enabled = false
"""


def _schedules(http: httpx.Client) -> dict[str, dict[str, Any]]:
    response = http.get("/api/schedules")
    assert response.status_code == 200, response.text
    return {s["name"]: s for s in response.json()["schedules"]}


def _first_fired(server: Server, user: str) -> dict[str, Any]:
    """The first `schedule.fired` event `user` reads on `GET /api/events` (from the start)."""
    with httpx.stream("GET", f"{server.url}/api/events", timeout=30, headers={
            "Authorization": f"Bearer {server.tokens[user]}", "Last-Event-ID": "0"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"schedule.fired"' in line:
                event: dict[str, Any] = json.loads(line.removeprefix("data: "))
                return event
    raise AssertionError("the stream ended without a schedule.fired event")


def test_a_server_fires_its_schedule_and_lists_it_to_each_user_as_they_may_see_it(
        start_server: Callable[..., Server]):
    server = start_server(SERVER_SCHEDULES)
    event = _first_fired(server, "bob")
    assert (event["schedule"], event["outcome"], event["catch_up"]) == ("tick", "fired", False)
    assert event["due_at"].endswith(".000Z")
    with server.client("bob") as bob, server.client("alice") as alice, \
            server.client("carol") as carol:
        job = wait_job(bob, event["job"], "completed")
        assert (job["kind"], job["owner"], job["unique_key"]) == ("noop", "bob", "tick")
        assert _first_fired(server, "alice")["job"] == event["job"]  # an admin sees it
        seen = {name: _schedules(client) for name, client in
                (("alice", alice), ("bob", bob), ("carol", carol))}
        one = bob.get("/api/schedules/tick").json()
        assert one["name"] == "tick" and one["firings"]
        dues = [f["due_at_epoch_s"] for f in one["firings"]]
        assert dues == sorted(dues, reverse=True) and len(set(dues)) == len(dues)
        assert event["job"] in {f["job_id"] for f in one["firings"]}
        theirs = carol.get("/api/schedules/tick").json()["firings"]
        assert {f["job_id"] for f in theirs} == {None}
        missing = bob.get("/api/schedules/nope")
        assert (missing.status_code, missing.json()["error"]["message"]) == (
            404, "no schedule 'nope'")
    tick = seen["bob"]["tick"]
    assert (tick["cron"], tick["timezone"], tick["kind"], tick["owner"], tick["enabled"],
            tick["missed"], tick["unique_key"], tick["args"]) == (
        EVERY_SECOND, "UTC", "noop", "bob", True, "skip", "tick", {})
    assert tick["last"]["outcome"] in ("fired", "skipped") and tick["last"]["job_id"]
    assert tick["next_due_epoch_s"] == int(tick["next_due_epoch_s"])  # a whole second
    assert tick["next_due_at"] == \
        dt.datetime.fromtimestamp(tick["next_due_epoch_s"], dt.UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z")
    assert abs(tick["next_due_epoch_s"] - time.time()) < 60
    # Someone else's schedule: what it is and when it runs, not its args or its jobs.
    other = seen["carol"]["tick"]
    assert other["args"] is None and other["last"]["job_id"] is None
    assert other["last"]["message"] is None and other["next_due_epoch_s"] is not None
    assert seen["alice"]["tick"]["args"] == {} and seen["alice"]["tick"]["last"]["job_id"]
    nightly = seen["carol"]["nightly"]
    assert (nightly["enabled"], nightly["next_due_at"], nightly["last"], nightly["args"]) == (
        False, None, None, {"seconds": 1})
    assert seen["bob"]["nightly"]["args"] is None

    table = server.cli("schedules", user="bob")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:5] == ["NAME", "CRON", "TIMEZONE", "KIND", "OWNER"]
    by_name = {row.split()[0]: row for row in rows}
    assert "Europe/Paris" in by_name["nightly"] and "disabled" in by_name["nightly"]
    assert "30 2 * * *" in by_name["nightly"]
    assert any(word in by_name["tick"] for word in (" fired", " skipped"))
    listed = json.loads(server.cli("schedules", "--json", user="bob").stdout)
    assert {s["name"] for s in listed["schedules"]} == {"nightly", "tick"}


def test_a_schedule_whose_owner_does_not_exist_fails_each_firing_saying_why(
        start_server: Callable[..., Server]):
    server = start_server(f"""
[schedules.ghost]
cron = "{EVERY_SECOND}"
kind = "noop"
owner = "zed"
""")
    with server.client("alice") as alice:
        deadline = time.monotonic() + 30
        while (last := _schedules(alice)["ghost"]["last"]) is None:
            assert time.monotonic() < deadline, "the schedule never fired"
            time.sleep(0.1)
        assert (last["outcome"], last["job_id"]) == ("failed", None)
        assert last["message"] == ("not fired: owner 'zed' does not exist "
                                   "(add the user: jobgate user add zed)")
        assert alice.get("/api/jobs", params={"owner": "zed"}).json()["jobs"] == []


def test_the_openapi_schema_describes_the_schedules_route(
        start_server: Callable[..., Server]):
    server = start_server()
    schema = httpx.get(f"{server.url}/openapi.json").json()
    route = schema["paths"]["/api/schedules"]["get"]
    assert route["tags"] == ["schedules"]
    fields = schema["components"]["schemas"]["ScheduleOut"]["properties"]
    assert {"name", "cron", "timezone", "kind", "owner", "next_due_at", "next_due_epoch_s",
            "last", "args"} <= set(fields)
    assert {"due_at", "fired_at", "job_id", "outcome"} <= \
        set(schema["components"]["schemas"]["FiringOut"]["properties"])
    with server.client("alice") as alice:
        assert alice.get("/api/schedules").json() == {"schedules": []}
    assert httpx.get(f"{server.url}/api/schedules").status_code == 401
