"""The verbs of schedules, above the storage seam: record the configured schedules, fire
what is due, list them. The worker's `schedules` side loop calls `fire_due`; any node may,
the database decides (`Store.fire_schedule` moves a due time on only from the value it
read, in the transaction that submits the firing's job), so each due time fires once.

What is due, missed or skipped is decided in `schedules.py`; a firing's job is checked as
a submitted one is (its kind's memory estimate, its arguments, `path` files and `url`
addresses included), for the schedule's owner, who must exist when it fires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from jobgate.arguments import ArgumentError, validate_args
from jobgate.model import Job, new_id
from jobgate.queue import JobQueue
from jobgate.schedules import FIRED, Firing, Plan, Schedule, firings, plan

log = logging.getLogger("jobgate.schedules")


@dataclass(frozen=True)
class ScheduleView:
    """A schedule as listed: its next due time (None while disabled) and last firing."""

    schedule: Schedule
    next_due: float | None
    last: Firing | None


class ScheduleRunner:
    """The schedules of one queue's settings."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.store = queue.store
        self.schedules = queue.settings.schedules

    async def sync(self, now: float | None = None) -> None:
        """Record the configured schedules: a new or changed one is due next after `now`;
        an unchanged one keeps its next due time (what came due while no node ran)."""
        now = time.time() if now is None else now
        starts = [(s.name, s.spec, s.next_after(now)) for s in self.schedules.values()]
        if starts:
            await self.store.sync_schedules(starts)

    async def fire_due(self, now: float | None = None) -> float | None:
        """Fire every schedule that is due at `now` (what another node fired meanwhile is
        left alone); the earliest next due time of the enabled schedules, if any."""
        states = await self.store.schedule_states()
        if any(s.name not in states or states[s.name].spec != s.spec
               for s in self.schedules.values()):
            # New or changed in this config (the first round after a start): from now on.
            await self.sync(now)
            states = await self.store.schedule_states()
        soonest: float | None = None
        for schedule in self.schedules.values():
            state = states.get(schedule.name)
            if state is None or not schedule.enabled:
                continue
            next_due = state.next_due
            planned = plan(schedule, next_due, time.time() if now is None else now)
            if planned.due or planned.missed_last is not None:
                recorded = await self._fire(schedule, next_due, planned)
                next_due = planned.next_due if recorded is not None else next_due
            soonest = next_due if soonest is None else min(soonest, next_due)
        return soonest

    async def _fire(self, schedule: Schedule, expected_due: float, planned: Plan
                    ) -> list[Firing] | None:
        owner = await self.store.get_user(schedule.owner)
        times = list(planned.due)
        if planned.missed_last is not None and schedule.missed == "run_once":
            times.append(planned.missed_last)
        jobs = {due: await self._job(schedule, owner is not None) for due in times}
        made = firings(schedule, planned, jobs.__getitem__)
        recorded = await self.store.fire_schedule(schedule.name, expected_due,
                                                  planned.next_due, made,
                                                  self.queue.live.quota_for(schedule.owner))
        for firing in recorded or ():
            level = logging.INFO if firing.outcome == FIRED else logging.WARNING
            log.log(level, "schedule %s, due %s: %s %s", schedule.name, firing.due_at,
                    firing.outcome, firing.message)
        return recorded

    async def _job(self, schedule: Schedule, owner_exists: bool) -> Job | str:
        """The job a firing submits, checked as a submit is; or why there is none."""
        if not owner_exists:
            return (f"owner {schedule.owner!r} does not exist "
                    f"(add the user: jobgate user add {schedule.owner})")
        queue = self.queue
        spec = queue.kind(schedule.kind)
        memory_mb = (await queue.kind_memory(spec)).estimate_mb if spec.memory_auto \
            else spec.memory_mb
        try:
            queue.check_memory(spec, memory_mb)
            # Resolving a `url` argument's host blocks: off the event loop.
            args = await asyncio.to_thread(
                validate_args, spec, schedule.args, queue.settings.input_path, True,
                queue.protected_paths, uploads={}, as_given=True)
        except ArgumentError as exc:
            return str(exc)
        now = time.time()
        return Job(id=new_id(now), kind=spec.name, owner=schedule.owner, args=args,
                   priority=spec.priority if schedule.priority is None else schedule.priority,
                   max_attempts=spec.max_attempts, created_at=now, run_at=now,
                   memory_mb=memory_mb, unique_key=schedule.unique_key)

    async def listing(self, now: float | None = None) -> list[ScheduleView]:
        """Every configured schedule, by name, with its next due time and last firing."""
        now = time.time() if now is None else now
        states = await self.store.schedule_states()
        out = []
        for name in sorted(self.schedules):
            schedule = self.schedules[name]
            state = states.get(name)
            current = state is not None and state.spec == schedule.spec
            next_due = None if not schedule.enabled else \
                state.next_due if state is not None and current else schedule.next_after(now)
            out.append(ScheduleView(schedule, next_due, state.last if state else None))
        return out

    async def prune(self) -> int:
        """Forget firings older than `[retention] finished`."""
        return await self.store.prune_firings(
            time.time() - self.queue.settings.retention.finished)
