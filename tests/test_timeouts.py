"""Request timeouts, with raw sockets against a real server (`[server] request_timeout`):
half-sent requests are answered 408 and closed, a slow request that keeps sending its
headers is cut too, while a slow but steady upload and a long event stream are not."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import TEST_KINDS, Backend, Server, running_server

TIMEOUT_S = 1.0
CONFIG = """
[streams]
keepalive = 1
[rate_limits]
submit_per_user = "off"
submit_per_ip = "off"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    # [server] is written by the test Server itself: the timeout comes from the
    # environment the server inherits.
    os.environ["JOBGATE_SERVER_REQUEST_TIMEOUT"] = f'"{TIMEOUT_S}s"'
    try:
        with running_server(tmp_path_factory.mktemp("timeouts"), CONFIG + TEST_KINDS,
                            backend) as srv:
            yield srv
    finally:
        del os.environ["JOBGATE_SERVER_REQUEST_TIMEOUT"]


def raw(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails after 10 s)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_200_half_sent_requests_are_answered_408_and_closed_within_the_timeout(server):
    socks: list[socket.socket] = []
    try:
        for _ in range(200):
            socks.append(raw(server))
        started = time.monotonic()
        for i, sock in enumerate(socks):
            if i % 2:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line: half
            else:
                sock.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 100\r\n\r\n{\"kind\"")  # a body that stops
        answers = [until_closed(sock) for sock in socks]
        elapsed = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    assert elapsed < TIMEOUT_S + 5, elapsed
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers[1::2]), answers[1]
    # ... and a body that stalls ends the request: no job was made from it.
    with server.client("alice") as client:
        assert client.get("/api/jobs").json()["jobs"] == []


def test_a_connection_that_sends_nothing_is_closed(server):
    with raw(server) as sock:
        started = time.monotonic()
        assert until_closed(sock).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < TIMEOUT_S + 5


def test_headers_trickled_byte_by_byte_are_cut_at_the_timeout(server):
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n\r\n"
    with raw(server) as sock:
        started = time.monotonic()
        with pytest.raises(OSError):  # the server closes before the request is whole
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(TIMEOUT_S / 10)
            answer = until_closed(sock)
            assert not answer.startswith(b"HTTP/1.1 200"), answer
            raise OSError("closed")
        assert time.monotonic() - started < TIMEOUT_S * 3


def test_a_slow_upload_that_keeps_going_is_not_cut(server):
    body = b'{"kind": "noop"' + b" " * 20 + b"}"
    head = (f"POST /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{server.tokens['bob']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with raw(server) as sock:
        sock.sendall(head)
        started = time.monotonic()
        for i in range(0, len(body), 6):  # 6 pieces, half the timeout apart: 3 s in all
            time.sleep(TIMEOUT_S / 2)
            sock.sendall(body[i:i + 6])
        assert time.monotonic() - started > 2 * TIMEOUT_S
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]


def test_an_event_stream_lasts_longer_than_the_timeout(server):
    with httpx.stream("GET", f"{server.url}/api/events",
                      headers={"Authorization": f"Bearer {server.tokens['bob']}"},
                      timeout=httpx.Timeout(10)) as r:
        assert r.status_code == 200
        started = time.monotonic()
        keepalives = 0
        for line in r.iter_lines():
            keepalives += line == ": keep-alive"
            if time.monotonic() - started > 3 * TIMEOUT_S and keepalives >= 2:
                break
    assert keepalives >= 2
