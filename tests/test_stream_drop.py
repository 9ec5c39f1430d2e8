"""SSE clients too slow to keep up, against a real server on every backend, with raw
sockets that stop reading: the server closes their connections, counts them against
`[streams] max_per_user` until then, resumes them without loss, and its memory stays
bounded by `buffer_kb` (not by what a flood of log lines would pile up per client)."""

from __future__ import annotations

import itertools
import json
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from conftest import TEST_KINDS, Backend, Server, running_server

# Prints `count` lines of `width` characters as fast as it can.
FLOOD = textwrap.dedent(f"""
    [kinds.flood]
    argv = [{json.dumps(sys.executable)}, "-c", '''
    import sys
    line = "x" * int(sys.argv[2])
    for i in range(int(sys.argv[1])):
        print(i, line)
    ''', "{{count}}", "{{width}}"]
    [kinds.flood.args]
    count = {{ type = "integer", min = 1, max = 1000000, default = 2000 }}
    width = {{ type = "integer", min = 1, max = 8000, default = 8000 }}
""")

CAP = 3
CONFIG = f"""
[streams]
keepalive = 1
max_per_user = {CAP}
buffer_kb = 64
[worker]
log_max_lines = 100000
[rate_limits]
submit_per_user = "off"
submit_per_ip = "off"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("drop"), CONFIG + TEST_KINDS + FLOOD,
                        backend) as srv:
        yield srv


def stalled_stream(server: Server, user: str = "bob", last_event_id: int | None = None
                   ) -> socket.socket:
    """An SSE request on a socket with a small receive buffer that, once the response
    headers are in, reads nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
    sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 f"{server.tokens[user]}\r\n{resume}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


def server_sockets(server: Server, ports: set[int]) -> set[int]:
    """Which of the clients' `ports` the server still has a connection with."""
    assert server.proc is not None
    conns = psutil.Process(server.proc.pid).net_connections("tcp")
    return {c.raddr.port for c in conns if c.raddr and c.raddr.port in ports
            and c.status == psutil.CONN_ESTABLISHED}


def submit(server: Server, user: str, **args: int) -> str:
    r = httpx.post(f"{server.url}/api/jobs", json={"kind": "flood", "args": args},
                   headers={"Authorization": f"Bearer {server.tokens[user]}"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def try_stream(server: Server, user: str = "bob") -> int:
    with httpx.stream("GET", f"{server.url}/api/events", timeout=10,
                      headers={"Authorization": f"Bearer {server.tokens[user]}"}) as r:
        return r.status_code


def received(sock: socket.socket) -> bytes:
    """What reached the client before the server ended the connection."""
    data = b""
    sock.settimeout(10)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_dropped_clients_are_closed_and_count_against_the_cap_until_then(server):
    socks = [stalled_stream(server) for _ in range(CAP)]
    ports = {s.getsockname()[1] for s in socks}
    assert server_sockets(server, ports) == ports
    assert try_stream(server) == 429  # the cap is full
    submit(server, "bob")
    deadline = time.monotonic() + 60
    while (still := server_sockets(server, ports)):
        assert time.monotonic() < deadline, f"{len(still)} dropped clients never closed"
        # A stream opens only in place of one the server has really closed.
        if try_stream(server) == 200:
            assert len(server_sockets(server, ports)) < CAP
        time.sleep(0.1)
    for sock in socks:
        sock.close()
    assert try_stream(server) == 200


def dechunked(data: bytes) -> bytes:
    """The body of a chunked HTTP response (its head already read), up to where it stops."""
    body = b""
    while b"\r\n" in data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body += data[:size]
        data = data[size + 2:]
    return body


def events_in(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    """The complete stored events in SSE bytes (a cut-off last frame is not one)."""
    out: list[tuple[int, dict[str, Any]]] = []
    for block in data.split(b"\n\n")[:-1]:
        lines = block.split(b"\n")
        ids = [line[4:] for line in lines if line.startswith(b"id: ")]
        body = [line[6:] for line in lines if line.startswith(b"data: ")]
        if ids and body:
            out.append((int(ids[0]), json.loads(body[0])))
    return out


def test_a_dropped_client_resumes_where_it_was_without_losing_a_line(server):
    sock = stalled_stream(server, "carol")
    port = sock.getsockname()[1]
    job = submit(server, "carol", count=3000)
    deadline = time.monotonic() + 60
    while server_sockets(server, {port}):  # it reads nothing until the server lets go
        assert time.monotonic() < deadline, "the dropped client was never closed"
        time.sleep(0.1)
    got = events_in(dechunked(received(sock)))  # what reached it (a reset may lose some)
    sock.close()
    rest: list[tuple[int, dict[str, Any]]] = []
    # As EventSource does: reconnect from the last id until the job's end has come (with a
    # 64 KB budget, a reader can fall behind the flood again while its replay is sent).
    for _ in range(100):
        last = (rest or got)[-1][0] if rest or got else None
        resume = {"Last-Event-ID": str(last)} if last is not None else {}
        with httpx.stream("GET", f"{server.url}/api/jobs/{job}/events", timeout=30, headers={
                "Authorization": f"Bearer {server.tokens['carol']}", **resume}) as r:
            rest += events_in(r.read())
        if rest and rest[-1][1]["type"] == "job.completed":
            break
    logs = [e for _, e in got + rest if e["type"] == "job.log" and e["job_id"] == job]
    first_lines = [e["first"] for e in logs]
    assert first_lines[0] == 1
    for before, after in itertools.pairwise(logs):
        assert after["first"] == before["first"] + len(before["lines"])  # no gap, no repeat
    assert logs[-1]["first"] + len(logs[-1]["lines"]) - 1 == 3000
    assert rest[-1][1]["type"] == "job.completed"


MEMORY_CONFIG = """
[streams]
max_per_user = 30
[worker]
log_max_lines = 1000000
[rate_limits]
submit_per_user = "off"
submit_per_ip = "off"
"""


def test_memory_with_clients_that_never_read_stays_bounded(tmp_path, backend):
    """Floods of 8 KB log lines (job.log events of several MB), first with one reader
    that keeps up, then again with 18 more clients that never read: those cost the
    server next to nothing on top (they were +100 MB, holding what was sent them)."""
    with running_server(tmp_path, MEMORY_CONFIG + TEST_KINDS + FLOOD, backend) as server:
        assert server.proc is not None
        proc = psutil.Process(server.proc.pid)
        headers = {"Authorization": f"Bearer {server.tokens['bob']}"}

        def floods() -> int:
            """The peak RSS over three floods, each read by one client."""
            peak = [proc.memory_info().rss]
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.02):
                    peak.append(proc.memory_info().rss)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                for _ in range(3):
                    job = submit(server, "bob", count=1200)
                    with httpx.stream("GET", f"{server.url}/api/jobs/{job}/events",
                                      timeout=60, headers=headers) as r:
                        r.read()  # to its end (or to its drop, if this client falls behind)
            finally:
                done.set()
                sampler.join()
            return max(peak)

        before = proc.memory_info().rss
        floods()  # the heap grows to what a flood takes: measured from there, not from start
        one_reader = floods()
        socks = [stalled_stream(server) for _ in range(18)]
        with_stalled = floods()
        for sock in socks:
            sock.close()
        extra_mb = (with_stalled - one_reader) / 1e6
        print(f"server RSS {before / 1e6:.1f} MB; peak {one_reader / 1e6:.1f} MB with one "
              f"reader; {with_stalled / 1e6:.1f} MB with 18 clients that never read too "
              f"(+{extra_mb:.1f} MB)")
        assert extra_mb < 50, f"+{extra_mb:.1f} MB"
