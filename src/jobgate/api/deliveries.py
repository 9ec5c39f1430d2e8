"""The deliveries route: `GET /api/jobs/{id}/deliveries`, the webhooks and notifications
of a job's ends with their attempts (owner or admin; someone else's job is a 404). Targets
are shown without their secrets (`deliverer.shown_target`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from jobgate.api.core import CurrentUser, no_job, services_of
from jobgate.deliverer import shown_target
from jobgate.sanitize import text_problem


def install(app: FastAPI) -> None:
    """Add the deliveries route to `app`."""

    @app.get("/api/jobs/{job_id}/deliveries", tags=["jobs"])
    async def job_deliveries(job_id: str, request: Request, user: CurrentUser
                             ) -> dict[str, Any]:
        """The job's deliveries (webhooks, notifications) and their attempts, oldest first:
        `state` is pending, delivered or failed; `history` lists each attempt's HTTP
        status, the start of the answer and the error."""
        queue = services_of(request).queue
        looked_up = len(job_id) <= 64 and text_problem(job_id) is None
        job = await queue.get(job_id) if looked_up else None
        if job is None or (job.owner != user.name and not user.admin):
            raise no_job(job_id)
        found = await queue.store.deliveries(job_id)
        return {"job_id": job_id,
                "deliveries": [d.to_json(shown_target(queue, d)) for d in found]}
