"""The operator's controls, admin only (controls.py): pause and resume dispatch (globally or
per kind), limits changed at run time, drained nodes.

- `GET /api/controls`: the controls as stored (`paused`, `paused_kinds`, `limits`, `kinds`,
  `users`, `drained`, `version`) and `effective`: each limit in force, with its source
  (`config` or `live`);
- `POST /api/queue/pause` `{kind?}`, `POST /api/queue/resume` `{kind?}` (resume without a
  kind ends every pause);
- `PUT /api/limits` `{max_running?, max_queued?, per_user_running?, per_user_queued?,
  memory_budget_mb?, kinds?: {NAME: n}, users?: {NAME: {per_user_running?,
  per_user_queued?, priority?} | null}, reset?}`: each key given is set, null puts the
  config's value back, `reset` clears every live limit first;
- `POST /api/nodes/{name}/drain`, `POST /api/nodes/{name}/undrain`.

Each answers with what `GET /api/controls` shows after it. Each change emits its event
(`queue.paused`, `queue.resumed`, `limits.changed`, `node.drained`, `node.undrained`) to
admins' streams, and holds on every node from its commit on: claims read the controls.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from jobgate.api.core import ApiError, CurrentUser, SafeStr, services_of
from jobgate.sanitize import text_problem
from jobgate.store.base import User


class KindBody(BaseModel):
    """The kind to pause or resume; none: the whole queue."""

    model_config = ConfigDict(extra="forbid")

    kind: Annotated[SafeStr, Field(max_length=64)] | None = None


def _admin(user: User, what: str) -> None:
    if not user.admin:
        raise ApiError(403, "forbidden", f"only an admin may {what}")


def install(app: FastAPI) -> None:
    """Add the control routes to `app`."""

    async def answer(request: Request) -> dict[str, Any]:
        live = services_of(request).queue.live
        return live.to_json()

    @app.get("/api/controls", tags=["controls"])
    async def get_controls(request: Request, user: CurrentUser) -> dict[str, Any]:
        """What is paused or drained, and every limit in force with its source."""
        _admin(user, "see the controls")
        await services_of(request).queue.live.load()  # another API node may have changed them
        return await answer(request)

    @app.post("/api/queue/pause", tags=["controls"])
    async def pause(request: Request, user: CurrentUser, body: KindBody | None = None
                    ) -> dict[str, Any]:
        """Start no more jobs (of `kind`, if given) on any node; running jobs go on."""
        _admin(user, "pause the queue")
        await services_of(request).queue.live.pause(body.kind if body else None, user.name)
        return await answer(request)

    @app.post("/api/queue/resume", tags=["controls"])
    async def resume(request: Request, user: CurrentUser, body: KindBody | None = None
                     ) -> dict[str, Any]:
        """Dispatch again: everything (no `kind`: every pause ends), or one paused kind."""
        _admin(user, "resume the queue")
        await services_of(request).queue.live.resume(body.kind if body else None, user.name)
        return await answer(request)

    @app.put("/api/limits", tags=["controls"])
    async def put_limits(request: Request, user: CurrentUser,
                         body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        """Change limits at run time, on every node within a second; null: the config's."""
        _admin(user, "change the limits")
        await services_of(request).queue.live.change_limits(body, user.name)
        return await answer(request)

    @app.post("/api/nodes/{name}/drain", tags=["controls"])
    async def drain(name: str, request: Request, user: CurrentUser) -> dict[str, Any]:
        """The node finishes its running jobs and claims no more (until undrained)."""
        _admin(user, "drain a node")
        await services_of(request).queue.live.drain(_node(name), user.name)
        return await answer(request)

    @app.post("/api/nodes/{name}/undrain", tags=["controls"])
    async def undrain(name: str, request: Request, user: CurrentUser) -> dict[str, Any]:
        """The node claims jobs again."""
        _admin(user, "undrain a node")
        await services_of(request).queue.live.drain(_node(name), user.name, drained=False)
        return await answer(request)


def _node(name: str) -> str:
    """A node name from the path: text, at most 200 characters (422 otherwise)."""
    problem = text_problem(name) if len(name) <= 200 else "at most 200 characters"
    if problem is not None:
        raise ApiError(422, "invalid_request", f"name: {problem}", field="name")
    return name
