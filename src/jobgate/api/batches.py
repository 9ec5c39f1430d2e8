"""The batch routes (`/api/batches`): many jobs in one request, all or none, optionally a
pipeline; a thin layer over `JobQueue.submit_batch` (batches.py has the rules).

A batch is its owner's (an admin sees all); someone else's is a 404, as a job is.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from jobgate.api.core import ApiError, CurrentUser, SafeStr, client_ip, limit, services_of
from jobgate.batches import BatchItem
from jobgate.model import parse_iso
from jobgate.sanitize import checked_text, shown, text_problem

_LAST_TIME_S = 253402300799.0  # 9999-12-31T23:59:59Z, as for a job's run_at


class BatchJob(BaseModel):
    """One job of a batch: what `POST /api/jobs` takes, and `#i` (the batch's job i) in
    `depends_on` and in `job:#i/NAME` path arguments."""

    model_config = ConfigDict(extra="forbid")

    kind: SafeStr = Field(min_length=1, max_length=64)
    args: dict[SafeStr, Any] = Field(default_factory=dict)
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    run_at: Annotated[StrictStr, AfterValidator(checked_text)] | StrictInt | StrictFloat | \
        None = None
    depends_on: list[SafeStr] | None = Field(default=None, max_length=1000)
    # The memory this job reserves, in place of its kind's estimate (checked by the queue).
    memory_mb: StrictInt | None = None


class BatchBody(BaseModel):
    """`{jobs: [...], pipeline?}`: with `pipeline`, each job depends on the one before."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[BatchJob] = Field(min_length=1, max_length=100_000)
    pipeline: bool = False


def install(app: FastAPI) -> None:
    """Add the batch routes to `app`."""

    @app.post("/api/batches", status_code=201, tags=["batches"])
    async def submit_batch(body: BatchBody, request: Request, user: CurrentUser) -> Response:
        """Submit many jobs at once, all or none: 201 with the batch (`id`, `state`,
        `percent`, ...) and `jobs`, each as `GET /api/jobs/{id}` shows it. A queue quota
        refuses the whole batch (429, saying how many would fit)."""
        services = services_of(request)
        limit(services.limits.submit_per_user, user.name, f"submits by {user.name}")
        limit(services.limits.submit_per_ip, client_ip(request), "submits from this address")
        queue = services.queue
        items = []
        for at, job in enumerate(body.jobs):
            spec = queue.settings.kinds.get(job.kind)
            if spec is None:
                raise ApiError(422, "invalid_argument", f"jobs[{at}].kind: unknown kind "
                               f"{shown(job.kind)}", field=f"jobs[{at}].kind")
            if job.priority is not None and not user.admin and \
                    job.priority > queue.live.priority_ceiling(user.name, spec.priority):
                raise ApiError(403, "forbidden", "only an admin may raise a job's priority")
            if job.memory_mb is not None and not user.admin:
                estimate = (await queue.kind_memory(spec)).estimate_mb
                if job.memory_mb < estimate:
                    raise ApiError(403, "forbidden", f"jobs[{at}].memory_mb: only an admin "
                                   f"may lower it below its kind's estimate ({estimate} MB)",
                                   field=f"jobs[{at}].memory_mb")
            items.append(BatchItem(job.kind, dict(job.args), job.priority,
                                   _run_at(job.run_at, at), tuple(job.depends_on or ()),
                                   job.memory_mb))
        batch, jobs = await queue.submit_batch(user.name, items, pipeline=body.pipeline,
                                               admin=user.admin)
        stored = await queue.get_batch(batch.id) or batch
        return JSONResponse({**stored.to_json(), "jobs": [queue.to_json(j) for j in jobs]},
                            status_code=201)

    @app.get("/api/batches/{batch_id}", tags=["batches"])
    async def get_batch(batch_id: str, request: Request, user: CurrentUser) -> dict[str, Any]:
        """A batch: `state` (`running` until every job ended, then `completed`, `failed`
        or `cancelled`), `counts` per state, `percent` and `summary` ("45.2 % (23/51)"),
        and the ids of its `jobs`."""
        looked_up = len(batch_id) <= 64 and text_problem(batch_id) is None
        batch = await services_of(request).queue.get_batch(batch_id) if looked_up else None
        if batch is None or (batch.owner != user.name and not user.admin):
            raise ApiError(404, "not_found", f"no batch {shown(batch_id)}")
        return batch.to_json()


def _run_at(value: str | float | None, at: int) -> float | None:
    if value is None:
        return None
    try:
        ts = float(value) if isinstance(value, int | float) else parse_iso(value)
    except (ValueError, OverflowError):
        ts = math.nan
    if not 0 <= ts <= _LAST_TIME_S:
        raise ApiError(422, "invalid_argument", f"jobs[{at}].run_at: expected an ISO-8601 "
                       "time (or epoch seconds) before year 10000", field=f"jobs[{at}].run_at")
    return ts
