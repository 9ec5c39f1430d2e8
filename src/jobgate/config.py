"""Settings: one typed object with defaults, read from `jobgate.toml` and `JOBGATE_*`.

Every key can be overridden by `JOBGATE_<SECTION>_<KEY>` (`JOBGATE_LIMITS_MAX_RUNNING=2`);
`JOBGATE_DB` is short for `JOBGATE_STORAGE_URL`; a database given as a bare path
(`JOBGATE_DB=./jobgate.db`, as `--db ./jobgate.db`) is that SQLite file. A bad value is
refused with its key and the reason as a ConfigError, which the CLI prints as one line and
exits with code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobgate.controls import config_users
from jobgate.delivery_config import check_deliveries
from jobgate.kinds import Kind, check_fits, parse_kind
from jobgate.logs import LoggingSettings
from jobgate.logs import check_settings as check_logging
from jobgate.schedules import Schedule, parse_schedules

# Re-exported: the CLI, the rate limiter and tests import these from here.
from jobgate.units import ConfigError as ConfigError
from jobgate.units import Duration as Duration
from jobgate.units import Rate as Rate
from jobgate.units import parse_duration as parse_duration
from jobgate.units import parse_rate as parse_rate

DEFAULT_DB_URL = "sqlite:///jobgate.db"
DEFAULT_PORT = 8077
DEFAULT_MAX_RUNNING = 2
DEFAULT_LEASE_S = 30.0
DEFAULT_AUTO_MEMORY_MB = 256  # what a job of an "auto" kind reserves before any history
DEFAULT_AUTO_MEMORY_HISTORY = 20  # an "auto" kind learns from this many recent jobs
DEFAULT_AUTO_MEMORY_MARGIN_PCT = 25  # ... reserving this much above their 90th percentile


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def database_url(value: str) -> str:
    """A database URL from what a user wrote: a URL as it is, a bare file path (no
    `scheme:`) as the SQLite file at that path (relative to the working directory)."""
    if not value or _URL_SCHEME.match(value):
        return value
    return f"sqlite:///{value}"


_WEEK = Duration(7 * 86400)
_HOUR = Duration(3600)
_DAY = Duration(86400)
DEFAULT_MAX_FILE_MB = 4096
DEFAULT_QUOTA_PER_USER_MB = 10240
DEFAULT_TOKEN_TTL = Duration(12 * 3600)
DEFAULT_TICKET_TTL = Duration(60)
DEFAULT_KEEPALIVE = Duration(15)
DEFAULT_LOGIN_BACKOFF_MAX = Duration(300)
DEFAULT_REQUEST_TIMEOUT = Duration(10)
DEFAULT_MAX_BATCH = 1000
DEFAULT_WEBHOOK_TIMEOUT = Duration(10)
DEFAULT_NOTIFY_TIMEOUT = Duration(30)
DEFAULT_SUBMIT_PER_USER = Rate(600, 60)
DEFAULT_SUBMIT_PER_IP = Rate(1200, 60)
DEFAULT_LOGIN_PER_USER = Rate(10, 60)
DEFAULT_LOGIN_PER_IP = Rate(30, 60)


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: str = "./jobgate-data"  # jobs' folders and their outputs
    input_dir: str = "./jobgate-input"  # where `path` arguments must stay (made at start)
    allowed_origins: list[str] = field(default_factory=list)
    # Origins of other sites whose pages may call the HTTP API and its SSE streams
    # (CORS, with credentials): exact origins only, never "*".
    cors_origins: list[str] = field(default_factory=list)
    # Addresses (or networks) of reverse proxies whose X-Forwarded-For / -Proto is believed:
    # behind one of them a client's address (login and submit limits) is the one it names.
    # The default is a proxy on this machine; [] trusts no header at all.
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    max_request_kb: int = 256
    # A request's headers must arrive within this of its first byte, and its body may
    # pause no longer than this; past it, 408 and the connection is closed.
    request_timeout: Duration = DEFAULT_REQUEST_TIMEOUT
    # Folders Python kinds' modules are imported from (`function = "mykinds:analyze"`),
    # relative to the config file's folder; unset: that folder itself. `[]` adds none.
    python_path: list[str] | None = None
    # Modules imported at start whose module-level `jobgate.KindRegistry` declare kinds
    # in code (`jobgate.registry`), merged with the [kinds] tables.
    kind_modules: list[str] = field(default_factory=list)
    # The most jobs one `POST /api/batches` may submit (all or none, in one transaction).
    max_batch: int = DEFAULT_MAX_BATCH


@dataclass
class StorageSettings:
    url: str = DEFAULT_DB_URL
    # "full" fsyncs every commit, so an acknowledged job survives power loss; "normal"
    # keeps it across a crash of jobgate but may lose the last commits on power loss.
    durability: str = "full"


@dataclass
class LimitsSettings:
    max_running: int = DEFAULT_MAX_RUNNING
    max_queued: int | None = None
    per_user_running: int | None = None
    per_user_queued: int | None = None
    memory_budget_mb: int | None = None  # across all nodes
    node_memory_budget_mb: int | None = None  # per node; default: the machine's memory
    min_free_memory_mb: int | None = None  # a node starts nothing while less is available
    max_load: float | None = None  # ... or while the 1-minute load average is above this
    # A kind with memory_mb = "auto": each job reserves the 90th percentile of the measured
    # peaks of the kind's last `auto_memory_history` completed jobs, plus the margin.
    auto_memory_default_mb: int = DEFAULT_AUTO_MEMORY_MB
    auto_memory_history: int = DEFAULT_AUTO_MEMORY_HISTORY
    auto_memory_margin_pct: int = DEFAULT_AUTO_MEMORY_MARGIN_PCT
    start_timeout: Duration | None = None
    # `[limits.users.NAME]`: one user's own per_user_running, per_user_queued and priority
    # (controls.py: `config_users` checks them; a live change replaces them at run time).
    users: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class RetentionSettings:
    finished: Duration = _WEEK  # finished jobs, logs and outputs kept this long
    per_user_history: int | None = None  # at most this many finished jobs per user
    events: Duration = _HOUR
    # An upload no job names any more (its jobs cleaned, or never used) is deleted once
    # it is this old.
    uploads: Duration = _DAY


@dataclass
class UploadsSettings:
    """Files users upload for `path` arguments (POST /api/uploads); "off" for no limit."""

    max_file_mb: int | None = DEFAULT_MAX_FILE_MB  # one file
    quota_per_user_mb: int | None = DEFAULT_QUOTA_PER_USER_MB  # all of one user's uploads


@dataclass
class AuthSettings:
    # Without auth every request acts as `anonymous_user`, an admin: only for a machine
    # nobody else can reach.
    enabled: bool = True
    anonymous_user: str = "admin"
    token_ttl: Duration = DEFAULT_TOKEN_TTL  # life of a login (JWT) from POST /api/auth/token
    ticket_ttl: Duration = DEFAULT_TICKET_TTL  # life of a single-use stream ticket; at most 60 s


@dataclass
class StreamSettings:
    """Server-Sent Events and WebSocket streams."""

    keepalive: Duration = DEFAULT_KEEPALIVE  # a comment (SSE) or a ping (WebSocket) this often
    max_per_user: int = 20  # open streams per user; past it 429
    buffer_kb: int = 1024  # events waiting for one slow client; past it the client is dropped


@dataclass
class RateLimitSettings:
    """Requests allowed per user and per client IP; "off" (or empty) for no limit."""

    submit_per_user: Rate | None = DEFAULT_SUBMIT_PER_USER
    submit_per_ip: Rate | None = DEFAULT_SUBMIT_PER_IP
    login_per_user: Rate | None = DEFAULT_LOGIN_PER_USER
    login_per_ip: Rate | None = DEFAULT_LOGIN_PER_IP
    # login_per_user counts one user's logins from one address, so a guesser elsewhere
    # cannot spend the real user's. After this many bad passwords in a row for one user
    # from one address, each further attempt from there must wait twice as long as the one
    # before (1 s, 2 s, 4 s …), up to login_backoff_max ...
    login_free_failures: int = 3
    # ... and after this many in a row from one address, whatever the users, likewise.
    login_free_failures_per_ip: int = 10
    login_backoff_max: Duration = DEFAULT_LOGIN_BACKOFF_MAX


@dataclass
class WorkerSettings:
    name: str = ""  # node id; defaults to the host name and pid
    slots: int | None = None  # jobs this node runs at once; default: limits.max_running
    lease_s: float = DEFAULT_LEASE_S
    cancel_grace_s: float = 5.0  # SIGTERM, then SIGKILL after this
    log_max_lines: int = 10_000  # per job; past it the head and tail are kept (moves.kept_log)
    poll_s: float = 2.0  # longest sleep between looks at the database


@dataclass
class WebhookSettings:
    """Webhooks of jobs' ends (deliveries.py, webhooks.py), signed as Standard Webhooks say."""

    url: str | None = None  # every job's end goes here too (as [kinds.X] webhook_url does)
    # "whsec_" + base64 of the key; unset: one is made once and kept in the data folder
    # (secrets/webhook_secret), which every node must then share.
    secret: str | None = None
    events: list[str] = field(default_factory=lambda: ["completed", "failed", "cancelled"])
    timeout: Duration = DEFAULT_WEBHOOK_TIMEOUT  # one attempt's whole request
    backoff: list[str] = field(
        default_factory=lambda: ["10s", "30s", "2m", "10m", "30m", "1h"])
    max_age: Duration = _DAY  # no attempt later than this after the job's end
    # A job's own webhook_url may name a loopback, private or link-local address.
    allow_private: bool = False


@dataclass
class NotifySettings:
    """Notifications of jobs' ends through Apprise (notify.py): URLs in its syntax."""

    urls: list[str] = field(default_factory=list)
    on: list[str] = field(default_factory=lambda: ["completed", "failed"])
    attach_max_mb: int | None = 20  # outputs up to this size in all are attached; "off": none
    timeout: Duration = DEFAULT_NOTIFY_TIMEOUT
    # `[notify.users]`: a user name -> URLs told of every end of that user's jobs. Set by
    # the operator only: a user cannot make jobgate send anywhere the config does not name.
    users: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class MetricsSettings:
    """`GET /metrics`, the Prometheus scrape: open to anyone who can reach the server,
    unless `token` is set, which a scraper must then send as `Authorization: Bearer`."""

    token: str | None = None


@dataclass
class Settings:
    """Everything jobgate can be told. Build with `load_settings`."""

    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    uploads: UploadsSettings = field(default_factory=UploadsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    streams: StreamSettings = field(default_factory=StreamSettings)
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)  # logs.py
    kinds: dict[str, Kind] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)  # `[schedules.NAME]`
    base_dir: Path = field(default_factory=Path.cwd)
    config_file: Path | None = None  # the file these settings were read from, if any

    @functools.cached_property
    def data_path(self) -> Path:
        return (self.base_dir / self.server.data_dir).resolve()

    @functools.cached_property
    def input_path(self) -> Path:
        return (self.base_dir / self.server.input_dir).resolve()

    @functools.cached_property
    def python_paths(self) -> list[Path]:
        """Where Python kinds' own modules are found (`[server] python_path`, else the
        config file's folder; nothing without a file)."""
        if self.server.python_path is None:
            return [self.base_dir] if self.config_file is not None else []
        return [(self.base_dir / p).resolve() for p in self.server.python_path]

    @property
    def slots(self) -> int:
        return self.worker.slots or self.limits.max_running


_SECTIONS = {
    "server": ServerSettings,
    "storage": StorageSettings,
    "limits": LimitsSettings,
    "retention": RetentionSettings,
    "uploads": UploadsSettings,
    "auth": AuthSettings,
    "streams": StreamSettings,
    "rate_limits": RateLimitSettings,
    "worker": WorkerSettings,
    "webhooks": WebhookSettings,
    "notify": NotifySettings,
    "metrics": MetricsSettings,
    "logging": LoggingSettings,
}


def load_settings(
    path: str | Path | None = None,
    env: typing.Mapping[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Read the TOML file (if any), then environment overrides, then explicit overrides.

    `overrides` is what the CLI parsed (`{"server": {"port": 9000}}`); it wins over all.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        base_dir = file.resolve().parent
    for name, value in env.items():
        if not name.startswith("JOBGATE_") or not value:
            continue
        rest = name.removeprefix("JOBGATE_").lower()
        if rest == "db":
            data.setdefault("storage", {})["url"] = value
            continue
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                data.setdefault(section, {})[rest.removeprefix(section + "_")] = _env_value(value)
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})

    settings = Settings(base_dir=base_dir,
                        config_file=Path(path).resolve() if path is not None else None)
    for section, section_data in data.items():
        if section in ("kinds", "schedules"):
            continue
        cls = _SECTIONS.get(section)
        if cls is None:
            known = ", ".join([*_SECTIONS, "kinds", "schedules"])
            raise ConfigError(f"{section}: unknown section (known: {known})")
        if not isinstance(section_data, dict):
            raise ConfigError(f"{section}: expected a table")
        setattr(settings, section, _build(cls, section, section_data))
    # Before the kinds: a Python kind's module is imported as it is read.
    add_python_path(settings)
    if "kinds" in data:
        if not isinstance(data["kinds"], dict):
            raise ConfigError("kinds: expected a table of kinds")
        for kind_name, spec in data["kinds"].items():
            settings.kinds[kind_name] = parse_kind(kind_name, spec, ConfigError)
    if settings.server.kind_modules:
        from jobgate.registry import load_kind_modules  # it imports kinds declared in code
        load_kind_modules(settings)
    settings.storage.url = database_url(settings.storage.url)
    _check(settings)
    if "schedules" in data:  # after the kinds, which a schedule's args are checked against
        settings.schedules = parse_schedules(data["schedules"], settings.kinds,
                                             settings.input_path)
    check_deliveries(settings)
    return settings


def add_python_path(settings: Settings) -> None:
    """Make `settings.python_paths` importable in this process (and so in the worker's
    pool processes, which start with its `sys.path`). Appended: a module there cannot
    shadow the standard library or an installed package."""
    for folder in settings.python_paths:
        if not folder.is_dir():
            raise ConfigError(f"server.python_path: {folder} is not a folder")
        if str(folder) not in sys.path:
            sys.path.append(str(folder))


def _env_value(text: str) -> Any:
    """An environment value as TOML would read it, falling back to the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(cls: type[Any], section: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"{section}.{key}: unknown key (known: {', '.join(sorted(fields))})"
            )
        kwargs[key] = _coerce(hints[key], value, f"{section}.{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "off")):
            return None
        return _coerce(inner[0], value, key)
    if hint is Duration:
        return Duration(parse_duration(value, key))
    if hint is Rate:
        return parse_rate(value, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return {str(name): _coerce(args[1], item, f"{key}.{name}")
                for name, item in value.items()}
    if typing.get_origin(hint) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{key}: unsupported setting type")  # pragma: no cover


#: A bearer token as RFC 6750 spells one (b64token), and long enough not to be guessed.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_MIN_TOKEN_CHARS = 16


def _check_metrics_token(token: str | None) -> None:
    """The token must be one a scraper can send in an Authorization header; the message
    never quotes it (it is a secret)."""
    if token is None:
        return
    if not _TOKEN.fullmatch(token):
        raise ConfigError("metrics.token: must be letters, digits and -._~+/ (as a bearer "
                          "token is), with no spaces")
    if len(token) < _MIN_TOKEN_CHARS:
        raise ConfigError(f"metrics.token: must be at least {_MIN_TOKEN_CHARS} characters, "
                          f"got {len(token)}")


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")


def _check(settings: Settings) -> None:
    positive = {
        "server.port": settings.server.port,
        "limits.max_running": settings.limits.max_running,
        "limits.max_queued": settings.limits.max_queued,
        "limits.per_user_running": settings.limits.per_user_running,
        "limits.per_user_queued": settings.limits.per_user_queued,
        "limits.memory_budget_mb": settings.limits.memory_budget_mb,
        "worker.slots": settings.worker.slots,
        "worker.log_max_lines": settings.worker.log_max_lines,
        "retention.per_user_history": settings.retention.per_user_history,
        "limits.min_free_memory_mb": settings.limits.min_free_memory_mb,
        "limits.node_memory_budget_mb": settings.limits.node_memory_budget_mb,
        "limits.auto_memory_default_mb": settings.limits.auto_memory_default_mb,
        "limits.auto_memory_history": settings.limits.auto_memory_history,
        "streams.max_per_user": settings.streams.max_per_user,
        "streams.buffer_kb": settings.streams.buffer_kb,
        "uploads.max_file_mb": settings.uploads.max_file_mb,
        "uploads.quota_per_user_mb": settings.uploads.quota_per_user_mb,
        "server.max_batch": settings.server.max_batch,
    }
    for key, value in positive.items():
        if value is not None and value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if not 0 < settings.server.port < 65536:
        raise ConfigError(f"server.port: must be between 1 and 65535, got {settings.server.port}")
    if not 0 <= settings.limits.auto_memory_margin_pct <= 1000:
        raise ConfigError(f"limits.auto_memory_margin_pct: must be from 0 to 1000, "
                          f"got {settings.limits.auto_memory_margin_pct}")
    if settings.limits.max_load is not None and settings.limits.max_load <= 0:
        raise ConfigError(f"limits.max_load: must be more than 0, got {settings.limits.max_load}")
    if settings.limits.start_timeout is not None and settings.limits.start_timeout <= 0:
        raise ConfigError("limits.start_timeout: must be at least 1 ms (leave it out for none)")
    if not 0 < settings.auth.ticket_ttl <= 60:
        raise ConfigError(f"auth.ticket_ttl: must be more than 0 and at most 60 seconds, "
                          f"got {settings.auth.ticket_ttl:g}")
    if settings.auth.token_ttl < 60:
        raise ConfigError(f"auth.token_ttl: must be at least 1 minute, "
                          f"got {settings.auth.token_ttl:g} s")
    if not 0.1 <= settings.server.request_timeout <= 3600:
        raise ConfigError(f"server.request_timeout: must be from 100 ms to 1 hour, "
                          f"got {settings.server.request_timeout:g} s")
    if settings.streams.keepalive < 1:
        raise ConfigError(f"streams.keepalive: must be at least 1 second, "
                          f"got {settings.streams.keepalive:g}")
    _check_metrics_token(settings.metrics.token)
    check_logging(settings.logging)
    config_users(settings.limits.users)
    for key in ("login_free_failures", "login_free_failures_per_ip"):
        if getattr(settings.rate_limits, key) < 0:
            raise ConfigError(f"rate_limits.{key}: must not be negative")
    for origin in settings.server.allowed_origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(f"server.allowed_origins: {origin!r} is not an origin like "
                              "'https://jobs.example.org' (scheme, host, optional port; no path)")
    for origin in settings.server.cors_origins:
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(f"server.cors_origins: {origin!r} is not an origin like "
                              "'https://app.example.org' (scheme, host, optional port; no "
                              "path; '*' is refused: browsers send credentials only to a "
                              "named origin)")
    for proxy in settings.server.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"server.trusted_proxies: {proxy!r} is not an IP address or "
                              "network like '10.0.0.5' or '10.0.0.0/24'") from None
    if settings.worker.lease_s < 1:
        raise ConfigError(
            f"worker.lease_s: must be at least 1 second, got {settings.worker.lease_s}")
    if settings.storage.durability not in ("full", "normal"):
        raise ConfigError(
            f"storage.durability: must be 'full' or 'normal', got {settings.storage.durability!r}"
        )
    if settings.input_path == settings.data_path or \
            settings.input_path.is_relative_to(settings.data_path):
        raise ConfigError(f"server.input_dir: {settings.input_path} is inside server.data_dir "
                          f"({settings.data_path}), which no path argument may reach")
    url = settings.storage.url
    if not (url.startswith("sqlite://") or url.startswith(("postgresql://", "postgres://"))):
        raise ConfigError(f"storage.url: must start with sqlite:/// or postgresql://, got {url!r}")
    check_fits(settings.kinds.values(), settings.limits)


