"""Operator controls: the rules (controls.py), the config's `[limits.users.NAME]`, the admin
API (`GET /api/controls`, `POST /api/queue/pause|resume`, `PUT /api/limits`, `POST
/api/nodes/{name}/drain|undrain`) and the CLI (`jobgate pause|resume|limits|drain|undrain`)
on a real `jobgate serve`, on both backends. Two worker nodes: test_controls_nodes.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import TEST_KINDS, Backend, Server, running_server, wait_job
from jobgate.auth import Principal
from jobgate.config import ConfigError, load_settings
from jobgate.controls import (
    ControlError,
    Controls,
    LimitsChange,
    UserLimits,
    change_limits,
    dispatch,
    drain,
    effective_limits,
    parse_limits,
    pause,
    resume,
)
from jobgate.model import Event, EventType, Job, new_id
from jobgate.scheduler import Candidate, Limits, Running, admit
from jobgate.store.base import Quota, User
from jobgate.stream import visible_to

CONFIG = """
[limits]
max_running = 2
per_user_running = 1
[limits.users.carol]
priority = 5
per_user_queued = 50
""" + TEST_KINDS


# --- the rules --------------------------------------------------------------------------------

def test_controls_round_trip_through_their_rows_and_json():
    c = Controls(paused=True, paused_kinds=frozenset({"sleep"}), limits={"max_running": 3},
                 kinds={"sleep": 1}, users={"bob": UserLimits(per_user_running=2)},
                 drained=frozenset({"n1"}), version=7)
    rows = [(name, json.loads(json.dumps(value)), 7) for name, value in c.rows().items()]
    assert Controls.from_rows(rows) == c
    assert Controls.from_json(c.to_json()) == c
    assert Controls.from_rows([]) == Controls()
    # What a newer jobgate may have stored that this one does not know is left out.
    assert Controls.from_json({"limits": {"max_running": 2, "future": 1}, "x": 1}).limits == \
        {"max_running": 2}


def test_effective_limits_are_the_configs_with_the_live_values_over_them():
    config = Limits(max_running=2, per_user_running=1, memory_budget_mb=100,
                    kind_max_running={"a": 1, "b": 2}, user_running={"carol": 3})
    assert effective_limits(config, Controls()) == config
    live = Controls(limits={"max_running": 5, "memory_budget_mb": 50}, kinds={"b": 4},
                    users={"bob": UserLimits(per_user_running=2), "dave": UserLimits(priority=1)})
    got = effective_limits(config, live)
    assert (got.max_running, got.per_user_running, got.memory_budget_mb) == (5, 1, 50)
    assert got.kind_max_running == {"a": 1, "b": 4}
    assert got.user_running == {"carol": 3, "bob": 2}
    assert (got.running_cap("bob"), got.running_cap("carol"), got.running_cap("x")) == (2, 3, 1)


def test_a_claim_under_a_pause_or_by_a_drained_node_may_start_nothing():
    config = Limits(max_running=2)
    kinds = ["a", "b", "c"]
    assert dispatch(config, kinds, Controls(), "n1")[1] == kinds
    assert dispatch(config, kinds, Controls(paused=True), "n1")[1] == []
    assert dispatch(config, kinds, Controls(paused_kinds=frozenset({"b"})), "n1")[1] == \
        ["a", "c"]
    drained = Controls(drained=frozenset({"n1"}))
    assert dispatch(config, kinds, drained, "n1")[1] == []
    assert dispatch(config, kinds, drained, "n2")[1] == kinds


def test_admission_honours_a_users_own_running_cap():
    limits = Limits(max_running=10, per_user_running=1, user_running={"alice": 3})
    jobs = [Candidate(f"{o}{i}", "k", o, 0) for o in ("alice", "bob") for i in range(4)]
    chosen = admit(jobs, limits, Running(), 10)
    assert [c.id for c in chosen] == ["alice0", "alice1", "alice2", "bob0"]


def test_changes_apply_as_they_say_and_null_puts_the_configs_value_back():
    c = pause(None).apply(Controls())
    assert c.paused and pause("a").apply(c).paused_kinds == {"a"}
    c = pause("a").apply(pause("b").apply(c))
    assert resume("a").apply(c).paused_kinds == {"b"}
    assert resume(None).apply(c) == Controls()  # every pause ends
    c = change_limits(LimitsChange({"max_running": 4}, {"a": 2},
                                   {"bob": {"per_user_running": 2, "priority": 3}})).apply(c)
    assert (c.limits, c.kinds, c.users) == ({"max_running": 4}, {"a": 2},
                                            {"bob": UserLimits(2, None, 3)})
    c = change_limits(LimitsChange({"max_running": None}, {},
                                   {"bob": {"priority": None}})).apply(c)
    assert (c.limits, c.users) == ({}, {"bob": UserLimits(per_user_running=2)})
    c = change_limits(LimitsChange(users={"bob": {"per_user_running": None}})).apply(c)
    assert c.users == {}
    c = drain("n1", True).apply(pause(None).apply(c))
    reset = change_limits(LimitsChange(kinds={"b": 1}, reset=True)).apply(
        change_limits(LimitsChange({"max_running": 9})).apply(c))
    assert (dict(reset.limits), dict(reset.kinds), reset.paused, set(reset.drained)) == (
        {}, {"b": 1}, True, {"n1"})


@pytest.mark.parametrize("body, field, words", [
    ({"max_running": 0}, "max_running", "must be a positive integer"),
    ({"max_running": "3"}, "max_running", "must be a positive integer"),
    ({"max_running": True}, "max_running", "must be a positive integer"),
    ({"per_user_queued": 1.5}, "per_user_queued", "must be a positive integer"),
    ({"kinds": {"nosuch": 1}}, "kinds.nosuch", "unknown kind (known: a, b)"),
    ({"kinds": {"a": -1}}, "kinds.a", "must be a positive integer"),
    ({"kinds": [1]}, "kinds", "expected an object"),
    ({"users": {"bob": {"priority": 5000}}}, "users.bob.priority", "from -1000 to 1000"),
    ({"users": {"bob": {"speed": 1}}}, "users.bob.speed", "unknown key"),
    ({"users": {"a b": {"priority": 1}}}, "users", "is not a user name"),
    ({"users": {"bob": 3}}, "users.bob", "expected an object"),
    ({"min_running": 1}, "min_running", "unknown key"),
    ({"reset": "yes"}, "reset", "expected true or false"),
])
def test_bad_limits_are_refused_naming_the_value(body, field, words):
    with pytest.raises(ControlError) as info:
        parse_limits(body, ["a", "b"])
    assert info.value.field == field and words in str(info.value), str(info.value)


def test_limits_parse_with_nulls_and_users():
    change = parse_limits({"max_running": 3, "memory_budget_mb": None, "kinds": {"a": 1},
                           "users": {"bob": {"priority": -2}, "carol": None}}, ["a"])
    assert change == LimitsChange({"max_running": 3, "memory_budget_mb": None}, {"a": 1},
                                  {"bob": {"priority": -2}, "carol": None})


@pytest.mark.parametrize("text, words", [
    ("[limits.users.alice]\nbogus = 1\n", "limits.users.alice.bogus: unknown key"),
    ("[limits.users.alice]\nper_user_running = 0\n",
     "limits.users.alice.per_user_running: must be a positive integer, got 0"),
    ("[limits.users.alice]\npriority = 2000\n", "limits.users.alice.priority: must be"),
    ("[limits.users.alice]\npriority = \"high\"\n",
     "limits.users.alice.priority: expected an integer"),
    ("[limits.users.\"a b\"]\npriority = 1\n", "limits.users.a b: 'a b' is not a user name"),
])
def test_a_bad_user_override_in_config_is_refused_with_its_key(tmp_path, text, words):
    path = tmp_path / "jobgate.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="^" + words.replace(".", r"\.")):
        load_settings(path, env={})


def test_user_overrides_in_config_and_from_the_environment(tmp_path):
    path = tmp_path / "jobgate.toml"
    path.write_text("[limits.users.alice]\nper_user_running = 4\npriority = 5\n")
    assert load_settings(path, env={}).limits.users == {
        "alice": {"per_user_running": 4, "priority": 5}}
    env = {"JOBGATE_LIMITS_USERS": "{bob = {per_user_queued = 3}}"}
    assert load_settings(env=env).limits.users == {"bob": {"per_user_queued": 3}}


def test_control_events_go_to_admins_streams_only():
    event = Event(1, EventType.QUEUE_PAUSED, 0.0, None, None, {"kind": None})
    assert visible_to(Principal(User("root", admin=True)))(event)
    assert not visible_to(Principal(User("bob", admin=False)))(event)


# --- the API and the CLI on a real server ------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("controls"), CONFIG, backend) as srv:
        yield srv


@pytest.fixture
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client("alice") as http:
        yield http
        # Each test leaves the controls as it found them.
        assert http.post("/api/queue/resume").status_code == 200
        assert http.put("/api/limits", json={"reset": True}).status_code == 200
        worker = http.get("/health").json()["worker"]
        assert http.post(f"/api/nodes/{worker}/undrain").status_code == 200


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    found: dict[str, Any] = response.json()["error"]
    return found


def test_every_control_route_is_for_admins_only(server, admin):
    worker = admin.get("/health").json()["worker"]
    with server.client("bob") as bob:
        for method, path, body in (
                ("GET", "/api/controls", None), ("POST", "/api/queue/pause", None),
                ("POST", "/api/queue/resume", {"kind": "sleep"}),
                ("PUT", "/api/limits", {"max_running": 5}),
                ("POST", f"/api/nodes/{worker}/drain", None),
                ("POST", f"/api/nodes/{worker}/undrain", None)):
            got = error(bob.request(method, path, json=body), 403)
            assert got["code"] == "forbidden" and "only an admin" in got["message"], got
    with server.client(None) as nobody:
        assert nobody.get("/api/controls").status_code == 401
    assert admin.get("/api/controls").json()["paused"] is False  # nothing was changed


def test_bad_values_are_422_with_a_message(admin):
    got = error(admin.put("/api/limits", json={"max_running": 0}), 422)
    assert got["field"] == "max_running"
    assert got["message"] == ("max_running: must be a positive integer (or null: back to the "
                              "config's value), got 0")
    got = error(admin.put("/api/limits", json={"kinds": {"nosuch": 2}}), 422)
    assert got["message"].startswith("kinds.nosuch: unknown kind (known: fail, noop, sleep")
    got = error(admin.put("/api/limits", json={"users": {"bob": {"priority": "high"}}}), 422)
    assert got["field"] == "users.bob.priority"
    got = error(admin.put("/api/limits", json=[1, 2]), 422)
    got = error(admin.post("/api/queue/pause", json={"kind": "nosuch"}), 422)
    assert got["message"].startswith("kind: unknown kind 'nosuch'")
    got = error(admin.post("/api/queue/pause", json={"kind": "sleep", "extra": 1}), 422)
    got = error(admin.post("/api/nodes/nosuch/drain"), 404)
    assert got["message"].startswith("no node 'nosuch' (registered: ")
    assert admin.get("/api/controls").json()["version"] >= 0


def test_limits_show_their_source_and_null_puts_the_configs_back(admin):
    first = admin.get("/api/controls").json()["effective"]
    assert first["max_running"] == {"value": 2, "source": "config"}
    assert first["users"]["carol"] == {"priority": 5, "per_user_queued": 50, "source": "config"}
    changed = admin.put("/api/limits", json={
        "max_running": 3, "kinds": {"sleep": 1}, "users": {"bob": {"per_user_running": 2}}})
    assert changed.status_code == 200, changed.text
    effective = changed.json()["effective"]
    assert effective["max_running"] == {"value": 3, "source": "live"}
    assert effective["kinds"]["sleep"] == {"value": 1, "source": "live"}
    assert effective["users"]["bob"] == {"per_user_running": 2, "source": "live"}
    assert admin.get("/api/queue").json()["max_running"] == 3
    back = admin.put("/api/limits", json={"max_running": None}).json()
    assert back["effective"]["max_running"] == {"value": 2, "source": "config"}
    assert back["limits"] == {} and back["kinds"] == {"sleep": 1}


def test_a_live_limit_is_what_stats_metrics_and_the_log_say(server, admin):
    assert admin.put("/api/limits", json={"max_running": 4}).status_code == 200
    assert admin.get("/api/queue").json()["limits"]["max_running"] == 4
    scrape = admin.get("/metrics").text
    assert "jobgate_max_running 4.0" in scrape, scrape
    log = server.log.read_text()
    assert "limits changed" in log and "max_running" in log, log[-2000:]


def test_a_job_of_a_paused_kind_has_no_estimated_start(admin):
    admin.post("/api/queue/pause", json={"kind": "sleep"})
    held = admin.post("/api/jobs", json={"kind": "sleep", "args": {"seconds": 0}}).json()
    assert (held["message"], held["eta_s"]) == ("kind sleep paused", None)
    admin.post("/api/queue/resume", json={"kind": "sleep"})
    assert wait_job(admin, held["id"], "completed", "failed")["state"] == "completed"


def test_a_pause_holds_queued_jobs_with_a_message_and_shows_in_the_queue(server, admin):
    paused = admin.post("/api/queue/pause").json()
    assert paused["paused"] is True
    queue = admin.get("/api/queue").json()
    assert (queue["paused"], queue["paused_kinds"]) == (True, [])
    job = admin.post("/api/jobs", json={"kind": "noop"}).json()
    assert job["state"] == "queued" and job["message"] == "queue paused"
    assert admin.get(f"/api/jobs/{job['id']}").json()["message"] == "queue paused"
    resumed = admin.post("/api/queue/resume").json()
    assert resumed["paused"] is False
    assert wait_job(admin, job["id"], "completed", "failed")["state"] == "completed"
    admin.post("/api/queue/pause", json={"kind": "sleep"})
    queue = admin.get("/api/queue").json()
    assert (queue["paused"], queue["paused_kinds"]) == (False, ["sleep"])
    held = admin.post("/api/jobs", json={"kind": "sleep", "args": {"seconds": 0}}).json()
    assert held["message"] == "kind sleep paused"
    admin.post("/api/queue/resume", json={"kind": "sleep"})
    assert wait_job(admin, held["id"], "completed", "failed")["state"] == "completed"
    # An admin's stream has each change, with who made it and the controls after it.
    seen = []
    with httpx.stream("GET", f"{server.url}/api/events", timeout=30, headers={
            "Authorization": f"Bearer {server.tokens['alice']}", "Last-Event-ID": "0"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                if event["type"].startswith("queue.") and event["type"] != "queue.stats":
                    seen.append((event["type"], event["kind"], event["by"],
                                 event["controls"]["paused"]))
                if event.get("job_id") == held["id"] and event["type"] == "job.completed":
                    break
    assert seen[-4:] == [("queue.paused", None, "alice", True),
                         ("queue.resumed", None, "alice", False),
                         ("queue.paused", "sleep", "alice", False),
                         ("queue.resumed", "sleep", "alice", False)]


def test_a_drained_embedded_worker_claims_nothing_until_undrained(admin):
    worker = admin.get("/health").json()["worker"]
    drained = admin.post(f"/api/nodes/{worker}/drain").json()
    assert drained["drained"] == [worker]
    assert admin.get("/api/queue").json()["drained_nodes"] == [worker]
    job = admin.post("/api/jobs", json={"kind": "noop"}).json()
    deadline = time.monotonic() + 1.0  # a noop starts within milliseconds when it may
    while time.monotonic() < deadline:
        assert admin.get(f"/api/jobs/{job['id']}").json()["state"] == "queued"
        time.sleep(0.05)
    admin.post(f"/api/nodes/{worker}/undrain")
    assert wait_job(admin, job["id"], "completed", "failed")["state"] == "completed"


def test_a_premium_users_priority_is_their_default_and_their_ceiling(server, admin):
    with server.client("carol") as carol, server.client("bob") as bob:
        assert carol.post("/api/jobs", json={"kind": "noop"}).json()["priority"] == 5
        assert carol.post("/api/jobs", json={"kind": "noop", "priority": 5}).status_code == 201
        assert carol.post("/api/jobs", json={"kind": "noop", "priority": 2}).json()[
            "priority"] == 2
        error(carol.post("/api/jobs", json={"kind": "noop", "priority": 6}), 403)
        error(bob.post("/api/jobs", json={"kind": "noop", "priority": 1}), 403)
        batch = carol.post("/api/batches", json={"jobs": [{"kind": "noop", "priority": 5}]})
        assert batch.status_code == 201, batch.text
        # Live: bob becomes premium too, and carol's priority goes up.
        admin.put("/api/limits", json={"users": {"bob": {"priority": 3},
                                                 "carol": {"priority": 8}}})
        assert bob.post("/api/jobs", json={"kind": "noop"}).json()["priority"] == 3
        assert carol.post("/api/jobs", json={"kind": "noop"}).json()["priority"] == 8
        admin.put("/api/limits", json={"users": {"carol": None}})  # back to the config's
        assert carol.post("/api/jobs", json={"kind": "noop"}).json()["priority"] == 5


def test_a_live_per_user_queued_cap_refuses_a_submit(server, admin):
    admin.post("/api/queue/pause")
    admin.put("/api/limits", json={"users": {"bob": {"per_user_queued": 1}}})
    with server.client("bob") as bob:
        assert bob.post("/api/jobs", json={"kind": "noop"}).status_code == 201
        got = error(bob.post("/api/jobs", json={"kind": "noop"}), 429)
        assert got["message"] == "queue full for bob: 1/1"


def test_the_cli_pauses_resumes_and_drains(server, admin):
    def cli(*args: str, user: str = "alice") -> Any:
        return server.cli(*args, user=user)

    out = cli("pause")
    assert (out.returncode, out.stdout.strip()) == (
        0, "queue paused: no node starts a job (running jobs go on)"), out.stderr
    assert admin.get("/api/queue").json()["paused"] is True
    assert cli("resume").stdout.strip() == "queue running: nothing paused"
    assert cli("pause", "sleep").stdout.strip() == "kinds paused: sleep"
    worker = admin.get("/health").json()["worker"]
    out = cli("drain", worker)
    assert out.returncode == 0 and "drained" in out.stdout, out.stderr
    assert admin.get("/api/controls").json()["drained"] == [worker]
    assert cli("undrain", worker).returncode == 0
    assert admin.get("/api/controls").json()["drained"] == []


def test_the_cli_shows_and_changes_the_limits(server, admin):
    def cli(*args: str) -> Any:
        return server.cli(*args, user="alice")

    out = cli("limits", "--max-running", "3", "--kind", "sleep=1", "--user", "bob=2",
              "--user", "bob.priority=4")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["LIMIT", "VALUE", "SOURCE"]
    table = {line.split()[0]: line.split()[1:] for line in lines[1:] if line.strip()
             and len(line.split()) == 3}
    assert table["max_running"] == ["3", "live"]
    assert table["per_user_running"] == ["1", "config"]
    assert table["kinds.sleep.max_running"] == ["1", "live"]
    assert table["users.bob.per_user_running"] == ["2", "live"]
    assert table["users.bob.priority"] == ["4", "live"]
    assert table["users.carol.priority"] == ["5", "config"]
    shown = json.loads(cli("limits", "--json").stdout)
    assert shown["limits"] == {"max_running": 3} and shown["users"] == {
        "bob": {"per_user_running": 2, "priority": 4}}
    assert json.loads(cli("limits", "--max-running", "config", "--json").stdout)[
        "limits"] == {}
    assert json.loads(cli("limits", "--reset", "--json").stdout)["users"] == {}


def test_the_cli_says_what_is_wrong_in_one_line(server, admin):
    for args, code, words in (
            (("limits", "--max-running", "0"), 1, "max_running: must be a positive integer"),
            (("limits", "--max-running", "x"), 2, "--max-running: expected a whole number"),
            (("limits", "--user", "bob.speed=1"), 2, "unknown key 'speed'"),
            (("drain", "nosuch"), 1, "no node 'nosuch'")):
        out = server.cli(*args, user="alice")
        assert out.returncode == code, (args, out.stdout, out.stderr)
        assert out.stderr.count("\n") == 1 and words in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    out = server.cli("pause", user="bob")
    assert out.returncode == 1 and "only an admin may pause the queue (HTTP 403)" in out.stderr



# --- the store, on both backends -----------------------------------------------------------------

async def test_the_store_keeps_the_controls_versioned_and_claims_honour_them(store, other_node):
    assert await store.controls() == Controls()
    paused = await store.change_controls(pause(None), "root")
    assert paused.paused and paused.version == 1
    again = await store.change_controls(pause(None), "root")  # no change: nothing written
    assert again == paused
    assert await other_node.controls() == paused  # another node reads it at once
    events = [e for e in await store.events_after(0) if e.type == EventType.QUEUE_PAUSED]
    assert [(e.data["kind"], e.data["by"], e.data["controls"]["version"], e.job_id, e.owner)
            for e in events] == [(None, "root", 1, None, None)]

    job, _ = await store.submit(Job(new_id(), "a", "bob", {}), Quota())
    limits = Limits(max_running=2)
    assert await other_node.claim("n1", 2, limits, 30, ["a"]) == []
    await store.change_controls(resume(None), "root")
    drained = await store.change_controls(drain("n1", True), "root")
    assert (drained.version, drained.paused, drained.drained) == (3, False, {"n1"})
    assert await other_node.claim("n1", 2, limits, 30, ["a"]) == []
    assert [j.id for j in await other_node.claim("n2", 2, limits, 30, ["a"])] == [job.id]
