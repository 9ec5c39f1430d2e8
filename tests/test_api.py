"""The HTTP API against a real `jobgate serve`: jobs, isolation, limits, and bad input.

Most tests share one server (module scope) and only look at the jobs they create; tests
that need an empty queue or particular limits start their own.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from typing import Any

import httpx
import psutil
import pytest

from conftest import TEST_KINDS, Backend, Server, running_server

# Kinds beyond the shared test kinds: required, path, url and pattern arguments, one at a
# time (`single`), and an output file.
EXTRA_KINDS = r"""
[kinds.fetch]
argv = ["echo", "{url}"]
[kinds.fetch.args]
url = { type = "url" }

[kinds.convert]
argv = ["cat", "{input}"]
[kinds.convert.args]
input = { type = "path" }
bitrate = { type = "string", pattern = "^[0-9]+k$", default = "800k" }

[kinds.single]
argv = ["sleep", "{seconds}"]
max_running = 1
[kinds.single.args]
seconds = { type = "number", min = 0, max = 600 }

[kinds.report]
argv = ["sh", "-c", "printf '%s\n' \"$0\" > \"$1/report.txt\"", "{text}", "{output_dir}"]
[kinds.report.args]
text = { type = "string", default = "hello" }

[kinds.nul]
argv = ["sh", "-c", "printf 'a\\000b\\nprogress=50 x\\000y\\n'; printf 'oops\\000!\\n' >&2; exit 1"]
progress = 'progress=(?P<percent>[0-9.]+) (?P<message>.*)'
"""

SHARED_LIMITS = "[limits]\nmax_running = 4\nmemory_budget_mb = 4096\n"
STATS_KEYS = {
    "queued", "running", "max_running", "completed", "failed", "cancelled",
    "memory_reserved_mb", "memory_budget_mb", "throughput_per_min", "avg_duration_s",
    "success_rate",
    "node_memory_budget_mb", "memory_available_mb", "pressure", "running_rss_mb",
    "running_peak_mb", "nodes", "waiting", "paused", "paused_kinds", "drained_nodes",
    # stats.py's (tests/test_stats.py checks their numbers)
    "throughput", "ended", "by_kind", "by_kind_window", "totals", "started_at", "uptime_s",
    "limits",
}
FINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend
           ) -> Iterator[Server]:
    """One server for the tests that only look at the jobs they submit themselves."""
    with running_server(tmp_path_factory.mktemp("shared"),
                        SHARED_LIMITS + TEST_KINDS + EXTRA_KINDS, backend) as srv:
        yield srv


@pytest.fixture
def bob(server: Server) -> Iterator[httpx.Client]:
    with server.client("bob") as http:
        yield http


@pytest.fixture
def carol(server: Server) -> Iterator[httpx.Client]:
    with server.client("carol") as http:
        yield http


@pytest.fixture
def alice(server: Server) -> Iterator[httpx.Client]:
    with server.client("alice") as http:
        yield http


# --- helpers -----------------------------------------------------------------------------

def later(hours: float = 1) -> str:
    """An ISO time in the future: a job submitted to run then stays queued meanwhile."""
    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)).isoformat()


def submit(http: httpx.Client, kind: str, args: dict[str, Any] | None = None,
           **fields: Any) -> dict[str, Any]:
    response = http.post("/api/jobs", json={"kind": kind, "args": args or {}, **fields})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_for(http: httpx.Client, job_id: str, *states: str, timeout_s: float = 30
             ) -> dict[str, Any]:
    """Poll the job until it is in one of `states`; fail with its last shape if it never is."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = http.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["state"] in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stayed {job['state']}, not {states}: {job}")
        time.sleep(0.05)


def sleep_processes(seconds: str) -> list[psutil.Process]:
    """Live `sleep SECONDS` processes (a zombie counts as gone)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == ["sleep", seconds] and \
                proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def wait_until(check: Any, what: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    """The contract's error shape: {"error": {"code", "message"}} with a fitting status."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
    assert message.lower() in body["error"]["message"].lower(), body


def total_jobs(server: Server) -> int:
    with server.client("alice") as http:
        stats = http.get("/api/queue").json()
    return sum(stats[s] for s in ("queued", "running", *FINAL))


def raw_get(server: Server, path: str, user: str) -> tuple[int, bytes]:
    """GET a path exactly as written (httpx would normalise `..` segments away)."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {server.tokens[user]}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- submit and list ---------------------------------------------------------------------

def test_submit_returns_201_with_the_queued_job_owned_by_the_caller(bob):
    busy = submit(bob, "single", {"seconds": 300})
    wait_for(bob, busy["id"], "running")

    response = bob.post("/api/jobs", json={"kind": "single", "args": {"seconds": 1}})

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["state"] == "queued"
    assert job["owner"] == "bob"
    assert job["kind"] == "single"
    assert job["args"] == {"seconds": 1}
    assert job["position"] == 1, "first in line behind the running one"
    assert job["attempt"] == 0 and job["error"] is None
    assert bob.get(f"/api/jobs/{job['id']}").json()["position"] == 1
    for j in (job, busy):
        assert bob.post(f"/api/jobs/{j['id']}/cancel").json()["state"] == "cancelled"


def test_list_shows_only_the_callers_jobs_newest_first_with_filters_and_pages(start_server):
    server = start_server()
    with server.client("bob") as bob, server.client("carol") as carol, \
            server.client("alice") as alice:
        done = [submit(bob, "noop")["id"] for _ in range(3)]
        waiting = [submit(bob, "steps", run_at=later())["id"] for _ in range(2)]
        carols = [submit(carol, "noop")["id"] for _ in range(2)]
        for job_id in done:
            wait_for(bob, job_id, "completed")
        mine = set(done + waiting)

        listed = bob.get("/api/jobs").json()
        ids = [j["id"] for j in listed["jobs"]]
        assert set(ids) == mine
        assert listed["next"] is None
        assert ids == sorted(ids, reverse=True), "newest first"
        assert ids.index(waiting[-1]) < ids.index(done[0]), "the last submitted comes first"
        created = [j["created_at"] for j in listed["jobs"]]
        assert created == sorted(created, reverse=True)
        assert all(j["owner"] == "bob" for j in listed["jobs"])

        queued = bob.get("/api/jobs", params={"state": "queued"}).json()["jobs"]
        assert {j["id"] for j in queued} == set(waiting)
        completed = bob.get("/api/jobs", params={"state": "completed"}).json()["jobs"]
        assert {j["id"] for j in completed} == set(done)
        steps = bob.get("/api/jobs", params={"kind": "steps"}).json()["jobs"]
        assert {j["id"] for j in steps} == set(waiting)
        assert bob.get("/api/jobs", params={"kind": "sleep"}).json()["jobs"] == []

        seen: list[str] = []
        cursor = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            page = bob.get("/api/jobs", params=params).json()
            assert len(page["jobs"]) <= 2
            seen += [j["id"] for j in page["jobs"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(mine) and len(seen) == len(mine), "each job exactly once"
        assert seen == ids, "pages keep the newest-first order"

        everyone = {j["id"] for j in alice.get("/api/jobs").json()["jobs"]}
        assert everyone == mine | set(carols), "an admin sees everyone's jobs"
        only_carol = alice.get("/api/jobs", params={"owner": "carol"}).json()["jobs"]
        assert {j["id"] for j in only_carol} == set(carols)

        assert_error(bob.get("/api/jobs", params={"owner": "alice"}), 403, "admin")
        own = bob.get("/api/jobs", params={"owner": "bob"})
        assert {j["id"] for j in own.json()["jobs"]} == mine


# --- isolation between users --------------------------------------------------------------

def test_a_user_cannot_touch_someone_elses_job(server, bob, carol, alice):
    done = submit(carol, "report", {"text": "carol's secret"})
    done = wait_for(carol, done["id"], "completed")
    waiting = submit(carol, "steps", run_at=later())
    logs_before = carol.get(f"/api/jobs/{done['id']}/logs").json()
    unknown = bob.get("/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV")

    attempts = {
        "get": bob.get(f"/api/jobs/{done['id']}"),
        "logs": bob.get(f"/api/jobs/{done['id']}/logs"),
        "output": bob.get(f"/api/jobs/{done['id']}/outputs/report.txt"),
        "retry": bob.post(f"/api/jobs/{done['id']}/retry"),
        "delete": bob.delete(f"/api/jobs/{done['id']}"),
        "cancel": bob.post(f"/api/jobs/{waiting['id']}/cancel"),
        "get queued": bob.get(f"/api/jobs/{waiting['id']}"),
    }
    for what, response in attempts.items():
        assert_error(response, 404, "no job")
        assert response.json()["error"]["code"] == unknown.json()["error"]["code"], what
        assert "carol" not in response.text, what

    bobs = {j["id"] for j in bob.get("/api/jobs").json()["jobs"]}
    assert done["id"] not in bobs and waiting["id"] not in bobs
    assert_error(bob.get("/api/jobs", params={"owner": "carol"}), 403, "admin")

    # Carol's jobs are untouched.
    assert carol.get(f"/api/jobs/{done['id']}").json() == done
    assert carol.get(f"/api/jobs/{waiting['id']}").json()["state"] == "queued"
    assert carol.get(f"/api/jobs/{done['id']}/logs").json() == logs_before
    output = carol.get(f"/api/jobs/{done['id']}/outputs/report.txt")
    assert output.status_code == 200 and output.text == "carol's secret\n"
    # An admin sees and may act on anyone's job.
    assert alice.get(f"/api/jobs/{done['id']}").json()["owner"] == "carol"
    assert alice.post(f"/api/jobs/{waiting['id']}/cancel").json()["state"] == "cancelled"


def test_the_same_idempotency_key_returns_the_first_job(server, bob, carol):
    before = total_jobs(server)
    key = {"Idempotency-Key": "nightly-2024-01-01"}
    body = {"kind": "steps", "args": {"count": 1}, "run_at": later()}

    first = bob.post("/api/jobs", json=body, headers=key)
    again = bob.post("/api/jobs", json={**body, "args": {"count": 9}}, headers=key)

    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["args"]["count"] == 1, "the first job, not a new one"
    assert total_jobs(server) == before + 1

    carols = carol.post("/api/jobs", json=body, headers=key)
    assert carols.status_code == 201, carols.text
    assert carols.json()["owner"] == "carol"
    assert carols.json()["id"] != first.json()["id"]
    assert total_jobs(server) == before + 2
    bob.post(f"/api/jobs/{first.json()['id']}/cancel")
    carol.post(f"/api/jobs/{carols.json()['id']}/cancel")


def test_an_idempotency_key_sent_twenty_times_at_once_makes_one_job(server: Server):
    before = total_jobs(server)

    def send(_: int) -> httpx.Response:
        with server.client("bob") as http:
            return http.post("/api/jobs", json={"kind": "noop"},
                             headers={"Idempotency-Key": "all-at-once"})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(send, range(20)))

    assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert total_jobs(server) == before + 1


def test_unique_key_allows_one_active_job_per_key(bob):
    body = {"kind": "steps", "run_at": later(), "unique_key": "backup"}
    first = bob.post("/api/jobs", json=body)
    again = bob.post("/api/jobs", json=body)

    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]

    assert bob.post(f"/api/jobs/{first.json()['id']}/cancel").json()["state"] == "cancelled"
    after = bob.post("/api/jobs", json=body)
    assert after.status_code == 201, "a finished job no longer holds its key"
    assert after.json()["id"] != first.json()["id"]
    bob.post(f"/api/jobs/{after.json()['id']}/cancel")


def test_unique_key_does_not_hand_out_someone_elses_job(bob, carol):
    body: dict[str, Any] = {"kind": "steps", "run_at": later(), "unique_key": "weekly-report"}
    carols = submit(carol, **body)
    try:
        response = bob.post("/api/jobs", json=body)
        assert response.status_code in (200, 201), response.text
        assert response.json()["owner"] == "bob"
        assert response.json()["id"] != carols["id"]
    finally:
        carol.post(f"/api/jobs/{carols['id']}/cancel")


def test_ids_with_nuls_or_invalid_text_are_just_unknown_and_never_echoed(bob):
    # PostgreSQL's text cannot hold a NUL: a lookup with one must still find nothing.
    for job_id in ("a%00b", "%ff", "%ed%a0%80", "%1b%5b2J", "%e2%80%ae"):
        for method, path in [("GET", f"/api/jobs/{job_id}"),
                             ("POST", f"/api/jobs/{job_id}/cancel"),
                             ("POST", f"/api/jobs/{job_id}/retry"),
                             ("DELETE", f"/api/jobs/{job_id}"),
                             ("GET", f"/api/jobs/{job_id}/logs"),
                             ("GET", f"/api/jobs/{job_id}/outputs/x"),
                             ("GET", f"/api/jobs/{job_id}/events")]:
            response = bob.request(method, path)
            assert_error(response, 404, "no job with that id")
            assert response.content.isascii(), response.content


@pytest.mark.parametrize(("params", "field"), [
    ({"kind": "noop\x00"}, "kind"), ({"owner": "bob\x00"}, "owner"), ({"cursor": "\x00"}, "cursor"),
    ("kind=%ed%a0%80", "kind"), ("cursor=%ff", "cursor"), ("state=queued%00", "state"),
    ("limit=5&x%00=1", "x\\x00"),
])
def test_nuls_and_invalid_text_in_query_strings_are_refused_naming_the_parameter(
        alice, params, field):
    for path in ("/api/jobs", "/api/queue", "/api/events"):
        # A string is the query exactly as sent (httpx would escape its "%").
        response = alice.get(f"{path}?{params}") if isinstance(params, str) else \
            alice.get(path, params=params)
        assert_error(response, 422, f"{field}: must")
        assert response.json()["error"]["field"] == field


@pytest.mark.parametrize("body", [
    {"kind": "noop", "unique_key": "nul\x00key"}, {"kind": "noop\x00"},
    {"kind": "noop", "args": {"a\x00": 1}}, {"kind": "noop", "run_at": "2030-01-01\x00"},
])
def test_nuls_in_body_fields_are_refused_naming_the_field(bob, body):
    before = total_jobs_of(bob)
    response = bob.post("/api/jobs", json=body)
    assert_error(response, 422, "must not contain NUL characters")
    assert response.json()["error"]["field"]
    login = bob.post("/api/auth/token", json={"username": "bob\x00", "password": "x"})
    assert_error(login, 422, "username: must not contain NUL characters")
    assert total_jobs_of(bob) == before


def total_jobs_of(http: httpx.Client) -> int:
    return len(http.get("/api/jobs", params={"limit": 500}).json()["jobs"])


# --- moves: cancel, retry, delete ---------------------------------------------------------

def test_cancel_a_queued_job(bob):
    job = submit(bob, "steps", run_at=later())

    response = bob.post(f"/api/jobs/{job['id']}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert response.json()["position"] is None
    assert bob.get(f"/api/jobs/{job['id']}").json()["state"] == "cancelled"


def test_cancel_a_running_job_stops_its_process(bob):
    seconds = "317.25"
    job = submit(bob, "sleep", {"seconds": seconds})
    wait_for(bob, job["id"], "running")
    [proc] = wait_until(lambda: sleep_processes(seconds), "the sleep process")

    response = bob.post(f"/api/jobs/{job['id']}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["state"] in ("running", "cancelled")  # running: still stopping
    job = wait_for(bob, job["id"], *FINAL)
    assert job["state"] == "cancelled"
    assert sleep_processes(seconds) == [], "the process is gone once the job is cancelled"
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


def test_cancel_a_finished_job_is_409(bob):
    job = submit(bob, "noop")
    wait_for(bob, job["id"], "completed")

    assert_error(bob.post(f"/api/jobs/{job['id']}/cancel"), 409, "completed")
    assert bob.get(f"/api/jobs/{job['id']}").json()["state"] == "completed"


def test_retry_queues_failed_and_cancelled_jobs_but_not_completed_ones(bob):
    failed = submit(bob, "fail", {"code": 4})
    failed = wait_for(bob, failed["id"], *FINAL)
    assert failed["state"] == "failed" and failed["attempt"] == 3
    assert "boom x" in failed["error"]
    cancelled = submit(bob, "steps", run_at=later())
    bob.post(f"/api/jobs/{cancelled['id']}/cancel")
    completed = submit(bob, "noop")
    wait_for(bob, completed["id"], "completed")

    retried = bob.post(f"/api/jobs/{failed['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"] == "queued"
    assert retried.json()["error"] is None
    again = wait_for(bob, failed["id"], *FINAL)
    assert again["state"] == "failed" and again["started_at"] != failed["started_at"]

    retried = bob.post(f"/api/jobs/{cancelled['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"] == "queued"
    wait_for(bob, cancelled["id"], "completed")

    assert_error(bob.post(f"/api/jobs/{completed['id']}/retry"), 409, "completed")


def test_delete_refuses_a_running_job_and_removes_a_finished_one(server, bob):
    seconds = "318.5"
    running = submit(bob, "sleep", {"seconds": seconds})
    wait_for(bob, running["id"], "running")
    finished = submit(bob, "report")
    wait_for(bob, finished["id"], "completed")
    job_dir = server.folder / "data" / "jobs" / finished["id"]
    assert (job_dir / "report.txt").is_file()

    assert_error(bob.delete(f"/api/jobs/{running['id']}"), 409, "running")
    assert bob.get(f"/api/jobs/{running['id']}").json()["state"] == "running"

    response = bob.delete(f"/api/jobs/{finished['id']}")
    assert response.status_code == 204, response.text
    assert_error(bob.get(f"/api/jobs/{finished['id']}"), 404, "no job")
    assert_error(bob.get(f"/api/jobs/{finished['id']}/logs"), 404, "no job")
    assert not job_dir.exists(), "its outputs go with it"
    assert_error(bob.delete(f"/api/jobs/{finished['id']}"), 404, "no job")

    bob.post(f"/api/jobs/{running['id']}/cancel")
    wait_for(bob, running["id"], "cancelled")


# --- logs and outputs --------------------------------------------------------------------

def test_logs_are_numbered_and_read_after_n(bob):
    job = submit(bob, "steps", {"count": 3, "delay": 0})
    wait_for(bob, job["id"], "completed")

    everything = bob.get(f"/api/jobs/{job['id']}/logs").json()
    assert [(x["n"], x["line"]) for x in everything["lines"]] == [
        (1, "progress=33 step 1"), (2, "progress=66 step 2"), (3, "progress=100 step 3")]
    assert everything["state"] == "completed"
    assert everything["next"] == 3

    rest = bob.get(f"/api/jobs/{job['id']}/logs", params={"after": 1}).json()
    assert [x["n"] for x in rest["lines"]] == [2, 3]
    none = bob.get(f"/api/jobs/{job['id']}/logs", params={"after": 3}).json()
    assert none["lines"] == [] and none["next"] == 3


def test_an_output_file_can_be_downloaded(bob):
    job = submit(bob, "report", {"text": "it works"})
    job = wait_for(bob, job["id"], "completed")

    assert [o["name"] for o in job["outputs"]] == ["report.txt"]
    response = bob.get(f"/api/jobs/{job['id']}/outputs/report.txt")
    assert response.status_code == 200
    assert response.text == "it works\n"
    assert_error(bob.get(f"/api/jobs/{job['id']}/outputs/nothing.txt"), 404, "no output")


@pytest.mark.parametrize("name", [
    "../../../jobgate.toml",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fjobgate.toml",
    "..%2f..%2f..%2fjobgate.toml",
    "%2e%2e/%2e%2e/%2e%2e/serve.log",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "{config}",
    "..",
])
def test_outputs_refuse_paths_outside_the_jobs_folder(server, bob, name):
    job = submit(bob, "report", {"text": "mine"})
    wait_for(bob, job["id"], "completed")
    name = name.format(config=server.config)
    assert (server.folder / "data" / "jobs" / job["id"] / "../../../jobgate.toml").resolve() \
        == server.config.resolve(), "the traversal would reach the server's config"

    status, body = raw_get(server, f"/api/jobs/{job['id']}/outputs/{name}", "bob")

    assert status == 404, body
    assert b"[server]" not in body and b"root:" not in body


def test_an_output_name_with_a_nul_or_too_long_is_a_404_that_escapes_it(bob):
    job = wait_for(bob, submit(bob, "report", {"text": "hi"})["id"], "completed")
    for name, shown in [("a%00b", "'a\\x00b'"), ("report.txt%00", "'report.txt\\x00'"),
                        ("a" * 5000, "…"), ("/".join(["a"] * 2100), "…"),
                        ("%ed%a0%80", "\\ufffd")]:
        response = bob.get(f"/api/jobs/{job['id']}/outputs/{name}")
        assert_error(response, 404, "has no output")
        assert shown in response.json()["error"]["message"]
        assert response.content.isascii() or "…" in shown


def test_nul_characters_in_a_jobs_output_are_kept_as_text(bob, backend):
    job = submit(bob, "nul")
    job = wait_for(bob, job["id"], *FINAL)
    # SQLite keeps a NUL as it is; PostgreSQL's text cannot hold one: it stores U+FFFD,
    # as the worker does for bytes that are not UTF-8.
    nul = "\ufffd" if backend.name == "postgresql" else "\x00"
    assert job["state"] == "failed", job
    assert f"oops{nul}!" in job["error"], job
    # A log line keeps no control character but tab (logtext.clean_line): a NUL goes.
    lines = [line["line"] for line in bob.get(f"/api/jobs/{job['id']}/logs").json()["lines"]]
    assert sorted(lines) == ["ab", "oops!", "progress=50 xy"], job


# --- queue, health, docs -----------------------------------------------------------------

def test_queue_stats_have_the_contracts_keys_and_sensible_values(start_server):
    server = start_server("[limits]\nmax_running = 3\nmemory_budget_mb = 2048\n"
                          "node_memory_budget_mb = 3000\n")
    with server.client("bob") as bob:
        first = bob.get("/api/queue").json()
        available = first.pop("memory_available_mb")
        [node] = first.pop("nodes")  # the embedded worker
        for key in ("throughput", "ended", "by_kind", "by_kind_window", "totals",
                    "started_at", "uptime_s", "limits"):
            first.pop(key)
        assert (node["slots"], node["running"], node["running_count"]) == (3, [], 0)
        assert first == {
            "queued": 0, "running": 0, "max_running": 3, "completed": 0, "failed": 0,
            "cancelled": 0, "memory_reserved_mb": 0, "memory_budget_mb": 2048,
            "throughput_per_min": 0, "avg_duration_s": None, "success_rate": None,
            "node_memory_budget_mb": 3000, "pressure": None, "running_rss_mb": 0,
            "running_peak_mb": 0, "waiting": 0,
            "paused": False, "paused_kinds": [], "drained_nodes": [],
        }
        assert 0 < available <= psutil.virtual_memory().total // 1048576
        ok = submit(bob, "steps", {"count": 2, "delay": 0})
        bad = submit(bob, "fail", {"code": 1})
        cancelled = submit(bob, "steps", run_at=later())
        bob.post(f"/api/jobs/{cancelled['id']}/cancel")
        submit(bob, "steps", run_at=later())
        wait_for(bob, ok["id"], "completed")
        wait_for(bob, bad["id"], "failed")

        stats = bob.get("/api/queue").json()

    assert set(stats) == STATS_KEYS
    assert (stats["queued"], stats["running"], stats["completed"], stats["failed"],
            stats["cancelled"]) == (1, 0, 1, 1, 1)
    assert stats["max_running"] == 3
    assert stats["memory_budget_mb"] == 2048
    assert stats["memory_reserved_mb"] == 0
    assert stats["throughput_per_min"] == 1
    assert stats["avg_duration_s"] >= 0
    assert stats["success_rate"] == pytest.approx(1 / 3)


def test_health_and_docs_answer_without_a_token(server):
    with server.client(None) as anonymous:
        health = anonymous.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"

        docs = anonymous.get("/docs")
        assert docs.status_code == 200
        assert "openapi" in docs.text.lower()
        schema = anonymous.get("/openapi.json").json()
        assert {"/api/jobs", "/api/jobs/{job_id}", "/api/queue"} <= set(schema["paths"])


# --- limits and priority -----------------------------------------------------------------

def test_queue_limits_refuse_with_429_and_retry_after(start_server):
    server = start_server("[limits]\nmax_queued = 2\nper_user_queued = 1\n")
    with server.client("bob") as bob, server.client("carol") as carol, \
            server.client("alice") as alice:
        body: dict[str, Any] = {"kind": "steps", "run_at": later()}
        first = submit(bob, **body)

        per_user = bob.post("/api/jobs", json=body)
        assert_error(per_user, 429, "queue full for bob: 1/1")
        assert int(per_user.headers["Retry-After"]) > 0

        submit(carol, **body)
        full = alice.post("/api/jobs", json=body)
        assert_error(full, 429, "queue full: 2/2")
        assert int(full.headers["Retry-After"]) > 0

        bob.post(f"/api/jobs/{first['id']}/cancel")
        assert alice.post("/api/jobs", json=body).status_code == 201, "room again"


def test_only_an_admin_may_raise_priority_above_the_kind_default(bob, alice):
    raised = bob.post("/api/jobs", json={"kind": "noop", "priority": 5})
    assert_error(raised, 403, "admin")

    lowered = bob.post("/api/jobs", json={"kind": "noop", "priority": -5})
    assert lowered.status_code == 201, lowered.text
    assert lowered.json()["priority"] == -5

    admin = alice.post("/api/jobs", json={"kind": "noop", "priority": 5})
    assert admin.status_code == 201, admin.text
    assert admin.json()["priority"] == 5


# --- bad input: every refusal is a 4xx in the contract's shape, never a 500 --------------

def _submit(kind: str, args: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"json": {"kind": kind, "args": args or {}, **fields}}


# Valid JSON for a valid job, only too big (the default limit is server.max_request_kb = 256).
_BIG = b'{"kind": "noop", "args": {}' + b" " * (5 * 1024 * 1024) + b"}"
_JSON = {"Content-Type": "application/json"}

# (user, method, path, request keywords, status, a piece of the message)
BAD_REQUESTS = [
    pytest.param(None, "GET", "/api/jobs", {}, 401, "missing", id="no token"),
    pytest.param(None, "POST", "/api/jobs", _submit("noop"), 401, "missing",
                 id="submit without token"),
    pytest.param("bob", "GET", "/api/jobs", {"headers": {"Authorization": "Bearer jg_nope"}},
                 401, "invalid token", id="bad token"),
    pytest.param("bob", "GET", "/api/queue", {"headers": {"Authorization": "Basic Ym9iOng="}},
                 401, "bearer", id="basic auth"),
    pytest.param("bob", "GET", "/api/jobs", {"headers": {"Authorization": "Bearer"}},
                 401, "bearer", id="bearer without token"),
    pytest.param("bob", "GET", "/api/jobs", {"headers": {"Authorization": "jg_abc"}},
                 401, "bearer", id="token without scheme"),
    pytest.param("bob", "POST", "/api/jobs", _submit("nope"), 422, "unknown kind 'nope'",
                 id="unknown kind"),
    pytest.param("bob", "POST", "/api/jobs", _submit("steps", {"bogus": 1}), 422,
                 "bogus: unknown argument", id="unknown argument"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fetch"), 422, "url: is required",
                 id="missing required argument"),
    pytest.param("bob", "POST", "/api/jobs", _submit("steps", {"count": "three"}), 422,
                 "count: expected an integer", id="string for integer"),
    pytest.param("bob", "POST", "/api/jobs", _submit("steps", {"count": 1.5}), 422,
                 "count: expected an integer", id="fraction for integer"),
    pytest.param("bob", "POST", "/api/jobs", _submit("steps", {"count": True}), 422,
                 "count: expected a number", id="boolean for integer"),
    pytest.param("bob", "POST", "/api/jobs", _submit("steps", {"count": 0}), 422,
                 "count: must be at least 1", id="below min"),
    pytest.param("bob", "POST", "/api/jobs", _submit("steps", {"delay": 11}), 422,
                 "delay: must be at most 10", id="above max"),
    pytest.param("bob", "POST", "/api/jobs", _submit("steps", {"count": 10**30}), 422,
                 "count: must be at most 1000", id="huge integer"),
    pytest.param("bob", "POST", "/api/jobs", _submit("steps", {"delay": "nan"}), 422,
                 "delay: must be a finite number", id="nan"),
    pytest.param("bob", "POST", "/api/jobs", _submit("convert", {"input": "a.mp4",
                                                                 "bitrate": "fast"}),
                 422, "bitrate: does not match the pattern", id="pattern mismatch"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fail", {"label": "-rf"}), 422,
                 "label: must not start with '-'", id="leading dash"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fail", {"label": "a\x00b"}), 422,
                 "label: must not contain nul", id="nul character"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fail", {"label": ["x"]}), 422,
                 "label: expected a string", id="list for string"),
    pytest.param("bob", "POST", "/api/jobs", _submit("convert", {"input": "../../jobgate.toml"}),
                 422, "input: must stay inside the input folder", id="path escapes input_dir"),
    pytest.param("bob", "POST", "/api/jobs", _submit("convert", {"input": "/etc/passwd"}),
                 422, "input: must stay inside the input folder", id="absolute path"),
    pytest.param("bob", "POST", "/api/jobs", _submit("convert", {"input": "missing.mp4"}),
                 422, "input: no such file", id="missing input file"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fetch", {"url": "http://127.0.0.1/x"}),
                 422, "url: host '127.0.0.1' is a private or local address", id="loopback url"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fetch", {"url": "http://localhost:8077/"}),
                 422, "private or local address", id="localhost url"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fetch", {"url": "http://10.0.0.1/"}),
                 422, "private or local address", id="private url"),
    pytest.param("bob", "POST", "/api/jobs",
                 _submit("fetch", {"url": "http://169.254.169.254/latest/meta-data/"}),
                 422, "private or local address", id="link-local url"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fetch", {"url": "http://[::1]/"}),
                 422, "private or local address", id="ipv6 loopback url"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fetch", {"url": "file:///etc/passwd"}),
                 422, "url: expected an http:// or https:// url", id="file url"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fetch", {"url": "http://100.64.0.1/"}),
                 422, "private or local address", id="carrier-grade nat url"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fetch", {"url": "http://[fec0::1]/"}),
                 422, "private or local address", id="site-local url"),
    pytest.param("bob", "POST", "/api/jobs",
                 _submit("fetch", {"url": "http://[2002:7f00:1::1]/"}),
                 422, "private or local address", id="6to4 of loopback url"),
    pytest.param("bob", "POST", "/api/jobs",
                 _submit("fetch", {"url": "http://[64:ff9b::a00:1]/"}),
                 422, "private or local address", id="nat64 of private url"),
    pytest.param("bob", "POST", "/api/jobs",
                 _submit("fetch", {"url": "http://127.0.0.1\\@8.8.8.8/"}),
                 422, "url: must not contain whitespace, backslashes", id="backslash url"),
    pytest.param("bob", "POST", "/api/jobs",
                 _submit("fetch", {"url": "http://8.8.8.8@127.0.0.1/"}),
                 422, "url: must not carry a user name", id="userinfo url"),
    pytest.param("bob", "POST", "/api/jobs", {"content": b'{"kind": "report", "args": '
                                              b'{"text": "\\ud800"}}', "headers": _JSON},
                 422, "text: must be valid unicode", id="lone surrogate in a string"),
    pytest.param("bob", "POST", "/api/jobs", {"content": b'{"kind": "convert", "args": '
                                              b'{"input": "a\\udfff.mp4"}}', "headers": _JSON},
                 422, "input: must be valid unicode", id="lone surrogate in a path"),
    pytest.param("bob", "POST", "/api/jobs", {"content": b'{"kind": "noop", "args": '
                                              b'{"\\ud800": 1}}', "headers": _JSON},
                 422, "unicode", id="lone surrogate in an argument name"),
    pytest.param("bob", "POST", "/api/jobs", _submit("convert", {"input": "a" * 300}), 422,
                 "input: is not a usable file name", id="path too long for the file system"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fail", {"code": 2**70}), 422,
                 "code: is out of range", id="integer past 64 bits"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fail", {"code": "\u00b2"}), 422,
                 "code: expected an integer", id="superscript digit"),
    pytest.param("bob", "POST", "/api/jobs", _submit("fail", {"code": "\u0661\u0662"}), 422,
                 "code: expected an integer", id="arabic-indic digits"),
    pytest.param("bob", "POST", "/api/jobs",
                 {"content": b'{"kind": "sleep", "args": {"seconds": 1e400}}', "headers": _JSON},
                 422, "seconds: must be a finite number", id="float overflowing to inf"),
    pytest.param("bob", "POST", "/api/jobs",
                 {"content": b'{"kind": "noop", "priority": 1e400}', "headers": _JSON},
                 422, "priority:", id="priority overflowing to inf"),
    pytest.param("bob", "POST", "/api/jobs", {"content": b'{"kind": "noop"}',
                                              "headers": {"Content-Type": "text/plain"}},
                 422, "object", id="wrong content type"),
    pytest.param("bob", "GET", f"/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/logs?after={2**63}", {},
                 422, "after:", id="after past 64 bits"),
    pytest.param("bob", "GET", "/api/jobs/%ff", {}, 404, "no job with that id",
                 id="invalid utf-8 job id"),
    pytest.param("bob", "GET", "/api/jobs?kind=%00", {}, 422, "kind: must not contain nul",
                 id="nul in a filter"),
    pytest.param("bob", "POST", "/api/jobs", {"content": b'{"kind": "noop",', "headers": _JSON},
                 400, "json", id="malformed json"),
    pytest.param("bob", "POST", "/api/jobs", {"content": b"\xff\xfe\x00", "headers": _JSON},
                 400, "pars", id="not utf-8"),
    pytest.param("bob", "POST", "/api/jobs", {"json": ["noop"]}, 422, "object",
                 id="json array"),
    pytest.param("bob", "POST", "/api/jobs", {"json": "noop"}, 422, "object",
                 id="json string"),
    pytest.param("bob", "POST", "/api/jobs", {"content": b"", "headers": _JSON}, 422,
                 "required", id="empty body"),
    pytest.param("bob", "POST", "/api/jobs", {"json": {"args": {}}}, 422, "kind: field required",
                 id="no kind"),
    pytest.param("bob", "POST", "/api/jobs", {"json": {"kind": 7}}, 422, "kind:",
                 id="kind not a string"),
    pytest.param("bob", "POST", "/api/jobs", {"json": {"kind": "noop", "args": [1]}}, 422,
                 "args:", id="args not an object"),
    pytest.param("bob", "POST", "/api/jobs", _submit("noop", owner="alice"), 422,
                 "owner: extra inputs are not permitted", id="extra field"),
    pytest.param("bob", "POST", "/api/jobs", _submit("noop", priority=10**30), 422,
                 "priority:", id="huge priority"),
    pytest.param("bob", "POST", "/api/jobs", _submit("noop", priority="high"), 422,
                 "priority:", id="priority not a number"),
    pytest.param("bob", "POST", "/api/jobs", _submit("noop", run_at="tomorrow"), 422,
                 "run_at: expected an iso-8601 time", id="bad run_at"),
    pytest.param("bob", "POST", "/api/jobs", _submit("noop", run_at=1e300), 422, "run_at",
                 id="run_at far beyond any date"),
    pytest.param("bob", "POST", "/api/jobs",
                 {"content": b'{"kind": "noop", "run_at": Infinity}', "headers": _JSON}, 422,
                 "run_at", id="run_at infinity"),
    pytest.param("bob", "POST", "/api/jobs", _submit("noop", run_at=True), 422, "run_at",
                 id="run_at true"),
    pytest.param("bob", "POST", "/api/jobs", _submit("noop", unique_key=""), 422,
                 "unique_key:", id="empty unique_key"),
    pytest.param("bob", "POST", "/api/jobs",
                 {**_submit("noop"), "headers": {"Idempotency-Key": "k" * 201}}, 422,
                 "idempotency-key", id="huge idempotency key"),
    pytest.param("bob", "POST", "/api/jobs",
                 {**_submit("noop"), "headers": {"Idempotency-Key": ""}}, 422,
                 "idempotency-key", id="empty idempotency key"),
    pytest.param("bob", "POST", "/api/jobs",
                 {"content": b'{"kind": "noop", "args": {"a": ' + b"[" * 50_000 + b"]" * 50_000
                  + b"}}", "headers": _JSON}, 400, "pars", id="deeply nested json"),
    pytest.param("bob", "POST", "/api/clean", {"json": {"older_than_s": -1}}, 422,
                 "older_than_s:", id="negative clean age"),
    pytest.param("bob", "POST", "/api/jobs", {"content": _BIG, "headers": _JSON}, 413,
                 "256 KB", id="5 MB body"),
    pytest.param("bob", "POST", "/api/jobs", {"chunks": _BIG, "headers": _JSON}, 413,
                 "256 KB", id="5 MB chunked body"),
    pytest.param("bob", "GET", "/api/jobs?state=bogus", {}, 422, "state:",
                 id="state filter not a state"),
    pytest.param("bob", "GET", "/api/jobs?limit=0", {}, 422, "limit:", id="limit 0"),
    pytest.param("bob", "GET", "/api/jobs?limit=100000", {}, 422, "limit:",
                 id="limit 100000"),
    pytest.param("bob", "GET", "/api/jobs?limit=ten", {}, 422, "limit:", id="limit a word"),
    pytest.param("bob", "GET", "/api/jobs?cursor=" + "Z" * 65, {}, 422, "cursor:",
                 id="huge cursor"),
    pytest.param("bob", "GET", "/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV", {}, 404, "no job",
                 id="unknown job id"),
    pytest.param("bob", "GET", "/api/jobs/" + "A" * 5000, {}, 404, "no job",
                 id="very long job id"),
    pytest.param("bob", "GET", "/api/jobs/%00", {}, 404, "no job", id="nul job id"),
    pytest.param("bob", "POST", "/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel", {}, 404,
                 "no job", id="cancel unknown job"),
    pytest.param("bob", "DELETE", "/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV", {}, 404, "no job",
                 id="delete unknown job"),
    pytest.param("bob", "GET", "/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/logs?after=-1", {}, 422,
                 "after:", id="negative after"),
    pytest.param("bob", "GET", "/api/nothing", {}, 404, "not found", id="unknown route"),
    pytest.param(None, "GET", "/nothing/at/all", {}, 404, "not found",
                 id="unknown route without token"),
    pytest.param("bob", "PUT", "/api/jobs", _submit("noop"), 405, "method not allowed",
                 id="wrong method"),
    pytest.param("bob", "DELETE", "/api/queue", {}, 405, "method not allowed",
                 id="delete the queue"),
]


def _request_of(values: Sequence[object]) -> tuple[str | None, str, str, dict[str, Any]]:
    """The request of a BAD_REQUESTS case (its first four values), with their types."""
    user, method, path, request_kw = values[:4]
    assert user is None or isinstance(user, str), values
    assert isinstance(method, str) and isinstance(path, str), values
    assert isinstance(request_kw, dict), values
    return user, method, path, request_kw


def _send(server: Server, user: str | None, method: str, path: str,
          request: dict[str, Any]) -> httpx.Response:
    request = dict(request)
    if "chunks" in request:  # no Content-Length: sent with Transfer-Encoding: chunked
        body = request.pop("chunks")
        request["content"] = (body[i:i + 65536] for i in range(0, len(body), 65536))
    with server.client(user) as http:
        return http.request(method, path, **request)


@pytest.mark.parametrize(("user", "method", "path", "request_kw", "status", "message"),
                         BAD_REQUESTS)
def test_bad_input_is_refused_with_a_4xx_naming_the_problem(
        server, user, method, path, request_kw, status, message):
    (server.folder / "input" / "a.mp4").write_bytes(b"video")
    before = total_jobs(server)

    response = _send(server, user, method, path, request_kw)

    assert_error(response, status, message)
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert total_jobs(server) == before, "a refused request creates no job"


def test_the_server_survives_every_bad_input_and_loses_nothing(server, bob, carol):
    (server.folder / "input" / "a.mp4").write_bytes(b"video")
    done = submit(bob, "steps", {"count": 2, "delay": 0})
    done = wait_for(bob, done["id"], "completed")
    waiting = submit(carol, "steps", run_at=later())
    before = total_jobs(server)

    for case in BAD_REQUESTS:  # each one's answer is checked by the test above
        _send(server, *_request_of(case.values))

    with server.client(None) as anonymous:
        assert anonymous.get("/health").json()["status"] == "ok"
    assert bob.get(f"/api/jobs/{done['id']}").json() == done
    assert carol.get(f"/api/jobs/{waiting['id']}").json()["state"] == "queued"
    assert done["id"] in {j["id"] for j in bob.get("/api/jobs").json()["jobs"]}
    # Still takes work: a new job runs to the end.
    fresh = submit(bob, "noop")
    wait_for(bob, fresh["id"], "completed")
    assert total_jobs(server) >= before + 1
    carol.post(f"/api/jobs/{waiting['id']}/cancel")

