"""The dashboard never says something false (tests/test_dashboard.py's browser and pages):
queue places follow other users' starts and cancels, pushed by the server, and while the
server cannot be reached the page says so and stops its clocks.

This module's server runs one job at a time, so every other job waits with a place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from conftest import TEST_KINDS, Server, running_server
from test_dashboard import (
    NO_LOGIN_LIMITS,
    Pages,
    api_cancel,
    api_job,
    api_submit,
    row,
    sign_in,
    wait_api,
)
from test_dashboard import browser as browser  # the module's fixtures, by re-export
from test_dashboard import pages as pages

pytestmark = pytest.mark.sqlite_only("the dashboard does not know the backend")

ONE_AT_A_TIME = """
[limits]
max_running = 1
""" + NO_LOGIN_LIMITS + TEST_KINDS

WITHIN_S = 1.0  # what the issue asks: the page's places match the API's within a second


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("dashboard-live"), ONE_AT_A_TIME) as srv:
        yield srv


def places_match_the_api(page: Page, server: Server, user: str, jobs: list[dict[str, Any]]
                         ) -> None:
    """Each of `jobs` the API has queued shows its API place on the page within a second
    of the API saying it; one no longer queued shows no place."""
    for job in jobs:
        now = api_job(server, user, job["id"])
        badge = row(page, job["id"]).locator(".pos")
        if now["state"] == "queued":
            expect(badge).to_have_text(f"#{now['position']} in queue",
                                       timeout=WITHIN_S * 1000)
        else:
            expect(badge).to_have_count(0, timeout=WITHIN_S * 1000)


def test_my_places_follow_other_users_cancels_and_starts(pages, server):
    blocker = api_submit(server, "alice", "sleep", seconds=120)
    wait_api(server, "alice", blocker["id"], "running")
    bobs = [api_submit(server, "bob", "sleep", seconds=120) for _ in range(2)]
    carols = [api_submit(server, "carol", "sleep", seconds=120) for _ in range(2)]
    alices = [api_submit(server, "alice", "sleep", seconds=120)]
    everyone = bobs + carols + alices

    carol = pages.new()
    sign_in(carol, "carol")
    alice = pages.new()                                         # an admin sees every row
    sign_in(alice, "alice")
    for page in (carol, alice):
        expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
    places_match_the_api(carol, server, "carol", carols)
    places_match_the_api(alice, server, "alice", everyone)
    before = [api_job(server, "carol", j["id"])["position"] for j in carols]

    api_cancel(server, "bob", bobs[0]["id"])                    # someone else's, queued
    places_match_the_api(carol, server, "carol", carols)
    places_match_the_api(alice, server, "alice", everyone)
    after = [api_job(server, "carol", j["id"])["position"] for j in carols]
    assert after != before, "bob's job was behind carol's: nothing moved"

    api_cancel(server, "alice", blocker["id"])                  # it ends, the next starts
    wait_api(server, "alice", blocker["id"], "cancelled")
    # Whichever job starts next, carol's places follow it without an event of her own.
    places_match_the_api(carol, server, "carol", carols)
    places_match_the_api(alice, server, "alice", everyone)
    for job in everyone:
        api_cancel(server, "alice", job["id"])
    for job in carols:
        expect(row(carol, job["id"])).to_have_attribute("data-state", "cancelled")


@pytest.fixture
def own_server(start_server: Any) -> Server:
    with ThreadPoolExecutor(1) as pool:  # its set-up runs asyncio: not in Playwright's loop
        server: Server = pool.submit(start_server, ONE_AT_A_TIME, kinds="").result()
    return server


def test_while_the_server_is_down_the_page_says_so_and_its_clocks_stop(browser, own_server):
    server = own_server
    job = api_submit(server, "carol", "sleep", seconds=300)
    wait_api(server, "carol", job["id"], "running")
    opened = Pages(browser, server)
    # The server is stopped below: the page's requests meanwhile are refused.
    opened.expect_console(r"net::ERR_(CONNECTION_REFUSED|EMPTY_RESPONSE|CONNECTION_RESET)")
    try:
        page = opened.new()
        page.clock.install()
        sign_in(page, "carol")
        expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
        elapsed = row(page, job["id"]).locator(".elapsed")
        expect(elapsed).to_have_text(re.compile(r"^running "))
        shown = elapsed.inner_text()
        page.clock.fast_forward(5_000)                          # while it is up, it counts
        expect(elapsed).not_to_have_text(shown)
        banner = page.locator("#offline")
        expect(banner).to_be_hidden()

        server.stop()
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("The server cannot be reached")
        expect(page.locator("#conn")).to_have_attribute("data-transport", "offline")
        expect(page.locator("#conn")).to_have_text("Offline")
        expect(banner).to_contain_text(re.compile(r"Trying again in \d+ s"))
        stopped = elapsed.inner_text()
        countdown = page.locator("#offline-text").inner_text()
        page.clock.fast_forward(1_500)                          # a tick: the banner counts
        expect(page.locator("#offline-text")).not_to_have_text(countdown)
        assert elapsed.inner_text() == stopped                  # the job's clock does not

        server.start()
        # Look now, not at the next try (the page may have found it back by itself while
        # the server started: then the button is gone and its click does nothing).
        page.evaluate("document.getElementById('offline-retry').click()")
        expect(banner).to_be_hidden()
        expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
        assert not opened.errors, opened.errors
        assert not opened.unexpected_console(), opened.unexpected_console()
        assert not opened.outside, opened.outside
    finally:
        opened.close()


def first_stats(server: Server, user: str, query: str = "") -> dict[str, Any]:
    """The first queue.stats frame of `GET /api/events` for `user`."""
    with server.client(user) as http, http.stream("GET", f"/api/events{query}") as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                data: dict[str, Any] = json.loads(line.removeprefix("data: "))
                if data["type"] == "queue.stats":
                    return data
    raise AssertionError("the stream ended before its queue.stats")


def test_the_stream_carries_a_users_places_only_when_asked(server):
    blocker = api_submit(server, "alice", "sleep", seconds=120)
    wait_api(server, "alice", blocker["id"], "running")
    mine = [api_submit(server, "bob", "sleep", seconds=120) for _ in range(2)]
    theirs = api_submit(server, "carol", "sleep", seconds=120)
    try:
        assert "positions" not in first_stats(server, "bob")   # other clients: as before
        places = first_stats(server, "bob", "?positions=true")["positions"]
        assert places == {j["id"]: api_job(server, "bob", j["id"])["position"] for j in mine}
        everyone = first_stats(server, "alice", "?positions=true")["positions"]
        assert {mine[0]["id"], mine[1]["id"], theirs["id"]} <= set(everyone)  # an admin's
    finally:
        for job in [blocker, *mine, theirs]:
            api_cancel(server, "alice", job["id"])
