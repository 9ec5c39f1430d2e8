"""`jobgate check`: the configuration loaded as `serve` loads it, this machine's programs
looked for, a summary printed, and nothing started (no port, no database, no file)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from jobgate import cli

REPO = Path(__file__).resolve().parent.parent


def jobgate(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `jobgate ARGS` in this process, in `folder`, with no JOBGATE_* variable but
    those of `env`; what it prints and its exit code captured (as tests/test_cli.py does)."""
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    for name in [n for n in os.environ if n.startswith("JOBGATE_")]:
        del os.environ[name]
    os.environ.update(env)
    os.chdir(folder)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(["jobgate", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def nothing_listens_or_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that bound a port or opened a network connection fails the test."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("jobgate check opened a socket")

    monkeypatch.setattr(socket.socket, "bind", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def write_config(folder: Path, text: str) -> Path:
    path = folder / "jobgate.toml"
    path.write_text(text)
    return path


def one_line(text: str) -> str:
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_the_example_config_checks_ok(tmp_path: Path) -> None:
    # Its paths are relative to the working directory: run it from an empty folder.
    result = jobgate(tmp_path, "check", "--config", str(REPO / "jobgate.toml"))
    assert result.returncode == 0, result
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "ok"
    assert lines[0] == f"config: {REPO / 'jobgate.toml'}"
    assert "storage: sqlite:///jobgate.db" in lines
    assert any(line.startswith("kinds: 6 (") and "countdown" in line for line in lines)
    assert any(line.startswith("limits: max_running=2 ") and "per_user_running=1" in line
               for line in lines)
    assert "auth: on" in lines
    assert "schedules: 0" in lines
    for line in result.stderr.splitlines():  # a recipe's missing tool does not fail it
        assert line.startswith("jobgate: warning: kind "), result.stderr
    assert not (tmp_path / "jobgate.db").exists()
    assert list(tmp_path.iterdir()) == []  # no database, no data or input folder


def test_the_default_config_is_jobgate_toml_in_the_working_directory(tmp_path: Path) -> None:
    write_config(tmp_path, "[limits]\nmax_running = 3\n")
    result = jobgate(tmp_path, "check")
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0] == f"config: {tmp_path / 'jobgate.toml'}"
    assert "limits: max_running=3 " in result.stdout
    assert "kinds: 0" in result.stdout.splitlines()


def test_environment_overrides_apply_as_they_do_for_serve(tmp_path: Path) -> None:
    write_config(tmp_path, "[limits]\nmax_running = 3\n")
    result = jobgate(tmp_path, "check", JOBGATE_LIMITS_MAX_RUNNING="5",
                     JOBGATE_AUTH_ENABLED="false")
    assert result.returncode == 0, result
    assert "limits: max_running=5 " in result.stdout
    assert "auth: off" in result.stdout.splitlines()


def test_a_command_kind_whose_program_does_not_exist_is_a_problem(tmp_path: Path) -> None:
    write_config(tmp_path, '[kinds.ok]\nargv = ["sh", "-c", "true"]\n'
                 '[kinds.nope]\nargv = ["jobgate-no-such-program", "{x}"]\n'
                 '[kinds.nope.args]\nx = { type = "string" }\n'
                 '[kinds.gone]\nargv = ["/no/such/dir/prog"]\n')
    result = jobgate(tmp_path, "check")
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [
        "jobgate: kinds.nope.argv[0]: program 'jobgate-no-such-program' not found on PATH",
        "jobgate: kinds.gone.argv[0]: program '/no/such/dir/prog' is not an executable file",
    ]
    assert "ok" not in result.stdout.splitlines()


def test_a_program_file_that_is_not_executable_is_a_problem(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n")
    write_config(tmp_path, f'[kinds.run]\nargv = ["{script}"]\n')
    result = jobgate(tmp_path, "check")
    assert result.returncode == 1, result
    assert "kinds.run.argv[0]" in one_line(result.stderr)
    script.chmod(0o755)
    assert jobgate(tmp_path, "check").returncode == 0


def test_a_relative_program_path_is_a_warning(tmp_path: Path) -> None:
    write_config(tmp_path, '[kinds.run]\nargv = ["./tool.sh"]\n')
    result = jobgate(tmp_path, "check")
    assert result.returncode == 0, result
    assert one_line(result.stderr).startswith(
        "jobgate: warning: kinds.run.argv[0]: program './tool.sh' is a relative path")
    assert jobgate(tmp_path, "check", "--strict").returncode == 1


def test_a_program_given_by_a_placeholder_is_not_looked_for(tmp_path: Path) -> None:
    write_config(tmp_path, '[kinds.run]\nargv = ["{prog}"]\n'
                 '[kinds.run.args]\nprog = { type = "string" }\n')
    result = jobgate(tmp_path, "check")
    assert result.returncode == 0, result
    assert result.stderr == ""


def test_a_function_kind_whose_module_does_not_import_names_the_kind(tmp_path: Path) -> None:
    # Loading imports it, as `serve` does at start: the same one-line config error, exit 2.
    write_config(tmp_path, '[kinds.py]\nfunction = "jobgate_no_such_module:run"\n')
    result = jobgate(tmp_path, "check")
    assert result.returncode == 2, result
    line = one_line(result.stderr)
    assert line.startswith("jobgate: kinds.py.function: cannot import jobgate_no_such_module")
    assert result.stdout == ""


def test_a_function_kind_whose_attribute_is_missing_names_the_kind(tmp_path: Path) -> None:
    write_config(tmp_path, '[kinds.py]\nfunction = "jobgate.demo:no_such_function"\n')
    result = jobgate(tmp_path, "check")
    assert result.returncode == 2, result
    assert one_line(result.stderr) == \
        "jobgate: kinds.py.function: jobgate.demo has no function no_such_function"


@pytest.mark.parametrize("text", [
    "[limits\nmax_running = 2\n",  # not TOML
    "[limits]\nmax_running = 0\n",  # a bad value
    "[nonsense]\n",  # an unknown section
    '[kinds.x]\nargv = ["sh"]\nprogress = "("\n',  # a progress pattern that does not compile
])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str) -> None:
    write_config(tmp_path, text)
    result = jobgate(tmp_path, "check")
    assert result.returncode == 2, result
    assert one_line(result.stderr).startswith("jobgate: ")
    assert result.stdout == ""


def test_a_missing_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = jobgate(tmp_path, "check", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2, result
    assert "no such config file" in one_line(result.stderr)


def test_a_storage_password_is_starred(tmp_path: Path) -> None:
    write_config(tmp_path, '[storage]\nurl = "postgresql://jobs:s3cr3t-pw@db.example:5432/jobs"\n')
    result = jobgate(tmp_path, "check")
    assert result.returncode == 0, result
    assert "storage: postgresql://jobs:****@db.example:5432/jobs" in result.stdout.splitlines()
    assert "s3cr3t" not in result.stdout + result.stderr


def test_a_storage_password_from_the_environment_is_starred_in_json(tmp_path: Path) -> None:
    result = jobgate(tmp_path, "check", "--json",
                     JOBGATE_DB="postgresql://u:p%40ss@host/db?password=other-secret")
    assert result.returncode == 0, result
    info = json.loads(result.stdout)
    assert info["storage"] == "postgresql://u:****@host/db?password=****"
    assert info["config"] is None
    assert info["ok"] is True
    assert info["problems"] == []


def test_secrets_are_never_printed(tmp_path: Path) -> None:
    write_config(tmp_path, '[webhooks]\nurl = "https://hooks.example.org/in?token=hook-secret"\n'
                 'secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"\n'
                 '[metrics]\ntoken = "metrics-token-0123456789"\n')
    for args in (("check",), ("check", "--json")):
        result = jobgate(tmp_path, *args)
        assert result.returncode == 0, result
        shown = result.stdout + result.stderr
        for secret in ("hook-secret", "whsec_", "metrics-token", "hooks.example.org"):
            assert secret not in shown
    assert "webhooks: yes" in jobgate(tmp_path, "check").stdout.splitlines()
    assert "metrics token: yes" in jobgate(tmp_path, "check").stdout.splitlines()


def test_json_says_the_same_as_the_text(tmp_path: Path) -> None:
    write_config(tmp_path, '[limits]\nper_user_running = 1\nmemory_budget_mb = 2048\n'
                 '[kinds.a]\nargv = ["sh"]\n[kinds.b]\nfunction = "jobgate.demo:countdown"\n')
    result = jobgate(tmp_path, "check", "--json")
    assert result.returncode == 0, result
    info = json.loads(one_line(result.stdout))
    assert info["kinds"] == ["a", "b"]
    assert info["limits"]["per_user_running"] == 1
    assert info["limits"]["memory_budget_mb"] == 2048
    assert info["auth"] is True and info["webhooks"] is False and info["notify"] is False
    assert info["schedules"] == 0


def test_a_missing_recipe_tool_is_a_warning_unless_strict(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    write_config(tmp_path, '[kinds.compress]\nrecipe = "compress"\n')
    result = jobgate(tmp_path, "check", PATH=str(empty))
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[-1] == "ok"
    assert result.stderr.splitlines()[0].startswith(
        "jobgate: warning: kind compress: ffmpeg is not installed")
    strict = jobgate(tmp_path, "check", "--strict", PATH=str(empty))
    assert strict.returncode == 1, strict
    assert "ok" not in strict.stdout.splitlines()
    assert json.loads(jobgate(tmp_path, "check", "--strict", "--json", PATH=str(empty)
                              ).stdout)["ok"] is False


def test_the_check_creates_no_database_and_no_folder(tmp_path: Path) -> None:
    db = tmp_path / "state" / "jobs.db"
    write_config(tmp_path, f'[storage]\nurl = "sqlite:///{db}"\n'
                 '[server]\ndata_dir = "./data"\ninput_dir = "./input"\n'
                 '[kinds.a]\nargv = ["sh"]\n')
    result = jobgate(tmp_path, "check", "--db", str(tmp_path / "other.db"))
    assert result.returncode == 0, result
    assert f"storage: sqlite:///{tmp_path / 'other.db'}" in result.stdout.splitlines()
    assert not db.exists() and not (tmp_path / "other.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobgate.toml"]


def test_check_is_in_the_help() -> None:
    result = jobgate(Path.cwd(), "--help")
    assert result.returncode == 0
    assert "check" in result.stdout
