"""Dependencies end to end, on both backends: a three-step pipeline of real processes
(generate → transform → checksum) passing files through `job:ID/NAME`; a failed
dependency failing its dependants and theirs; and what the API refuses with 422 (unknown
and someone else's ids, an output of a job not depended on, a name leaving its folder).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from conftest import TEST_KINDS, wait_job, wait_state
from jobgate.arguments import ArgumentError
from jobgate.dependencies import DependencyError
from jobgate.model import State

# `generate` waits for a gate file the test makes, so that what waits can be seen waiting.
PIPELINE_KINDS = TEST_KINDS + """
[kinds.generate]
argv = ["sh", "-c", "while [ ! -e \\"$0\\" ]; do sleep 0.02; done; seq 1 $1 > \\"$2/numbers.txt\\"",
        "{gate}", "{count}", "{output_dir}"]
[kinds.generate.args]
gate = { type = "string" }
count = { type = "integer", min = 1, max = 100000, default = 100 }

[kinds.transform]
argv = ["sh", "-c", "sort -rn \\"$0\\" > \\"$1/sorted.txt\\"", "{input}", "{output_dir}"]
[kinds.transform.args]
input = { type = "path" }

[kinds.checksum]
argv = ["sha256sum", "{file}"]
[kinds.checksum.args]
file = { type = "path" }

[kinds.boom]
argv = ["sh", "-c", "echo boom >&2; exit 3"]
max_attempts = 1
"""


def expected_sorted(count: int) -> bytes:
    return "".join(f"{n}\n" for n in range(count, 0, -1)).encode()


async def test_a_three_step_pipeline_passes_its_files_through_job_references(
        make_settings, open_queue, tmp_path: Path) -> None:
    queue, _ = await open_queue(make_settings(kinds=PIPELINE_KINDS))
    gate = tmp_path / "gate"
    generate, _ = await queue.submit("alice", "generate", {"gate": str(gate), "count": 300})
    transform, _ = await queue.submit(
        "alice", "transform", {"input": f"job:{generate.id}/numbers.txt"},
        depends_on=[generate.id])
    checksum, _ = await queue.submit(
        "alice", "checksum", {"file": f"job:{transform.id}/sorted.txt"},
        depends_on=[transform.id])
    await wait_state(queue, generate.id, "running")
    for waiting in (transform, checksum):
        shown = queue.to_json(await queue.get(waiting.id) or waiting)
        assert shown["state"] == "queued" and shown["position"] is None
        assert shown["message"] == "waiting for 1 job"
        assert shown["depends_on"] == waiting.depends_on
    assert (await queue.stats()).waiting == 2
    gate.touch()
    done = await wait_state(queue, checksum.id, "completed", "failed")
    assert done.state is State.COMPLETED, done.error
    # The middle step read the first one's output and wrote its own, which the last read.
    assert (queue.job_dir(transform.id) / "sorted.txt").read_bytes() == expected_sorted(300)
    digest = hashlib.sha256(expected_sorted(300)).hexdigest()
    lines = [line for _, line in await queue.store.logs(checksum.id)]
    assert any(line.startswith(digest) for line in lines), lines
    # Each step entered the dispatch order when its dependency completed, not before.
    events = [e for e in await queue.store.events_after(0) if e.job_id == checksum.id]
    assert [e.type for e in events if e.type != "job.progress"][:3] == \
        ["job.queued", "job.queued", "job.started"]


async def test_a_failed_dependency_fails_its_dependants_and_theirs(make_settings, open_queue
                                                                  ) -> None:
    queue, _ = await open_queue(make_settings(kinds=PIPELINE_KINDS))
    first, _ = await queue.submit("alice", "boom")
    second, _ = await queue.submit("alice", "noop", depends_on=[first.id])
    third, _ = await queue.submit("alice", "noop", depends_on=[second.id])
    beside, _ = await queue.submit("alice", "noop")
    assert (await wait_state(queue, first.id, "failed")).error is not None
    for job, dep in ((second, first), (third, second)):
        failed = await wait_state(queue, job.id, "failed")
        assert failed.error == f"dependency failed: {dep.id}" and failed.started_at is None
    assert (await wait_state(queue, beside.id, "completed")).state is State.COMPLETED


async def test_dependencies_are_the_callers_own_and_must_exist(make_settings, open_queue
                                                               ) -> None:
    queue, _ = await open_queue(make_settings(kinds=PIPELINE_KINDS), worker=False)
    bobs, _ = await queue.submit("bob", "noop")
    for owner, deps in (("alice", ["NOSUCHJOB"]), ("carol", [bobs.id])):
        with pytest.raises(DependencyError, match="of yours to depend on") as info:
            await queue.submit(owner, "noop", depends_on=deps)
        assert info.value.field == "depends_on"
    admins, _ = await queue.submit("alice", "noop", depends_on=[bobs.id], admin=True)
    assert admins.depends_on == [bobs.id] and admins.message == "waiting for 1 job"
    with pytest.raises(DependencyError, match="expected job ids"):
        await queue.submit("bob", "noop", depends_on=[""])


@pytest.mark.parametrize(("value", "problem"), [
    ("job:{other}/numbers.txt", "is not among this job's depends_on"),
    ("job:{dep}/../../secrets/jwt.key", "plain path inside that job's folder"),
    ("job:{dep}//etc/passwd", "plain path inside that job's folder"),
    ("job:{dep}", "job:ID/NAME"),
])
async def test_a_path_argument_names_only_an_output_of_a_job_it_depends_on(
        make_settings, open_queue, value: str, problem: str) -> None:
    queue, _ = await open_queue(make_settings(kinds=PIPELINE_KINDS), worker=False)
    dep, _ = await queue.submit("alice", "noop")
    other, _ = await queue.submit("alice", "noop")
    with pytest.raises(ArgumentError, match=problem) as info:
        await queue.submit("alice", "checksum",
                           {"file": value.format(dep=dep.id, other=other.id)},
                           depends_on=[dep.id])
    assert info.value.field == "file"


async def test_an_output_gone_by_the_time_the_job_runs_fails_it_clearly(
        make_settings, open_queue, tmp_path: Path) -> None:
    queue, _ = await open_queue(make_settings(kinds=PIPELINE_KINDS))
    gate = tmp_path / "gate"
    gate.touch()
    first, _ = await queue.submit("alice", "generate", {"gate": str(gate), "count": 3})
    second, _ = await queue.submit("alice", "checksum", {"file": f"job:{first.id}/missing.txt"},
                                   depends_on=[first.id])
    failed = await wait_state(queue, second.id, "failed")
    assert f"job {first.id} has no output 'missing.txt'" in (failed.error or "")


def test_the_api_takes_depends_on_and_refuses_bad_ones_with_422(start_server) -> None:
    server = start_server(kinds=PIPELINE_KINDS)
    with server.client("bob") as bob, server.client("carol") as carol:
        gate = server.folder / "gate"
        first = bob.post("/api/jobs", json={"kind": "generate",
                                            "args": {"gate": str(gate), "count": 5}}).json()
        second = bob.post("/api/jobs", json={
            "kind": "checksum", "args": {"file": f"job:{first['id']}/numbers.txt"},
            "depends_on": [first["id"]]})
        assert second.status_code == 201, second.text
        shown: dict[str, Any] = second.json()
        assert shown["message"] == "waiting for 1 job" and shown["position"] is None
        assert shown["depends_on"] == [first["id"]]
        queue = bob.get("/api/queue").json()
        assert queue["waiting"] == 1
        for who, body in ((carol, {"kind": "noop", "depends_on": [first["id"]]}),
                          (bob, {"kind": "noop", "depends_on": ["01NOSUCHJOB"]})):
            refused = who.post("/api/jobs", json=body)
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert "of yours to depend on" in error["message"]
        refused = bob.post("/api/jobs", json={
            "kind": "checksum", "args": {"file": f"job:{first['id']}/numbers.txt"}})
        assert refused.status_code == 422
        assert "not among this job's depends_on" in refused.json()["error"]["message"]
        gate.touch()
        done = wait_job(bob, shown["id"], "completed", "failed")
        assert done["state"] == "completed", done


async def test_a_cancelled_dependency_fails_its_waiting_dependant(make_settings, open_queue
                                                                 ) -> None:
    queue, _ = await open_queue(make_settings(kinds=PIPELINE_KINDS), worker=False)
    first, _ = await queue.submit("alice", "noop", run_at=4e9)
    second, _ = await queue.submit("alice", "noop", depends_on=[first.id])
    await queue.cancel(first.id)
    failed = await asyncio.wait_for(wait_state(queue, second.id, "failed"), 30)
    assert failed.error == f"dependency failed: {first.id}"


# --- the rules, without a backend ------------------------------------------------------------

def test_what_dependencies_come_to_in_each_state():
    from jobgate import moves

    s = State
    assert moves.dependencies({}) == (None, 0)
    assert moves.dependencies({"A": s.COMPLETED, "B": None}) == (None, 0)  # None: deleted
    assert moves.dependencies({"A": s.QUEUED, "B": s.RUNNING}) == (None, 2)
    assert moves.dependencies({"B": s.CANCELLED, "A": s.FAILED, "C": s.QUEUED}) == ("A", 1)
    assert moves.waiting_message(1) == "waiting for 1 job"
    assert moves.waiting_message(2) == "waiting for 2 jobs"


def test_a_released_job_gets_its_turn_then_and_a_failed_one_says_why():
    from jobgate import moves
    from jobgate.model import Job

    job = Job("J", "noop", "alice", {}, depends_on=["D"], run_at=10.0, vt=0,
              message="waiting for 1 job")
    released = moves.released(job, 50.0, vt=7)
    assert released.fields == {"vt": 7, "run_at": 50.0, "message": None}
    assert released.event == "job.queued" and "waiting" not in released.data
    later = moves.released(Job("L", "noop", "alice", {}, run_at=99.0), 50.0, vt=1)
    assert later.job.run_at == 99.0  # a delayed job keeps its time
    failed = moves.dependency_failed(job, "D", 50.0)
    assert failed.job.state is State.FAILED and failed.job.error == "dependency failed: D"
    assert failed.event == "job.failed"
    waiting = moves.submitted_waiting(job, 2)
    assert waiting.data["waiting"] == 2 and waiting.job.vt == 0


def test_a_batch_fits_whole_or_the_refusal_says_how_many_would():
    from jobgate import moves
    from jobgate.store.base import QueueFull, Quota

    moves.batch_fits(5, 5, None, Quota(max_queued=10), "bob")
    with pytest.raises(QueueFull, match="4 of the batch's 5 jobs would fit"):
        moves.batch_fits(5, 6, 1, Quota(max_queued=10, per_user_queued=8), "bob")
    with pytest.raises(QueueFull, match=r"0 of the batch's 1 jobs .*per_user_queued 2 for bob"):
        moves.batch_fits(1, 3, 2, Quota(max_queued=10, per_user_queued=2), "bob")
    moves.batch_fits(1000, None, None, Quota(), "bob")
