"""The web dashboard in a real browser: Playwright driving Debian's Chromium, headless.

One `jobgate serve` and one browser for the whole module; each test opens its own browser
context (its own storage, so its own session) and looks only at the jobs it makes.
The shared server lets each user run one job at a time, so a user's second job waits in
the queue with a position while the first runs.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from conftest import TEST_KINDS, Server, running_server
from jobgate.dashboard import WEB_DIR

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
POLL_MS = 1500  # live.js POLL_MS
# The page's scripts in the order index.html loads them: app.js (the core) first, each view's
# file after it, admin.js last.
SCRIPTS = ["app.js", "signin.js", "submit.js", "waiting.js", "list.js", "detail.js", "log.js",
           "live.js", "admin.js"]

# The page talks to the API only, it does not know the backend: SQLite is enough here
# (tests/test_api.py and tests/test_stream.py run the same API on both backends).
pytestmark = pytest.mark.sqlite_only("the dashboard does not know the backend")

# Beyond the shared test kinds: a kind with choices, a pattern and a required argument,
# and one that logs line by line and leaves an output file.
DASHBOARD_KINDS = r"""
[kinds.pick]
description = "Echoes its arguments"
argv = ["echo", "{mode}", "{name}", "{loud}"]
[kinds.pick.args]
mode = { type = "string", choices = ["fast", "slow"], default = "fast" }
name = { type = "string", pattern = "^[a-z]+$", description = "lower-case letters" }
loud = { type = "boolean", default = false }

[kinds.report]
argv = ["sh", "-c", '''
i=1
while [ $i -le $0 ]; do echo "line $i"; i=$((i+1)); sleep $1; done
echo done > "$2/report.txt"''', "{lines}", "{delay}", "{output_dir}"]
[kinds.report.args]
lines = { type = "integer", min = 1, max = 10000, default = 3 }
delay = { type = "number", min = 0, max = 5, default = 0 }
"""

# The tests sign in (and submit) far more often than people do: no rate limits here.
NO_LOGIN_LIMITS = """
[rate_limits]
login_per_user = "off"
login_per_ip = "off"
submit_per_user = "off"
submit_per_ip = "off"
"""

CONFIG = """
[limits]
max_running = 4
per_user_running = 1
""" + NO_LOGIN_LIMITS + TEST_KINDS + DASHBOARD_KINDS

EXPIRED_NOTE = "Your session expired"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("dashboard"), CONFIG) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Browser]:
    # After the server: its set-up runs asyncio, which cannot start inside Playwright's loop.
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: scripts/test installs it"
    # As the pages' own actions wait (Pages.new): 5 s, Playwright's default for `expect`,
    # is short for a page on a 2-core machine running the rest of the suite beside it.
    expect.set_options(timeout=15_000)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Pages:
    """Opens pages in fresh browser contexts; fails the test on any script error in them,
    on any error in their consoles (a failed request is one: a 4xx or 5xx, or a refused
    connection) but those the test expects (`expect_console`), and on any request that
    leaves the server (the page must work offline)."""

    def __init__(self, browser: Browser, server: Server) -> None:
        self.browser, self.server = browser, server
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.console: list[str] = []
        self.expected: list[re.Pattern[str]] = []

    def expect_console(self, pattern: str) -> None:
        """An error the test makes on purpose (a rejected form, an expired token)."""
        self.expected.append(re.compile(pattern))

    def unexpected_console(self) -> list[str]:
        return [m for m in self.console if not any(p.search(m) for p in self.expected)]

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            where = message.location.get("url", "") if message.location else ""
            self.console.append(f"{message.text} ({where})")

    def new(self, viewport: dict[str, int] | None = None, **options: Any) -> Page:
        context = self.browser.new_context(viewport=viewport or DESKTOP,  # type: ignore[arg-type]
                                           base_url=self.server.url, **options)
        context.set_default_timeout(15_000)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._on_console)
        page.on("request", self._check_request)
        return page

    def _check_request(self, request: Any) -> None:
        url = request.url
        if not (url.startswith(self.server.url) or url.startswith(("data:", "blob:"))):
            self.outside.append(url)

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Browser, server: Server) -> Iterator[Pages]:
    made = Pages(browser, server)
    try:
        yield made
    finally:
        made.close()
    assert not made.errors, f"script errors in the page: {made.errors}"
    assert not made.unexpected_console(), f"console errors: {made.unexpected_console()}"
    assert not made.outside, f"the page reached outside the server: {made.outside}"


# --- helpers ------------------------------------------------------------------------------

def sign_in(page: Page, user: str, hash_: str = "#/jobs") -> None:
    """Open the dashboard at `hash_` and sign in through the form."""
    page.goto(f"/{hash_}")
    expect(page.locator("#signin-form")).to_be_visible()
    page.fill("#username", user)
    page.fill("#password", f"{user}-password")
    page.click("#signin-button")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#who-name")).to_contain_text(user)


def row(page: Page, job_id: str) -> Any:
    return page.locator(f'#job-list li[data-id="{job_id}"]')


def submit_form(page: Page, kind: str, **values: Any) -> Any:
    """Fill the generated form for `kind` and submit it; the API's response."""
    page.select_option("#kind", kind)
    for name, value in values.items():
        field = page.locator(f'#kind-fields [data-arg="{name}"]')
        if isinstance(value, bool):
            field.set_checked(value)
        elif field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(str(value))
        else:
            field.fill(str(value))
    with page.expect_response(lambda r: r.url.endswith("/api/jobs")
                              and r.request.method == "POST") as info:
        page.click("#submit-button")
    return info.value


def api_job(server: Server, user: str, job_id: str) -> dict[str, Any]:
    with server.client(user) as http:
        r = http.get(f"/api/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())


def api_submit(server: Server, user: str, kind: str, **args: Any) -> dict[str, Any]:
    with server.client(user) as http:
        r = http.post("/api/jobs", json={"kind": kind, "args": args})
        assert r.status_code == 201, r.text
        return dict(r.json())


def api_cancel(server: Server, user: str, job_id: str) -> None:
    with server.client(user) as http:
        http.post(f"/api/jobs/{job_id}/cancel")


def wait_api(server: Server, user: str, job_id: str, *states: str,
             timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = api_job(server, user, job_id)
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} is {job['state']}, not {states}"
        time.sleep(0.05)


def record_row(page: Page, job_id: str) -> None:
    """Record every state and progress value the job's row shows, in `window.seen`."""
    page.evaluate("""(id) => {
        window.seen = [];
        const list = document.getElementById('job-list');
        const record = () => {
            const li = list.querySelector(`li[data-id="${id}"]`);
            if (!li) return;
            const bar = li.querySelector('progress');
            const value = bar && bar.hasAttribute('value') ? Number(bar.value) : null;
            const last = window.seen[window.seen.length - 1];
            if (!last || last.state !== li.dataset.state || last.progress !== value) {
                window.seen.push({state: li.dataset.state, progress: value});
            }
        };
        new MutationObserver(record).observe(list,
            {subtree: true, childList: true, attributes: true});
        record();
    }""", job_id)


def seen(page: Page) -> list[dict[str, Any]]:
    return list(page.evaluate("window.seen"))


def transport(page: Page) -> str:
    return str(page.get_attribute("#conn", "data-transport"))


# --- static files ---------------------------------------------------------------------------

def test_the_page_and_its_files_are_served_from_the_package(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert re.findall(r'<script src="ui/([^"]+)" defer></script>', page.text) == SCRIPTS
    assert sorted(p.name for p in WEB_DIR.glob("*.js")) == sorted(SCRIPTS)   # none left out
    for name, media in (*((s, "text/javascript") for s in SCRIPTS),
                        ("app.css", "text/css"),
                        ("icon.svg", "image/svg+xml")):
        r = httpx.get(f"{server.url}/ui/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(media)
        assert r.content == (WEB_DIR / name).read_bytes()
    missing = httpx.get(f"{server.url}/ui/../api.py")
    assert missing.status_code == 404
    assert httpx.get(f"{server.url}/ui/secret.txt").json()["error"]["code"] == "not_found"


def test_nothing_is_fetched_from_elsewhere():
    """No CDN, no web fonts: every URL in the page's files is local."""
    for path in WEB_DIR.iterdir():
        text = path.read_text()
        found = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text)
        if path.name in ("icon.svg", "admin.js"):  # the icon; the depth chart's elements
            found = [u for u in found if u != "http://www.w3.org"]  # the SVG namespace
        assert found == [], (path.name, found)


def test_each_script_looks_up_only_what_another_gives():
    """The scripts share functions by name on window.jobgate: app.js's `window.jobgate = {…}`
    and each other file's `Object.assign(J, {…})` give them, `const {…} = J`, `J.name`
    and `late('name')` take them. A name taken that no file gives would fail only when called."""
    given: list[str] = []
    taken: dict[str, set[str]] = {}
    for name in SCRIPTS:
        text = (WEB_DIR / name).read_text()
        text = re.sub(r"^\s*//.*$", "", text, flags=re.M)
        for block in re.findall(r"window\.jobgate = \{(.*?)\};|Object\.assign\(J, \{(.*?)\}\);",
                                text, re.S):
            given += [n.split(":")[0].strip() for n in "".join(block).split(",") if n.strip()]
        names = set(re.findall(r"late\('(\w+)'\)", text)) | set(re.findall(r"\bJ\.(\w+)", text))
        for block in re.findall(r"const \{([^}]*)\} = J;", text):
            names |= {n.split(":")[0].strip() for n in block.split(",") if n.strip()}
        taken[name] = names
    assert len(given) == len(set(given)), sorted(n for n in given if given.count(n) > 1)
    for name, names in taken.items():
        assert names <= set(given), (name, sorted(names - set(given)))


# --- signing in and out ---------------------------------------------------------------------

def test_sign_in_with_a_wrong_password_then_the_right_one_and_sign_out(pages):
    pages.expect_console(r"status of 401 .*/api/auth/token\)$")  # the wrong password
    page = pages.new()
    page.goto("/")
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    page.fill("#username", "bob")
    page.fill("#password", "not-bobs-password")
    page.click("#signin-button")
    expect(page.locator("#signin-error")).to_have_text("Wrong user name or password.")
    expect(page.locator("#app")).to_be_hidden()

    page.fill("#password", "bob-password")
    page.keyboard.press("Enter")                       # the form submits from the keyboard
    expect(page.locator("#who-name")).to_have_text("bob")
    expect(page.locator("#jobs-title")).to_have_text("Your jobs")
    expect(page.locator("#priority-field")).to_be_hidden()   # priority is for admins
    expect(page.locator("#q-counts")).to_have_text(re.compile(r"^\d+ in queue • \d+ running of 4$"))

    page.reload()                                      # the session outlives a reload
    expect(page.locator("#who-name")).to_have_text("bob")

    page.click("#signout")
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#signin-note")).to_have_text("You are signed out.")
    assert page.evaluate("localStorage.getItem('jobgate.session')") is None
    page.reload()
    expect(page.locator("#signin-form")).to_be_visible()


def test_an_admin_gets_priority_and_an_owner_filter(pages):
    pages.expect_console(r"status of 422 .*/api/jobs\)$")  # the priority "high"
    page = pages.new()
    sign_in(page, "alice")
    expect(page.locator("#who-name")).to_have_text("alice (admin)")
    expect(page.locator("#jobs-title")).to_have_text("All jobs")
    expect(page.locator("#priority-field")).to_be_visible()
    expect(page.locator("#f-owner")).to_be_visible()

    page.fill("#priority", "high")
    response = submit_form(page, "noop")
    assert response.status == 422
    expect(page.locator("#priority-error")).to_contain_text("integer")
    expect(page.locator("#priority")).to_have_attribute("aria-invalid", "true")
    page.fill("#priority", "7")
    response = submit_form(page, "noop")
    assert response.status == 201 and response.json()["priority"] == 7
    expect(page.locator("#job-list li").first).to_have_attribute("data-id",
                                                                 response.json()["id"])


def test_older_jobs_come_a_page_at_a_time(pages, server):
    with server.client("bob") as http:
        ids = [http.post("/api/jobs", json={"kind": "noop"}).json()["id"] for _ in range(55)]
    page = pages.new()
    sign_in(page, "bob")
    expect(page.locator("#job-list li")).to_have_count(50)
    shown = page.locator("#job-list li").evaluate_all("lis => lis.map(li => li.dataset.id)")
    assert shown == sorted(shown, reverse=True)                 # newest first
    assert shown[:50] == ids[::-1][:50]
    more = page.locator("#more")
    expect(more).to_be_visible()
    more.click()
    expect(page.locator("#job-list li")).not_to_have_count(50)
    shown = page.locator("#job-list li").evaluate_all("lis => lis.map(li => li.dataset.id)")
    assert shown == sorted(shown, reverse=True) and set(ids) <= set(shown)


def test_tabs_of_one_browser_sign_in_and_out_together(pages):
    first = pages.new()
    sign_in(first, "bob")
    second = first.context.new_page()
    second.goto("/#/jobs?state=completed")
    expect(second.locator("#who-name")).to_have_text("bob")    # the same session
    first.click("#signout")
    expect(second.locator("#signin-note")).to_have_text("You signed out in another tab.")
    assert second.evaluate("location.hash") == "#/jobs?state=completed"
    second.fill("#password", "bob-password")
    second.click("#signin-button")
    expect(second.locator("#who-name")).to_have_text("bob")
    expect(first.locator("#who-name")).to_have_text("bob")     # the other tab follows
    expect(first.locator("#app")).to_be_visible()


def test_a_server_without_auth_needs_no_sign_in(browser, start_server):
    with ThreadPoolExecutor(1) as pool:  # its set-up runs asyncio: not in Playwright's loop
        server = pool.submit(start_server, "[auth]\nenabled = false\n").result()
    opened = Pages(browser, server)
    try:
        page = opened.new()
        page.goto("/")
        expect(page.locator("#who-name")).to_have_text("admin (admin)")
        expect(page.locator("#signin")).to_be_hidden()
        expect(page.locator("#signout")).to_be_hidden()
        job = submit_form(page, "noop").json()
        expect(row(page, job["id"])).to_have_attribute("data-state", "completed")
        expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
        assert not opened.errors and not opened.unexpected_console() and not opened.outside
    finally:
        opened.close()


# --- submitting ------------------------------------------------------------------------------

def test_the_form_follows_the_kinds_schema(pages):
    page = pages.new()
    sign_in(page, "bob")
    expect(page.locator("#kind option")).to_have_count(6)  # /api/kinds has answered
    kinds = page.locator("#kind option").all_inner_texts()
    assert set(kinds) == {"noop", "sleep", "steps", "fail", "pick", "report"}
    page.select_option("#kind", "pick")
    expect(page.locator("#kind-desc")).to_have_text("Echoes its arguments")
    mode = page.locator('#kind-fields [data-arg="mode"]')
    assert mode.evaluate("e => e.tagName") == "SELECT"
    assert mode.locator("option").all_inner_texts() == ["fast", "slow"]
    expect(mode).to_have_value("fast")
    loud = page.locator('#kind-fields [data-arg="loud"]')
    assert loud.get_attribute("type") == "checkbox"
    expect(loud).not_to_be_checked()
    name = page.locator('#kind-fields [data-arg="name"]')
    expect(name).to_have_attribute("aria-required", "true")
    expect(page.locator('label[for="arg-name"]')).to_contain_text("(required)")
    expect(page.locator("#arg-name-hint")).to_contain_text("lower-case letters")
    expect(page.locator("#arg-name-hint")).to_contain_text("pattern ^[a-z]+$")
    page.select_option("#kind", "steps")
    expect(page.locator('#kind-fields [data-arg="count"]')).to_have_value("5")
    expect(page.locator("#arg-count-hint")).to_have_text("integer, 1 to 1000, default 5")

    response = submit_form(page, "pick", mode="slow", name="abc", loud=True)
    assert response.status == 201
    job = response.json()
    assert job["args"] == {"mode": "slow", "name": "abc", "loud": True}


def test_server_validation_messages_show_at_the_field(pages, server):
    pages.expect_console(r"status of 422 .*/api/jobs\)$")  # each form turned down
    page = pages.new()
    sign_in(page, "carol")
    before = page.locator("#job-list li").count()

    response = submit_form(page, "steps", count=5000)
    assert response.status == 422
    count = page.locator("#arg-count")
    expect(page.locator("#arg-count-error")).to_have_text("must be at most 1000")
    expect(page.locator("#arg-count-error")).to_be_visible()
    expect(count).to_have_attribute("aria-invalid", "true")
    expect(count).to_be_focused()
    expect(page.locator("#arg-delay-error")).to_be_hidden()

    response = submit_form(page, "steps", count="many")
    assert response.status == 422
    expect(page.locator("#arg-count-error")).to_have_text("expected an integer, got 'many'")

    response = submit_form(page, "pick", name="")
    assert response.status == 422
    expect(page.locator("#arg-name-error")).to_have_text("is required")
    response = submit_form(page, "pick", name="ABC")
    expect(page.locator("#arg-name-error")).to_have_text("does not match the pattern ^[a-z]+$")
    expect(page.locator("#arg-name")).to_have_attribute("aria-invalid", "true")

    response = submit_form(page, "pick", name="fine")              # fixed: the error goes
    assert response.status == 201
    expect(page.locator("#arg-name-error")).to_be_hidden()
    expect(page.locator("#arg-name")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#job-list li")).to_have_count(before + 1)
    wait_api(server, "carol", response.json()["id"], "completed")


def test_a_job_goes_queued_running_completed_with_its_progress_bar_moving(pages, server):
    page = pages.new()
    sign_in(page, "bob")
    # bob may run one job at a time: while this one runs, his next one waits in the queue.
    blocker = api_submit(server, "bob", "sleep", seconds=60)
    wait_api(server, "bob", blocker["id"], "running")

    response = submit_form(page, "steps", count=8, delay=0.6)
    assert response.status == 201
    job = response.json()
    assert job["state"] == "queued" and job["position"] >= 1
    item = row(page, job["id"])
    expect(item).to_have_attribute("data-state", "queued")   # at once, with its position
    expect(item.locator(".pos")).to_have_text(f"#{job['position']} in queue")
    expect(item.locator(".state")).to_contain_text("queued")
    record_row(page, job["id"])

    api_cancel(server, "bob", blocker["id"])
    expect(item.locator(".msg")).to_have_text(re.compile(r"^step \d$"), timeout=30_000)
    expect(item).to_have_attribute("data-state", "completed", timeout=30_000)
    expect(item.locator(".state")).to_contain_text("completed")
    expect(item.locator(".elapsed")).to_have_text(re.compile(r"^took \d"))

    states = [s["state"] for s in seen(page)]
    assert states[0] == "queued" and states[-1] == "completed", states
    assert states.index("running") < states.index("completed"), states
    bars = [s["progress"] for s in seen(page) if s["state"] == "running"
            and s["progress"] is not None]
    between = sorted({p for p in bars if 0 < p < 100})
    assert len(between) >= 2, f"the bar did not move while running: {seen(page)}"
    assert bars == sorted(bars), f"the bar went backwards: {bars}"
    assert api_job(server, "bob", job["id"])["progress"] == 100
    assert transport(page) == "live"                            # the event stream drove it


def test_a_list_read_that_comes_back_late_does_not_move_the_bar_back(pages, server):
    # Each state change reloads the list; on a loaded server its reply can arrive after
    # progress events that came later. Here every list reply is held 1.5 s in the page.
    page = pages.new()
    sign_in(page, "bob")
    page.evaluate("""() => {
        const real = window.fetch;
        window.fetch = async (url, opts) => {
            const reply = await real(url, opts);
            if (String(url).startsWith('/api/jobs?')) {
                await new Promise((done) => setTimeout(done, 1500));
            }
            return reply;
        };
    }""")
    job = submit_form(page, "steps", count=8, delay=0.4).json()
    record_row(page, job["id"])
    page.evaluate("""(id) => {
        window.gone = 0;
        let shown = false;
        const list = document.getElementById('job-list');
        const look = () => {
            const here = Boolean(list.querySelector(`li[data-id="${id}"]`));
            if (shown && !here) window.gone += 1;
            shown = here;
        };
        new MutationObserver(look).observe(list, {childList: true});
        look();
    }""", job["id"])
    expect(row(page, job["id"])).to_have_attribute("data-state", "completed", timeout=30_000)
    bars = [s["progress"] for s in seen(page) if s["progress"] is not None]
    assert len(set(bars)) >= 3, f"the bar did not move: {seen(page)}"
    assert bars == sorted(bars), f"the bar went backwards: {bars}"
    assert "running" in [s["state"] for s in seen(page)], seen(page)
    assert page.evaluate("window.gone") == 0, "an older list without the job hid its row"


# --- the job detail ---------------------------------------------------------------------------

def test_cancel_a_running_job_after_confirming(pages, server):
    page = pages.new()
    sign_in(page, "carol")
    job = submit_form(page, "sleep", seconds=60).json()
    row(page, job["id"]).locator("a").click()
    expect(page).to_have_url(re.compile(f"#/job/{job['id']}$"))
    expect(page.locator("#job-state")).to_have_attribute("data-state", "running",
                                                         timeout=30_000)
    expect(page.locator("#act-retry")).to_be_hidden()
    expect(page.locator("#act-delete")).to_be_hidden()

    page.click("#act-cancel")                                   # asked first; keep it
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(page.locator("#confirm-title")).to_have_text("Cancel this job?")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    page.click("#act-cancel")
    page.get_by_role("button", name="Keep it").click()
    expect(dialog).to_be_hidden()
    assert api_job(server, "carol", job["id"])["state"] == "running"

    page.click("#act-cancel")
    page.click("#confirm-ok")
    expect(page.locator("#job-state")).to_have_attribute("data-state", "cancelled")
    assert api_job(server, "carol", job["id"])["state"] == "cancelled"
    expect(page.locator("#act-cancel")).to_be_hidden()
    expect(page.locator("#act-retry")).to_be_visible()
    page.click("#back")
    expect(row(page, job["id"])).to_have_attribute("data-state", "cancelled")


def test_a_failed_job_shows_its_error_and_attempts_and_can_be_retried(pages, server):
    page = pages.new()
    sign_in(page, "carol")
    job = submit_form(page, "fail", label="oops").json()
    item = row(page, job["id"])
    expect(item).to_have_attribute("data-state", "failed", timeout=30_000)
    expect(item.locator(".err")).to_contain_text("boom oops")
    expect(item.locator(".attempt")).to_have_text("attempt 3 of 3")
    expect(item.locator(".state")).to_contain_text("failed")

    item.locator("a").click()
    expect(page.locator("#job-error")).to_contain_text("boom oops")
    expect(page.locator("#act-cancel")).to_be_hidden()
    page.evaluate("""() => {
        const box = document.getElementById('job-state');
        window.states = [box.dataset.state];
        new MutationObserver(() => {
            if (box.dataset.state !== window.states.at(-1)) window.states.push(box.dataset.state);
        }).observe(box, {attributes: true});
    }""")
    page.click("#act-retry")                                    # no confirmation: nothing lost
    expect(page.locator("#confirm")).to_be_hidden()
    page.wait_for_function("() => window.states.length > 2 && window.states.at(-1) === 'failed'",
                           timeout=30_000)
    states = page.evaluate("window.states")
    assert states[:2] == ["failed", "queued"], states          # back in the queue at once
    again = api_job(server, "carol", job["id"])
    assert again["state"] == "failed" and again["attempt"] == 3
    expect(page.locator("#job-log")).to_contain_text("boom oops")


def test_the_log_follows_and_pauses_outputs_download_and_delete_asks_first(pages, server):
    page = pages.new()
    sign_in(page, "bob")
    job = submit_form(page, "report", lines=40, delay=0.1).json()
    page.goto(f"/#/job/{job['id']}")
    log = page.locator("#job-log")
    expect(log).to_contain_text("line 3", timeout=30_000)
    follow = page.locator("#log-follow")
    expect(follow).to_have_attribute("aria-pressed", "true")

    follow.click()                                              # pause
    expect(follow).to_have_attribute("aria-pressed", "false")
    shown = log.inner_text()
    expect(follow).to_have_text(re.compile(r"^Follow \(\d+ new\)$"), timeout=30_000)
    assert log.inner_text() == shown                            # held back while paused
    follow.click()                                              # follow again
    expect(follow).to_have_attribute("aria-pressed", "true")
    assert len(log.inner_text()) > len(shown)

    expect(page.locator("#job-state")).to_have_attribute("data-state", "completed",
                                                         timeout=30_000)
    expect(log).to_contain_text("line 40")
    lines = log.inner_text().splitlines()
    assert lines == [f"line {i}" for i in range(1, 41)]         # each once, in order
    assert page.evaluate("(() => { const l = document.getElementById('job-log');"
                         " return l.scrollTop + l.clientHeight >= l.scrollHeight - 2; })()")

    with page.expect_download() as info:
        page.get_by_role("button", name="Download report.txt").click()
    download = info.value
    assert download.suggested_filename == "report.txt"
    assert Path(download.path()).read_text() == "done\n"

    page.click("#act-delete")
    expect(page.locator("#confirm-title")).to_have_text("Delete this job?")
    page.get_by_role("button", name="Keep it").click()
    assert api_job(server, "bob", job["id"])["state"] == "completed"
    page.click("#act-delete")
    page.click("#confirm-ok")
    expect(page).to_have_url(re.compile(r"#/jobs$"))
    expect(row(page, job["id"])).to_have_count(0)
    with server.client("bob") as http:
        assert http.get(f"/api/jobs/{job['id']}").status_code == 404


# --- who sees what ----------------------------------------------------------------------------

def test_another_user_does_not_see_the_job_and_an_admin_does(pages, server):
    pages.expect_console(r"status of 404 .*/api/jobs/\w+\)$")  # bob's job, to carol
    bob = pages.new()
    sign_in(bob, "bob")
    job = submit_form(bob, "noop").json()
    expect(row(bob, job["id"])).to_have_count(1)

    carol = pages.new()
    sign_in(carol, "carol")
    expect(carol.locator("#jobs-title")).to_have_text("Your jobs")
    carol.wait_for_function("() => document.querySelectorAll('#job-list li').length > 0"
                            " || !document.getElementById('jobs-empty').hidden")
    assert row(carol, job["id"]).count() == 0
    owners = set(carol.locator("#job-list .owner").all_inner_texts())
    assert owners <= {"carol"}
    carol.goto(f"/#/job/{job['id']}")
    expect(carol.locator("#job-missing")).to_contain_text("not yours to see")
    expect(carol.locator("#job-body")).to_be_hidden()

    alice = pages.new()
    sign_in(alice, "alice", "#/jobs?owner=bob")
    expect(alice.locator("#f-owner")).to_have_value("bob")
    expect(row(alice, job["id"]).locator(".owner")).to_have_text("bob")
    assert set(alice.locator("#job-list .owner").all_inner_texts()) == {"bob"}


# --- sessions ---------------------------------------------------------------------------------

def expired_token(server: Server, user: str) -> str:
    """A login token for `user` signed with the server's key that expired a minute ago."""
    from jobgate.auth import issue_jwt
    from jobgate.store.base import User

    key = (server.folder / "data" / "secrets" / "jwt.key").read_bytes()
    token, _ = issue_jwt(key, User(user, admin=False), ttl_s=-60)
    return token


def test_an_expired_session_goes_back_to_sign_in_and_then_to_the_same_view(pages, server):
    pages.expect_console(r"status of 401 .*/api/(jobs/\w+|me)\)$")  # the expired token
    page = pages.new()
    sign_in(page, "bob")
    job = submit_form(page, "noop").json()
    wait_api(server, "bob", job["id"], "completed")
    view = f"#/job/{job['id']}"
    page.goto(f"/{view}")
    expect(page.locator("#job-state")).to_have_attribute("data-state", "completed")

    # The server turns the token down (it expired): the delete is not done, sign in again.
    # The token changes and the delete is confirmed in one turn of the page's event loop:
    # any other request of the page with that token would show the sign-in form first.
    token = expired_token(server, "bob")
    page.click("#act-delete")
    expect(page.locator("#confirm-ok")).to_be_visible()  # it asks first
    page.evaluate("(t) => { window.jobgate.state.session.token = t;"
                  " document.getElementById('confirm-ok').click(); }", token)
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#signin-note")).to_contain_text(EXPIRED_NOTE)
    expect(page.locator("#username")).to_have_value("bob")
    expect(page.locator("#password")).to_be_focused()
    assert page.evaluate("location.hash") == view
    assert api_job(server, "bob", job["id"])["state"] == "completed"

    page.fill("#password", "bob-password")
    page.keyboard.press("Enter")
    expect(page.locator("#signin-error")).to_have_text("")
    expect(page.locator("#job-body")).to_be_visible()
    expect(page.locator("#job-state")).to_have_attribute("data-state", "completed")
    expect(page.locator("#job-id")).to_have_text(job["id"])

    # A stored token that expired meanwhile (the page is opened again the next day).
    page.evaluate("(t) => { const s = JSON.parse(localStorage.getItem('jobgate.session'));"
                  " s.token = t; localStorage.setItem('jobgate.session', JSON.stringify(s)); }",
                  token)
    page.reload()
    expect(page.locator("#signin-note")).to_contain_text(EXPIRED_NOTE)
    assert page.evaluate("location.hash") == view


def test_the_session_ends_when_its_token_runs_out_keeping_the_view(pages):
    page = pages.new()
    page.clock.install()
    sign_in(page, "carol", "#/jobs?state=completed")
    expires = page.evaluate("JSON.parse(localStorage.getItem('jobgate.session')).expires_at")
    left_s = (dt_parse(expires) - page.evaluate("Date.now()") / 1000)
    assert 11 * 3600 < left_s <= 12 * 3600 + 5                 # [auth] token_ttl: 12 h
    page.clock.fast_forward(int((left_s + 1) * 1000))
    expect(page.locator("#signin-note")).to_contain_text(EXPIRED_NOTE)
    assert page.evaluate("location.hash") == "#/jobs?state=completed"


def dt_parse(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- live updates -----------------------------------------------------------------------------

def list_requests(log: list[str]) -> int:
    """How many times the page has asked for the job list or the queue so far."""
    return sum(1 for u in log if "/api/jobs?" in u or u.endswith("/api/queue"))


def test_without_the_event_stream_the_page_polls_and_stops_when_nothing_is_active(pages):
    pages.expect_console(r"net::ERR_FAILED .*/api/events\?")  # the route cut below
    page = pages.new()
    page.route("**/api/events*", lambda route: route.abort())  # the stream is unavailable
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if r.method == "GET" else None)
    sign_in(page, "carol")

    job = submit_form(page, "steps", count=4, delay=0.4).json()
    item = row(page, job["id"])
    expect(page.locator("#conn")).to_have_attribute("data-transport", "polling")
    expect(item).to_have_attribute("data-state", "running", timeout=30_000)
    expect(item).to_have_attribute("data-state", "completed", timeout=30_000)
    expect(page.locator("#conn")).to_have_attribute("data-transport", "idle")
    expect(page.locator("#conn")).to_have_text("Up to date")

    before = list_requests(asked)
    page.wait_for_timeout(3 * POLL_MS)                          # nothing active: no polling
    assert list_requests(asked) == before
    assert transport(page) == "idle"

    second = submit_form(page, "steps", count=2, delay=0.3).json()   # acting resumes it
    expect(row(page, second["id"])).to_have_attribute("data-state", "completed",
                                                      timeout=30_000)
    expect(page.locator("#conn")).to_have_attribute("data-transport", "idle")
    assert list_requests(asked) > before

    page.unroute("**/api/events*")                              # the stream is back:
    page.click("#refresh")                                      # Refresh tries it at once
    expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
    expect(page.locator("#conn")).to_have_text("Live")


def test_with_the_event_stream_the_list_and_header_follow_what_happens_elsewhere(pages, server):
    page = pages.new()
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if r.method == "GET" else None)
    sign_in(page, "carol")
    expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
    expect(page.locator("#q-nodes")).to_have_text("1 node live")
    page.evaluate("""() => {
        const counts = document.getElementById('q-counts');
        window.headers = [counts.textContent];
        new MutationObserver(() => window.headers.push(counts.textContent))
            .observe(counts, {childList: true, characterData: true, subtree: true});
    }""")
    queue_reads = sum(1 for u in asked if u.endswith("/api/queue"))

    job = api_submit(server, "carol", "steps", count=6, delay=0.4)  # from elsewhere (CLI, API)
    item = row(page, job["id"])
    expect(item).to_have_count(1)                               # no polling brought it
    record_row(page, job["id"])
    expect(item).to_have_attribute("data-state", "completed", timeout=30_000)
    bars = [s["progress"] for s in seen(page) if s["state"] == "running"
            and s["progress"] is not None]
    assert len({p for p in bars if 0 < p < 100}) >= 2, seen(page)
    assert bars == sorted(bars), bars
    assert transport(page) == "live"
    headers = page.evaluate("window.headers")
    assert any(re.search(r"\b[1-9]\d* running of 4$", h) for h in headers), headers
    assert sum(1 for u in asked if u.endswith("/api/queue")) == queue_reads  # from the stream

    log_page = pages.new()                                      # a job's log, live
    sign_in(log_page, "carol")
    log_job = api_submit(server, "carol", "report", lines=30, delay=0.1)
    log_page.goto(f"/#/job/{log_job['id']}")
    expect(log_page.locator("#conn")).to_have_attribute("data-transport", "live")
    expect(log_page.locator("#job-state")).to_have_attribute("data-state", "completed",
                                                             timeout=30_000)
    expect(log_page.locator("#job-log")).to_contain_text("line 30")
    lines = log_page.locator("#job-log").inner_text().splitlines()
    assert lines == [f"line {i}" for i in range(1, 31)]


# --- keyboard, contrast, phone ------------------------------------------------------------

def focus_by_tab(page: Page, selector: str, limit: int = 40) -> list[str]:
    """Press Tab until `selector` has the focus; the ids passed on the way."""
    passed: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return passed
        passed.append(str(page.evaluate("document.activeElement.id || "
                                        "document.activeElement.tagName")))
    raise AssertionError(f"Tab never reached {selector}; passed {passed}")


def test_everything_works_from_the_keyboard(pages, server):
    page = pages.new()
    page.goto("/")
    expect(page.locator("#username")).to_be_focused()          # the first thing to type
    page.keyboard.type("bob")
    page.keyboard.press("Tab")
    page.keyboard.type("bob-password")
    page.keyboard.press("Enter")
    expect(page.locator("#who-name")).to_have_text("bob")

    focus_by_tab(page, "#kind")
    while page.evaluate("document.activeElement.value") != "report":
        page.keyboard.press("ArrowDown")                        # a closed select steps on
    page.keyboard.press("Tab")
    expect(page.locator("#arg-lines")).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    with page.expect_response(lambda r: r.url.endswith("/api/jobs")
                              and r.request.method == "POST") as info:
        page.keyboard.press("Enter")                            # Enter in a field submits
    job = info.value.json()
    assert job["args"]["lines"] == 2

    focus_by_tab(page, f'#job-list li[data-id="{job["id"]}"] a')
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"                                    # the focus can be seen
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(f"#/job/{job['id']}$"))
    expect(page.locator("#job-state")).to_have_attribute("data-state", "completed",
                                                         timeout=30_000)
    focus_by_tab(page, "#act-delete")
    page.keyboard.press("Enter")
    expect(page.locator("#confirm")).to_be_visible()
    page.keyboard.press("Escape")                               # Escape keeps the job
    expect(page.locator("#confirm")).to_be_hidden()
    assert api_job(server, "bob", job["id"])["state"] == "completed"


CONTRAST_JS = """() => {
    const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
    const lum = ([r, g, b]) => {
        const f = (v) => {
            v /= 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
        };
        return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const background = (e) => {
        for (; e; e = e.parentElement) {
            const c = getComputedStyle(e).backgroundColor;
            const parts = rgb(c);
            if (parts.length < 4 || parts[3] > 0) return parts.slice(0, 3);
        }
        return [255, 255, 255];
    };
    const box = document.createElement('div');
    box.innerHTML = `
      <p class="hint">hint</p><p class="field-error">error</p><p class="form-error">error</p>
      <span class="msg">message</span><span class="err">failure</span><span class="pos">#1</span>
      <span class="owner">bob</span><span class="args">a=1</span>
      <span class="state state-queued">q</span><span class="state state-running">r</span>
      <span class="state state-completed">c</span><span class="state state-failed">f</span>
      <span class="state state-cancelled">x</span>
      <span class="conn" data-transport="live">l</span>
      <span class="conn" data-transport="polling">p</span>
      <span class="conn" data-transport="idle">i</span>
      <span class="conn" data-transport="offline">o</span>
      <button class="primary">p</button><button class="danger">d</button>
      <button class="secondary">s</button><button class="link">l</button><a href="#/jobs">link</a>
      <p class="job-error">error</p><pre class="log">log</pre>`;
    document.querySelector('#main .card, #main').append(box);
    const out = {};
    for (const e of box.children) {
        const fg = rgb(getComputedStyle(e).color), bg = background(e);
        const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
        out[e.className + (e.dataset.transport || '') || e.tagName] = (a + 0.05) / (b + 0.05);
    }
    box.remove();
    return out;
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_is_readable_in_the_light_and_dark_schemes(pages, scheme):
    page = pages.new(color_scheme=scheme)
    sign_in(page, "carol")
    ratios = page.evaluate(CONTRAST_JS)
    assert len(ratios) == 24
    low = {k: round(v, 2) for k, v in ratios.items() if v < 4.5}
    assert not low, f"contrast under 4.5:1 ({scheme}): {low}"
    body = page.evaluate(CONTRAST_JS.replace("#main .card, #main", "body"))
    assert min(body.values()) >= 4.5


def no_sideways_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"page is {width}px wide"  # type: ignore[index]


def test_a_phone_sized_window_stacks_everything_without_sideways_scrolling(pages, server):
    page = pages.new(viewport=PHONE, is_mobile=True, has_touch=True)
    sign_in(page, "carol")
    expect(page.locator("#submit-box")).not_to_have_attribute("open", "")  # folded away
    page.click("#submit-box summary")
    expect(page.locator("#kind")).to_be_visible()
    job = submit_form(page, "fail", label="a-long-label-that-must-wrap-on-a-phone").json()
    item = row(page, job["id"])
    expect(item).to_have_attribute("data-state", "failed", timeout=30_000)
    no_sideways_scroll(page)
    boxes = item.evaluate("""li => Object.fromEntries(['a', '.cell-state', '.cell-main'].map(
        s => { const r = li.querySelector(s).getBoundingClientRect();
               return [s, {x: r.x, y: r.y, width: r.width, height: r.height}]; }))""")
    row_box, state, main = boxes["a"], boxes[".cell-state"], boxes[".cell-main"]
    assert row_box["x"] >= 0 and row_box["x"] + row_box["width"] <= PHONE["width"], row_box
    assert state["y"] < main["y"] + main["height"], boxes        # the badge beside the kind
    assert state["x"] > main["x"], boxes
    item.locator("a").click()
    expect(page.locator("#job-error")).to_contain_text("boom")
    no_sideways_scroll(page)


# --- screenshots for the README -----------------------------------------------------------

SHOWCASE = r"""
[limits]
max_running = 2
per_user_running = 1
memory_budget_mb = 2048

[kinds.transcode]
description = "Re-encodes a video at a lower bit rate"
argv = ["sh", "-c", '''
i=1
while [ $i -le 60 ]; do
  echo "progress=$((i * 100 / 60)) frame $((i * 250)) of 15000"; i=$((i+1)); sleep $2
done
''', "{input}", "{bitrate}", "{pace}"]
progress = 'progress=(?P<percent>[0-9.]+) (?P<message>.*)'
memory_mb = 512
max_attempts = 2
[kinds.transcode.args]
input = { type = "string", description = "video file in the input folder" }
bitrate = { type = "string", pattern = "^[0-9]+k$", default = "800k" }
pace = { type = "number", min = 0, max = 5, default = 0.5 }

[kinds.checksum]
description = "SHA-256 of a file in the input folder"
argv = ["sh", "-c", 'echo "sha256sum: $0: No such file or directory" >&2; exit 1', "{file}"]
[kinds.checksum.args]
file = { type = "string" }

[kinds.countdown]
description = "Counts down, reporting progress each second"
function = "jobgate.demo:countdown"
max_attempts = 2
[kinds.countdown.args]
seconds = { type = "integer", min = 1, max = 3600, default = 10 }
fail = { type = "boolean", default = false }
"""


def test_screenshots_of_the_main_views(browser, start_server, tmp_path):
    """Sign-in, the job list on a desktop and a phone, a job's detail. Saved under docs/
    when JOBGATE_SCREENSHOTS=docs, else in the test's folder."""
    target = (Path(__file__).parent.parent / "docs" if os.environ.get("JOBGATE_SCREENSHOTS")
              == "docs" else tmp_path)
    target.mkdir(exist_ok=True)
    with ThreadPoolExecutor(1) as pool:  # its set-up runs asyncio: not in Playwright's loop
        server = pool.submit(start_server, SHOWCASE + NO_LOGIN_LIMITS, kinds="").result()
    fast = api_submit(server, "carol", "countdown", seconds=1)
    api_submit(server, "carol", "checksum", file="holiday.mkv")
    cancelled = api_submit(server, "carol", "countdown", seconds=30)
    wait_api(server, "carol", fast["id"], "completed")
    wait_api(server, "carol", cancelled["id"], "running")
    api_cancel(server, "carol", cancelled["id"])
    api_submit(server, "bob", "countdown", seconds=90)
    running = api_submit(server, "alice", "transcode", input="holiday.mkv", bitrate="1200k")
    api_submit(server, "alice", "transcode", input="birthday.mp4")
    api_submit(server, "carol", "countdown", seconds=20)
    wait_api(server, "alice", running["id"], "running")

    shots = Pages(browser, server)
    try:
        page = shots.new()
        page.goto("/")
        expect(page.locator("#signin-form")).to_be_visible()
        page.fill("#username", "alice")
        page.screenshot(path=target / "dashboard-sign-in.png")

        sign_in(page, "alice")
        expect(row(page, running["id"]).locator(".pct")).to_have_text(
            re.compile(r"^(1[5-9]|[2-9]\d)%$"), timeout=30_000)
        expect(page.locator("#job-list .pos")).to_have_count(2)
        page.mouse.move(0, 0)                                   # no hover in the picture
        page.screenshot(path=target / "dashboard-jobs.png")

        page.goto(f"/#/job/{running['id']}")
        expect(page.locator("#job-log")).to_contain_text("frame")
        page.screenshot(path=target / "dashboard-job.png", full_page=True)

        phone = shots.new(viewport=PHONE, is_mobile=True, has_touch=True)
        sign_in(phone, "alice")
        expect(phone.locator("#job-list .pos")).to_have_count(2)
        phone.mouse.move(0, 0)
        phone.screenshot(path=target / "dashboard-phone.png")
        assert not shots.errors and not shots.unexpected_console() and not shots.outside
    finally:
        shots.close()
    for name in ("sign-in", "jobs", "job", "phone"):
        png = (target / f"dashboard-{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


# --- operator controls ----------------------------------------------------------------------

def test_the_header_shows_paused_while_an_admin_pauses_the_queue(pages, server):
    page = pages.new()
    sign_in(page, "carol")
    expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
    paused = page.locator("#q-paused")
    expect(paused).to_be_hidden()
    with server.client("alice") as admin:
        try:
            assert admin.post("/api/queue/pause").status_code == 200
            expect(paused).to_be_visible()                      # from the stream
            expect(paused).to_have_text("paused")
            admin.post("/api/queue/resume")
            expect(paused).to_be_hidden()
            admin.post("/api/queue/pause", json={"kind": "sleep"})
            expect(paused).to_have_text("paused: sleep")
            page.reload()                                       # from GET /api/queue
            expect(paused).to_have_text("paused: sleep")
        finally:
            admin.post("/api/queue/resume")
    expect(paused).to_be_hidden()
