"""The dashboard's outputs in a real browser (tests/test_dashboard.py's browser and pages):
each with its size, a partial one said to be partial, and a download through a signed
link that the browser fetches itself, not a fetch with the bearer token into memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from conftest import Server, running_server
from test_dashboard import CONFIG, api_submit, sign_in, wait_api
from test_dashboard import browser as browser  # the module's fixtures, by re-export
from test_dashboard import pages as pages

pytestmark = pytest.mark.sqlite_only("the dashboard does not know the backend")

KINDS = r"""
[kinds.film]
argv = ["sh", "-c", 'head -c 300000 /dev/zero > "$0/film.mp4"', "{output_dir}"]

[kinds.halfway]
argv = ["sh", "-c", 'printf "half" > "$0/part.mp4"; exit 1', "{output_dir}"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("dashboard-outputs"), CONFIG + KINDS) as srv:
        yield srv


def test_an_output_downloads_through_a_link_not_with_the_token(pages, server):
    job = wait_api(server, "bob", api_submit(server, "bob", "film")["id"], "completed")
    page = pages.new()
    sign_in(page, "bob", f"#/job/{job['id']}")
    item = page.locator("#job-outputs li")
    expect(item).to_have_count(1)
    expect(item).to_contain_text("film.mp4")
    expect(item).to_contain_text("293 KB")
    expect(item).not_to_contain_text("partial")

    requests: list[dict[str, Any]] = []
    page.on("request", lambda r: requests.append(
        {"method": r.method, "url": r.url, "auth": r.headers.get("authorization")}))
    with page.expect_download() as info:
        page.get_by_role("button", name="Download film.mp4").click()
    download = info.value
    assert download.suggested_filename == "film.mp4"
    assert Path(download.path()).read_bytes() == b"\0" * 300_000

    asked = [r for r in requests if r["url"].endswith("/outputs/film.mp4/link")]
    assert [r["method"] for r in asked] == ["POST"] and asked[0]["auth"]
    # The browser fetched the signed link itself (an `<a download>` sends no bearer header;
    # the page saw no request of its own for the file).
    assert download.url.startswith(f"{server.url}/api/jobs/{job['id']}/download/film.mp4?")
    assert "signature=" in download.url and "expires=" in download.url
    assert not [r for r in requests if r["url"].endswith("/outputs/film.mp4")], requests


def test_a_failed_jobs_output_shows_as_partial(pages, server):
    job = wait_api(server, "bob", api_submit(server, "bob", "halfway")["id"], "failed")
    assert job["outputs"] == [{"name": "part.mp4", "size": 4, "content_type": "video/mp4",
                               "partial": True}]
    page = pages.new()
    sign_in(page, "bob", f"#/job/{job['id']}")
    item = page.locator("#job-outputs li")
    expect(item).to_have_count(1)
    expect(item).to_have_class(re.compile(r"\bpartial\b"))
    expect(item).to_contain_text("part.mp4")
    expect(item).to_contain_text("partial: the job did not complete")
