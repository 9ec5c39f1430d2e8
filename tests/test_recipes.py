"""The recipes `compress` and `analyze` through a real `jobgate serve` with Debian's ffmpeg:
a generated clip compressed to a target size, a cancel that leaves no ffmpeg and no
finished-looking file, a generated tone's loudness; and how a kind names a recipe, and
the start-up warning for missing programs (on the shipped jobgate.toml too)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server, free_port, running_server
from jobgate.config import ConfigError, load_settings
from jobgate.kinds import parse_kind
from jobgate.media import BYTES_PER_MB, probe
from jobgate.recipes import RECIPES, missing_tools_warnings, tool_found
from media_fixtures import ebur128_integrated_lufs, make_tone_with_gap, make_video, require_ffmpeg
from recipe_helpers import (
    api,
    download_output,
    files_in,
    follow,
    job_folder,
    marked_processes,
    messages,
    output_names,
    percents,
    run_job,
    submit,
    wait_no_marked,
)

ROOT = Path(__file__).parent.parent
CLIP_S = 10.0

CONFIG = r"""
[kinds.compress]
recipe = "compress"
args.preset.default = "ultrafast"   # one key of one argument: the rest is the recipe's

[kinds.analyze]
recipe = "analyze"

[kinds.music]
recipe = "music"
allow_private_urls = true
args.url.pattern = 'http://127\.0\.0\.1:[0-9]+/\S+'
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose PATH has no spotdl, whatever this machine has."""
    require_ffmpeg()
    without = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                              if d and not (Path(d) / "spotdl").exists())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", without)
        with running_server(tmp_path_factory.mktemp("recipes"), CONFIG) as started:
            make_video(started.folder / "input" / "clip.mp4", CLIP_S)
            make_tone_with_gap(started.folder / "input" / "tone.wav")
            yield started


# --- compress ------------------------------------------------------------------------------

def test_compress_to_a_target_size(server: Server, tmp_path: Path) -> None:
    job, events = run_job(server, "compress", input="clip.mp4", target_mb=1.0)
    assert job["state"] == "completed", job["error"]
    assert output_names(job) == ["out.mp4"]
    out = download_output(server, job["id"], "out.mp4", tmp_path / "out.mp4")
    size = out.stat().st_size
    print(f"compress: target 1 MB -> {size} bytes ({size / BYTES_PER_MB:.3f} of target)")
    assert abs(size - BYTES_PER_MB) <= 0.10 * BYTES_PER_MB
    assert job["result"]["size_bytes"] == size and job["result"]["passes"] == 2
    # Playable: ffprobe reads the downloaded file back whole, at the clip's length.
    played = probe(out)
    assert played.duration_s == pytest.approx(CLIP_S, abs=0.2)
    assert (played.video_codec, played.audio_codec) == ("h264", "aac")
    head = out.read_bytes()[:1 << 20]
    assert 0 <= head.find(b"moov") < head.find(b"mdat")  # -movflags +faststart
    rising = percents(events)
    assert rising == sorted(rising) and rising[-1] == 100.0 and len(rising) >= 3
    assert any(m.startswith("pass 2 of 2: ") and " of 00:10" in m for m in messages(events))
    assert not [line for line in _log(server, job["id"]) if str(server.folder) in line]


def test_compress_refuses_a_target_too_small_at_once(server: Server) -> None:
    job, _ = run_job(server, "compress", input="clip.mp4", target_mb=0.01)
    assert job["state"] == "failed" and job["attempt"] == 1  # not retried: bad input
    assert "too small" in job["error"] and str(server.folder) not in job["error"]


def test_cancel_mid_way_leaves_no_ffmpeg_and_no_finished_output(server: Server) -> None:
    # veryslow: still encoding when the cancel lands, however loaded the machine is.
    job_id = submit(server, "compress", input="clip.mp4", crf=30, preset="veryslow")
    cancelled = threading.Event()
    seen_ffmpeg: list[int] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "job.progress" and (event.get("progress") or 0) > 0 \
                and not cancelled.is_set():
            seen_ffmpeg.extend(p.pid for p in marked_processes(job_id)
                               if p.name().startswith("ffmpeg"))
            cancelled.set()
            response = api(server, "POST", f"/api/jobs/{job_id}/cancel")
            assert response.status_code == 200, response.text

    events = follow(server, job_id, on_event=on_event)
    assert events[-1]["type"] == "job.cancelled"
    assert seen_ffmpeg, "ffmpeg was not running (with the job's mark) when cancelled"
    assert wait_no_marked(job_id) == []  # no ffmpeg, no pool process of the job left
    job = api(server, "GET", f"/api/jobs/{job_id}").json()
    assert "out.mp4" not in output_names(job)
    left = files_in(job_folder(server, job_id))
    assert "out.mp4" not in left and all(name.endswith(".part") for name in left), left


def _log(server: Server, job_id: str) -> list[str]:
    lines = api(server, "GET", f"/api/jobs/{job_id}/logs").json()["lines"]
    return [line["line"] for line in lines]


# --- analyze -------------------------------------------------------------------------------

def test_analyze_a_tone_matches_ffmpegs_own_loudness(server: Server, tmp_path: Path) -> None:
    tone = server.folder / "input" / "tone.wav"
    job, events = run_job(server, "analyze", path="tone.wav")
    assert job["state"] == "completed", job["error"]
    result = job["result"]
    reference = ebur128_integrated_lufs(tone)
    print(f"analyze: {result['integrated_lufs']} LUFS, ffmpeg's own ebur128 {reference}")
    assert abs(result["integrated_lufs"] - reference) <= 0.5
    assert result["duration_s"] == pytest.approx(8.0, abs=0.05)  # 3 s tone, 2 s gap, 3 s
    assert result["true_peak_dbtp"] == pytest.approx(-18.06, abs=0.5)
    [gap] = result["silences"]
    assert gap["start_s"] == pytest.approx(3.0, abs=0.1)
    assert gap["duration_s"] == pytest.approx(2.0, abs=0.1)
    assert result["file"] == "tone.wav"  # the name, never the server's folder
    assert output_names(job) == ["analysis.json"]
    written = download_output(server, job["id"], "analysis.json", tmp_path / "a.json")
    assert json.loads(written.read_text()) == result
    assert percents(events)[-1] == 100.0


def test_analyze_refuses_a_file_that_is_not_media(server: Server) -> None:
    (server.folder / "input" / "notes.txt").write_text("not audio\n")
    job, _ = run_job(server, "analyze", path="notes.txt")
    assert job["state"] == "failed" and job["attempt"] == 1
    assert "cannot read notes.txt as media" in job["error"]


def test_a_path_outside_the_input_folder_is_refused(server: Server) -> None:
    response = api(server, "POST", "/api/jobs", json={
        "kind": "analyze", "args": {"path": "../jobgate.db"}})
    assert response.status_code == 422, response.text


# --- music without spotdl ------------------------------------------------------------------

def test_music_without_spotdl_says_so(server: Server) -> None:
    job, _ = run_job(server, "music", url="http://127.0.0.1:9/playlist/road-trip")
    assert job["state"] == "failed" and job["attempt"] == 1  # installing it is not a retry
    assert job["error"] == "spotdl is not installed on this server"


# --- recipe = "NAME" -----------------------------------------------------------------------

def _kind(spec: dict[str, Any]) -> Any:
    return parse_kind("k", spec, ConfigError)


def test_a_recipe_is_the_default_and_the_kinds_keys_win() -> None:
    kind = _kind({"recipe": "compress", "max_running": 3, "timeout": "10m",
                  "args": {"target_mb": {"default": 8}}})
    table = RECIPES["compress"].table
    assert kind.function == "jobgate.media:compress_job"
    assert (kind.max_running, kind.timeout_s) == (3, 600.0)
    assert kind.memory_mb == table["memory_mb"] and kind.nice == table["nice"]
    assert kind.args["target_mb"].default == 8 and kind.args["target_mb"].type == "number"
    assert kind.args["preset"].default == "medium"  # untouched arguments stay the recipe's
    assert table["args"]["target_mb"]["default"] == 0  # the recipe itself is not changed


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_loads_with_a_limit_and_a_retry_policy(name: str) -> None:
    kind = _kind({"recipe": name})
    assert kind.memory_mb > 0 and kind.timeout_s and kind.max_running
    assert kind.function == RECIPES[name].function and kind.args
    # The network recipes retry (a drop, a 5xx); the others fail a bad input at once and
    # retry at most a kill.
    assert kind.max_attempts == 3 if name in ("download", "music") else kind.max_attempts <= 2


@pytest.mark.parametrize(("spec", "match"), [
    ({"recipe": "transcode"}, r"kinds\.k\.recipe: expected one of compress, analyze, "),
    ({"recipe": 3}, r"kinds\.k\.recipe: expected one of"),
    ({"recipe": "compress", "argv": ["ffmpeg"]}, r"kinds\.k\.argv: a recipe runs its own"),
    ({"recipe": "compress", "colour": "red"}, r"kinds\.k\.colour: unknown key"),
    ({"recipe": "compress", "args": {"crf": {"max": "high"}}}, r"args\.crf\.max: expected"),
])
def test_recipe_mistakes_are_config_errors(spec: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _kind(spec)


def test_missing_tools_warnings_name_the_kind_and_the_program(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "jobgate.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                    '[kinds.grab]\nrecipe = "download"\n'
                    '[kinds.songs]\nrecipe = "music"\n'
                    '[kinds.small]\nrecipe = "compress"\n'
                    '[kinds.hash]\nargv = ["no-such-program-here", "{x}"]\n'
                    '[kinds.hash.args]\nx = { type = "string" }\n'
                    '[kinds.echo]\nargv = ["echo", "{x}"]\n[kinds.echo.args]\nx = {}\n')
    settings = load_settings(path, env={})
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # nothing on PATH at all
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    lines = missing_tools_warnings(settings)
    assert "kind grab: yt-dlp is not installed on this server (uv sync --extra media)" \
        in lines
    assert any(line.startswith("kind grab: ffmpeg is not installed") and "audio_only" in line
               for line in lines)
    assert any(line.startswith("kind songs: spotdl is not installed") for line in lines)
    assert any(line.startswith("kind small: ffprobe is not installed") for line in lines)
    assert "kind hash: no-such-program-here is not installed on this server" in lines
    assert "kind echo: echo is not installed on this server" in lines
    monkeypatch.undo()
    assert tool_found("ffmpeg") and tool_found("yt-dlp")  # the module of this Python
    here = missing_tools_warnings(settings)
    assert not [line for line in here if "ffmpeg" in line or "yt-dlp" in line
                or "echo" in line]
    assert ("kind hash: no-such-program-here is not installed on this server" in here)
    assert any("spotdl" in line for line in here) == (shutil.which("spotdl") is None)


def test_serve_with_the_shipped_config_starts_and_warns(tmp_path: Path) -> None:
    """The shipped jobgate.toml on a machine without spotdl (and, here, without anything
    on PATH but Python): it serves, naming each missing program once, one line each."""
    config = tmp_path / "jobgate.toml"
    shutil.copy(ROOT / "jobgate.toml", config)
    port = free_port()
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty), "JOBGATE_CONFIG": str(config), "HOME": str(tmp_path)}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jobgate", "serve", "--port", str(port)],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(15)
    text = log.read_text()
    warnings = [line for line in text.splitlines() if line.startswith("jobgate: warning: ")]
    assert "jobgate: warning: kind music: spotdl is not installed on this server (uv tool " \
           "install spotdl, or pipx install spotdl)" in warnings
    assert "jobgate: warning: kind checksum: sha256sum is not installed on this server" \
        in warnings
    assert any("kind compress: ffmpeg is not installed" in line for line in warnings)
    assert not [line for line in warnings if "yt-dlp" in line]  # the venv's yt_dlp module
    assert "Traceback" not in text and "serving on" in text


def test_worker_warns_at_start_too(tmp_path: Path) -> None:
    config = tmp_path / "jobgate.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                      f'[storage]\nurl = "sqlite:///{tmp_path / "jobgate.db"}"\n'
                      '[kinds.songs]\nrecipe = "music"\n')
    env = {"PATH": str(tmp_path / "bin"), "JOBGATE_CONFIG": str(config),
           "HOME": str(tmp_path)}
    lines = []
    with subprocess.Popen([sys.executable, "-m", "jobgate", "worker"], cwd=tmp_path, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # read until the worker says it runs
                lines.append(line.rstrip("\n"))
                if line.startswith("jobgate: worker "):
                    break
        finally:
            proc.terminate()
            proc.communicate(timeout=60)  # a loaded machine's worker may take a while
    assert "jobgate: warning: kind songs: spotdl is not installed on this server (uv tool " \
           "install spotdl, or pipx install spotdl)" in lines, lines
    assert "jobgate: warning: kind songs: ffmpeg is not installed on this server (apt-get " \
           "install ffmpeg)" in lines
