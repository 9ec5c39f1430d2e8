"""Batches: many jobs submitted in one request, all or none, optionally as a pipeline.
Pure functions, no I/O; the verb is `JobQueue.submit_batch`, the route `POST /api/batches`.

A batch is a list of jobs (`{kind, args, priority?, run_at?, depends_on?, memory_mb?}`).
A job may depend on another job of the same batch by its index, `"#0"`, in `depends_on`,
and use its output as `"job:#0/NAME"` in a `path` argument; with `pipeline`, each job
depends on the one before it too. The batch enters the queue in one transaction: every
job or none (a queue quota refuses the whole batch, saying how many jobs would fit).

A batch is `running` until every job of it ended, then `completed` (every job completed),
`failed` (some failed) or `cancelled`; `batch.created` is emitted with it and
`batch.completed` once, when its last job ends. Its progress is one percent over all its
jobs: an ended job counts 100, a running one its progress, a queued one 0 ("45.2 % (23/51)":
23 of 51 ended).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobgate.arguments import JOB_PREFIX, ArgumentError
from jobgate.dependencies import (
    batch_index,
    check_ids,
    parse_output_ref,
    topological,
)
from jobgate.model import FINAL, State, iso
from jobgate.sanitize import shown

#: A batch's fields, as `POST /api/batches` takes each job.
ITEM_FIELDS = frozenset({"kind", "args", "priority", "run_at", "depends_on", "memory_mb"})


@dataclass(frozen=True)
class BatchItem:
    """One job of a batch, as submitted: `depends_on` may hold `#<index>` references."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    priority: int | None = None
    run_at: float | None = None
    depends_on: tuple[str, ...] = ()
    memory_mb: int | None = None


def item_of(value: Any, index: int) -> BatchItem:
    """A batch item from what a Python caller passed: a `BatchItem` or a mapping of its
    fields (ArgumentError naming `jobs[index]` otherwise)."""
    if isinstance(value, BatchItem):
        return value
    where = f"jobs[{index}]"
    if not isinstance(value, Mapping):
        raise ArgumentError(where, "expected an object {kind, args, ...}")
    extra = sorted(set(value) - ITEM_FIELDS)
    if extra:
        raise ArgumentError(where, f"unknown field {shown(extra[0])} (known: "
                            f"{', '.join(sorted(ITEM_FIELDS))})")
    kind, args = value.get("kind"), value.get("args") or {}
    if not isinstance(kind, str) or not kind:
        raise ArgumentError(f"{where}.kind", "is required")
    if not isinstance(args, Mapping):
        raise ArgumentError(f"{where}.args", "must be an object")
    deps = value.get("depends_on") or []
    if not isinstance(deps, list | tuple):
        raise ArgumentError(f"{where}.depends_on", "must be a list of ids or #indexes")
    priority, run_at, memory_mb = (value.get(k) for k in ("priority", "run_at", "memory_mb"))
    for name, got, types in (("priority", priority, int), ("run_at", run_at, int | float),
                             ("memory_mb", memory_mb, int)):
        if got is not None and (isinstance(got, bool) or not isinstance(got, types)):
            raise ArgumentError(f"{where}.{name}", f"expected a number, got {shown(got)}")
    return BatchItem(kind, dict(args), priority, run_at, tuple(check_ids(deps)), memory_mb)


@dataclass(frozen=True)
class Plan:
    """A batch's jobs with the batch's references put in: for each job (in the batch's
    order) its `depends_on` ids and its args; `order` is the order to store them in
    (each after those it depends on)."""

    depends_on: list[list[str]]
    args: list[dict[str, Any]]
    order: list[int]


def plan(items: Sequence[BatchItem], ids: Sequence[str], pipeline: bool) -> Plan:
    """Put the batch's ids (`ids[i]` for job i) in for its `#i` references, in
    `depends_on` and in `job:#i/NAME` path values (any argument that is a string); with
    `pipeline`, job i depends on job i-1 as well. DependencyError for a reference out of
    the batch or a cycle."""
    size = len(items)
    edges: list[list[int]] = []
    depends: list[list[str]] = []
    for at, item in enumerate(items):
        inside: list[int] = [at - 1] if pipeline and at > 0 else []
        outside: list[str] = []
        for ref in item.depends_on:
            index = batch_index(ref, size, at)
            if index is None:
                outside.append(ref)
            elif index not in inside:
                inside.append(index)
        edges.append(inside)
        depends.append([ids[i] for i in inside] + outside)
    order = topological(edges)
    args = [{name: _with_ids(value, size, at, ids) for name, value in item.args.items()}
            for at, item in enumerate(items)]
    return Plan(depends, args, order)


def _with_ids(value: Any, size: int, at: int, ids: Sequence[str]) -> Any:
    """A `job:#i/NAME` value with job i's id in place of `#i` (other values as given)."""
    if not isinstance(value, str) or not value.startswith(JOB_PREFIX + "#"):
        return value
    ref = parse_output_ref(value)
    if ref is None:
        raise ArgumentError(f"jobs[{at}].args", f"{shown(value)}: a job's output is named "
                            "job:#INDEX/NAME")
    index = batch_index(ref[0], size, at)
    assert index is not None
    return f"{JOB_PREFIX}{ids[index]}/{ref[1]}"


def check_size(count: int, max_batch: int) -> None:
    """ArgumentError unless a batch of `count` jobs may be submitted (1 to `max_batch`)."""
    if count < 1:
        raise ArgumentError("jobs", "a batch needs at least one job")
    if count > max_batch:
        raise ArgumentError("jobs", f"{count} jobs: a batch holds at most {max_batch} "
                            "([server] max_batch)")


@dataclass(frozen=True)
class Batch:
    """A batch as stored; `counts` (jobs per state), `progress` (the sum of its running
    jobs' progress) and `job_ids` (in the batch's order) are filled in when it is read."""

    id: str
    owner: str
    created_at: float
    total: int
    pipeline: bool = False
    ended_at: float | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    progress: float = 0.0
    job_ids: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        """`running` while a job of it is queued or running, then `completed` (all
        completed), `failed` (any failed) or `cancelled`."""
        return batch_state(self.counts)

    def to_json(self) -> dict[str, Any]:
        """The batch as `GET /api/batches/{id}` and its events show it."""
        done = ended(self.counts)
        pct = percent(self.counts, self.progress, self.total)
        return {
            "id": self.id, "owner": self.owner, "state": self.state,
            "total": self.total, "pipeline": self.pipeline,
            "counts": {s.value: int(self.counts.get(s.value, 0)) for s in State},
            "ended": done, "percent": pct, "summary": summary(pct, done, self.total),
            "created_at": iso(self.created_at), "ended_at": iso(self.ended_at),
            "jobs": list(self.job_ids),
        }


def ended(counts: Mapping[str, int]) -> int:
    """How many jobs of these counts ({state: n}) ended."""
    return sum(int(counts.get(s.value, 0)) for s in FINAL)


def batch_state(counts: Mapping[str, int]) -> str:
    """The state of a batch whose jobs are in these counts ({state: n})."""
    if counts.get(State.QUEUED.value, 0) or counts.get(State.RUNNING.value, 0):
        return "running"
    if counts.get(State.FAILED.value, 0):
        return State.FAILED.value
    if counts.get(State.CANCELLED.value, 0):
        return State.CANCELLED.value
    return State.COMPLETED.value


def percent(counts: Mapping[str, int], running_progress: float, total: int) -> float:
    """The batch's progress over all its jobs, one decimal: an ended job counts 100, a
    running one its progress (`running_progress` is their sum), a queued one 0."""
    if total <= 0:
        return 100.0
    done = ended(counts)
    value = (100.0 * done + max(0.0, running_progress)) / total
    value = math.floor(min(100.0, value) * 10) / 10
    return value if done >= total else min(value, 99.9)  # 100 % once every job ended


def summary(pct: float, done: int, total: int) -> str:
    """One line: "45.2 % (23/51)" (23 of 51 jobs ended)."""
    return f"{pct:.1f} % ({done}/{total})"


def completed_data(batch: Batch) -> dict[str, Any]:
    """What `batch.completed` carries (and `batch.created`, the batch as it began)."""
    return {"batch_id": batch.id, **batch.to_json()}


def parse_batch_file(text: str, toml: bool) -> tuple[list[Any], bool]:
    """The jobs and `pipeline` flag of a batch file (`jobgate submit --batch FILE`): JSON,
    a list of jobs or `{"jobs": [...], "pipeline": true}`; or TOML, `pipeline = true` and
    `[[jobs]]` tables. ValueError with a one-line reason otherwise."""
    if toml:
        import tomllib

        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"not valid TOML: {exc}") from None
    else:
        import json

        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
    if isinstance(data, list):
        data = {"jobs": data}
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise ValueError("expected a list of jobs, or an object with `jobs` (a list) and "
                         "optionally `pipeline`")
    extra = sorted(set(data) - {"jobs", "pipeline"})
    if extra:
        raise ValueError(f"unknown key {extra[0]!r} (known: jobs, pipeline)")
    pipeline = data.get("pipeline", False)
    if not isinstance(pipeline, bool):
        raise ValueError("pipeline: expected true or false")
    return list(data["jobs"]), pipeline
