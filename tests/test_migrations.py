"""Migrations under concurrency: several processes opening one fresh database at once (as
`jobgate serve --no-worker` and `jobgate worker` started together by systemd do) all
succeed, and the schema is applied once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobgate.store import store_for_url

# Each opener waits (after its imports) until the go file exists, so that they really open
# together. With the version read outside the write lock, about half of them failed on a
# fresh SQLite file ("table jobs already exists").
_OPENER = """
import asyncio, os, sys, time
from pathlib import Path
from jobgate.store import store_for_url

url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.001)

async def main():
    store = store_for_url(url)
    await store.open()
    version = await store.schema_version()
    await store.close()
    print(version)

asyncio.run(main())
"""

OPENERS = 3


def open_together(url: str, folder: Path) -> list[subprocess.CompletedProcess[str]]:
    """Start `OPENERS` processes that open `url` at the same moment; their results."""
    folder.mkdir()
    go = folder / "go"
    ready = [folder / f"ready{i}" for i in range(OPENERS)]
    procs = [subprocess.Popen([sys.executable, "-c", _OPENER, url, str(r), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in ready]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready):
        assert time.monotonic() < deadline, "the openers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


@pytest.mark.parametrize("backend_name, rounds", [("sqlite", 8), ("postgresql", 4)])
def test_processes_opening_a_fresh_database_at_once_all_succeed(
        backend_name, rounds, tmp_path, request):
    latest = store_for_url(f"sqlite:///{tmp_path / 'x.db'}").latest_schema_version()
    failures = []
    for n in range(rounds):
        if backend_name == "postgresql":
            url = request.getfixturevalue("postgres").new_database()
            latest = store_for_url(url).latest_schema_version()
        else:
            url = f"sqlite:///{tmp_path / f'round{n}.db'}"
        for result in open_together(url, tmp_path / f"round{n}"):
            if result.returncode != 0 or result.stdout.strip() != str(latest):
                failures.append(f"round {n}: exit {result.returncode}, "
                                f"{result.stderr.strip().splitlines()[-1:]}")
    assert failures == [], f"{len(failures)} of {rounds * OPENERS} opens failed"
