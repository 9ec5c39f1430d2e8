"""The invariants of the chaos campaign (bench/chaos.py), checked after the run from what
it recorded: the store's events and jobs, the side effect each run of a job leaves (a line
at its start and one at its end, in a file per job), the job processes seen alive by a
sampler, and the life of every worker process (started, SIGKILLed, SIGTERMed, stopped).

Pure functions over plain records, so each check can be read, and tested, alone.

Words used here:
- a *claim* is a `job.started` event (the store gave the job to a worker by name);
- a *run* is one execution of the job's command, known from its side effect: it names the
  worker process (the campaign's index of it, from the CHAOS_NODE environment variable
  every job process inherits) and its own pid, and says when it started and ended;
- a worker is *disturbed* at a moment when the campaign killed, terminated or stopped it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

# Clock slack between a commit's timestamp and a side effect's (same machine, same clock):
# what one line of shell takes to write a timestamp it read a moment before.
EPSILON_S = 0.05
# A job process still writing this long after its worker was SIGKILLed ran unsupervised
# (the kernel's kill-on-parent-death is asynchronous, but takes microseconds, not this).
UNSUPERVISED_AFTER_S = 0.5
# How much longer than it planned a run may take on a loaded machine.
RUN_SLACK_S = 5.0


@dataclass
class NodeLife:
    """One worker process: its slot in the fleet, the name it registered with."""

    index: int
    slot: int
    name: str
    named: bool  # started with --name (else its name is host:pid)
    pid: int
    started: float
    ended: float | None = None  # SIGKILL sent, or the process seen gone after SIGTERM
    how: str | None = None  # "kill", "kill-at-start", "term", "final"
    termed: float | None = None  # SIGTERM sent
    # (worker stopped, its job processes stopped, its job processes continued)
    stops: list[tuple[float, float, float]] = field(default_factory=list)


@dataclass
class Run:
    job_id: str
    node: int
    pid: int
    start: float
    end: float | None = None
    seconds: float | None = None  # how long it meant to work


@dataclass
class ProcTrack:
    """A job process the sampler saw: when first, and when last alive (stopped counts)."""

    pid: int
    job_id: str
    node: int
    first_seen: float
    last_alive: float


@dataclass
class Sample:
    ts: float
    jobs: tuple[str, ...]  # distinct jobs with a live, not stopped process (see chaos.py)


@dataclass
class Claim:
    seq: int
    ts: float
    worker: str


@dataclass
class JobView:
    state: str
    worker: str | None
    error: str | None


@dataclass
class Observed:
    """Everything a campaign recorded, handed to `check`."""

    acknowledged: dict[str, str]  # job id -> owner
    submit_errors: int
    jobs: dict[str, JobView]  # the store's final rows, by id
    events: list[tuple[int, str, float, str | None, dict[str, Any]]]  # seq, type, ts, job, data
    runs: list[Run]
    malformed_lines: int
    nodes: list[NodeLife]
    procs: list[ProcTrack]
    samples: list[Sample]
    db_samples: list[tuple[float, int, dict[str, int]]]  # ts, running, per owner
    max_running: int
    per_user_running: int | None
    lease_s: float
    orphan_deadline_s: float


@dataclass
class Verdict:
    figures: dict[str, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)  # the first 5 of each kind
    every_violation: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # violations by invariant


def parse_runs(texts: dict[str, str]) -> tuple[list[Run], int]:
    """Runs from the per-job side-effect files (`start|end JOB NODE PID PPID EPOCH`, and
    the seconds it means to work on a start line)."""
    runs: list[Run] = []
    malformed = 0
    for text in texts.values():
        open_runs: dict[int, Run] = {}
        for line in text.splitlines():
            parts = line.split()
            try:
                what, job_id, node, pid, t = parts[0], parts[1], int(parts[2]), \
                    int(parts[3]), float(parts[5])
            except (IndexError, ValueError):
                malformed += 1
                continue
            if what == "start":
                run = Run(job_id, node, pid, t,
                          seconds=float(parts[6]) if len(parts) > 6 else None)
                open_runs[pid] = run
                runs.append(run)
            elif what == "end" and pid in open_runs and open_runs[pid].end is None:
                open_runs.pop(pid).end = t
            else:
                malformed += 1
    return runs, malformed


def _disturbed_during(node: NodeLife, run: Run) -> bool:
    """Did the campaign kill, terminate or stop this worker while the run may have been
    going on: from its start (or up to UNSUPERVISED_AFTER_S before it: a run that starts as
    the kernel tears its killed worker down) until its planned end, plus RUN_SLACK_S for a
    loaded machine?"""
    start = run.start - UNSUPERVISED_AFTER_S
    until = run.start + (run.seconds if run.seconds is not None else 1e9) + RUN_SLACK_S
    if node.ended is not None and start <= node.ended <= until:
        return True
    return any(start <= stopped <= until for stopped, _, _ in node.stops)


def _report_lost(node: NodeLife, end: float, lease_s: float) -> bool:
    """A run that ended at `end` whose result its worker could not have stored: the worker
    was SIGKILLed, or stopped, just after (within a lease), before reporting. A SIGKILLed
    worker takes a moment to die, and its job with it: an end written up to
    UNSUPERVISED_AFTER_S after the kill counts as before it. A SIGTERM excuses only the
    instant it takes the worker to pass it on: work that ended between the worker's SIGTERM
    and its job's (up to UNSUPERVISED_AFTER_S after) is in a process that had not exited
    yet, is stopped and handed back; any other run the worker had the time to store."""
    if node.ended is not None and node.how in ("kill", "kill-at-start") and \
            end - UNSUPERVISED_AFTER_S <= node.ended <= end + lease_s:
        return True
    if node.how == "term" and node.termed is not None and \
            node.termed - EPSILON_S <= end <= node.termed + UNSUPERVISED_AFTER_S:
        return True
    return any(stopped - lease_s <= end <= children_stopped + EPSILON_S
               for stopped, children_stopped, _ in node.stops)


def check(o: Observed) -> Verdict:
    v = Verdict()
    nodes = {n.index: n for n in o.nodes}

    def violate(what: str, line: str) -> None:
        v.counts[what] = v.counts.get(what, 0) + 1
        v.every_violation.append(f"{what}: {line}")
        if len([x for x in v.violations if x.startswith(what)]) < 5:
            v.violations.append(f"{what}: {line}")

    # --- nothing acknowledged is lost ----------------------------------------------------
    states = Counter(j.state for j in o.jobs.values())
    missing = [i for i in o.acknowledged if i not in o.jobs]
    unfinished = [i for i in o.acknowledged
                  if i in o.jobs and o.jobs[i].state not in ("completed", "failed", "cancelled")]
    queued_events = {e[3] for e in o.events if e[1] == "job.queued"}
    for i in missing:
        violate("lost", f"{i} acknowledged, not in the store")
    for i in unfinished:
        violate("lost", f"{i} still {o.jobs[i].state} after the drain")
    for i in o.acknowledged:
        if i in o.jobs and i not in queued_events:
            violate("lost", f"{i} has no job.queued event")
    # The campaign cancels nothing and allows 100 attempts: every job must complete.
    for i, final in o.jobs.items():
        if final.state in ("failed", "cancelled"):
            violate("not completed", f"{i} ended {final.state} ({final.error}), unasked")

    # --- claims, completions and runs, per job -------------------------------------------
    claims: dict[str, list[Claim]] = defaultdict(list)
    completed_at: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for seq, typ, ts, job_id, data in o.events:
        if job_id is None:
            continue
        if typ == "job.started":
            claims[job_id].append(Claim(seq, ts, str(data.get("worker"))))
        elif typ == "job.completed":
            completed_at[job_id].append((seq, ts))
    runs_of: dict[str, list[Run]] = defaultdict(list)
    for run in o.runs:
        runs_of[run.job_id].append(run)

    run_claim: dict[int, Claim | None] = {}  # id(run) -> its claim
    for job_id, runs in runs_of.items():
        for run in runs:
            node = nodes.get(run.node)
            # Its node's claims (a restarted worker may have the same name: by its life).
            mine = [c for c in claims.get(job_id, [])
                    if node is not None and c.worker == node.name
                    and node.started - EPSILON_S <= c.ts <= run.start + EPSILON_S
                    and (node.ended is None or c.ts <= node.ended + EPSILON_S)]
            run_claim[id(run)] = max(mine, key=lambda c: c.seq) if mine else None
            if not mine:
                violate("run without a claim", f"{job_id} run pid {run.pid} on node "
                        f"{run.node} at {run.start:.3f}")

    late = sum(1 for r in o.runs if (c := run_claim.get(id(r))) is not None
               and r.start - c.ts > o.lease_s)
    twice = stale = excused = ended_twice_raw = twice_while_paused = twice_late = 0
    twice_termed = 0
    for job_id in o.acknowledged:
        job = o.jobs.get(job_id)
        runs = runs_of.get(job_id, [])
        ended = [r for r in runs if r.end is not None]
        if len(ended) >= 2:
            ended_twice_raw += 1
        done = completed_at.get(job_id, [])
        if len(done) >= 2:
            violate("completed twice", f"{job_id} has {len(done)} job.completed events")
            twice += 1
            continue
        if job is None or job.state != "completed":
            continue
        if not done:
            violate("stale-lease completion", f"{job_id} is completed without a "
                    "job.completed event")
            stale += 1
            continue
        done_seq, done_ts = done[0]
        before = [c for c in claims.get(job_id, []) if c.seq < done_seq]
        latest = max(claims.get(job_id, []), key=lambda c: c.seq, default=None)
        winner = max(before, key=lambda c: c.seq, default=None)
        own = [r for r in ended if winner is not None and run_claim.get(id(r)) is winner]
        problem = None
        if winner is None or latest is not winner:
            problem = "its completion is not from its latest claim"
        elif job.worker is not None and job.worker != winner.worker:
            problem = f"stored worker {job.worker} is not the latest claim's {winner.worker}"
        elif not own:
            problem = f"no run of the completing claim ({winner.worker}) ended"
        elif own[0].end is not None and own[0].end > done_ts + EPSILON_S:
            problem = "the completing run ended after the completion was stored"
        if problem is not None:
            violate("stale-lease completion", f"{job_id}: {problem}")
            stale += 1
            continue
        if len(own) > 1:
            twice += 1
            violate("completed twice", f"{job_id}: {len(own)} runs of one claim ended")
            continue
        others = [r for r in ended if r is not own[0]]
        bad = [r for r in others if r.end is not None and not
               _report_lost(nodes[r.node], r.end, o.lease_s)] if others else []
        excused += 1 if others and not bad else 0
        if bad:
            twice += 1
            # On SQLite a worker stopped in a write holds every node's writes (renewals
            # too) until it is continued: say so when that is when a run's report was due.
            paused = sorted({n.index for r in bad for n in o.nodes if n.index != r.node
                             and any(a - o.lease_s <= (r.end or 0) <= c
                                     for a, _, c in n.stops)})
            if paused:
                twice_while_paused += 1
            # A run that began more than a lease after its claim began on a lease that had
            # already run out (unless renewed before its process started).
            late_runs = [r for r in bad if (c := run_claim.get(id(r))) is not None
                         and r.start - c.ts > o.lease_s]
            if late_runs:
                twice_late += 1
            termed = [r for r in bad if nodes[r.node].how == "term" and r.end is not None
                      and (nodes[r.node].ended or 0) >= r.end
                      and (nodes[r.node].termed or r.end) >= r.end - o.lease_s]
            if termed:
                twice_termed += 1
            violate("completed twice", f"{job_id}: {len(ended)} runs reached their end; "
                    + ", ".join(f"node {r.node} pid {r.pid} {r.start:.3f}-{r.end:.3f}"
                                for r in ended)
                    + (f" (a run ended while node {paused} was stopped)" if paused else "")
                    + (" (a run started more than a lease after its claim)"
                       if late_runs else "")
                    + (" (a run ended just before its worker's SIGTERM hand-back)"
                       if termed else ""))

    # --- runs cut short on a worker nobody touched ----------------------------------------
    cut = 0
    for run in o.runs:
        node = nodes.get(run.node)
        if run.end is None and node is not None and not _disturbed_during(node, run):
            cut += 1
            claim = run_claim.get(id(run))
            later = [c.ts for c in claims.get(run.job_id, []) if claim and c.seq > claim.seq]
            until = min(later, default=run.start + 60)
            paused = sorted(n.index for n in o.nodes if n.index != node.index
                            and any(a <= until and c >= run.start for a, _, c in n.stops))
            violate("healthy run cut short", f"{run.job_id} pid {run.pid} on {node.name} "
                    f"(node {node.index}) from {run.start:.3f}: the node was not touched"
                    + (f" (while node {paused} was stopped)" if paused else ""))

    # --- no process outlives its worker ---------------------------------------------------
    unsupervised = 0
    for run in o.runs:
        node = nodes.get(run.node)
        if node is None or node.ended is None or node.how == "final":
            continue
        last = run.end if run.end is not None else run.start
        if last > node.ended + UNSUPERVISED_AFTER_S:
            unsupervised += 1
            violate("run outlived its worker",
                    f"{run.job_id} pid {run.pid} wrote at {last:.3f}, "
                    f"{last - node.ended:.2f} s after its worker {node.name} was "
                    f"{node.how} ({'ended' if run.end else 'started'})")
    orphans: dict[str, set[int]] = {"named": set(), "unnamed": set()}
    orphan_jobs: set[str] = set()
    outlived = [0.0]
    for proc in o.procs:
        node = nodes.get(proc.node)
        if node is None or node.ended is None:
            continue
        outlived.append(proc.last_alive - node.ended)
        if proc.last_alive > node.ended + o.orphan_deadline_s:
            orphans["named" if node.named else "unnamed"].add(proc.pid)
            orphan_jobs.add(proc.job_id)
            violate("orphan process", f"pid {proc.pid} of job {proc.job_id} alive "
                    f"{proc.last_alive - node.ended:.1f} s after its worker {node.name} "
                    f"was {node.how}")

    # --- the limits at every sample -------------------------------------------------------
    # A lost run's processes are SIGKILLed by the node that takes its job back, just after
    # that commit; a process that was stopped (a paused machine) shows as running for the
    # instant it takes to die. Such a run is not counted: its job was taken back at most
    # UNSUPERVISED_AFTER_S before the sample, and every process of it seen then was
    # started before that and gone within UNSUPERVISED_AFTER_S.
    recovered: dict[str, list[float]] = defaultdict(list)
    for _, typ, ts, job_id, data in o.events:
        if job_id is not None and (
                (typ == "job.retrying" and "worker was lost" in str(data.get("message")))
                or (typ == "job.failed" and "worker lost" in str(data.get("error")))):
            recovered[job_id].append(ts)
    tracks_of: dict[str, list[ProcTrack]] = defaultdict(list)
    for proc in o.procs:
        tracks_of[proc.job_id].append(proc)

    def dying(job_id: str, ts: float) -> bool:
        for taken in recovered.get(job_id, []):
            if ts - UNSUPERVISED_AFTER_S <= taken <= ts + EPSILON_S:
                seen = [t for t in tracks_of[job_id] if t.first_seen <= ts <= t.last_alive]
                if seen and all(t.first_seen < taken and
                                t.last_alive <= ts + UNSUPERVISED_AFTER_S for t in seen):
                    return True
        return False

    peak, over, reaped = 0, 0, 0
    user_peak, user_over = 0, 0
    for sample in o.samples:
        counted = tuple(j for j in sample.jobs if not dying(j, sample.ts))
        reaped += len(sample.jobs) - len(counted)
        sample = Sample(sample.ts, counted)
        peak = max(peak, len(sample.jobs))
        if len(sample.jobs) > o.max_running:
            over += 1
            violate("max_running exceeded", f"{len(sample.jobs)} jobs' processes alive at "
                    f"{sample.ts:.3f}: {', '.join(sample.jobs)}")
        per_user = Counter(o.acknowledged.get(j, "?") for j in sample.jobs)
        top = max(per_user.values(), default=0)
        user_peak = max(user_peak, top)
        if o.per_user_running is not None and top > o.per_user_running:
            user_over += 1
            violate("per_user_running exceeded", f"{per_user.most_common(1)} at {sample.ts:.3f}")
    db_peak = max((n for _, n, _ in o.db_samples), default=0)
    db_user_peak = max((max(d.values(), default=0) for _, _, d in o.db_samples), default=0)
    for ts, n, db_user in o.db_samples:
        if n > o.max_running or (o.per_user_running is not None and
                                 max(db_user.values(), default=0) > o.per_user_running):
            violate("database over a limit", f"{n} running ({db_user}) at {ts:.3f}")

    kills = [n for n in o.nodes if n.how in ("kill", "kill-at-start")]
    f = v.figures
    f["jobs submitted / acknowledged"] = f"{len(o.acknowledged) + o.submit_errors:,} / " \
        f"{len(o.acknowledged):,}"
    f["completed / failed / cancelled"] = \
        f"{states['completed']:,} / {states['failed']:,} / {states['cancelled']:,}"
    f["lost (missing + unfinished)"] = f"{len(missing)} + {len(unfinished)}"
    f["claims (job.started) / runs started / runs ended"] = \
        f"{sum(len(c) for c in claims.values()):,} / {len(o.runs):,} / " \
        f"{sum(1 for r in o.runs if r.end is not None):,}"
    f["jobs with 2+ ended runs (of which allowed)"] = f"{ended_twice_raw} ({excused})"
    f["completed twice (a run: ended while another worker was stopped / began a lease "
      "after its claim / ended before its worker's SIGTERM)"] = \
        f"{twice} ({twice_while_paused} / {twice_late} / {twice_termed})"
    f["runs started more than a lease after their claim"] = str(late)
    f["stale-lease completions"] = str(stale)
    f["healthy runs cut short"] = str(cut)
    f["runs that outlived their worker"] = str(unsupervised)
    f["orphan processes (of --name / host:pid workers)"] = \
        f"{len(orphans['named']) + len(orphans['unnamed'])} " \
        f"({len(orphans['named'])} / {len(orphans['unnamed'])}), {len(orphan_jobs)} jobs"
    f["longest a job's process outlived its worker / deadline"] = \
        f"{max(outlived):.1f} s / {o.orphan_deadline_s:g} s"
    gaps = sorted(b.ts - a.ts for a, b in zip(o.samples, o.samples[1:], strict=False))
    f["max jobs' processes alive / max_running"] = \
        f"{peak} / {o.max_running} ({over} of {len(o.samples):,} samples over)"
    if gaps:
        f["process sample interval p50 / p99"] = \
            f"{gaps[len(gaps) // 2] * 1000:.0f} / {gaps[int(len(gaps) * 0.99)] * 1000:.0f} ms"
    f["lost runs' processes sampled as they were being killed (not counted)"] = str(reaped)
    f["max of one user's / per_user_running"] = \
        f"{user_peak} / {o.per_user_running} ({user_over} samples over)"
    f["database: max running / one user's"] = \
        f"{db_peak} / {db_user_peak} ({len(o.db_samples):,} samples)"
    f["SIGKILLs (while starting a job) / SIGSTOPs / SIGTERMs"] = \
        f"{len(kills)} ({sum(1 for n in kills if n.how == 'kill-at-start')}) / " \
        f"{sum(len(n.stops) for n in o.nodes)} / " \
        f"{sum(1 for n in o.nodes if n.how == 'term')}"
    if o.malformed_lines:
        violate("malformed side effect", f"{o.malformed_lines} lines")
    failed = Counter((j.error or "")[:60] for j in o.jobs.values() if j.state == "failed")
    if failed:
        f["failure reasons"] = "; ".join(f"{n}x {e}" for e, n in failed.most_common(3))
    return v
