"""The public Python client (`jobgate.Client`, `jobgate.AsyncClient`) against a real
`jobgate serve` on each backend: every verb, typed answers and errors, waiting, and the
event stream resumed across a server restart without loss or duplicates."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import jobgate
from conftest import TEST_KINDS, Backend, Server, free_port, running_server
from jobgate import (
    AsyncClient,
    Client,
    Forbidden,
    InvalidRequest,
    JobInfo,
    RateLimited,
    RemoteConflict,
    RemoteNotFound,
    RemoteQueueFull,
    State,
    Unauthorized,
    Unavailable,
)

KINDS = r"""
[uploads]
max_file_mb = 2
[kinds.report]
argv = ["sh", "-c", "printf '%s\n' \"$0\" > \"$1/report.txt\"", "{text}", "{output_dir}"]
[kinds.report.args]
text = { type = "string", default = "hello" }
[kinds.checksum]
argv = ["sha256sum", "{file}"]
[kinds.checksum.args]
file = { type = "path" }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("sdk"),
                        "[limits]\nmax_running = 3\n" + TEST_KINDS + KINDS, backend) as srv:
        yield srv


@pytest.fixture
def connect(server: Server) -> Iterator[Callable[[str], Client]]:
    clients: list[Client] = []

    def make(user: str) -> Client:
        clients.append(Client(server.url, token=server.tokens[user]))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def test_submit_get_list_logs_and_the_verbs(connect: Callable[[str], Client]) -> None:
    bob = connect("bob")
    job = bob.submit("steps", {"count": 3, "delay": 0}, priority=0)
    assert isinstance(job, JobInfo) and job.kind == "steps" and job.owner == "bob"
    assert isinstance(job.state, State)
    done = bob.wait(job.id, timeout_s=60)
    assert done.state is State.COMPLETED and done.progress == 100 and done.finished_at
    assert bob.get(job.id).id == job.id
    assert [line for _, line in bob.logs(job.id)][-1].startswith("progress=100")
    assert bob.logs(job.id, after=len(bob.logs(job.id))) == []

    more = [bob.submit("noop").id for _ in range(3)]
    page = bob.list(kind="noop", limit=2)
    assert len(page.jobs) == 2 and page.next is not None
    everything = [j.id for j in bob.iter_jobs(kind="noop", limit=2)]
    assert set(more) <= set(everything) and len(everything) == len(set(everything))
    assert all(j.kind == "noop" for j in bob.iter_jobs(kind="noop"))

    slow = bob.submit("sleep", {"seconds": 60})
    cancelled = bob.cancel(slow.id)
    assert cancelled.state is State.CANCELLED
    with pytest.raises(RemoteConflict) as conflict:
        bob.cancel(slow.id)
    assert conflict.value.status == 409 and conflict.value.code == "illegal_state"
    again = bob.retry(slow.id)
    assert again.state is State.QUEUED or again.state is State.RUNNING
    with pytest.raises(RemoteConflict):
        bob.delete(slow.id)  # not finished
    bob.cancel(slow.id)
    bob.delete(slow.id)
    with pytest.raises(RemoteNotFound) as gone:
        bob.get(slow.id)
    assert isinstance(gone.value, jobgate.NotFound), "the embedded queue's `except` too"
    assert bob.queue()["max_running"] == 3


def test_an_idempotency_key_returns_the_first_job(connect: Callable[[str], Client]) -> None:
    bob = connect("bob")
    first = bob.submit("noop", idempotency_key="sdk-once")
    assert bob.submit("noop", idempotency_key="sdk-once").id == first.id
    assert bob.submit("noop", idempotency_key="sdk-twice").id != first.id


def test_refusals_are_typed(server: Server, connect: Callable[[str], Client]) -> None:
    bob, carol = connect("bob"), connect("carol")
    job = bob.submit("noop")
    with pytest.raises(RemoteNotFound, match="no job"):
        carol.get(job.id)  # someone else's job is none of carol's
    with pytest.raises(RemoteNotFound):
        carol.cancel(job.id)
    with pytest.raises(Forbidden) as forbidden:
        carol.list(owner="bob")
    assert forbidden.value.code == "forbidden"
    with pytest.raises(Forbidden):
        carol.submit("noop", priority=50)
    with pytest.raises(InvalidRequest) as invalid:
        bob.submit("steps", {"count": "many"})
    assert invalid.value.status == 422 and invalid.value.field == "count"
    with pytest.raises(InvalidRequest, match="unknown kind"):
        bob.submit("nothing")
    with Client(server.url, token="not-a-token") as stranger, \
            pytest.raises(Unauthorized) as unauthorized:
        stranger.get(job.id)
    assert unauthorized.value.status == 401
    with Client(f"http://127.0.0.1:{free_port()}") as nowhere, \
            pytest.raises(Unavailable) as unavailable:
        nowhere.queue()
    assert unavailable.value.status == 0


def test_upload_and_download(connect: Callable[[str], Client], tmp_path: Path) -> None:
    bob = connect("bob")
    source = tmp_path / "film.mkv"
    source.write_bytes(b"frames " * 10_000)
    up = bob.upload(source)
    assert up["size"] == source.stat().st_size and up["name"] == "film.mkv"
    checked = bob.wait(bob.submit("checksum", {"file": up["ref"]}).id, timeout_s=60)
    assert checked.state is State.COMPLETED
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert any(digest in line for _, line in bob.logs(checked.id))

    report = bob.wait(bob.submit("report", {"text": "from the sdk"}).id, timeout_s=60)
    assert [o["name"] for o in report.outputs] == ["report.txt"]
    dest = bob.download(report.id, "report.txt", tmp_path / "report.txt")
    assert dest.read_text() == "from the sdk\n"
    with pytest.raises(RemoteNotFound):
        bob.download(report.id, "missing.txt", tmp_path / "missing.txt")
    assert not (tmp_path / "missing.txt").exists()
    assert not list(tmp_path.glob("*.part"))


def test_wait_times_out_on_a_job_still_running(connect: Callable[[str], Client]) -> None:
    bob = connect("bob")
    slow = bob.submit("sleep", {"seconds": 60})
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        bob.wait(slow.id, timeout_s=1.5)
    assert time.monotonic() - started < 10
    bob.cancel(slow.id)
    assert bob.wait(slow.id, timeout_s=30).state is State.CANCELLED


def test_a_full_queue_says_when_to_try_again(
        start_server: Callable[..., Server]) -> None:
    server = start_server("[limits]\nmax_queued = 1\n", args=("--no-worker",))
    with Client(server.url, token=server.tokens["bob"]) as bob:
        bob.submit("noop")
        with pytest.raises(RemoteQueueFull) as full:
            bob.submit("noop")
    assert full.value.status == 429 and full.value.code == "queue_full"
    assert full.value.retry_after_s is not None and full.value.retry_after_s > 0
    assert isinstance(full.value, RateLimited) and isinstance(full.value, jobgate.QueueFull)


def test_events_resume_across_a_server_restart(
        start_server: Callable[..., Server]) -> None:
    """A job emits progress over a few seconds; the server is restarted (same port, same
    database) while the client reads its events: the client's seqs are exactly the stored
    events' seqs (none lost, none twice, in order), up to the final one."""
    server = start_server()
    with Client(server.url, token=server.tokens["bob"], reconnect_for_s=120) as bob:
        job = bob.submit("steps", {"count": 12, "delay": 0.5})
        seen: list[jobgate.StreamEvent] = []
        restarted_at = None
        for event in bob.follow(job.id):
            seen.append(event)
            progress = [e for e in seen if e.type == "job.progress"]
            if restarted_at is None and len(progress) >= 2:
                server.stop()
                server.start()
                restarted_at = len(seen)
        assert restarted_at is not None, f"no progress before the end: {seen}"
        assert seen[-1].final, "the job's final event ends it"
        assert len(seen) > restarted_at, "events came after the restart"
        seqs = [e.seq for e in seen if e.seq is not None]
        assert seqs == sorted(set(seqs)), f"strictly increasing: {seqs}"
        stored = [e.seq for e in bob.events(job.id) if e.seq is not None]
        assert seqs == stored, "no gap, no duplicate versus the stored events"
        assert bob.get(job.id).done


async def test_the_async_client(server: Server, tmp_path: Path) -> None:
    async with AsyncClient(server.url, token=server.tokens["bob"]) as bob:
        job = await bob.submit("steps", {"count": 3, "delay": 0.1},
                               idempotency_key="async-once")
        assert (await bob.submit("steps", idempotency_key="async-once")).id == job.id
        done = await bob.wait(job.id, timeout_s=60)
        assert done.state is State.COMPLETED
        types = [e.type async for e in bob.events(job.id)]
        assert types[0] == "job.queued" and types[-1] == "job.completed"
        assert "job.progress" in types
        assert job.id in [j.id async for j in bob.iter_jobs(kind="steps", limit=1)]
        with pytest.raises(RemoteNotFound):
            await bob.get("nope")

        other = await bob.submit("noop")
        async with asyncio.timeout(60):
            async for event in bob.events(last_event_id=0):  # every event bob may see
                if event.job_id == other.id and event.final:
                    break
        assert (await bob.wait(other.id, timeout_s=30)).state is State.COMPLETED
        slow = await bob.submit("sleep", {"seconds": 60})
        with pytest.raises(TimeoutError):
            await bob.wait(slow.id, timeout_s=1)
        await bob.cancel(slow.id)
