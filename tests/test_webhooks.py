"""Webhooks of jobs' ends, on both backends: signed as Standard Webhooks say (verified with
the `standardwebhooks` package by a real receiver on loopback), retried with backoff,
durable across a SIGKILL of the node between a job's end and its delivery, refused at
submit for a private address."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from conftest import Server, free_port, wait_job, wait_state
from jobgate.config import Settings
from jobgate.model import EventType
from jobgate.webhooks import new_secret
from receiver import Receiver

SECRET = new_secret()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(answers: list[int] | None = None, port: int | None = None) -> Receiver:
        r = Receiver(port or free_port(), answers)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def hooks_config(url: str, backoff: str = '["0.1s"]', extra: str = "") -> str:
    return f"""
    [webhooks]
    url = "{url}/hook"
    secret = "{SECRET}"
    backoff = {backoff}
    {extra}
    """


async def test_a_jobs_end_is_posted_signed_with_its_json(
        make_settings: Callable[..., Settings], open_queue: Any,
        receiver: Callable[..., Receiver]) -> None:
    r = receiver().start()
    queue, _ = await open_queue(make_settings(hooks_config(r.url)))
    job, _ = await queue.submit("bob", "noop", {})
    done = await wait_state(queue, job.id, "completed")

    (got,) = await asyncio.to_thread(r.wait, 1)
    payload = Webhook(SECRET).verify(got.body, got.headers)
    assert payload == queue.to_json(done)  # the shape of GET /api/jobs/{id}
    assert got.path == "/hook"
    assert got.headers["webhook-id"]
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 300
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(got.body, got.headers)
    tampered = got.body.replace(b'"completed"', b'"failed"')
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, got.headers)


async def test_an_answer_of_500_is_tried_again_until_it_succeeds(
        make_settings: Callable[..., Settings], open_queue: Any,
        receiver: Callable[..., Receiver]) -> None:
    r = receiver(answers=[500, 500]).start()
    queue, _ = await open_queue(make_settings(hooks_config(r.url)))
    with queue.bus.subscribe(lambda e: e.type.startswith("delivery.")) as events:
        job, _ = await queue.submit("bob", "fail", {"code": 1})
        await wait_state(queue, job.id, "failed", timeout_s=60)
        seen = [await asyncio.wait_for(events.get(), 60) for _ in range(3)]

    assert [e.type for e in seen] == [EventType.DELIVERY_RETRYING,
                                      EventType.DELIVERY_RETRYING,
                                      EventType.DELIVERY_SUCCEEDED]
    assert {e.job_id for e in seen} == {job.id}
    assert {e.owner for e in seen} == {"bob"}
    got = await asyncio.to_thread(r.wait, 3)
    assert len({g.headers["webhook-id"] for g in got}) == 1  # one message, three tries
    for g in got:
        assert Webhook(SECRET).verify(g.body, g.headers)["state"] == "failed"

    (delivery,) = await queue.store.deliveries(job.id)
    assert delivery.state == "delivered"
    assert delivery.attempts == 3
    assert [a.status for a in delivery.tries] == [500, 500, 200]
    assert [a.ok for a in delivery.tries] == [False, False, True]
    assert delivery.tries[0].response == "server error: try again"
    assert delivery.last_status == 200


async def test_a_webhook_that_keeps_failing_is_given_up_after_max_age(
        make_settings: Callable[..., Settings], open_queue: Any,
        receiver: Callable[..., Receiver]) -> None:
    r = receiver(answers=[503] * 100).start()
    queue, _ = await open_queue(make_settings(hooks_config(
        r.url, backoff='["0.3s"]', extra='max_age = "1s"')))
    with queue.bus.subscribe(lambda e: e.type == EventType.DELIVERY_FAILED) as failed:
        job, _ = await queue.submit("bob", "noop", {})
        event = await asyncio.wait_for(failed.get(), 60)
    assert event.job_id == job.id
    (delivery,) = await queue.store.deliveries(job.id)
    assert delivery.state == "failed"
    assert 2 <= delivery.attempts == len(delivery.tries)
    assert {a.status for a in delivery.tries} <= {503, None}  # None: given up unsent
    assert time.time() - delivery.created_at < 60


async def test_the_final_states_a_webhook_announces_are_configurable(
        make_settings: Callable[..., Settings], open_queue: Any,
        receiver: Callable[..., Receiver]) -> None:
    r = receiver().start()
    queue, _ = await open_queue(make_settings(hooks_config(r.url, extra='events = ["failed"]')))
    ok, _ = await queue.submit("bob", "noop", {})
    await wait_state(queue, ok.id, "completed")
    bad, _ = await queue.submit("bob", "fail", {"code": 1})
    await wait_state(queue, bad.id, "failed", timeout_s=60)
    (got,) = await asyncio.to_thread(r.wait, 1)
    assert json.loads(got.body)["id"] == bad.id
    assert await queue.store.deliveries(ok.id) == []


async def test_without_a_configured_secret_one_is_made_once_and_kept(
        make_settings: Callable[..., Settings], open_queue: Any,
        receiver: Callable[..., Receiver], tmp_path: Path) -> None:
    r = receiver().start()
    settings = make_settings(f'[webhooks]\nurl = "{r.url}"\nbackoff = ["0.1s"]\n')
    queue, _ = await open_queue(settings)
    job, _ = await queue.submit("bob", "noop", {})
    (got,) = await asyncio.to_thread(r.wait, 1)
    kept = (settings.data_path / "secrets" / "webhook_secret").read_text().strip()
    assert kept.startswith("whsec_")
    assert Webhook(kept).verify(got.body, got.headers)["id"] == job.id


# --- through the API, with real `jobgate serve` processes ------------------------------------
def _deliveries(server: Server, job_id: str) -> list[dict[str, Any]]:
    with server.client("bob") as http:
        body = http.get(f"/api/jobs/{job_id}/deliveries").json()
    assert body["job_id"] == job_id
    result: list[dict[str, Any]] = body["deliveries"]
    return result


def test_a_private_webhook_url_is_refused_at_submit(start_server: Callable[..., Server]) -> None:
    server = start_server()
    with server.client("bob") as http:
        for url in ("http://127.0.0.1:9/hook", "http://10.1.2.3/x", "http://[::1]/",
                    "http://169.254.169.254/latest", "ftp://example.org/",
                    "http://user:pw@example.org/"):
            response = http.post("/api/jobs", json={"kind": "noop", "webhook_url": url})
            assert response.status_code == 422, (url, response.text)
            error = response.json()["error"]
            assert error["field"] == "webhook_url"
            assert "webhook_url" in error["message"]
        assert http.get("/api/jobs").json()["jobs"] == []  # nothing was queued


def test_a_jobs_own_webhook_is_delivered_and_listed_without_its_query(
        start_server: Callable[..., Server], receiver: Callable[..., Receiver]) -> None:
    r = receiver().start()
    server = start_server(f'[webhooks]\nallow_private = true\nsecret = "{SECRET}"\n'
                          'backoff = ["0.1s"]\n')
    with server.client("bob") as http:
        response = http.post("/api/jobs", json={
            "kind": "noop", "webhook_url": f"{r.url}/mine?token=s3cr3t"})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        wait_job(http, job_id, "completed")
        with server.client("carol") as other:  # someone else's job: not found
            assert other.get(f"/api/jobs/{job_id}/deliveries").status_code == 404
    (got,) = r.wait(1)
    assert got.path == "/mine?token=s3cr3t"
    assert Webhook(SECRET).verify(got.body, got.headers)["id"] == job_id
    deadline = time.monotonic() + 30
    while (listed := _deliveries(server, job_id))[0]["state"] != "delivered":
        assert time.monotonic() < deadline, listed
        time.sleep(0.05)
    (delivery,) = listed
    assert delivery["channel"] == "webhook"
    assert delivery["source"] == "job"
    assert delivery["event"] == "job.completed"
    assert delivery["attempts"] == 1
    assert delivery["history"][0]["status"] == 200
    assert "s3cr3t" not in json.dumps(listed)
    assert delivery["target"] == f"{r.url}/mine?…"
    with server.client("alice") as admin:  # an admin sees anyone's
        assert admin.get(f"/api/jobs/{job_id}/deliveries").status_code == 200


def test_a_webhook_survives_a_kill_between_the_jobs_end_and_its_delivery(
        start_server: Callable[..., Server], receiver: Callable[..., Receiver]) -> None:
    # The receiver is down when the job ends: the first attempts fail, the node is killed
    # (SIGKILL), a new node on the same database is started, then the receiver comes up.
    r = receiver()
    # A short timeout: an attempt the killed node had begun frees its lease soon.
    config = hooks_config(r.url, backoff='["0.2s"]', extra='timeout = "2s"')
    first = start_server(config)
    with first.client("bob") as http:
        job_id = http.post("/api/jobs", json={"kind": "noop"}).json()["id"]
        wait_job(http, job_id, "completed")
    deadline = time.monotonic() + 30
    while not (listed := _deliveries(first, job_id)) or not listed[0]["history"]:
        assert time.monotonic() < deadline, listed
        time.sleep(0.05)
    assert listed[0]["state"] == "pending"
    assert listed[0]["history"][0]["status"] is None  # nobody answered
    first.kill9()

    second = start_server(config, db_url=_db_url(first))
    r.start()
    (got,) = r.wait(1)
    assert Webhook(SECRET).verify(got.body, got.headers)["id"] == job_id
    deadline = time.monotonic() + 30
    while (listed := _deliveries(second, job_id))[0]["state"] != "delivered":
        assert time.monotonic() < deadline, listed
        time.sleep(0.05)
    assert len(r.received) == 1  # delivered, so never sent again: once
    assert listed[0]["attempts"] >= 2


def _db_url(server: Server) -> str:
    for line in server.config.read_text().splitlines():
        if line.startswith("url = ") and ("sqlite" in line or "postgres" in line):
            return line.removeprefix("url = ").strip('"')
    raise AssertionError("no database URL in the config")
