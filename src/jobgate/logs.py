"""jobgate's own log: `[logging]`, one line per job transition, pressure and limit changes.

`configure` (called once by `jobgate serve` and `jobgate worker` at start, never on import)
routes every stdlib `logging` record, jobgate's own loggers and uvicorn's alike, through
structlog's `ProcessorFormatter`: plain text lines (structlog's console renderer, no
colours) or JSON lines (`[logging] format = "json"`), on stderr or in `[logging] file`.
Without it (tests, an app that embeds jobgate) nothing is configured here: the host's own
logging decides, and jobgate's info lines stay quiet as stdlib logging's default keeps them.

What is logged, by whom:

- a job's transition (`job.queued`, `job.started`, `job.retrying`, `job.completed`,
  `job.failed`, `job.cancelled`): by the process whose transaction committed it, once
  (`TransitionLog`, fed by `Store.listen_own`, never by the events other nodes wrote):
  `job_id`, `kind`, `owner`, `state`, `attempt`, `max_attempts`, `node` (the process's node
  name), `duration_s` on a run's end, `message` and the error's first line on a failure;
  never a job's arguments, result or progress text.
- memory pressure or load starting and clearing on a worker (`log_pressure`), not each look.
- the effective limits at start (`log_limits`) and a live change of them
  (`log_limits_changed`, for the admin routes that change them).

Nothing secret is written: the last processor before rendering rewrites anything shaped
like a credential in every value (a bearer token, an API token `jg_…`, a JWT, a webhook
secret `whsec_…`, a URL's password, `ticket=`/`token=`/`signature=` query values), so a
stray one in a message, an access log line or a traceback is starred too.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import socket
import sys
import threading
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import structlog

from jobgate.model import RUN_END_EVENTS, STATE_EVENTS, Event, EventType
from jobgate.units import ConfigError

if TYPE_CHECKING:
    from jobgate.config import LimitsSettings, Settings

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error", "critical")
TRANSITIONS = "jobgate.jobs"  # the logger of transition lines
_NODE_LOGGER = "jobgate.node"  # pressure and limits
_ERROR_CHARS = 200  # of a failed job's error, its first line only
_STARTS_KEPT = 10_000  # runs started here whose end another node may have written
_FIELDS = "jobgate_fields"  # the LogRecord attribute carrying a line's structured fields
_LINES = "jobgate_lines"  # ... and the one carrying several lines: (level, message, fields)
_REDACTED = "[redacted]"


@dataclass
class LoggingSettings:
    """`[logging]`: how jobgate's own log lines look and where they go."""

    format: str = "text"  # "text" (readable lines) or "json" (one JSON object a line)
    level: str = "info"  # jobgate's loggers; uvicorn's follow `jobgate serve --log-level`
    file: str | None = None  # appended to (reopened when rotated away); default: stderr
    access: bool = False  # uvicorn's access log (one line a request), in the same format


def check_settings(cfg: LoggingSettings) -> None:
    """Refuse a bad `[logging]` with its key and the reason (ConfigError)."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"logging.format: must be 'text' or 'json', got {cfg.format!r}")
    if cfg.level.lower() not in LEVELS:
        raise ConfigError(f"logging.level: must be one of {', '.join(LEVELS)}, "
                          f"got {cfg.level!r}")
    if cfg.file is not None and not cfg.file.strip():
        raise ConfigError("logging.file: must be a file path (leave it out for stderr)")


# --- secrets out ------------------------------------------------------------------------
_SECRET_PATTERNS = [
    (re.compile(r"(?i)\b(authorization|cookie|x-api-key)([\"']?\s*[:=]\s*[\"']?)"
                r"(?:(?:bearer|basic)\s+)?[^\s\"',;}]+"), r"\1\2" + _REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"), r"\1 " + _REDACTED),
    (re.compile(r"\bjg_[A-Za-z0-9_\-]{8,}"), _REDACTED),  # an API token (auth.TOKEN_PREFIX)
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), _REDACTED),  # JWT
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), _REDACTED),
    (re.compile(r"(?i)([?&;](?:ticket|token|access_token|api_key|key|signature|sig|"
                r"password|secret)=)[^&\s\"']*"), r"\1" + _REDACTED),
    (re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1****@"),
]


# What every pattern above needs somewhere in a text (in lower case), looked for once:
# most values (ids, names, states, numbers as text) have none of it, and skip the seven
# substitutions. Plain substring tests: a regex alternation of these cost 13 µs a line.
_SCREEN = ("authorization", "cookie", "x-api-key", "bearer", "basic", "jg_", "eyj",
           "whsec_", "=", "://")


def _may_hold_secret(text: str) -> bool:
    return any(map(text.lower().__contains__, _SCREEN))


def redact(text: str) -> str:
    """`text` with anything shaped like a credential replaced."""
    if not _may_hold_secret(text):
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_values(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_values(v) for v in value]
    return value


_NESTED = (dict, list, tuple)


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    texts = []
    for value in event_dict.values():
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, _NESTED):
            break
    else:
        if not _may_hold_secret("\n".join(texts)):
            return event_dict  # a line of plain words, ids and numbers: nothing to hide
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_values(value)
    return event_dict


def _lift_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
    """The structured fields a jobgate line carries (`extra={_FIELDS: {...}}`) as keys."""
    record = event_dict.get("_record")
    fields = getattr(record, _FIELDS, None)
    if isinstance(fields, dict):
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict


# --- set-up -----------------------------------------------------------------------------
_QUOTED_IF = frozenset(" \t=\r\n\"'")  # a text value with one of these is shown as its repr
_LEVEL_WIDTH = len("exception")  # the console renderer pads levels to its longest name
_HEAD_KEYS = ("timestamp", "level", "event", "logger", "logger_name")


def console_line(event: Mapping[str, Any]) -> str:
    """What structlog's `ConsoleRenderer(colors=False, pad_event_to=0)` writes for a flat
    line (no exception, no stack): the time, `[level]`, the event, `[logger]`, then the
    other keys sorted as `key=value`. A worker writes two of these a job, and the
    renderer's per-column machinery was most of their cost (`test_logs` holds the two
    equal)."""
    parts: list[str] = []
    for key in _HEAD_KEYS:
        if key not in event:
            continue
        value = event[key]
        if key == "level":
            parts.append(f"[{value:<{_LEVEL_WIDTH}}]")
        elif key in ("logger", "logger_name"):
            parts.append(f"[{value}]")
        else:
            parts.append(str(value))
    for key in sorted(event):
        if key not in _HEAD_KEYS:
            value = event[key]
            if isinstance(value, str):
                text = repr(value) if _QUOTED_IF.intersection(value) else value
            else:
                text = repr(value)
            parts.append(f"{key}={text}")
    return " ".join(p for p in parts if p).rstrip(" ")


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """structlog's formatter, with a short way for jobgate's own lines: a record `_emit`
    made already holds its fields, so it skips the copy of the record and the foreign
    chain (four times the cost of the rendering; a worker writes two lines a job)."""

    def __init__(self, renderer: Any, pre_chain: list[Any]) -> None:
        super().__init__(
            foreign_pre_chain=pre_chain,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info, _redact, renderer])
        self._renderer = renderer
        self._console = isinstance(renderer, structlog.dev.ConsoleRenderer)
        self._stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)

    def format(self, record: logging.LogRecord) -> str:
        lines = getattr(record, _LINES, None)
        if isinstance(lines, list):  # one commit's transitions (`TransitionLog`), a line each
            stamp = self._stamp(None, "", {})["timestamp"]
            return "\n".join(self._line(stamp, logging.getLevelName(level).lower(), message,
                                        record.name, fields)
                             for level, message, fields in lines)
        fields = getattr(record, _FIELDS, None)
        if not isinstance(fields, dict) or record.exc_info:
            return super().format(record)
        stamp = self._stamp(None, "", {})["timestamp"]
        return self._line(stamp, record.levelname.lower(), record.getMessage(), record.name,
                          fields)

    def _line(self, stamp: str, level: str, message: str, logger: str,
              fields: Mapping[str, Any]) -> str:
        event: dict[str, Any] = {"event": message, "level": level, "logger": logger,
                                 "timestamp": stamp}
        for key, value in fields.items():
            event.setdefault(key, value)
        shown = _redact(None, "", event)
        return console_line(shown) if self._console else str(self._renderer(None, "", shown))


def _only_ours() -> bool:
    """Whether this process's lines go through the one handler `configure` installed and
    no other: then a commit's transition lines can travel as one record, one write."""
    handlers = logging.getLogger().handlers
    return len(handlers) == 1 and isinstance(handlers[0], _Handler | _FileHandler) and \
        not logging.getLogger(TRANSITIONS).handlers and not logging.getLogger("jobgate").handlers


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `configure` installed, so a second call replaces it."""


class _FileHandler(logging.handlers.WatchedFileHandler):
    """The same, for `[logging] file`."""


def configure(cfg: LoggingSettings, base_dir: Path | None = None,
              uvicorn_level: str | None = None) -> None:
    """Route all of this process's logging through structlog in `cfg.format` (idempotent:
    a second call replaces the first's handler). `uvicorn_level` is `--log-level`."""
    renderer: Any
    if cfg.format == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, pad_event_to=0, exception_formatter=structlog.dev.plain_traceback)
    pre_chain: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _lift_fields,
    ]
    formatter = _Formatter(renderer, pre_chain)
    handler: logging.Handler
    if cfg.file:
        path = Path(cfg.file)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _FileHandler(path, encoding="utf-8")
    else:
        handler = _Handler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler | _FileHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # The logging HOWTO's "Optimization": no line shows the caller's frame, thread or
    # process, so this process does not look them up for each record.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.getLogger("jobgate").setLevel(cfg.level.upper())
    # structlog's own loggers (if any code uses them) go the same way.
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    level = (uvicorn_level or "warning").upper()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
        named.setLevel(level)
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = cfg.access
    access.setLevel(logging.INFO if cfg.access else logging.CRITICAL + 1)


def start(settings: Settings, uvicorn_level: str | None = None) -> None:
    """A server process's start (`jobgate serve`, `jobgate worker`): logging configured
    from `[logging]`. `started` says so once the process is past its checks."""
    configure(settings.logging, settings.base_dir, uvicorn_level)


def started(settings: Settings, role: str) -> None:
    """The line a server process writes once it runs: its node and the limits in force."""
    log_limits(effective_limits(settings), node_name(settings), role, slots=settings.slots)


def say(settings: Settings, line: str, warning: bool = False) -> None:
    """A start-up line of the CLI ("jobgate: serving on …"): printed on stderr as it is
    in text format; a log line of its own in JSON, so that every line there is JSON."""
    if settings.logging.format != "json":
        print(line, file=sys.stderr)
        return
    text = line.removeprefix("jobgate: ")
    _emit("jobgate", logging.WARNING if warning else logging.INFO,
          text.removeprefix("warning: ") if warning else text, {})


def node_name(settings: Settings) -> str:
    """This process's node name, as its worker names itself (worker.default_name)."""
    return settings.worker.name or f"{socket.gethostname()}:{os.getpid()}"


def _emit(logger: str, level: int, message: str, fields: Mapping[str, Any]) -> None:
    named = logging.getLogger(logger)
    if named.isEnabledFor(level):
        named.log(level, message, extra={_FIELDS: dict(fields)})


# --- job transitions --------------------------------------------------------------------
class TransitionLog:
    """The `Store.listen_own` callback writing one line per job transition this process
    committed. `node` is this process's node name (its worker's, when it runs one)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._started: dict[str, float] = {}  # job id -> when its run started (here)
        self._lock = threading.Lock()  # called on the thread that committed

    def __call__(self, events: list[Event]) -> None:
        logger = logging.getLogger(TRANSITIONS)
        if not logger.isEnabledFor(logging.INFO):
            return
        lines: list[tuple[int, str, dict[str, Any]]] = []
        for event in events:
            if event.type in STATE_EVENTS and event.job_id is not None:
                level, fields = self.fields(event)
                if logger.isEnabledFor(level):
                    lines.append((level, str(event.type), fields))
        if len(lines) > 1 and _only_ours():
            # A record, a lock and a write for the whole commit rather than for each line:
            # those were half of what a line cost, and a worker writes two lines a job.
            logger.log(max(level for level, _, _ in lines), "%d transitions", len(lines),
                       extra={_LINES: lines})
            return
        for level, message, fields in lines:
            _emit(TRANSITIONS, level, message, fields)

    def fields(self, event: Event) -> tuple[int, dict[str, Any]]:
        """The line's level and fields for one state event."""
        data = event.data
        fields: dict[str, Any] = {
            "job_id": event.job_id, "kind": data.get("kind"), "owner": event.owner,
            "state": data.get("state"), "attempt": data.get("attempt"),
            "max_attempts": data.get("max_attempts"), "node": self.node,
        }
        job_id = event.job_id or ""
        with self._lock:
            if event.type == EventType.STARTED:
                self._started.pop(job_id, None)
                self._started[job_id] = event.ts
                while len(self._started) > _STARTS_KEPT:
                    self._started.pop(next(iter(self._started)))
                started = None
            else:
                started = self._started.pop(job_id, None)
        if event.type in RUN_END_EVENTS and started is not None:
            fields["duration_s"] = round(max(0.0, event.ts - started), 3)
        level = logging.INFO
        if event.type == EventType.RETRYING:
            fields["message"] = data.get("message")
            fields["run_at"] = data.get("run_at")
        elif event.type in (EventType.FAILED, EventType.CANCELLED):
            fields["message"] = data.get("message")
        if event.type == EventType.FAILED:
            fields["error"] = first_line(data.get("error"))
            level = logging.WARNING
        return level, fields


def first_line(error: Any) -> str | None:
    """A failure's error as a log line shows it: its first line, at most 200 characters."""
    if error is None:
        return None
    line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return line if len(line) <= _ERROR_CHARS else line[:_ERROR_CHARS - 1] + "…"


# --- pressure and limits ----------------------------------------------------------------
def log_pressure(before: str | None, now: str | None, node: str,
                 limits: LimitsSettings | None = None) -> None:
    """A worker's pressure as last measured (`before`) and now ("memory pressure", "load",
    None): a line when it starts, changes or clears, none while it stays as it was; with the
    machine's available memory and load beside the limits they are held to."""
    if before == now:
        return
    numbers: dict[str, Any] = {
        "available_mb": psutil.virtual_memory().available // 1048576,
        "load": round(os.getloadavg()[0], 2)}
    if limits is not None:
        numbers.update(min_free_memory_mb=limits.min_free_memory_mb, max_load=limits.max_load)
    if now is None:
        _emit(_NODE_LOGGER, logging.INFO, "pressure cleared",
              {"node": node, "pressure": None, "was": before, **numbers})
    else:
        _emit(_NODE_LOGGER, logging.WARNING, "pressure: starting nothing new",
              {"node": node, "pressure": now, "was": before, **numbers})


_LIMIT_KEYS = ("max_running", "max_queued", "per_user_running", "per_user_queued",
               "memory_budget_mb", "node_memory_budget_mb", "min_free_memory_mb", "max_load",
               "start_timeout")


def effective_limits(settings: Settings) -> dict[str, Any]:
    """The `[limits]` in force, as `log_limits` shows them."""
    return {key: getattr(settings.limits, key) for key in _LIMIT_KEYS}


def log_limits(limits: Mapping[str, Any], node: str, role: str, **more: Any) -> None:
    """The effective limits, once at a process's start."""
    _emit(_NODE_LOGGER, logging.INFO, "limits", {"node": node, "role": role, **more,
                                                  "limits": dict(limits)})


def log_limits_changed(before: Mapping[str, Any], after: Mapping[str, Any],
                       by: str | None = None, node: str | None = None) -> None:
    """A live change of limits (the admin routes): one line naming each changed key with
    its old and new value, and who changed it; none when nothing changed."""
    changed = {key: {"from": before.get(key), "to": value} for key, value in after.items()
               if before.get(key) != value}
    changed.update({key: {"from": value, "to": None} for key, value in before.items()
                    if key not in after})
    if changed:
        _emit(_NODE_LOGGER, logging.WARNING, "limits changed",
              {"node": node, "by": by, "changed": changed})
