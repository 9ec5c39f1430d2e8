"""An API fuzz run against a real `jobgate serve` on each backend: schemathesis over the
server's own `/openapi.json` (valid and invalid requests for every operation, with a real
token and real job ids so that requests reach the routes' logic), then hand-written hostile
requests (NULs, lone surrogates, huge numbers, JSON nested 10,000 deep, wrong content types,
huge and invalid UTF-8 bodies).

Every answer must be below 500, with no connection reset, and every 4xx in the contract's
shape `{"error": {"code": str, "message": str}}`. The size fits the test command; set
`JOBGATE_FUZZ_EXAMPLES` (examples per operation and mode, default 3) for a long run, and
`JOBGATE_FUZZ_REPORT=1` to print the figures (requests made, answers by status).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from conftest import TEST_KINDS, Backend, Server, running_server

EXAMPLES = int(os.environ.get("JOBGATE_FUZZ_EXAMPLES", "3"))
REPORT = bool(os.environ.get("JOBGATE_FUZZ_REPORT"))

# Kinds with one argument of every type, so that fuzzed arguments reach their checks.
FUZZ_KINDS = r"""
[kinds.every]
argv = ["echo", "{text}", "{count}", "{ratio}", "{flag}", "{file}", "{url}"]
[kinds.every.args]
text = { type = "string", default = "x", max_length = 100 }
count = { type = "integer", default = 1 }
ratio = { type = "number", default = 0.5 }
flag = { type = "boolean", default = false }
file = { type = "path", default = "a.txt" }
url = { type = "url", default = "http://93.184.216.34/" }
"""
CONFIG = """
[limits]
max_running = 2
[rate_limits]
submit_per_user = "off"
submit_per_ip = "off"
"""
KINDS = ["noop", "sleep", "steps", "fail", "every"]
# Streams answer for as long as the client listens: only their opening is checked.
STREAMING = ("/api/events", "/api/jobs/{job_id}/events")


@dataclass
class Tally:
    """What the run saw: answers by status, and every answer that breaks the rules."""

    statuses: Counter[int | str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def check(self, what: str, status: int, content_type: str, body: bytes) -> None:
        self.statuses[status] += 1
        problem = answer_problem(status, content_type, body)
        if problem is not None and len(self.problems) < 50:
            self.problems.append(f"{what} -> {status}: {problem}: {body[:300]!r}")

    def reset(self, what: str, exc: BaseException) -> None:
        self.statuses["connection error"] += 1
        if len(self.problems) < 50:
            self.problems.append(f"{what} -> connection error: {exc!r}")


def answer_problem(status: int, content_type: str, body: bytes) -> str | None:
    """Why an answer breaks the rules (a 5xx; a 4xx not in the error shape), or None."""
    if status >= 500:
        return "a server error"
    if not 400 <= status < 500:
        return None
    if not content_type.startswith("application/json"):
        return f"a {status} that is not JSON ({content_type})"
    try:
        data = json.loads(body)
    except ValueError:
        return "a 4xx whose body is not JSON"
    error = data.get("error") if isinstance(data, dict) else None
    if set(data) != {"error"} or not isinstance(error, dict) or \
            not isinstance(error.get("code"), str) or not isinstance(error.get("message"), str):
        return "a 4xx not in the error shape"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "input").mkdir()
    (folder / "input" / "a.txt").write_text("a")
    with running_server(folder, CONFIG + TEST_KINDS + FUZZ_KINDS, backend) as srv:
        yield srv


@pytest.fixture(scope="module")
def tally(backend: Backend) -> Iterator[Tally]:
    seen = Tally()
    yield seen
    if REPORT:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(seen.statuses.items(), key=str))
        print(f"\nfuzz [{backend.name}]: {seen.requests} requests; {statuses}")


@pytest.fixture(scope="module")
def job_ids(server: Server) -> list[str]:
    """Real jobs of bob's, in several states, for the fuzzed paths to name."""
    ids = []
    with server.client("bob") as bob:
        for body in ({"kind": "noop"}, {"kind": "fail", "args": {"code": 1}},
                     {"kind": "steps", "args": {"count": 1, "delay": 0}},
                     {"kind": "sleep", "args": {"seconds": 600},
                      "run_at": "2100-01-01T00:00:00Z"}):
            response = bob.post("/api/jobs", json=body)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    return ids


# --- schemathesis over /openapi.json --------------------------------------------------------

def test_schemathesis_finds_no_server_error_and_every_4xx_is_in_the_error_shape(
        server: Server, job_ids: list[str], tally: Tally) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) >= 15, [op.label for op in operations]
    fuzzed = Counter[str]()
    with requests.Session() as session:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(server, session, operation, mode, job_ids, tally, fuzzed)
    assert not tally.problems, "\n".join(tally.problems)
    # The run reached every operation, and made as many requests as it was asked to.
    assert set(fuzzed) == {op.label for op in operations}
    assert sum(fuzzed.values()) >= len(operations) * EXAMPLES


def _fuzz(server: Server, session: requests.Session, operation: Any, mode: GenerationMode,
          job_ids: list[str], tally: Tally, fuzzed: Counter[str]) -> None:
    """`EXAMPLES` requests schemathesis makes for `operation` (valid ones, or invalid ones),
    each as alice (an admin), bob or carol, naming a real job and kind half the time."""
    tokens = {user: f"Bearer {server.tokens[user]}" for user in ("alice", "bob", "carol")}
    streaming = operation.path in STREAMING

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode),
                      who=st.sampled_from(sorted(tokens)),
                      job=st.sampled_from([*job_ids, None]),
                      kind=st.sampled_from([*KINDS, None]))
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                         phases=[hypothesis.Phase.generate],
                         suppress_health_check=list(hypothesis.HealthCheck))
    def one(case: Any, who: str, job: str | None, kind: str | None) -> None:
        if job is not None and "job_id" in (case.path_parameters or {}):
            case.path_parameters["job_id"] = job
        if kind is not None and isinstance(case.body, dict) and "kind" in case.body:
            case.body["kind"] = kind
        what = f"{operation.label} {case.path_parameters} {case.query} {str(case.body)[:200]}"
        fuzzed[operation.label] += 1
        request = case.as_transport_kwargs(base_url=server.url,
                                           headers={"Authorization": tokens[who]})
        try:
            # Streamed, so that an event stream's opening is read without waiting for its end.
            with session.request(**request, timeout=30, stream=True) as response:
                body = b"" if streaming and response.status_code == 200 else response.content
        except requests.ConnectionError as exc:
            tally.reset(what, exc)
            return
        tally.check(what, response.status_code, response.headers.get("content-type", ""),
                    body)

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        one()  # (unsatisfiable: nothing of this operation can be made invalid in this mode)


# --- hand-written hostile requests ----------------------------------------------------------

NESTED_ARRAYS = b"[" * 10_000 + b"]" * 10_000
NESTED_OBJECTS = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
BIG_DIGITS = b"9" * 5000
JSON_TYPE = "application/json"

# (method, path, content type or None, body or None, extra headers)
HOSTILE: list[tuple[str, str, str | None, bytes | None, dict[str, str]]] = []
for _body in (
    b'{"kind": "every", "args": ' + NESTED_ARRAYS + b"}",
    b'{"kind": "every", "args": {"text": ' + NESTED_OBJECTS + b"}}",
    NESTED_ARRAYS, NESTED_OBJECTS,
    b'{"kind": "every", "args": {"count": ' + BIG_DIGITS + b"}}",
    b'{"kind": "every", "args": {"ratio": 1' + b"0" * 400 + b"}}",
    b'{"kind": "every", "args": {"ratio": 1e400}}',
    b'{"kind": "every", "args": {"ratio": -1e400}}',
    b'{"kind": "every", "args": {"ratio": NaN}}',
    b'{"kind": "every", "args": {"count": Infinity}}',
    b'{"kind": "every", "args": {"count": 18446744073709551616}}',
    b'{"kind": "every", "args": {"count": -9223372036854775809}}',
    b'{"kind": "every", "args": {"count": "\xc2\xb2"}}',
    b'{"kind": "every", "args": {"count": "\xd9\xa1\xd9\xa2"}}',
    b'{"kind": "every", "priority": ' + BIG_DIGITS + b"}",
    b'{"kind": "every", "priority": 9223372036854775808}',
    b'{"kind": "every", "memory_mb": 9223372036854775808}',
    b'{"kind": "every", "memory_mb": -9223372036854775809}',
    b'{"kind": "every", "run_at": 1e400}',
    b'{"kind": "every", "run_at": -1}',
    b'{"kind": "every", "run_at": "99999-01-01T00:00:00"}',
    b'{"kind": "every", "run_at": "2030-01-01T00:00:00\\u0000"}',
    b'{"kind": "every", "args": {"text": "\\ud800"}}',
    b'{"kind": "every", "args": {"text": "a\\udfffb"}}',
    b'{"kind": "every", "args": {"file": "\\ud800"}}',
    b'{"kind": "every", "args": {"file": "' + b"a" * 300 + b'"}}',
    b'{"kind": "every", "args": {"file": "a.txt\\u0000"}}',
    b'{"kind": "every", "args": {"url": "http://127.0.0.1\\\\@8.8.8.8/"}}',
    b'{"kind": "every", "args": {"url": "http://[2002:c0a8:101::1]/"}}',
    b'{"kind": "every", "args": {"url": "http://\\ud800.example/"}}',
    b'{"kind": "every", "args": {"\\ud800": 1}}',
    b'{"kind": "every", "args": {"\\u0000": 1}}',
    b'{"kind": "\\ud800"}',
    b'{"kind": "every\\u0000"}',
    b'{"kind": "every", "unique_key": "a\\u0000b"}',
    b'{"kind": "every", "unique_key": "\\udc00"}',
    b'{"kind": "every", "depends_on": ["\\u0000"]}',
    b'{"kind": "every", "webhook_url": "\\ud800"}',
    b'{"kind": "every", "kind": "noop"}',
    b'{"kind": "every"}\x00',
    b'\xef\xbb\xbf{"kind": "every"}',
    '{"kind": "every"}'.encode("utf-16"),
    b'{"kind": "ev\xffery"}',
    b'{"kind": "every", "args": {"text": "\xed\xa0\x80"}}',
    b"\xff\xfe\xfd", b"", b"null", b"[]", b'"every"', b"0", b"{", b"}",
    b'{"kind": "every"' + b" " * 300_000 + b"}",
):
    for _path in ("/api/jobs", "/api/auth/token", "/api/clean"):
        HOSTILE.append(("POST", _path, JSON_TYPE, _body, {}))
for _type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
              "multipart/form-data; boundary=x", "application/xml", None, "application/json; "
              "charset=utf-16", "application/json; charset=\x7f"):
    HOSTILE.append(("POST", "/api/jobs", _type, b'{"kind": "every"}', {}))
    HOSTILE.append(("POST", "/api/auth/token", _type, b"username=bob&password=x", {}))
for _query in ("kind=%00", "kind=%ed%a0%80", "kind=%ff", "owner=%00", "cursor=%00",
               "state=%00", "limit=%00", "limit=" + "9" * 30, "limit=1e400", "limit=%c2%b2",
               "%00=1", "%ff=%ff", "a=" + "%00" * 1000, "kind=" + "x" * 10_000, "&&&=&=",
               "cursor=" + "%ed%b0%80" * 20):
    for _path in ("/api/jobs", "/api/queue", "/api/kinds", "/health"):
        HOSTILE.append(("GET", f"{_path}?{_query}", None, None, {}))
for _query in ("after=9223372036854775808", "after=-9223372036854775809", "after=%c2%b2",
               "after=1e400", "after=" + "9" * 5000, "limit=9223372036854775808",
               "after=%00", "limit=%d9%a1"):
    HOSTILE.append(("GET", "/api/jobs/{job}/logs?" + _query, None, None, {}))
for _seq in ("\u00b2", "\u0661\u0662", "9" * 30, "-1", "%00", "%ed%a0%80", "1e400"):
    for _path in ("/api/events", "/api/jobs/{job}/events"):
        HOSTILE.append(("GET", f"{_path}?last_event_id={quote(_seq, safe='%')}", None, None,
                        {}))
        HOSTILE.append(("GET", f"{_path}?ticket={quote(_seq, safe='%')}", None, None, {}))
for _header in ("9" * 30, "\xb2", "\xd9\xa1", "1.5", "-1"):
    HOSTILE.append(("GET", "/api/events", None, None, {"Last-Event-ID": _header}))
for _key in ("", "k" * 300, "\xff\xfe", "a\tb"):
    HOSTILE.append(("POST", "/api/jobs", JSON_TYPE, b'{"kind": "noop", "run_at": '
                    b'"2100-01-01T00:00:00Z"}', {"Idempotency-Key": _key}))
for _job in ("%00", "%ff", "%ed%a0%80", "a" * 10_000, "%2e%2e", "..%2f..%2fjobgate.db",
             "{job}%00", "{job}%ed%a0%80"):
    for _method, _suffix in (("GET", ""), ("POST", "/cancel"), ("POST", "/retry"),
                             ("DELETE", ""), ("GET", "/logs"), ("GET", "/outputs/x")):
        HOSTILE.append((_method, f"/api/jobs/{_job}{_suffix}", None, None, {}))
for _name in ("%00", "a%00b", "%ed%a0%80", "%ff", "a" * 5000, "/".join("a" * 2100),
              "..%2f..%2fjobgate.toml", "%2e%2e/%2e%2e/data/secrets"):
    HOSTILE.append(("GET", f"/api/jobs/{{job}}/outputs/{_name}", None, None, {}))
for _method in ("PUT", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "BREW"):
    for _path in ("/api/jobs", "/api/queue", "/api/jobs/{job}", "/nothing"):
        HOSTILE.append((_method, _path, None, None, {}))
for _path in ("/nothing", "/api/nothing", "/api/jobs/x/y/z", "/%00", "/%ff", "/" + "a" * 8000):
    HOSTILE.append(("GET", _path, None, None, {}))


def _send(server: Server, token: str, method: str, path: str, content_type: str | None,
          body: bytes | None, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """One request on a fresh connection, exactly as written (http.client would neither
    escape the path nor encode headers); a reset or a closed connection raises."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        conn.putheader("Authorization", token)
        if content_type is not None:
            conn.putheader("Content-Type", content_type)
        for name, value in headers.items():
            conn.putheader(name, value.encode("latin-1"))
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body or b"")
        response = conn.getresponse()
        streaming = response.status == 200 and \
            response.getheader("content-type", "").startswith("text/event-stream")
        data = b"" if streaming else response.read()
        return response.status, response.getheader("content-type", ""), data
    finally:
        conn.close()


def test_hostile_requests_get_no_server_error_no_reset_and_the_error_shape(
        server: Server, job_ids: list[str], tally: Tally) -> None:
    token = f"Bearer {server.tokens['bob']}"
    before = Counter(tally.statuses)
    for method, path, content_type, body, headers in HOSTILE:
        path = path.replace("{job}", job_ids[0])
        what = f"{method} {path[:120]} {content_type} {(body or b'')[:80]!r} {headers}"
        try:
            status, answered_type, data = _send(server, token, method, path, content_type,
                                                body, headers)
        except (OSError, http.client.HTTPException) as exc:
            tally.reset(what, exc)
            continue
        tally.check(what, status, answered_type, data)
    assert not tally.problems, "\n".join(tally.problems)
    assert (tally.statuses - before).total() == len(HOSTILE)
    # The server is whole afterwards: it lists, and runs a new job to the end.
    with server.client("bob") as bob:
        assert bob.get("/api/jobs").status_code == 200
        job = bob.post("/api/jobs", json={"kind": "noop"}).json()
        with server.client("alice") as alice:
            assert alice.get("/api/jobs", params={"limit": 500}).status_code == 200
        assert job["state"] in ("queued", "running", "completed")


def test_a_half_sent_body_and_a_lying_content_length_are_answered_or_closed_cleanly(
        server: Server, tally: Tally) -> None:
    """A client that says more than it sends gets a 4xx or a closed connection, never a
    5xx; one that sends more than it says is read as it said."""
    for declared, sent in ((100, b'{"kind": "noop"'), (5, b'{"kind": "noop"}')):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         + server.tokens["bob"].encode() + b"\r\nContent-Type: "
                         b"application/json\r\nContent-Length: " + str(declared).encode()
                         + b"\r\n\r\n" + sent)
            if declared > len(sent):
                sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and declared <= len(sent):
                    break
        if answer:
            status = int(answer.split(b" ", 2)[1])
            tally.statuses[status] += 1
            assert status < 500, answer[:300]
