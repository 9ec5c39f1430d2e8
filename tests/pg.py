"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temporary folder, a
free loopback port; stopped (and its folder removed) when the session ends.

Each test that asks for it gets its own fresh database (`PgServer.new_database`).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SETTINGS = {
    # A test server: durability is not what is being tested, speed is.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "400",
    "shared_buffers": "32MB",
    "listen_addresses": "127.0.0.1",
}


def _bin_dir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not candidates:
        raise RuntimeError("PostgreSQL is not installed (scripts/test installs it)")
    return Path(candidates[-1]).parent


def _as_owner(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` user then."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.user = "postgres" if os.geteuid() == 0 else (os.environ.get("USER") or "postgres")
        self._names = itertools.count(1)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def pg_server() -> Iterator[PgServer]:
    bin_dir = _bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="jobgate-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = PgServer(folder, _free_port())
    subprocess.run(
        _as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", server.user,
                   "--auth=trust", "--locale=C", "--encoding=UTF8", "--no-sync"]),
        check=True, capture_output=True,
    )
    options = " ".join(f"-c {k}={v}" for k, v in _SETTINGS.items())
    options += f" -p {server.port} -k {folder}"
    started = False
    # A test run stopped by SIGTERM still stops its server (as on Ctrl-C).
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        subprocess.run(
            _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
                       "-o", options, "-w", "-t", "60", "start"]),
            check=True, capture_output=True,
        )
        started = True
        _wait_ready(server)
        yield server
    finally:
        if started:
            subprocess.run(
                _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                           "-w", "stop"]),
                check=False, capture_output=True,
            )
        shutil.rmtree(folder, ignore_errors=True)
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _wait_ready(server: PgServer) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(server.url("postgres"), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
