"""The dashboard's operator panel and admin filters (admin.js, list.js), in Debian's
Chromium: the kind filter and the search (server side) list what the API lists, the
per-user line follows other users' submits and cancels live, pause and resume, a limit
change, drain and undrain, the depth and wait charts; a non-admin sees none of it.

One server for the module (its own: pauses and limits here must not reach other modules'
tests); jobs are submitted to run in an hour, so they stay queued and nothing runs.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import string
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from conftest import TEST_KINDS, Server, running_server
from nodekit import write_row
from test_dashboard import DASHBOARD_KINDS, NO_LOGIN_LIMITS, sign_in
from test_dashboard import browser as browser  # the module's fixtures, by re-export
from test_dashboard import pages as pages

pytestmark = pytest.mark.sqlite_only("the dashboard does not know the backend")

CONFIG = """
[limits]
max_running = 4
per_user_running = 1
""" + NO_LOGIN_LIMITS + TEST_KINDS + DASHBOARD_KINDS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("dashboard-admin"), CONFIG) as srv:
        yield srv


def word() -> str:
    """Lower-case letters no other test's job holds (the `pick` kind's `name` pattern)."""
    return "".join(random.choices(string.ascii_lowercase, k=12))


def later() -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()


def submit(server: Server, user: str, kind: str, **args: Any) -> str:
    with server.client(user) as http:
        r = http.post("/api/jobs", json={"kind": kind, "args": args, "run_at": later()})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def cancel(server: Server, user: str, job_id: str) -> None:
    with server.client(user) as http:
        assert http.post(f"/api/jobs/{job_id}/cancel").status_code == 200


def cancel_or_done(server: Server, user: str, job_id: str) -> None:
    """Cancel a job that may have run meanwhile (a 409 then)."""
    with server.client(user) as http:
        assert http.post(f"/api/jobs/{job_id}/cancel").status_code in (200, 409)


def api(server: Server, method: str, path: str, **kw: Any) -> Any:
    with server.client("alice") as http:
        r = http.request(method, path, **kw)
        assert r.status_code == 200, r.text
        return r.json()


def api_ids(server: Server, **params: Any) -> list[str]:
    return [j["id"] for j in api(server, "GET", "/api/jobs", params=params)["jobs"]]


def shown_ids(page: Page) -> list[str]:
    return list(page.eval_on_selector_all("#job-list li", "els => els.map(e => e.dataset.id)"))


def owners_text(by_owner: dict[str, dict[str, int]]) -> str:
    """The per-user line as admin.js writes it."""
    if not by_owner:
        return "Nobody has a job queued or running."
    parts = []
    for name in sorted(by_owner):
        c = by_owner[name]
        bits = [f"{c[k]} {k}" for k in ("queued", "running") if c[k]]
        parts.append(f"{name} {', '.join(bits)}")
    return " · ".join(parts)


def expect_list(page: Page, server: Server, **params: Any) -> list[str]:
    """Wait until the list shows what `GET /api/jobs` lists with `params`; those ids."""
    want = api_ids(server, **params)
    page.wait_for_function("(ids) => { const shown = [...document.querySelectorAll("
                           "'#job-list li')].map(e => e.dataset.id); "
                           "return shown.join() === ids.join(); }", arg=want)
    return want


@pytest.fixture
def admin(pages: Any) -> Page:
    page: Page = pages.new()
    sign_in(page, "alice")
    expect(page.locator("#admin")).to_be_visible()
    return page


def test_admin_filters_by_kind_and_searches_and_the_list_matches_the_api(admin, server):
    w = word()
    bobs_pick = submit(server, "bob", "pick", name=w)
    bobs_fail = submit(server, "bob", "fail", label=f"x {w.upper()} y")
    carols_pick = submit(server, "carol", "pick", name=word())
    expect(admin.locator(f'#job-list li[data-id="{bobs_fail}"]')).to_be_visible()

    admin.select_option("#f-kind", "pick")
    assert "kind=pick" in admin.url
    picks = expect_list(admin, server, kind="pick")
    assert {bobs_pick, carols_pick} <= set(picks) and bobs_fail not in picks

    admin.fill("#f-q", w)  # debounced: one read for the word, not one per key
    assert expect_list(admin, server, kind="pick", q=w) == [bobs_pick]
    assert f"q={w}" in admin.url

    admin.select_option("#f-kind", "")
    assert expect_list(admin, server, q=w) == [bobs_fail, bobs_pick]

    admin.fill("#f-q", bobs_fail[:20].lower())  # an id's prefix, in any case
    assert expect_list(admin, server, q=bobs_fail[:20].lower()) == [bobs_fail]

    admin.fill("#f-q", word())
    expect(admin.locator("#jobs-empty")).to_be_visible()
    expect(admin.locator("#jobs-empty")).to_contain_text("matching")
    assert shown_ids(admin) == []

    # A reload keeps the filters (they live in the URL).
    admin.fill("#f-q", w)
    expect_list(admin, server, q=w)
    admin.reload()
    expect(admin.locator("#f-q")).to_have_value(w)
    assert expect_list(admin, server, q=w) == [bobs_fail, bobs_pick]
    for job_id, user in ((bobs_pick, "bob"), (bobs_fail, "bob"), (carols_pick, "carol")):
        cancel(server, user, job_id)


def test_the_per_user_line_follows_another_users_submit_and_cancel(admin, server):
    line = admin.locator("#admin-owners")
    expect(line).to_have_text(owners_text(api(server, "GET", "/api/queue")["by_owner"]))
    first = submit(server, "carol", "noop")
    second = submit(server, "carol", "noop")
    after = api(server, "GET", "/api/queue")["by_owner"]
    assert after["carol"]["queued"] >= 2
    expect(line).to_have_text(owners_text(after))  # live: the page is not reloaded
    assert "carol" in line.inner_text()
    cancel(server, "carol", first)
    cancel(server, "carol", second)
    expect(line).to_have_text(owners_text(api(server, "GET", "/api/queue")["by_owner"]))


def test_pause_shows_as_paused_and_resume_clears_it(admin, server):
    state, header = admin.locator("#dispatch-state"), admin.locator("#q-paused")
    expect(state).to_contain_text("Running")
    expect(header).to_be_hidden()
    admin.click("#queue-toggle")
    expect(state).to_contain_text("Paused: no job starts")
    expect(header).to_be_visible()
    expect(header).to_have_text("paused")
    expect(admin.locator("#queue-toggle")).to_have_text("Resume queue")
    assert api(server, "GET", "/api/controls")["paused"] is True
    admin.click("#queue-toggle")
    expect(state).to_contain_text("Running")
    expect(header).to_be_hidden()
    assert api(server, "GET", "/api/controls")["paused"] is False

    # One kind.
    admin.select_option("#pause-kind", "sleep")
    admin.click("#kind-toggle")
    expect(state).to_have_text("Paused kinds: sleep.")
    expect(header).to_have_text("paused: sleep")
    assert api(server, "GET", "/api/controls")["paused_kinds"] == ["sleep"]
    expect(admin.locator("#kind-toggle")).to_have_text("Resume kind")
    admin.click("#kind-toggle")
    expect(state).to_contain_text("Running")
    expect(header).to_be_hidden()
    assert api(server, "GET", "/api/controls")["paused_kinds"] == []

    # Another admin's pause (the API, elsewhere) shows too.
    api(server, "POST", "/api/queue/pause")
    expect(header).to_have_text("paused")
    expect(state).to_contain_text("Paused")
    api(server, "POST", "/api/queue/resume")
    expect(header).to_be_hidden()


def test_a_limit_change_shows_in_the_panel_and_a_bad_one_shows_the_apis_error(
        admin, pages, server):
    try:
        expect(admin.locator("#lim-max-running")).to_have_value("4")
        expect(admin.locator("#lim-max-running-src")).to_have_text("(from the config)")
        admin.fill("#lim-max-running", "3")
        admin.click("#limits-save")
        expect(admin.locator("#limits-note")).to_have_text("Limits saved.")
        expect(admin.locator("#lim-max-running-src")).to_have_text("(set here)")
        expect(admin.locator("#q-counts")).to_contain_text("running of 3")
        effective = api(server, "GET", "/api/controls")["effective"]
        assert effective["max_running"] == {"value": 3, "source": "live"}

        # Another admin's change (the API) reaches the panel by its event.
        api(server, "PUT", "/api/limits", json={"per_user_running": 2})
        expect(admin.locator("#lim-per-user")).to_have_value("2")
        expect(admin.locator("#lim-per-user-src")).to_have_text("(set here)")

        pages.expect_console(r"422")
        admin.fill("#lim-per-user", "lots")
        admin.click("#limits-save")
        error = admin.locator("#limits-error")
        expect(error).to_contain_text("Not saved:")
        expect(error).to_contain_text("per_user_running")
        assert api(server, "GET", "/api/controls")["effective"]["per_user_running"][
            "value"] == 2

        # Empty: back to the config's value.
        admin.fill("#lim-per-user", "")
        admin.fill("#lim-max-running", "")
        admin.click("#limits-save")
        expect(admin.locator("#limits-note")).to_have_text("Limits saved.")
        expect(admin.locator("#lim-max-running")).to_have_value("4")
        expect(admin.locator("#lim-per-user")).to_have_value("1")
        expect(admin.locator("#lim-max-running-src")).to_have_text("(from the config)")
    finally:
        api(server, "PUT", "/api/limits", json={"reset": True})


def test_the_nodes_panel_shows_the_node_and_drains_and_undrains_it(admin, server):
    node = api(server, "GET", "/api/queue")["nodes"][0]
    row = admin.locator(f'#nodes-body tr[data-name="{node["name"]}"]')
    expect(row).to_be_visible()
    cells = row.locator("td")
    expect(cells.nth(0)).to_have_text(str(node["slots"]))
    expect(cells.nth(2)).to_contain_text("s ago")
    expect(cells.nth(3)).to_contain_text("free")  # this server's own node: its memory
    expect(cells.nth(4)).to_have_text("Taking jobs")
    try:
        row.get_by_role("button", name=f"Drain {node['name']}").click()
        expect(cells.nth(4)).to_have_text("Drained")
        assert api(server, "GET", "/api/controls")["drained"] == [node["name"]]
        row.get_by_role("button", name=f"Undrain {node['name']}").click()
        expect(cells.nth(4)).to_have_text("Taking jobs")
        assert api(server, "GET", "/api/controls")["drained"] == []
    finally:
        with server.client("alice") as http:
            http.post(f"/api/nodes/{node['name']}/undrain")


def test_the_nodes_panel_shows_every_nodes_own_memory_and_a_dash_if_it_sent_none(
        admin, server):
    """Another node's heartbeat (written as that node would) shows its own memory; a node
    of an older version, which writes none, shows '—'."""
    db_url = f"sqlite:///{server.folder / 'jobgate.db'}"
    insert = ("INSERT INTO nodes (name, host, pid, slots, version, started_at, heartbeat_at, "
              "running_rss_mb, memory_available_mb) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
    now = time.time()
    write_row(db_url, insert, ("zz-newer", "host-b", 11, 2, "9.9", now, now, 1228.8, 3482))
    write_row(db_url, insert, ("zz-older", "host-c", 12, 1, "0.1", now, now, None, None))
    try:
        own = api(server, "GET", "/api/queue")["nodes"][0]["name"]
        rows = {name: admin.locator(f'#nodes-body tr[data-name="{name}"] td')
                for name in (own, "zz-newer", "zz-older")}
        expect(rows["zz-newer"].nth(0)).to_have_text("2")
        expect(rows["zz-newer"].nth(3)).to_have_text("1.2 GB in jobs, 3.4 GB free")
        expect(rows["zz-older"].nth(3)).to_have_text("—")
        expect(rows[own].nth(3)).to_contain_text(" in jobs, ")  # this server's own node
        expect(rows[own].nth(3)).to_contain_text(" free")
    finally:
        write_row(db_url, "DELETE FROM nodes WHERE name LIKE ?", ("zz-%",))


def test_a_non_admin_sees_no_admin_panel(pages, server):
    requests: list[str] = []
    page = pages.new()
    page.on("request", lambda r: requests.append(r.url))
    sign_in(page, "bob")
    expect(page.locator("#stat-strip li").first).to_be_visible()
    for hidden in ("#admin", "#f-kind-box", "#f-q-box", "#f-owner-box"):
        expect(page.locator(hidden)).to_be_hidden()
    # The URL's admin filters do nothing for a non-admin.
    page.goto("/#/jobs?kind=pick&q=zzz")
    expect(page.locator("#f-q-box")).to_be_hidden()
    assert not any("/api/controls" in u or "q=zzz" in u for u in requests), requests
    assert httpx.get(f"{server.url}/api/controls", headers={
        "Authorization": f"Bearer {server.tokens['bob']}"}).status_code == 403


def test_the_depth_chart_draws_the_last_hours_samples_and_follows_a_submit(admin, server):
    text = admin.locator("#depth-text")
    expect(text).to_contain_text("Queued (solid line)")
    queued = admin.locator("#depth-chart polyline.depth-queued")
    expect(queued).to_have_count(1)
    assert admin.locator("#depth-chart polyline.depth-running").count() == 1
    jobs = [submit(server, "carol", "noop") for _ in range(3)]
    try:
        last = api(server, "GET", "/api/queue")["depth"]["samples"][-1]["queued"]
        assert last >= 3
        expect(text).to_contain_text(f"Queued (solid line): {last} in the last 30 s")
        points = queued.get_attribute("points") or ""
        assert len(points.split()) >= 2  # a step: the slot's start and its end
        ys = {float(p.split(",")[1]) for p in points.split()}
        assert min(ys) < 96  # above the axis: jobs are queued
    finally:
        for job_id in jobs:
            cancel(server, "carol", job_id)


def test_the_wait_chart_shows_how_long_a_due_job_has_waited_for_its_turn(admin, server):
    text = admin.locator("#wait-text")
    expect(text).to_contain_text("Longest wait in the last 30 s")
    api(server, "POST", "/api/queue/pause")
    try:
        with server.client("carol") as http:  # due now, and nothing may start it
            r = http.post("/api/jobs", json={"kind": "noop", "args": {}})
            assert r.status_code == 201, r.text
            job = r.json()["id"]
        # The panel reads the queue every 5 s; the wait grows past a second meanwhile.
        expect(text).to_contain_text(re.compile(r"Longest wait in the last 30 s: [1-9]"),
                                     timeout=20_000)
        points = admin.locator("#wait-chart polyline").get_attribute("points") or ""
        assert min(float(p.split(",")[1]) for p in points.split()) < 96
    finally:
        api(server, "POST", "/api/queue/resume")
    cancel_or_done(server, "carol", job)


def test_bulk_actions_take_the_kind_filter_and_are_hidden_while_searching(admin, server):
    job = submit(server, "carol", "pick", name=word())
    try:
        admin.select_option("#f-kind", "pick")
        cancel_all = admin.locator("#bulk-cancel")
        expect(cancel_all).to_have_text("Cancel everyone's queued pick jobs")
        with admin.expect_request(lambda r: r.url.endswith("/api/jobs/bulk")) as info:
            cancel_all.click()
        assert info.value.post_data_json["filter"] == {"kind": "pick", "state": "queued"}
        expect(admin.locator("#confirm")).to_be_visible()
        admin.get_by_role("button", name="Keep it").click()
        assert api(server, "GET", f"/api/jobs/{job}")["state"] == "queued"
        admin.fill("#f-q", "anything")
        expect(admin.locator("#job-list li")).to_have_count(0)
        for action in ("cancel", "retry", "delete"):
            expect(admin.locator(f"#bulk-{action}")).to_be_hidden()
    finally:
        cancel(server, "carol", job)
