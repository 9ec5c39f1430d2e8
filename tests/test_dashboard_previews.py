"""The dashboard's outputs seen in place and shared, in Debian's Chromium: an image, a video
and a sound previewed inline from a signed link (played by the browser, never fetched
into the page's memory), "Copy link" putting a link that works without signing in on the
clipboard, and a running job's estimated time left (`remaining_s`) beside its progress.
The media are made by Debian's ffmpeg.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from conftest import Server, running_server
from test_dashboard import CONFIG, api_cancel, api_submit, sign_in, wait_api
from test_dashboard import browser as browser  # the module's fixtures, by re-export
from test_dashboard import pages as pages

pytestmark = pytest.mark.sqlite_only("the dashboard does not know the backend")

KINDS = r"""
[kinds.media]
argv = ["sh", "-c", '''
ffmpeg -v error -f lavfi -i testsrc=size=64x48:rate=10 -t 1 -pix_fmt yuv420p "$0/clip.mp4" &&
ffmpeg -v error -f lavfi -i sine=frequency=440:duration=1 "$0/tone.wav" &&
ffmpeg -v error -f lavfi -i testsrc=size=32x24 -frames:v 1 "$0/frame.png" &&
echo notes > "$0/notes.txt"''', "{output_dir}"]
timeout = "60s"

[kinds.halfway]
argv = ["sh", "-c", 'sleep 2; echo "done 30"; sleep 120']
progress = 'done (?P<percent>\d+)'
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("dashboard-previews"), CONFIG + KINDS) as srv:
        yield srv


@pytest.fixture(scope="module")
def media_job(server: Server) -> dict[str, Any]:
    job = wait_api(server, "bob", api_submit(server, "bob", "media")["id"], "completed",
                   "failed", timeout_s=60)
    assert job["state"] == "completed", job
    return job


def wait_until_true(locator: Any, check: str, timeout_s: float = 15) -> None:
    """Poll `check` (a function of the element) until it holds: the page's CSP forbids
    the string evaluation Playwright's wait_for_function uses."""
    deadline = time.monotonic() + timeout_s
    while not locator.evaluate(check):
        assert time.monotonic() < deadline, f"{check} never held"
        time.sleep(0.05)


def output_item(page: Any, name: str) -> Any:
    return page.locator("#job-outputs li").filter(has_text=name)


def test_images_video_and_sound_preview_in_place_from_a_signed_link(pages, server, media_job):
    page = pages.new()
    sign_in(page, "bob", f"#/job/{media_job['id']}")
    expect(page.locator("#job-outputs li")).to_have_count(4)
    expect(page.locator("#job-status")).to_contain_text("100%")
    expect(page.locator("#job-status")).not_to_contain_text("null")
    # Text has nothing to preview; the rest do.
    expect(output_item(page, "notes.txt").get_by_role("button", name=re.compile("Preview"))
           ).to_have_count(0)

    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    for name, tag, ready in (
            ("frame.png", "img", "e => e.complete && e.naturalWidth === 32"),
            ("clip.mp4", "video", "e => e.readyState >= 1 && Math.abs(e.duration - 1) < 0.2"),
            ("tone.wav", "audio", "e => e.readyState >= 1 && Math.abs(e.duration - 1) < 0.2")):
        item = output_item(page, name)
        item.get_by_role("button", name=f"Preview {name}").click()
        media = item.locator(tag)
        expect(media).to_have_count(1)
        wait_until_true(media, ready)
        src = media.get_attribute("src") or ""
        assert f"api/jobs/{media_job['id']}/download/{name}?" in src and "signature=" in src
        assert media.get_attribute("alt" if tag == "img" else "aria-label")
        # Shown and hidden again by the same button.
        item.get_by_role("button", name=f"Hide the preview of {name}").click()
        expect(media).to_have_count(0)
    # The page asked for links; the files themselves were the media elements' requests.
    assert [u for u in requests if u.endswith("/link")], requests


def test_copy_link_puts_a_link_that_needs_no_sign_in_on_the_clipboard(pages, server, media_job):
    page = pages.new(permissions=["clipboard-read", "clipboard-write"])
    sign_in(page, "bob", f"#/job/{media_job['id']}")
    item = output_item(page, "notes.txt")
    item.get_by_role("button", name="Copy link to notes.txt").click()
    expect(item).to_contain_text(re.compile(r"Link copied: it works for \d+ (min|h)"))
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith(f"{server.url}/api/jobs/{media_job['id']}/download/notes.txt?")
    # Anyone with the link gets the file, without a token, until it expires.
    got = httpx.get(copied)
    assert got.status_code == 200 and got.text == "notes\n"


def test_a_running_job_shows_its_estimated_time_left(pages, server):
    job = api_submit(server, "carol", "halfway")
    try:
        page = pages.new()
        sign_in(page, "carol")
        wait_api(server, "carol", job["id"], "running")
        row = page.locator(f'#job-list li[data-id="{job["id"]}"]')
        expect(row).to_contain_text(re.compile(r"about .+ left"), timeout=20_000)
        page.goto(f"/#/job/{job['id']}")
        expect(page.locator("#view-job")).to_contain_text(re.compile(r"about .+ left"))
    finally:
        api_cancel(server, "carol", job["id"])
