"""Hostile inputs against a real `jobgate serve`: path arguments that aim at the server's
own files, and what a job's own code reports (lone surrogates, NaN, infinities), which must
never break a listing nor stall the worker."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TEST_KINDS, Backend, Server, running_server, wait_job
from jobgate.config import load_settings
from jobgate.queue import protected_paths

REPO = Path(__file__).resolve().parent.parent

CHECKSUM = """
[kinds.checksum]
argv = ["sha256sum", "{file}"]
[kinds.checksum.args]
file = { type = "path" }
"""



# --- path arguments and the server's own files --------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    """A server whose input folder is its whole deployment folder (`input_dir = "."`, as
    the shipped config once had): database, data folder, secrets and config inside it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JOBGATE_SERVER_INPUT_DIR", ".")
        with running_server(tmp_path_factory.mktemp("site"), TEST_KINDS + CHECKSUM,
                            backend) as srv:
            yield srv


def test_path_arguments_never_reach_the_database_secrets_config_or_others_outputs(
        site: Server, backend: Backend) -> None:
    with site.client("carol") as carol, site.client("bob") as bob:
        # Carol's job leaves an output in the data folder.
        job = carol.post("/api/jobs", json={"kind": "steps", "args": {"count": 1, "delay": 0}})
        wait_job(carol, job.json()["id"], "completed")
        carol_dir = f"data/jobs/{job.json()['id']}"
        (site.folder / carol_dir).mkdir(parents=True, exist_ok=True)
        (site.folder / carol_dir / "out.txt").write_text("carol's")
        (site.folder / "innocent.txt").symlink_to(site.folder / "data" / "secrets")
        assert (site.folder / "data" / "secrets").is_dir()
        targets = ["data/secrets", "innocent.txt", "data", "data/jobs", carol_dir,
                   f"{carol_dir}/out.txt", "jobgate.toml", "./data/../jobgate.toml"]
        targets += [str(p.relative_to(site.folder))
                    for p in (site.folder / "data" / "secrets").iterdir()]
        if backend.name == "sqlite":
            targets += ["jobgate.db", "jobgate.db-wal", "jobgate.db-shm"]
            assert (site.folder / "jobgate.db-wal").exists()
        for target in targets:
            response = bob.post("/api/jobs", json={"kind": "checksum", "args": {"file": target}})
            assert response.status_code == 422, (target, response.text)
            error = response.json()["error"]
            assert error["field"] == "file", error
            assert "a file of the server itself" in error["message"], (target, error)
        # Other files of the folder stay usable.
        (site.folder / "movie.mp4").write_text("video")
        ok = bob.post("/api/jobs", json={"kind": "checksum", "args": {"file": "movie.mp4"}})
        assert ok.status_code == 201, ok.text
        assert wait_job(bob, ok.json()["id"], "completed", "failed")["state"] == "completed"


def test_the_shipped_config_keeps_inputs_apart_from_the_servers_files(tmp_path: Path) -> None:
    config = tmp_path / "jobgate.toml"
    config.write_text((REPO / "jobgate.toml").read_text())
    settings = load_settings(config, env={})
    assert settings.input_path == (tmp_path / "jobgate-input").resolve()
    for own in protected_paths(settings):
        assert not own.is_relative_to(settings.input_path), own
        assert not settings.input_path.is_relative_to(own), own


def test_serve_makes_a_missing_input_folder_and_path_jobs_use_it(
        tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBGATE_SERVER_INPUT_DIR", "./fresh-input")
    with running_server(tmp_path, TEST_KINDS + CHECKSUM, backend) as srv, \
            srv.client("bob") as bob:
        assert (tmp_path / "fresh-input").is_dir()
        (tmp_path / "fresh-input" / "a.txt").write_text("a")
        job = bob.post("/api/jobs", json={"kind": "checksum", "args": {"file": "a.txt"}})
        assert job.status_code == 201, job.text
        assert wait_job(bob, job.json()["id"], "completed", "failed")["state"] == "completed"


# --- what a job's own code reports --------------------------------------------------------

POISON = '''
import math


def report(ctx):
    ctx.progress(math.inf, "half \\ud800 way")
    ctx.log("line \\udfff")
    ctx.log(b"bytes")
    return {"text": "\\ud800", "\\udc00": [math.nan, -math.inf]}


def explode(ctx):
    raise RuntimeError("bad \\ud800 text")
'''
POISON_KINDS = """
[limits]
max_running = 1
[kinds.poison]
function = "poison_kinds:report"
[kinds.explode]
function = "poison_kinds:explode"
"""


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("poison")
    (folder / "poison_kinds.py").write_text(textwrap.dedent(POISON))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))  # the server runs in `folder`, which it imports from
        with running_server(folder, POISON_KINDS + TEST_KINDS, backend) as srv:
            yield srv


def test_surrogates_and_nan_a_python_job_reports_are_stored_safely(poisoned: Server) -> None:
    with poisoned.client("bob") as bob, poisoned.client("alice") as alice:
        job = bob.post("/api/jobs", json={"kind": "poison"}).json()
        failing = bob.post("/api/jobs", json={"kind": "explode"}).json()
        # With one slot, a stalled worker task would hold it until lease recovery (30 s).
        after = bob.post("/api/jobs", json={"kind": "noop"}).json()
        assert wait_job(bob, after["id"], "completed", timeout_s=20)["state"] == "completed"

        done = wait_job(bob, job["id"], "completed", "failed")
        assert done["state"] == "completed", done
        assert done["result"] == {"text": "\ufffd", "\ufffd": [None, None]}
        lines = [x["line"] for x in bob.get(f"/api/jobs/{job['id']}/logs").json()["lines"]]
        assert lines == ["line \ufffd", "b'bytes'"]
        failed = wait_job(bob, failing["id"], "failed")
        assert "bad \ufffd text" in failed["error"], failed
        for http in (bob, alice):  # the owner's list and the admin's
            listing = http.get("/api/jobs")
            assert listing.status_code == 200, listing.text
            assert {job["id"], failing["id"]} <= {j["id"] for j in listing.json()["jobs"]}
