"""Chaos, the short version of bench/chaos.py (issue 12): per backend, one campaign of a
few hundred short jobs through three real `jobgate worker` processes (two started with
`--name`, one without), with a handful of SIGKILLs (one while the worker starts a job),
SIGSTOPs longer than the lease and a SIGTERM at random under load; then one test per
invariant, each from the same campaign's record.

The long campaign and how each check works: bench/chaos.py and bench/chaos_checks.py.

Some invariants fail on today's code, because of the defects issue 12 lists under item 0;
those tests are marked xfail (not strict: a campaign may miss a defect by chance) until the
fixes land, then the marks go.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from conftest import Backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from chaos import Plan, campaign
from chaos_checks import Verdict

SEED = 12
SHORT = {"jobs": 240, "kills": 5, "stops": 2, "terms": 1, "job_s": (0.05, 0.3)}


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


@pytest.mark.xfail(reason="issue 12 item 0: a worker resumed after a pause starts a job it "
                   "had claimed before, on a lease that ran out, while the job runs again "
                   "elsewhere; on PostgreSQL a claim can get an already expired lease",
                   strict=False)
def test_nothing_completes_twice(chaos: Verdict) -> None:
    assert_none(chaos, "completed twice")


def test_no_completion_comes_from_a_stale_lease(chaos: Verdict) -> None:
    assert_none(chaos, "stale-lease completion", "run without a claim")


@pytest.mark.xfail(reason="issue 12 item 0: a resumed worker kills the re-run of its own "
                   "job elsewhere (by the job's id, not its own processes)", strict=False)
def test_no_healthy_run_is_cut_short(chaos: Verdict) -> None:
    assert_none(chaos, "healthy run cut short")


@pytest.mark.xfail(reason="issue 12 item 0: a SIGKILLed worker started with --name leaves "
                   "its jobs' grandchildren running; a worker killed as it starts a job "
                   "leaves that process running", strict=False)
def test_no_process_outlives_its_worker(chaos: Verdict) -> None:
    assert_none(chaos, "orphan process", "run outlived its worker")


@pytest.mark.xfail(reason="issue 12 item 0: runs on lost leases (a stale claim on "
                   "PostgreSQL, a resumed worker's start) run beside their re-run",
                   strict=False)
def test_the_limits_hold_at_every_sample(chaos: Verdict) -> None:
    assert_none(chaos, "max_running exceeded", "per_user_running exceeded",
                "database over a limit")
