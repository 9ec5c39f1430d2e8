"""The small things that make the dashboard say true things plainly (tests/test_dashboard.py's
server, browser and pages): an empty filter says so, titles a person can read with the id
small beside them, relative times, no "Attempt 0 of 1", a retry's countdown that counts,
a submitted job confirmed on a phone, no failed request on a signed-out visit, and
placeholders readable in both schemes.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from playwright.sync_api import expect

from test_dashboard import (
    CONTRAST_JS,
    PHONE,
    api_submit,
    row,
    sign_in,
    submit_form,
    wait_api,
)
from test_dashboard import browser as browser  # the module's fixtures, by re-export
from test_dashboard import pages as pages
from test_dashboard import server as server

pytestmark = pytest.mark.sqlite_only("the dashboard does not know the backend")


def test_a_filter_without_a_match_says_so(pages):
    page = pages.new()
    sign_in(page, "alice", "#/jobs?owner=nobody-has-this-name")
    empty = page.locator("#jobs-empty")
    expect(empty).to_be_visible()
    expect(empty).to_have_text("No jobs of nobody-has-this-name match this filter.")
    page.select_option("#f-state", "cancelled")
    expect(empty).to_have_text("No cancelled jobs of nobody-has-this-name match this filter.")


def test_a_jobs_title_is_its_kind_and_main_argument_with_the_id_beside(pages, server):
    job = wait_api(server, "bob", api_submit(server, "bob", "pick", name="holiday")["id"],
                   "completed")
    page = pages.new()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, "bob", f"#/job/{job['id']}")
    expect(page.locator("#job-title")).to_have_text("pick holiday")   # the required one
    expect(page).to_have_title("pick holiday · completed · jobgate")
    expect(page.locator("#job-id")).to_have_text(job["id"])
    page.click("#copy-id")
    expect(page.locator("#copy-id")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == job["id"]
    expect(page.locator("#job-facts")).to_contain_text(re.compile(r"Finished(just now|\d+ s ago)"))
    facts = page.locator("#job-facts").inner_text()
    assert "Attempt1 of 1" in facts.replace("\n", "").replace("\t", "")


def test_a_queued_job_has_no_attempt_yet_and_its_retry_counts_down(pages, server):
    page = pages.new()
    page.clock.install()
    sign_in(page, "carol")
    blocker = api_submit(server, "carol", "sleep", seconds=60)      # one at a time: queued
    wait_api(server, "carol", blocker["id"], "running")
    queued = api_submit(server, "carol", "noop")
    page.goto(f"/#/job/{queued['id']}")
    expect(page.locator("#job-state")).to_have_attribute("data-state", "queued")
    facts = page.locator("#job-facts")
    expect(facts).to_contain_text("Owner")
    expect(facts).not_to_contain_text("Attempt")                    # never "Attempt 0 of 1"
    with server.client("carol") as http:
        http.post(f"/api/jobs/{queued['id']}/cancel")
        http.post(f"/api/jobs/{blocker['id']}/cancel")

    # A delayed job counts down to its start; a finished one says how long ago, and both go on.
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=50)).isoformat()
    with server.client("carol") as http:
        delayed = http.post("/api/jobs", json={"kind": "noop", "run_at": later}).json()
    done = wait_api(server, "carol", api_submit(server, "carol", "noop")["id"], "completed")
    page.goto("/#/jobs")
    countdown = row(page, delayed["id"]).locator(".countdown")
    expect(countdown).to_have_text(re.compile(r"^starts in \d+ s$"))
    when = row(page, done["id"]).locator(".when")
    expect(when).to_have_text(re.compile(r"^finished (just now|\d+ s ago)$"))
    shown = countdown.inner_text()
    page.clock.fast_forward(20_000)
    expect(countdown).not_to_have_text(shown)
    expect(countdown).to_have_text(re.compile(r"^starts in \d+ s$"))
    page.clock.fast_forward(120_000)
    expect(when).to_have_text("finished 2 min ago")
    with server.client("carol") as http:
        http.post(f"/api/jobs/{delayed['id']}/cancel")


def test_a_job_submitted_on_a_phone_is_confirmed_and_brought_into_view(pages):
    page = pages.new(viewport=PHONE, is_mobile=True, has_touch=True)
    sign_in(page, "carol")
    page.click("#submit-box summary")
    job = submit_form(page, "noop").json()
    note = page.locator("#submit-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Submitted noop")
    expect(note.get_by_role("link", name="Open it")).to_have_attribute("href", f"#/job/{job['id']}")
    expect(row(page, job["id"])).to_be_in_viewport()


def test_a_signed_out_visit_makes_no_failed_request(pages):
    failed: list[str] = []
    page = pages.new()
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto("/")
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#username")).to_be_focused()
    assert failed == []                                  # no 401 from asking who is here
    # (and `pages` fails the test on any console error)


PLACEHOLDER_JS = CONTRAST_JS.split("const box")[0] + """
    const input = document.createElement('input');
    input.placeholder = 'Everyone';
    document.querySelector('#main .card, #main').append(input);
    const fg = rgb(getComputedStyle(input, '::placeholder').color), bg = background(input);
    input.remove();
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    return (a + 0.05) / (b + 0.05);
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_placeholders_are_readable_in_both_schemes(pages, scheme):
    page = pages.new(color_scheme=scheme)
    sign_in(page, "carol")
    ratio = page.evaluate(PLACEHOLDER_JS)
    assert ratio >= 4.5, f"placeholder contrast {ratio:.2f}:1 ({scheme})"


def test_on_a_wide_screen_the_header_lines_up_with_the_content(pages):
    page = pages.new(viewport={"width": 1700, "height": 900})
    sign_in(page, "carol")
    brand = page.locator(".top .brand").bounding_box()
    form = page.locator("#submit-box").bounding_box()
    signout = page.locator("#signout").bounding_box()
    jobs = page.locator(".jobs").bounding_box()
    assert brand and form and signout and jobs
    assert abs(brand["x"] - form["x"]) <= 2, (brand, form)
    assert abs((signout["x"] + signout["width"]) - (jobs["x"] + jobs["width"])) <= 2


RECORD_NOTIFICATIONS = """(() => {
    const Real = window.Notification;
    window.shown = [];
    class Recorded extends Real {
        constructor(title, options) { super(title, options); window.shown.push(title); }
    }
    Object.defineProperty(Recorded, 'permission', {get: () => Real.permission});
    Recorded.requestPermission = (...args) => Real.requestPermission(...args);
    window.Notification = Recorded;
})()"""


def test_an_opted_in_browser_notification_says_which_job_ended_while_hidden(pages, server):
    page = pages.new(permissions=["notifications"])
    page.add_init_script(RECORD_NOTIFICATIONS)
    sign_in(page, "bob")
    expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
    notify = page.get_by_role("button", name="Notify me")
    hide = """(on) => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => on});
        document.dispatchEvent(new Event('visibilitychange'));
    }"""
    page.evaluate(hide, True)  # not asked for yet: the title says it, no notification
    first = wait_api(server, "bob", api_submit(server, "bob", "noop")["id"], "completed")
    expect(row(page, first["id"])).to_have_attribute("data-state", "completed")
    assert page.evaluate("window.shown") == []
    page.evaluate(hide, False)

    notify.click()
    expect(page.locator("#notify")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#notify")).to_have_text("Notifying")
    page.evaluate(hide, True)
    second = wait_api(server, "bob", api_submit(server, "bob", "noop")["id"], "completed")
    expect(row(page, second["id"])).to_have_attribute("data-state", "completed")
    page.wait_for_function("window.shown.length === 1")
    assert page.evaluate("window.shown") == ["jobgate: noop completed"]
    page.evaluate(hide, False)

    page.locator("#notify").click()  # off again, and remembered
    expect(page.locator("#notify")).to_have_text("Notify me")
    page.reload()
    expect(page.locator("#notify")).to_have_attribute("aria-pressed", "false")


def test_a_job_that_ends_while_the_tab_is_hidden_shows_in_its_title(pages, server):
    page = pages.new()
    sign_in(page, "bob")
    expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
    page.evaluate("""() => {
        window.hide = (on) => {
            Object.defineProperty(document, 'hidden', {configurable: true, get: () => on});
            document.dispatchEvent(new Event('visibilitychange'));
        };
        window.hide(true);
    }""")
    job = wait_api(server, "bob", api_submit(server, "bob", "noop")["id"], "completed")
    expect(page).to_have_title("(1 ended) jobgate")
    expect(row(page, job["id"])).to_have_attribute("data-state", "completed")
    page.evaluate("window.hide(false)")
    expect(page).to_have_title("jobgate")
