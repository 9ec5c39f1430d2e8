"""The deliveries' settings (`[webhooks]`, `[notify]`, `[notify.users]`, a kind's
`webhook_url` and `notify`): checked at start with the key and the reason, and turned into
the `Rules` the store applies at every job's end."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobgate import notify, webhooks
from jobgate.addresses import url_problem
from jobgate.deliveries import NOTIFY, WEBHOOK, Rules, Target, config_ref
from jobgate.model import FINAL, USER_NAME, State
from jobgate.units import ConfigError, parse_duration

if TYPE_CHECKING:
    from jobgate.config import Settings

_FINAL_NAMES = sorted(s.value for s in FINAL)


def _states(names: list[str], key: str) -> frozenset[State]:
    bad = [n for n in names if n not in _FINAL_NAMES]
    if bad:
        raise ConfigError(f"{key}: {bad[0]!r} is not a final state "
                          f"(one of {', '.join(_FINAL_NAMES)})")
    return frozenset(State(n) for n in names)


def _webhook_url(url: str, key: str) -> None:
    problem = url_problem(url)
    if problem is not None:
        raise ConfigError(f"{key}: {webhooks.shown_url(url)} {problem}")


def _notify_urls(urls: list[str] | tuple[str, ...], key: str) -> None:
    for i, url in enumerate(urls):
        problem = notify.url_problem(url)
        if problem is not None:
            raise ConfigError(f"{key}[{i}]: {problem}")


def check_deliveries(settings: Settings) -> None:
    """ConfigError (one line: the key and the reason) for a bad delivery setting."""
    hooks, note = settings.webhooks, settings.notify
    _states(hooks.events, "webhooks.events")
    _states(note.on, "notify.on")
    for i, text in enumerate(hooks.backoff):
        if parse_duration(text, f"webhooks.backoff[{i}]") <= 0:
            raise ConfigError(f"webhooks.backoff[{i}]: must be more than 0")
    if hooks.secret is not None and (problem := webhooks.secret_problem(hooks.secret)):
        raise ConfigError(f"webhooks.secret: {problem}")
    if not 0 < hooks.timeout <= 600:
        raise ConfigError(f"webhooks.timeout: must be more than 0 and at most 10 minutes, "
                          f"got {hooks.timeout:g} s")
    if not 0 < note.timeout <= 600:
        raise ConfigError(f"notify.timeout: must be more than 0 and at most 10 minutes, "
                          f"got {note.timeout:g} s")
    if hooks.max_age <= 0:
        raise ConfigError("webhooks.max_age: must be more than 0")
    if note.attach_max_mb is not None and note.attach_max_mb < 0:
        raise ConfigError("notify.attach_max_mb: must not be negative")
    if hooks.url is not None:
        _webhook_url(hooks.url, "webhooks.url")
    _notify_urls(note.urls, "notify.urls")
    for user, urls in note.users.items():
        if not USER_NAME.fullmatch(user):
            # A name no account can have is a typo: its URLs would never be sent to.
            raise ConfigError(f"notify.users.{user}: not a user name (1-64 letters, "
                              "digits, '_', '-', '.', '@')")
        _notify_urls(urls, f"notify.users.{user}")
    for kind in settings.kinds.values():
        if kind.webhook_url is not None:
            _webhook_url(kind.webhook_url, f"kinds.{kind.name}.webhook_url")
        _notify_urls(kind.notify, f"kinds.{kind.name}.notify")


def rules_from(settings: Settings) -> Rules:
    """The rules of deliveries `settings` ask for (the config's URLs, each kept in the
    outbox by its hash: `deliveries.config_ref`)."""
    hooks, note = settings.webhooks, settings.notify
    hook_on = frozenset(State(n) for n in hooks.events)
    note_on = frozenset(State(n) for n in note.on)
    urls: dict[str, str] = {}

    def target(channel: str, source: str, url: str) -> Target:
        ref = config_ref(url)
        urls[ref] = url
        return Target(channel, source, ref, hook_on if channel == WEBHOOK else note_on)

    global_targets = [target(WEBHOOK, "global", hooks.url)] if hooks.url else []
    global_targets += [target(NOTIFY, "global", u) for u in note.urls]
    kind_targets = {}
    for kind in settings.kinds.values():
        mine = [target(WEBHOOK, "kind", kind.webhook_url)] if kind.webhook_url else []
        mine += [target(NOTIFY, "kind", u) for u in kind.notify]
        if mine:
            kind_targets[kind.name] = tuple(mine)
    user_targets = {user: tuple(target(NOTIFY, "user", u) for u in mine)
                    for user, mine in note.users.items() if mine}
    return Rules(tuple(global_targets), kind_targets, hook_on,
                 tuple(parse_duration(t, "webhooks.backoff") for t in hooks.backoff),
                 float(hooks.max_age), urls, user_targets)
