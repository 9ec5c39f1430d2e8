"""Chaos, the short version of bench/chaos.py (issue 12): per backend, one campaign of a
few hundred short jobs through three real `jobgate worker` processes (two started with
`--name`, one without), with a handful of SIGKILLs (one while the worker starts a job),
SIGSTOPs longer than the lease and a SIGTERM at random under load; then one test per
invariant, each from the same campaign's record.

The long campaign and how each check works: bench/chaos.py and bench/chaos_checks.py.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from chaos import Plan, campaign
from chaos_checks import JobView, NodeLife, Observed, ProcTrack, Run, Sample, Verdict, check

SEED = 12
# A 4 s lease: with 2 s, on a machine at load 20 a live node's renewals came late enough
# that its jobs were taken back (2 of 12 campaigns); with 4 s, 12 of 12 clean there.
SHORT = {"jobs": 240, "kills": 5, "stops": 2, "terms": 1, "job_s": (0.05, 0.3),
         "lease_s": 4.0}


@pytest.fixture(scope="module")
def chaos(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Verdict:
    """One short campaign on the module's backend (about 30-50 s)."""
    folder = tmp_path_factory.mktemp(f"chaos-{backend.name}")
    plan = Plan(backend.name, seed=SEED, **SHORT)  # type: ignore[arg-type]
    verdict, _ = asyncio.run(campaign(plan, folder, backend.new_url(folder)))
    print("\n".join(f"{k}: {v}" for k, v in verdict.figures.items()))
    return verdict


def assert_none(verdict: Verdict, *kinds: str) -> None:
    found = [line for line in verdict.every_violation if line.split(":")[0] in kinds]
    assert not found, f"seed {SEED}: {len(found)} violations:\n" + "\n".join(found[:10])


def test_the_campaign_did_its_chaos(chaos: Verdict) -> None:
    figures = chaos.figures
    assert figures["jobs submitted / acknowledged"] == "240 / 240"
    assert figures["SIGKILLs (while starting a job) / SIGSTOPs / SIGTERMs"].startswith("5 (")
    assert figures["SIGKILLs (while starting a job) / SIGSTOPs / SIGTERMs"].endswith(
        "/ 2 / 1")


def test_nothing_acknowledged_is_lost(chaos: Verdict) -> None:
    assert_none(chaos, "lost", "malformed side effect")


def test_every_job_completes(chaos: Verdict) -> None:
    assert_none(chaos, "not completed")


def test_nothing_completes_twice(chaos: Verdict) -> None:
    assert_none(chaos, "completed twice")


def test_no_completion_comes_from_a_stale_lease(chaos: Verdict) -> None:
    assert_none(chaos, "stale-lease completion", "run without a claim")


def test_no_healthy_run_is_cut_short(chaos: Verdict) -> None:
    assert_none(chaos, "healthy run cut short")


def test_no_process_outlives_its_worker(chaos: Verdict) -> None:
    assert_none(chaos, "orphan process", "run outlived its worker")


def test_the_limits_hold_at_every_sample(chaos: Verdict) -> None:
    assert_none(chaos, "max_running exceeded", "per_user_running exceeded",
                "database over a limit")


# --- the checks themselves, on made-up records (no processes) -------------------------------

def _record(**change: Any) -> Observed:
    """One job, claimed by node 0 at t=10, run from 10.1 to 10.5, completed at 10.6."""
    base = Observed(
        acknowledged={"j1": "alice"}, submit_errors=0,
        jobs={"j1": JobView("completed", "n0", None)},
        events=[(1, "job.queued", 9.0, "j1", {}), (2, "job.started", 10.0, "j1",
                                                  {"worker": "n0"}),
                (3, "job.completed", 10.6, "j1", {})],
        runs=[Run("j1", 0, 100, 10.1, 10.5, 0.4)], malformed_lines=0,
        nodes=[NodeLife(0, 0, "n0", True, 50, 1.0)],
        procs=[ProcTrack(100, "j1", 0, 10.1, 10.5)],
        samples=[Sample(10.2, ("j1",))], db_samples=[(10.2, 1, {"alice": 1})],
        max_running=1, per_user_running=1, lease_s=2.0, orphan_deadline_s=5.0)
    for key, value in change.items():
        setattr(base, key, value)
    return base


def _killed_at(t: float) -> list[NodeLife]:
    return [NodeLife(0, 0, "n0", True, 50, 1.0, ended=t, how="kill"),
            NodeLife(1, 0, "n0", True, 51, t + 0.001)]


@pytest.mark.parametrize(("change", "found"), [
    ({}, {}),
    ({"jobs": {}}, {"lost": 1}),
    ({"jobs": {"j1": JobView("running", "n0", None)}}, {"lost": 1}),
    ({"jobs": {"j1": JobView("cancelled", "n0", None)}}, {"not completed": 1}),
    # A second run that reached its end, on a node nobody touched: twice.
    ({"runs": [Run("j1", 0, 99, 10.05, 10.08, 0.03), Run("j1", 0, 100, 10.1, 10.5, 0.4)]},
     {"completed twice": 1}),
    # ... but not when its worker was killed before it could report the end (the worker
    # restarted under the same name claims it again).
    ({"runs": [Run("j1", 0, 99, 10.1, 10.5, 0.4), Run("j1", 1, 100, 11.6, 11.9, 0.3)],
      "nodes": _killed_at(10.6), "procs": [],
      "events": [(1, "job.queued", 9.0, "j1", {}),
                 (2, "job.started", 10.0, "j1", {"worker": "n0"}),
                 (3, "job.started", 11.5, "j1", {"worker": "n0"}),
                 (4, "job.completed", 12.0, "j1", {})]}, {}),
    # A SIGTERM excuses only the instant it takes to reach the job: a run that ended before
    # it was sent had the time to be stored...
    ({"runs": [Run("j1", 0, 99, 10.1, 10.5, 0.4), Run("j1", 1, 100, 11.6, 11.9, 0.3)],
      "nodes": [NodeLife(0, 0, "n0", True, 50, 1.0, ended=10.8, how="term", termed=10.6),
                NodeLife(1, 0, "n0", True, 51, 10.9)], "procs": [],
      "events": [(1, "job.queued", 9.0, "j1", {}),
                 (2, "job.started", 10.0, "j1", {"worker": "n0"}),
                 (3, "job.started", 11.5, "j1", {"worker": "n0"}),
                 (4, "job.completed", 12.0, "j1", {})]}, {"completed twice": 1}),
    # ... one that ended as the SIGTERM was passed on was still exiting: handed back.
    ({"runs": [Run("j1", 0, 99, 10.1, 10.62, 0.5), Run("j1", 1, 100, 11.6, 11.9, 0.3)],
      "nodes": [NodeLife(0, 0, "n0", True, 50, 1.0, ended=10.8, how="term", termed=10.6),
                NodeLife(1, 0, "n0", True, 51, 10.9)], "procs": [],
      "events": [(1, "job.queued", 9.0, "j1", {}),
                 (2, "job.started", 10.0, "j1", {"worker": "n0"}),
                 (3, "job.started", 11.5, "j1", {"worker": "n0"}),
                 (4, "job.completed", 12.0, "j1", {})]}, {}),
    ({"events": [(1, "job.queued", 9.0, "j1", {}),
                 (2, "job.started", 10.0, "j1", {"worker": "n0"}),
                 (3, "job.completed", 10.6, "j1", {}), (4, "job.completed", 10.7, "j1", {})]},
     {"completed twice": 1}),
    # The stored completion is not the run's claim: a claim by another node came later.
    ({"events": [(1, "job.queued", 9.0, "j1", {}),
                 (2, "job.started", 10.0, "j1", {"worker": "n0"}),
                 (3, "job.started", 10.3, "j1", {"worker": "n9"}),
                 (4, "job.completed", 10.6, "j1", {})]}, {"stale-lease completion": 1}),
    ({"runs": [Run("j1", 0, 100, 10.1, 10.5, 0.4), Run("j1", 0, 101, 10.2, None, 0.4)]},
     {"healthy run cut short": 1}),
    ({"nodes": _killed_at(20.0), "procs": [ProcTrack(101, "j1", 0, 10.1, 25.5)]},
     {"orphan process": 1}),
    # Killed as it started the job, the worker left it running: it wrote its end later.
    ({"nodes": _killed_at(10.2), "runs": [Run("j1", 0, 100, 10.1, 11.0, 0.4)],
      "jobs": {"j1": JobView("failed", "n0", "worker lost")},
      "events": [(1, "job.queued", 9.0, "j1", {}),
                 (2, "job.started", 10.0, "j1", {"worker": "n0"}),
                 (3, "job.failed", 12.0, "j1", {})]},
     {"run outlived its worker": 1, "not completed": 1}),
    ({"samples": [Sample(10.2, ("j1", "j2"))]}, {"max_running exceeded": 1}),
    # A lost run's process, taken back just before the sample and gone just after, is
    # being killed: not counted...
    ({"samples": [Sample(10.2, ("j1", "j2"))],
      "procs": [ProcTrack(100, "j1", 0, 10.1, 10.5), ProcTrack(200, "j2", 0, 8.0, 10.2)],
      "events": [*_record().events, (4, "job.retrying", 10.15, "j2",
                                     {"message": "recovered after its worker was lost"})]},
     {}),
    # ... but one that lives on after it was taken back is.
    ({"samples": [Sample(10.2, ("j1", "j2"))],
      "procs": [ProcTrack(100, "j1", 0, 10.1, 10.5), ProcTrack(200, "j2", 0, 8.0, 11.0)],
      "events": [*_record().events, (4, "job.retrying", 10.15, "j2",
                                     {"message": "recovered after its worker was lost"})]},
     {"max_running exceeded": 1}),
])
def test_each_check_finds_what_it_is_for(change: dict[str, Any], found: dict[str, int]
                                         ) -> None:
    verdict = check(_record(**change))
    assert verdict.counts == found, verdict.every_violation
