"""Logins against a real `jobgate serve`: JWTs, API tokens, tickets, forged and expired
tokens, and the signing key kept in the data dir."""

from __future__ import annotations

import base64
import json
import stat
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from conftest import TEST_KINDS, Backend, Server, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend
           ) -> Iterator[Server]:
    # Rate limits off here: these tests log in many times; test_ratelimit covers them.
    config = ('[rate_limits]\nlogin_per_user = "off"\nlogin_per_ip = "off"\n'
              "login_free_failures = 1000\n")
    with running_server(tmp_path_factory.mktemp("auth"), config + TEST_KINDS, backend) as srv:
        yield srv


def login(server: Server, username: str, password: str) -> httpx.Response:
    return httpx.post(f"{server.url}/api/auth/token",
                      json={"username": username, "password": password}, timeout=30)


def key_of(server: Server) -> bytes:
    return (server.folder / "data" / "secrets" / "jwt.key").read_bytes()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    error: dict[str, str] = response.json()["error"]
    assert set(error) >= {"code", "message"} and error["message"]
    return error


def test_login_gives_a_jwt_that_works_as_a_bearer_token(server):
    before = time.time()
    r = login(server, "bob", "bob-password")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"token", "token_type", "expires_at", "user"}
    assert body["token_type"] == "bearer"
    assert body["user"] == {"name": "bob", "admin": False}
    expires = dt_parse(body["expires_at"])
    assert before + 12 * 3600 - 5 <= expires <= time.time() + 12 * 3600 + 5  # default 12h
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "HS256"
    claims = jwt.decode(body["token"], key_of(server), algorithms=["HS256"])
    assert claims["sub"] == "bob" and claims["exp"] == int(expires)

    me = httpx.get(f"{server.url}/api/me", headers=bearer(body["token"]))
    assert me.status_code == 200 and me.json() == {"name": "bob", "admin": False}
    job = httpx.post(f"{server.url}/api/jobs", headers=bearer(body["token"]),
                     json={"kind": "noop"})
    assert job.status_code == 201 and job.json()["owner"] == "bob"


def dt_parse(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_an_admin_login_says_so(server):
    body = login(server, "alice", "alice-password").json()
    assert body["user"] == {"name": "alice", "admin": True}
    me = httpx.get(f"{server.url}/api/me", headers=bearer(body["token"])).json()
    assert me == {"name": "alice", "admin": True}


def test_api_tokens_still_work_and_me_names_their_user(server):
    me = httpx.get(f"{server.url}/api/me", headers=bearer(server.tokens["carol"]))
    assert me.status_code == 200 and me.json() == {"name": "carol", "admin": False}


@pytest.mark.parametrize("username,password", [
    ("bob", "wrong-password"),
    ("bob", "alice-password"),
    ("nobody", "bob-password"),
    ("BOB", "bob-password"),
])
def test_bad_credentials_are_401_in_the_error_shape(server, username, password):
    r = httpx.post(f"{server.url}/api/auth/token", timeout=30,
                   content=json.dumps({"username": username, "password": password}),
                   headers={"Content-Type": "application/json"})
    error = assert_error(r, 401)
    assert error["code"] == "unauthorized"
    assert "token" not in r.json()


@pytest.mark.parametrize("body,status", [
    ({"username": "bob"}, 422),
    ({"password": "x"}, 422),
    ({"username": "bob", "password": ""}, 422),
    ({"username": "bob", "password": "x" * 2000}, 422),
    ({"username": "bob", "password": 5}, 422),
    ({"username": "bob", "password": "bob-password", "extra": 1}, 422),
    ("not json", 400),
    ('{"username": "bob", "password": "\\ud800"}', 422),
])
def test_bad_login_input_is_a_4xx_never_a_500(server, body, status):
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(f"{server.url}/api/auth/token", content=content,
                   headers={"Content-Type": "application/json"})
    assert_error(r, status)


def forge(claims: dict[str, Any], key: bytes, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def unsigned(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def test_forged_expired_and_incomplete_tokens_are_refused(server):
    key = key_of(server)
    now = int(time.time())
    good = {"sub": "alice", "exp": now + 600}
    cases = {
        "another key": forge(good, b"k" * 64),
        "alg none": unsigned(good),
        "HS384 with the right key": forge(good, key, "HS384"),
        "no exp": forge({"sub": "alice"}, key),
        "no sub": forge({"exp": now + 600}, key),
        "sub not a string": forge({"sub": 5, "exp": now + 600}, key),
        "a user that does not exist": forge({"sub": "mallory", "exp": now + 600}, key),
        "tampered payload": tamper(forge({"sub": "bob", "exp": now + 600}, key)),
        "garbage": "not.a.jwt",
        "a revoked-looking api token": "jg_" + "x" * 43,
    }
    for what, token in cases.items():
        r = httpx.get(f"{server.url}/api/me", headers=bearer(token))
        assert_error(r, 401)
        assert r.headers.get("www-authenticate") == "Bearer", what
    # The same claims signed properly do work: the refusals above are not an accident.
    assert httpx.get(f"{server.url}/api/me", headers=bearer(forge(good, key))).status_code == 200


def tamper(token: str) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "alice"
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}"


def test_an_expired_token_is_refused_saying_so(server):
    token = forge({"sub": "bob", "exp": int(time.time()) - 1}, key_of(server))
    error = assert_error(httpx.get(f"{server.url}/api/me", headers=bearer(token)), 401)
    assert "expired" in error["message"]


def test_the_signing_key_is_64_random_bytes_readable_by_its_owner_only(server):
    path = server.folder / "data" / "secrets" / "jwt.key"
    assert len(path.read_bytes()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


def test_the_key_survives_a_restart_so_logins_do_too(start_server):
    srv = start_server()
    token = login(srv, "bob", "bob-password").json()["token"]
    key = key_of(srv)
    srv.stop()
    srv.start()
    assert key_of(srv) == key
    assert httpx.get(f"{srv.url}/api/me", headers=bearer(token)).json()["name"] == "bob"


def test_a_fresh_data_dir_gets_its_own_key(server, start_server):
    other = start_server()
    assert key_of(server) != key_of(other)
    token = login(server, "bob", "bob-password").json()["token"]
    assert httpx.get(f"{other.url}/api/me", headers=bearer(token)).status_code == 401


def test_a_ticket_needs_a_token_and_lasts_60_s_at_most(server):
    assert_error(httpx.post(f"{server.url}/api/auth/ticket"), 401)
    r = httpx.post(f"{server.url}/api/auth/ticket", headers=bearer(server.tokens["bob"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"ticket", "expires_in_s"}
    assert body["expires_in_s"] == 60
    assert len(body["ticket"]) >= 32
    other = httpx.post(f"{server.url}/api/auth/ticket",
                       headers=bearer(server.tokens["bob"])).json()["ticket"]
    assert other != body["ticket"]


def test_a_ticket_is_not_a_bearer_token(server):
    ticket = httpx.post(f"{server.url}/api/auth/ticket",
                        headers=bearer(server.tokens["bob"])).json()["ticket"]
    assert_error(httpx.get(f"{server.url}/api/me", headers=bearer(ticket)), 401)


def test_with_auth_disabled_everyone_is_the_anonymous_admin(start_server):
    srv = start_server("[auth]\nenabled = false\n")
    assert httpx.get(f"{srv.url}/api/me").json() == {"name": "admin", "admin": True}
    assert_error(login(srv, "bob", "bob-password"), 400)
