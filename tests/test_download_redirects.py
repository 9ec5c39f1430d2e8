"""yt-dlp goes only where the kind allows, after every redirect and DNS look-up: the real
yt-dlp (as the `download` recipe runs it, `jobgate.ytdlp_guard`) fetches from a loopback
server on 127.0.0.2, the one network these tests allow besides public addresses; a
redirect from it to 127.0.0.1 (where a second server counts the requests it never gets),
to 10.255.255.1 or 169.254.169.254, to a name that resolves to loopback, or a page whose
media address is private, all fail at once, naming the refused address. A kind with
`allow_private_urls = true` runs yt-dlp unchecked; `url` arguments of command kinds are
checked when the job is submitted."""

from __future__ import annotations

import http.server
import importlib.util
import os
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import running_server
from jobgate.config import ConfigError, load_settings
from jobgate.downloads import download_job, download_job_any_address
from jobgate.kinds import parse_kind
from jobgate.pychild import JobContext, NonRetryable
from jobgate.recipes import kind_table, missing_tools_warnings
from jobgate.ytdlp_guard import UNCHECKED_PROGRAM
from recipe_helpers import api

BODY = b"\0\0\0\x18ftypmp42" + b"\0" * 4000  # what the generic extractor takes for an mp4
ALLOWED = ("127.0.0.2/32",)


class Site:
    """A loopback HTTP server on `host`: `/to/HOST:PORT/PATH` redirects (302) to
    `http://HOST:PORT/PATH`, `/page/HOST:PORT/PATH` is an HTML page with that address as
    its video, anything else is a small mp4; each request's path is recorded."""

    def __init__(self, host: str) -> None:
        self.paths: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.paths.append(self.path)
                if self.path.startswith("/to/"):
                    self.send_response(302)
                    # yt-dlp percent-encodes the brackets of an IPv6 address in the path
                    where = urllib.parse.unquote(self.path[len("/to/"):])
                    self.send_header("Location", "http://" + where)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/live.m3u8":  # no #EXT-X-ENDLIST: a live stream
                    body = (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n"
                            b"#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:4.0,\nseg0.ts\n")
                    kind = "application/vnd.apple.mpegurl"
                elif self.path.startswith("/page/"):
                    src = "http://" + self.path[len("/page/"):]
                    body = (f"<html><head><title>a page</title></head><body>"
                            f'<video src="{src}"></video></body></html>').encode()
                    kind = "text/html"
                else:
                    body, kind = BODY, "video/mp4"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.authority = f"{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def allowed_site() -> Iterator[Site]:
    site = Site("127.0.0.2")
    yield site
    site.close()


@pytest.fixture(scope="module")
def local_site() -> Iterator[Site]:
    """The server no download may reach: 127.0.0.1."""
    site = Site("127.0.0.1")
    yield site
    site.close()


class Context(JobContext):
    """A job's context as the recipe sees it, keeping what it reports."""

    def __init__(self, folder: Path) -> None:
        super().__init__("job-1", 1, "bob", folder, threading.Event())
        self.lines: list[str] = []
        self.reports: list[tuple[float | None, str | None]] = []

    def _report_progress(self, percent: float | None, message: str | None) -> None:
        self.reports.append((percent, message))

    def _report_log(self, line: str) -> None:
        self.lines.append(line)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def refused(tmp_path: Path, url: str) -> str:
    """Run the checked download of `url`; the job's error, which must be permanent."""
    ctx = Context(tmp_path / "job")
    with pytest.raises(NonRetryable) as info:
        download_job(ctx, url, allow_networks=ALLOWED)
    assert type(info.value) is NonRetryable  # not a missing tool: the refusal itself
    assert files(tmp_path / "job") == []
    return str(info.value)


def test_an_allowed_address_downloads(tmp_path: Path, allowed_site: Site) -> None:
    ctx = Context(tmp_path / "job")
    url = f"http://{allowed_site.authority}/to/{allowed_site.authority}/clip.mp4"
    result = download_job(ctx, url, allow_networks=ALLOWED)
    assert result["files"] == ["clip [clip].mp4"]
    assert (tmp_path / "job" / "clip [clip].mp4").read_bytes() == BODY


def test_a_redirect_to_another_loopback_address_is_refused(
        tmp_path: Path, allowed_site: Site, local_site: Site) -> None:
    before = len(local_site.paths)
    error = refused(tmp_path, f"http://{allowed_site.authority}/to/{local_site.authority}/x")
    port = local_site.authority.split(":")[1]
    assert error.startswith(f"yt-dlp: refused a connection to 127.0.0.1 port {port}: "
                            "not an address this kind may reach"), error
    assert len(local_site.paths) == before  # no request ever reached it


@pytest.mark.parametrize(("target", "address"), [
    ("10.255.255.1/x.mp4", "10.255.255.1"),
    ("169.254.169.254/latest/meta-data", "169.254.169.254"),
    ("[::1]:80/x", "[::1]"), ("[fd00::1]/x", "[fd00::1]")])
def test_a_redirect_to_a_private_address_is_refused_before_connecting(
        tmp_path: Path, allowed_site: Site, target: str, address: str) -> None:
    # 10.255.255.1 answers nothing: a connection attempt would hang for the 30 s socket
    # timeout and end as a retryable timeout, not as this refusal.
    error = refused(tmp_path, f"http://{allowed_site.authority}/to/{target}")
    assert error.startswith(f"yt-dlp: refused a connection to {address} port 80: "), error


def test_a_name_that_resolves_to_a_refused_address_is_refused(
        tmp_path: Path, allowed_site: Site, local_site: Site) -> None:
    port = local_site.authority.split(":")[1]
    error = refused(tmp_path, f"http://{allowed_site.authority}/to/localhost:{port}/x.mp4")
    assert f"refused a connection to 127.0.0.1 port {port}" in error \
        or f"refused a connection to [::1] port {port}" in error, error


def test_a_page_whose_media_is_at_a_refused_address_is_refused(
        tmp_path: Path, allowed_site: Site, local_site: Site) -> None:
    before = len(local_site.paths)
    error = refused(tmp_path,
                    f"http://{allowed_site.authority}/page/{local_site.authority}/clip.mp4")
    assert "refused a connection to 127.0.0.1" in error, error
    assert len(local_site.paths) == before


def test_a_stream_yt_dlp_would_hand_to_ffmpeg_is_refused(tmp_path: Path,
                                                         allowed_site: Site) -> None:
    # yt-dlp records a live HLS stream with ffmpeg, which would fetch every segment
    # where this process cannot check it.
    error = refused(tmp_path, f"http://{allowed_site.authority}/live.m3u8")
    assert error.startswith("yt-dlp: refused a connection to 127.0.0.2: yt-dlp would hand "
                            "the address to ffmpeg"), error
    assert "/seg0.ts" not in allowed_site.paths


def test_the_first_address_is_checked_again_when_the_job_runs(tmp_path: Path,
                                                              local_site: Site) -> None:
    # Checked at submission, but a name may resolve elsewhere by the time the job runs.
    error = refused(tmp_path, f"http://{local_site.authority}/clip.mp4")
    assert "refused a connection to 127.0.0.1" in error


def test_a_kind_allowing_private_urls_follows_any_redirect(
        tmp_path: Path, allowed_site: Site, local_site: Site) -> None:
    ctx = Context(tmp_path / "job")
    result = download_job_any_address(
        ctx, f"http://{allowed_site.authority}/to/{local_site.authority}/clip.mp4")
    assert result["files"] == ["clip [clip].mp4"]
    assert "/clip.mp4" in local_site.paths


def test_allow_private_urls_picks_the_unchecked_function() -> None:
    checked = parse_kind("d", kind_table("d", {"recipe": "download"}, ConfigError),
                         ConfigError)
    unchecked = parse_kind("d", kind_table("d", {"recipe": "download",
                                                 "allow_private_urls": True}, ConfigError),
                           ConfigError)
    assert checked.function == "jobgate.downloads:download_job"
    assert unchecked.function == "jobgate.downloads:download_job_any_address"
    assert unchecked.allow_private_urls and not checked.allow_private_urls


def test_a_yt_dlp_program_without_the_module_is_a_warning_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "jobgate.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                    '[kinds.grab]\nrecipe = "download"\n'
                    '[kinds.grab_local]\nrecipe = "download"\nallow_private_urls = true\n')
    settings = load_settings(path, env={})
    program = tmp_path / "bin" / "yt-dlp"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{program.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    lines = [line for line in missing_tools_warnings(settings) if "yt-dlp" in line]
    assert lines == [f"kind grab: {UNCHECKED_PROGRAM}; its jobs fail"]  # grab_local runs it


CONFIG = """
[kinds.fetch]
argv = ["python3", "-c", "import sys; print(sys.argv[1])", "{url}"]
args.url = { type = "url" }

[kinds.fetch_local]
argv = ["python3", "-c", "import sys; print(sys.argv[1])", "{url}"]
args.url = { type = "url" }
allow_private_urls = true

[kinds.download]
recipe = "download"
"""


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://10.255.255.1/x",
                                 "http://169.254.169.254/latest", "http://localhost/x",
                                 "http://[::1]/x"])
def test_url_arguments_are_checked_when_a_job_is_submitted(
        tmp_path_factory: pytest.TempPathFactory, url: str, server_for_urls: Any) -> None:
    for kind in ("fetch", "download"):
        response = api(server_for_urls, "POST", "/api/jobs",
                       json={"kind": kind, "args": {"url": url}})
        assert response.status_code == 422, response.text
        assert "private or local address" in response.text
    allowed = api(server_for_urls, "POST", "/api/jobs",
                  json={"kind": "fetch_local", "args": {"url": url}})
    assert allowed.status_code == 201, allowed.text


@pytest.fixture(scope="module")
def server_for_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_server(tmp_path_factory.mktemp("urls"), CONFIG) as started:
        yield started
