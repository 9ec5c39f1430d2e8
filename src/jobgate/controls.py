"""Operator controls: pause and resume dispatch (globally and per kind), drained nodes, and
limits changed at run time (global, per kind, per user). Pure values and rules, no I/O.

`Controls` is what the database's `controls` table holds (one row per part: `paused`,
`paused_kinds`, `limits`, `kinds`, `users`, `drained`), with a `version` that every change
raises by one. The config file is the start value: a live limit absent (null) is the
config's. A claim reads the controls inside its own transaction (`dispatch`), so a pause,
a drain or a new limit holds on every node from the moment it commits; each change also
emits one event (`queue.paused`, `queue.resumed`, `limits.changed`, `node.drained`,
`node.undrained`) carrying the whole new controls, which wakes every node's claim loop and
keeps each process's own view (`controls_live.LiveControls`) up to date.

Per-user overrides (`[limits.users.NAME]` in config, `users` at run time):
`per_user_running`, `per_user_queued` (in place of the global per-user caps, for that
user) and `priority`: the default priority of the user's submits when it is higher than
the kind's, and the highest priority the user may ask for without being an admin (a
"premium" user). It only ever raises: a priority below a kind's default changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobgate.arguments import ArgumentError
from jobgate.model import USER_NAME, EventType
from jobgate.scheduler import Limits
from jobgate.units import ConfigError

#: The global limits an operator may change at run time (`PUT /api/limits`).
LIVE_LIMITS = ("max_running", "max_queued", "per_user_running", "per_user_queued",
               "memory_budget_mb")
#: What one user's overrides may set.
USER_KEYS = ("per_user_running", "per_user_queued", "priority")
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000  # as a job's own priority
_LIMIT_MAX = 1_000_000_000
#: The rows of the `controls` table, one per part.
ROWS = ("paused", "paused_kinds", "limits", "kinds", "users", "drained")


class ControlError(ArgumentError):
    """A control change refused: `field` names the value, the message says why (422)."""


@dataclass(frozen=True)
class UserLimits:
    """One user's overrides (None: the global value)."""

    per_user_running: int | None = None
    per_user_queued: int | None = None
    priority: int | None = None

    def to_json(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def merged(self, over: UserLimits) -> UserLimits:
        """These overrides with those `over` sets replacing them, key by key."""
        return UserLimits(**{**dataclasses.asdict(self), **over.to_json()})


@dataclass(frozen=True)
class Controls:
    """The live controls, as stored. Empty: nothing paused, drained or changed."""

    paused: bool = False
    paused_kinds: frozenset[str] = frozenset()
    limits: Mapping[str, int] = field(default_factory=dict)  # of LIVE_LIMITS
    kinds: Mapping[str, int] = field(default_factory=dict)  # kind -> max_running
    users: Mapping[str, UserLimits] = field(default_factory=dict)
    drained: frozenset[str] = frozenset()  # node names
    version: int = 0

    def rows(self) -> dict[str, Any]:
        """The stored rows (name -> JSON value)."""
        return {
            "paused": self.paused,
            "paused_kinds": sorted(self.paused_kinds),
            "limits": dict(sorted(self.limits.items())),
            "kinds": dict(sorted(self.kinds.items())),
            "users": {u: o.to_json() for u, o in sorted(self.users.items())},
            "drained": sorted(self.drained),
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.rows(), "version": self.version}

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, Any, int]]) -> Controls:
        """From stored rows (name, JSON value, version); what is not understood is left out
        (a row written by a newer jobgate)."""
        values: dict[str, Any] = {}
        version = 0
        for name, value, row_version in rows:
            values[name] = value
            version = max(version, int(row_version))
        return cls.from_json({**values, "version": version})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Controls:
        def ints(value: Any) -> dict[str, int]:
            if not isinstance(value, dict):
                return {}
            return {str(k): v for k, v in value.items() if _is_int(v)}

        def names(value: Any) -> frozenset[str]:
            return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset()

        users = data.get("users")
        return cls(
            paused=data.get("paused") is True,
            paused_kinds=names(data.get("paused_kinds")),
            limits={k: v for k, v in ints(data.get("limits")).items() if k in LIVE_LIMITS},
            kinds=ints(data.get("kinds")),
            users={str(u): UserLimits(**{k: v for k, v in ints(o).items() if k in USER_KEYS})
                   for u, o in (users.items() if isinstance(users, dict) else ())},
            drained=names(data.get("drained")),
            version=int(data.get("version") or 0),
        )

    def same(self, other: Controls) -> bool:
        """Whether both hold the same controls (whatever their versions)."""
        return self.rows() == other.rows()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- what a claim and a submit see ---------------------------------------------------------

def effective_limits(config: Limits, controls: Controls) -> Limits:
    """The limits in force: the config's (`config`, with its per-user overrides), each
    replaced by the live value the controls hold for it, if any."""
    live = controls.limits
    users = dict(config.user_running)
    for name, over in controls.users.items():
        if over.per_user_running is not None:
            users[name] = over.per_user_running
    return dataclasses.replace(
        config,
        max_running=live.get("max_running", config.max_running),
        per_user_running=live.get("per_user_running", config.per_user_running),
        memory_budget_mb=live.get("memory_budget_mb", config.memory_budget_mb),
        kind_max_running={**config.kind_max_running, **controls.kinds},
        user_running=users,
    )


def dispatch(config: Limits, kinds: list[str], controls: Controls, worker: str
             ) -> tuple[Limits, list[str]]:
    """What a claim by `worker` of jobs of `kinds` may take under `controls`: the limits in
    force, and the kinds it may start (none while paused or while `worker` is drained;
    never a paused kind). Jobs already running go on either way."""
    if controls.paused or worker in controls.drained:
        return effective_limits(config, controls), []
    return effective_limits(config, controls), [k for k in kinds
                                                 if k not in controls.paused_kinds]


def held_message(controls: Controls, kind: str) -> str | None:
    """Why a ready queued job of `kind` starts nowhere now, if a pause is why."""
    if controls.paused:
        return "queue paused"
    if kind in controls.paused_kinds:
        return f"kind {kind} paused"
    return None


def default_priority(kind_priority: int, user: UserLimits | None) -> int:
    """The priority of a submit that names none: the kind's, raised to the user's own."""
    if user is None or user.priority is None:
        return kind_priority
    return max(kind_priority, user.priority)


#: A non-admin may ask for at most the priority their submits get by default.
priority_ceiling = default_priority


# --- changes ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """One operator action: what it does to the controls and the event that says so
    (`data` with the action's own fields; the store adds `by`, `controls`, `version`)."""

    event: str
    data: dict[str, Any]
    apply: Callable[[Controls], Controls]


@dataclass(frozen=True)
class Written:
    """What a change stores: the rows it changes (name, value), the controls after it
    (with their new version), and its event's data."""

    rows: list[tuple[str, Any]]
    stored: Controls
    event: str
    data: dict[str, Any]


def written(before: Controls, what: Change, by: str) -> Written | None:
    """What `what` changes in `before` when `by` asks (None: nothing, so no write and no
    event). Both backends write what this says."""
    after = what.apply(before)
    if after.same(before):
        return None
    old, new = before.rows(), after.rows()
    stored = Controls.from_json({**new, "version": before.version + 1})
    return Written([(name, value) for name, value in new.items() if value != old[name]],
                   stored, what.event, {**what.data, "by": by, "controls": stored.to_json()})


def pause(kind: str | None) -> Change:
    if kind is None:
        return Change(EventType.QUEUE_PAUSED, {"kind": None},
                      lambda c: dataclasses.replace(c, paused=True))
    return Change(EventType.QUEUE_PAUSED, {"kind": kind}, lambda c: dataclasses.replace(
        c, paused_kinds=c.paused_kinds | {kind}))


def resume(kind: str | None) -> Change:
    """Resume dispatch: globally (`kind` None: the global pause and every kind's end), or
    one kind's."""
    if kind is None:
        return Change(EventType.QUEUE_RESUMED, {"kind": None},
                      lambda c: dataclasses.replace(c, paused=False, paused_kinds=frozenset()))
    return Change(EventType.QUEUE_RESUMED, {"kind": kind}, lambda c: dataclasses.replace(
        c, paused_kinds=c.paused_kinds - {kind}))


def drain(node: str, drained: bool) -> Change:
    return Change(EventType.NODE_DRAINED if drained else EventType.NODE_UNDRAINED,
                  {"node": node}, lambda c: dataclasses.replace(
                      c, drained=c.drained | {node} if drained else c.drained - {node}))


@dataclass(frozen=True)
class LimitsChange:
    """What `PUT /api/limits` asks: each given key set (None: back to the config's); keys
    not given are left as they are. `reset` first clears every live limit."""

    limits: Mapping[str, int | None] = field(default_factory=dict)
    kinds: Mapping[str, int | None] = field(default_factory=dict)
    users: Mapping[str, Mapping[str, int | None] | None] = field(default_factory=dict)
    reset: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"limits": dict(self.limits), "kinds": dict(self.kinds),
                "users": {u: None if o is None else dict(o) for u, o in self.users.items()},
                "reset": self.reset}


def change_limits(change: LimitsChange) -> Change:
    def apply(c: Controls) -> Controls:
        base = Controls(paused=c.paused, paused_kinds=c.paused_kinds, drained=c.drained) \
            if change.reset else c
        limits = _set(base.limits, change.limits)
        kinds = _set(base.kinds, change.kinds)
        users = dict(base.users)
        for name, values in change.users.items():
            if values is None:
                users.pop(name, None)
                continue
            now = {k: v for k, v in dataclasses.asdict(users.get(name, UserLimits())).items()
                   if v is not None}
            over = UserLimits(**_set(now, values))
            if over.to_json():
                users[name] = over
            else:
                users.pop(name, None)
        return dataclasses.replace(base, limits=limits, kinds=kinds, users=users)

    return Change(EventType.LIMITS_CHANGED, {"change": change.to_json()}, apply)


def _set(current: Mapping[str, int], given: Mapping[str, int | None]) -> dict[str, int]:
    out = dict(current)
    for key, value in given.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def parse_limits(body: Mapping[str, Any], known_kinds: Iterable[str]) -> LimitsChange:
    """A `LimitsChange` from the JSON of `PUT /api/limits`: the keys of LIVE_LIMITS, `kinds`
    {name: n}, `users` {name: {per_user_running?, per_user_queued?, priority?} or null},
    `reset`. ControlError naming the value for anything else: a limit must be a positive
    integer (or null: back to the config's), a kind must be configured."""
    known = sorted(known_kinds)
    allowed = (*LIVE_LIMITS, "kinds", "users", "reset")
    for key in body:
        if key not in allowed:
            raise ControlError(str(key), f"unknown key (known: {', '.join(allowed)})")
    limits = {k: _limit(body[k], k) for k in LIVE_LIMITS if k in body}
    kinds_in = body.get("kinds") or {}
    if not isinstance(kinds_in, dict):
        raise ControlError("kinds", "expected an object of kind names to numbers")
    kinds = {}
    for name, value in kinds_in.items():
        if name not in known:
            raise ControlError(f"kinds.{name}",
                               f"unknown kind (known: {', '.join(known) or 'none'})")
        kinds[str(name)] = _limit(value, f"kinds.{name}")
    users_in = body.get("users") or {}
    if not isinstance(users_in, dict):
        raise ControlError("users", "expected an object of user names to their limits")
    users: dict[str, dict[str, int | None] | None] = {}
    for name, values in users_in.items():
        where = f"users.{name}"
        if not isinstance(name, str) or not USER_NAME.fullmatch(name):
            raise ControlError("users", f"{str(name)[:70]!r} is not a user name")
        if values is None:
            users[name] = None
            continue
        if not isinstance(values, dict):
            raise ControlError(where, f"expected an object of {', '.join(USER_KEYS)}")
        users[name] = {key: _user_value(key, value, f"{where}.{key}")
                       for key, value in values.items()}
    reset = body.get("reset", False)
    if not isinstance(reset, bool):
        raise ControlError("reset", f"expected true or false, got {reset!r}")
    return LimitsChange(limits, kinds, users, reset)


_NULL = " (or null: back to the config's value)"


def _limit(value: Any, where: str, null: str = _NULL) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= _LIMIT_MAX:
        raise ControlError(where, f"must be a positive integer{null}, got {value!r}")
    return int(value)


def _user_value(key: str, value: Any, where: str, null: str = _NULL) -> int | None:
    if key not in USER_KEYS:
        raise ControlError(where, f"unknown key (known: {', '.join(USER_KEYS)})")
    if key != "priority":
        return _limit(value, where, null)
    if value is None:
        return None
    if not _is_int(value) or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ControlError(where, f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}"
                           f"{null}, got {value!r}")
    return int(value)


# --- the config's start values ---------------------------------------------------------------

def config_users(users: Mapping[str, Mapping[str, Any]]) -> dict[str, UserLimits]:
    """`[limits.users.NAME]` as typed overrides; ConfigError with the key and the reason."""
    out = {}
    for name, values in users.items():
        where = f"limits.users.{name}"
        if not USER_NAME.fullmatch(name):
            raise ConfigError(f"{where}: {name!r} is not a user name (letters, digits and "
                              "_.@-, at most 64)")
        try:
            parsed = {k: _user_value(k, v, f"{where}.{k}", "") for k, v in values.items()}
        except ControlError as exc:
            raise ConfigError(str(exc)) from None
        out[name] = UserLimits(**parsed)
    return out


def config_limits(max_running: int, per_user_running: int | None,
                  memory_budget_mb: int | None, kind_max_running: Mapping[str, int],
                  users: Mapping[str, UserLimits]) -> Limits:
    """The config's limits (the start value of every live one)."""
    return Limits(max_running=max_running, per_user_running=per_user_running,
                  memory_budget_mb=memory_budget_mb, kind_max_running=dict(kind_max_running),
                  user_running={u: o.per_user_running for u, o in users.items()
                                if o.per_user_running is not None})
