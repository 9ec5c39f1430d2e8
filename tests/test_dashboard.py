"""The web dashboard in a real browser: Playwright driving Debian's Chromium, headless.

One `jobgate serve` and one browser for the whole module; each test opens its own browser
context (its own storage, so its own session) and looks only at the jobs it makes.
The shared server lets each user run one job at a time, so a user's second job waits in
the queue with a position while the first runs.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
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
POLL_MS = 1500  # app.js POLL_MS

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

CONFIG = """
[limits]
max_running = 4
per_user_running = 1
""" + TEST_KINDS + DASHBOARD_KINDS

EXPIRED_NOTE = "Your session expired"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("dashboard"), CONFIG) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: scripts/test installs it"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Pages:
    """Opens pages in fresh browser contexts; fails the test on any script error in them
    and on any request that leaves the server (the page must work offline)."""

    def __init__(self, browser: Browser, server: Server) -> None:
        self.browser, self.server = browser, server
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []
        self.outside: list[str] = []

    def new(self, viewport: dict[str, int] | None = None, **options: Any) -> Page:
        context = self.browser.new_context(viewport=viewport or DESKTOP,  # type: ignore[arg-type]
                                           base_url=self.server.url, **options)
        context.set_default_timeout(15_000)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
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
    assert 'src="/ui/app.js"' in page.text
    for name, media in (("app.js", "text/javascript"), ("app.css", "text/css"),
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
        if path.name == "icon.svg":
            found = [u for u in found if u != "http://www.w3.org"]  # the SVG namespace
        assert found == [], (path.name, found)

