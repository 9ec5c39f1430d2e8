"""`POST /api/jobs/bulk`: cancel, retry or delete the jobs a filter selects (bulk.py does
it, one job at a time with the single-job verbs); answered with counts.

A user acts only on their own jobs (naming another owner is a 403); an admin on anyone's.
A cancel or delete needs a filter that says what it takes (422 otherwise).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from jobgate import bulk
from jobgate.api.core import ApiError, CurrentUser, SafeStr, services_of
from jobgate.model import State


class BulkFilter(BaseModel):
    """Which jobs: all of these that are given must hold."""

    model_config = ConfigDict(extra="forbid")

    owner: SafeStr | None = Field(default=None, min_length=1, max_length=64)
    state: State | list[State] | None = Field(
        default=None, description="one state or a list (default: every state the action "
        "takes: cancel queued and running, retry failed and cancelled, delete the finished)")
    kind: SafeStr | None = Field(default=None, min_length=1, max_length=64)
    older_than_s: float | None = Field(
        default=None, ge=0, le=1e11, allow_inf_nan=False,
        description="finished at least this long ago (a job not finished: created)")
    limit: int = Field(default=bulk.MAX_JOBS, ge=1, le=bulk.MAX_JOBS)


class BulkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["cancel", "retry", "delete"]
    filter: BulkFilter = Field(default_factory=BulkFilter)
    dry_run: bool = Field(default=False, description="only count the jobs it would take")


def install(app: FastAPI) -> None:
    """Add the bulk route to `app`."""

    @app.post("/api/jobs/bulk", tags=["jobs"])
    async def bulk_action(body: BulkBody, request: Request, user: CurrentUser
                          ) -> dict[str, Any]:
        """Apply `action` to every job `filter` selects, each on its own as the single-job
        route would (its move atomic, its event as usual): `{action, matched, done,
        skipped: {reason: n}, more}`; a job that moved on meanwhile is skipped
        (`not_found`, `illegal_state`, `already_cancelling`, `conflict`), and `more` says
        that more than `limit` matched (run it again)."""
        f = body.filter
        if f.owner is not None and f.owner != user.name and not user.admin:
            raise ApiError(403, "forbidden", "only an admin may act on other users' jobs")
        states = () if f.state is None else \
            (f.state,) if isinstance(f.state, State) else tuple(dict.fromkeys(f.state))
        owner = f.owner if f.owner is not None or user.admin else user.name
        flt = bulk.Filter(owner=owner, states=states, kind=f.kind,
                          older_than_s=f.older_than_s, limit=f.limit)
        bulk.check(body.action, flt, explicit_owner=f.owner is not None)
        result = await bulk.run(services_of(request).queue, body.action, flt, body.dry_run)
        return result.to_json()
