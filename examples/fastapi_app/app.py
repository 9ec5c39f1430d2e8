"""An existing FastAPI app, with users of its own, that runs jobgate inside it at /jobs.

The app signs its users in with a form and keeps who is who in a cookie session (here an
in-memory table; yours would be your database, or Starlette's SessionMiddleware). jobgate
asks `current_user` who each request is, so the app's users are jobgate's owners without a
second login: each sees their own jobs on the dashboard at /jobs/, and the API, its event
streams and the OpenAPI docs (/jobs/docs) are all under /jobs too. A script may still use
a jobgate API token (`jobgate user add` and `jobgate token`): a request the app does not
know falls back to jobgate's own auth.

Run it from this folder: `uvicorn app:app` (or `JOBGATE_CONFIG=other.toml uvicorn app:app`).
"""

from __future__ import annotations

import contextlib
import hmac
import html
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import tasks
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.requests import HTTPConnection

import jobgate

HERE = Path(__file__).parent
log = logging.getLogger("example")

# The app's own users, name → (password, is_admin): stand-ins for your user table.
USERS = {
    "alice": ("alice-password", True),
    "bob": ("bob-password", False),
    "carol": ("carol-password", False),
}
SESSION_COOKIE = "example_session"
_sessions: dict[str, str] = {}  # session id (the cookie) → user name


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's own start-up and shutdown: jobgate's runs around it (the store is open,
    and its worker running, by the time this runs)."""
    app.state.started = True
    log.info("example app started")
    yield
    log.info("example app stopping")


app = FastAPI(title="example app", lifespan=lifespan)


def current_user(connection: HTTPConnection) -> tuple[str, bool] | None:
    """The app's user of this request or stream (from its session cookie), for jobgate."""
    name = _sessions.get(connection.cookies.get(SESSION_COOKIE, ""))
    if name is None:
        return None
    return name, USERS[name][1]


@app.get("/", response_class=HTMLResponse)
async def home(request: Request) -> str:
    user = current_user(request)
    if user is None:
        return """<!doctype html><title>Example app</title>
<h1>Example app</h1>
<form method="post" action="/login">
  <label>User <input name="username" id="username" autocomplete="username"></label>
  <label>Password <input name="password" id="password" type="password"></label>
  <button id="login">Sign in</button>
</form>"""
    return f"""<!doctype html><title>Example app</title>
<h1>Hello, {html.escape(user[0])}</h1>
<p><a id="jobs" href="/jobs/">Your jobs</a> (count, checksum, primes)
 · <a href="/jobs/docs">jobgate's API</a></p>
<form method="post" action="/logout"><button>Sign out</button></form>"""


@app.post("/login")
async def login(username: str = Form(), password: str = Form()) -> RedirectResponse:
    known = USERS.get(username)
    if known is None or not hmac.compare_digest(known[0].encode(), password.encode()):
        return RedirectResponse("/?wrong", status_code=303)
    session = secrets.token_urlsafe(32)
    _sessions[session] = username
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="lax")
    return response


@app.post("/logout")
async def logout(request: Request) -> RedirectResponse:
    _sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@app.get("/hello")
async def hello(request: Request) -> dict[str, object]:
    """One of the app's own routes: it keeps working beside jobgate."""
    user = current_user(request)
    return {"hello": user[0] if user else None,
            "started": getattr(request.app.state, "started", False)}


# The kinds of jobgate.toml, and the two this app declares in code (tasks.py).
settings = tasks.jobs.merge_into(
    jobgate.load_settings(os.environ.get("JOBGATE_CONFIG") or HERE / "jobgate.toml"))
jobgate.mount(app, settings, prefix="/jobs", user_resolver=current_user)
