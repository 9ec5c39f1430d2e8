"""One process's view of the operator controls (`queue.live`), and the operator's verbs.

The claims themselves read the controls in their own transactions (controls.py,
`dispatch`); this view is for what a process decides without one: the quota and the
default priority of a submit, the "queue paused" message of a queued job, the numbers of
`GET /api/queue`. It is loaded when the queue opens and follows the control events, each
of which carries the whole controls with their version (an older one never replaces a
newer one). The verbs check what they are given against the configuration, then write
through `Store.change_controls`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from jobgate import controls as rules
from jobgate import logs
from jobgate.controls import ControlError, Controls, LimitsChange, UserLimits
from jobgate.model import CONTROL_EVENTS, Event
from jobgate.scheduler import Limits
from jobgate.store.base import NotFound, Quota, Store

if TYPE_CHECKING:
    from jobgate.config import Settings


class LiveControls:
    """The config's limits with the live controls over them, as this process knows them."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.store = store
        self.kinds = sorted(settings.kinds)
        lim = settings.limits
        self.config_users: dict[str, UserLimits] = rules.config_users(lim.users)
        #: The config's limits: what a claim starts from (the store applies the controls).
        self.config: Limits = rules.config_limits(
            lim.max_running, lim.per_user_running, lim.memory_budget_mb,
            {k.name: k.max_running for k in settings.kinds.values()
             if k.max_running is not None},
            self.config_users)
        self._config_quota = {"max_queued": lim.max_queued,
                              "per_user_queued": lim.per_user_queued}
        self.controls = Controls()

    async def load(self) -> None:
        self._take(await self.store.controls())

    def apply(self, events: Iterable[Event]) -> None:
        """Follow the control events of a committed batch."""
        for event in events:
            if event.type in CONTROL_EVENTS and isinstance(event.data.get("controls"), dict):
                self._take(Controls.from_json(event.data["controls"]))

    def _take(self, controls: Controls) -> None:
        if controls.version >= self.controls.version:
            self.controls = controls

    # --- what this process decides with them ---------------------------------------------
    @property
    def limits(self) -> Limits:
        """The limits in force now."""
        return rules.effective_limits(self.config, self.controls)

    def user(self, name: str) -> UserLimits | None:
        """`name`'s overrides: the config's, with the live ones over them."""
        config, live = self.config_users.get(name), self.controls.users.get(name)
        if live is None:
            return config
        return (config or UserLimits()).merged(live)

    def quota_for(self, owner: str) -> Quota:
        """The queue caps a submit of `owner` is checked against."""
        live = self.controls.limits
        user = self.user(owner)
        per_user = live.get("per_user_queued", self._config_quota["per_user_queued"])
        if user is not None and user.per_user_queued is not None:
            per_user = user.per_user_queued
        return Quota(live.get("max_queued", self._config_quota["max_queued"]), per_user)

    def default_priority(self, owner: str, kind_priority: int) -> int:
        return rules.default_priority(kind_priority, self.user(owner))

    def priority_ceiling(self, owner: str, kind_priority: int) -> int:
        """The highest priority `owner` may ask for without being an admin."""
        return rules.priority_ceiling(kind_priority, self.user(owner))

    def held_message(self, kind: str) -> str | None:
        return rules.held_message(self.controls, kind)

    def stats(self) -> dict[str, Any]:
        """What `GET /api/queue` and `queue.stats` show of the controls."""
        limits = self.limits
        return {"max_running": limits.max_running, "memory_budget_mb": limits.memory_budget_mb,
                "paused": self.controls.paused,
                "paused_kinds": sorted(self.controls.paused_kinds),
                "drained_nodes": sorted(self.controls.drained)}

    def to_json(self) -> dict[str, Any]:
        """`GET /api/controls`: the controls as stored, and each limit in force with where
        it comes from ("config" or "live")."""
        c, limits, quota = self.controls, self.limits, self.quota_for("")
        values = {"max_running": limits.max_running, "per_user_running": limits.per_user_running,
                  "memory_budget_mb": limits.memory_budget_mb,
                  "max_queued": quota.max_queued, "per_user_queued": quota.per_user_queued}
        names = sorted(set(self.config_users) | set(c.users))
        return {
            **c.to_json(),
            "effective": {
                **{k: {"value": values[k], "source": "live" if k in c.limits else "config"}
                   for k in rules.LIVE_LIMITS},
                "kinds": {k: {"value": limits.kind_max_running.get(k),
                              "source": "live" if k in c.kinds else "config"}
                          for k in self.kinds},
                "users": {u: {**(self.user(u) or UserLimits()).to_json(),
                              "source": "live" if u in c.users else "config"} for u in names},
            },
        }

    # --- the operator's verbs --------------------------------------------------------------
    def _kind(self, kind: str | None) -> str | None:
        if kind is not None and kind not in self.kinds:
            raise ControlError("kind", f"unknown kind {kind!r} "
                               f"(known: {', '.join(self.kinds) or 'none'})")
        return kind

    async def pause(self, kind: str | None, by: str) -> Controls:
        """Start nothing more (of `kind`, if given) on any node; running jobs go on."""
        return await self._change(rules.pause(self._kind(kind)), by)

    async def resume(self, kind: str | None, by: str) -> Controls:
        """Dispatch again: everything (`kind` None), or the paused kind `kind`."""
        return await self._change(rules.resume(self._kind(kind)), by)

    async def change_limits(self, body: Mapping[str, Any], by: str) -> Controls:
        """`PUT /api/limits` (ControlError for a bad value)."""
        return await self.set_limits(rules.parse_limits(body, self.kinds), by)

    async def set_limits(self, change: LimitsChange, by: str) -> Controls:
        return await self._change(rules.change_limits(change), by)

    async def drain(self, node: str, by: str, drained: bool = True) -> Controls:
        """Let node `node` finish its running jobs and claim no more (undrain: claim again).
        NotFound for a name no node has registered (undrain: also none drained)."""
        registered = {n.name for n in await self.store.nodes()}
        if node not in registered and (drained or node not in self.controls.drained):
            known = ", ".join(sorted(registered)) or "none"
            raise NotFound(f"no node {node!r} (registered: {known})")
        return await self._change(rules.drain(node, drained), by)

    async def _change(self, change: rules.Change, by: str) -> Controls:
        before = self.controls.rows()
        after = await self.store.change_controls(change, by)
        self._take(after)
        logs.log_limits_changed(before, after.rows(), by=by)
        return after
