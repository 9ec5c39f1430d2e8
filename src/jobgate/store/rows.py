"""What both backends share below the SQL: the jobs table's columns as Python values (one
write path per column: `column_value`, `job_values`; one JSON encoder, `to_json`, for JSON
columns and events alike; None is SQL NULL, never the text 'null'), and the numbered
migration files. No SQL statements here; those stay beside each backend."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import orjson

from jobgate.model import Event, Job, Output, State, outputs_from_json
from jobgate.schedules import Firing
from jobgate.store.base import Durations, SchemaTooNew

#: The jobs table's columns, in the order `job_from_row` and `job_values` use.
COLUMNS = (
    "id, kind, owner, args, priority, state, progress, message, attempt, max_attempts, "
    "created_at, run_at, started_at, finished_at, result, error, worker, memory_mb, "
    "peak_memory_mb, depends_on, unique_key, outputs, vt, lease_token, lease_expires_at, "
    "cancel_requested, pid, idempotency_key"
)
JSON_COLUMNS = frozenset({"args", "result", "depends_on", "outputs"})
#: State by value: a dict lookup (calling the enum costs 10x more).
STATES = {s.value: s for s in State}


def to_json(value: Any) -> str:
    """JSON text: orjson's (ten times faster, and every event is written as JSON), or the
    standard library's for what orjson refuses (an int past 64 bits, a lone surrogate),
    marked with a leading space so `from_json` reads it back with the same library."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return " " + json.dumps(value)


def from_json(text: str) -> Any:
    """The value of `to_json`'s text (or of older text written by `json.dumps`)."""
    if text.startswith(" "):
        return json.loads(text)  # orjson would read a big int back as a float
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN or a lone surrogate written by json.dumps
        return json.loads(text)


def loads(text: str) -> Any:
    # Most jobs carry empty arguments, dependencies and outputs: skip the parser for them.
    if text == "[]":
        return []
    if text == "{}":
        return {}
    return from_json(text)


def dumps(value: Any) -> str:
    if not value and isinstance(value, (list, dict)):
        return "[]" if isinstance(value, list) else "{}"
    return to_json(value)


def json_or_null(value: Any) -> str | None:
    """A JSON column's value: None (SQL NULL) for None, else its JSON text."""
    return None if value is None else dumps(value)


def outputs_value(outputs: Sequence[Output]) -> str:
    """The `outputs` column's JSON text: a list of `Output.to_json` objects (a reader
    also takes the plain names older rows hold: `model.outputs_from_json`)."""
    return dumps([o.to_json() for o in outputs])


def column_value(name: str, value: Any) -> Any:
    """How the jobs table stores `value` of column `name` on every backend."""
    encode = _ENCODERS.get(name)
    if encode is not None:
        return encode(value)
    # `State` is a str Enum, which psycopg would store by its name.
    return value.value if value.__class__ is State else value


_ENCODERS: dict[str, Callable[[Any], Any]] = {
    **{name: json_or_null for name in JSON_COLUMNS}, "outputs": outputs_value}


def column_values(fields: Mapping[str, Any]) -> tuple[Any, ...]:
    """`column_value` of each of a move's `fields`, in order: inlined, as a wave of claims
    or ends passes a dozen columns a job through here inside the write transaction."""
    encoders = _ENCODERS
    return tuple([encoders[name](value) if name in encoders
                  else value._value_ if value.__class__ is State else value
                  for name, value in fields.items()])


#: What ending a run reads of its job (`run_from_row`): the fence (state, lease token)
#: and what the move and its event need, not whole rows: a worker ends jobs in waves.
RUN_COLUMNS = "id, state, lease_token, kind, owner, attempt, max_attempts, progress, priority"


def run_from_row(row: Sequence[Any]) -> Job:
    """A job, as far as a row of `RUN_COLUMNS` tells."""
    id_, state, token, kind, owner, attempt, max_attempts, progress, priority = row
    return Job(id=id_, kind=kind, owner=owner, args={}, state=STATES[state],
               lease_token=token, attempt=attempt, max_attempts=max_attempts,
               progress=progress, priority=priority)


def job_from_row(row: Sequence[Any]) -> Job:
    """A job from a row of `COLUMNS`."""
    (id_, kind, owner, args, priority, state, progress, message, attempt, max_attempts,
     created_at, run_at, started_at, finished_at, result, error, worker, memory_mb,
     peak_memory_mb, depends_on, unique_key, outputs, vt, lease_token, lease_expires_at,
     cancel_requested, pid, idempotency_key) = tuple(row)[:28]
    return Job(
        id=id_, kind=kind, owner=owner, args=loads(args), priority=priority,
        state=STATES[state], progress=progress, message=message, attempt=attempt,
        max_attempts=max_attempts, created_at=created_at, run_at=run_at,
        started_at=started_at, finished_at=finished_at,
        result=None if result is None else loads(result), error=error, worker=worker,
        memory_mb=memory_mb, peak_memory_mb=peak_memory_mb,
        depends_on=loads(depends_on), unique_key=unique_key,
        outputs=outputs_from_json(loads(outputs)), vt=vt, lease_token=lease_token,
        lease_expires_at=lease_expires_at, cancel_requested=bool(cancel_requested), pid=pid,
        idempotency_key=idempotency_key,
    )


def job_values(job: Job) -> tuple[Any, ...]:
    """A job as a row of `COLUMNS`."""
    # Every submitted job passes here inside the write transaction: the common empty
    # lists skip the encoder, and `_value_` is the member's value without the descriptor.
    return (
        job.id, job.kind, job.owner, dumps(job.args), job.priority, job.state._value_,
        job.progress, job.message, job.attempt, job.max_attempts, job.created_at, job.run_at,
        job.started_at, job.finished_at, None if job.result is None else dumps(job.result),
        job.error, job.worker, job.memory_mb, job.peak_memory_mb,
        dumps(job.depends_on) if job.depends_on else "[]", job.unique_key,
        outputs_value(job.outputs) if job.outputs else "[]", job.vt, job.lease_token,
        job.lease_expires_at, bool(job.cancel_requested), job.pid, job.idempotency_key,
    )


def event_from_row(row: Sequence[Any]) -> Event:
    """An event from a row of (seq, type, ts, job_id, owner, data)."""
    return Event(row[0], row[1], row[2], row[3], row[4], from_json(row[5]))


def migrations(backend: str) -> list[tuple[int, str]]:
    """The numbered migrations `migrations/<backend>_NNN_*.sql`, oldest first."""
    folder = resources.files("jobgate.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith(f"{backend}_") and name.endswith(".sql"):
            found.append((int(name.split("_")[1]), entry.read_text()))
    return sorted(found)


def pending_migrations(backend: str, current: int) -> list[tuple[int, str]]:
    """The migrations a database at schema version `current` still needs, oldest first;
    SchemaTooNew when a newer jobgate migrated it (this one must not touch it)."""
    steps = migrations(backend)
    if current > steps[-1][0]:
        raise SchemaTooNew(
            f"the database has schema version {current}, newer than this jobgate "
            f"({steps[-1][0]}): upgrade jobgate"
        )
    return [(version, sql) for version, sql in steps if version > current]


def lease_cutoff(now: float, expired_before: float | None,
                 stall: tuple[float, float] | None = None, grace_s: float = 0.0) -> float:
    """Leases that ran out before this are lost: `now`, or earlier when the caller decided
    to look before it waited for the database (see `Store.recover`).

    `stall` (from, until) is the last time the database was held by another writer (seen
    as a wait for its lock): a lease that ran out while it lasted ran out because no one
    could renew it, so until `grace_s` after the stall ended (the time its node needs to
    renew) only leases that ran out before the stall began are lost."""
    cutoff = now if expired_before is None else min(now, expired_before)
    if stall is not None and now < stall[1] + grace_s:
        cutoff = min(cutoff, stall[0])
    return cutoff


#: The schedule_firings table's columns, in the order `firing_from_row` and
#: `firing_values` use.
FIRING_COLUMNS = "name, owner, due_at, outcome, message, job_id, fired_at, catch_up"


def firing_from_row(row: Sequence[Any]) -> Firing:
    """A recorded firing from a row of `FIRING_COLUMNS`."""
    name, owner, due_at, outcome, message, job_id, fired_at, catch_up = row
    return Firing(name, owner, float(due_at), outcome, message, job_id=job_id,
                  fired_at=float(fired_at), catch_up=bool(catch_up))


def firing_values(firing: Firing) -> tuple[Any, ...]:
    """A firing as a row of `FIRING_COLUMNS`."""
    return (firing.name, firing.owner, firing.due_at, firing.outcome, firing.message,
            firing.job_id, firing.fired_at, firing.catch_up)


def durations_by_kind(rows: Sequence[Sequence[Any]], bounds: int
                      ) -> tuple[dict[str, Durations], dict[str, Durations]]:
    """`Store.metric_counts`' histograms (queue waits, run times) from the rows of its
    query, one per kind: (kind, count, sum of waits, sum of runs, waits at most each of
    the `bounds` bounds..., runs at most each...)."""
    waits, runs = {}, {}
    for kind, count, wait_s, run_s, *buckets in rows:
        n = int(count)
        waits[str(kind)] = Durations(n, float(wait_s or 0.0),
                                     tuple(int(b or 0) for b in buckets[:bounds]))
        runs[str(kind)] = Durations(n, float(run_s or 0.0),
                                    tuple(int(b or 0) for b in buckets[bounds:]))
    return waits, runs


def like_escaped(text: str) -> str:
    """`text` for a LIKE pattern with `ESCAPE '\\'`: its `\\`, `%` and `_` taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_terms(q: str) -> tuple[str, list[str]]:
    """A list search's parameters: the LIKE pattern of ids starting with `q`, and the
    pieces of JSON text to find (with `instr`/`position`) in a job's arguments, any of
    them: `q` as it is written inside a JSON string (a quote or a backslash escaped), and,
    when `q` reads `key=value` as the dashboard shows an argument, that argument as JSON
    writes it, a non-string value (`"fail":true`) and the start of a string one
    (`"url":"https://`). Both sides are lower-cased in SQL."""
    inside = _json_inside(q)
    key, eq, value = q.partition("=")
    as_value = as_string = inside
    if eq and key.strip():
        name = f'"{_json_inside(key.strip())}":'
        as_string = name + '"' + _json_inside(value)
        as_value = as_string
        try:
            parsed = json.loads(value.lower())  # as SQL compares: `True` is `true`
        except ValueError:
            pass
        else:
            if not isinstance(parsed, str):
                as_value = name + json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))
    return like_escaped(q) + "%", list(dict.fromkeys((inside, as_value, as_string)))


def _json_inside(text: str) -> str:
    """`text` as it is written inside a JSON string, without the quotes."""
    return json.dumps(text, ensure_ascii=False)[1:-1]
