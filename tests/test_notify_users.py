"""Per-user notifications (`[notify.users]`), on both backends: a user's URLs are told of
that user's jobs only, beside the global and kind ones, one URL reached twice is sent to
once; a bad entry is a one-line error at start; a user URL's secret is shown neither by
`GET /api/jobs/{id}/deliveries` nor in the log, even when an attempt fails."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Server, free_port, wait_job, wait_state
from jobgate.config import ConfigError, Settings, load_settings
from jobgate.deliverer import shown_target
from jobgate.deliveries import DELIVERED, PENDING, Delivery
from jobgate.model import EventType
from jobgate.queue import JobQueue
from receiver import Receiver

SECRET = "topsecret-user-pw"
_SETTLED = {EventType.DELIVERY_SUCCEEDED, EventType.DELIVERY_FAILED}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port()).start()
    yield r
    r.stop()


def users_config(global_url: str, users: dict[str, list[str]], on: str = "completed") -> str:
    table = "\n".join(f"{name} = {json.dumps(urls)}" for name, urls in users.items())
    return (f'[webhooks]\nbackoff = ["0.1s"]\n'
            f'[notify]\nurls = {json.dumps([global_url] if global_url else [])}\n'
            f'on = ["{on}"]\nattach_max_mb = "off"\n'
            f'[notify.users]\n{table}\n')


async def settled(queue: JobQueue, job_id: str, timeout_s: float = 30) -> list[Delivery]:
    """The job's deliveries once none is pending, woken by their delivery events."""
    deadline = time.monotonic() + timeout_s
    with queue.bus.subscribe(lambda e: e.job_id == job_id and e.type in _SETTLED) as sub:
        while True:
            found = await queue.store.deliveries(job_id)
            if all(d.state != PENDING for d in found):
                return found
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"deliveries of {job_id} still pending: {found}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.get(), min(remaining, 0.5))


async def test_a_users_job_notifies_that_users_urls_only_and_each_url_once(
        make_settings: Callable[..., Settings], open_queue: Any, receiver: Receiver) -> None:
    base = f"json://127.0.0.1:{receiver.port}"
    # alice's list names the global URL too: her job's end must reach it once, not twice.
    settings = make_settings(users_config(
        f"{base}/global", {"alice": [f"{base}/alice", f"{base}/global"],
                           "carol": [f"{base}/carol"]}))
    queue, _ = await open_queue(settings)
    mine, _ = await queue.submit("alice", "noop", {})
    other, _ = await queue.submit("bob", "noop", {})
    for job in (mine, other):
        await wait_state(queue, job.id, "completed")
    alices, bobs = await settled(queue, mine.id), await settled(queue, other.id)

    assert sorted((d.source, d.state) for d in alices) == [("global", DELIVERED),
                                                           ("user", DELIVERED)]
    assert [(d.source, d.state) for d in bobs] == [("global", DELIVERED)]
    # Every delivery is settled, so nothing more is on its way: these are all requests.
    got = [(g.path, json.loads(g.body)["message"]) for g in receiver.received]
    assert len(got) == 3, got
    assert sorted(path for path, _ in got) == ["/alice", "/global", "/global"]
    (to_alice,) = [text for path, text in got if path == "/alice"]
    assert f"Job {mine.id} (noop) of alice: completed" in to_alice
    assert not any(other.id in text for path, text in got if path != "/global")


async def test_a_users_urls_follow_notify_on(
        make_settings: Callable[..., Settings], open_queue: Any, receiver: Receiver) -> None:
    settings = make_settings(users_config(
        "", {"alice": [f"json://127.0.0.1:{receiver.port}/alice"]}, on="failed"))
    queue, _ = await open_queue(settings)
    ok, _ = await queue.submit("alice", "noop", {})
    failed, _ = await queue.submit("alice", "fail", {"code": 3, "label": "y"})
    await wait_state(queue, ok.id, "completed")
    await wait_state(queue, failed.id, "failed", timeout_s=60)
    assert await queue.store.deliveries(ok.id) == []  # completed: not in [notify] on
    (delivery,) = await settled(queue, failed.id)
    assert (delivery.source, delivery.state) == ("user", DELIVERED)
    (got,) = receiver.received
    body = json.loads(got.body)
    assert (body["type"], got.path) == ("failure", "/alice")
    assert "Error: exit code 3: boom y" in body["message"]


@pytest.mark.parametrize(("toml", "key"), [
    ('alice = ["ntfy://topic", "nosuchservice://TOKEN123/x"]', r"notify\.users\.alice\[1\]"),
    ('alice = ["bad"]', r"notify\.users\.alice\[0\]"),
    ('alice = "nosuchservice://TOKEN123/x"', r"notify\.users\.alice\[0\]"),
    ('alice = [1]', r"notify\.users\.alice:"),
    ('"not a name" = ["ntfy://topic"]', r"notify\.users\.not a name: not a user name"),
])
def test_a_bad_entry_under_notify_users_is_a_config_error(
        tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "jobgate.toml"
    path.write_text(f"[notify.users]\n{toml}\n")
    with pytest.raises(ConfigError, match=key) as raised:
        load_settings(path, env={})
    assert "TOKEN123" not in str(raised.value)  # nothing of the URL but its scheme
    assert "\n" not in str(raised.value)


def test_notify_users_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "jobgate.toml"
    path.write_text('[notify]\nusers = ["ntfy://topic"]\n')
    with pytest.raises(ConfigError, match=r"notify\.users: expected a table"):
        load_settings(path, env={})
    path.write_text('[notify.users]\nalice = ["ntfy://topic"]\nbob = []\n')
    assert load_settings(path, env={}).notify.users == {"alice": ["ntfy://topic"], "bob": []}


def test_jobgate_serve_refuses_a_bad_user_notification_url_in_one_line(
        tmp_path: Path) -> None:
    path = tmp_path / "jobgate.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                    '[notify.users]\nalice = ["nosuchservice://TOKEN123/x"]\n')
    done = subprocess.run([sys.executable, "-m", "jobgate", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "notify.users.alice[0]" in lines[0]
    assert "TOKEN123" not in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_user_urls_secret_is_kept_shown_and_logged_nowhere(
        make_settings: Callable[..., Settings], open_queue: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver(free_port(), answers=[500]).start()  # the first attempt fails
    try:
        url = f"json://alice:{SECRET}@127.0.0.1:{receiver.port}/alice"
        queue, _ = await open_queue(make_settings(users_config("", {"alice": [url]})))
        with caplog.at_level(logging.INFO, logger="jobgate.deliveries"):
            job, _ = await queue.submit("alice", "noop", {})
            await wait_state(queue, job.id, "completed")
            (delivery,) = await settled(queue, job.id)
        first, second = receiver.received
    finally:
        receiver.stop()
    assert first.headers["authorization"] == second.headers["authorization"] == \
        "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert (delivery.source, delivery.state, delivery.attempts) == ("user", DELIVERED, 2)
    assert SECRET not in repr(delivery)  # the outbox keeps a hash of the URL, not the URL
    shown = json.dumps(delivery.to_json(shown_target(queue, delivery)))  # as the API does
    assert SECRET not in shown and "json://alice:" in shown
    assert "attempt 1 failed" in caplog.text and "delivered to json://alice:" in caplog.text
    assert SECRET not in caplog.text


def deliveries_of(server: Server, user: str, job_id: str) -> list[dict[str, Any]]:
    """The job's deliveries as its owner lists them, once none is pending."""
    deadline = time.monotonic() + 30
    with server.client(user) as http:
        while True:
            listed: list[dict[str, Any]] = http.get(
                f"/api/jobs/{job_id}/deliveries").json()["deliveries"]
            if all(d["state"] != "pending" for d in listed):
                return listed
            assert time.monotonic() < deadline, listed
            time.sleep(0.05)


def test_a_user_url_is_listed_and_logged_without_its_secret_even_when_it_failed(
        start_server: Callable[..., Server]) -> None:
    receiver = Receiver(free_port(), answers=[500]).start()  # the first attempt fails
    try:
        url = f"json://alice:{SECRET}@127.0.0.1:{receiver.port}/alice"
        server = start_server(users_config("", {"alice": [url]}))
        with server.client("alice") as http:
            mine = http.post("/api/jobs", json={"kind": "noop"}).json()["id"]
            wait_job(http, mine, "completed")
        with server.client("bob") as http:
            other = http.post("/api/jobs", json={"kind": "noop"}).json()["id"]
            wait_job(http, other, "completed")
        first, second = receiver.wait(2)
        (delivery,) = listed = deliveries_of(server, "alice", mine)
    finally:
        receiver.stop()
    assert first.headers["authorization"] == second.headers["authorization"] == \
        "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert first.path == second.path == "/alice"
    assert (delivery["channel"], delivery["source"], delivery["state"],
            delivery["attempts"]) == ("notify", "user", "delivered", 2)
    assert delivery["history"][0]["error"]  # the failed attempt is recorded ...
    assert SECRET not in json.dumps(listed)  # ... without the secret, as is the target
    assert delivery["target"].startswith("json://alice:")
    # Deliveries are written with the final state, so bob's job, ended, has all of its.
    assert deliveries_of(server, "bob", other) == []
    log = server.log.read_text()  # warnings and up: the failed attempt, with its target
    assert "to json://alice:****@" in log and "attempt 1 failed" in log
    assert SECRET not in log
