"""The `music` recipe against the real spotdl, when one is installed apart (it pins
libraries of its own and cannot live in jobgate's environment: `uv tool install spotdl`,
or a venv of its own named by JOBGATE_TEST_SPOTDL). Every connection it makes goes to a
closed loopback port (HTTPS_PROXY), so the run is the same offline and online: spotdl
takes jobgate's argv (no usage error), fails on the network, and the job's error is
spotdl's own error line, to be retried."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from jobgate.downloads import music_job, spotdl_argv
from jobgate.pychild import NonRetryable
from media_fixtures import FakeContext, require_ffmpeg


def real_spotdl() -> str:
    found = os.environ.get("JOBGATE_TEST_SPOTDL") or shutil.which("spotdl")
    if not found:
        pytest.skip("spotdl is not installed (uv tool install spotdl, or set "
                    "JOBGATE_TEST_SPOTDL to a spotdl program)")
    return found


def test_spotdl_takes_the_recipes_argv_and_its_error_is_the_jobs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_ffmpeg()
    program = real_spotdl()
    monkeypatch.setenv("PATH", f"{Path(program).parent}{os.pathsep}{os.environ['PATH']}")
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nobody there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    ctx = FakeContext(output_dir=tmp_path / "job")
    ctx.output_dir.mkdir()
    with pytest.raises(RuntimeError) as info:
        music_job(ctx, "https://open.spotify.com/track/4cOdK2wGLETKBW3PvgPWqT")
    error = str(info.value)
    assert not isinstance(info.value, NonRetryable), error  # a network drop: retried
    assert "usage:" not in " ".join(ctx.lines) and "unrecognized arguments" not in error
    assert error.startswith("spotdl exit code 1: "), error
    assert "ProxyError" in error or "ConnectionError" in error, error
    assert list(ctx.output_dir.iterdir()) == []


def test_a_non_http_address_never_reaches_spotdl(tmp_path: Path) -> None:
    with pytest.raises(NonRetryable, match="expected an http"):
        spotdl_argv("spotdl", "--output=/etc/x", tmp_path)
