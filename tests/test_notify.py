"""Notifications of jobs' ends through Apprise, on both backends: Apprise's `json://`
service posts to a real receiver on loopback (title, message and the job's outputs
attached in base64); secrets in notification URLs never shown; a bad URL in the config is a
one-line error at start."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TEST_KINDS, Server, free_port, wait_job, wait_state
from jobgate.config import ConfigError, Settings, load_settings
from jobgate.notify import message, shown_url
from receiver import Receiver

WRITE_KIND = """
[kinds.write]
argv = ["sh", "-c", "printf 'hello from the job' > \\"$0/greeting.txt\\"", "{output_dir}"]
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port()).start()
    yield r
    r.stop()


def notify_config(url: str, extra: str = "") -> str:
    return f"""
    [webhooks]
    backoff = ["0.1s"]
    [notify]
    urls = ["{url}"]
    on = ["completed"]
    {extra}
    """


async def test_a_completed_job_is_notified_with_its_output_attached(
        make_settings: Callable[..., Settings], open_queue: Any, receiver: Receiver) -> None:
    url = f"json://127.0.0.1:{receiver.port}/notify"
    queue, _ = await open_queue(make_settings(notify_config(url), TEST_KINDS + WRITE_KIND))
    job, _ = await queue.submit("bob", "write", {})
    await wait_state(queue, job.id, "completed")

    (got,) = await asyncio.to_thread(receiver.wait, 1)
    assert got.path == "/notify"
    body = json.loads(got.body)
    assert body["title"] == "jobgate: write completed"
    assert f"Job {job.id} (write) of bob: completed" in body["message"]
    assert "greeting.txt" in body["message"]
    assert body["type"] == "success"
    (attached,) = body["attachments"]
    assert attached["filename"] == "greeting.txt"
    assert base64.b64decode(attached["base64"]) == b"hello from the job"


async def test_only_the_states_asked_for_are_notified_and_a_kind_adds_its_own(
        make_settings: Callable[..., Settings], open_queue: Any, receiver: Receiver) -> None:
    kinds = TEST_KINDS.replace(
        '[kinds.noop]\n', f'[kinds.noop]\nnotify = ["json://127.0.0.1:{receiver.port}/kind"]\n')
    settings = make_settings(notify_config(
        f"json://127.0.0.1:{receiver.port}/global", 'attach_max_mb = "off"'
    ).replace('on = ["completed"]', 'on = ["completed", "failed"]'), kinds)
    queue, _ = await open_queue(settings)
    failed, _ = await queue.submit("bob", "fail", {"code": 1, "label": "x"})
    await wait_state(queue, failed.id, "failed", timeout_s=60)
    later, _ = await queue.submit("bob", "noop", {}, run_at=time.time() + 3600)
    await queue.cancel(later.id)  # cancelled: not a state [notify] on names
    ok, _ = await queue.submit("bob", "noop", {})
    await wait_state(queue, ok.id, "completed")

    got = await asyncio.to_thread(receiver.wait, 3)
    by_path: dict[str, list[str]] = {}
    for g in got:
        by_path.setdefault(g.path, []).append(json.loads(g.body)["message"])
    assert sorted(by_path) == ["/global", "/kind"]
    assert len(by_path["/global"]) == 2 and len(by_path["/kind"]) == 1
    # The ends of one instant are sent together: in no promised order.
    failure = next(m for m in by_path["/global"] if failed.id in m)
    assert f"{failed.id} (fail) of bob: failed" in failure
    assert "Error: exit code 1: boom x" in failure
    assert ok.id in by_path["/kind"][0]
    assert await queue.store.deliveries(later.id) == []
    assert {d.source for d in await queue.store.deliveries(ok.id)} == {"global", "kind"}


def test_the_message_names_the_job_its_state_and_its_error() -> None:
    title, body = message({"id": "J1", "kind": "compress", "owner": "bob", "state": "failed",
                           "error": "ffmpeg exited with 1", "result": None, "outputs": []})
    assert title == "jobgate: compress failed"
    assert "Job J1 (compress) of bob: failed" in body
    assert "Error: ffmpeg exited with 1" in body


def test_secrets_in_notification_urls_are_starred() -> None:
    shown = shown_url("tgram://123456789:AAH-secret-token-value/-100200300/")
    assert "secret-token-value" not in shown and shown.startswith("tgram://")
    shown = shown_url("json://user:topsecret@127.0.0.1:9/")
    assert "topsecret" not in shown and "user" in shown


def test_a_notification_url_apprise_does_not_know_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "jobgate.toml"
    path.write_text('[notify]\nurls = ["ntfy://topic", "nosuchservice://TOKEN123/x"]\n')
    with pytest.raises(ConfigError, match=r"notify\.urls\[1\]") as raised:
        load_settings(path, env={})
    assert "TOKEN123" not in str(raised.value)  # nothing of the URL but its scheme
    path.write_text('[kinds.x]\nargv = ["true"]\nnotify = ["bad"]\n')
    with pytest.raises(ConfigError, match=r"kinds\.x\.notify\[0\]"):
        load_settings(path, env={})
    for bad, key in (('[notify]\non = ["done"]\n', "notify.on"),
                     ('[webhooks]\nevents = ["running"]\n', "webhooks.events"),
                     ('[webhooks]\nsecret = "hunter2"\n', "webhooks.secret"),
                     ('[webhooks]\nbackoff = ["soon"]\n', r"webhooks.backoff\[0\]"),
                     ('[webhooks]\nurl = "ftp://x.example/"\n', "webhooks.url")):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=key):
            load_settings(path, env={})


def test_jobgate_serve_refuses_a_bad_notification_url_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "jobgate.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                    '[notify]\nurls = ["nosuchservice://TOKEN123/x"]\n')
    done = subprocess.run([sys.executable, "-m", "jobgate", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "notify.urls[0]" in lines[0]
    assert "TOKEN123" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_notification_is_listed_without_its_password(
        start_server: Callable[..., Server], receiver: Receiver) -> None:
    url = f"json://user:topsecret@127.0.0.1:{receiver.port}/n"
    server = start_server(notify_config(url))
    with server.client("bob") as http:
        job_id = http.post("/api/jobs", json={"kind": "noop"}).json()["id"]
        wait_job(http, job_id, "completed")
        (got,) = receiver.wait(1)
        assert got.headers["authorization"] == "Basic " + base64.b64encode(
            b"user:topsecret").decode()  # Apprise sent it, as the URL says
        deadline = time.monotonic() + 30
        while (listed := http.get(f"/api/jobs/{job_id}/deliveries").json()["deliveries"]
               )[0]["state"] != "delivered":
            assert time.monotonic() < deadline, listed
            time.sleep(0.05)
    (delivery,) = listed
    assert (delivery["channel"], delivery["source"], delivery["attempts"]) == (
        "notify", "global", 1)
    assert "topsecret" not in json.dumps(listed)
    assert delivery["target"].startswith("json://user:")
    assert "topsecret" not in server.log.read_text()
