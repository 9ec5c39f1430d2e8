"""Outputs as objects `{name, size, content_type, partial}`: stored and read back on both
backends (rows of older versions holding plain names too), carried by `job.completed`,
and those of a run that did not complete kept as `partial` or deleted (`partial_outputs`),
down to a real ffmpeg cancelled while it writes its mp4.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import wait_state
from jobgate import moves
from jobgate.model import Output, State, outputs_from_json
from jobgate.store.base import Outcome, Store
from nodekit import write_row
from storekit import running

# --- the rule, once ------------------------------------------------------------------------


def test_a_completed_runs_files_are_the_result_and_any_other_ends_are_partial():
    found = [Output("a.mp4", 10, "video/mp4"), Output("b\udcff.txt", 2, "text/plain")]
    listed, doomed = moves.ended_outputs(found, State.COMPLETED, "delete")
    assert [(o.name, o.partial) for o in listed] == [("a.mp4", False), ("b\ufffd.txt", False)]
    assert doomed == []
    for state in (State.FAILED, State.CANCELLED):
        listed, doomed = moves.ended_outputs(found, state, "keep")
        assert [o.partial for o in listed] == [True, True] and doomed == []
        listed, doomed = moves.ended_outputs(found, state, "delete")
        assert listed == [] and doomed == found  # by their names on disk, not as shown
    # A retry keeps its files for the next attempt, whatever the setting.
    listed, doomed = moves.ended_outputs(found, State.QUEUED, "delete")
    assert [o.partial for o in listed] == [True, True] and doomed == []


def test_old_plain_names_and_damaged_entries_read_as_outputs():
    assert outputs_from_json(["old.mp4", "sub/notes.txt", "blob"]) == [
        Output("old.mp4", 0, "video/mp4"), Output("sub/notes.txt", 0, "text/plain"),
        Output("blob", 0, "application/octet-stream")]
    assert outputs_from_json([{"name": "x.json", "size": True, "partial": "yes"}, 7]) == [
        Output("x.json", 0, "application/json", False), Output("7")]
    assert outputs_from_json(None) == [] and outputs_from_json({"a": 1}) == []


# --- the store, both backends ----------------------------------------------------------------

OUTS = [Output("out.mp4", 123_456_789_012, "video/mp4"),
        Output("sub/info.json", 42, "application/json", partial=True)]


async def test_outputs_are_stored_as_objects_and_the_completed_event_carries_them(
        store: Store) -> None:
    job = await running(store)
    assert await store.finish(job.id, job.lease_token,
                              Outcome(State.COMPLETED, outputs=OUTS)) is State.COMPLETED
    got = await store.get(job.id)
    assert got is not None and got.outputs == OUTS
    assert got.to_json()["outputs"] == [
        {"name": "out.mp4", "size": 123_456_789_012, "content_type": "video/mp4",
         "partial": False},
        {"name": "sub/info.json", "size": 42, "content_type": "application/json",
         "partial": True}]
    events = [e for e in await store.events_after(0, 1000) if e.job_id == job.id]
    completed = [e for e in events if e.type == "job.completed"]
    assert len(completed) == 1
    assert completed[0].to_json()["outputs"] == got.to_json()["outputs"]
    page = await store.list_jobs(None, None, None, None, 10)
    assert [j.outputs for j in page.jobs if j.id == job.id] == [OUTS]


async def test_a_row_of_an_older_jobgate_with_plain_names_reads_back(store: Store,
                                                                     db_url: str) -> None:
    job = await running(store)
    await store.finish(job.id, job.lease_token, Outcome(State.COMPLETED))
    # The row as an older jobgate would have left it.
    write_row(db_url, "UPDATE jobs SET outputs = ? WHERE id = ?",
              ('["film.mp4", "sub/log.txt"]', job.id))
    got = await store.get(job.id)
    assert got is not None
    assert got.outputs == [Output("film.mp4", 0, "video/mp4"),
                           Output("sub/log.txt", 0, "text/plain")]
    assert got.to_json()["outputs"][0] == {"name": "film.mp4", "size": 0,
                                           "content_type": "video/mp4", "partial": False}


# --- a worker's runs ------------------------------------------------------------------------

# Each writes a file into its folder, then completes, fails, or waits to be cancelled.
KINDS = r"""
[kinds.writes_ok]
argv = ["sh", "-c", 'printf "%s" "0123456789" > "$0/clip.mp4"', "{output_dir}"]

[kinds.writes_fail]
argv = ["sh", "-c", 'mkdir "$0/sub"; printf "half" > "$0/sub/part.mp4"; exit 3', "{output_dir}"]

[kinds.writes_fail_delete]
argv = ["sh", "-c", 'mkdir "$0/sub"; printf "half" > "$0/sub/part.mp4"; exit 3', "{output_dir}"]
partial_outputs = "delete"
"""


@pytest.mark.parametrize("kind, state, partial, left", [
    ("writes_ok", "completed", False, ["clip.mp4"]),
    ("writes_fail", "failed", True, ["sub/part.mp4"]),
    ("writes_fail_delete", "failed", None, []),
])
async def test_a_runs_files_become_outputs_partial_or_deleted(
        make_settings, open_queue, kind: str, state: str, partial: bool | None,
        left: list[str]) -> None:
    queue, _ = await open_queue(make_settings(kinds=KINDS))
    job, _ = await queue.submit("bob", kind, {})
    done = await wait_state(queue, job.id, "completed", "failed", "cancelled")
    assert done.state.value == state, done.error
    folder = queue.job_dir(job.id)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == left
    if partial is None:
        assert done.outputs == [] and not (folder / "sub").exists()
    else:
        size = (folder / left[0]).stat().st_size
        assert done.outputs == [Output(left[0], size, "video/mp4", partial)]


def test_partial_outputs_must_be_keep_or_delete(make_settings) -> None:
    from jobgate.config import ConfigError

    with pytest.raises(ConfigError, match=r'kinds.x.partial_outputs: expected "keep" or '
                                          r'"delete", got \'drop\''):
        make_settings(kinds='[kinds.x]\nargv = ["true"]\npartial_outputs = "drop"\n')
    with pytest.raises(ConfigError, match=r"kinds.x.partial_outputs: expected"):
        make_settings(kinds='[kinds.x]\nargv = ["true"]\npartial_outputs = true\n')


# --- a real ffmpeg, cancelled mid-way --------------------------------------------------------

# `-re` reads the generated input at its own pace: a 10-minute clip takes 10 minutes, so the
# job is surely cancelled mid-way, with a truncated mp4 (no index yet) on disk.
FFMPEG = """
[kinds.{name}]
argv = ["ffmpeg", "-nostdin", "-y", "-re", "-f", "lavfi", "-i",
        "testsrc=duration=600:size=160x120:rate=10", "-c:v", "mpeg4",
        "{{output_dir}}/out.mp4"]
{extra}
"""


@pytest.mark.parametrize("policy", ["keep", "delete"])
def test_a_cancelled_ffmpeg_jobs_truncated_mp4_is_not_offered_as_finished(
        start_server, policy: str) -> None:
    kinds = FFMPEG.format(name="film", extra=f'partial_outputs = "{policy}"')
    server = start_server(kinds=kinds)
    with server.client("bob") as http:
        job = http.post("/api/jobs", json={"kind": "film", "args": {}}).json()
        out = server.folder / "data" / "jobs" / job["id"] / "out.mp4"
        deadline = time.monotonic() + 60
        while not (out.exists() and out.stat().st_size > 0):  # ffmpeg is writing it
            assert time.monotonic() < deadline, http.get(f"/api/jobs/{job['id']}").json()
            time.sleep(0.1)
        assert http.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
        done = _wait_final(http, job["id"])
        assert done["state"] == "cancelled", done
        if policy == "delete":
            assert done["outputs"] == [] and not out.exists()
            response = http.get(f"/api/jobs/{job['id']}/outputs/out.mp4")
            assert response.status_code == 404
            return
        assert done["outputs"] == [{"name": "out.mp4", "size": out.stat().st_size,
                                    "content_type": "video/mp4", "partial": True}]
        response = http.get(f"/api/jobs/{job['id']}/outputs/out.mp4")
        assert response.status_code == 200 and response.content == out.read_bytes()
        assert response.headers["x-jobgate-partial"] == "true"
        assert response.headers["content-type"] == "video/mp4"
        # The CLI says so too: listed as partial, not as the job's result.
        shown = server.cli("show", job["id"], user="bob")
        assert shown.returncode == 0 and '"partial": true' in shown.stdout
        listing = server.cli("ls", user="bob")
        assert listing.returncode == 0, listing.stderr
        line = next(li for li in listing.stdout.splitlines() if li.startswith(job["id"]))
        assert "1 partial output" in line


def _wait_final(http: httpx.Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = http.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("completed", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_a_completed_jobs_outputs_carry_their_size_and_type(start_server) -> None:
    kinds = FFMPEG.format(name="short", extra="").replace('"-re", ', "").replace(
        "duration=600", "duration=1")
    server = start_server(kinds=kinds)
    with server.client("bob") as http:
        job = http.post("/api/jobs", json={"kind": "short", "args": {}}).json()
        done = _wait_final(http, job["id"])
        assert done["state"] == "completed", done
        out = Path(server.folder / "data" / "jobs" / job["id"] / "out.mp4")
        assert done["outputs"] == [{"name": "out.mp4", "size": out.stat().st_size,
                                    "content_type": "video/mp4", "partial": False}]
        response = http.get(f"/api/jobs/{job['id']}/outputs/out.mp4")
        assert "x-jobgate-partial" not in response.headers
        listing = server.cli("ls", user="bob")
        line = next(li for li in listing.stdout.splitlines() if li.startswith(job["id"]))
        assert "partial" not in line
