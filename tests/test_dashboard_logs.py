"""The log view in a real browser (tests/test_dashboard.py's browser and pages): every line
from the first, "Loading…" until the last page has come, ANSI colours as spans (text only,
never markup) with other escapes dropped, a progress bar's carriage-return redraws as one line
updating in place, and the log as a text download.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from conftest import Server, running_server
from test_dashboard import CONFIG, Pages, api_submit, sign_in, wait_api
from test_dashboard import browser as browser  # the module's fixtures, by re-export
from test_dashboard import pages as pages

pytestmark = pytest.mark.sqlite_only("the dashboard does not know the backend")

KINDS = r"""
[kinds.long]
argv = ["sh", "-c", 'seq 1 $0 | sed "s/^/line /"', "{lines}"]
[kinds.long.args]
lines = { type = "integer", min = 1, max = 12000, default = 6000 }

[kinds.bar]
argv = ["sh", "-c", '''
echo start; i=1
while [ $i -le 12 ]; do printf '\r\033[32mbar %d/12\033[0m' $i; i=$((i+1)); sleep 0.4; done
printf '\n'; echo end''']

[kinds.colours]
argv = ["sh", "-c", '''
printf '\033[31mred\033[0m plain \033[1;92mbold green\033[0m \033]0;a title\007end\n'
printf '\033[2K\033[1Gcleared <b>not bold</b> <img src=x onerror="window.pwned=1">\n'
printf '\033[38;5;196mfancy\033[39m back\n'
''']
"""

# Above the 12,000 lines the long test prints: the whole log is kept.
WHOLE = """
[worker]
log_max_lines = 20000
"""


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the real cap (10,000 lines: the first 5,000 and the last kept)."""
    with running_server(tmp_path_factory.mktemp("dashboard-capped"), CONFIG + KINDS) as srv:
        yield srv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, capped: Server) -> Iterator[Server]:
    # `capped` first: a server's set-up runs asyncio, which cannot start once the browser
    # (after `server`) runs Playwright's loop.
    with running_server(tmp_path_factory.mktemp("dashboard-logs"),
                        CONFIG + WHOLE + KINDS) as srv:
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


# Each text the log's lines had, as they changed: a redraw changes a line, never adds one.
WATCH_LINES = """(() => {
    window.lineTexts = [];
    document.addEventListener('DOMContentLoaded', () => {
        const log = document.getElementById('job-log');
        new MutationObserver(() => {
            window.lineTexts.push([...log.querySelectorAll(':scope > .ln')].map(
                (e) => e.textContent.replace(/\\n$/, '')));
        }).observe(log, {childList: true, subtree: true, characterData: true});
    });
})()"""


def test_a_progress_bars_redraws_are_one_line_updating_in_place(pages, server):
    job = api_submit(server, "bob", "bar")
    page = pages.new()
    page.add_init_script(WATCH_LINES)
    sign_in(page, "bob", f"#/job/{job['id']}")
    wait_api(server, "bob", job["id"], "completed")
    expect(page.locator("#log-state")).to_have_text("End of the log (3 lines).")
    log = page.locator("#job-log")
    assert log.inner_text().splitlines() == ["start", "bar 12/12", "end"]
    expect(log.locator(".ln").nth(1).locator("span.ansi-fg-2")).to_have_text("bar 12/12")
    seen = page.evaluate("window.lineTexts")
    assert max(len(lines) for lines in seen) == 3  # never a line per redraw
    bars = {lines[1] for lines in seen if len(lines) > 1 and lines[1].startswith("bar ")}
    assert len(bars) >= 2, seen  # the page saw the bar move, in the same line
    # The server kept one line for it too.
    with server.client("bob") as http:
        kept = http.get(f"/api/jobs/{job['id']}/logs").json()
    assert [line["line"] for line in kept["lines"]] == ["start", "\x1b[32mbar 12/12\x1b[0m",
                                                       "end"]


# Before the page's own script: what the log view and its state line did, as they did it.
# `states` has each text #log-state showed with the lines on screen then; `added` and
# `removed` count the nodes put into and taken out of #job-log (each line once, none again).
WATCH_LOG = """(() => {
    window.logWatch = {states: [], added: 0, removed: 0};
    document.addEventListener('DOMContentLoaded', () => {
        const log = document.getElementById('job-log');
        const state = document.getElementById('log-state');
        new MutationObserver((records) => {
            for (const r of records) {
                window.logWatch.added += r.addedNodes.length;
                window.logWatch.removed += r.removedNodes.length;
            }
        }).observe(log, {childList: true});
        new MutationObserver(() => {
            const lines = log.querySelectorAll(':scope > .ln');
            const last = lines.length ? Number(lines[lines.length - 1].dataset.n) : 0;
            window.logWatch.states.push({text: state.textContent, count: lines.length, last});
        }).observe(state, {childList: true, characterData: true, subtree: true});
    });
})()"""

READ_LOG = """() => [...document.querySelectorAll('#job-log > *')].map(
    (e) => e.classList.contains('ln') ? [Number(e.dataset.n), e.textContent.replace(/\\n$/, '')]
        : [0, e.textContent.replace(/\\n$/, '')])"""


def open_long_log(page: Any, job_id: str, total: int, end_text: str) -> list[list[Any]]:
    """Open a finished job's log in the page and wait for its end: what #job-log holds
    (`[n, text]`, n 0 for a notice), checked to have said Loading… until it ended."""
    page.add_init_script(WATCH_LOG)
    sign_in(page, "bob", f"#/job/{job_id}")
    expect(page.locator("#log-state")).to_have_text(end_text, timeout=60_000)
    watch = page.evaluate("window.logWatch")
    ended = [s for s in watch["states"] if s["text"].startswith("End of the log")]
    assert ended and all(s["last"] == total for s in ended), ended    # never before the end
    early = [s for s in watch["states"] if s["last"] < total]
    assert early and all(s["text"].startswith("Loading…") for s in early), early
    assert watch["removed"] == 0                  # appended as they came, never re-rendered
    shown = page.evaluate(READ_LOG)
    assert watch["added"] == len(shown)
    return list(shown)


def tail_then_head(page: Any, last: int) -> None:
    """The log opens on its tail; Home in the log brings line 1 on screen."""
    log = page.locator("#job-log")
    log.scroll_into_view_if_needed()              # the page's scroll, not the log's
    expect(log.locator(f'.ln[data-n="{last}"]')).to_be_in_viewport()
    expect(log.locator('.ln[data-n="1"]')).not_to_be_in_viewport()
    log.focus()
    page.keyboard.press("Home")
    expect(log.locator('.ln[data-n="1"]')).to_be_in_viewport()
    expect(log.locator(f'.ln[data-n="{last}"]')).not_to_be_in_viewport()


def downloaded(page: Any) -> list[str]:
    with page.expect_download() as info:
        page.click("#log-download")
    return Path(info.value.path()).read_text().splitlines()


def test_a_12000_line_log_is_all_there_from_line_1_and_downloads_whole(pages, server):
    job = wait_api(server, "bob", api_submit(server, "bob", "long", lines=12_000)["id"],
                   "completed", timeout_s=60)
    page = pages.new()
    shown = open_long_log(page, job["id"], 12_000, "End of the log (12,000 lines).")
    assert shown == [[n, f"line {n}"] for n in range(1, 12_001)]    # in order, no gap, once
    numbers = [n for n, _ in shown]
    assert numbers.index(1) < numbers.index(6_000) < numbers.index(12_000)
    tail_then_head(page, 12_000)
    lines = downloaded(page)
    assert len(lines) == 12_000 and lines[0] == "line 1" and lines[-1] == "line 12000"
    assert lines == [f"line {n}" for n in range(1, 12_001)]


GAP = ("[jobgate] 2000 more lines not kept (lines 5001-7000; worker.log_max_lines keeps "
       "the first and the last lines)")


def test_a_capped_log_says_which_lines_were_not_kept_in_their_place(browser, capped):
    job = wait_api(capped, "bob", api_submit(capped, "bob", "long", lines=12_000)["id"],
                   "completed", timeout_s=60)
    pages = Pages(browser, capped)
    try:
        page = pages.new()
        shown = open_long_log(page, job["id"], 12_000,
                              "End of the log (12,000 lines, 2,000 not kept).")
        kept = [*range(1, 5_001), *range(7_001, 12_001)]
        assert [n for n, _ in shown if n] == kept
        assert all(text == f"line {n}" for n, text in shown if n)
        notices = [(i, text) for i, (n, text) in enumerate(shown) if not n]
        assert notices == [(5_000, "… lines 5,001\u20137,000 not kept — download the log")]
        tail_then_head(page, 12_000)
        lines = downloaded(page)
        assert lines == [*(f"line {n}" for n in range(1, 5_001)), GAP,
                         *(f"line {n}" for n in range(7_001, 12_001))]
    finally:
        pages.close()
    assert not pages.errors and not pages.unexpected_console() and not pages.outside
