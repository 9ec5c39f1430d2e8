"""jobgate's own log (logs.py): one line per job transition, by the process that made it,
in JSON lines or readable text; pressure and limit lines; and never a secret in any line.

The servers here are real `jobgate serve` processes (and, on PostgreSQL, two `jobgate
worker` processes beside an API-only server); their logs are read back when they stop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import TEST_KINDS, Server, free_port, wait_job
from jobgate import logs
from jobgate import worker as worker_module
from jobgate.config import ConfigError, LimitsSettings, load_settings
from jobgate.model import Event, EventType

JSON = '[logging]\nformat = "json"\n'
ENDS = {"job.retrying", "job.completed", "job.failed", "job.cancelled"}


class Workers:
    """`jobgate worker --name NAME` processes on a server's configuration."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        env = {**os.environ, "JOBGATE_CONFIG": str(self.server.config)}
        with self.log(name).open("wb") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "jobgate", "worker", "--name", name, "--slots", "2"],
                cwd=self.server.folder, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> Path:
        return self.server.folder / f"{name}.log"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers() -> Iterator[list[Workers]]:
    made: list[Workers] = []
    yield made
    for w in made:
        w.stop()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a log as JSON: a line that is not fails the test."""
    out = []
    for line in text.splitlines():
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(parsed, dict), line
        out.append(parsed)
    return out


def submit(http: httpx.Client, kind: str, **body: Any) -> str:
    response = http.post("/api/jobs", json={"kind": kind, **body})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def run_the_jobs(server: Server) -> dict[str, str]:
    """Jobs that complete, fail after retries, and are cancelled running and queued: their
    ids by what they do, once each is over."""
    with server.client("alice") as alice, server.client("bob") as bob:
        return _run_the_jobs(alice, bob)


def _run_the_jobs(alice: httpx.Client, bob: httpx.Client) -> dict[str, str]:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    ids = {
        "complete": submit(alice, "noop"),
        "fail": submit(bob, "fail", args={"label": "x", "code": 3}),
        "cancel_running": submit(alice, "sleep", args={"seconds": 60}),
        "cancel_queued": submit(bob, "noop", run_at=later),
    }
    wait_job(alice, ids["cancel_running"], "running")
    for name in ("cancel_running", "cancel_queued"):
        assert alice.post(f"/api/jobs/{ids[name]}/cancel").status_code == 200
    wait_job(alice, ids["complete"], "completed")
    wait_job(alice, ids["fail"], "failed")
    for name in ("cancel_running", "cancel_queued"):
        wait_job(alice, ids[name], "cancelled")
    return ids


EXPECTED = {
    "complete": ["job.queued", "job.started", "job.completed"],
    "fail": ["job.queued", "job.started", "job.retrying", "job.started", "job.retrying",
             "job.started", "job.failed"],
    "cancel_running": ["job.queued", "job.started", "job.cancelled"],
    "cancel_queued": ["job.queued", "job.cancelled"],
}
OWNERS = {"complete": "alice", "fail": "bob", "cancel_running": "alice",
          "cancel_queued": "bob"}
KINDS = {"complete": "noop", "fail": "fail", "cancel_running": "sleep", "cancel_queued": "noop"}


def check_transitions(lines: list[dict[str, Any]], ids: dict[str, str],
                      api_node: str, run_nodes: set[str]) -> None:
    """One line per transition of each job, in order, with the right fields: the API node
    logs the submits and the queued job's cancel; the node that ran a job its runs."""
    by_job: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if line.get("logger") == logs.TRANSITIONS:
            by_job.setdefault(line["job_id"], []).append(line)
    assert set(by_job) == set(ids.values()), by_job
    for name, job_id in ids.items():
        got = sorted(by_job[job_id], key=lambda line: line["timestamp"])
        assert [line["event"] for line in got] == EXPECTED[name], (name, got)
        started_attempt = 0
        ran_on = None
        for line in got:
            assert line["job_id"] == job_id and line["kind"] == KINDS[name]
            assert line["owner"] == OWNERS[name], line
            assert line["state"] == {"job.started": "running", "job.retrying": "queued"}.get(
                line["event"], line["event"].removeprefix("job.")), line
            assert line["level"] == ("warning" if line["event"] == "job.failed" else "info")
            assert "args" not in line and "result" not in line
            if line["event"] == "job.started":
                assert line["attempt"] == started_attempt + 1, got
                started_attempt = line["attempt"]
                assert line["node"] in run_nodes, line
                ran_on = line["node"]
                assert "duration_s" not in line
            elif line["event"] in ENDS and started_attempt:
                # A run's end: by the node that ran it, with how long it ran.
                assert line["attempt"] == started_attempt and line["node"] == ran_on, got
                assert isinstance(line["duration_s"], float | int) and line["duration_s"] >= 0
            else:  # submitted, or cancelled while queued: by the API node, no duration
                assert line["node"] == api_node and "duration_s" not in line, line
        if name == "fail":
            failed = got[-1]
            assert failed["error"] == "exit code 3: boom x" and failed["message"] == "failed"
            assert all("retrying in" in line["message"] for line in got
                       if line["event"] == "job.retrying")
        if name == "cancel_running":
            assert got[-1]["duration_s"] > 0  # measured from its start, not left out


def node_of(proc: subprocess.Popen[bytes]) -> str:
    return f"{socket.gethostname()}:{proc.pid}"


def test_one_json_line_per_transition(tmp_path: Path, backend: Any,
                                      workers: list[Workers]) -> None:
    """SQLite: `jobgate serve` runs the jobs itself. PostgreSQL: an API-only server and two
    worker nodes, which all hear every event: each transition is still logged once, in all."""
    server = Server(tmp_path, JSON + TEST_KINDS, backend.new_url(tmp_path))
    server.add_users()
    pg = backend.name == "postgresql"
    server.start(*(["--no-worker"] if pg else []))
    try:
        if pg:
            nodes = Workers(server)
            workers.append(nodes)
            nodes.start("w1")
            nodes.start("w2")
        assert server.proc is not None
        api_node = node_of(server.proc)
        ids = run_the_jobs(server)
    finally:
        server.stop()
        for w in workers:
            w.stop()
    texts = [server.log.read_text()] + [w.log(n).read_text() for w in workers for n in w.procs]
    lines = [line for text in texts for line in json_lines(text)]
    check_transitions(lines, ids, api_node, {"w1", "w2"} if pg else {api_node})
    # Every log has its start line with the limits in force, and the CLI's own lines are
    # JSON lines too.
    starts = [line for line in lines if line["event"] == "limits"]
    assert len(starts) == len(texts)
    assert all(s["limits"]["max_running"] == 2 for s in starts), starts
    assert any(line["event"].startswith("serving on http://") for line in lines)
    if pg:
        assert {s["role"] for s in starts} == {"serve", "worker"}
        assert not [line for line in json_lines(texts[0])
                    if line.get("event") == "job.started"]  # the API node ran nothing


@pytest.mark.sqlite_only("the format, not the backend")
def test_text_format_gives_readable_lines(tmp_path: Path) -> None:
    server = Server(tmp_path, TEST_KINDS)
    server.add_users()
    server.start()
    try:
        with server.client() as http:
            job_id = submit(http, "noop")
            wait_job(http, job_id, "completed")
    finally:
        server.stop()
    text = server.log.read_text()
    assert any(line.startswith("jobgate: serving on http://")  # as it was printed before
               for line in text.splitlines()), text
    done = [line for line in text.splitlines() if "job.completed" in line]
    assert len(done) == 1, text
    line = done[0]
    assert not line.startswith("{") and "[info" in line and "[jobgate.jobs]" in line
    for field in (f"job_id={job_id}", "kind=noop", "owner=alice", "state=completed",
                  "attempt=1", "duration_s=", "node="):
        assert field in line, line
    datetime.fromisoformat(line.split()[0])  # it starts with its time


# --- secrets --------------------------------------------------------------------------
SECRET_KINDS = TEST_KINDS + """
[kinds.vault]
argv = ["sh", "-c", "exit $1", "{key}", "{code}"]
[kinds.vault.args]
key = { type = "string" }
code = { type = "integer", default = 0 }
"""
WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LWtleS1vZi10aGUtd2ViaG9vay10ZXN0cw=="
ARG_SECRET = "argument-secret-4f1c"
BAD_PASSWORD = "not-the-password-91ab"


@pytest.mark.sqlite_only("what is logged is the same on both")
def test_no_secret_is_ever_logged(tmp_path: Path) -> None:
    """A password, an API token, a login JWT, a stream ticket, a secret argument, the
    webhook secret and the webhook URL's token, all used, with every line at debug and the
    access log on: none of them is anywhere in the log."""
    closed = free_port()  # nothing listens: each webhook attempt fails, and is logged
    hook = f"http://127.0.0.1:{closed}/hook?token=hook-query-token"
    config = (f'[logging]\nformat = "json"\nlevel = "debug"\naccess = true\n'
              f'[webhooks]\nsecret = "{WEBHOOK_SECRET}"\nurl = "{hook}"\n'
              f'backoff = ["1s"]\n')
    server = Server(tmp_path, config + SECRET_KINDS)
    server.add_users()
    server.start("--log-level", "debug")
    secrets = [WEBHOOK_SECRET, ARG_SECRET, BAD_PASSWORD, "alice-password", "hook-query-token",
               *server.tokens.values()]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as anon, \
                server.client("bob") as bob:
            ok, bad = use_every_secret(server, anon, bob, secrets)
    finally:
        server.stop()
    text = server.log.read_text()
    lines = json_lines(text)
    assert any(line.get("logger") == "uvicorn.access" for line in lines)  # it was on
    assert any("ticket=[redacted]" in line["event"] for line in lines), text
    for secret in secrets:
        assert secret not in text, f"{secret!r} is in the log"
    assert {line.get("job_id") for line in lines if line.get("logger") == logs.TRANSITIONS} \
        == {ok, bad}


def use_every_secret(server: Server, anon: httpx.Client, bob: httpx.Client,
                     secrets: list[str]) -> tuple[str, str]:
    login = anon.post("/api/auth/token", json={"username": "alice",
                                               "password": "alice-password"})
    assert login.status_code == 200, login.text
    jwt = login.json()["token"]
    secrets.append(jwt)
    assert anon.post("/api/auth/token", json={"username": "alice",
                                              "password": BAD_PASSWORD}).status_code == 401
    with server.client("alice") as alice:
        assert alice.get("/api/jobs").status_code == 200  # an API token
    with httpx.Client(base_url=server.url, timeout=30,
                      headers={"Authorization": f"Bearer {jwt}"}) as by_jwt:
        ticket = by_jwt.post("/api/auth/ticket").json()["ticket"]
        secrets.append(ticket)
        with anon.stream("GET", f"/api/events?ticket={ticket}") as stream:
            assert stream.status_code == 200
        # A used ticket again, and a bad token: both refused, both logged as requests.
        assert anon.get(f"/api/events?ticket={ticket}").status_code == 401
        secrets.append("jg_wrongtoken123456")
        assert anon.get("/api/jobs", headers={"Authorization": "Bearer jg_wrongtoken123456"}
                        ).status_code == 401
        ok = submit(by_jwt, "vault", args={"key": ARG_SECRET})
        bad = submit(bob, "vault", args={"key": ARG_SECRET, "code": 4})
        wait_job(by_jwt, ok, "completed")
        wait_job(by_jwt, bad, "failed")
    # The webhooks are tried (and fail: nothing listens) before the server stops.
    deadline = time.monotonic() + 30
    while "attempt 1 failed" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.1)
    return ok, bad


def test_redact_rewrites_anything_shaped_like_a_credential() -> None:
    cases = {
        "Authorization: Bearer abc.def-123": "Authorization: [redacted]",
        "got Bearer abc.def-123 here": "got Bearer [redacted] here",
        "token jg_AbCdEfGh12345678_x": "token [redacted]",
        "GET /api/events?ticket=T0k3n&last_event_id=5 HTTP/1.1":
            "GET /api/events?ticket=[redacted]&last_event_id=5 HTTP/1.1",
        "/api/x?a=1&signature=abcd": "/api/x?a=1&signature=[redacted]",
        "postgresql://jobgate:pw123@db/jobs": "postgresql://jobgate:****@db/jobs",
        "key " + WEBHOOK_SECRET: "key [redacted]",
        "jwt eyJhbGciOi.eyJzdWIiOiJh.sig-Nature_1": "jwt [redacted]",
        # The screen before the patterns is as blind to case as they are.
        "COOKIE: SID=AbCd1234": "COOKIE: [redacted]",
        "got BEARER XyZ.123 here": "got BEARER [redacted] here",
        "nothing secret: job 01ABC failed (exit code 3)":
            "nothing secret: job 01ABC failed (exit code 3)",
    }
    for text, shown in cases.items():
        assert logs.redact(text) == shown, text


# --- settings -------------------------------------------------------------------------
def test_console_line_is_what_structlogs_console_renderer_writes() -> None:
    import structlog

    renderer = structlog.dev.ConsoleRenderer(
        colors=False, pad_event_to=0, exception_formatter=structlog.dev.plain_traceback)
    head: dict[str, Any] = {"timestamp": "2026-12-04T00:39:48.944890Z", "logger": "jobgate.jobs"}
    values: list[Any] = ["plain", "two words", "a=b", "tab\there", "line\nbreak", 'say "hi"',
                         "it's", "", "ünïcödé ✓", None, 0, 3, -1.5, 0.1, True, 10**20, [1, "x"],
                         {"k": "v"}, ("t",)]
    cases = [{**head, "level": level, "event": event} for level in
             ("debug", "info", "warning", "error", "critical") for event in
             ("job.started", "jobgate: serving on http://x", "")]
    cases += [{**head, "level": "info", "event": "job.completed", "job_id": "01J", "zz": v,
               "attempt": 1, "aa": v} for v in values]
    cases.append({"level": "info", "event": "no time, no logger", "message": "x y"})
    cases.append({**head, "level": "warning", "event": "e", "logger_name": "other"})
    for event in cases:
        assert logs.console_line(event) == renderer(None, "", dict(event)), event


def test_logging_settings_are_checked_and_overridable_by_the_environment() -> None:
    settings = load_settings(env={"JOBGATE_LOGGING_FORMAT": "json",
                                  "JOBGATE_LOGGING_LEVEL": "warning"})
    assert (settings.logging.format, settings.logging.level) == ("json", "warning")
    assert load_settings(env={}).logging == logs.LoggingSettings("text", "info", None, False)
    for env, key in (({"JOBGATE_LOGGING_FORMAT": "xml"}, "logging.format"),
                     ({"JOBGATE_LOGGING_LEVEL": "loud"}, "logging.level"),
                     ({"JOBGATE_LOGGING_NOPE": "1"}, "logging.nope: unknown key")):
        with pytest.raises(ConfigError, match=key):
            load_settings(env=env)


def test_a_bad_logging_format_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "jobgate.toml"
    config.write_text('[logging]\nformat = "xml"\n')
    done = subprocess.run([sys.executable, "-m", "jobgate", "serve", "--port", str(free_port())],
                          cwd=tmp_path, env={**os.environ, "JOBGATE_CONFIG": str(config)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jobgate: logging.format: must be 'text' or 'json', got 'xml'"], done.stderr


def test_the_log_file_setting_writes_there(tmp_path: Path) -> None:
    settings = load_settings(env={"JOBGATE_LOGGING_FILE": str(tmp_path / "logs" / "j.log"),
                                  "JOBGATE_LOGGING_FORMAT": "json"})
    root = logging.getLogger()
    before = list(root.handlers), root.level, logging.getLogger("jobgate").level
    try:
        logs.configure(settings.logging)
        logging.getLogger("jobgate.test").warning("hello %s", "there", exc_info=False)
    finally:
        for handler in root.handlers[:]:
            if handler not in before[0]:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(before[1])
        logging.getLogger("jobgate").setLevel(before[2])
    [line] = json_lines((tmp_path / "logs" / "j.log").read_text())
    assert (line["event"], line["level"], line["logger"]) == (
        "hello there", "warning", "jobgate.test")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_commits_transitions_travel_together_yet_are_a_line_each_at_its_level(
        tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "j.log"
    root = logging.getLogger()
    before = list(root.handlers), root.level, logging.getLogger("jobgate").level
    for handler in before[0]:  # pytest's own capture: the one handler must be jobgate's
        root.removeHandler(handler)
    base = {"kind": "k", "attempt": 1, "max_attempts": 1}
    try:
        logs.configure(logs.LoggingSettings(format=fmt, file=str(path)))
        assert logs._only_ours()
        log = logs.TransitionLog("n1")
        log([Event(1, EventType.QUEUED, 1.0, "j1", "ann", {**base, "state": "queued"}),
             Event(2, EventType.STARTED, 1.0, "j1", "ann", {**base, "state": "running"}),
             Event(3, EventType.PROGRESS, 1.0, "j1", "ann", {"progress": 5.0}),
             Event(4, EventType.FAILED, 3.5, "j1", "ann",
                   {**base, "state": "failed", "message": "m", "error": "boom"})])
        log([Event(5, EventType.COMPLETED, 4.0, "j2", "bob", {**base, "state": "completed"})])
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        for handler in before[0]:
            root.addHandler(handler)
        root.setLevel(before[1])
        logging.getLogger("jobgate").setLevel(before[2])
    lines = path.read_text().splitlines()
    expected = [("job.queued", "info", "j1"), ("job.started", "info", "j1"),
                ("job.failed", "warning", "j1"), ("job.completed", "info", "j2")]
    if fmt == "json":
        shown = json_lines("\n".join(lines))
        assert [(d["event"], d["level"], d["job_id"]) for d in shown] == expected
        assert shown[2]["error"] == "boom" and shown[2]["duration_s"] == 2.5
        assert len({d["timestamp"] for d in shown[:3]}) == 1  # one commit, one moment
    else:
        assert len(lines) == 4
        for line, (event, level, job_id) in zip(lines, expected, strict=True):
            stamp, rest = line.split(" ", 1)
            assert stamp.endswith("Z")
            assert rest.startswith(f"[{level:<9}] {event} [jobgate.jobs] ")
            assert f" job_id={job_id} " in rest


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of one of jobgate's log records."""
    fields: dict[str, Any] = vars(record)["jobgate_fields"]
    return fields


# --- pressure and limits --------------------------------------------------------------
def test_pressure_is_logged_when_it_starts_and_clears_only(caplog: Any) -> None:
    limits = LimitsSettings(min_free_memory_mb=10**9)
    seen: str | None = None
    caplog.set_level(logging.INFO, logger="jobgate")
    # What the claim loop measures, look after look: a line on each change only.
    for measured in (None, "memory pressure", "memory pressure", "memory pressure", None,
                     None, "load", "memory pressure"):
        logs.log_pressure(seen, measured, "node-1", limits)
        seen = measured
    said = [(r.getMessage(), fields_of(r)["pressure"]) for r in caplog.records]
    assert said == [("pressure: starting nothing new", "memory pressure"),
                    ("pressure cleared", None),
                    ("pressure: starting nothing new", "load"),
                    ("pressure: starting nothing new", "memory pressure")]
    first = fields_of(caplog.records[0])
    assert first["min_free_memory_mb"] == 10**9 and first["available_mb"] > 0
    assert first["node"] == "node-1" and caplog.records[0].levelname == "WARNING"


async def test_a_worker_under_memory_pressure_says_so_once(make_settings: Any,
                                                           open_queue: Any,
                                                           caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="jobgate")
    settings = make_settings("[limits]\nmin_free_memory_mb = 1000000000\n"
                             "[worker]\npoll_s = 0.2\n")
    queue, worker = await open_queue(settings)
    job, _ = await queue.submit("alice", "noop", {})
    deadline = time.monotonic() + 10
    while not [r for r in caplog.records if r.getMessage().startswith("pressure")]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    # A negative check: the claim loop looks again every _PRESSURE_CHECK_S meanwhile, still
    # under pressure, and says nothing more.
    await asyncio.sleep(2.5 * worker_module._PRESSURE_CHECK_S)
    lines = [r for r in caplog.records if r.getMessage().startswith("pressure")]
    assert len(lines) == 1 and fields_of(lines[0])["node"] == worker.name
    current = await queue.get(job.id)
    assert current is not None and current.state.value == "queued"  # nothing started


def test_limit_changes_name_each_changed_key(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="jobgate")
    logs.log_limits_changed({"max_running": 2, "max_queued": None},
                            {"max_running": 4, "max_queued": None}, by="alice", node="n1")
    logs.log_limits_changed({"max_running": 4}, {"max_running": 4}, by="alice")
    [record] = caplog.records
    assert record.getMessage() == "limits changed"
    assert fields_of(record) == {
        "node": "n1", "by": "alice", "changed": {"max_running": {"from": 2, "to": 4}}}


def test_transition_log_fields_without_a_database(caplog: Any) -> None:
    """The line of each state event; a progress or log event makes none."""
    caplog.set_level(logging.INFO, logger="jobgate")
    log = logs.TransitionLog("n1")
    base = {"kind": "k", "attempt": 1, "max_attempts": 2}
    log([Event(1, EventType.STARTED, 100.0, "j1", "ann", {**base, "state": "running"}),
         Event(2, EventType.PROGRESS, 100.5, "j1", "ann", {"progress": 5.0}),
         Event(3, EventType.FAILED, 102.25, "j1", "ann",
               {**base, "state": "failed", "message": "failed",
                "error": "exit code 1: first\nsecond " + "x" * 500})])
    assert [r.getMessage() for r in caplog.records] == ["job.started", "job.failed"]
    failed = fields_of(caplog.records[1])
    assert failed["duration_s"] == 2.25 and failed["error"] == "exit code 1: first"
    assert logs.first_line("y" * 500) == "y" * 199 + "…"
