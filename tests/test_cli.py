"""The real `jobgate` command against a real `jobgate serve`.

One server is shared by the module; each test looks only at the jobs it makes. Carol is
kept for the `clean` test, which deletes all of her finished jobs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import TEST_KINDS, Backend, Server, free_port, running_server, wait_job
from jobgate import cli

JOB_LINE = re.compile(r"^(?P<id>[0-9A-HJKMNP-TV-Z]{26}) (?P<state>queued|running|completed)")
UNKNOWN_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
STATS_KEYS = {
    "queued", "waiting", "running", "max_running", "completed", "failed", "cancelled",
    "memory_reserved_mb", "memory_budget_mb", "throughput_per_min", "avg_duration_s",
    "success_rate", "nodes",
    "node_memory_budget_mb", "memory_available_mb", "pressure", "running_rss_mb",
    "running_peak_mb", "paused", "paused_kinds", "drained_nodes",
    "throughput", "ended", "by_kind", "by_kind_window", "totals", "started_at", "uptime_s",
    "limits",
}
#: The keys `jobgate stats` shows in sections of their own, not one a line.
STATS_SECTIONS = {"nodes", "throughput", "ended", "by_kind", "by_kind_window", "totals",
                  "started_at", "uptime_s", "limits"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend
           ) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("cli"),
                        "[limits]\nmax_running = 4\n" + TEST_KINDS, backend) as srv:
        yield srv


@pytest.fixture
def bob(server: Server) -> Iterator[httpx.Client]:
    with server.client("bob") as http:
        yield http


def jobgate(server: Server, *args: str, user: str | None = "bob", input: str | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
    """Run `jobgate ARGS` in this process: the command's own `main`, with the server's
    environment (`env` adds or replaces variables) and folder, `input` as stdin, what it
    prints and its exit code captured. A process start costs more than most commands
    take; the tests of what only a process shows (exit codes through the interpreter,
    signals, the event-stream reader of --watch and --follow) use `jobgate_process`."""
    assert not {"--watch", "--follow", "serve", "worker"} & {*args[:1], *args[-1:]}, \
        "a command that streams or serves runs as a process: jobgate_process"
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_stdin = dict(os.environ), os.getcwd(), sys.stdin
    os.environ.clear()
    os.environ.update({**server.env(user), **env})
    os.chdir(server.folder)
    sys.stdin = io.StringIO(input or "")
    code: int = 0
    try:
        # The command leaves its HTTP connection to the process's exit to close: here,
        # the garbage collector closes it, without the warning an unclosed socket gives.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                cli.main(list(args))
            except SystemExit as exc:  # as the interpreter would exit with it
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            gc.collect()
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(["jobgate", *args], code, out.getvalue(), err.getvalue())


def jobgate_process(server: Server, *args: str, user: str | None = "bob",
                    input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m jobgate ARGS` in the server's folder; `env` adds or replaces variables."""
    return subprocess.run(
        [sys.executable, "-m", "jobgate", *args], env={**server.env(user), **env},
        cwd=server.folder, capture_output=True, text=True, input=input, timeout=60,
    )


def submitted(result: subprocess.CompletedProcess[str]) -> str:
    """The job id `jobgate submit` printed first."""
    return job_id_in(result.stdout)


def job_id_in(out: str) -> str:
    """The job id on the first line of what `jobgate submit` printed."""
    match = JOB_LINE.match(out.splitlines()[0])
    assert match, out
    return match["id"]


def later() -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- users and tokens --------------------------------------------------------------------

def test_user_add_and_token_give_a_working_api_token(server):
    added = jobgate_process(server, "user", "add", "dave", "--password-stdin",
                    input="correct horse battery\n", user=None)
    assert added.returncode == 0, added.stderr
    assert "dave" in added.stdout

    issued = jobgate_process(server, "token", "dave", user=None)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip().splitlines()[-1]
    assert token.startswith("jg_") and " " not in token

    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as dave:
        assert dave.get("/api/jobs").json() == {"jobs": [], "next": None}
        submitted_job = dave.post("/api/jobs", json={"kind": "noop"}).json()
        assert submitted_job["owner"] == "dave"
        assert dave.get("/api/jobs", params={"owner": "alice"}).status_code == 403

    listed = jobgate_process(server, "ls", JOBGATE_TOKEN=token)
    assert listed.returncode == 0, listed.stderr
    assert submitted_job["id"] in listed.stdout


def test_an_admin_made_by_user_add_sees_everyones_jobs(server, bob):
    job = bob.post("/api/jobs", json={"kind": "noop"}).json()
    assert jobgate(server, "user", "add", "erin", "--admin", user=None).returncode == 0
    token = jobgate(server, "token", "erin", user=None).stdout.strip().splitlines()[-1]

    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as erin:
        bobs = erin.get("/api/jobs", params={"owner": "bob"})
    assert bobs.status_code == 200
    assert job["id"] in {j["id"] for j in bobs.json()["jobs"]}


def test_each_token_is_new_and_the_old_ones_keep_working(server):
    first = jobgate(server, "token", "bob", user=None).stdout.strip().splitlines()[-1]
    second = jobgate(server, "token", "bob", user=None).stdout.strip().splitlines()[-1]

    assert first != second
    for token in (first, second, server.tokens["bob"]):
        assert jobgate(server, "ls", JOBGATE_TOKEN=token).returncode == 0


# --- jobs --------------------------------------------------------------------------------

def test_submit_prints_the_id_and_state(server, bob):
    result = jobgate(server, "submit", "steps", "count=2", "delay=0")

    assert result.returncode == 0, result.stderr
    job_id = submitted(result)
    job = bob.get(f"/api/jobs/{job_id}").json()
    assert job["owner"] == "bob"
    assert job["args"] == {"count": 2, "delay": 0}
    assert wait_job(bob, job_id, "completed", "failed")["state"] == "completed"


def test_submit_watch_follows_a_job_to_its_end(server, bob):
    result = jobgate_process(server, "submit", "steps", "count=4", "delay=0.2", "--watch")

    assert result.returncode == 0, result.stderr
    job_id = submitted(result)
    assert "completed" in result.stderr.splitlines()[-1]
    assert "100.0%" in result.stderr
    assert bob.get(f"/api/jobs/{job_id}").json()["state"] == "completed"


def test_submit_watch_exits_1_when_the_job_fails(server, bob):
    result = jobgate_process(server, "submit", "fail", "label=oops", "--watch")

    assert result.returncode == 1, result.stderr
    job_id = submitted(result)
    assert "boom oops" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert bob.get(f"/api/jobs/{job_id}").json()["state"] == "failed"


def test_ls_show_and_logs(server, bob):
    job = bob.post("/api/jobs", json={"kind": "steps", "args": {"count": 2, "delay": 0}}).json()
    wait_job(bob, job["id"], "completed")

    listed = jobgate(server, "ls")
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(job["id"])]
    assert row.split()[1:4] == ["steps", "bob", "completed"]
    assert jobgate(server, "ls", "--state", "queued").stdout.count(job["id"]) == 0
    as_json = json.loads(jobgate(server, "ls", "--json").stdout)
    assert job["id"] in {j["id"] for j in as_json["jobs"]}

    shown = jobgate(server, "show", job["id"])
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == job["id"]
    assert json.loads(shown.stdout)["state"] == "completed"

    logs = jobgate(server, "logs", job["id"])
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == ["progress=50 step 1", "progress=100 step 2"]


def test_ls_of_one_user_does_not_show_anothers_jobs(server, bob):
    job = bob.post("/api/jobs", json={"kind": "noop"}).json()

    assert job["id"] in jobgate(server, "ls", user="bob").stdout
    assert job["id"] not in jobgate(server, "ls", user="carol").stdout
    assert job["id"] in jobgate(server, "ls", "--owner", "bob", user="alice").stdout


def test_logs_follow_ends_when_the_job_ends(server, bob):
    job = bob.post("/api/jobs", json={"kind": "steps", "args": {"count": 5, "delay": 0.2}}
                   ).json()

    result = jobgate_process(server, "logs", job["id"], "--follow")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"progress={i * 20} step {i}" for i in range(1, 6)]
    assert bob.get(f"/api/jobs/{job['id']}").json()["state"] == "completed"


def test_logs_follow_prints_every_line_once_in_order_from_reads_and_events(server, bob):
    job = bob.post("/api/jobs", json={"kind": "steps", "args": {"count": 300, "delay": 0.01}}
                   ).json()
    deadline = time.monotonic() + 30
    while not bob.get(f"/api/jobs/{job['id']}/logs").json()["lines"]:  # some lines first
        assert time.monotonic() < deadline
        time.sleep(0.02)

    result = jobgate_process(server, "logs", job["id"], "--follow")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"progress={i * 100 // 300} step {i}" for i in range(1, 301)]


class Watching:
    """A `jobgate` command running in the background, its stderr collected line by line."""

    def __init__(self, server: Server, *args: str, user: str = "bob") -> None:
        # Ctrl-C as a terminal gives it, whatever this process inherited: a test run
        # started in the background by a shell has SIGINT ignored, and so would it.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobgate", *args], env=server.env(user), cwd=server.folder,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL))
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.stderr):
            assert self.proc.poll() is None, self.stderr
            assert time.monotonic() < deadline, f"no {text!r} in {self.stderr}"
            time.sleep(0.02)

    def finish(self, timeout_s: float = 60) -> tuple[int, str, list[str]]:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            out = self.proc.stdout.read()  # not communicate(): it would read stderr too
        self.proc.wait(timeout_s)
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return self.proc.returncode, out, self.stderr


def test_watch_shows_the_queue_position_then_progress_and_exits_0(start_server):
    srv = start_server("[limits]\nmax_running = 1\n")
    with srv.client("alice") as alice:
        blocker = alice.post("/api/jobs", json={"kind": "sleep", "args": {"seconds": 60}}
                             ).json()
        wait_job(alice, blocker["id"], "running")
        watch = Watching(srv, "submit", "steps", "count=4", "delay=0.1", "--watch")
        watch.wait_for("position 1")
        alice.post(f"/api/jobs/{blocker['id']}/cancel")
        code, out, err = watch.finish()
    assert code == 0, err
    assert JOB_LINE.match(out.splitlines()[0])
    assert any(line.startswith("queued") and "position 1" in line for line in err)
    assert any(line.startswith("running") for line in err)
    assert "100.0%" in err[-1] and err[-1].startswith("completed")
    assert "Traceback" not in "\n".join(err)


def test_ctrl_c_stops_watching_with_130_and_leaves_the_job_running(server, bob):
    watch = Watching(server, "submit", "sleep", "seconds=60", "--watch")
    watch.wait_for("running")
    watch.proc.send_signal(signal.SIGINT)
    code, out, err = watch.finish()
    job_id = job_id_in(out)
    assert code == 130, err
    assert "Traceback" not in "\n".join(err)
    assert bob.get(f"/api/jobs/{job_id}").json()["state"] == "running"
    bob.post(f"/api/jobs/{job_id}/cancel")


def test_ctrl_c_with_cancel_on_exit_cancels_the_job(server, bob):
    watch = Watching(server, "submit", "sleep", "seconds=60", "--watch", "--cancel-on-exit")
    watch.wait_for("running")
    watch.proc.send_signal(signal.SIGINT)
    code, out, err = watch.finish()
    job_id = job_id_in(out)
    assert code == 130, err
    assert any("cancelled" in line for line in err), err
    assert wait_job(bob, job_id, "cancelled")["state"] == "cancelled"


def test_watch_rides_out_a_server_restart(start_server):
    srv = start_server()
    watch = Watching(srv, "submit", "steps", "count=20", "delay=0.1", "--watch")
    watch.wait_for("running")
    srv.stop()  # the job is handed back to the queue, the stream ends
    srv.start()  # and runs again from the start
    code, _, err = watch.finish()
    assert code == 0, err
    assert err[-1].startswith("completed")


def test_cancel_and_retry(server, bob):
    job = bob.post("/api/jobs", json={"kind": "steps", "args": {"count": 1, "delay": 0},
                                      "run_at": later()}).json()

    cancelled = jobgate(server, "cancel", job["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.split() == [job["id"], "cancelled"]
    assert bob.get(f"/api/jobs/{job['id']}").json()["state"] == "cancelled"

    retried = jobgate(server, "retry", job["id"])
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith(f"{job['id']} queued")
    assert wait_job(bob, job["id"], "completed", "failed")["state"] == "completed"


def test_cancel_stops_a_running_job(server, bob):
    job = bob.post("/api/jobs", json={"kind": "sleep", "args": {"seconds": 300}}).json()
    wait_job(bob, job["id"], "running")

    result = jobgate(server, "cancel", job["id"])

    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] in ([job["id"], "cancelled"], [job["id"], "running"])
    assert wait_job(bob, job["id"], "cancelled", "completed", "failed")["state"] == "cancelled"


def test_stats_show_the_queue(server):
    text = jobgate(server, "stats")
    assert text.returncode == 0, text.stderr
    scalars, activity, by_kind, nodes, kinds = text.stdout.split("\n\n")
    assert {line.split()[0] for line in scalars.splitlines()} == STATS_KEYS - STATS_SECTIONS
    assert [line.split()[0] for line in activity.splitlines()] == \
        ["throughput", "ended,", "ended,", "since", "in", "uptime", "limits"]
    assert by_kind.splitlines()[1].split()[:2] == ["KIND", "JOBS"]
    head, columns, row = nodes.splitlines()  # the embedded worker is the one live node
    assert head == "live nodes: 1"
    assert columns.split() == ["NODE", "HOST", "SLOTS", "RUNNING", "JOBS_MB", "FREE_MB",
                               "HEARTBEAT"]
    name, host, slots, running, jobs_mb, free_mb, age, *ago = row.split()
    assert name.startswith(f"{host}:") and (slots, running, ago) == ("4", "0", ["s", "ago"])
    assert float(age) >= 0
    # As the node's last heartbeat measured them (a job may have run then).
    assert float(jobs_mb) >= 0 and int(free_mb) > 0
    assert kinds.split()[:2] == ["KIND", "ESTIMATE_MB"]

    as_json = jobgate(server, "stats", "--json")
    assert as_json.returncode == 0, as_json.stderr
    stats = json.loads(as_json.stdout)
    assert set(stats) == STATS_KEYS
    assert stats["max_running"] == 4


def test_stats_for_an_admin_print_no_json_of_the_admins_own_keys(server):
    # An admin's GET /api/queue adds by_owner and depth: dicts, not lines of `key value`.
    text = jobgate(server, "stats", user="alice")
    assert text.returncode == 0, text.stderr
    firsts = {line.split()[0] for line in text.stdout.splitlines() if line.strip()}
    assert not firsts & {"by_owner", "depth"}
    as_json = json.loads(jobgate(server, "stats", "--json", user="alice").stdout)
    assert {"by_owner", "depth"} <= set(as_json)


def test_health_exits_0_when_the_server_is_up_and_1_when_it_is_not(server):
    up = jobgate_process(server, "health")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["status"] == "ok"

    down = jobgate_process(server, "health", JOBGATE_URL=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert "cannot reach" in assert_one_line_error(down)


def test_clean_deletes_finished_jobs_of_the_caller(server, bob):
    with server.client("carol") as carol:
        done = [carol.post("/api/jobs", json={"kind": "noop"}).json()["id"] for _ in range(2)]
        waiting = carol.post("/api/jobs", json={"kind": "noop", "run_at": later()}).json()
        bobs = bob.post("/api/jobs", json={"kind": "noop"}).json()
        for job_id in done:
            wait_job(carol, job_id, "completed")
        wait_job(bob, bobs["id"], "completed")

        result = jobgate(server, "clean", "--older-than", "0s", user="carol")

        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "deleted 2 finished jobs"
        for job_id in done:
            assert carol.get(f"/api/jobs/{job_id}").status_code == 404
        assert carol.get(f"/api/jobs/{waiting['id']}").json()["state"] == "queued"
    assert bob.get(f"/api/jobs/{bobs['id']}").json()["state"] == "completed", \
        "someone else's jobs stay"

    kept = jobgate(server, "clean", "--older-than", "7d", user="bob")
    assert kept.stdout.strip() == "deleted 0 finished jobs"
    assert bob.get(f"/api/jobs/{bobs['id']}").status_code == 200


# --- errors: one line on stderr, a non-zero exit, never a traceback -----------------------

# (arguments, user, extra environment, stdin, exit code, a piece of the message)
# Errors the server (or the command, in its database) finds: on every backend.
CLI_ERRORS = [
    pytest.param(["ls"], "bob", {"JOBGATE_TOKEN": "jg_bogus"}, None, 1, "invalid token",
                 id="bad token"),
    pytest.param(["ls"], None, {}, None, 1, "missing authorization", id="no token"),
    pytest.param(["submit", "nope"], "bob", {}, None, 1, "unknown kind 'nope'",
                 id="unknown kind"),
    pytest.param(["submit", "steps", "count=abc"], "bob", {}, None, 1,
                 "count: expected an integer", id="bad argument"),
    pytest.param(["submit", "steps", "colour=red"], "bob", {}, None, 1,
                 "colour: unknown argument", id="unknown argument"),
    pytest.param(["submit", "noop", "--priority", "9"], "bob", {}, None, 1, "admin",
                 id="priority above the default"),
    pytest.param(["show", UNKNOWN_ID], "bob", {}, None, 1, f"no job {UNKNOWN_ID}",
                 id="show unknown job"),
    pytest.param(["logs", UNKNOWN_ID], "bob", {}, None, 1, "no job", id="logs unknown job"),
    pytest.param(["cancel", UNKNOWN_ID], "bob", {}, None, 1, "no job",
                 id="cancel unknown job"),
    pytest.param(["retry", "x" * 500], "bob", {}, None, 1, "no job", id="retry a long id"),
    pytest.param(["show", "../queue"], "bob", {}, None, 1, "no job",
                 id="show an id that is a path"),
    pytest.param(["user", "add", "bob"], None, {}, None, 1, "bob", id="duplicate user"),
    pytest.param(["token", "nobody"], None, {}, None, 1, "nobody", id="token for no user"),
]

# Errors the command finds before any database is read (arguments, environment, the
# configuration file, a busy port): the backend makes no difference to them.
LOCAL_CLI_ERRORS = [
    pytest.param(["ls"], "bob", {"JOBGATE_URL": "http://127.0.0.1:{free}"}, None, 1,
                 "cannot reach jobgate", id="no server"),
    pytest.param(["ls"], "bob", {"JOBGATE_URL": "http://[::1"}, None, 2, "JOBGATE_URL",
                 id="malformed JOBGATE_URL"),
    pytest.param(["ls"], "bob", {"JOBGATE_TOKEN": "t\u00f6ken"}, None, 2, "JOBGATE_TOKEN",
                 id="non-ascii token"),
    pytest.param(["submit", "steps", "count"], "bob", {}, None, 2, "expected key=value",
                 id="key without ="),
    pytest.param(["submit", "steps", "=3"], "bob", {}, None, 2, "expected key=value",
                 id="value without key"),
    pytest.param(["submit"], "bob", {}, None, 2, "kind", id="submit without kind"),
    pytest.param(["frobnicate"], "bob", {}, None, 2, "invalid choice", id="unknown command"),
    pytest.param(["ls", "--state", "done"], "bob", {}, None, 2, "invalid choice",
                 id="unknown state"),
    pytest.param(["ls", "--limit", "many"], "bob", {}, None, 2, "invalid int",
                 id="limit not a number"),
    pytest.param(["clean", "--older-than", "soon"], "bob", {}, None, 2, "--older-than",
                 id="bad --older-than"),
    pytest.param(["clean", "--older-than", "-1d"], "bob", {}, None, 2, "--older-than",
                 id="negative --older-than"),
    pytest.param(["serve", "--config", "bad.toml"], None, {}, None, 2, "limits.max_runing",
                 id="config with an unknown key"),
    pytest.param(["serve", "--config", "broken.toml"], None, {}, None, 2, "not valid toml",
                 id="config not toml"),
    pytest.param(["serve", "--config", "missing.toml"], None, {}, None, 2, "missing.toml",
                 id="config missing"),
    pytest.param(["serve", "--config", "busy.toml", "--port", "{port}"], None, {}, None, 1,
                 "{port}",
                 id="port in use"),
    pytest.param(["user", "add", "bad name!"], None, {}, None, 2, "bad user name",
                 id="bad user name"),
    pytest.param(["user", "add", "zed", "--password-stdin"], None, {}, "short\n", 2,
                 "at least 8 characters", id="short password"),
]


def _check_error(server: Server, args: list[str], user: str | None, env: dict[str, str],
                 stdin: str | None, code: int, message: str, in_a_process: bool = False
                 ) -> None:
    (server.folder / "bad.toml").write_text("[limits]\nmax_runing = 2\n")
    (server.folder / "broken.toml").write_text("[limits\nmax_running = 2\n")
    # A valid config with a database of its own, so a second `serve` touches no test's jobs.
    (server.folder / "busy.toml").write_text(
        f'[storage]\nurl = "sqlite:///{server.folder / "busy.db"}"\n'
        f'[server]\ndata_dir = "{server.folder / "busy-data"}"\n')
    fill = {"free": str(free_port()), "port": str(server.port)}
    args = [a.format(**fill) for a in args]
    env = {k: v.format(**fill) for k, v in env.items()}
    message = message.format(**fill)

    run = jobgate_process if in_a_process or args[0] == "serve" else jobgate
    result = run(server, *args, user=user, input=stdin, **env)

    line = assert_one_line_error(result)
    assert result.returncode == code, result.stderr
    assert message.lower() in line.lower(), line
    assert result.stdout == "" or args[0] == "serve", result.stdout


@pytest.mark.parametrize(("args", "user", "env", "stdin", "code", "message"), CLI_ERRORS)
def test_an_error_is_one_line_on_stderr_and_a_nonzero_exit(
        server, args, user, env, stdin, code, message):
    _check_error(server, args, user, env, stdin, code, message)


# The same errors from the real command, a few of each sort (its `serve` ones always are):
# the exit code and the one line through `python -m jobgate` and the interpreter's exit.
IN_A_PROCESS = ["bad token", "duplicate user", "non-ascii token", "unknown command"]


@pytest.mark.parametrize(("args", "user", "env", "stdin", "code", "message"), [
    p for p in CLI_ERRORS + LOCAL_CLI_ERRORS if p.id in IN_A_PROCESS])
def test_the_real_command_gives_the_same_one_line_errors(
        server, args, user, env, stdin, code, message):
    _check_error(server, args, user, env, stdin, code, message, in_a_process=True)


@pytest.mark.sqlite_only("found before any database is read: the backend makes no difference")
@pytest.mark.parametrize(("args", "user", "env", "stdin", "code", "message"), LOCAL_CLI_ERRORS)
def test_a_local_error_is_one_line_on_stderr_and_a_nonzero_exit(
        server, args, user, env, stdin, code, message):
    _check_error(server, args, user, env, stdin, code, message)


# --- migrate, and a database newer than this jobgate ---------------------------------------

def _run(folder: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m jobgate ARGS` in `folder`, with no configuration from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    return subprocess.run([sys.executable, "-m", "jobgate", *args], env=env, cwd=folder,
                          capture_output=True, text=True, timeout=60)


# What undoes each backend's latest migration: a database as the jobgate before it left it.
_UNDO_LATEST = {  # sqlite_012, postgres_010
    "sqlite": "ALTER TABLE nodes DROP COLUMN running_rss_mb; "
              "ALTER TABLE nodes DROP COLUMN memory_available_mb;",
    "postgres": "ALTER TABLE nodes DROP COLUMN running_rss_mb, DROP COLUMN memory_available_mb"}


async def _set_version(db_url: str, version: int, undo_latest: bool = False) -> None:
    """Make the database look migrated to `version` (as an older or a newer jobgate left it)."""
    if db_url.startswith("sqlite://"):
        with contextlib.closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as conn:
            if undo_latest:
                conn.executescript(_UNDO_LATEST["sqlite"])
            conn.execute(f"PRAGMA user_version = {version:d}")
            conn.commit()
        return
    import psycopg

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        if undo_latest:
            await conn.execute(_UNDO_LATEST["postgres"])
        await conn.execute("DELETE FROM jobgate_schema WHERE version > %s", (version,))
        await conn.execute("INSERT INTO jobgate_schema (version) SELECT %s WHERE NOT EXISTS "
                           "(SELECT 1 FROM jobgate_schema WHERE version = %s)",
                           (version, version))


async def test_migrate_brings_the_schema_up_to_date_and_says_so(db_url, tmp_path):
    from jobgate.store import store_for_url

    latest = store_for_url(db_url).latest_schema_version()
    first = _run(tmp_path, "migrate", "--db", db_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith(
        f"schema version 0 -> {latest} ({latest} migrations applied)"), first.stdout
    again = _run(tmp_path, "migrate", "--db", db_url)
    assert again.returncode == 0 and again.stdout.strip().endswith(
        f"schema version {latest}, up to date"), again.stdout

    # A database the jobgate before the latest migration left: migrated by one step.
    await _set_version(db_url, latest - 1, undo_latest=True)
    step = _run(tmp_path, "migrate", "--db", db_url)
    assert step.returncode == 0, step.stderr
    assert step.stdout.strip().endswith(
        f"schema version {latest - 1} -> {latest} (1 migration applied)"), step.stdout
    store = store_for_url(db_url)
    await store.open()
    try:
        assert await store.nodes() == [] and await store.schema_version() == latest
    finally:
        await store.close()


@pytest.mark.parametrize("command", ["serve", "worker", "migrate"])
async def test_a_database_newer_than_jobgate_is_refused_in_one_line(db_url, tmp_path, command):
    from jobgate.store import store_for_url

    assert _run(tmp_path, "migrate", "--db", db_url).returncode == 0
    latest = store_for_url(db_url).latest_schema_version()
    await _set_version(db_url, latest + 1)
    args = ["--port", str(free_port())] if command == "serve" else []

    result = _run(tmp_path, command, "--db", db_url, *args)

    line = assert_one_line_error(result)
    assert f"schema version {latest + 1}, newer than this jobgate ({latest})" in line, line
    assert result.stdout == ""


def test_migrate_names_a_database_it_cannot_reach_without_its_password(tmp_path):
    url = f"postgresql://jobgate:s3cret@127.0.0.1:{free_port()}/jobgate"
    result = _run(tmp_path, "migrate", "--db", url)
    line = assert_one_line_error(result)
    assert "cannot open the database postgresql://jobgate:***@127.0.0.1" in line, line
    assert "s3cret" not in result.stderr + result.stdout
