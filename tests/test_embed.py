"""jobgate inside another app: `examples/fastapi_app` (a FastAPI app with its own users and
cookie sessions, jobgate mounted at /jobs with a `user_resolver`) served by a real uvicorn
process and driven over HTTP, SSE, WebSocket and in Chromium; and a Starlette host in
process, for the order of the lifespans, the API-only mount and the resolver's edges.

The example's server runs on each backend; its users become jobgate's owners on first
sight, each isolated from the others, while jobgate's own tokens keep working beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from websockets.asyncio.client import connect

import jobgate
from conftest import Backend, free_port
from jobgate.auth import new_token
from jobgate.config import load_settings
from jobgate.store import store_for_url

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "fastapi_app"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The example's own kind, as its jobgate.toml declares it.
EXAMPLE_KINDS = "[kinds.count]" + (EXAMPLE / "jobgate.toml").read_text().partition(
    "[kinds.count]")[2]


class HostServer:
    """The example app under a real uvicorn on a free loopback port, on its own database."""

    def __init__(self, folder: Path, db_url: str) -> None:
        self.folder, self.db_url = folder, db_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "jobgate.toml"
        self.config.write_text(textwrap.dedent(f"""\
            [server]
            data_dir = "{folder / 'data'}"
            input_dir = "{folder / 'input'}"
            [storage]
            url = "{db_url}"
            [limits]
            max_running = 4
            [rate_limits]
            submit_per_user = "off"
            submit_per_ip = "off"
            """) + EXAMPLE_KINDS)
        self.log = folder / "uvicorn.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "JOBGATE_CONFIG": str(self.config)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(EXAMPLE),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/jobs/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the example app did not become healthy in 60 s")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code

    @contextlib.contextmanager
    def session(self, user: str) -> Iterator[httpx.Client]:
        """A client signed in to the host app as `user` (its session cookie in the jar)."""
        with httpx.Client(base_url=self.url, timeout=30) as http:
            r = http.post("/login", data={"username": user, "password": f"{user}-password"})
            assert r.status_code == 303 and r.headers["location"] == "/", r.text
            assert "example_session" in http.cookies
            yield http

    def store_call(self, what: str, name: str) -> Any:
        """Look at (or add to) the jobgate store the app uses, as the CLI would."""
        async def run() -> Any:
            store = store_for_url(self.db_url)
            await store.open()
            try:
                if what == "user":
                    return await store.get_user(name)
                await store.add_user(name, None, False)
                return await new_token(store, name)
            finally:
                await store.close()

        return asyncio.run(run())


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[HostServer]:
    folder = tmp_path_factory.mktemp("embed")
    (folder / "input").mkdir()
    server = HostServer(folder, backend.new_url(folder))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def submit(http: httpx.Client, **args: Any) -> dict[str, Any]:
    r = http.post("/jobs/api/jobs", json={"kind": "count", "args": {"delay": 0, **args}})
    assert r.status_code == 201, r.text
    return dict(r.json())


def job_events(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """The job's events over SSE under the prefix, to its final one (the stream ends)."""
    events = []
    with http.stream("GET", f"/jobs/api/jobs/{job_id}/events") as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


# --- the host stays itself -------------------------------------------------------------------

def test_the_hosts_routes_and_lifespan_still_work(host):
    with host.session("bob") as bob:
        assert bob.get("/hello").json() == {"hello": "bob", "started": True}
        assert "Hello, bob" in bob.get("/").text
    assert 'action="/login"' in httpx.get(f"{host.url}/").text
    assert httpx.get(f"{host.url}/hello").json() == {"hello": None, "started": True}


def test_the_kinds_the_app_declares_in_code_run_beside_its_toml_kind(host):
    with host.session("bob") as bob:
        kinds = {k["name"]: k for k in bob.get("/jobs/api/kinds").json()["kinds"]}
        assert {"count", "checksum", "primes"} <= set(kinds)
        assert kinds["checksum"]["args"]["algorithm"]["choices"] == ["sha256", "sha1", "md5"]
        assert kinds["primes"]["args"]["below"]["max"] == 100_000_000

        data = os.urandom(3 * 1024 * 1024 + 5)
        up = bob.post("/jobs/api/uploads", files={"file": ("film.bin", data)}).json()
        summed = bob.post("/jobs/api/jobs", json={
            "kind": "checksum", "args": {"file": up["ref"], "algorithm": "sha1"}}).json()
        counted = bob.post("/jobs/api/jobs", json={
            "kind": "primes", "args": {"below": 2_000_000}}).json()
        for job in (summed, counted):
            events = job_events(bob, job["id"])
            assert events[-1]["type"] == "job.completed", [
                e for e in events]
            assert any(e["type"] == "job.progress" for e in events)
        digest = hashlib.sha1(data).hexdigest()
        summed = bob.get(f"/jobs/api/jobs/{summed['id']}").json()
        assert summed["result"] == {"algorithm": "sha1", "digest": digest, "bytes": len(data)}
        assert [o["name"] for o in summed["outputs"]] == ["sha1sum.txt"]
        r = bob.get(f"/jobs/api/jobs/{summed['id']}/outputs/sha1sum.txt")
        assert r.status_code == 200 and r.text.startswith(f"{digest}  "), r.text
        counted = bob.get(f"/jobs/api/jobs/{counted['id']}").json()
        assert counted["result"] == {"below": 2_000_000, "primes": 148_933}

        # The signature's bounds and choices are the API's.
        for args in ({"below": 1}, {"below": "many"}, {"below": 100_000_001}):
            refused = bob.post("/jobs/api/jobs", json={"kind": "primes", "args": args})
            assert refused.status_code == 422 and "below" in refused.text, refused.text
        refused = bob.post("/jobs/api/jobs", json={
            "kind": "checksum", "args": {"file": up["ref"], "algorithm": "crc32"}})
        assert refused.status_code == 422 and "algorithm" in refused.text, refused.text


def test_everything_of_jobgate_is_under_the_prefix(host):
    r = httpx.get(f"{host.url}/jobs")
    assert r.status_code == 307 and r.headers["location"].endswith("/jobs/")
    page = httpx.get(f"{host.url}/jobs/")
    assert page.status_code == 200 and 'src="ui/app.js"' in page.text
    assert '"/ui/' not in page.text
    for script in re.findall(r'<script src="(ui/[^"]+)"', page.text):
        assert "'/api/" not in httpx.get(f"{host.url}/jobs/{script}").text, script
    assert httpx.get(f"{host.url}/jobs/ui/app.css").status_code == 200
    assert httpx.get(f"{host.url}/jobs/health").json()["status"] == "ok"
    schema = httpx.get(f"{host.url}/jobs/openapi.json").json()
    assert schema["servers"] == [{"url": "/jobs"}]
    assert "/api/jobs" in schema["paths"] and "/api/jobs/{job_id}/events" in schema["paths"]
    docs = httpx.get(f"{host.url}/jobs/docs")
    assert docs.status_code == 200 and "/jobs/openapi.json" in docs.text
    # Nothing of jobgate's answers at the host's root.
    assert httpx.get(f"{host.url}/api/queue").status_code == 404
    assert httpx.get(f"{host.url}/openapi.json").json()["info"]["title"] == "example app"


# --- the host's users are jobgate's owners ------------------------------------------------------

def test_the_hosts_users_own_their_jobs_and_see_no_one_elses(host):
    with host.session("bob") as bob, host.session("carol") as carol, \
            host.session("alice") as alice:
        assert bob.get("/jobs/api/me").json() == {"name": "bob", "admin": False}
        assert alice.get("/jobs/api/me").json() == {"name": "alice", "admin": True}
        job = submit(bob)
        assert job["owner"] == "bob"
        events = job_events(bob, job["id"])
        assert [e["type"] for e in events][-1] == "job.completed"
        assert "job.started" in [e["type"] for e in events]
        assert all(e["job_id"] == job["id"] for e in events if "job_id" in e)
        assert bob.get(f"/jobs/api/jobs/{job['id']}").json()["state"] == "completed"
        assert job["id"] in [j["id"] for j in bob.get("/jobs/api/jobs").json()["jobs"]]
        # carol: not hers, in no way
        assert carol.get(f"/jobs/api/jobs/{job['id']}").status_code == 404
        assert carol.get(f"/jobs/api/jobs/{job['id']}/events").status_code == 404
        assert carol.get(f"/jobs/api/jobs/{job['id']}/logs").status_code == 404
        assert carol.post(f"/jobs/api/jobs/{job['id']}/retry").status_code == 404
        assert job["id"] not in [j["id"] for j in carol.get("/jobs/api/jobs").json()["jobs"]]
        # alice is the host's admin, so jobgate's
        assert alice.get(f"/jobs/api/jobs/{job['id']}").json()["owner"] == "bob"
        assert job["id"] in [j["id"] for j in
                             alice.get("/jobs/api/jobs", params={"owner": "bob"}).json()["jobs"]]
    # Nobody without the host's session or a jobgate token
    anonymous = httpx.get(f"{host.url}/jobs/api/jobs/{job['id']}")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    # First sight made bob a jobgate user, with no password to sign in with
    stored = host.store_call("user", "bob")
    assert stored is not None and stored.password_hash is None and not stored.admin


def test_every_event_stream_of_a_resolved_user_is_their_own(host):
    with host.session("bob") as bob, host.session("carol") as carol:
        seen: list[dict[str, Any]] = []
        with carol.stream("GET", "/jobs/api/events") as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            theirs, mine = submit(bob), submit(carol)
            for line in lines:
                if line.startswith("data: "):
                    seen.append(json.loads(line.removeprefix("data: ")))
                    if seen[-1].get("job_id") == mine["id"] and \
                            seen[-1]["type"] == "job.completed":
                        break
        ids = {e.get("job_id") for e in seen} - {None}
        assert ids == {mine["id"]}, f"carol saw {ids}, bob's job was {theirs['id']}"
        assert any(e["type"] == "queue.stats" for e in seen)


async def test_the_websocket_takes_the_hosts_cookie(host):
    with host.session("carol") as carol:
        cookie = f"example_session={carol.cookies['example_session']}"
    async with httpx.AsyncClient(base_url=host.url, headers={"Cookie": cookie}) as http:
        job = (await http.post("/jobs/api/jobs", json={
            "kind": "count", "args": {"steps": 3, "delay": 0.3}})).json()
        ws_url = f"ws://127.0.0.1:{host.port}/jobs/api/ws"
        async with connect(ws_url, additional_headers={"Cookie": cookie},
                           origin=host.url) as ws:
            await ws.send(json.dumps({"subscribe": "job", "id": job["id"], "resume": 0}))
            types = []
            async with asyncio.timeout(30):
                while "job.completed" not in types:
                    message = json.loads(await ws.recv())
                    if message.get("job_id") == job["id"]:
                        types.append(message["type"])
                    assert message["type"] != "error", message
            assert "job.progress" in types
        # Without the cookie nor a ticket: refused before the socket opens.
        with pytest.raises(Exception, match="401"):
            async with connect(ws_url, origin=host.url):
                pass


def test_jobgate_tokens_still_work_beside_the_resolver(host):
    token = host.store_call("add", "dave")
    with httpx.Client(base_url=host.url, headers={"Authorization": f"Bearer {token}"},
                      timeout=30) as dave, host.session("bob") as bob:
        assert dave.get("/jobs/api/me").json() == {"name": "dave", "admin": False}
        job = submit(dave)
        assert job["owner"] == "dave"
        assert bob.get(f"/jobs/api/jobs/{job['id']}").status_code == 404
        # A stream ticket for dave's token, as the dashboard signed in with it would use
        ticket = dave.post("/jobs/api/auth/ticket").json()["ticket"]
        with httpx.stream("GET", f"{host.url}/jobs/api/jobs/{job['id']}/events",
                          params={"ticket": ticket, "last_event_id": "0"}, timeout=30) as r:
            assert r.status_code == 200, r.read()
            types = [json.loads(line[6:])["type"] for line in r.iter_lines()
                     if line.startswith("data: ")]
        assert types[0] == "job.queued" and types[-1] == "job.completed"


def test_uploads_under_the_prefix_are_not_held_to_the_json_body_limit(host):
    data = os.urandom(600 * 1024)  # over [server] max_request_kb (256)
    with host.session("bob") as bob:
        r = bob.post("/jobs/api/uploads", files={"file": ("big.bin", data)})
        assert r.status_code == 201, r.text
        assert r.json()["size"] == len(data)
        big_json = bob.post("/jobs/api/jobs", content=b"{" + b" " * 300 * 1024 + b"}",
                            headers={"content-type": "application/json"})
        assert big_json.status_code == 413


def test_the_host_stops_cleanly(tmp_path):
    (tmp_path / "input").mkdir()
    server = HostServer(tmp_path, f"sqlite:///{tmp_path / 'jobgate.db'}")
    server.start()
    with server.session("bob") as bob:
        submit(bob, steps=3)
    # uvicorn shuts down, then raises the SIGTERM it caught again (-15), as a server should.
    assert server.stop() in (0, -signal.SIGTERM)
    text = server.log.read_text()
    assert "Application shutdown complete" in text and "Traceback" not in text


# --- the dashboard under the prefix, in Chromium -------------------------------------------------

@pytest.mark.sqlite_only("the dashboard does not know the backend")
def test_the_dashboard_under_the_prefix_with_the_hosts_session(host):
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: scripts/test installs it"
    errors: list[str] = []
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=host.url)
            context.set_default_timeout(20_000)
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda req: outside.append(req.url)
                    if not req.url.startswith(host.url) else None)
            page.goto("/")
            page.fill("#username", "bob")
            page.fill("#password", "bob-password")
            page.click("#login")
            page.click("#jobs")                      # the host's link to the dashboard
            expect(page).to_have_url(f"{host.url}/jobs/")
            expect(page.locator("#app")).to_be_visible(timeout=20_000)
            expect(page.locator("#who-name")).to_have_text("bob")
            expect(page.locator("#signin")).to_be_hidden()
            page.select_option("#kind", "count")
            page.locator('#kind-fields [data-arg="steps"]').fill("20")
            page.locator('#kind-fields [data-arg="delay"]').fill("0.2")
            with page.expect_response(lambda r: r.url == f"{host.url}/jobs/api/jobs"
                                      and r.request.method == "POST") as info:
                page.click("#submit-button")
            job = info.value.json()
            assert job["owner"] == "bob"
            row = page.locator(f'#job-list li[data-id="{job["id"]}"]')
            expect(row).to_have_attribute("data-state", "running", timeout=20_000)
            expect(row).to_have_attribute("data-state", "completed", timeout=30_000)
            expect(page.locator("#conn")).to_have_attribute("data-transport", "live")
            context.close()
        finally:
            browser.close()
    assert not errors, f"script errors in the page: {errors}"
    assert not outside, f"the page reached outside the host: {outside}"


# --- a Starlette host, in process ---------------------------------------------------------------

def _starlette_host(tmp_path: Path, steps: list[str], resolver: Any) -> tuple[Starlette, Any]:
    (tmp_path / "input").mkdir(exist_ok=True)
    (tmp_path / "jobgate.toml").write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\ninput_dir = "{tmp_path / "input"}"\n'
        f'[storage]\nurl = "sqlite:///{tmp_path / "jobgate.db"}"\n' + EXAMPLE_KINDS)
    settings = load_settings(tmp_path / "jobgate.toml", env={})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        services = jobgate_app.state.services  # jobgate is up before the host's code runs
        steps.append(f"host start, worker {services.worker}")
        yield {"greeting": "hi"}
        steps.append(f"host stop, store open {services.queue.store is not None}")

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"hello": "from the host"})

    app = Starlette(routes=[Route("/hello", hello)], lifespan=lifespan)
    jobgate_app = jobgate.mount(app, settings, prefix="/tools/jobs/", run_worker=False,
                                user_resolver=resolver)
    return app, jobgate_app


async def test_a_starlette_host_keeps_its_lifespan_and_serves_jobgate_api_only(tmp_path):
    steps: list[str] = []

    async def by_header(connection: HTTPConnection) -> tuple[str, bool] | None:
        name = connection.headers.get("x-user")
        return (name, name == "root") if name else None

    app, jobgate_app = _starlette_host(tmp_path, steps, by_header)
    async with app.router.lifespan_context(app) as state:
        assert steps == ["host start, worker None"]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as http:
            assert (await http.get("/hello")).json() == {"hello": "from the host"}
            http.headers["x-user"] = "erin"
            me = await http.get("/tools/jobs/api/me")
            assert me.json() == {"name": "erin", "admin": False}
            job = (await http.post("/tools/jobs/api/jobs", json={"kind": "count"})).json()
            assert job["owner"] == "erin" and job["state"] == "queued"  # no worker here
            other = await http.get(f"/tools/jobs/api/jobs/{job['id']}",
                                   headers={"x-user": "frank"})
            assert other.status_code == 404
            root = await http.get(f"/tools/jobs/api/jobs/{job['id']}",
                                  headers={"x-user": "root"})
            assert root.json()["owner"] == "erin"
            assert (await http.get("/tools/jobs/api/me", headers={"x-user": ""})
                    ).status_code == 401
        assert state == {"greeting": "hi"}
        assert jobgate_app.state.services.worker is None
    assert steps[-1] == "host stop, store open True"


async def test_a_resolver_answering_nonsense_is_the_hosts_bug_not_a_user(tmp_path):
    def wrong(connection: HTTPConnection) -> Any:
        return ("bad name!", False) if connection.headers.get("x-answer") == "tuple" \
            else "alice"

    app, _ = _starlette_host(tmp_path, [], wrong)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as http:
            for answer in ("tuple", "str"):
                r = await http.get("/tools/jobs/api/me", headers={"x-answer": answer})
                assert r.status_code == 500
                assert r.json()["error"]["code"] == "internal"


def test_a_prefix_must_be_a_path(tmp_path):
    settings = load_settings(env={})
    for prefix in ("jobs", "/", "", "/a//b", "/jobs?x"):
        with pytest.raises(ValueError, match="mount prefix"):
            jobgate.mount(Starlette(), settings, prefix=prefix)
