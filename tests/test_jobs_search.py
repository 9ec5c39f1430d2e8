"""`GET /api/jobs?q=` (a search over ids and arguments, server side) and the admins'
`by_owner` and `depth` of `GET /api/queue`, against a real `jobgate serve` on each backend.

Jobs are submitted to run in an hour, so they stay queued and nothing runs; each test
searches for words of its own, so the module's jobs do not meet.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import TEST_KINDS, Backend, Server, running_server, wait_job

KINDS = TEST_KINDS + """
[kinds.echo]
argv = ["echo", "{text}"]
[kinds.echo.args]
text = { type = "string" }
[kinds.flags]
argv = ["true", "{label}"]
[kinds.flags.args]
label = { type = "string" }
loud = { type = "boolean", default = false }
n = { type = "integer", default = 1 }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("search"), KINDS, backend) as srv:
        yield srv


def later() -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()


def word() -> str:
    """A word no other test's job holds."""
    return "w" + uuid.uuid4().hex[:10]


def submit(server: Server, user: str, kind: str, **args: Any) -> dict[str, Any]:
    with server.client(user) as http:
        r = http.post("/api/jobs", json={"kind": kind, "args": args, "run_at": later()})
        assert r.status_code == 201, r.text
        return dict(r.json())


def found(server: Server, user: str, **params: Any) -> list[str]:
    """The ids `GET /api/jobs` lists with `params`, every page of them."""
    ids: list[str] = []
    with server.client(user) as http:
        cursor = None
        while True:
            page = http.get("/api/jobs", params={**params, **({"cursor": cursor} if cursor
                                                                else {})})
            assert page.status_code == 200, page.text
            ids += [j["id"] for j in page.json()["jobs"]]
            cursor = page.json()["next"]
            if cursor is None:
                return ids


def test_q_finds_text_inside_arguments_ignoring_case(server):
    w = word()
    a = submit(server, "bob", "echo", text=f"Hello {w.upper()} world")
    b = submit(server, "bob", "fail", label=f"x-{w}-y")
    submit(server, "bob", "echo", text="something else")
    assert found(server, "bob", q=w) == [b["id"], a["id"]]  # newest first
    assert found(server, "bob", q=f"hello {w}") == [a["id"]]
    assert found(server, "bob", q=w.upper()) == [b["id"], a["id"]]
    assert found(server, "bob", q=word()) == []


def test_q_written_as_the_row_shows_an_argument_finds_it(server):
    w = word()
    failing = submit(server, "carol", "flags", label=w, loud=True)
    passing = submit(server, "carol", "flags", label=w, loud=False)
    counted = submit(server, "carol", "flags", label=w, n=3)
    texted = submit(server, "carol", "echo", text=f"{w} https://example.com/a")
    assert found(server, "carol", q="loud=true") == [failing["id"]]
    # Defaults are arguments too, shown on the row as they are stored.
    assert found(server, "carol", q="LOUD=False") == [counted["id"], passing["id"]]
    assert found(server, "carol", q="n=3") == [counted["id"]]
    assert found(server, "carol", q=f"label={w}") == [counted["id"], passing["id"],
                                                      failing["id"]]
    assert found(server, "carol", q=f"text={w} https://") == [texted["id"]]
    # A string that reads as a number is still found as the string it is.
    number_text = submit(server, "carol", "echo", text="12345")
    assert found(server, "carol", q="text=12345") == [number_text["id"]]
    assert found(server, "carol", q="text=nothing-like-it") == []


def test_q_matches_an_id_by_its_prefix_or_whole_in_any_case(server):
    job = submit(server, "carol", "echo", text=word())
    assert found(server, "carol", q=job["id"]) == [job["id"]]
    assert found(server, "carol", q=job["id"].lower()) == [job["id"]]
    # A prefix long enough to be this job's alone (the first 10 characters are the time).
    assert found(server, "carol", q=job["id"][:24]) == [job["id"]]
    # The middle of an id is not a prefix.
    assert job["id"] not in found(server, "carol", q=job["id"][5:])


def test_percent_underscore_and_backslash_are_taken_literally(server):
    w = word()
    percent = submit(server, "bob", "echo", text=f"{w} 50% off")
    under = submit(server, "bob", "echo", text=f"{w} a_b")
    plain = submit(server, "bob", "echo", text=f"{w} 50x off axb")
    slash = submit(server, "bob", "echo", text=f'{w} C:\\temp "quoted"')
    assert found(server, "bob", q=f"{w} 50% off") == [percent["id"]]
    assert found(server, "bob", q=f"{w} 50%") == [percent["id"]]
    assert found(server, "bob", q=f"{w} a_b") == [under["id"]]
    assert plain["id"] not in found(server, "bob", q="%")
    assert plain["id"] not in found(server, "bob", q="_")
    assert percent["id"] in found(server, "bob", q="%")
    assert found(server, "bob", q="C:\\temp") == [slash["id"]]
    assert found(server, "bob", q='"quoted"') == [slash["id"]]


def test_q_combines_with_kind_state_and_owner_and_pages_with_the_cursor(server):
    w = word()
    echoes = [submit(server, "bob", "echo", text=f"{w} {i}")["id"] for i in range(5)]
    fail = submit(server, "bob", "fail", label=w)["id"]
    carols = submit(server, "carol", "echo", text=w)["id"]
    with server.client("bob") as http:
        assert http.post(f"/api/jobs/{echoes[0]}/cancel").status_code == 200
    assert found(server, "bob", q=w, kind="echo") == echoes[::-1]
    assert found(server, "bob", q=w, kind="fail") == [fail]
    assert found(server, "bob", q=w, state="cancelled") == [echoes[0]]
    assert found(server, "bob", q=w, state="queued", kind="echo") == echoes[:0:-1]
    # Paging: two at a time, the same jobs in the same order.
    assert found(server, "bob", q=w, limit=2) == [fail, *echoes[::-1]]
    # An admin: everyone's, or one owner's.
    assert found(server, "alice", q=w) == [carols, fail, *echoes[::-1]]
    assert found(server, "alice", q=w, owner="carol") == [carols]
    assert found(server, "alice", q=w, owner="bob", kind="fail") == [fail]


def test_a_non_admin_finds_only_their_own_jobs(server):
    w = word()
    carols = submit(server, "carol", "echo", text=w)
    assert found(server, "bob", q=w) == []
    assert found(server, "bob", q=carols["id"]) == []
    assert found(server, "carol", q=w) == [carols["id"]]


def test_q_longer_than_100_characters_is_a_422_and_an_empty_q_lists_everything(server):
    with server.client("bob") as http:
        r = http.get("/api/jobs", params={"q": "x" * 101})
        assert r.status_code == 422
        assert "q" in r.text
        assert http.get("/api/jobs", params={"q": "x" * 100}).status_code == 200
        everything = http.get("/api/jobs", params={"limit": 500}).json()["jobs"]
        assert http.get("/api/jobs", params={"q": "", "limit": 500}).json()["jobs"] == everything


def test_by_owner_counts_queued_and_running_for_admins_only(start_server):
    srv = start_server("[limits]\nmax_running = 2\n")
    with srv.client("bob") as bob, srv.client("carol") as carol, srv.client("alice") as alice:
        assert alice.get("/api/queue").json()["by_owner"] == {}
        running = bob.post("/api/jobs", json={"kind": "sleep", "args": {"seconds": 60}})
        for http in (bob, bob, carol):
            r = http.post("/api/jobs", json={"kind": "noop", "args": {}, "run_at": later()})
            assert r.status_code == 201
        done = carol.post("/api/jobs", json={"kind": "noop", "args": {}}).json()
        wait_job(carol, done["id"], "completed")
        wait_job(bob, running.json()["id"], "running")
        stats = alice.get("/api/queue").json()
        assert stats["by_owner"] == {"bob": {"queued": 2, "running": 1},
                                     "carol": {"queued": 1, "running": 0}}
        assert "by_owner" not in bob.get("/api/queue").json()
        assert bob.post(f"/api/jobs/{running.json()['id']}/cancel").status_code == 200
        assert alice.get("/api/queue").json()["by_owner"] == {
            "bob": {"queued": 2, "running": 0}, "carol": {"queued": 1, "running": 0}}



def test_depth_is_an_admins_and_counts_the_queued_jobs_of_this_slot(server):
    with server.client("alice") as alice, server.client("bob") as bob:
        before = alice.get("/api/queue").json()["depth"]
        assert before["every_s"] == 30 and before["samples"]
        queued_now = alice.get("/api/queue").json()["queued"]
        submit(server, "bob", "echo", text=word())
        depth = alice.get("/api/queue").json()["depth"]
        assert depth["samples"][-1]["queued"] >= queued_now + 1
        assert "depth" not in bob.get("/api/queue").json()


def test_depth_samples_hold_how_long_the_job_due_the_longest_has_waited(start_server):
    # One slot, nothing else running: the first job holds it, the second waits its turn.
    srv = start_server("[limits]\nmax_running = 1\n")
    with srv.client("bob") as bob, srv.client("alice") as alice:
        assert alice.get("/api/queue").json()["depth"]["samples"][-1]["wait_s"] == 0
        first = bob.post("/api/jobs", json={"kind": "sleep", "args": {"seconds": 60}}).json()
        wait_job(bob, first["id"], "running")
        waiting = bob.post("/api/jobs", json={"kind": "noop", "args": {}}).json()
        submitted = dt.datetime.fromisoformat(waiting["run_at"]).timestamp()
        # A delayed job is not waiting for its turn: it does not count.
        bob.post("/api/jobs", json={"kind": "noop", "args": {}, "run_at": later()})

        def read() -> tuple[float, float, float]:
            before = dt.datetime.now(dt.UTC).timestamp()
            wait_s = alice.get("/api/queue").json()["depth"]["samples"][-1]["wait_s"]
            return before, float(wait_s), dt.datetime.now(dt.UTC).timestamp()

        deadline = time.monotonic() + 30
        before, wait_s, after = read()
        while wait_s < 1.0 and time.monotonic() < deadline:  # it grows as the job waits
            before, wait_s, after = read()
        # Rounded to a tenth of a second: the wait as the server read it, between the two.
        assert wait_s >= 1.0
        assert before - submitted - 0.05 <= wait_s <= after - submitted + 0.05
        assert alice.get("/api/jobs/" + waiting["id"]).json()["state"] == "queued"
        assert bob.post(f"/api/jobs/{first['id']}/cancel").status_code == 200
