"""Batches end to end, on both backends: 500 jobs in one call whose percent climbs to 100
and whose `batch.completed` comes once; a pipeline batch passing files by `#i`; cycles,
references out of the batch and unknown ids refused whole; quotas all or none (the 429
says how many would fit); `POST /api/batches`, `GET /api/batches/{id}` and `jobgate
submit --batch FILE`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from conftest import TEST_KINDS, wait_state
from jobgate.arguments import ArgumentError
from jobgate.batches import Batch, BatchItem, parse_batch_file, percent, plan, summary
from jobgate.dependencies import DependencyError
from jobgate.model import Event, EventType, State
from jobgate.store.base import QueueFull
from test_dependencies import PIPELINE_KINDS, expected_sorted

# --- the rules ------------------------------------------------------------------------------

def test_the_batch_percent_counts_ended_jobs_whole_and_running_ones_by_progress():
    counts = {"completed": 20, "failed": 3, "running": 2, "queued": 26}
    assert summary(percent(counts, 130.0, 51), 23, 51) == "47.6 % (23/51)"
    assert percent({"queued": 51}, 0.0, 51) == 0.0
    assert percent({"completed": 50, "running": 1}, 100.0, 51) == 99.9  # not ended yet
    assert percent({"completed": 50, "cancelled": 1}, 0.0, 51) == 100.0


def test_references_inside_a_batch_become_its_ids_and_a_cycle_is_named():
    items = [BatchItem("a"), BatchItem("b", {"file": "job:#0/out.txt"}, depends_on=("#0",)),
             BatchItem("c", depends_on=("#1", "EXTERNAL"))]
    steps = plan(items, ["I0", "I1", "I2"], pipeline=False)
    assert steps.depends_on == [[], ["I0"], ["I1", "EXTERNAL"]]
    assert steps.args[1] == {"file": "job:I0/out.txt"} and steps.order == [0, 1, 2]
    # Declared later, needed first: stored after what it depends on.
    backwards = plan([BatchItem("x", depends_on=("#1",)), BatchItem("y")], ["X", "Y"], False)
    assert backwards.order == [1, 0]
    with pytest.raises(DependencyError, match=r"a cycle: #0 -> #1 -> #0"):
        plan([BatchItem("x", depends_on=("#1",)), BatchItem("y", depends_on=("#0",))],
             ["X", "Y"], False)
    with pytest.raises(DependencyError, match="cannot depend on itself"):
        plan([BatchItem("x", depends_on=("#0",))], ["X"], False)
    with pytest.raises(DependencyError, match="names no job of this batch"):
        plan([BatchItem("x", {"f": "job:#3/a"})], ["X"], False)
    chained = plan([BatchItem("x"), BatchItem("y"), BatchItem("z")], ["X", "Y", "Z"], True)
    assert chained.depends_on == [[], ["X"], ["Y"]]


def test_a_batch_file_is_json_or_toml_and_a_bad_one_is_one_line():
    assert parse_batch_file('[{"kind": "noop"}]', toml=False) == ([{"kind": "noop"}], False)
    toml = 'pipeline = true\n[[jobs]]\nkind = "noop"\n[[jobs]]\nkind = "sleep"\n' \
        'args = { seconds = 1 }\n'
    assert parse_batch_file(toml, toml=True) == (
        [{"kind": "noop"}, {"kind": "sleep", "args": {"seconds": 1}}], True)
    for text, problem in (("{", "not valid JSON"), ('{"jobs": 3}', "expected a list"),
                          ('{"jobs": [], "x": 1}', "unknown key 'x'")):
        with pytest.raises(ValueError, match=problem) as info:
            parse_batch_file(text, toml=False)
        assert "\n" not in str(info.value)


# --- the queue, both backends ---------------------------------------------------------------

async def test_500_jobs_in_one_batch_reach_100_percent_and_complete_once(
        make_settings, open_queue) -> None:
    queue, _ = await open_queue(make_settings("[limits]\nmax_running = 8\n"))
    ends: list[Event] = []
    seen = asyncio.Event()

    def on_end(event: Event) -> bool:
        return event.type == EventType.BATCH_COMPLETED

    with queue.bus.subscribe(on_end) as sub:
        batch, jobs = await queue.submit_batch("alice", [{"kind": "noop"}] * 500)
        assert len(jobs) == 500 and len({j.id for j in jobs}) == 500
        assert all(j.state is State.QUEUED for j in jobs)
        percents = []
        while not seen.is_set():
            got = await queue.get_batch(batch.id)
            assert got is not None
            percents.append(got.to_json()["percent"])
            try:
                ends.append(await asyncio.wait_for(sub.get(), 0.2))
                seen.set()
            except TimeoutError:
                continue
    assert percents == sorted(percents), "the percent never goes back"
    final = await queue.get_batch(batch.id)
    assert final is not None and final.state == "completed"
    shown = final.to_json()
    assert shown["percent"] == 100.0 and shown["summary"] == "100.0 % (500/500)"
    assert shown["counts"]["completed"] == 500 and shown["jobs"] == [j.id for j in jobs]
    assert ends[0].data["batch_id"] == batch.id and ends[0].owner == "alice"
    stored = [e for e in await queue.store.events_after(0, limit=100_000)
              if e.type.startswith("batch.")]
    assert [e.type for e in stored] == ["batch.created", "batch.completed"]


async def test_a_pipeline_batch_passes_files_from_step_to_step(make_settings, open_queue,
                                                               tmp_path: Path) -> None:
    queue, _ = await open_queue(make_settings(kinds=PIPELINE_KINDS))
    gate = tmp_path / "gate"
    gate.touch()
    batch, (generate, transform, checksum) = await queue.submit_batch("alice", [
        {"kind": "generate", "args": {"gate": str(gate), "count": 50}},
        {"kind": "transform", "args": {"input": "job:#0/numbers.txt"}},
        {"kind": "checksum", "args": {"file": "job:#1/sorted.txt"}},
    ], pipeline=True)
    assert transform.depends_on == [generate.id] and checksum.depends_on == [transform.id]
    assert transform.args == {"input": f"job:{generate.id}/numbers.txt"}
    done = await wait_state(queue, checksum.id, "completed", "failed")
    assert done.state is State.COMPLETED, done.error
    digest = hashlib.sha256(expected_sorted(50)).hexdigest()
    assert any(line.startswith(digest) for _, line in await queue.store.logs(checksum.id))
    ended = await queue.get_batch(batch.id)
    assert ended is not None and ended.state == "completed"


async def test_a_failed_step_fails_the_rest_and_the_batch(make_settings, open_queue) -> None:
    queue, _ = await open_queue(make_settings(kinds=PIPELINE_KINDS))
    batch, jobs = await queue.submit_batch(
        "alice", [{"kind": "boom"}, {"kind": "noop"}, {"kind": "noop"}], pipeline=True)
    await wait_state(queue, jobs[2].id, "failed")
    got = await queue.get_batch(batch.id)
    assert got is not None and got.state == "failed" and got.counts == {"failed": 3}
    assert got.ended_at is not None


async def test_a_bad_batch_is_refused_whole(make_settings, open_queue) -> None:
    queue, _ = await open_queue(make_settings(), worker=False)
    bobs, _ = await queue.submit("bob", "noop")
    bad = [
        ([{"kind": "noop", "depends_on": ["#1"]}, {"kind": "noop", "depends_on": ["#0"]}],
         DependencyError, "a cycle"),
        ([{"kind": "noop", "depends_on": [bobs.id]}], DependencyError, "of yours"),
        ([{"kind": "noop"}, {"kind": "nope"}], ArgumentError, r"jobs\[1\].kind"),
        ([{"kind": "sleep", "args": {"seconds": -1}}], ArgumentError, r"jobs\[0\].args.seconds"),
        ([{"kind": "noop", "extra": 1}], ArgumentError, "unknown field"),
        ([], ArgumentError, "at least one job"),
    ]
    for jobs, error, problem in bad:
        with pytest.raises(error, match=problem):
            await queue.submit_batch("alice", jobs)
    assert [j.id for j in (await queue.store.list_jobs(None)).jobs] == [bobs.id]


async def test_quotas_take_a_whole_batch_or_none_of_it(make_settings, open_queue) -> None:
    settings = make_settings("[limits]\nper_user_queued = 10\n")
    settings.server.max_batch = 20
    queue, _ = await open_queue(settings, worker=False)
    await queue.submit("alice", "noop")
    with pytest.raises(QueueFull, match="9 of the batch's 10 jobs would fit"):
        await queue.submit_batch("alice", [{"kind": "noop"}] * 10)
    assert len((await queue.store.list_jobs("alice")).jobs) == 1
    _, jobs = await queue.submit_batch("alice", [{"kind": "noop"}] * 9)
    assert len(jobs) == 9
    with pytest.raises(ArgumentError, match="at most 20"):
        await queue.submit_batch("bob", [{"kind": "noop"}] * 21)


# --- the API and the command line -------------------------------------------------------------

def test_the_batch_routes_and_submit_batch_file(start_server) -> None:
    server = start_server("[limits]\nper_user_queued = 5\n", kinds=TEST_KINDS,
                          args=("--no-worker",))
    with server.client("bob") as bob, server.client("carol") as carol:
        made = bob.post("/api/batches", json={"jobs": [
            {"kind": "noop"}, {"kind": "noop", "depends_on": ["#0"]}]})
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["state"] == "running" and body["summary"] == "0.0 % (0/2)"
        assert [j["state"] for j in body["jobs"]] == ["queued", "queued"]
        assert body["jobs"][1]["message"] == "waiting for 1 job"
        got = bob.get(f"/api/batches/{body['id']}")
        assert got.status_code == 200 and got.json()["counts"]["queued"] == 2
        assert carol.get(f"/api/batches/{body['id']}").status_code == 404
        paths = bob.get("/openapi.json").json()["paths"]
        assert "post" in paths["/api/batches"] and "get" in paths["/api/batches/{batch_id}"]
        full = bob.post("/api/batches", json={"jobs": [{"kind": "noop"}] * 4})
        assert full.status_code == 429, full.text
        assert "3 of the batch's 4 jobs would fit" in full.json()["error"]["message"]
        cycle = bob.post("/api/batches", json={"jobs": [
            {"kind": "noop", "depends_on": ["#1"]}, {"kind": "noop", "depends_on": ["#0"]}]})
        assert cycle.status_code == 422 and "a cycle" in cycle.json()["error"]["message"]
        assert len(bob.get("/api/jobs").json()["jobs"]) == 2
    spec = server.folder / "jobs.toml"
    spec.write_text('[[jobs]]\nkind = "noop"\n[[jobs]]\nkind = "noop"\n')
    cli = server.cli("submit", "--batch", str(spec), "--pipeline", user="carol")
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].endswith("running 0.0 % (0/2)")
    bad = server.folder / "bad.json"
    bad.write_text(json.dumps({"jobs": [{"kind": "noop", "depends_on": ["#0"]}]}))
    refused = server.cli("submit", "--batch", str(bad), user="carol")
    assert refused.returncode == 1 and "cannot depend on itself" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    missing = server.cli("submit", "--batch", str(server.folder / "none.json"), user="carol")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_a_batch_record_shows_its_jobs_in_the_batchs_order():
    batch = Batch("B", "alice", 0.0, 2, job_ids=("J1", "J2"),
                  counts={"completed": 1, "running": 1}, progress=50.0)
    shown = batch.to_json()
    assert shown["state"] == "running" and shown["summary"] == "75.0 % (1/2)"
    assert shown["jobs"] == ["J1", "J2"] and shown["counts"]["queued"] == 0
