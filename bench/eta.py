"""How good `eta_s` is: a mixed workload submitted at several depths, each job's `eta_s`
at submit against the moment it really started.

An in-process `JobQueue` and `Worker` on a fresh SQLite file, `[limits] max_running = 2`
and `per_user_running = 1` (so the per-user cap shapes the order too), three command kinds
that sleep about 0.5, 1.2 and 2.5 s (each job +-25 % at random, so no two runs of a kind
take the same time), from three users. A warm-up runs a few jobs of each kind (the
estimates learn the kinds' run times from them); then, for each depth, from an empty
queue, that many jobs (random kind and user) are submitted at once and each one's
estimate is taken as the submit answer has it (`Estimates.annotate`, as `POST /api/jobs`
does), until all have run. Each job's error is |eta_s - (started_at - time of its
estimate)|; the relative error divides it by the real wait (at least 1 s). Beside the
simulation, the naive formula `(position - 1) x mean run time / slots` is scored on the
same jobs, for comparison; and so is the estimate taken once the whole burst is in (the
estimates at submit also pay for later jobs that the fair turns put first, which no
estimate can know of). Runs in about two minutes.

    uv run python bench/eta.py [--depths 5,20,50] [--rounds 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from jobgate.config import load_settings
from jobgate.model import Job, State
from jobgate.queue import JobQueue
from jobgate.store import store_for_url
from jobgate.worker import Worker

KINDS = {"short": 0.5, "mid": 1.2, "long": 2.5}  # kind: mean sleep (s)
NOISE = 0.25
USERS = ("ann", "ben", "cat")
SLOTS = 2
CONFIG = f"""
[limits]
max_running = {SLOTS}
per_user_running = 1
""" + "".join(f"""
[kinds.{name}]
argv = ["sleep", "{{seconds}}"]
[kinds.{name}.args]
seconds = {{ type = "number", min = 0, max = 60 }}
""" for name in KINDS)


def _seconds(rng: random.Random, kind: str) -> float:
    return round(KINDS[kind] * rng.uniform(1 - NOISE, 1 + NOISE), 3)


async def _drain(queue: JobQueue, ids: list[str], timeout_s: float = 300) -> list[Job]:
    """The jobs once every one of them ended (polling the store: a bench, not a test)."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [await queue.get(i) for i in ids]
        if all(j is not None and j.state not in (State.QUEUED, State.RUNNING) for j in jobs):
            return [j for j in jobs if j is not None]
        if time.monotonic() > deadline:
            raise SystemExit("the jobs did not end in time")
        await asyncio.sleep(0.1)


Sample = tuple[float, float, float, float | None, float]


async def _round(queue: JobQueue, rng: random.Random, depth: int, mean_run_s: float
                 ) -> list[Sample]:
    """Per job of one burst of `depth` submits: (eta_s at submit, naive estimate, real wait
    from then, eta_s once the whole burst is in, real wait from then)."""
    seen: list[tuple[str, float, float | None, float]] = []  # id, when, eta_s, naive
    for _ in range(depth):
        kind = rng.choice(list(KINDS))
        job, _ = await queue.submit(rng.choice(USERS), kind, {"seconds": _seconds(rng, kind)})
        shown = queue.to_json(job)
        await queue.estimates.annotate([job], [shown])
        when = time.time()
        position = shown["position"] or 1
        naive = (position - 1) * mean_run_s / SLOTS if job.state is State.QUEUED else 0.0
        seen.append((job.id, when, shown["eta_s"], naive))
    # Once all are in: what the model makes of the whole burst (the estimates at submit
    # also pay for the jobs submitted after them that the fair turns put first).
    after = await queue.estimates.current()
    after_at = time.time()
    ended = {j.id: j for j in await _drain(queue, [s[0] for s in seen])}
    out: list[Sample] = []
    for job_id, when, eta_s, naive in seen:
        started = ended[job_id].started_at
        if eta_s is None or started is None:
            continue
        later = after.eta_s.get(job_id)
        if later is None and job_id in after.remaining_s:
            later = 0.0
        out.append((eta_s, naive, max(0.0, started - when), later,
                    max(0.0, started - after_at)))
    return out


def _row(depth: int, samples: list[Sample], asked: int) -> str:
    errors = sorted(abs(e - real) for e, _, real, _, _ in samples)
    naive = sorted(abs(n - real) for _, n, real, _, _ in samples)
    relative = [abs(e - real) / max(real, 1.0) for e, _, real, _, _ in samples]
    waits = [real for _, _, real, _, _ in samples]
    after = sorted(abs(e - real) for _, _, _, e, real in samples if e is not None)

    def p90(values: list[float]) -> float:
        return values[max(0, -(-9 * len(values) // 10) - 1)] if values else math.nan

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else math.nan

    return (f"| {depth} | {len(samples)}/{asked} | {med(waits):.1f} | "
            f"{med(errors):.2f} | {p90(errors):.2f} | {med(relative) * 100:.0f} % | "
            f"{med(after):.2f} | {p90(after):.2f} | {med(naive):.2f} | {p90(naive):.2f} |")


async def main(depths: list[int], rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="jobgate-eta-") as tmp:
        folder = Path(tmp)
        (folder / "jobgate.toml").write_text(
            f'[server]\ndata_dir = "{folder / "data"}"\n'
            f'[storage]\nurl = "sqlite:///{folder / "jobgate.db"}"\n' + CONFIG)
        settings = load_settings(folder / "jobgate.toml", env={})
        queue = JobQueue(settings, store_for_url(settings.storage.url))
        await queue.open()
        worker = Worker(queue, slots=SLOTS)
        task = asyncio.create_task(worker.run())
        try:
            warm = []
            for kind in KINDS:
                for _ in range(3):
                    job, _ = await queue.submit(rng.choice(USERS), kind,
                                                {"seconds": _seconds(rng, kind)})
                    warm.append(job.id)
            runs = [j.finished_at - j.started_at for j in await _drain(queue, warm)
                    if j.finished_at is not None and j.started_at is not None]
            mean_run_s = statistics.mean(runs)
            lines = [
                f"eta_s at submit against the real start: {SLOTS} slots, per_user_running = 1,"
                f" kinds {', '.join(f'{k} ~{v} s' for k, v in KINDS.items())} (+-"
                f"{NOISE * 100:.0f} %), {len(USERS)} users, {rounds} bursts per depth",
                "",
                "| depth | jobs with eta_s | median wait (s) | median abs error (s) | "
                "p90 abs error (s) | median relative error | after the burst: median (s) | "
                "after: p90 (s) | naive formula: median (s) | naive: p90 (s) |",
                "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for depth in depths:
                samples: list[Sample] = []
                for _ in range(rounds):
                    samples += await _round(queue, rng, depth, mean_run_s)
                lines.append(_row(depth, samples, depth * rounds))
                print(lines[-1], flush=True)
            print()
            print("\n".join(lines))
            print(f"\nload average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            worker.stop()
            await task
            await queue.close()


def _parse() -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="5,20,50")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    asyncio.run(main([int(d) for d in args.depths.split(",")], args.rounds, args.seed))
