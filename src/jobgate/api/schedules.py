"""`GET /api/schedules`: the configured schedules (`[schedules.NAME]`), each with its next
due time and its last firing; `GET /api/schedules/{name}`: one, with its recorded firings.

Every signed-in user sees every schedule's name, cron, time zone, kind, owner, next due
time and when and how it last fired; its `args`, the last firing's job id and message only
an admin or the schedule's owner (a job id of someone else's names nothing they may see).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel

from jobgate.api.core import ApiError, CurrentUser, services_of
from jobgate.firings import ScheduleRunner, ScheduleView
from jobgate.model import iso
from jobgate.sanitize import shown
from jobgate.schedules import Firing
from jobgate.store.base import User


class FiringOut(BaseModel):
    """A schedule's last firing."""

    due_at: str
    due_at_epoch_s: float
    fired_at: str
    outcome: str  # "fired", "skipped" or "failed"
    catch_up: bool  # the one run for firings missed while no node ran
    job_id: str | None = None  # admin or owner only
    message: str | None = None  # admin or owner only


class ScheduleOut(BaseModel):
    name: str
    cron: str
    timezone: str
    kind: str
    owner: str
    enabled: bool
    missed: str  # "skip" or "run_once"
    missed_after_s: float
    unique_key: str | None
    args: dict[str, Any] | None = None  # admin or owner only
    next_due_at: str | None  # ISO-8601 UTC; null while disabled
    next_due_epoch_s: float | None
    last: FiringOut | None


class SchedulesOut(BaseModel):
    schedules: list[ScheduleOut]


class ScheduleFiringsOut(ScheduleOut):
    firings: list[FiringOut]  # the latest due time first


def install(app: FastAPI) -> None:
    """Add `GET /api/schedules` to `app`."""

    @app.get("/api/schedules", tags=["schedules"], response_model=SchedulesOut)
    async def list_schedules(request: Request, user: CurrentUser) -> dict[str, Any]:
        """Every configured schedule with its next due time and last firing."""
        runner = ScheduleRunner(services_of(request).queue)
        return {"schedules": [schedule_json(v, user) for v in await runner.listing()]}

    @app.get("/api/schedules/{name}", tags=["schedules"], response_model=ScheduleFiringsOut)
    async def get_schedule(name: str, request: Request, user: CurrentUser,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        """One schedule with its recorded firings, the latest due time first."""
        queue = services_of(request).queue
        view = next((v for v in await ScheduleRunner(queue).listing()
                     if v.schedule.name == name), None)
        if view is None:
            raise ApiError(404, "not_found", f"no schedule {shown(name, 64)}")
        mine = user.admin or user.name == view.schedule.owner
        history = await queue.store.schedule_firings(name, limit)
        return {**schedule_json(view, user),
                "firings": [firing_json(f, mine) for f in history]}


def schedule_json(view: ScheduleView, user: User) -> dict[str, Any]:
    """A schedule as `GET /api/schedules` shows it to `user`."""
    s = view.schedule
    mine = user.admin or user.name == s.owner
    last = view.last
    return {
        "name": s.name, "cron": s.cron, "timezone": s.timezone, "kind": s.kind,
        "owner": s.owner, "enabled": s.enabled, "missed": s.missed,
        "missed_after_s": s.missed_after_s, "unique_key": s.unique_key,
        "args": s.args if mine else None,
        "next_due_at": iso(view.next_due), "next_due_epoch_s": view.next_due,
        "last": None if last is None else firing_json(last, mine),
    }


def firing_json(firing: Firing, mine: bool) -> dict[str, Any]:
    """A recorded firing; its job id and message only for the schedule's owner or an
    admin (`mine`)."""
    return {
        "due_at": iso(firing.due_at), "due_at_epoch_s": firing.due_at,
        "fired_at": iso(firing.fired_at), "outcome": firing.outcome,
        "catch_up": firing.catch_up,
        "job_id": firing.job_id if mine else None,
        "message": firing.message if mine else None,
    }
