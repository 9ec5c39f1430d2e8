"""A playlist with the real yt-dlp: its generic extractor reads an RSS feed's enclosures
as a playlist, so a loopback server with a feed of clips made by ffmpeg is a playlist
offline. Through a real `jobgate serve`, the job's progress goes "item 1 of 4" … "item 4
of 4" with an overall percent rising to 100, every clip lands in the outputs and the
result lists each item. The server holds back each clip until the test has seen its
item's progress event, so no item's reports are skipped by a fast download. With the
addresses checked, an item at a refused address fails alone; the others are kept."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Server, running_server
from jobgate.downloads import download_job
from media_fixtures import FakeContext, ffmpeg, require_ffmpeg
from recipe_helpers import api, follow, messages, output_names, percents, run_job, submit

TITLES = ["First Clip", "Second Clip", "Third Clip", "Fourth Clip"]
GATE_S = 120.0  # a clip held back longer than this: the test has failed already

CONFIG = """
[kinds.download]
recipe = "download"
allow_private_urls = true   # this test's loopback server only
max_attempts = 1
"""


class Feed:
    """A loopback HTTP server on `host`: `/feed.xml` is an RSS feed whose items enclose
    `/clipN.mp4` (or the address of `elsewhere[N]`); a clip whose number is in `gates`
    is sent once its event is set."""

    def __init__(self, host: str, clips: list[bytes]) -> None:
        self.clips = clips
        self.gates: dict[int, threading.Event] = {}
        self.elsewhere: dict[int, str] = {}
        self.paths: list[str] = []
        feed = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                feed.paths.append(self.path)
                if self.path == "/feed.xml":
                    body, kind = feed.xml().encode(), "application/rss+xml"
                elif (m := re.fullmatch(r"/clip(\d+)\.mp4", self.path)) is not None \
                        and 1 <= int(m.group(1)) <= len(feed.clips):
                    number = int(m.group(1))
                    gate = feed.gates.get(number)
                    if gate is not None and not gate.wait(GATE_S):
                        self.send_error(504, "the test never saw this item start")
                        return
                    body, kind = feed.clips[number - 1], "video/mp4"
                else:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def xml(self) -> str:
        items = "".join(
            f"<item><title>{title}</title><guid>clip-{n}</guid>"
            f'<enclosure url="{self.elsewhere.get(n, f"{self.url}/clip{n}.mp4")}" '
            f'type="video/mp4" length="{len(self.clips[n - 1])}"/></item>'
            for n, title in enumerate(TITLES[:len(self.clips)], 1))
        return (f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
                f"<title>Road Trip</title><link>{self.url}/</link>"
                f"<description>clips</description>{items}</channel></rss>")

    def close(self) -> None:
        for gate in self.gates.values():
            gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    require_ffmpeg()
    folder = tmp_path_factory.mktemp("clips")
    made = []
    for number in range(1, len(TITLES) + 1):
        path = folder / f"clip{number}.mp4"
        ffmpeg("-f", "lavfi", "-i", "testsrc=duration=2:size=160x120:rate=10",
               "-f", "lavfi", "-i", f"sine=frequency={200 + 100 * number}:duration=2",
               "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
               "-c:a", "aac", "-shortest", str(path))
        made.append(path.read_bytes())
    return made


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("playlists"), CONFIG) as started:
        yield started


def names(count: int) -> list[str]:
    return [f"{n} - {title} [clip-{n}].mp4" for n, title in enumerate(TITLES[:count], 1)]


def test_a_playlist_goes_item_by_item_to_100(server: Server, clips: list[bytes]) -> None:
    feed = Feed("127.0.0.1", clips)
    feed.gates = {n: threading.Event() for n in range(1, len(clips) + 1)}
    try:
        job_id = submit(server, "download", url=f"{feed.url}/feed.xml", playlist=True)

        def on_event(event: dict[str, Any]) -> None:
            found = re.match(r"item (\d+) of 4\b", event.get("message") or "")
            if event["type"] == "job.progress" and found:
                feed.gates[int(found.group(1))].set()  # its clip may come now

        events = follow(server, job_id, on_event=on_event)
    finally:
        feed.close()
    job = api(server, "GET", f"/api/jobs/{job_id}").json()
    assert job["state"] == "completed", job["error"]
    assert output_names(job) == names(4)
    result = job["result"]
    assert result["files"] == names(4)
    assert [(i["playlist_index"], i["title"]) for i in result["items"]] == \
        list(enumerate(TITLES, 1))
    assert {i["playlist_title"] for i in result["items"]} == {"Road Trip"}
    # Each item in turn, each report's percent inside that item's quarter of the whole.
    shown = [(e["progress"], m.group(1)) for e in events if e["type"] == "job.progress"
             and (m := re.match(r"item (\d) of 4\b", e.get("message") or ""))]
    order = [int(n) for _, n in shown]
    assert order == sorted(order) and set(order) == {1, 2, 3, 4}, shown
    for percent, number in shown:
        if percent is not None:
            assert 25 * (int(number) - 1) <= percent <= 25 * int(number), shown
    rising = percents(events)
    assert rising == sorted(rising) and rising[-1] == 100.0, rising
    assert messages(events)[-1].startswith("4 files, ")


def test_max_items_stops_the_playlist(server: Server, clips: list[bytes]) -> None:
    feed = Feed("127.0.0.1", clips)
    try:
        job, events = run_job(server, "download", url=f"{feed.url}/feed.xml",
                              playlist=True, max_items=2)
    finally:
        feed.close()
    assert job["state"] == "completed", job["error"]
    assert output_names(job) == names(2)
    assert "/clip3.mp4" not in feed.paths and "/clip4.mp4" not in feed.paths
    assert not [m for m in messages(events) if " of 4" in m]


def test_an_item_at_a_refused_address_fails_alone(tmp_path: Path, clips: list[bytes]
                                                  ) -> None:
    # Addresses checked (the recipe as shipped), 127.0.0.2 allowed as if it were public:
    # the feed's second item points at 127.0.0.1.
    feed = Feed("127.0.0.2", clips[:3])
    local = Feed("127.0.0.1", clips[:3])
    feed.elsewhere[2] = f"{local.url}/clip2.mp4"
    try:
        ctx = FakeContext(output_dir=tmp_path / "job")
        ctx.output_dir.mkdir()
        result = download_job(ctx, f"{feed.url}/feed.xml", playlist=True,
                              allow_networks=["127.0.0.2/32"])
    finally:
        feed.close()
        local.close()
    assert result["files"] == [names(3)[0], names(3)[2]]
    assert local.paths == []  # not one request reached it
    assert len(result["errors"]) == 1 and "refused a connection to 127.0.0.1" in \
        result["errors"][0], result["errors"]
