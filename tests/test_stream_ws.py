"""`WS /api/ws` against a real `jobgate serve`, with the `websockets` client: subscriptions,
the same events as SSE, resume, ping/pong, isolation, Origin, tickets, caps, expiry, and a
client too slow to keep up."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import TEST_KINDS, Backend, Server, running_server

CONFIG = """
[limits]
max_running = 4
[streams]
keepalive = 1
max_per_user = 6
[rate_limits]
submit_per_user = "off"
submit_per_ip = "off"
"""

FLOOD = f"""
[kinds.flood]
argv = [{json.dumps(sys.executable)}, "-c", '''
import sys, time
for i in range(int(sys.argv[1])):
    print("x" * 2000)
    if i % 100 == 0:
        sys.stdout.flush()
        time.sleep(0.02)
''', "{{lines}}"]
[kinds.flood.args]
lines = {{ type = "integer", min = 1, max = 100000 }}
"""


ORIGINS = "JOBGATE_SERVER_ALLOWED_ORIGINS"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend
           ) -> Iterator[Server]:
    # [server] is written by the test Server itself: the allowed origin comes from the
    # environment the server inherits, as `JOBGATE_SERVER_ALLOWED_ORIGINS` would in use.
    os.environ[ORIGINS] = '["https://dash.example"]'
    try:
        with running_server(tmp_path_factory.mktemp("ws"), CONFIG + TEST_KINDS,
                            backend) as srv:
            yield srv
    finally:
        del os.environ[ORIGINS]


def ws_url(server: Server, ticket: str | None = None) -> str:
    return server.url.replace("http://", "ws://") + "/api/ws" + (
        f"?ticket={ticket}" if ticket else "")


def open_ws(server: Server, user: str | None = "bob", token: str | None = None,
            **kwargs: Any) -> Any:
    token = token or (server.tokens[user] if user else None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return connect(ws_url(server, kwargs.pop("ticket", None)), additional_headers=headers,
                   open_timeout=10, **kwargs)


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def recv(ws: ClientConnection, timeout_s: float = 10) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    return data


async def recv_until(ws: ClientConnection, until: Callable[[dict[str, Any]], bool],
                     timeout_s: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    out = []
    while True:
        message = await recv(ws, max(0.1, deadline - time.monotonic()))
        out.append(message)
        if until(message):
            return out


def submit(server: Server, user: str, kind: str = "steps", **args: Any) -> str:
    r = httpx.post(f"{server.url}/api/jobs", json={"kind": kind, "args": args},
                   headers={"Authorization": f"Bearer {server.tokens[user]}"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def final(job_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("job_id") == job_id and m["type"] in (
        "job.completed", "job.failed", "job.cancelled")


def of_job(messages: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("job_id") == job_id and m["type"] != "queue.stats"]


def sse_history(server: Server, job_id: str, user: str = "bob") -> list[dict[str, Any]]:
    """The job's kept events as its SSE stream gives them (it replays, then ends)."""
    out = []
    with httpx.stream("GET", f"{server.url}/api/jobs/{job_id}/events", timeout=20,
                      headers={"Authorization": f"Bearer {server.tokens[user]}"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


async def wait_final(server: Server, job_id: str) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(
            headers={"Authorization": f"Bearer {server.tokens['alice']}"}) as http:
        while (await http.get(f"{server.url}/api/jobs/{job_id}")).json()["state"] not in (
                "completed", "failed", "cancelled"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


# --- subscriptions --------------------------------------------------------------------------

async def test_subscribing_to_jobs_gives_the_same_events_as_sse(server):
    async with open_ws(server) as ws:
        await send(ws, {"subscribe": "jobs"})
        assert await recv(ws) == {"type": "subscribed", "subscribe": "jobs"}
        job_id = submit(server, "bob", count=4, delay=0.05)
        got = of_job(await recv_until(ws, final(job_id)), job_id)
    assert [m["type"] for m in got][:2] == ["job.queued", "job.started"]
    assert got == sse_history(server, job_id)
    seqs = [m["seq"] for m in got]
    assert seqs == sorted(set(seqs))


async def test_a_job_subscription_gets_that_job_only_and_unsubscribe_stops_it(server):
    async with open_ws(server) as ws:
        watched = submit(server, "bob", "sleep", seconds=0.3)
        await send(ws, {"subscribe": "job", "id": watched})
        assert await recv(ws) == {"type": "subscribed", "subscribe": "job", "id": watched}
        other = submit(server, "bob", count=1, delay=0)
        got = await recv_until(ws, final(watched))
        assert not of_job(got, other) and of_job(got, watched)
        await send(ws, {"subscribe": "job", "id": other})
        await recv_until(ws, lambda m: m["type"] == "subscribed")
        await send(ws, {"unsubscribe": "job", "id": other})
        assert await recv(ws) == {"type": "unsubscribed", "unsubscribe": "job", "id": other}
        await send(ws, {"ping": 1})
        assert (await recv(ws))["type"] == "pong"
        httpx.post(f"{server.url}/api/jobs/{other}/retry",
                   headers={"Authorization": f"Bearer {server.tokens['bob']}"})
        await wait_final(server, other)
        # Everything the retry made was published before this ping: none of it came.
        await send(ws, {"ping": 2})
        pong = await recv(ws)  # the very next message: no event of `other` came before it
        assert pong["type"] == "pong" and pong["ping"] == 2, pong


async def test_the_queue_subscription_pushes_stats_now_and_on_change(server):
    async with open_ws(server, "alice") as ws:
        await send(ws, {"subscribe": "queue"})
        assert await recv(ws) == {"type": "subscribed", "subscribe": "queue"}
        now = await recv(ws)
        assert now["type"] == "queue.stats" and "queued" in now and "max_running" in now
        submit(server, "bob", "noop")
        changed = await recv_until(ws, lambda m: m["type"] == "queue.stats")
        assert all(m["type"] == "queue.stats" for m in changed)  # no job events: not asked
        await send(ws, {"unsubscribe": "queue"})
        await recv_until(ws, lambda m: m["type"] == "unsubscribed")


async def test_ping_pong_at_both_levels(server):
    async with open_ws(server) as ws:
        await send(ws, {"ping": {"n": 7}})
        pong = await recv(ws)
        assert pong["type"] == "pong" and pong["ping"] == {"n": 7}
        waiter = await ws.ping()
        await asyncio.wait_for(waiter, 5)  # a protocol-level pong


async def test_bad_messages_get_an_error_and_the_connection_stays(server):
    async with open_ws(server) as ws:
        for message in ("not json", "[1, 2]", json.dumps({"subscribe": "everything"}),
                        json.dumps({"subscribe": "job"}), json.dumps({"hello": 1}),
                        json.dumps({"subscribe": "jobs", "resume": -1}),
                        json.dumps({"subscribe": "jobs", "resume": "x"}),
                        json.dumps({"subscribe": "job", "id": "x" * 100}),
                        # A lone surrogate or a NUL in an id, a seq past 64 bits, nesting
                        # deeper than the JSON parser's stack: answered, the socket stays.
                        json.dumps({"subscribe": "job", "id": "\ud800"}),
                        json.dumps({"unsubscribe": "job", "id": "a\udfffb"}),
                        json.dumps({"subscribe": "job", "id": "a\x00b"}),
                        json.dumps({"subscribe": "jobs", "resume": 2**64}),
                        json.dumps({"resume": 2**63}),
                        json.dumps({"subscribe": {"\ud800": "\ud800" * 10_000}}),
                        "[" * 30_000 + "]" * 30_000):
            await ws.send(message)
            reply = await recv(ws)
            assert reply["type"] == "error", (message, reply)
            assert set(reply["error"]) == {"code", "message"} and reply["error"]["message"]
        await send(ws, {"ping": 1})
        assert (await recv(ws))["type"] == "pong"


# --- resume ---------------------------------------------------------------------------------

async def test_resume_after_a_disconnect_in_the_middle_loses_and_repeats_nothing(server):
    async with open_ws(server) as ws:
        await send(ws, {"subscribe": "jobs"})
        await recv(ws)
        job_id = submit(server, "bob", count=12, delay=0.1)
        part1 = of_job(await recv_until(
            ws, lambda m: m["type"] == "job.progress" and m.get("job_id") == job_id), job_id)
    await asyncio.sleep(0.6)  # events happen while nobody listens
    async with open_ws(server) as ws:
        await send(ws, {"subscribe": "jobs", "resume": part1[-1]["seq"]})
        part2 = of_job(await recv_until(ws, final(job_id)), job_id)
    assert part2[0]["seq"] > part1[-1]["seq"]
    assert part1 + part2 == sse_history(server, job_id)


async def test_a_standalone_resume_applies_to_the_subscriptions_that_follow(server):
    job_id = submit(server, "bob", count=3, delay=0)
    await wait_final(server, job_id)
    whole = sse_history(server, job_id)
    async with open_ws(server) as ws:
        await send(ws, {"resume": whole[0]["seq"]})
        await send(ws, {"subscribe": "job", "id": job_id})
        got = await recv_until(ws, final(job_id))
    assert got[0]["type"] == "subscribed"
    assert got[1:] == whole[1:]


async def test_resuming_from_a_seq_this_server_never_had_resets(server):
    async with open_ws(server) as ws:
        await send(ws, {"subscribe": "jobs", "resume": 10**9})
        await recv(ws)
        reset = await recv(ws)
        assert reset["type"] == "stream.reset"


# --- who may connect ------------------------------------------------------------------------

async def test_bob_cannot_subscribe_to_carols_job_nor_see_her_events(server):
    carol_job = submit(server, "carol", count=2, delay=0)
    async with open_ws(server, "bob") as ws:
        await send(ws, {"subscribe": "job", "id": carol_job})
        reply = await recv(ws)
        assert reply["type"] == "error" and reply["error"]["code"] == "not_found"
        await send(ws, {"subscribe": "jobs", "resume": 0})
        await recv_until(ws, lambda m: m["type"] == "subscribed")
        mine = submit(server, "bob", count=1, delay=0)
        other = submit(server, "carol", count=1, delay=0)
        await wait_final(server, other)
        got = await recv_until(ws, final(mine))
        later = submit(server, "bob", count=1, delay=0)
        got += await recv_until(ws, final(later))
    assert not of_job(got, carol_job) and not of_job(got, other)
    assert {m.get("owner") for m in got if m["type"] == "job.queued"} == {"bob"}


@pytest.mark.parametrize("origin", ["https://evil.example", "http://dash.example",
                                    "https://dash.example.evil.org", "null"])
async def test_a_foreign_origin_is_refused(server, origin):
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(server, origin=origin):
            pass
    response = info.value.response
    assert response.status_code == 403
    assert json.loads(response.body)["error"]["code"] == "forbidden_origin"


@pytest.mark.parametrize("origin", ["https://dash.example", None, "same"])
async def test_allowed_and_same_origins_and_non_browsers_connect(server, origin):
    if origin == "same":
        origin = server.url
    async with open_ws(server, origin=origin) as ws:
        await send(ws, {"ping": 1})
        assert (await recv(ws))["type"] == "pong"


def short_jwt(server: Server, user: str, seconds: float) -> str:
    key = (server.folder / "data" / "secrets" / "jwt.key").read_bytes()
    return jwt.encode({"sub": user, "exp": int(time.time() + seconds) + 1}, key, "HS256")


@pytest.mark.parametrize("token", [None, "jg_forged", "made.up.jwt",
                                   jwt.encode({"sub": "bob", "exp": 2**31}, "k" * 32)])
async def test_missing_and_forged_tokens_are_refused_with_401(server, token):
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(server, user=None, token=token):
            pass
    assert info.value.response.status_code == 401


async def test_an_expired_token_is_refused(server):
    key = (server.folder / "data" / "secrets" / "jwt.key").read_bytes()
    token = jwt.encode({"sub": "bob", "exp": int(time.time()) - 5}, key, "HS256")
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(server, user=None, token=token):
            pass
    assert info.value.response.status_code == 401
    assert "expired" in json.loads(info.value.response.body)["error"]["message"]


async def test_a_ticket_opens_one_websocket_once(server):
    ticket = httpx.post(f"{server.url}/api/auth/ticket", headers={
        "Authorization": f"Bearer {server.tokens['bob']}"}).json()["ticket"]
    async with open_ws(server, user=None, ticket=ticket, origin=server.url) as ws:
        await send(ws, {"ping": 1})
        assert (await recv(ws))["type"] == "pong"
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(server, user=None, ticket=ticket):
            pass
    assert info.value.response.status_code == 401


async def test_the_socket_closes_with_4001_when_its_login_expires(server):
    token = short_jwt(server, "bob", 1)
    async with open_ws(server, user=None, token=token) as ws:
        await send(ws, {"subscribe": "jobs"})
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv(ws, 10)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 4001 and "expired" in info.value.rcvd.reason


async def test_websockets_count_toward_the_per_user_cap(server):
    sockets = [await open_ws(server, "carol") for _ in range(6)]
    try:
        with pytest.raises(InvalidStatus) as info:
            async with open_ws(server, "carol"):
                pass
        assert info.value.response.status_code == 429
        assert info.value.response.headers["Retry-After"].isdigit()
        assert json.loads(info.value.response.body)["error"]["code"] == "too_many_streams"
    finally:
        for ws in sockets:
            await ws.close()
    deadline = time.monotonic() + 10
    while True:  # the slots come back once the server has seen them close
        try:
            async with open_ws(server, "carol"):
                break
        except InvalidStatus:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


# --- a client that cannot keep up ------------------------------------------------------------

@pytest.fixture
def small_buffer_server(start_server: Callable[..., Server]) -> Server:
    config = CONFIG.replace("[streams]\n", "[streams]\nbuffer_kb = 64\n")
    return start_server(config + "[worker]\nlog_max_lines = 100000\n",
                        TEST_KINDS + FLOOD)


def raw_websocket(port: int, token: str) -> socket.socket:
    """A WebSocket handshake on a plain socket with a tiny receive window: a client that
    reads nothing until told to (a library client would keep reading in the background)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
                  ).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    return sock


def send_raw_text(sock: socket.socket, text: str) -> None:
    data, mask = text.encode(), os.urandom(4)
    assert len(data) < 126
    sock.sendall(bytes([0x81, 0x80 | len(data)]) + mask +
                 bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def read_raw_frames(sock: socket.socket, quiet_s: float) -> list[tuple[int, bytes]]:
    """(opcode, payload) of every frame until the server closes or is quiet `quiet_s`."""
    sock.settimeout(quiet_s)
    buf = bytearray()
    with contextlib.suppress(TimeoutError):
        while chunk := sock.recv(1 << 20):
            buf += chunk
    frames, i = [], 0
    while i + 2 <= len(buf):
        opcode, n = buf[i] & 0x0F, buf[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = struct.unpack(">H", buf[i:i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack(">Q", buf[i:i + 8])[0], i + 8
        frames.append((opcode, bytes(buf[i:i + n])))
        i += n
    return frames


async def test_a_client_that_cannot_keep_up_is_dropped_with_a_reason(small_buffer_server):
    server = small_buffer_server
    sock = raw_websocket(server.port, server.tokens["bob"])
    try:
        send_raw_text(sock, json.dumps({"subscribe": "jobs"}))
        # ~12 MB of log lines in several events: far more than the socket buffers on the
        # way hold while this client reads nothing, and each event over the 64 KB budget.
        job_id = submit(server, "bob", "flood", lines=6000)
        await wait_final(server, job_id)
        frames = await asyncio.to_thread(read_raw_frames, sock, 5)
    finally:
        sock.close()
    texts = [json.loads(p) for op, p in frames if op == 1]
    assert texts[0]["type"] == "subscribed"
    close = [p for op, p in frames if op == 8]
    assert close, f"no close frame after {len(texts)} messages"
    code, reason = struct.unpack(">H", close[0][:2])[0], close[0][2:].decode()
    assert code == 4008 and reason.startswith("too slow"), (code, reason)
    assert texts[-1]["type"] != "job.completed"  # it was dropped before the end
    # The server is fine and the others' streams go on.
    async with open_ws(server) as ws:
        await send(ws, {"ping": 1})
        assert (await recv(ws))["type"] == "pong"
