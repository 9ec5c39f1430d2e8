"""A deleted user's credentials die with them, against a real server on every backend:
a stream ticket issued before the deletion opens neither SSE nor WebSocket, API tokens and
login JWTs are refused, and the streams the user had open end.

There is no `jobgate user remove` yet: the user's row is deleted from the database the
way such a command (or an operator) would, with its tokens (ON DELETE CASCADE)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import TEST_KINDS, Backend, Server, running_server
from jobgate.auth import hash_password, new_token
from jobgate.config import load_settings
from jobgate.store import store_for_url

CONFIG = """
[streams]
keepalive = 1
[rate_limits]
login_per_user = "off"
login_per_ip = "off"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("revoked"), CONFIG + TEST_KINDS,
                        backend) as srv:
        yield srv


def add_user(server: Server, name: str) -> str:
    """A new user with password NAME-password; returns an API token of theirs."""
    async def add() -> str:
        store = store_for_url(load_settings(server.config, env={}).storage.url)
        await store.open()
        try:
            await store.add_user(name, hash_password(f"{name}-password"), False)
            return await new_token(store, name)
        finally:
            await store.close()

    return asyncio.run(add())


def delete_user(server: Server, name: str) -> None:
    url = load_settings(server.config, env={}).storage.url
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("PRAGMA foreign_keys = ON")
            assert conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 1
        return
    with psycopg.connect(url) as conn:
        assert conn.execute("DELETE FROM users WHERE name = %s", (name,)).rowcount == 1


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ticket(server: Server, token: str) -> str:
    r = httpx.post(f"{server.url}/api/auth/ticket", headers=bearer(token))
    assert r.status_code == 200, r.text
    return str(r.json()["ticket"])


def login(server: Server, name: str) -> str:
    r = httpx.post(f"{server.url}/api/auth/token",
                   json={"username": name, "password": f"{name}-password"}, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def ws_url(server: Server, ticket: str) -> str:
    return server.url.replace("http://", "ws://") + f"/api/ws?ticket={ticket}"


def test_tickets_tokens_and_logins_of_a_deleted_user_are_refused(server):
    token = add_user(server, "dave")
    jwt_token = login(server, "dave")
    tickets = [ticket(server, t) for t in (token, token, jwt_token, jwt_token)]
    delete_user(server, "dave")

    for t in tickets[0::2]:  # one of each kind of login, on SSE
        r = httpx.get(f"{server.url}/api/events", params={"ticket": t})
        assert r.status_code == 401, r.text
        assert "revoked" in r.json()["error"]["message"]

    async def websocket(t: str) -> int:
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url(server, t), open_timeout=10):
                pass
        return info.value.response.status_code

    assert [asyncio.run(websocket(t)) for t in tickets[1::2]] == [401, 401]
    for t in (token, jwt_token):
        r = httpx.get(f"{server.url}/api/me", headers=bearer(t))
        assert r.status_code == 401, r.text
        r = httpx.get(f"{server.url}/api/events", headers=bearer(t))
        assert r.status_code == 401, r.text


def test_open_streams_of_a_deleted_user_end(server):
    token = add_user(server, "erin")
    jwt_token = login(server, "erin")
    with httpx.stream("GET", f"{server.url}/api/events", headers=bearer(token),
                      timeout=httpx.Timeout(20, read=10)) as by_token, \
            httpx.stream("GET", f"{server.url}/api/events",
                         params={"ticket": ticket(server, jwt_token)},
                         timeout=httpx.Timeout(20, read=10)) as by_ticket:
        lines = [by_token.iter_lines(), by_ticket.iter_lines()]
        assert all(next(it).startswith("data: ") for it in lines)  # queue.stats: open

        async def websocket() -> ConnectionClosed:
            async with connect(ws_url(server, ticket(server, token)), open_timeout=10) as ws:
                await ws.send(json.dumps({"subscribe": "jobs"}))
                assert json.loads(await ws.recv())["type"] == "subscribed"
                delete_user(server, "erin")
                deadline = time.monotonic() + 15
                with pytest.raises(ConnectionClosed) as info:
                    while time.monotonic() < deadline:
                        await asyncio.wait_for(ws.recv(), 15)
                return info.value

        closed = asyncio.run(websocket())
        assert closed.rcvd is not None and closed.rcvd.code == 4001
        assert "revoked" in closed.rcvd.reason
        for it in lines:
            rest = list(it)  # ends: the server closes the stream
            assert ": closed: login revoked: the user or token is gone" in rest
