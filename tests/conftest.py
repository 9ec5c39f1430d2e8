"""Shared fixtures: real SQLite files, a real PostgreSQL server, real `jobgate serve`
processes, real subprocesses.

Each test gets its own folder, database and server; a server fixture starts a real
`python -m jobgate serve` on a free loopback port and waits for /health.

Every test that asks for `backend` (directly, or through `start_server` or a module's
`server` fixture) runs once per backend, `[sqlite]` and `[postgresql]`; the parametrization
is module-scoped so that a module's shared server is started once per backend. A test about
SQLite itself says so with `@pytest.mark.sqlite_only("why")` (or a module's `pytestmark`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from jobgate.auth import hash_password, new_token
from jobgate.config import Settings, load_settings
from jobgate.queue import JobQueue
from jobgate.store import store_for_url
from jobgate.store.base import Store
from jobgate.worker import Worker
from pg import PgServer, pg_server

# Kinds the tests use; `tests/kinds.py` holds the Python ones.
TEST_KINDS = """
[kinds.noop]
function = "jobgate.demo:noop"
# In the worker's own process: with a pool kind, every server and worker of the tests
# would start pool processes (and wait for them at stop) for a job that does nothing.
# The pool has its own tests (test_pyproc, test_executor's Python jobs, test_python_path).
in_process = true

[kinds.sleep]
argv = ["sleep", "{seconds}"]
[kinds.sleep.args]
seconds = { type = "number", min = 0, max = 600, default = 1 }

[kinds.steps]
argv = [
    "sh", "-c",
    "for i in $(seq 1 $0); do echo \\"progress=$((i * 100 / $0)) step $i\\"; sleep $1; done",
    "{count}", "{delay}",
]
progress = 'progress=(?P<percent>[0-9.]+) (?P<message>.*)'
[kinds.steps.args]
count = { type = "integer", min = 1, max = 1000, default = 5 }
delay = { type = "number", min = 0, max = 10, default = 0.1 }

[kinds.fail]
argv = ["sh", "-c", "echo doing >&1; echo \\"boom $0\\" >&2; exit $1", "{label}", "{code}"]
max_attempts = 3
backoff = "0.2s"
[kinds.fail.args]
label = { type = "string", default = "x" }
code = { type = "integer", default = 3 }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): the test is about SQLite itself; it runs on SQLite "
        "only (its `backend` is not parametrized over PostgreSQL)")


# The heaviest test files, heaviest first (their tests' times summed from a timing run's
# JUnit XML; measure again when files grow: --junitxml, then sum `time` by classname). The
# test command runs `--dist loadfile --no-loadscope-reorder`:
# xdist hands files to its two workers in collection order, so the long ones go first and
# the short ones fill in at the end; a long file handed out last would keep one worker busy
# while the other idles. Files not named here come after these, in their usual order.
HEAVY_FIRST = (
    "test_ratelimit.py", "test_recovery.py", "test_nodes.py", "test_pyproc.py", "test_cli.py",
    "test_resources.py", "test_migrations.py", "test_inputs.py", "test_store_cancel_retry.py",
    "test_fairness.py", "test_executor.py", "test_store_events.py", "test_stream.py",
    "test_api.py", "test_stream_drop.py", "test_leases.py", "test_orphans.py",
    "test_store_rows.py", "test_chaos.py", "test_dashboard.py", "test_worker.py",
    "test_smoke.py", "test_lost_nodes.py", "test_terminal.py", "test_auth.py",
    "test_revoked.py", "test_fuzz.py", "test_timeouts.py", "test_stream_ws.py",
    "test_positions.py", "test_imports.py", "test_queue_verbs.py",
)


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture scope
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a
    # file, and among the files not named, the order stays


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that uses `backend` on every backend (module-scoped, so a module's
    shared server is started once per backend); a test marked `sqlite_only` on SQLite only.
    A test already parametrized by `db_url` (which makes its own databases) is left alone:
    its `backend` is SQLite's, unused."""
    if "backend" not in metafunc.fixturenames or "db_url" in metafunc.fixturenames:
        return
    marks = getattr(metafunc.module, "pytestmark", [])
    if any(m.name == "sqlite_only" for m in (marks if isinstance(marks, list) else [marks])):
        # A whole module on SQLite: left unparametrized, so its tests keep their order.
        return
    only = metafunc.definition.get_closest_marker("sqlite_only")
    names = ["sqlite"] if only else list(BACKENDS)
    metafunc.parametrize("backend", names, indirect=True, scope="module")


@dataclass(frozen=True)
class Backend:
    """Where a test server keeps its jobs: an SQLite file in its folder, or a fresh database
    on the session's throwaway PostgreSQL server."""

    name: str
    pg: PgServer | None = None

    def new_url(self, folder: Path) -> str:
        """A fresh, empty database for a server living in `folder`."""
        if self.pg is not None:
            return self.pg.new_database()
        return f"sqlite:///{folder / 'jobgate.db'}"


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> Backend:
    """The backend this test runs on (see `pytest_generate_tests`)."""
    name = getattr(request, "param", "sqlite")
    if name == "postgresql":
        return Backend(name, request.getfixturevalue("postgres"))
    return Backend(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the session, started on first use."""
    with pg_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every backend the storage conformance suite must pass: a fresh database each."""
    if request.param == "postgresql":
        server: PgServer = request.getfixturevalue("postgres")
        return server.new_database()
    return f"sqlite:///{tmp_path / 'jobgate.db'}"


@pytest.fixture
def make_settings(tmp_path: Path, db_url: str) -> Callable[..., Settings]:
    """Settings from TOML text added to a test base (own data dir, input dir, database)."""

    def make(extra: str = "", kinds: str = TEST_KINDS) -> Settings:
        (tmp_path / "input").mkdir(exist_ok=True)
        path = tmp_path / "jobgate.toml"
        path.write_text(
            f'[server]\ndata_dir = "{tmp_path / "data"}"\ninput_dir = "{tmp_path / "input"}"\n'
            f'[storage]\nurl = "{db_url}"\n' + textwrap.dedent(extra) + kinds
        )
        return load_settings(path, env={})

    return make


@pytest.fixture
async def open_queue() -> AsyncIterator[Callable[[Settings], Any]]:
    """Opens a JobQueue (and optionally a worker) on the given settings; closes them after."""
    opened: list[tuple[JobQueue, Worker | None, asyncio.Task[None] | None]] = []

    async def open_(settings: Settings, worker: bool = True, **worker_kw: Any
                    ) -> tuple[JobQueue, Worker | None]:
        queue = JobQueue(settings, store_for_url(settings.storage.url))
        await queue.open()
        w = Worker(queue, **worker_kw) if worker else None
        task = asyncio.create_task(w.run()) if w else None
        opened.append((queue, w, task))
        return queue, w

    yield open_
    for queue, w, task in reversed(opened):
        if w is not None and task is not None:
            w.stop()
            await task
        await queue.close()


async def wait_state(queue: JobQueue, job_id: str, *states: str, timeout_s: float = 30) -> Any:
    """Wait (on events, polling as a fallback) until the job is in one of `states`."""
    deadline = time.monotonic() + timeout_s
    with queue.bus.subscribe(lambda e: e.job_id == job_id) as sub:
        while True:
            job = await queue.get(job_id)
            if job is not None and job.state.value in states:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"job {job_id} is {job and job.state}, not {states}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.get(), min(remaining, 0.5))


def alive(proc: psutil.Process) -> bool:
    """True while the process runs (a zombie counts as gone)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def survivors(procs: list[psutil.Process], timeout_s: float = 10) -> list[psutil.Process]:
    """The processes still alive after waiting up to `timeout_s` for them all to go."""
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in procs if alive(p)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return left


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10,
                   what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Server:
    """A real `jobgate serve` process with users alice (admin), bob and carol; on its own
    SQLite file, or on the database at `db_url` (a PostgreSQL one shared with worker
    nodes: start it with `--no-worker` for an API-only node)."""

    def __init__(self, folder: Path, config: str, db_url: str | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "input").mkdir(exist_ok=True)
        default_db = f"sqlite:///{folder / 'jobgate.db'}"
        self.config = folder / "jobgate.toml"
        config, own = textwrap.dedent(config), ""
        if config.startswith("[server]\n"):  # its keys join the server's (one table only)
            own, _, rest = config.removeprefix("[server]\n").partition("\n[")
            config = "[" + rest if rest else ""
        self.config.write_text(
            f'[server]\nport = {self.port}\ndata_dir = "{folder / "data"}"\n'
            f'input_dir = "{folder / "input"}"\n{own}\n'
            f'[storage]\nurl = "{db_url or default_db}"\n' + config
        )
        self.tokens: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "serve.log"

    def env(self, user: str | None = None) -> dict[str, str]:
        env = {**os.environ, "JOBGATE_URL": self.url, "JOBGATE_CONFIG": str(self.config)}
        env.pop("JOBGATE_TOKEN", None)
        if user is not None:
            env["JOBGATE_TOKEN"] = self.tokens[user]
        return env

    def add_users(self) -> None:
        """Add the users (unless another server on the same database did) and their tokens."""
        async def add() -> None:
            settings = load_settings(self.config, env={})
            store = store_for_url(settings.storage.url)
            await store.open()
            for name in ("alice", "bob", "carol"):
                if await store.get_user(name) is None:
                    await store.add_user(name, hash_password(f"{name}-password"),
                                         name == "alice")
                self.tokens[name] = await new_token(store, name)
            await store.close()

        asyncio.run(add())

    def start(self, *extra: str) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jobgate", "serve", *extra], cwd=self.folder,
                env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )
        # It starts in ~1.5 s of CPU; a 2-core machine running the suite (and chaos tests'
        # process storms) beside it has been seen to take over 30 s.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jobgate serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill9()  # not left running after the test that gave up on it
        raise RuntimeError("jobgate serve did not become healthy in 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def client(self, user: str | None = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def cli(self, *args: str, user: str | None = "alice", input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jobgate", *args], env=self.env(user), cwd=self.folder,
            capture_output=True, text=True, input=input, timeout=60,
        )


def wait_job(http: httpx.Client, job_id: str, *states: str, timeout_s: float = 60
             ) -> dict[str, Any]:
    """The job as `GET /api/jobs/ID` shows it once it is in one of `states`."""
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = http.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stayed {job['state']}: {job}"
        time.sleep(0.05)


@contextlib.contextmanager
def running_server(folder: Path, config: str, backend: Backend | None = None
                   ) -> Iterator[Server]:
    """A started Server in `folder` (users added) on a fresh database of `backend` (SQLite
    by default), stopped when the block ends."""
    server = Server(folder, config, backend.new_url(folder) if backend else None)
    server.add_users()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_server(tmp_path: Path, backend: Backend) -> Iterator[Callable[..., Server]]:
    """`start_server(config_toml)` → a running Server on a fresh database of the test's
    backend; stopped after the test. With `db_url`, on that database instead; `args` go to
    `jobgate serve` (e.g. "--no-worker")."""
    servers: list[Server] = []

    def start(config: str = "", kinds: str = TEST_KINDS, db_url: str | None = None,
              args: tuple[str, ...] = ()) -> Server:
        folder = tmp_path / f"server{len(servers)}"
        folder.mkdir()
        server = Server(folder, config + kinds, db_url or backend.new_url(folder))
        server.add_users()
        server.start(*args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """An open store on a fresh database of each backend (`db_url`): what the storage
    conformance tests (tests/test_store_*.py), the lease and the fairness tests run on."""
    s = store_for_url(db_url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def other_node(db_url: str, store: Store) -> AsyncIterator[Store]:
    """A second connection to the same database, as a second worker node has."""
    s = store_for_url(db_url)
    await s.open()
    yield s
    await s.close()
