"""Schedules: `[schedules.NAME]` read from config, and the pure rule of what is due.

A schedule fires a normal job of its `kind` with its `args` for its `owner` at each due
time of its `cron` expression (cronsim: five fields, or six with the seconds first), read
in its `timezone` (an IANA name; UTC unless given). The database keeps each schedule's
next due time; a node that finds it passed fires what `plan` says, and the store records
the firing and submits its job in one transaction, conditional on the due time it read,
so each due time fires once across nodes and restarts (firings.py, store/*_schedules.py).

What is due, what was missed and what is skipped is decided here, once:

- a due time found at most `missed_after` late fires (a busy node is late, not down);
- older ones were missed while no node ran: `missed = "skip"` records one skipped firing
  for all of them, `"run_once"` one catch-up firing (one job, however many were missed);
- a firing whose `unique_key` job (the owner's job with that key) is still queued or
  running is recorded as skipped, so a slow run is not doubled (`outcome_of`);
- a changed cron, time zone or `enabled` starts the schedule afresh from now: nothing
  counts as missed under the old expression.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from jobgate.arguments import ArgumentError, validate_args
from jobgate.kinds import Kind
from jobgate.model import EventType, Job, iso
from jobgate.units import ConfigError, parse_duration

MISSED_POLICIES = ("skip", "run_once")
DEFAULT_TIMEZONE = "UTC"
DEFAULT_MISSED_AFTER_S = 60.0
#: At most this many due times fire in one round; the rest in the next (an every-second
#: schedule behind by a minute must not become one huge transaction).
ROUND_MAX = 100

# Outcomes of a firing, as stored and shown.
FIRED, SKIPPED, FAILED = "fired", "skipped", "failed"

_KEYS = {"cron", "timezone", "kind", "args", "owner", "unique_key", "missed", "missed_after",
         "enabled", "priority"}


@dataclass(frozen=True)
class Schedule:
    """One `[schedules.NAME]` table, checked."""

    name: str
    cron: str
    kind: str
    owner: str
    args: dict[str, Any]
    timezone: str = DEFAULT_TIMEZONE
    unique_key: str | None = None
    missed: str = "skip"
    missed_after_s: float = DEFAULT_MISSED_AFTER_S
    enabled: bool = True
    priority: int | None = None

    @property
    def spec(self) -> str:
        """What the stored next due time was worked out from: when it changes, the
        schedule starts afresh from now."""
        return f"{self.cron}|{self.timezone}|{'on' if self.enabled else 'off'}"

    def next_after(self, ts: float) -> float:
        """The first due time strictly after `ts` (epoch seconds)."""
        start = dt.datetime.fromtimestamp(ts, ZoneInfo(self.timezone))
        return next(CronSim(self.cron, start)).timestamp()

    def last_before(self, ts: float) -> float:
        """The last due time strictly before `ts`."""
        start = dt.datetime.fromtimestamp(ts, ZoneInfo(self.timezone))
        return next(CronSim(self.cron, start, reverse=True)).timestamp()


@dataclass(frozen=True)
class Firing:
    """One firing of a schedule as the store records it: its due time, what became of it
    (`FIRED`, `SKIPPED`, `FAILED`), why, and its job: `job` to submit (before it is
    recorded), `job_id` the one it submitted (or, skipped, the one still running)."""

    name: str
    owner: str
    due_at: float
    outcome: str
    message: str
    job: Job | None = None
    job_id: str | None = None
    fired_at: float = 0.0
    catch_up: bool = False  # the one run for firings missed while no node ran

    @property
    def event_type(self) -> EventType:
        return _EVENT_TYPES[self.outcome]

    def event_data(self) -> dict[str, Any]:
        """What its `schedule.*` event carries."""
        return {"schedule": self.name, "due_at": iso(self.due_at), "outcome": self.outcome,
                "message": self.message, "job": self.job_id, "catch_up": self.catch_up}


_EVENT_TYPES = {FIRED: EventType.SCHEDULE_FIRED, SKIPPED: EventType.SCHEDULE_SKIPPED,
                FAILED: EventType.SCHEDULE_FAILED}


@dataclass(frozen=True)
class Plan:
    """What a round does for one schedule: the due times that fire on time, the missed
    ones (from `missed_from` to `missed_last`, if any) and the next due time after all."""

    due: list[float]
    missed_from: float | None
    missed_last: float | None
    next_due: float


def plan(schedule: Schedule, next_due: float, now: float, limit: int = ROUND_MAX) -> Plan:
    """What is due at `now` for a schedule whose next unhandled due time is `next_due`."""
    if next_due > now or not schedule.enabled:
        return Plan([], None, None, next_due)
    missed_from = missed_last = None
    start = next_due
    cutoff = now - schedule.missed_after_s
    if next_due < cutoff:
        missed_from, missed_last = next_due, schedule.last_before(cutoff)
        start = schedule.next_after(missed_last)
    due: list[float] = []
    at = start
    while at <= now and len(due) < limit:
        due.append(at)
        at = schedule.next_after(at)
    return Plan(due, missed_from, missed_last, at)


def firings(schedule: Schedule, planned: Plan, job: Any) -> list[Firing]:
    """The firings of a plan, oldest first; `job(due_at)` makes the job of a firing (a Job)
    or says why it cannot (an ArgumentError, or a message): that firing fails."""
    out: list[Firing] = []
    if planned.missed_last is not None:
        missed = _missed_text(planned.missed_from, planned.missed_last)
        if schedule.missed == "skip":
            out.append(Firing(schedule.name, schedule.owner, planned.missed_last, SKIPPED,
                              f"missed while no node ran ({missed}); missed = skip"))
        else:
            out.append(_firing(schedule, planned.missed_last, job(planned.missed_last),
                               f"catch-up run for the firings missed ({missed})", True))
    out += [_firing(schedule, due, job(due), "fired") for due in planned.due]
    return out


def _firing(schedule: Schedule, due_at: float, job: Job | Exception | str, message: str,
            catch_up: bool = False) -> Firing:
    if isinstance(job, Job):
        return Firing(schedule.name, schedule.owner, due_at, FIRED, message, job, job.id,
                      catch_up=catch_up)
    return Firing(schedule.name, schedule.owner, due_at, FAILED, f"not fired: {job}",
                  catch_up=catch_up)


def _missed_text(first: float | None, last: float) -> str:
    if first is None or first == last:
        return f"due {iso(last)}"
    return f"due from {iso(first)} to {iso(last)}"


def outcome_of(firing: Firing, submitted: tuple[Job, bool] | Exception | None) -> Firing:
    """A firing as recorded once its job's submit answered (`Store.submit`'s (job,
    created), or the error that refused it): an existing job returned for its unique key
    means the last run is still queued or running, so this firing is skipped."""
    if submitted is None:
        return firing
    if isinstance(submitted, Exception):
        return dataclasses.replace(firing, outcome=FAILED, job=None, job_id=None,
                                   message=f"not fired: {submitted}")
    job, created = submitted
    if created:
        return dataclasses.replace(firing, job=job, job_id=job.id)
    return dataclasses.replace(
        firing, outcome=SKIPPED, job=None, job_id=job.id,
        message=f"skipped: job {job.id} with unique_key {job.unique_key!r} is still "
                f"{job.state.value}")


# --- configuration -------------------------------------------------------------------------

def parse_schedules(data: Any, kinds: Mapping[str, Kind], input_dir: Path
                    ) -> dict[str, Schedule]:
    """The `[schedules]` tables, each checked against the kinds: ConfigError naming the
    schedule and the key otherwise."""
    if not isinstance(data, dict):
        raise ConfigError("schedules: expected a table of schedules")
    return {name: parse_schedule(name, spec, kinds, input_dir) for name, spec in data.items()}


def parse_schedule(name: str, spec: Any, kinds: Mapping[str, Kind], input_dir: Path
                   ) -> Schedule:
    """One `[schedules.NAME]` table, checked: kind known, cron valid, time zone known,
    args passing the kind's argument specs (a `path` argument's file is looked for at each
    firing, not here: it may come later)."""
    where = f"schedules.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(_KEYS))})")
    for key in ("cron", "kind", "owner"):
        if not isinstance(spec.get(key), str) or not spec[key].strip():
            raise ConfigError(f"{where}.{key}: required, a string")
    kind = kinds.get(spec["kind"])
    if kind is None:
        raise ConfigError(f"{where}.kind: unknown kind {spec['kind']!r} "
                          f"(known: {', '.join(sorted(kinds)) or 'none'})")
    timezone = _text(spec, "timezone", where) or DEFAULT_TIMEZONE
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}.timezone: unknown time zone {timezone!r} "
                          "(an IANA name like 'Europe/Paris', or 'UTC')") from None
    cron = " ".join(spec["cron"].split())
    try:
        next(CronSim(cron, dt.datetime.now(zone)))
    except (CronSimError, StopIteration) as exc:
        raise ConfigError(f"{where}.cron: invalid cron expression {cron!r}: {exc or 'never due'} "
                          "(five fields 'min hour day month weekday', or six with the "
                          "seconds first)") from None
    missed = _text(spec, "missed", where) or "skip"
    if missed not in MISSED_POLICIES:
        raise ConfigError(f"{where}.missed: must be 'skip' or 'run_once', got {missed!r}")
    missed_after = parse_duration(spec.get("missed_after", DEFAULT_MISSED_AFTER_S),
                                  f"{where}.missed_after")
    if missed_after < 1:
        raise ConfigError(f"{where}.missed_after: must be at least 1 second")
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled: expected true or false, got {enabled!r}")
    priority = spec.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise ConfigError(f"{where}.priority: expected an integer, got {priority!r}")
    args = spec.get("args", {})
    try:
        validate_args(_without_paths(kind), args, input_dir, resolve=False, as_given=True)
    except ArgumentError as exc:
        raise ConfigError(f"{where}.args: {exc}") from None
    return Schedule(name, cron, kind.name, spec["owner"], dict(args), timezone,
                    _text(spec, "unique_key", where), missed, missed_after, enabled, priority)


def _text(spec: dict[str, Any], key: str, where: str) -> str | None:
    value = spec.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
    return value or None


def _without_paths(kind: Kind) -> Kind:
    """The kind with its `path` arguments checked as strings: their files are looked for
    when a firing submits its job."""
    args = {n: dataclasses.replace(a, type="string") if a.type == "path" else a
            for n, a in kind.args.items()}
    return dataclasses.replace(kind, args=args)
