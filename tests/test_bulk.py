"""Bulk actions (bulk.py, `POST /api/jobs/bulk`, `jobgate bulk`) on each backend: a filter's
jobs cancelled, retried or deleted one at a time by the single-job verbs, answered with
counts; a user confined to their own jobs; an empty filter refused for cancel and delete;
a job that moved on between the selection and its turn skipped."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import httpx

from conftest import TEST_KINDS, Server, wait_job
from jobgate import bulk
from jobgate.config import Settings
from jobgate.model import State

BOOM = """
[kinds.boom]
argv = ["false"]
max_attempts = 1
[kinds.bust]
argv = ["false"]
max_attempts = 1
"""


def later(hours: float = 1) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)).isoformat()


def submit(http: httpx.Client, kind: str, **fields: Any) -> str:
    response = http.post("/api/jobs", json={"kind": kind, **fields})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def do(http: httpx.Client, action: str, status: int = 200, **flt: Any) -> dict[str, Any]:
    response = http.post("/api/jobs/bulk", json={"action": action, "filter": flt})
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


def state(http: httpx.Client, job_id: str) -> str:
    value: str = http.get(f"/api/jobs/{job_id}").json()["state"]
    return value


def test_cancel_my_queued_jobs_leaves_others_alone(start_server: Callable[..., Server]
                                                   ) -> None:
    server = start_server()
    with server.client("bob") as bob, server.client("carol") as carol, \
            server.client("alice") as alice:
        mine = [submit(bob, "sleep", run_at=later()) for _ in range(3)]
        done = submit(bob, "noop")
        wait_job(bob, done, "completed")
        theirs = [submit(carol, "sleep", run_at=later()) for _ in range(2)]

        assert do(bob, "cancel", state="queued") == {
            "action": "cancel", "matched": 3, "done": 3, "skipped": {}, "more": False}
        for job_id in mine:
            job = bob.get(f"/api/jobs/{job_id}").json()
            assert (job["state"], job["message"]) == ("cancelled", "cancelled")
        assert [state(carol, j) for j in theirs] == ["queued", "queued"]
        assert state(bob, done) == "completed"
        # Again: nothing of bob's is queued any more.
        assert do(bob, "cancel", state="queued")["matched"] == 0

        # Someone else's jobs: an admin's only.
        refused = bob.post("/api/jobs/bulk", json={"action": "cancel",
                                                   "filter": {"owner": "carol"}})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert [state(carol, j) for j in theirs] == ["queued", "queued"]

        # An empty filter takes nothing, for an admin and a user alike.
        for who in (alice, bob):
            for action in ("cancel", "delete"):
                bodies: list[dict[str, Any]] = [{"action": action},
                                                {"action": action, "filter": {}}]
                for body in bodies:
                    empty = who.post("/api/jobs/bulk", json=body)
                    assert empty.status_code == 422, empty.text
                    error = empty.json()["error"]
                    assert error["code"] == "invalid_argument"
                    assert "needs a filter" in error["message"]
        assert [state(carol, j) for j in theirs] == ["queued", "queued"]
        # A state the action does not take, and an unknown action.
        wrong = do(alice, "delete", 422, state="queued")["error"]
        assert "not queued" in wrong["message"]
        assert bob.post("/api/jobs/bulk", json={"action": "explode"}).status_code == 422

        # An admin may: a dry run counts, then the action acts.
        assert do(alice, "cancel", owner="carol", state="queued", limit=1) == {
            "action": "cancel", "matched": 1, "done": 1, "skipped": {}, "more": True}
        probe = alice.post("/api/jobs/bulk", json={"action": "cancel", "dry_run": True,
                                                   "filter": {"owner": "carol"}}).json()
        assert (probe["matched"], probe["done"]) == (1, 0)
        assert sorted(state(carol, j) for j in theirs) == ["cancelled", "queued"]
        assert do(alice, "cancel", owner="carol")["done"] == 1
        assert [state(carol, j) for j in theirs] == ["cancelled", "cancelled"]


def test_retry_failed_of_a_kind_and_delete_finished_older_than(
        start_server: Callable[..., Server]) -> None:
    server = start_server(kinds=TEST_KINDS + BOOM)
    with server.client("bob") as bob, server.client("carol") as carol:
        booms = [submit(bob, "boom") for _ in range(2)]
        bust = submit(bob, "bust")
        held = submit(bob, "boom", run_at=later())
        assert bob.post(f"/api/jobs/{held}/cancel").status_code == 200
        firsts = {j: wait_job(bob, j, "failed") for j in [*booms, bust]}
        carols = submit(carol, "boom")
        wait_job(carol, carols, "failed")

        # Retry all failed of kind boom: bob's two; not the bust, nor the cancelled boom.
        assert do(bob, "retry", state="failed", kind="boom") == {
            "action": "retry", "matched": 2, "done": 2, "skipped": {}, "more": False}
        for job_id in booms:  # queued again, ran again, failed again
            again = wait_job(bob, job_id, "failed")
            assert again["started_at"] > firsts[job_id]["finished_at"]
        assert bob.get(f"/api/jobs/{bust}").json()["finished_at"] == \
            firsts[bust]["finished_at"]
        assert state(bob, held) == "cancelled"
        assert state(carol, carols) == "failed"

        # Delete finished older than an hour: none yet; older than 0 s: all of bob's.
        assert do(bob, "delete", older_than_s=3600)["matched"] == 0
        result = server.cli("bulk", "delete", "--older-than", "0s", "--kind", "bust",
                            "--yes", user="bob")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "deleted 1 of 1 jobs"
        assert bob.get(f"/api/jobs/{bust}").status_code == 404

        # Without --yes it asks, and does nothing unless told yes.
        asked = server.cli("bulk", "delete", "--older-than", "0s", user="bob", input="n\n")
        assert asked.returncode == 1
        assert asked.stdout.startswith("delete 3 jobs? [y/N]")
        assert asked.stderr.strip() == "jobgate: nothing done (--yes does it without asking)"
        assert state(bob, held) == "cancelled"
        agreed = server.cli("bulk", "delete", "--older-than", "0s", user="bob", input="y\n")
        assert agreed.returncode == 0, agreed.stderr
        assert agreed.stdout.splitlines()[-1].endswith("deleted 3 of 3 jobs")
        for job_id in [*booms, held]:
            assert bob.get(f"/api/jobs/{job_id}").status_code == 404
        assert state(carol, carols) == "failed"  # carol's are hers

        # Bad input at the command line: one line, no traceback.
        bad = server.cli("bulk", "delete", user="bob")
        assert bad.returncode == 1
        assert bad.stderr.count("\n") == 1 and "needs a filter" in bad.stderr
        bad_age = server.cli("bulk", "delete", "--older-than", "soon", "--yes", user="bob")
        assert bad_age.returncode == 2
        assert bad_age.stderr.count("\n") == 1 and "--older-than" in bad_age.stderr
        # `jobgate clean` still cleans (its own path: retention's batch delete).
        cleaned = server.cli("clean", "--older-than", "0s", user="carol")
        assert cleaned.returncode == 0, cleaned.stderr
        assert cleaned.stdout.strip() == "deleted 1 finished jobs"


async def test_a_job_that_moved_on_is_skipped(make_settings: Callable[..., Settings],
                                              open_queue: Any) -> None:
    queue, _ = await open_queue(make_settings(), worker=False)
    later_ts = time.time() + 3600
    jobs = [(await queue.submit("bob", "sleep", run_at=later_ts))[0] for _ in range(4)]
    others = (await queue.submit("carol", "sleep", run_at=later_ts))[0]
    flt = bulk.Filter(owner="bob", states=(State.QUEUED,))
    bulk.check("cancel", flt, explicit_owner=True)
    selected, more = await bulk.select(queue, "cancel", flt)
    assert sorted(j.id for j in selected) == sorted(j.id for j in jobs) and not more

    # Between the selection and the action: one is cancelled and deleted, one cancelled.
    await queue.cancel(selected[0].id)
    await queue.delete(selected[0].id)
    await queue.cancel(selected[1].id)
    result = await bulk.act(queue, "cancel", selected)

    assert result.to_json() == {"action": "cancel", "matched": 4, "done": 2,
                                "skipped": {"illegal_state": 1, "not_found": 1},
                                "more": False}
    for job in selected[1:]:
        current = await queue.get(job.id)
        assert current is not None and current.state is State.CANCELLED
    # Each job's own move, with its own event: one job.cancelled each, no more.
    events = await queue.store.events_after(0)
    for job in selected[1:]:
        assert [e.type for e in events if e.job_id == job.id] == \
            ["job.queued", "job.cancelled"]
    current = await queue.get(others.id)
    assert current is not None and current.state is State.QUEUED


async def test_older_than_and_limit_select(make_settings: Callable[..., Settings],
                                           open_queue: Any) -> None:
    queue, _ = await open_queue(make_settings(), worker=False)
    jobs = [(await queue.submit("bob", "sleep", run_at=time.time() + 3600))[0]
            for _ in range(3)]
    for job in jobs:
        await queue.cancel(job.id)
    result = await bulk.run(queue, "delete", bulk.Filter(owner="bob", older_than_s=3600))
    assert (result.matched, result.done) == (0, 0)
    result = await bulk.run(queue, "delete", bulk.Filter(owner="bob", older_than_s=0,
                                                         limit=2))
    assert (result.matched, result.done, result.more) == (2, 2, True)
    result = await bulk.run(queue, "retry", bulk.Filter(owner="bob"))
    assert (result.matched, result.done) == (1, 1)  # the one left, queued again
    survivor = await queue.get(jobs[0].id)
    assert survivor is not None and survivor.state is State.QUEUED  # the oldest: last out
