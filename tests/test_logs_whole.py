"""Whole logs through a real server (issue 17): a log past `[worker] log_max_lines` keeps
its first half and its last lines, and says what it dropped; the whole kept log downloads
as text, streamed, to its owner and admins only; a `\\r` progress bar is one line with its
last text, colours kept; `jobgate logs` prints them plain to a file, with the gap line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import TEST_KINDS, Backend, Server, running_server

PY = sys.executable
BAR = ("import sys, time\n"
       "print('before', flush=True)\n"
       "for p in range(0, 101, 5):\n"
       "    sys.stderr.write('\\r\\x1b[K\\x1b[32m%3d%%\\x1b[0m \\x1b]0;title\\x07' % p)\n"
       "    sys.stderr.flush()\n"
       "    time.sleep(0.02)\n"
       "sys.stderr.write('\\n')\n")
KINDS = TEST_KINDS + f"""
[kinds.lines]
argv = ["seq", "-f", "line %g", "1", "{{count}}"]
[kinds.lines.args]
count = {{ type = "integer", min = 1, max = 100000 }}

[kinds.bar]
argv = [{json.dumps(PY)}, "-c", {json.dumps(BAR)}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    # The real cap: [worker] log_max_lines = 10,000 by default.
    with running_server(tmp_path_factory.mktemp("whole-logs"), KINDS, backend) as srv:
        yield srv


def finished(http: httpx.Client, kind: str, args: dict[str, Any] | None = None) -> str:
    response = http.post("/api/jobs", json={"kind": kind, "args": args or {}})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    with http.stream("GET", f"/api/jobs/{job_id}/events") as events:  # woken by its end
        for line in events.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("type") in (
                    "job.completed", "job.failed", "job.cancelled"):
                break
    job = http.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "completed", job
    return job_id


def read_all(http: httpx.Client, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Every line the JSON route gives, page by page as a client reads it."""
    lines: list[dict[str, Any]] = []
    after = 0
    while page := http.get(f"/api/jobs/{job_id}/logs",
                           params={"after": after, "limit": limit}).json()["lines"]:
        lines += page
        after = page[-1]["n"]
    return lines


GAP = ("[jobgate] 2000 more lines not kept (lines 5001-7000; worker.log_max_lines keeps "
       "the first and the last lines)")


def test_a_12000_line_log_keeps_lines_1_to_5000_and_the_last_5000(server):
    with server.client("bob") as bob:
        job_id = finished(bob, "lines", {"count": 12_000})
        first = bob.get(f"/api/jobs/{job_id}/logs", params={"limit": 10}).json()
        assert set(first) == {"lines", "next", "state", "total", "dropped"}
        assert first["total"] == 12_000 and first["state"] == "completed"
        assert first["dropped"] == {"first": 5_001, "last": 7_000}
        assert first["next"] == 10 and first["lines"][0] == {"n": 1, "line": "line 1"}

        lines = read_all(bob, job_id, limit=999)
        kept = [*range(1, 5_001), *range(7_001, 12_001)]
        assert [x["n"] for x in lines if not x.get("gap")] == kept
        assert all(x["line"] == f"line {x['n']}" for x in lines if not x.get("gap"))
        assert [x for x in lines if x.get("gap")] == [{"n": 5_001, "line": GAP, "gap": True}]
        assert lines[5_000]["gap"] and lines[-1] == {"n": 12_000, "line": "line 12000"}


def test_the_text_download_is_the_whole_kept_log_with_one_gap_line(server):
    with server.client("bob") as bob, server.client("carol") as carol, \
            server.client("alice") as alice:
        job_id = finished(bob, "lines", {"count": 12_000})
        with bob.stream("GET", f"/api/jobs/{job_id}/logs", params={"format": "text"}) as got:
            assert got.status_code == 200
            assert got.headers["content-type"] == "text/plain; charset=utf-8"
            assert got.headers["content-disposition"] == f'attachment; filename="{job_id}.log"'
            chunks = list(got.iter_bytes())
        text = b"".join(chunks).decode()
        expected = [*(f"line {n}" for n in range(1, 5_001)), GAP,
                    *(f"line {n}" for n in range(7_001, 12_001))]
        assert text == "\n".join(expected) + "\n"
        # Someone else's job is unknown to them, as the JSON route has it; an admin reads it.
        refused = carol.get(f"/api/jobs/{job_id}/logs", params={"format": "text"})
        assert refused.status_code == 404 and "line 1" not in refused.text
        assert alice.get(f"/api/jobs/{job_id}/logs", params={"format": "text"}).text == text
        bad = bob.get(f"/api/jobs/{job_id}/logs", params={"format": "pdf"})
        assert bad.status_code == 422, bad.text


def test_a_log_within_the_cap_drops_nothing(server):
    with server.client("bob") as bob:
        job_id = finished(bob, "lines", {"count": 3})
        page = bob.get(f"/api/jobs/{job_id}/logs").json()
        assert (page["total"], page["dropped"], page["next"]) == (3, None, 3)
        text = bob.get(f"/api/jobs/{job_id}/logs", params={"format": "text"}).text
        assert text == "line 1\nline 2\nline 3\n"


def test_a_progress_bar_is_one_line_with_its_last_text_and_colours(server):
    with server.client("bob") as bob:
        job_id = finished(bob, "bar")
        page = bob.get(f"/api/jobs/{job_id}/logs").json()
        # 21 redraws: one line; its colour kept, the erase-line and the window title out.
        assert page["lines"] == [{"n": 1, "line": "before"},
                                 {"n": 2, "line": "\x1b[32m100%\x1b[0m "}]
        assert page["total"] == 2
        text = bob.get(f"/api/jobs/{job_id}/logs", params={"format": "text"}).text
        assert text == "before\n100% \n"  # a text file gets no colour codes


def test_jobgate_logs_prints_plain_text_to_a_file_with_the_gap_line(server):
    with server.client("bob") as bob:
        bar = finished(bob, "bar")
        long = finished(bob, "lines", {"count": 12_000})

    def jobgate_logs(job_id: str) -> str:
        done = subprocess.run([PY, "-m", "jobgate", "logs", job_id], env=server.env("bob"),
                              cwd=server.folder, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert jobgate_logs(bar) == "before\n100% \n"  # not a terminal: no colour codes
    printed = jobgate_logs(long).splitlines()
    assert printed[4_999:5_002] == ["line 5000", GAP, "line 7001"]
    assert len(printed) == 10_001 and printed[-1] == "line 12000"
