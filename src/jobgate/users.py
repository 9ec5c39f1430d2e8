"""The operator's verbs on users and their credentials, for the CLI and the admin API alike.

- `remove_user`: the user and their API tokens go at once (every API node refuses their
  credentials on the next request: nothing is cached); then their queued jobs are
  cancelled and their running ones stopped through the queue's own `cancel` (no second
  copy of its rules); with `delete_data`, their finished jobs are deleted through the
  queue's `delete` (logs and outputs with them) and their uploads through `Uploads`.
  Without it their jobs stay, for an admin to see with `?owner=`.
- `change_password`, `set_admin`, `log_out_everywhere`: a new password and "log out
  everywhere" raise the user's login generation, which ends every login JWT issued
  before (API tokens are not logins: they stay until revoked).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from jobgate.auth import hash_password
from jobgate.model import FINAL, IllegalMove, Job, State, iso
from jobgate.queue import JobQueue
from jobgate.store.base import NotFound, Store, TokenInfo, User, UserInfo
from jobgate.uploads import UploadInUse

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
#: How long `remove_user` waits for the user's running jobs to stop, past the worker's
#: grace between SIGTERM and SIGKILL (`[worker] cancel_grace_s`).
STOP_MARGIN_S = 10.0
_PAGE = 500


@dataclass
class Removal:
    """What `remove_user` did."""

    user: str
    cancelled: list[str] = field(default_factory=list)  # queued jobs cancelled
    stopped: list[str] = field(default_factory=list)  # running jobs stopped (now ended)
    still_running: list[str] = field(default_factory=list)  # asked to stop, not ended yet
    deleted_jobs: int = 0
    deleted_uploads: int = 0
    kept_uploads: int = 0  # in use by a job still stopping
    delete_data: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "cancelled": self.cancelled, "stopped": self.stopped,
                "still_running": self.still_running, "deleted_jobs": self.deleted_jobs,
                "deleted_uploads": self.deleted_uploads, "kept_uploads": self.kept_uploads,
                "data_deleted": self.delete_data}

    def summary(self) -> str:
        """One line for people."""
        parts = [f"removed user {self.user}",
                 f"cancelled {_count(len(self.cancelled), 'queued job')}",
                 f"stopped {_count(len(self.stopped), 'running job')}"]
        if self.still_running:
            parts.append(f"{_count(len(self.still_running), 'job')} still stopping")
        if self.delete_data:
            parts.append(f"deleted {_count(self.deleted_jobs, 'job')} and "
                         f"{_count(self.deleted_uploads, 'upload')}")
            if self.still_running or self.kept_uploads:
                parts.append("what was still stopping is kept (jobgate clean removes it "
                             "later)")
        else:
            parts.append(f"their jobs are kept (jobgate ls --owner {self.user})")
        return "; ".join(parts)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def check_password(password: str) -> str:
    """`password` if it is acceptable; ValueError saying why not."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"password must be at most {MAX_PASSWORD} characters")
    return password


async def _all_jobs(store: Store, owner: str, state: State | None = None) -> list[Job]:
    jobs: list[Job] = []
    before = None
    while True:
        page = await store.list_jobs(owner, state=state, before=before, limit=_PAGE)
        jobs.extend(page.jobs)
        if page.next is None:
            return jobs
        before = page.next


async def remove_user(queue: JobQueue, name: str, delete_data: bool = False,
                      wait_s: float | None = None) -> Removal:
    """Remove user `name` (NotFound if there is none, nor any job or upload of theirs):
    see the module's docstring. Waits
    up to `wait_s` (default: the cancel grace plus `STOP_MARGIN_S`) for their running
    jobs to stop; those still running then are in `still_running`, ended by their worker
    later (and, with `delete_data`, kept until retention cleans them)."""
    store = queue.store
    # The user first: their credentials end before their jobs are looked at. A removal
    # cut short (a crash) is finished by running it again: with the user gone, what is
    # left of their jobs is still swept, and only a name with nothing at all is NotFound.
    existed = await store.remove_user(name)
    removal = Removal(name, delete_data=delete_data)
    wait = queue.settings.worker.cancel_grace_s + STOP_MARGIN_S if wait_s is None else wait_s
    # Again until a pass finds nothing new: a submit already past its login check when
    # the user went may land after the first pass.
    seen: set[str] = set()
    running: list[str] = []
    while True:
        found = [job for state in (State.QUEUED, State.RUNNING)
                 for job in await _all_jobs(store, name, state) if job.id not in seen]
        if not found:
            break
        for job in found:
            seen.add(job.id)
            with contextlib.suppress(IllegalMove, NotFound):  # it ended meanwhile
                after = await queue.cancel(job.id)
                if after.state is State.CANCELLED:
                    removal.cancelled.append(job.id)
                elif after.state is State.RUNNING:
                    running.append(job.id)
    ended = await asyncio.gather(*(queue.cancel(job_id, wait_s=wait) for job_id in running),
                                 return_exceptions=True)
    for job_id, outcome in zip(running, ended, strict=True):
        if isinstance(outcome, Job) and outcome.state is State.RUNNING:
            removal.still_running.append(job_id)
        else:
            removal.stopped.append(job_id)
    if delete_data:
        await _delete_data(queue, name, removal)
    if not existed and not (seen or removal.deleted_jobs or removal.deleted_uploads):
        raise NotFound(f"no user {name}")
    return removal


async def _delete_data(queue: JobQueue, name: str, removal: Removal) -> None:
    doomed = [job.id for job in await _all_jobs(queue.store, name) if job.state in FINAL]
    for job_id in doomed:
        with contextlib.suppress(IllegalMove, NotFound):
            await queue.delete(job_id)
            removal.deleted_jobs += 1
    for upload in await queue.uploads.list(name):
        try:
            if await queue.uploads.delete(name, upload.id):
                removal.deleted_uploads += 1
        except UploadInUse:
            removal.kept_uploads += 1
    if not removal.kept_uploads:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(queue.uploads.folder(name).rmdir)


async def change_password(store: Store, name: str, password: str) -> User:
    """Give `name` a new password (checked by `check_password`) and end their logins
    (NotFound if no such user)."""
    hashed = await asyncio.to_thread(hash_password, check_password(password))
    return await store.update_user(name, password_hash=hashed, bump_generation=True)


async def set_admin(store: Store, name: str, admin: bool) -> User:
    """Make `name` an admin or not; a demoted user's next request (and open streams, at
    their next check) has no admin right left."""
    return await store.update_user(name, admin=admin)


async def log_out_everywhere(store: Store, name: str) -> User:
    """End every login JWT of `name` issued until now (their API tokens stay)."""
    return await store.update_user(name, bump_generation=True)


async def revoke_token(store: Store, token_id: str, user: str | None = None) -> TokenInfo:
    """Revoke the API token `token_id` (only `user`'s, when given); NotFound if none."""
    revoked = await store.revoke_token(token_id, user)
    if revoked is None:
        raise NotFound(f"no token {token_id}")
    return revoked


def user_json(user: UserInfo | User) -> dict[str, Any]:
    """A user as the API and `user list --json` show them: never a password hash."""
    out: dict[str, Any] = {"name": user.name, "admin": user.admin,
                           "created_at": iso(user.created_at), "generation": user.generation}
    if isinstance(user, UserInfo):
        out.update(has_password=user.has_password, queued=user.queued, running=user.running,
                   tokens=user.tokens)
    else:
        out["has_password"] = user.password_hash is not None
    return out


def token_json(token: TokenInfo) -> dict[str, Any]:
    """A token as it is listed: its public id, never the secret or its hash."""
    return {"id": token.id, "user": token.user, "name": token.name,
            "created_at": iso(token.created_at), "last_used_at": iso(token.last_used_at)}
