"""Python kinds' own modules next to `jobgate.toml` (or in `[server] python_path`): importable
by every command, run from any working directory, and in the worker's pool processes.

The commands run as the installed `jobgate` script from another folder, as a user runs
them: `python -m jobgate` would put its working directory on `sys.path` and hide a fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Backend, free_port
from jobgate.config import ConfigError, load_settings

JOBGATE = Path(sys.executable).with_name("jobgate")

MODULE = '''
import os
import sys


def analyze(ctx, text: str = "abc"):
    ctx.progress(50, "counting")
    return {"length": len(text), "pid": os.getpid(), "module": __file__}
'''


def write_config(folder: Path, db_url: str, extra: str = "", module_dir: str = ".",
                 name: str = "mykinds") -> Path:
    """A jobgate.toml in `folder` with kinds from `name`.py in `module_dir` (relative)."""
    (folder / module_dir).mkdir(parents=True, exist_ok=True)
    (folder / module_dir / f"{name}.py").write_text(MODULE)
    (folder / "input").mkdir(exist_ok=True)
    config = folder / "jobgate.toml"
    port = free_port()
    config.write_text(
        f'[server]\nport = {port}\ndata_dir = "{folder / "data"}"\n'
        f'input_dir = "{folder / "input"}"\n{extra}\n'
        f'[storage]\nurl = "{db_url}"\n'
        f'[kinds.pooled]\nfunction = "{name}:analyze"\n'
        f'[kinds.inline]\nfunction = "{name}:analyze"\nin_process = true\n'
    )
    return config


def jobgate(config: Path, cwd: Path, *args: str, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBGATE_") and k != "PYTHONPATH"}
    env["JOBGATE_CONFIG"] = str(config)
    return subprocess.run([str(JOBGATE), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, input=stdin, timeout=60)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_user_add_imports_the_kinds_next_to_the_config(tmp_path, elsewhere, backend: Backend):
    conf = tmp_path / "conf"
    conf.mkdir()
    config = write_config(conf, backend.new_url(conf))
    result = jobgate(config, elsewhere, "user", "add", "dora", "--password-stdin",
                     stdin="dora-password\n")
    assert result.returncode == 0, result.stderr


def test_without_the_folder_the_module_is_not_found_in_one_line(tmp_path, elsewhere):
    conf = tmp_path / "conf"
    conf.mkdir()
    config = write_config(conf, f"sqlite:///{conf / 'jobgate.db'}",
                          extra="python_path = []")
    result = jobgate(config, elsewhere, "user", "add", "dora", "--password-stdin",
                     stdin="dora-password\n")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "jobgate: kinds.pooled.function: cannot import mykinds: No module named 'mykinds'"]


def test_a_configured_python_path_is_relative_to_the_config(tmp_path, elsewhere):
    conf = tmp_path / "conf"
    conf.mkdir()
    write_config(conf, f"sqlite:///{conf / 'jobgate.db'}", extra='python_path = ["lib"]',
                 module_dir="lib", name="libkinds")
    settings = load_settings(conf / "jobgate.toml", env={})
    assert settings.python_paths == [(conf / "lib").resolve()]
    assert settings.kinds["pooled"].function == "libkinds:analyze"
    assert str((conf / "lib").resolve()) in sys.path

    (conf / "jobgate.toml").write_text('[server]\npython_path = "no-such-folder"\n')
    with pytest.raises(ConfigError, match=r"^server.python_path: .*no-such-folder is not a"):
        load_settings(conf / "jobgate.toml", env={})


def test_serve_runs_the_kinds_next_to_the_config_in_pool_and_in_process(
        tmp_path, elsewhere, backend: Backend):
    conf = tmp_path / "conf"
    conf.mkdir()
    config = write_config(conf, backend.new_url(conf))
    added = jobgate(config, elsewhere, "user", "add", "dora", "--admin", "--password-stdin",
                    stdin="dora-password\n")
    assert added.returncode == 0, added.stderr
    token = jobgate(config, elsewhere, "token", "dora")
    assert token.returncode == 0, token.stderr
    port = load_settings(config, env={}).server.port
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBGATE_") and k != "PYTHONPATH"}
    env["JOBGATE_CONFIG"] = str(config)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([str(JOBGATE), "serve"], cwd=elsewhere, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "jobgate serve did not become healthy in 30 s"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        headers = {"Authorization": f"Bearer {token.stdout.strip().split()[-1]}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            for kind in ("pooled", "inline"):
                created = http.post("/api/jobs", json={"kind": kind, "args": {"text": "hello"}})
                assert created.status_code in (200, 201), created.text
                job_id = created.json()["id"]
                done = wait_done(http, job_id)
                assert done["state"] == "completed", done.get("error")
                assert done["result"]["length"] == 5
                assert done["result"]["module"] == str(conf / "mykinds.py")
                assert done["message"] == "counting"  # the last progress message stays
                pooled = kind == "pooled"
                assert (done["result"]["pid"] != proc.pid) == pooled, json.dumps(done)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def wait_done(http: httpx.Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """The job once finished, read on its event stream's end (the stream ends with it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, object] = http.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("completed", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        with http.stream("GET", f"/api/jobs/{job_id}/events", timeout=httpx.Timeout(
                5, read=10)) as response:
            for line in response.iter_lines():
                if '"job.completed"' in line or '"job.failed"' in line:
                    break
