"""The log view in a real browser (tests/test_dashboard.py's browser and pages): every line
from the first, "Loading…" until the last page has come, ANSI colours as spans (text only,
never markup) with other escapes dropped, and the log as a text download.
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
[kinds.long]
argv = ["sh", "-c", 'seq 1 $0 | sed "s/^/line /"', "{lines}"]
[kinds.long.args]
lines = { type = "integer", min = 1, max = 9000, default = 6000 }

[kinds.colours]
argv = ["sh", "-c", '''
printf '\033[31mred\033[0m plain \033[1;92mbold green\033[0m \033]0;a title\007end\n'
printf '\033[2K\033[1Gcleared <b>not bold</b> <img src=x onerror="window.pwned=1">\n'
printf '\033[38;5;196mfancy\033[39m back\n'
''']
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("dashboard-logs"), CONFIG + KINDS) as srv:
        yield srv


def test_a_long_log_shows_from_its_first_line_and_says_loading_until_the_last_page(
        pages, server):
    job = wait_api(server, "bob", api_submit(server, "bob", "long", lines=6000)["id"],
                   "completed")
    page = pages.new()
    held: list[Any] = []

    def hold_second_page(route: Any) -> None:  # the page after line 1,000 waits for the test
        if "after=1000&" in route.request.url and not held:
            held.append(route)
        else:
            route.continue_()

    page.route("**/logs?*", hold_second_page)
    sign_in(page, "bob", f"#/job/{job['id']}")
    state = page.locator("#log-state")
    log = page.locator("#job-log")
    expect(log).to_contain_text("line 1000")
    expect(state).to_have_text(re.compile(r"^Loading…"))           # not "End of the log."
    expect(state).not_to_contain_text("End of the log")
    assert held, "the second page was not asked for"
    held[0].continue_()
    expect(state).to_have_text("End of the log (6,000 lines).")
    lines = log.inner_text().splitlines()
    assert lines[0] == "line 1" and lines[-1] == "line 6000" and len(lines) == 6000

    with page.expect_download() as info:
        page.click("#log-download")
    text = Path(info.value.path()).read_text()
    assert text.splitlines() == [f"line {i}" for i in range(1, 6001)]


def test_ansi_colours_render_as_spans_and_other_escapes_go(pages, server):
    job = wait_api(server, "bob", api_submit(server, "bob", "colours")["id"], "completed")
    page = pages.new()
    sign_in(page, "bob", f"#/job/{job['id']}")
    log = page.locator("#job-log")
    expect(page.locator("#log-state")).to_have_text("End of the log (3 lines).")
    assert log.inner_text().splitlines() == [
        "red plain bold green end",
        'cleared <b>not bold</b> <img src=x onerror="window.pwned=1">',
        "fancy back",
    ]
    expect(log.locator("span.ansi-fg-1")).to_have_text("red")
    bold = log.locator("span.ansi-fg-10.ansi-bold")
    expect(bold).to_have_text("bold green")
    assert log.locator("b, img").count() == 0                       # text, never markup
    assert page.evaluate("window.pwned") is None
    assert "\x1b" not in log.evaluate("e => e.textContent")
    assert log.locator(".ln").first.evaluate("e => getComputedStyle(e.querySelector("
                                             "'.ansi-fg-1')).color") != \
        log.evaluate("e => getComputedStyle(e).color")
