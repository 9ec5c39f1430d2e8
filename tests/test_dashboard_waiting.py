"""The list's Waiting section in a real browser (tests/test_dashboard.py's server, browser
and pages; one job at a time per user there): a user's own queued jobs in the order they
will start, #1 first, renumbered live as the queue moves, then those with no place yet
saying why (a later start, a job to wait for); readable and without axe violations in
both colour schemes.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from playwright.sync_api import expect

from test_dashboard import PHONE, api_cancel, api_submit, no_sideways_scroll, sign_in, wait_api
from test_dashboard import browser as browser  # the module's fixtures, by re-export
from test_dashboard import pages as pages
from test_dashboard import server as server
from test_dashboard_a11y import serious_violations

pytestmark = pytest.mark.sqlite_only("the dashboard does not know the backend")


def submit(server: Any, user: str, body: dict[str, Any]) -> dict[str, Any]:
    with server.client(user) as http:
        r = http.post("/api/jobs", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_waiting_lists_my_queued_jobs_in_order_and_renumbers_live(pages, server, scheme):
    blocker = api_submit(server, "carol", "sleep", seconds=120)   # one at a time: the rest wait
    wait_api(server, "carol", blocker["id"], "running")
    queued = [api_submit(server, "carol", "pick", name=name) for name in ("one", "two", "three")]
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)).isoformat()
    delayed = submit(server, "carol", {"kind": "noop", "run_at": later})
    after = submit(server, "carol", {"kind": "noop", "depends_on": [queued[2]["id"]]})
    others = api_submit(server, "bob", "sleep", seconds=120)      # not carol's: not listed
    try:
        page = pages.new(color_scheme=scheme)
        sign_in(page, "carol")
        expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
        section = page.get_by_role("region", name=re.compile("^Waiting to run"))
        expect(section).to_be_visible()
        expect(section.get_by_role("heading", level=3)).to_have_text("Waiting to run (5)")
        items = section.get_by_role("list").get_by_role("listitem")
        # Those with no place after, by when they can start: the one behind #3, then later.
        ids = [*(j["id"] for j in queued), after["id"], delayed["id"]]
        expect(items).to_have_count(5)
        assert [items.nth(i).get_attribute("data-id") for i in range(5)] == ids
        badges = section.locator("li > a > :first-child")
        expect(badges).to_have_text(["#1", "#2", "#3", "later", "later"])
        expect(items.nth(0)).to_contain_text("pick one")
        expect(items.nth(3)).to_contain_text("waiting for the job it depends on")
        expect(items.nth(4)).to_contain_text(re.compile(r"starts in \d+ min"))
        expect(items.nth(0).get_by_role("link")).to_have_attribute(
            "href", f"#/job/{queued[0]['id']}")
        assert others["id"] not in section.inner_text()
        # The rows of the list still say their place too.
        expect(page.locator(f'#job-list li[data-id="{queued[1]["id"]}"] .pos')).to_have_text(
            "#2 in queue")
        found = serious_violations(page)
        assert not found, f"axe ({scheme}): {found}"

        second = section.locator(f'li[data-id="{queued[1]["id"]}"] a')
        second.focus()
        api_cancel(server, "carol", queued[0]["id"])
        expect(badges).to_have_text(["#1", "#2", "later", "later"], timeout=1_000)
        expect(second).to_be_focused()                  # moved up, not drawn again
        expect(second).to_contain_text("pick two")
        expect(items).to_have_count(4, timeout=1_000)
        assert [items.nth(i).get_attribute("data-id") for i in range(4)] == ids[1:]
        expect(section.get_by_role("heading", level=3)).to_have_text("Waiting to run (4)")
    finally:
        for job in (*queued, delayed, after, blocker):
            api_cancel(server, "carol", job["id"])
        api_cancel(server, "bob", others["id"])


def test_waiting_is_not_shown_with_nothing_queued_nor_under_a_finished_filter(pages, server):
    blocker = api_submit(server, "carol", "sleep", seconds=120)
    wait_api(server, "carol", blocker["id"], "running")
    page = pages.new()
    sign_in(page, "carol")
    expect(page.locator("#job-list li").first).to_be_visible()
    expect(page.locator("#waiting")).to_be_hidden()             # running is not waiting
    queued = api_submit(server, "carol", "noop")
    try:
        expect(page.locator("#waiting-list li")).to_have_count(1)  # a submit elsewhere, live
        phone = pages.new(viewport=PHONE, is_mobile=True, has_touch=True)
        sign_in(phone, "carol")
        expect(phone.locator("#waiting-list li")).to_have_count(1)
        no_sideways_scroll(phone)
        page.select_option("#f-state", "completed")
        expect(page.locator("#waiting")).to_be_hidden()
        page.select_option("#f-state", "queued")
        expect(page.locator("#waiting")).to_be_visible()
    finally:
        api_cancel(server, "carol", queued["id"])
        api_cancel(server, "carol", blocker["id"])
    expect(page.locator("#waiting")).to_be_hidden()
