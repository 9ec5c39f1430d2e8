"""Server-Sent Events against a real `jobgate serve`, read with httpx streaming: order and
completeness, resume after a disconnect, reset past the kept window, isolation between
users, tickets, expiry, caps, keep-alives, queue.stats and progress coalescing."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest

from conftest import TEST_KINDS, Backend, Server, running_server
from jobgate.config import load_settings
from jobgate.store import store_for_url

# A job that prints `rate` progress lines a second for `seconds`, then writes how many
# it printed to an output file (the log keeps only the first 10,000 lines).
CHATTY = textwrap.dedent(f"""
    [kinds.chatty]
    argv = [{json.dumps(sys.executable)}, "-c", '''
    import sys, time
    end = time.time() + float(sys.argv[1]); rate = int(sys.argv[2]); n = 0
    while time.time() < end:
        for _ in range(rate // 100):
            n += 1
            print("progress=%d line %d" % (n % 100, n))
        sys.stdout.flush()
        time.sleep(0.01)
    open(sys.argv[3] + "/count.txt", "w").write(str(n))
    ''', "{{seconds}}", "{{rate}}", "{{output_dir}}"]
    progress = 'progress=(?P<percent>[0-9.]+) (?P<message>.*)'
    [kinds.chatty.args]
    seconds = {{ type = "number", min = 0, max = 10, default = 1.5 }}
    rate = {{ type = "integer", min = 100, max = 100000, default = 10000 }}
""")

CONFIG = """
[limits]
max_running = 4
[streams]
keepalive = 1
max_per_user = 6
[auth]
ticket_ttl = "2s"
[rate_limits]
submit_per_user = "off"
submit_per_ip = "off"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend
           ) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("stream"), CONFIG + TEST_KINDS + CHATTY,
                        backend) as srv:
        yield srv


@dataclass
class Frame:
    id: int | None = None
    data: dict[str, Any] | None = None
    comments: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def type(self) -> str | None:
        return self.data["type"] if self.data else None

    @property
    def seq(self) -> int:
        """The `id:` of a stored event (only those are asked for it)."""
        assert self.id is not None, f"frame without an id: {self.lines}"
        return self.id

    @property
    def body(self) -> dict[str, Any]:
        """The frame's JSON data (only frames with data are asked for it)."""
        assert self.data is not None, f"frame without data: {self.lines}"
        return self.data


class Sse:
    """One SSE response read frame by frame (keep-alive comments are frames too)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()
        self.ended = False

    def frame(self) -> Frame | None:
        frame = Frame()
        for line in self._lines:
            if line == "":
                if frame.lines:
                    return frame
                continue
            frame.lines.append(line)
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                frame.comments.append(value)
            elif name == "id":
                frame.id = int(value)
            elif name == "data":
                frame.data = json.loads(value)
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        self.ended = True
        return None

    def next(self) -> Frame:
        """The next frame, which the test knows comes."""
        frame = self.frame()
        assert frame is not None, "the stream ended"
        return frame

    def events(self, until: Callable[[Frame], bool], timeout_s: float = 20) -> list[Frame]:
        """Frames with data up to and including the first that `until` takes."""
        deadline = time.monotonic() + timeout_s
        out: list[Frame] = []
        while time.monotonic() < deadline:
            frame = self.frame()
            if frame is None:
                raise AssertionError(f"stream ended before the awaited frame; got {out}")
            if frame.data is not None:
                out.append(frame)
                if until(frame):
                    return out
        raise AssertionError(f"timed out; got {[f.data for f in out]}")

    def rest(self) -> list[Frame]:
        """Every frame with data until the server ends the stream."""
        out = []
        while (frame := self.frame()) is not None:
            if frame.data is not None:
                out.append(frame)
        return out


class Streams:
    """Opens SSE streams as one user; all closed at the end of the test."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._open: list[Any] = []

    def open(self, path: str = "/api/events", user: str | None = "bob",
             headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
             status: int = 200) -> Sse:
        all_headers = dict(headers or {})
        if user is not None:
            all_headers["Authorization"] = f"Bearer {self.server.tokens[user]}"
        cm = httpx.stream("GET", self.server.url + path, headers=all_headers, params=params,
                          timeout=httpx.Timeout(20, read=10))
        response = cm.__enter__()
        self._open.append(cm)
        assert response.status_code == status, response.read()
        if status == 200:
            assert response.headers["content-type"].startswith("text/event-stream")
        return Sse(response)

    def close(self) -> None:
        for cm in reversed(self._open):
            cm.__exit__(None, None, None)
        self._open.clear()


@pytest.fixture
def streams(server: Server) -> Iterator[Streams]:
    s = Streams(server)
    yield s
    s.close()


def submit(server: Server, user: str, kind: str = "steps", **args: Any) -> str:
    r = httpx.post(f"{server.url}/api/jobs", json={"kind": kind, "args": args},
                   headers={"Authorization": f"Bearer {server.tokens[user]}"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def of_job(frames: list[Frame], job_id: str) -> list[Frame]:
    return [f for f in frames if f.data and f.data.get("job_id") == job_id
            and f.type != "queue.stats"]


def final(job_id: str) -> Callable[[Frame], bool]:
    return lambda f: bool(f.data and f.data.get("job_id") == job_id and f.type in (
        "job.completed", "job.failed", "job.cancelled"))


def full_history(streams: Streams, job_id: str, user: str = "bob") -> list[Frame]:
    """The job's kept events, from its own stream (which replays them and ends)."""
    return streams.open(f"/api/jobs/{job_id}/events", user=user).rest()


# --- order and completeness ---------------------------------------------------------------

def test_a_jobs_stream_has_every_event_in_order_and_ends_after_the_final_one(
        server, streams):
    live = streams.open()
    job_id = submit(server, "bob", count=5, delay=0.05)
    own = streams.open(f"/api/jobs/{job_id}/events").rest()  # ends by itself
    types = [f.type for f in own]
    assert types[0] == "job.queued" and types[1] == "job.started"
    assert types[-1] == "job.completed"
    assert set(types[2:-1]) <= {"job.progress", "job.log"} and "job.progress" in types
    seqs = [f.id for f in own]
    assert seqs == sorted(set(seqs)), "seq strictly increasing"
    for f in own:
        assert f.data["seq"] == f.id and f.data["job_id"] == job_id
        assert set(f.data) >= {"type", "seq", "ts", "job_id"}
        assert not any(line.startswith("event:") for line in f.lines)
    logged = [line for f in own if f.type == "job.log" for line in f.data["lines"]]
    assert logged == [f"progress={i * 20} step {i}" for i in range(1, 6)]
    assert [f.data["progress"] for f in own if f.type == "job.progress"][-1] == 100
    # The live stream saw exactly the same events, no more and no fewer.
    seen = of_job(live.events(final(job_id)), job_id)
    assert [(f.id, f.data) for f in seen] == [(f.id, f.data) for f in own]
    # The REST log agrees with the events.
    lines = httpx.get(f"{server.url}/api/jobs/{job_id}/logs",
                      headers={"Authorization": f"Bearer {server.tokens['bob']}"}).json()
    assert [x["line"] for x in lines["lines"]] == logged


def test_events_of_a_failed_job_end_its_stream_with_job_failed(server, streams):
    job_id = submit(server, "bob", "fail", code=9, label="once")
    frames = streams.open(f"/api/jobs/{job_id}/events").rest()
    types = [f.type for f in frames]
    assert types.count("job.retrying") == 2  # max_attempts = 3
    assert types[-1] == "job.failed" and "boom once" in frames[-1].data["error"]


def test_a_finished_job_with_nothing_new_answers_204_so_eventsource_stops(server, streams):
    job_id = submit(server, "bob", count=1, delay=0)
    frames = full_history(streams, job_id)
    last = frames[-1].id
    streams.open(f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": str(last)},
                 status=204)
    # From the seq before its final event, just that event, then the end.
    tail = streams.open(f"/api/jobs/{job_id}/events",
                        headers={"Last-Event-ID": str(frames[-2].id)}).rest()
    assert [f.id for f in tail] == [last]


# --- resume -------------------------------------------------------------------------------

def test_resume_after_a_disconnect_in_the_middle_loses_and_repeats_nothing(server, streams):
    first = streams.open()
    job_id = submit(server, "bob", count=12, delay=0.1)
    part1 = of_job(first.events(lambda f: f.type == "job.progress"
                                and f.data.get("job_id") == job_id), job_id)
    streams.close()  # the client goes away in the middle of the job
    time.sleep(0.6)  # events happen while nobody listens
    second = streams.open(headers={"Last-Event-ID": str(part1[-1].id)})
    part2 = of_job(second.events(final(job_id)), job_id)
    assert part2 and part2[0].seq > part1[-1].seq
    whole = full_history(streams, job_id)
    assert [f.id for f in part1 + part2] == [f.id for f in whole]
    assert [f.data for f in part1 + part2] == [f.data for f in whole]


def test_resume_by_query_parameter_for_a_new_eventsource(server, streams):
    job_id = submit(server, "bob", count=2, delay=0)
    whole = full_history(streams, job_id)
    resumed = streams.open(params={"last_event_id": str(whole[0].id)})
    got = of_job(resumed.events(final(job_id)), job_id)
    assert [f.id for f in got] == [f.id for f in whole[1:]]


def prune(server: Server, before_seq: int) -> None:
    """What the retention loop does to events older than the window, up to `before_seq`."""

    async def run() -> None:
        settings = load_settings(server.config, env={})
        store = store_for_url(settings.storage.url)
        await store.open()
        try:
            events = await store.events_after(before_seq - 1, 1)
            await store.prune_events(events[0].ts if events else time.time())
        finally:
            await store.close()

    asyncio.run(run())


def test_resuming_from_before_the_kept_window_tells_the_client_to_reload(start_server):
    srv = start_server(CONFIG)
    streams = Streams(srv)
    try:
        old = submit(srv, "bob", count=1, delay=0)
        old_events = full_history(streams, old)
        time.sleep(0.05)
        new = submit(srv, "bob", count=1, delay=0)
        new_events = full_history(streams, new)
        prune(srv, new_events[0].seq)
        # Exactly at the edge: nothing was lost, so no reset.
        ok = streams.open(headers={"Last-Event-ID": str(new_events[0].seq - 1)})
        got = of_job(ok.events(final(new)), new)
        assert [f.id for f in got] == [f.id for f in new_events]
        # Before it: the events in between are gone, so the client must reload.
        for point in (old_events[0].seq, 0 if old_events[0].seq > 1 else None):
            if point is None:
                continue
            s = streams.open(headers={"Last-Event-ID": str(point)})
            first = s.frame()
            assert first is not None and first.data == {"type": "stream.reset",
                                                        "seq": new_events[-1].id}
            assert first.id == new_events[-1].id
            # Then live events go on.
            later = submit(srv, "bob", count=1, delay=0)
            assert of_job(s.events(final(later)), later)[0].type == "job.queued"
        # A seq this database never reached (another or a re-created database): reset too.
        s = streams.open(headers={"Last-Event-ID": "999999"})
        assert s.next().body["type"] == "stream.reset"
    finally:
        streams.close()


def test_a_bad_last_event_id_is_a_400(server, streams):
    auth = {"Authorization": f"Bearer {server.tokens['bob']}"}
    for value in (b"abc", b"-5", b"1.5", b"9" * 30, "\u00b2".encode(), "\u0661\u0662".encode(),
                  b"1\xff"):
        headers = {b"Authorization": auth["Authorization"].encode(), b"Last-Event-ID": value}
        r = httpx.get(f"{server.url}/api/events", headers=headers)
        assert r.status_code == 400, (value, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
    # The query parameter a browser uses: "²" passes isdigit() but not int(); "١٢" passes
    # both (as 12) and is no event seq either.
    for text in ("\u00b2", "\u0661\u0662", "\uff11", "\U0001d7e3"):
        for path in ("/api/events", "/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/events"):
            r = httpx.get(f"{server.url}{path}", params={"last_event_id": text}, headers=auth)
            assert r.status_code == 400, (text, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
            assert "Last-Event-ID" in r.json()["error"]["message"]


# --- isolation ----------------------------------------------------------------------------

def test_bob_never_sees_carols_events_and_the_admin_sees_both(server, streams):
    bob = streams.open(user="bob")
    carol = streams.open(user="carol")
    alice = streams.open(user="alice")
    carol_job = submit(server, "carol", count=2, delay=0)
    bob_job = submit(server, "bob", count=2, delay=0)
    carol_frames = carol.events(final(carol_job))
    # A later job of bob's ends after all of carol's events: bob's stream has passed them.
    bob_frames = bob.events(final(bob_job))
    later = submit(server, "bob", count=1, delay=0)
    bob_frames += bob.events(final(later))
    assert of_job(bob_frames, bob_job) and of_job(bob_frames, later)
    assert not of_job(bob_frames, carol_job)
    assert {f.data.get("owner") for f in bob_frames if f.type in ("job.queued", "job.started")
            } == {"bob"}
    assert not of_job(carol_frames, bob_job)
    seen: set[str] = set()

    def both(f: Frame) -> bool:
        if final(carol_job)(f) or final(later)(f):
            seen.add(f.body["job_id"])
        return len(seen) == 2

    alice_frames = alice.events(both)
    assert of_job(alice_frames, carol_job) and of_job(alice_frames, bob_job)
    # Bob cannot open carol's job stream, nor read her events by replaying from the start.
    r = httpx.get(f"{server.url}/api/jobs/{carol_job}/events",
                  headers={"Authorization": f"Bearer {server.tokens['bob']}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    replay = streams.open(user="bob", headers={"Last-Event-ID": "0"})
    replayed = replay.events(final(later))
    assert of_job(replayed, bob_job) and not of_job(replayed, carol_job)


# --- tickets, tokens and caps ---------------------------------------------------------------

def ticket_for(server: Server, token: str) -> str:
    r = httpx.post(f"{server.url}/api/auth/ticket", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return str(r.json()["ticket"])


def test_a_ticket_opens_one_stream_once(server, streams):
    ticket = ticket_for(server, server.tokens["bob"])
    s = streams.open(user=None, params={"ticket": ticket})
    assert s.frame().data["type"] == "queue.stats"
    again = httpx.get(f"{server.url}/api/events", params={"ticket": ticket})
    assert again.status_code == 401 and "ticket" in again.json()["error"]["message"]
    job = submit(server, "bob", count=1, delay=0)
    ticket = ticket_for(server, server.tokens["bob"])
    frames = streams.open(f"/api/jobs/{job}/events", user=None, params={"ticket": ticket}).rest()
    assert frames[-1].type == "job.completed"


def test_an_expired_ticket_is_refused(server):
    ticket = ticket_for(server, server.tokens["bob"])
    time.sleep(2.2)  # ticket_ttl is 2 s on this server
    r = httpx.get(f"{server.url}/api/events", params={"ticket": ticket})
    assert r.status_code == 401


def short_jwt(server: Server, user: str, seconds: float) -> str:
    key = (server.folder / "data" / "secrets" / "jwt.key").read_bytes()
    return jwt.encode({"sub": user, "exp": int(time.time() + seconds) + 1}, key, "HS256")


def test_a_stream_ends_when_its_login_expires(server, streams):
    token = short_jwt(server, "bob", 1)
    by_ticket = streams.open(user=None, params={"ticket": ticket_for(server, token)})
    by_header = streams.open(user=None, headers={"Authorization": f"Bearer {token}"})
    for s in (by_ticket, by_header):
        comments = []
        while (frame := s.frame()) is not None:
            comments += frame.comments
        assert "closed: token expired" in comments
    r = httpx.get(f"{server.url}/api/events", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


@pytest.mark.parametrize("headers,params", [
    ({}, {}),
    ({"Authorization": "Bearer jg_forged"}, {}),
    ({"Authorization": "Bearer " + jwt.encode({"sub": "bob", "exp": 2**31}, "x" * 32)}, {}),
    ({}, {"ticket": "made-up"}),
])
def test_streams_refuse_missing_and_forged_credentials(server, headers, params):
    for path in ("/api/events", "/api/jobs/01ABC/events"):
        r = httpx.get(server.url + path, headers=headers, params=params)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"


def test_open_streams_per_user_are_capped_with_429_until_one_closes(server, streams):
    opened = [streams.open(user="carol") for _ in range(6)]
    r = httpx.get(f"{server.url}/api/events",
                  headers={"Authorization": f"Bearer {server.tokens['carol']}"})
    assert r.status_code == 429 and r.headers["retry-after"].isdigit()
    assert r.json()["error"]["code"] == "too_many_streams"
    # Other users are not affected.
    streams.open(user="bob").frame()
    del opened
    streams.close()
    deadline = time.monotonic() + 10
    while True:  # the server notices the closed connections
        with httpx.stream("GET", f"{server.url}/api/events", headers={
                "Authorization": f"Bearer {server.tokens['carol']}"}) as r:
            if r.status_code == 200:
                break
        assert time.monotonic() < deadline, "the cap was never released"
        time.sleep(0.1)


# --- keep-alive, queue.stats, coalescing, shutdown -------------------------------------------

def test_idle_streams_get_keep_alive_comments(server, streams):
    s = streams.open()
    comments: list[str] = []
    while len(comments) < 2:  # keepalive is 1 s on this server
        frame = s.frame()
        assert frame is not None
        comments += frame.comments
    assert comments[:2] == ["keep-alive", "keep-alive"]


def test_queue_stats_come_without_an_id_when_the_queue_changes_at_most_every_500_ms(
        server, streams):
    s = streams.open(user="alice")
    first = s.frame()
    assert first.data["type"] == "queue.stats" and first.id is None
    flood_until = time.monotonic() + 2
    flooded = threading.Event()

    def flood() -> None:  # the queue changes many times a second, for 2 s and 25 jobs
        submitted = 0
        while time.monotonic() < flood_until or submitted < 25:
            submit(server, "alice", "noop")
            submitted += 1
        flooded.set()

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        frames = s.events(lambda f: flooded.is_set(), timeout_s=60)
    finally:
        thread.join()
    stats = [f for f in frames if f.type == "queue.stats"]
    assert len(frames) - len(stats) > 20  # many job events…
    assert len(stats) >= 2  # …and a few stats
    keys = {"queued", "running", "max_running", "completed", "failed", "cancelled",
            "memory_reserved_mb", "memory_budget_mb", "throughput_per_min", "avg_duration_s",
            "success_rate", "type", "seq", "ts", "nodes",
            "node_memory_budget_mb", "memory_available_mb", "pressure", "running_rss_mb",
            "running_peak_mb", "waiting", "paused", "paused_kinds", "drained_nodes"}
    for f in stats:
        # An admin's frames also carry `by_owner` (from the first read after the stream
        # opened: the frame it opened with may be older).
        assert f.id is None and set(f.data) - {"by_owner"} == keys
        assert len(f.data["nodes"]) == 1 and isinstance(f.data["nodes"][0], str)  # names only
    assert isinstance(stats[-1].data["by_owner"], dict)
    assert stats[-1].data["completed"] > first.data["completed"]
    times = [dt(f.data["ts"]) for f in stats]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.45, gaps


def test_an_admins_queue_stats_carry_by_owner_and_no_one_elses_do(server, streams):
    admin, bob = streams.open(user="alice"), streams.open(user="bob")
    assert admin.frame().data["type"] == bob.frame().data["type"] == "queue.stats"
    job = submit(server, "carol", "sleep", seconds=30)
    try:
        seen = admin.events(lambda f: f.type == "queue.stats"
                            and "carol" in f.data.get("by_owner", {}), timeout_s=30)
        assert seen[-1].data["by_owner"]["carol"]["queued"] + \
            seen[-1].data["by_owner"]["carol"]["running"] >= 1
        theirs = bob.events(lambda f: f.type == "queue.stats", timeout_s=30)
        assert all("by_owner" not in f.data for f in theirs if f.type == "queue.stats")
    finally:
        httpx.post(f"{server.url}/api/jobs/{job}/cancel",
                   headers={"Authorization": f"Bearer {server.tokens['carol']}"})


def dt(text: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_queued_jobs_stream_shows_its_position(start_server):
    srv = start_server(CONFIG.replace("max_running = 4", "max_running = 1"))
    streams = Streams(srv)
    try:
        blocker = submit(srv, "bob", "sleep", seconds=30)
        waiting = submit(srv, "bob", "sleep", seconds=0)
        s = streams.open(f"/api/jobs/{waiting}/events")
        frames = s.events(lambda f: f.type == "queue.stats")
        assert frames[-1].body["position"] == 1 and frames[-1].body["job_id"] == waiting
        httpx.post(f"{srv.url}/api/jobs/{blocker}/cancel",
                   headers={"Authorization": f"Bearer {srv.tokens['bob']}"})
        rest = s.rest()
        assert rest[-1].type == "job.completed"
    finally:
        streams.close()


def test_a_job_printing_10000_progress_lines_a_second_makes_a_handful_of_events(
        server, streams):
    job_id = submit(server, "bob", "chatty", seconds=1.5, rate=10000)
    frames = streams.open(f"/api/jobs/{job_id}/events").rest()
    assert frames[-1].type == "job.completed"
    count = httpx.get(f"{server.url}/api/jobs/{job_id}/outputs/count.txt",
                      headers={"Authorization": f"Bearer {server.tokens['bob']}"}).text
    printed = int(count)
    assert printed >= 2000, f"the job printed only {printed} lines"
    progress = [f for f in frames if f.type == "job.progress"]
    # The worker writes a job's progress at most every 0.25 s: ~6 in 1.5 s, not thousands.
    assert 1 <= len(progress) <= 15, len(progress)
    assert len(frames) <= 40, len(frames)
    # Coalescing keeps the latest value: the last event is the last line printed.
    assert progress[-1].data["message"] == f"line {printed}"


def test_stopping_the_server_ends_open_streams_at_once(start_server):
    srv = start_server(CONFIG)
    streams = Streams(srv)
    try:
        s = streams.open()
        assert s.frame() is not None
        proc = srv.proc
        srv.stop()
        assert proc is not None and proc.returncode in (0, -15)  # not killed at 15 s
        comments = []
        while (frame := s.frame()) is not None:
            comments += frame.comments
        assert "closed: server shutting down" in comments
    finally:
        streams.close()


def test_after_a_restart_resume_still_knows_where_the_events_end(start_server):
    srv = start_server(CONFIG)
    streams = Streams(srv)
    try:
        jobs = [submit(srv, "bob", count=2, delay=0) for _ in range(3)]
        events = [f for job in jobs for f in full_history(streams, job)]
        streams.close()
        srv.stop()
        srv.start()
        last = max(f.seq for f in events)
        middle = sorted(f.seq for f in events)[len(events) // 2]
        s = streams.open(headers={"Last-Event-ID": str(middle)})
        replayed = s.events(lambda f: f.id == last)
        assert [f.id for f in replayed if f.id] == [
            f.seq for f in sorted(events, key=lambda f: f.seq) if f.seq > middle]
        up_to_date = streams.open(headers={"Last-Event-ID": str(last)})
        assert up_to_date.next().body["type"] == "queue.stats"  # nothing missed, no reset
        ahead = streams.open(headers={"Last-Event-ID": str(last + 1)})
        assert ahead.next().body["type"] == "stream.reset"
    finally:
        streams.close()
