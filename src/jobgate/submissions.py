"""What a submit makes, before the store takes it: a job built from what a client sent,
its kind, memory, arguments, uploads and dependencies checked, stored with its own
webhook if it names one; and a batch of such jobs, all or none. The verbs are
`JobQueue.submit` and `JobQueue.submit_batch`; the rules of dependencies are in
dependencies.py, those of batches in batches.py.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobgate.arguments import UPLOAD_PREFIX, ArgumentError, validate_args
from jobgate.batches import Batch, BatchItem, check_size, item_of, plan
from jobgate.dependencies import check_ids, output_refs
from jobgate.dependencies import unknown as unknown_dependency
from jobgate.model import Job, new_id
from jobgate.webhooks import address_problem

if TYPE_CHECKING:
    from jobgate.kinds import Kind
    from jobgate.queue import JobQueue
    from jobgate.uploads import Uploads


async def new_job(queue: JobQueue, owner: str, kind: str, args: dict[str, Any] | None, *,
                  priority: int | None, run_at: float | None, memory_mb: int | None,
                  depends_on: list[str], job_id: str | None = None) -> Job:
    """A job to submit, its kind, memory and arguments checked (ArgumentError)."""
    spec = queue.kind(kind)
    if memory_mb is None:
        memory_mb = (await queue.kind_memory(spec)).estimate_mb if spec.memory_auto \
            else spec.memory_mb
    queue.check_memory(spec, memory_mb)
    args = args or {}
    refs = await own_uploads(queue.uploads, owner, spec, args)
    if isinstance(args, dict):
        refs.update(output_refs(spec, args, depends_on))
    check = functools.partial(
        validate_args, spec, args, queue.settings.input_path, True, queue.protected_paths,
        uploads=refs, as_given=True)
    if any(a.type == "url" for a in spec.args.values()):
        # Resolving a host name blocks: keep it off the event loop.
        args = await asyncio.to_thread(check)
    else:
        args = check()
    now = time.time()
    return Job(
        id=job_id or new_id(now),
        kind=kind,
        owner=owner,
        args=args,
        priority=queue.live.default_priority(owner, spec.priority) if priority is None
        else priority,
        max_attempts=spec.max_attempts,
        created_at=now,
        run_at=max(now, run_at) if run_at is not None else now,
        memory_mb=memory_mb,
        depends_on=depends_on,
    )


async def check_dependencies(queue: JobQueue, owner: str, depends_on: Sequence[str],
                             admin: bool) -> list[str]:
    """The ids a job of `owner` depends on, checked: jobs of `owner` (with `admin`, of
    anyone); DependencyError for another's or an unknown one, in the same words."""
    deps = check_ids(depends_on)
    for dep in deps:
        job = await queue.store.get(dep)
        if job is None or (job.owner != owner and not admin):
            raise unknown_dependency(dep)
    return deps


async def store_job(queue: JobQueue, job: Job, url: str | None) -> tuple[Job, bool]:
    """Submit `job` to the store, with its own webhook `url` if one is given: the URL is
    kept first, so a crash after the submit cannot lose it; a submit that makes no job
    takes it back."""
    if not url:
        return await queue.store.submit(job, queue.live.quota_for(job.owner))
    problem = await asyncio.to_thread(address_problem, url,
                                      queue.settings.webhooks.allow_private)
    if problem is not None:
        raise ArgumentError("webhook_url", problem)
    await queue.store.add_webhook(job.id, url)
    try:
        same, created = await queue.store.submit(job, queue.live.quota_for(job.owner))
    except BaseException:
        await queue.store.remove_webhook(job.id)
        raise
    if not created:  # an earlier job stands for this submit, with its own webhook
        await queue.store.remove_webhook(job.id)
    return same, created


async def own_uploads(uploads: Uploads, owner: str, spec: Kind, args: Mapping[str, Any]
                      ) -> dict[str, Path]:
    """The uploads of `owner` that `args` name (`upload:<id>` in a `path` argument),
    by reference, with their files: any other reference is unknown to validate_args."""
    found: dict[str, Path] = {}
    for name, arg in spec.args.items():
        value = args.get(name)
        if arg.type == "path" and isinstance(value, str) and \
                value.startswith(UPLOAD_PREFIX):
            upload_id = value.removeprefix(UPLOAD_PREFIX)
            if await uploads.get(owner, upload_id) is not None:
                found[value] = uploads.file(owner, upload_id)
    return found


async def submit_batch(queue: JobQueue, owner: str,
                       jobs: Sequence[BatchItem | Mapping[str, Any]], *, pipeline: bool,
                       admin: bool) -> tuple[Batch, list[Job]]:
    """`JobQueue.submit_batch`: the batch and its jobs, in the order given, stored all or
    none."""
    check_size(len(jobs), queue.settings.server.max_batch)
    items = [item_of(value, at) for at, value in enumerate(jobs)]
    now = time.time()
    ids = [new_id(now) for _ in items]
    steps = plan(items, ids, pipeline)
    outside = {d for deps in steps.depends_on for d in deps} - set(ids)
    await queue.check_dependencies(owner, sorted(outside), admin)
    made: list[Job] = []
    for at, item in enumerate(items):
        try:
            made.append(await new_job(
                queue, owner, item.kind, steps.args[at], priority=item.priority,
                run_at=item.run_at, memory_mb=item.memory_mb,
                depends_on=steps.depends_on[at], job_id=ids[at]))
        except ArgumentError as exc:
            field_name = exc.field if exc.field in (None, "kind", "memory_mb") else \
                f"args.{exc.field}"
            where = f"jobs[{at}]" + (f".{field_name}" if field_name else "")
            raise ArgumentError(where, exc.reason) from None
    batch = Batch(new_id(now), owner, now, len(items), pipeline)
    stored = await queue.store.submit_batch(batch, [made[i] for i in steps.order],
                                            queue.live.quota_for(owner))
    by_id = {j.id: j for j in stored}
    return batch, [by_id[i] for i in ids]
