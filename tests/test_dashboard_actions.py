"""Actions where the eye is (tests/test_dashboard.py's browser and pages): a row's own
Cancel, Retry and Download buttons, bulk actions over the view's filter asked once with
their count, and the stat strip of the queue's numbers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from conftest import TEST_KINDS, Server, running_server
from test_dashboard import (
    DASHBOARD_KINDS,
    NO_LOGIN_LIMITS,
    api_job,
    api_submit,
    row,
    sign_in,
    wait_api,
)
from test_dashboard import browser as browser  # the module's fixtures, by re-export
from test_dashboard import pages as pages

pytestmark = pytest.mark.sqlite_only("the dashboard does not know the backend")

CONFIG = """
[limits]
max_running = 4
per_user_running = 4
""" + NO_LOGIN_LIMITS + TEST_KINDS + DASHBOARD_KINDS + """
[kinds.flop]
argv = ["sh", "-c", "echo nope >&2; exit 1"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("dashboard-actions"), CONFIG) as srv:
        yield srv


def test_a_rows_buttons_cancel_retry_and_download_it(pages, server):
    page = pages.new()
    sign_in(page, "bob")
    sleeper = api_submit(server, "bob", "sleep", seconds=120)
    report = wait_api(server, "bob", api_submit(server, "bob", "report", lines=2)["id"],
                      "completed")
    item = row(page, sleeper["id"])
    expect(item).to_have_attribute("data-state", "running")
    expect(item.locator('[data-act="retry"]')).to_have_count(0)
    item.get_by_role("button", name="Cancel sleep seconds=120").click()
    expect(page.locator("#confirm-title")).to_have_text("Cancel sleep?")
    page.click("#confirm-ok")
    expect(item).to_have_attribute("data-state", "cancelled")
    assert api_job(server, "bob", sleeper["id"])["state"] == "cancelled"
    expect(item.locator('[data-act="cancel"]')).to_have_count(0)

    item.get_by_role("button", name="Retry sleep seconds=120").click()  # nothing is lost
    expect(item).to_have_attribute("data-state", re.compile("queued|running"))
    assert api_job(server, "bob", sleeper["id"])["state"] in ("queued", "running")

    done = row(page, report["id"])
    with page.expect_download() as info:
        done.get_by_role("button", name=re.compile(r"^Download report\.txt \(5 B\)$")).click()
    assert info.value.suggested_filename == "report.txt"
    assert Path(info.value.path()).read_text() == "done\n"
    with server.client("bob") as http:
        http.post(f"/api/jobs/{sleeper['id']}/cancel")


def test_retry_all_failed_from_the_page_asks_once_with_the_count(pages, server):
    with server.client("carol") as http:
        ids = [http.post("/api/jobs", json={"kind": "flop"}).json()["id"] for _ in range(20)]
    before = {i: wait_api(server, "carol", i, "failed")["finished_at"] for i in ids}
    page = pages.new()
    # The bulk route's dry run and its run; nothing else (the page does not loop over jobs).
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    sign_in(page, "carol", "#/jobs?state=failed")
    expect(page.locator("#bulk-cancel")).to_be_hidden()         # nothing failed is running
    retry = page.locator("#bulk-retry")
    expect(retry).to_have_text("Retry all failed")
    retry.click()
    expect(page.locator("#confirm-text")).to_have_text("This queues 20 jobs again.")
    page.get_by_role("button", name="Keep it").click()
    assert all(api_job(server, "carol", i)["finished_at"] == before[i] for i in ids)

    retry.click()
    expect(page.locator("#confirm-ok")).to_have_text("Retry all failed (20 jobs)")
    page.click("#confirm-ok")
    expect(page.locator("#bulk-note")).to_have_text("Queued again 20 jobs.")
    deadline = time.monotonic() + 60
    for job_id in ids:                                         # each ran again, and failed
        while (job := api_job(server, "carol", job_id))["finished_at"] == before[job_id] \
                or job["state"] != "failed":
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
    bulk_posts = [u for u in posts if u.endswith("/api/jobs/bulk")]
    assert len(bulk_posts) == 3 and not [u for u in posts if u.endswith("/retry")], posts


def test_bulk_buttons_follow_the_filter(pages, server):
    page = pages.new()
    sign_in(page, "bob")
    expect(page.locator("#bulk-cancel")).to_have_text("Cancel my queued jobs")
    expect(page.locator("#bulk-retry")).to_have_text("Retry all failed")
    expect(page.locator("#bulk-delete")).to_have_text("Delete finished")
    page.select_option("#f-state", "completed")
    expect(page.locator("#bulk-cancel")).to_be_hidden()
    expect(page.locator("#bulk-retry")).to_be_hidden()
    expect(page.locator("#bulk-delete")).to_have_text("Delete completed")
    page.select_option("#f-state", "running")
    expect(page.locator("#bulk-cancel")).to_have_text("Cancel my running jobs")
    expect(page.locator("#bulk-delete")).to_be_hidden()


def test_the_stat_strip_shows_the_queues_numbers(pages, server):
    with server.client("alice") as http:
        flop = http.post("/api/jobs", json={"kind": "flop"}).json()["id"]
    wait_api(server, "alice", flop, "failed")
    with server.client("alice") as http:
        queue = http.get("/api/queue").json()
    assert queue["ended"]["1h"]["failed"] >= 1 and queue["ended"]["24h"]["failed"] >= 1
    page = pages.new()
    sign_in(page, "alice")
    strip = page.locator("#stat-strip")
    expect(strip).to_contain_text("Done, last hour")
    expect(strip).to_contain_text("Jobs per minute")
    expect(strip).to_contain_text("Average run time")
    expect(strip).to_contain_text("Success rate, last hour")
    for window, label in (("1h", "last hour"), ("24h", "last day")):
        for state, name in (("completed", "Done"), ("failed", "Failed")):
            shown = strip.locator("li", has_text=f"{name}, {label}").locator(".stat-value")
            assert int(shown.inner_text()) >= queue["ended"][window][state], (window, state)
