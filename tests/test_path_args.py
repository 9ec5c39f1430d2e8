"""`path` arguments stay where they belong, whatever `input_dir` is: never the database,
the secrets, the data folder (jobs' outputs, uploads) or another user's upload; stored as
given (no server path in a job's args) and resolved, and checked again, only for the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TEST_KINDS, Backend, Server, running_server, wait_job
from jobgate.arguments import ArgumentError, resolve_paths, validate_args
from jobgate.config import load_settings
from jobgate.kinds import parse_kind
from jobgate.queue import protected_paths
from jobgate.uploads import owner_key

KIND = parse_kind("k", {"argv": ["cat", "{input}"], "args": {"input": {"type": "path"}}},
                  ValueError)
CHECKSUM = """
[limits]
max_running = 1
[kinds.checksum]
argv = ["sha256sum", "{file}"]
[kinds.checksum.args]
file = { type = "path" }
"""


def no_upload(upload_id: str) -> Path:
    raise AssertionError(f"no upload expected, asked for {upload_id}")


# --- stored as given, resolved for the run ------------------------------------------------

def test_a_path_is_stored_as_given_and_resolved_only_for_the_run(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "movie.mp4").write_text("x")
    given = validate_args(KIND, {"input": "sub/../movie.mp4"}, inputs, as_given=True)
    assert given == {"input": "sub/../movie.mp4"}
    ran = resolve_paths(KIND, given, inputs, (), no_upload)
    assert ran == {"input": str(inputs / "movie.mp4")}


def test_a_file_that_became_a_link_to_a_secret_after_submit_is_refused_at_run(
        tmp_path: Path) -> None:
    inputs, data = tmp_path / "in", tmp_path / "data"
    (data / "secrets").mkdir(parents=True)
    (data / "secrets" / "jwt.key").write_text("key")
    inputs.mkdir()
    (inputs / "film.mkv").write_text("film")
    given = validate_args(KIND, {"input": "film.mkv"}, inputs, protected=[data], as_given=True)
    (inputs / "film.mkv").unlink()
    (inputs / "film.mkv").symlink_to(data / "secrets" / "jwt.key")
    with pytest.raises(ArgumentError, match="must stay inside the input folder") as info:
        resolve_paths(KIND, given, inputs, [data], no_upload)
    assert info.value.field == "input"


def test_an_upload_ref_must_be_one_of_the_callers_and_a_file_named_so_stays_reachable(
        tmp_path: Path) -> None:
    (tmp_path / "upload:01ABC").write_text("a file that happens to be named so")
    with pytest.raises(ArgumentError, match="no upload '01ABC' of yours"):
        validate_args(KIND, {"input": "upload:01ABC"}, tmp_path)
    mine = tmp_path / "stored"
    mine.write_text("x")
    assert validate_args(KIND, {"input": "upload:01ABC"}, tmp_path,
                         uploads={"upload:01ABC": mine}) == {"input": str(mine)}
    assert validate_args(KIND, {"input": "./upload:01ABC"}, tmp_path, as_given=True) == {
        "input": "./upload:01ABC"}


def test_an_upload_that_is_gone_or_a_link_fails_the_run(tmp_path: Path) -> None:
    files = {"01GONE": tmp_path / "gone", "01LINK": tmp_path / "link"}
    (tmp_path / "link").symlink_to("/etc/passwd")
    for upload_id in files:
        with pytest.raises(ArgumentError, match="is gone"):
            resolve_paths(KIND, {"input": f"upload:{upload_id}"}, tmp_path, (),
                          files.__getitem__)
    with pytest.raises(ArgumentError, match="is gone"):
        resolve_paths(KIND, {"input": "upload:../../etc"}, tmp_path, (), files.__getitem__)


# --- whatever input_dir is ----------------------------------------------------------------

@pytest.mark.parametrize(("input_dir", "data_dir"), [(".", "./data"), ("./srv", "./srv/data")])
def test_no_input_dir_reaches_the_database_secrets_or_uploads(
        tmp_path: Path, input_dir: str, data_dir: str) -> None:
    config = tmp_path / "jobgate.toml"
    config.write_text(f'[server]\ninput_dir = "{input_dir}"\ndata_dir = "{data_dir}"\n'
                      f'[storage]\nurl = "sqlite:///{tmp_path / "srv" / "jobgate.db"}"\n')
    settings = load_settings(config, env={})
    assert settings.input_path == settings.data_path.parent
    data = settings.data_path
    carol = data / "uploads" / owner_key("carol") / "01CAROLSFILE"
    for file in (data / "secrets" / "jwt.key", carol, tmp_path / "srv" / "jobgate.db",
                 data / "jobs" / "01JOB" / "out.mp4"):
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("x")
    (tmp_path / "srv" / "ok.mkv").write_text("ok")
    own = protected_paths(settings)
    inside = settings.input_path
    for target in [data / "secrets" / "jwt.key", carol, data / "uploads", data,
                   tmp_path / "srv" / "jobgate.db", data / "jobs" / "01JOB" / "out.mp4",
                   config]:
        if not target.resolve().is_relative_to(inside):
            continue  # out of the input folder: refused for that already
        value = str(target.relative_to(inside))
        with pytest.raises(ArgumentError, match="a file of the server itself"):
            validate_args(KIND, {"input": value}, inside, protected=own, as_given=True)
    assert validate_args(KIND, {"input": str((tmp_path / "srv" / "ok.mkv").relative_to(
        inside))}, inside, protected=own, as_given=True)


# --- a real server whose input folder is its whole deployment folder --------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JOBGATE_SERVER_INPUT_DIR", ".")
        with running_server(tmp_path_factory.mktemp("site"), CHECKSUM + TEST_KINDS,
                            backend) as srv:
            yield srv



def test_the_database_the_jwt_key_and_another_users_upload_are_refused_with_422(
        site: Server, backend: Backend) -> None:
    with site.client("carol") as carol, site.client("bob") as bob:
        up = carol.post("/api/uploads", files={"file": ("c.mkv", b"carol's")}).json()
        carol_file = f"data/uploads/{owner_key('carol')}/{up['id']}"
        assert (site.folder / carol_file).is_file()
        key = site.folder / "data" / "secrets" / "jwt.key"
        assert key.is_file(), "the JWT key's real name"
        targets = [carol_file, f"data/uploads/{owner_key('carol')}", "data/secrets/jwt.key",
                   "./data/secrets/../secrets/jwt.key"]
        if backend.name == "sqlite":
            targets.append("jobgate.db")
        for target in targets:
            response = bob.post("/api/jobs", json={"kind": "checksum", "args": {"file": target}})
            assert response.status_code == 422, (target, response.text)
            assert "a file of the server itself" in response.json()["error"]["message"]
        theirs = bob.post("/api/jobs", json={"kind": "checksum", "args": {"file": up["ref"]}})
        assert theirs.status_code == 422 and theirs.json()["error"]["field"] == "file"
        assert "no upload" in theirs.json()["error"]["message"]


def test_args_never_show_server_paths_and_a_swap_to_a_link_fails_the_run(
        site: Server) -> None:
    with site.client("bob") as bob:
        (site.folder / "film.mkv").write_text("film")
        blocker = bob.post("/api/jobs", json={"kind": "sleep", "args": {"seconds": 600}}).json()
        wait_job(bob, blocker["id"], "running")
        job = bob.post("/api/jobs", json={"kind": "checksum", "args": {"file": "film.mkv"}})
        assert job.status_code == 201, job.text
        assert job.json()["args"] == {"file": "film.mkv"}
        listed = bob.get("/api/jobs").json()["jobs"]
        assert str(site.folder) not in str([j["args"] for j in listed])
        # Between submit and run the file becomes a link to the server's key.
        (site.folder / "film.mkv").unlink()
        (site.folder / "film.mkv").symlink_to(site.folder / "data" / "secrets" / "jwt.key")
        bob.post(f"/api/jobs/{blocker['id']}/cancel")
        done = wait_job(bob, job.json()["id"], "completed", "failed")
        assert done["state"] == "failed", done
        assert "a file of the server itself" in done["error"]
        assert done["args"] == {"file": "film.mkv"}
        assert bob.get(f"/api/jobs/{done['id']}/logs").json()["lines"] == []
