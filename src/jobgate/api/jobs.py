"""The job routes (`/api/jobs…`), the queue's (`/api/kinds`, `/api/queue`, `/api/clean`)
and `/health`: a thin layer over `JobQueue`.

Every job route is owner-only (an admin sees all); someone else's job is a 404, so ids do
not leak.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from jobgate import moves
from jobgate.api.batches import BatchJob
from jobgate.api.core import (
    ApiError,
    CurrentUser,
    SafeStr,
    client_ip,
    limit,
    no_job,
    services_of,
)
from jobgate.config import Settings
from jobgate.links import LINK_TTL_S, link_key, link_path, valid
from jobgate.logtext import plain
from jobgate.model import FINAL, Job, State, content_type, iso, parse_iso
from jobgate.queue import node_live_s
from jobgate.sanitize import INT64_MAX, shown, stored_text, text_problem
from jobgate.stats import by_owner_json, extra_json
from jobgate.store.base import LogSize, Store, User
from jobgate.stream import stats_json


class SubmitBody(BatchJob):
    """A job to submit: a batch's job's fields, and two of a single submit's own."""

    unique_key: SafeStr | None = Field(default=None, min_length=1, max_length=200)
    webhook_url: SafeStr | None = Field(
        default=None, max_length=4096,
        description="POSTed the job's JSON at its end, signed as Standard Webhooks say; "
        "a loopback, private or link-local host is refused unless [webhooks] allow_private")


class CleanBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    older_than_s: float = Field(default=0, ge=0, le=1e11, allow_inf_nan=False)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the job, queue and health routes to `app`."""

    @app.post("/api/jobs", status_code=201, tags=["jobs"])
    async def submit(body: SubmitBody, request: Request, user: CurrentUser,
                     idempotency_key: Annotated[SafeStr | None,
                                                Header(min_length=1, max_length=200)] = None
                     ) -> Response:
        """Submit a job; a repeated `Idempotency-Key` returns the first job (200)."""
        services = services_of(request)
        limit(services.limits.submit_per_user, user.name, f"submits by {user.name}")
        limit(services.limits.submit_per_ip, client_ip(request), "submits from this address")
        spec = services.queue.kind(body.kind)
        if body.priority is not None and not user.admin and \
                body.priority > services.queue.live.priority_ceiling(user.name, spec.priority):
            raise ApiError(403, "forbidden", "only an admin may raise a job's priority")
        run_at = _parse_run_at(body.run_at)
        if body.memory_mb is not None:
            services.queue.check_memory(spec, body.memory_mb)
        if body.memory_mb is not None and not user.admin:
            estimate = (await services.queue.kind_memory(spec)).estimate_mb
            if body.memory_mb < estimate:
                # Less reserved memory would let a job pass the budget: safe only by choice
                # of an admin, as raising a priority is.
                raise ApiError(403, "forbidden", f"only an admin may lower a job's memory_mb "
                               f"below its kind's estimate ({estimate} MB)",
                               field="memory_mb")
        job, created = await services.queue.submit(
            user.name, body.kind, body.args, priority=body.priority, run_at=run_at,
            unique_key=body.unique_key, idempotency_key=idempotency_key,
            memory_mb=body.memory_mb, depends_on=body.depends_on, admin=user.admin,
            webhook_url=body.webhook_url)
        shown = services.queue.to_json(job)
        await services.queue.estimates.annotate([job], [shown])
        return JSONResponse(shown, status_code=201 if created else 200)

    @app.get("/api/jobs", tags=["jobs"])
    async def list_jobs(
        request: Request, user: CurrentUser,
        state: State | None = None,
        kind: Annotated[SafeStr | None, Query(max_length=64)] = None,
        owner: Annotated[SafeStr | None, Query(max_length=64)] = None,
        cursor: Annotated[SafeStr | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        q: Annotated[SafeStr | None, Query(max_length=100)] = None,
    ) -> dict[str, Any]:
        """The caller's jobs, newest first (an admin: anyone's, or `owner`'s). `q`: only
        those whose id starts with it or whose arguments hold it as text (ignoring case;
        SQLite folds ASCII letters only)."""
        services = services_of(request)
        if owner is not None and owner != user.name and not user.admin:
            raise ApiError(403, "forbidden", "only an admin may list other users' jobs")
        who = owner if owner is not None else (None if user.admin else user.name)
        page = await services.queue.store.list_jobs(who, state, kind, cursor, limit,
                                                    q=q or None)
        shown = [services.queue.to_json(j) for j in page.jobs]
        await services.queue.estimates.annotate(page.jobs, shown)
        return {"jobs": shown, "next": page.next}

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str, request: Request, user: CurrentUser) -> dict[str, Any]:
        queue = services_of(request).queue
        job = await _own_job(request, job_id, user)
        shown = queue.to_json(job)
        await queue.estimates.annotate([job], [shown])
        return shown

    @app.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
    async def cancel(job_id: str, request: Request, user: CurrentUser) -> dict[str, Any]:
        """Cancel a queued job, or stop a running one's process (SIGTERM, then SIGKILL)."""
        services = services_of(request)
        await _own_job(request, job_id, user)
        wait_s = services.settings.worker.cancel_grace_s + 2 if services.worker else 0
        return services.queue.to_json(await services.queue.cancel(job_id, wait_s=wait_s))

    @app.post("/api/jobs/{job_id}/retry", tags=["jobs"])
    async def retry(job_id: str, request: Request, user: CurrentUser) -> dict[str, Any]:
        services = services_of(request)
        await _own_job(request, job_id, user)
        job = await services.queue.retry(job_id)
        shown = services.queue.to_json(job)
        await services.queue.estimates.annotate([job], [shown])
        return shown

    @app.delete("/api/jobs/{job_id}", status_code=204, tags=["jobs"])
    async def delete(job_id: str, request: Request, user: CurrentUser) -> Response:
        job = await _own_job(request, job_id, user)
        if job.state not in FINAL:
            raise ApiError(409, "illegal_state",
                           f"job {job_id} is {job.state.value}: cancel it before deleting")
        await services_of(request).queue.delete(job_id)
        return Response(status_code=204)

    @app.get("/api/jobs/{job_id}/logs", tags=["jobs"], response_model=None)
    async def logs(job_id: str, request: Request, user: CurrentUser,
                   after: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                   format: Literal["json", "text"] = "json") -> dict[str, Any] | Response:
        """Log lines numbered from 1 as the job printed them; pass the last `n` you have as
        `after`. A log past `[worker] log_max_lines` keeps its first and its last lines:
        `total` counts every line printed, `dropped` is `{"first", "last"}`, the numbers of
        those not kept (null: none), and one line with `"gap": true`, numbered as the first
        dropped, stands in their place. A progress bar's `\\r` redraws are one line.

        `?format=text`: the whole kept log as a download (text/plain, `<job id>.log`),
        colour codes taken out, the gap as one line; `after` and `limit` do not apply."""
        job = await _own_job(request, job_id, user)
        store = services_of(request).queue.store
        if format == "text":
            return StreamingResponse(
                _log_text(store, job_id), media_type="text/plain; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="{job_id}.log"'})
        lines = await store.logs(job_id, after, limit)
        size = await store.log_size(job_id) or LogSize(0)
        gap = size.dropped[0] if size.dropped else None
        return {"lines": [{"n": n, "line": stored_text(line), "gap": True}
                          if n == gap and moves.is_gap_line(line) else
                          {"n": n, "line": stored_text(line)} for n, line in lines],
                "next": lines[-1][0] if lines else after, "state": job.state.value,
                "total": size.total,
                "dropped": {"first": size.dropped[0], "last": size.dropped[1]}
                if size.dropped else None}

    @app.get("/api/jobs/{job_id}/outputs/{name:path}", tags=["jobs"])
    async def output(job_id: str, name: str, request: Request, user: CurrentUser) -> Response:
        """Download an output (a browser without the bearer header: `…/link`)."""
        job = await _own_job(request, job_id, user)
        return _serve_output(request, job, name)

    @app.post("/api/jobs/{job_id}/outputs/{name:path}/link", tags=["jobs"])
    async def output_link(job_id: str, name: str, request: Request,
                          user: CurrentUser) -> dict[str, Any]:
        """A download link to an output: `{url, expires_at}`, a URL that needs no bearer
        header (for `<a href download>`), good for a few minutes and only for the caller."""
        job = await _own_job(request, job_id, user)
        _output_path(request, job, name)  # a link to nothing is refused now, not later
        expires_at = int(time.time() + LINK_TTL_S)
        key = link_key(services_of(request).auth.key)
        return {"url": link_path(key, job.id, name, user.name, expires_at),
                "expires_at": iso(expires_at)}

    @app.get("/api/jobs/{job_id}/download/{name:path}", tags=["jobs"])
    async def download(job_id: str, name: str, request: Request,
                       user: Annotated[str, Query(max_length=64)],
                       expires: Annotated[int, Query(ge=0, le=INT64_MAX)],
                       signature: Annotated[str, Query(max_length=128)]) -> Response:
        """An output by the link of `POST …/outputs/{name}/link` (no bearer header)."""
        services = services_of(request)
        if not valid(link_key(services.auth.key), job_id, name, user, expires, signature):
            raise ApiError(403, "forbidden", "invalid download link: get a new one")
        if expires < time.time():
            raise ApiError(403, "forbidden", "download link expired: get a new one")
        who = User(user, admin=True) if not settings.auth.enabled else \
            await services.queue.store.get_user(user)
        if who is None:
            raise ApiError(403, "forbidden", "invalid download link: its user is gone")
        # The user may have lost the right to the job since (no longer an admin).
        job = await _own_job(request, job_id, who)
        return _serve_output(request, job, name)

    @app.get("/api/kinds", tags=["queue"])
    async def kinds(request: Request, user: CurrentUser) -> dict[str, Any]:
        """The kinds this server runs, with their argument schemas and memory: what a job
        submitted now reserves (`memory_estimate_mb`, `memory_estimate_from`) and the
        measured peaks of recent completed jobs (`peak_memory_*`)."""
        queue = services_of(request).queue
        return {"kinds": [{**k.schema(), **(await queue.kind_memory(k)).to_json()}
                          for k in settings.kinds.values()]}

    @app.get("/api/queue", tags=["queue"])
    async def queue_stats(request: Request, user: CurrentUser) -> dict[str, Any]:
        """The queue's numbers: the contract's, then (stats.py) throughput windows, per-kind
        percentiles over `by_kind_window`, totals, uptime and limits; exact values. An
        admin also gets `by_owner`: {owner: {queued, running}} of each owner with any, and
        `depth`: the most jobs queued and running per 30 s over the last hour (depth.py)."""
        services = services_of(request)
        # A user sees which nodes run their own jobs; an admin sees every job's node.
        nodes = await services.queue.store.nodes(node_live_s(settings),
                                           None if user.admin else user.name)
        stats = await services.queue.stats()
        shown = {**stats_json(services.queue, settings, stats, nodes),
                 **await extra_json(services.queue, stats)}
        services.hub.note_depth(stats)
        if user.admin:
            shown["by_owner"] = by_owner_json(await services.queue.store.owner_counts())
            shown["depth"] = services.hub.depth.to_json()
        return shown

    @app.post("/api/clean", tags=["queue"])
    async def clean(body: CleanBody, request: Request, user: CurrentUser) -> dict[str, Any]:
        """Delete finished jobs older than `older_than_s` (an admin: everyone's)."""
        count = await services_of(request).queue.clean(body.older_than_s,
                                               None if user.admin else user.name)
        return {"deleted": count}

    @app.get("/health", tags=["health"])
    async def health(request: Request) -> Response:
        services = services_of(request)
        try:
            await asyncio.wait_for(services.queue.store.next_run_at(), 5)
        except Exception as exc:  # any database trouble means not ready
            return JSONResponse({"status": "unavailable", "database": str(exc)}, 503)
        return JSONResponse({
            "status": "ok",
            "database": "ok",
            "worker": services.worker.name if services.worker else None,
            "running": len(services.worker.running) if services.worker else None,
            "uptime_s": round(time.time() - services.started_at, 1),
        })


def _output_path(request: Request, job: Job, name: str) -> Path:
    """The file of output `name` of `job`, inside its folder; a 404 otherwise (a name that
    is not text, or leads out of the folder, is not echoed)."""
    folder = services_of(request).queue.job_dir(job.id).resolve()
    missing = ApiError(404, "not_found", f"job {job.id} has no output {shown(name)}")
    if text_problem(name) is not None:
        raise missing
    try:
        path = (folder / name).resolve()
        found = path.is_relative_to(folder) and path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a loop
        found = False
    if not found:
        raise missing
    return path


def _serve_output(request: Request, job: Job, name: str) -> Response:
    """The file as an attachment (Range requests served). A file the job's outputs list as
    `partial`, or do not list (yet: its job runs), says so in `X-Jobgate-Partial`."""
    path = _output_path(request, job, name)
    listed = next((o for o in job.outputs if o.name == name), None)
    partial = listed is None or listed.partial
    return FileResponse(path, filename=Path(name).name, content_disposition_type="attachment",
                        media_type=content_type(name),
                        headers={"X-Jobgate-Partial": "true"} if partial else None)


async def _own_job(request: Request, job_id: str, user: User) -> Job:
    """The job `job_id` if the caller may see it; the 404 of `no_job` otherwise."""
    looked_up = len(job_id) <= 64 and text_problem(job_id) is None
    job = await services_of(request).queue.get(job_id) if looked_up else None
    if job is None or (job.owner != user.name and not user.admin):
        raise no_job(job_id)
    return job


_LAST_TIME_S = 253402300799.0  # 9999-12-31T23:59:59Z


def _parse_run_at(value: str | float | None) -> float | None:
    if value is None:
        return None
    try:
        ts = float(value) if isinstance(value, int | float) else parse_iso(value)
    except (ValueError, OverflowError):
        ts = math.nan
    if not 0 <= ts <= _LAST_TIME_S:
        raise ApiError(422, "invalid_argument",
                       "run_at: expected an ISO-8601 time (or epoch seconds) before year 10000",
                       field="run_at")
    return ts


_LOG_PAGE = 1000  # lines read from the store at a time for a text download


async def _log_text(store: Store, job_id: str) -> AsyncIterator[bytes]:
    """A job's whole kept log as text, one page of the store at a time (the gap line in
    its place, colour codes out): never all of it in memory."""
    after = 0
    while page := await store.logs(job_id, after, _LOG_PAGE):
        yield "".join(f"{plain(stored_text(line))}\n" for _, line in page).encode()
        after = page[-1][0]
