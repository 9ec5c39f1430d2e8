"""The recipes `download` (the real yt-dlp) and `music` (spotdl) through a real `jobgate
serve`: yt-dlp fetches an mp4 made by ffmpeg from a loopback HTTP server (allowed by
`allow_private_urls = true` in this test's config only), a 404 fails at once, a 503 is
retried, a cancel leaves no process and no finished-looking file. spotdl cannot be
installed beside jobgate (it pins old libraries), so a stand-in `spotdl` first on PATH
prints what spotDL 4 prints and writes an mp3-named file; and without it, the job says
spotdl is not installed."""

from __future__ import annotations

import http.server
import importlib.util
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Server, running_server
from jobgate.downloads import download_argv, spotdl_argv
from jobgate.media import probe
from media_fixtures import ffmpeg, require_ffmpeg
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

CONFIG = r"""
[kinds.download]
recipe = "download"
allow_private_urls = true   # this test's loopback server only
backoff = "0.1s"
backoff_max = "0.2s"
max_attempts = 2            # one retry shows it (the recipe's own is 3)

[kinds.download_public]
recipe = "download"         # as shipped: no loopback or private address

[kinds.music]
recipe = "music"
allow_private_urls = true
backoff = "0.1s"
backoff_max = "0.2s"
args.url.pattern = 'http://127\.0\.0\.1:[0-9]+/\S+'
"""

CLIP_S = 3.0


class Site:
    """A loopback HTTP server: files by path, `/busy*` answers 503, `/slow*` trickles
    bytes of a large file, anything else 404; it counts the requests to each path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.stop = threading.Event()
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits[self.path] = site.hits.get(self.path, 0) + 1
                if self.path.startswith("/busy"):
                    self.send_error(503, "Service Unavailable")
                elif self.path.startswith("/slow"):
                    self._trickle()
                elif self.path in site.files:
                    body = site.files[self.path]
                    self.send_response(200)
                    self.send_header("Content-Type", "video/mp4")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404, "Not Found")

            def _trickle(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(50_000_000))
                self.end_headers()
                try:
                    while not site.stop.wait(0.05):
                        self.wfile.write(b"\0" * 4096)
                        self.wfile.flush()
                except OSError:
                    pass  # the client went away: the cancel

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_ffmpeg()
    clip = tmp_path_factory.mktemp("site") / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc=duration={CLIP_S:g}:size=160x120:rate=10",
           "-f", "lavfi", "-i", f"sine=frequency=440:duration={CLIP_S:g}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-shortest", str(clip))
    with Site() as running:
        running.files["/clip.mp4"] = clip.read_bytes()
        yield running


# What spotDL 4 prints (the shapes of tests/test_progress.py), on stdout, errors included.
FAKE_SPOTDL = '''\
#!{python}
import sys
import time
from pathlib import Path

args = sys.argv[1:]
# The shape jobgate must call (the one the real spotDL 4.6 accepts, tests/test_spotdl.py):
# --output TEMPLATE --format FMT download URL
if len(args) != 6 or args[0] != "--output" or args[2] != "--format" or args[4] != "download":
    print("usage: spotdl [-h] ... error: unexpected arguments", args)
    sys.exit(2)
template, fmt, url = args[1], args[3], args[5]
if url.endswith("/nothing"):
    print("Processing query: " + url)
    print("LookupError: No results found for song: Nobody - Nothing")
    sys.exit(1)
if url.endswith("/flaky"):
    print("ConnectionError: HTTPSConnectionPool(host='api.spotify.com', port=443): Max "
          "retries exceeded")
    sys.exit(1)
songs = [("Artist One", "First Song"), ("Artist Two", "Second Song")]
print(f"Found {{len(songs)}} songs in Road Trip (Playlist)")
for number, (artist, title) in enumerate(songs, 1):
    name = template.replace("{{artists}}", artist).replace("{{title}}", title) \\
        .replace("{{output-ext}}", fmt)
    Path(name).write_bytes(b"ID3\\x04\\x00\\x00\\x00\\x00\\x00\\x00" + b"\\x00" * 64)
    print(f'Downloaded "{{artist}} - {{title}}": https://music.youtube.com/watch?v=aaaaaaaaaaa',
          flush=True)
    # Paced like the real one (seconds a song): the next song once the test saw this one.
    go = Path(__file__).parent / f"go-{{number}}"
    for _ in range(600):
        if go.exists():
            break
        time.sleep(0.05)
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, site: Site) -> Iterator[Server]:
    """A server with the stand-in `spotdl` first on its PATH."""
    bin_dir = tmp_path_factory.mktemp("bin")
    fake = bin_dir / "spotdl"
    fake.write_text(FAKE_SPOTDL.format(python=sys.executable))
    fake.chmod(0o755)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        assert shutil.which("spotdl") == str(fake)
        with running_server(tmp_path_factory.mktemp("downloads"), CONFIG) as started:
            yield started


# --- download: the real yt-dlp --------------------------------------------------------------

def test_download_a_generated_clip(server: Server, site: Site, tmp_path: Path) -> None:
    job, events = run_job(server, "download", url=f"{site.url}/clip.mp4")
    assert job["state"] == "completed", job["error"]
    result = job["result"]
    assert (result["id"], result["title"], result["ext"]) == ("clip", "clip", "mp4")
    assert result["webpage_url"] == f"{site.url}/clip.mp4"
    assert result["files"] == ["clip [clip].mp4"] and result["file"] == "clip [clip].mp4"
    assert [item["id"] for item in result["items"]] == ["clip"]
    assert output_names(job) == ["clip [clip].mp4"]  # no `incomplete/`, no info file
    out = download_output(server, job["id"], "clip [clip].mp4", tmp_path / "clip.mp4")
    assert out.read_bytes() == site.files["/clip.mp4"]
    assert probe(out).duration_s == pytest.approx(CLIP_S, abs=0.2)
    rising = percents(events)
    assert rising == sorted(rising) and rising[-1] == 100.0
    # The speed and ETA ride on the in-between reports ("… at 1.2MiB/s, ETA 00:03"), which
    # a 0.1 MB loopback download may finish before the worker sends (tests/test_progress.py
    # reads them from yt-dlp's lines); the last word is the summary.
    assert messages(events)[-1] == "1 file, 0.1 MB", messages(events)
    assert str(server.folder) not in str(result)


def test_download_audio_only_extracts_with_ffmpeg(server: Server, site: Site) -> None:
    job, _ = run_job(server, "download", url=f"{site.url}/clip.mp4", audio_only=True)
    assert job["state"] == "completed", job["error"]
    assert output_names(job) == ["clip [clip].mp3"]
    played = probe(job_folder(server, job["id"]) / "clip [clip].mp3")
    assert played.audio_codec == "mp3" and not played.has_video


def test_a_404_fails_at_once_without_retry(server: Server, site: Site) -> None:
    job, events = run_job(server, "download", url=f"{site.url}/missing.mp4")
    assert job["state"] == "failed" and job["attempt"] == 1
    assert "HTTP Error 404" in job["error"] and job["error"].startswith("yt-dlp: ")
    assert not [e for e in events if e["type"] == "job.retrying"]
    assert site.hits["/missing.mp4"] == 1
    assert files_in(job_folder(server, job["id"])) == []


def test_a_503_is_retried(server: Server, site: Site) -> None:
    job, events = run_job(server, "download", url=f"{site.url}/busy.mp4")
    assert job["state"] == "failed" and job["attempt"] == 2, job
    assert "HTTP Error 503" in job["error"]
    assert len([e for e in events if e["type"] == "job.retrying"]) == 1
    assert site.hits["/busy.mp4"] >= 2


def test_a_loopback_address_is_refused_by_the_shipped_recipe(server: Server, site: Site
                                                             ) -> None:
    response = api(server, "POST", "/api/jobs", json={
        "kind": "download_public", "args": {"url": f"{site.url}/clip.mp4"}})
    assert response.status_code == 422, response.text
    assert "private or local address" in response.text


@pytest.mark.parametrize("args", [{"format": "-x"}, {"format": "--exec=touch x"},
                                  {"audio_format": "exe"}, {"url": "-o/etc/passwd"},
                                  {"url": "file:///etc/passwd"}])
def test_nothing_given_becomes_an_option(server: Server, site: Site, args: dict[str, str]
                                         ) -> None:
    response = api(server, "POST", "/api/jobs", json={
        "kind": "download", "args": {"url": f"{site.url}/clip.mp4", **args}})
    assert response.status_code == 422, response.text


def test_the_address_comes_after_a_double_dash(tmp_path: Path) -> None:
    argv = download_argv(["yt-dlp"], "https://example.com/v", tmp_path, tmp_path / "i",
                         tmp_path / "i" / "info.jsonl", format="bv*+ba/b")
    assert argv[-2:] == ["--", "https://example.com/v"]
    assert "--format=bv*+ba/b" in argv and "--ignore-config" in argv
    music = spotdl_argv("spotdl", "https://open.spotify.com/track/x", tmp_path)
    assert music[-2:] == ["download", "https://open.spotify.com/track/x"]  # no `--` in it


def test_cancel_mid_download_leaves_no_process_and_no_finished_file(
        server: Server, site: Site) -> None:
    job_id = submit(server, "download", url=f"{site.url}/slow.mp4")
    cancelled = threading.Event()
    seen: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "job.progress" and (event.get("progress") or 0) > 0 \
                and not cancelled.is_set():
            seen.extend(" ".join(p.cmdline()) for p in marked_processes(job_id))
            cancelled.set()
            assert api(server, "POST", f"/api/jobs/{job_id}/cancel").status_code == 200

    events = follow(server, job_id, on_event=on_event)
    assert events[-1]["type"] == "job.cancelled"
    assert any("yt_dlp" in cmd or "yt-dlp" in cmd for cmd in seen), seen
    assert wait_no_marked(job_id) == []
    job = api(server, "GET", f"/api/jobs/{job_id}").json()
    left = files_in(job_folder(server, job_id))
    assert all(name.startswith("incomplete/") for name in left), left
    assert all(name.startswith("incomplete/") for name in output_names(job))


# --- music: spotdl ----------------------------------------------------------------------------



def test_music_a_message_per_track(server: Server, site: Site) -> None:
    job_id = submit(server, "music", url=f"{site.url}/playlist/road-trip")
    bin_dir = Path(str(shutil.which("spotdl", path=server.env()["PATH"]))).parent

    def on_event(event: dict[str, Any]) -> None:
        message = (event.get("message") or "") if event["type"] == "job.progress" else ""
        for number in (1, 2):
            if message.startswith(f"track {number} of 2: "):
                (bin_dir / f"go-{number}").touch()  # the stand-in goes on

    events = follow(server, job_id, on_event=on_event)
    job = api(server, "GET", f"/api/jobs/{job_id}").json()
    assert job["state"] == "completed", job["error"]
    names = ["Artist One - First Song.mp3", "Artist Two - Second Song.mp3"]
    assert output_names(job) == names
    assert job["result"] == {"files": names, "songs": 2, "failed": []}
    shown = messages(events)
    assert 'track 1 of 2: downloaded "Artist One - First Song"' in shown
    assert 'track 2 of 2: downloaded "Artist Two - Second Song"' in shown
    rising = percents(events)
    assert rising == sorted(rising) and rising[-1] == 100.0 and 50.0 in rising


def test_music_error_carries_spotdls_own_line(server: Server, site: Site) -> None:
    job, _ = run_job(server, "music", url=f"{site.url}/track/nothing")
    assert job["state"] == "failed" and job["attempt"] == 1  # no such song: not retried
    assert job["error"] == ("spotdl exit code 1: LookupError: No results found for song: "
                            "Nobody - Nothing")


def test_music_network_error_is_retried(server: Server, site: Site) -> None:
    job, events = run_job(server, "music", url=f"{site.url}/track/flaky")
    assert job["state"] == "failed" and job["attempt"] == 3
    assert "ConnectionError: HTTPSConnectionPool" in job["error"]
    assert len([e for e in events if e["type"] == "job.retrying"]) == 2


def test_no_yt_dlp_at_all_is_a_clear_job_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from jobgate import downloads
    from jobgate.media import ToolMissing
    from jobgate.pychild import NonRetryable

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no yt-dlp program either
    with pytest.raises(ToolMissing, match=r"^yt-dlp is not installed on this server$") as info:
        downloads.ytdlp_command()
    assert isinstance(info.value, NonRetryable)
    program = tmp_path / "yt-dlp"  # a yt-dlp of its own: its connections cannot be checked
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert downloads.ytdlp_command(check_addresses=False) == [str(program)]
    with pytest.raises(NonRetryable, match="cannot be checked"):
        downloads.ytdlp_command()
    monkeypatch.undo()
    assert downloads.ytdlp_command(check_addresses=False) == [sys.executable, "-m", "yt_dlp"]
    assert downloads.ytdlp_command(allow_networks=["10.0.0.0/8"]) == [
        sys.executable, "-m", "jobgate.ytdlp_guard", "--allow=10.0.0.0/8"]
