"""CORS: `[server] cors_origins` lets pages of other origins call the HTTP API and its SSE
streams, with credentials, by rules a browser accepts; any other origin gets no CORS
header at all, and WebSocket origins keep their own rule (`allowed_origins`).

One real `jobgate serve`; the browser test serves a tiny page from a second (listed) and a
third (unlisted) origin, each its own loopback port, and runs it in Chromium.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from conftest import TEST_KINDS, Server, free_port, running_server
from jobgate.api import create_app
from jobgate.config import Settings, load_settings
from jobgate.units import ConfigError

pytestmark = pytest.mark.sqlite_only("CORS is answered before any route reaches the store")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FRONT_PORT, OTHER_PORT = free_port(), free_port()
FRONT = f"http://127.0.0.1:{FRONT_PORT}"   # listed in cors_origins
OTHER = f"http://127.0.0.1:{OTHER_PORT}"   # not listed
PAGE = "<!doctype html><title>a frontend elsewhere</title><p>frontend</p>"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = f'[server]\ncors_origins = ["{FRONT}", "https://app.example.org"]\n' + TEST_KINDS
    with running_server(tmp_path_factory.mktemp("cors"), config) as srv:
        yield srv


def cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


# --- over HTTP ---------------------------------------------------------------------------------

def test_a_preflight_from_a_listed_origin_is_answered(server):
    r = httpx.options(f"{server.url}/api/jobs", headers={
        "Origin": FRONT, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == FRONT  # echoed, never "*"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "last-event-id" in allowed
    assert "Origin" in r.headers["vary"]


def test_answers_to_a_listed_origin_carry_its_headers(server):
    with server.client("bob") as bob:
        r = bob.get("/api/queue", headers={"Origin": FRONT})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == FRONT
        assert r.headers["access-control-allow-credentials"] == "true"
        assert "Retry-After" in r.headers["access-control-expose-headers"]
        assert "Origin" in r.headers["vary"]
        with bob.stream("GET", "/api/events", headers={"Origin": FRONT}) as stream:
            assert stream.status_code == 200
            assert stream.headers["access-control-allow-origin"] == FRONT
    # An error too, so the page can read why
    refused = httpx.get(f"{server.url}/api/jobs", headers={"Origin": FRONT})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == FRONT


def test_an_origin_not_listed_gets_no_cors_header(server):
    r = httpx.options(f"{server.url}/api/jobs", headers={
        "Origin": OTHER, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden_origin"
    assert cors_headers(r) == {}
    with server.client("bob") as bob:
        for origin in (OTHER, "null", f"{FRONT}.evil.example"):
            got = bob.get("/api/queue", headers={"Origin": origin})
            assert got.status_code == 200 and cors_headers(got) == {}, origin
        assert cors_headers(bob.get("/api/queue")) == {}  # no Origin: not a browser's CORS


async def test_websocket_origins_keep_their_own_rule(server):
    """A listed CORS origin is not an allowed WebSocket origin (`allowed_origins` is)."""
    url = f"ws://127.0.0.1:{server.port}/api/ws"
    auth = {"Authorization": f"Bearer {server.tokens['bob']}"}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers=auth, origin=Origin(FRONT)):
            pass
    assert refused.value.response.status_code == 403
    async with connect(url, additional_headers=auth, origin=server.url) as ws:
        await ws.send(json.dumps({"ping": 1}))
        assert json.loads(await ws.recv())["type"] == "pong"


async def test_without_cors_origins_nothing_is_answered_for_cors(tmp_path):
    transport = httpx.ASGITransport(app=create_app(Settings(base_dir=tmp_path)))
    async with httpx.AsyncClient(transport=transport, base_url="http://jg") as http:
        r = await http.options("/api/jobs", headers={
            "Origin": FRONT, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 405 and cors_headers(r) == {}


@pytest.mark.parametrize(("value", "why"), [
    ('["*"]', "'\\*' is refused"),
    ('["https://app.example.org/"]', "is not an origin"),
    ('["app.example.org"]', "is not an origin"),
])
def test_cors_origins_are_checked_at_start(tmp_path, value, why):
    (tmp_path / "jobgate.toml").write_text(f"[server]\ncors_origins = {value}\n")
    with pytest.raises(ConfigError, match=f"server.cors_origins: .*{why}"):
        load_settings(tmp_path / "jobgate.toml", env={})
    env = {"JOBGATE_SERVER_CORS_ORIGINS": '["http://a.example:8080"]'}
    assert load_settings(env=env).server.cors_origins == ["http://a.example:8080"]


# --- in the browser ------------------------------------------------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The frontend's page, served at FRONT and at OTHER."""
    folder: Path = tmp_path_factory.mktemp("front")
    (folder / "index.html").write_text(PAGE)
    handler = functools.partial(_Quiet, directory=str(folder))
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
               for port in (FRONT_PORT, OTHER_PORT)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        for thread in threads:
            thread.join()


# In the page: a ticket by a credentialed fetch (a preflight, for the bearer header), the
# event stream of another origin, a job submitted; the events are kept in window.got.
OPEN_STREAM = """async ({api, token}) => {
    const auth = {Authorization: `Bearer ${token}`};
    const t = await fetch(`${api}/api/auth/ticket`,
                          {method: 'POST', headers: auth, credentials: 'include'});
    const {ticket} = await t.json();
    window.got = [];
    const es = new EventSource(`${api}/api/events?ticket=${encodeURIComponent(ticket)}`,
                               {withCredentials: true});
    es.onmessage = (m) => window.got.push(JSON.parse(m.data));
    await new Promise((resolve, reject) => { es.onopen = resolve; es.onerror = reject; });
    const r = await fetch(`${api}/api/jobs`, {
        method: 'POST', credentials: 'include',
        headers: {...auth, 'Content-Type': 'application/json'},
        body: JSON.stringify({kind: 'noop', args: {}})});
    return (await r.json()).id;
}"""

REFUSED = """async ({api, token}) => {
    try {
        await fetch(`${api}/api/queue`, {headers: {Authorization: `Bearer ${token}`}});
        return 'read';
    } catch (err) { return 'refused: ' + err.message; }
}"""


def test_a_page_of_a_listed_origin_reads_the_event_stream(server, pages):
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: scripts/test installs it"
    args = {"api": server.url, "token": server.tokens["bob"]}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{FRONT}/index.html")
            job_id = page.evaluate(OPEN_STREAM, args)
            page.wait_for_function(
                "(id) => window.got.some(e => e.job_id === id && e.type === 'job.completed')",
                arg=job_id)
            types = page.evaluate("(id) => window.got.filter(e => e.job_id === id)"
                                  ".map(e => e.type)", job_id)
            assert types[0] == "job.queued" and "job.started" in types, types
            # The same page at an origin not listed cannot read the API.
            other = browser.new_page()
            other.goto(f"{OTHER}/index.html")
            assert other.evaluate(REFUSED, args).startswith("refused")
            assert page.evaluate(REFUSED, args) == "read"
        finally:
            browser.close()
