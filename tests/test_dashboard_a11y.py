"""axe-core (bundled by axe-playwright-python, nothing fetched) over each view of the
dashboard in both colour schemes and on a phone, an admin's (the operator's panel) too: no
serious or critical violation.
(tests/test_dashboard.py's server, browser and pages.)
"""

from __future__ import annotations

from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]
from playwright.sync_api import Page, expect

from test_dashboard import PHONE, api_submit, row, sign_in, wait_api
from test_dashboard import browser as browser  # the module's fixtures, by re-export
from test_dashboard import pages as pages
from test_dashboard import server as server

pytestmark = pytest.mark.sqlite_only("the dashboard does not know the backend")

SERIOUS = {"serious", "critical"}


def serious_violations(page: Page) -> list[dict[str, Any]]:
    results = Axe().run(page)
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in results.response["violations"] if v["impact"] in SERIOUS]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_serious_violations_on_any_view(pages, server, scheme):
    failed = wait_api(server, "bob", api_submit(server, "bob", "fail", label="a11y")["id"],
                      "failed")
    done = wait_api(server, "bob", api_submit(server, "bob", "report", lines=3)["id"],
                    "completed")
    found: dict[str, list[dict[str, Any]]] = {}

    page = pages.new(color_scheme=scheme)
    page.goto("/")
    expect(page.locator("#signin-form")).to_be_visible()
    found["sign-in"] = serious_violations(page)

    sign_in(page, "bob")
    expect(row(page, failed["id"])).to_be_visible()
    expect(page.locator("#stat-strip li").first).to_be_visible()
    found["list"] = serious_violations(page)

    page.goto(f"/#/job/{done['id']}")
    expect(page.locator("#log-state")).to_contain_text("End of the log")
    found["job"] = serious_violations(page)

    page.goto(f"/#/job/{failed['id']}")
    expect(page.locator("#job-error")).to_contain_text("boom a11y")
    found["failed job"] = serious_violations(page)

    # The operator's panel (admins): filters, the per-user line, controls, limits, nodes;
    # with a search and an error shown.
    admin = pages.new(color_scheme=scheme)
    sign_in(admin, "alice")
    expect(admin.locator("#admin")).to_be_visible()
    expect(admin.locator("#nodes-body tr").first).to_be_visible()
    expect(admin.locator("#lim-max-running")).not_to_have_value("")
    expect(admin.locator("#admin-owners")).not_to_contain_text("Reading")
    found["admin list"] = serious_violations(admin)
    admin.fill("#f-q", "a11y")
    expect(row(admin, failed["id"])).to_be_visible()
    pages.expect_console(r"422")
    admin.fill("#lim-per-user", "lots")
    admin.click("#limits-save")
    expect(admin.locator("#limits-error")).to_contain_text("Not saved")
    found["admin search, limit error"] = serious_violations(admin)
    admin_phone = pages.new(viewport=PHONE, is_mobile=True, has_touch=True,
                            color_scheme=scheme)
    sign_in(admin_phone, "alice")
    expect(admin_phone.locator("#nodes-body tr").first).to_be_visible()
    found["admin phone"] = serious_violations(admin_phone)

    phone = pages.new(viewport=PHONE, is_mobile=True, has_touch=True, color_scheme=scheme)
    sign_in(phone, "bob")
    expect(row(phone, done["id"])).to_be_visible()
    found["phone list"] = serious_violations(phone)

    bad = {view: v for view, v in found.items() if v}
    assert not bad, f"axe ({scheme}): {bad}"
