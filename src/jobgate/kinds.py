"""Kinds: named job types, their argument schemas and command templates.

Submitted arguments are checked against a kind's schema in `jobgate.arguments`.

A command kind fills each `{name}` of its argv template with one validated argument, so
one argument is always exactly one argv element and never reaches a shell. A Python kind
names a function `package.module:function` that receives a `JobContext` and the arguments.

Placeholders of an argv element: `{name}` for each declared argument, and the built-in
ones, which need no declaration:

- `{output_dir}`: the job's own folder (absolute); every file the job writes there is one
  of its outputs. It is also the command's working directory.
- `{job_id}`: the job's id.

`{{` and `}}` are a literal `{` and `}` (as in Python's `str.format`): `"{{\"a\": 1}}"` is
the element `{"a": 1}`. A placeholder is plain: no `{name!r}`, `{name:>5}`, `{a.b}`.

What a command kind may take from its run, besides its outputs:

- `progress`: a parser's name (`"ffmpeg"`, `"yt-dlp"`, `"spotdl"`) or a regular expression
  (see `jobgate.progress`), read on every line of stdout and stderr.
- `result = "json-last-line"`: the last stdout line that is a JSON object or array becomes
  the job's `result`; `result = "json-file"`: the file `result.json` the job writes into
  `{output_dir}` does (it is then not listed among the outputs, and removed once read).
  A run that ends well without a readable result fails, without retry: the kind promised
  one, and a completed job without it would hide the fault.
- `no_retry_on` / `retry_on`: regular expressions searched (`re.search`, case-sensitive;
  plain text such as `"HTTP Error 404"` matches itself) in every output line and in the
  job's error. A failure any `no_retry_on` pattern matches is permanent; with `retry_on`,
  only a failure one of its patterns matches is retried.
"""

from __future__ import annotations

import importlib
import inspect
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobgate import recipes
from jobgate.arguments import ArgSpec, ArgumentError, check_value
from jobgate.progress import NAMES as PROGRESS_PARSERS
from jobgate.progress import ParserFactory, parser_for
from jobgate.units import ConfigError, parse_duration

ARG_TYPES = ("string", "integer", "number", "boolean", "url", "path")
#: Placeholders every command kind may use without declaring them.
BUILTIN_PLACEHOLDERS = frozenset({"output_dir", "job_id"})
#: A command kind's `result` setting: where the job's result comes from.
RESULT_SOURCES = ("json-last-line", "json-file")
RESULT_FILE = "result.json"  # what a `result = "json-file"` job writes into its folder
PRIORITY_LIMIT = 1000  # a kind's or a job's priority stays within plus or minus this


@dataclass(frozen=True)
class Kind:
    """A registered job type; `argv` for a command kind, `function` for a Python kind."""

    name: str
    argv: tuple[str, ...] | None = None
    function: str | None = None
    args: dict[str, ArgSpec] = field(default_factory=dict)
    progress: ParserFactory | None = None  # one parser per run: it learns as it reads
    result: str | None = None  # one of RESULT_SOURCES (a command kind), or None
    no_retry_on: tuple[re.Pattern[str], ...] = ()  # a failure matching one is permanent
    retry_on: tuple[re.Pattern[str], ...] | None = None  # only failures matching one retry
    timeout_s: float | None = None
    max_attempts: int = 1
    backoff_s: float = 5.0  # first retry delay; doubles per attempt, with jitter
    backoff_max_s: float = 3600.0
    retry_on_exit_codes: tuple[int, ...] | None = None  # None: any failure is retryable
    memory_mb: int = 0  # the estimate each job reserves (0 for an "auto" kind)
    memory_auto: bool = False  # memory_mb = "auto": learned from the kind's measured peaks
    max_running: int | None = None
    priority: int = 0
    allow_private_urls: bool = False
    description: str = ""
    memory_limit_mb: int | None = None  # the process tree is killed past this RSS
    retry_on_memory_limit: bool = False
    nice: int | None = None  # 0-19: lower CPU priority for the job's processes
    # A Python kind run in the worker's own process (a thread, or its event loop) rather
    # than a pool process: cheaper per job, but no hard stop, no memory measurement or
    # limit, and a crash takes the worker down.
    in_process: bool = False
    # What becomes of the files of a run that ends without completing: "keep" lists them
    # as `partial` (never as the result), "delete" removes them.
    partial_outputs: str = "keep"
    # Where this kind's jobs' ends go besides the global [webhooks] and [notify] targets
    # (checked by delivery_config.py with the rest of the deliveries' settings).
    webhook_url: str | None = None
    notify: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        """The argument schema as JSON, for the API and the dashboard's forms."""
        return {
            "name": self.name,
            "description": self.description,
            "type": "command" if self.argv else "python",
            "in_process": self.in_process,
            "max_attempts": self.max_attempts,
            "memory_mb": "auto" if self.memory_auto else self.memory_mb,
            "memory_limit_mb": self.memory_limit_mb,
            "timeout_s": self.timeout_s,
            "args": {
                name: {
                    "type": a.type,
                    "required": a.required,
                    "default": a.default,
                    "pattern": a.pattern,
                    "min": a.min,
                    "max": a.max,
                    "choices": list(a.choices) if a.choices else None,
                    "description": a.description,
                }
                for name, a in self.args.items()
            },
        }


_KIND_KEYS = {
    "argv", "function", "args", "progress", "timeout", "max_attempts", "backoff",
    "backoff_max", "retry_on_exit_codes", "memory_mb", "max_running", "priority",
    "allow_private_urls", "description", "memory_limit_mb", "retry_on_memory_limit", "nice",
    "in_process", "recipe", "partial_outputs", "result", "no_retry_on", "retry_on",
    "webhook_url", "notify",
}
_ARG_KEYS = {"type", "default", "pattern", "min", "max", "choices", "description", "max_length"}


def parse_kind(name: str, spec: Any, error: Callable[[str], Exception]) -> Kind:
    """Build a Kind from its `[kinds.NAME]` table; `error(msg)` makes the exception to raise."""
    key = f"kinds.{name}"
    spec = recipes.kind_table(name, spec, error)  # `recipe = "compress"`: its keys first
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise error(f"{key}: a kind's name may use letters, digits, '_', '-' and '.'")
    if not isinstance(spec, dict):
        raise error(f"{key}: expected a table")
    for k in spec:
        if k not in _KIND_KEYS:
            raise error(f"{key}.{k}: unknown key (known: {', '.join(sorted(_KIND_KEYS))})")
    if ("argv" in spec) == ("function" in spec):
        raise error(f"{key}: set exactly one of argv (a command) or function (Python)")

    def want(k: str, typ: type | tuple[type, ...], what: str) -> Any:
        value = spec.get(k)
        if value is not None and (not isinstance(value, typ) or (isinstance(value, bool) and
                                  typ is not bool)):
            raise error(f"{key}.{k}: expected {what}, got {value!r}")
        return value

    args_spec = want("args", dict, "a table of arguments") or {}
    args = {a: _parse_arg(f"{key}.args.{a}", s, error) for a, s in args_spec.items()}

    argv: tuple[str, ...] | None = None
    function = want("function", str, "'package.module:function'")
    if "argv" in spec:
        raw = spec["argv"]
        if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
            raise error(f"{key}.argv: expected a non-empty list of strings")
        for element in raw:
            for placeholder in _placeholders(element, f"{key}.argv", error):
                if placeholder not in args and placeholder not in BUILTIN_PLACEHOLDERS:
                    raise error(
                        f"{key}.argv: {{{placeholder}}} names no argument declared in "
                        f"[{key}.args]"
                    )
        argv = tuple(raw)
    else:
        assert function is not None
        func = load_function(function, f"{key}.function", error)
        if not args:
            args = _args_from_signature(func, f"{key}.function", error)

    progress = None
    setting = want("progress", str, f"a parser name ({', '.join(PROGRESS_PARSERS)}) or a "
                   "regular expression")
    if setting is not None:
        if argv is None:
            raise error(f"{key}.progress: only for a command kind (a Python kind reports "
                        "with ctx.progress)")
        try:
            progress = parser_for(setting)
        except ValueError as exc:
            raise error(f"{key}.progress: {exc}") from None
    result = want("result", str, f"one of {', '.join(RESULT_SOURCES)}")
    if result is not None and result not in RESULT_SOURCES:
        raise error(f"{key}.result: must be one of {', '.join(RESULT_SOURCES)}, got {result!r}")
    if result is not None and argv is None:
        raise error(f"{key}.result: only for a command kind (a Python kind returns its result)")
    no_retry_on = _patterns(spec, "no_retry_on", key, error)
    retry_on = _patterns(spec, "retry_on", key, error)

    def duration(k: str) -> float | None:
        return None if spec.get(k) is None else parse_duration(spec[k], f"{key}.{k}")

    max_attempts = _default(want("max_attempts", int, "an integer"), 1)
    if not 1 <= max_attempts <= 1000:
        raise error(f"{key}.max_attempts: must be at least 1 and at most 1000, got {max_attempts}")
    codes = want("retry_on_exit_codes", list, "a list of exit codes")
    if codes is not None and not all(isinstance(c, int) for c in codes):
        raise error(f"{key}.retry_on_exit_codes: expected a list of integers")
    memory_auto = spec.get("memory_mb") == "auto"
    memory_mb = 0 if memory_auto else _default(
        want("memory_mb", int, 'an integer (megabytes) or "auto"'), 0)
    memory_limit_mb = want("memory_limit_mb", int, "an integer (megabytes)")
    if memory_limit_mb is not None and memory_limit_mb < 1:
        raise error(f"{key}.memory_limit_mb: must be at least 1, got {memory_limit_mb}")
    nice = want("nice", int, "an integer from 0 to 19")
    if nice is not None and not 0 <= nice <= 19:
        raise error(f"{key}.nice: must be from 0 to 19, got {nice}")
    max_running = want("max_running", int, "an integer")
    priority = _default(want("priority", int, "an integer"), 0)
    if not -PRIORITY_LIMIT <= priority <= PRIORITY_LIMIT:
        raise error(f"{key}.priority: must be between -{PRIORITY_LIMIT} and {PRIORITY_LIMIT}, "
                    f"got {priority}")
    if memory_mb < 0 or (max_running is not None and max_running < 1):
        raise error(f"{key}: memory_mb must be >= 0 and max_running >= 1")
    in_process = bool(want("in_process", bool, "true or false"))
    if in_process and argv is not None:
        raise error(f"{key}.in_process: only for a Python kind (function); a command always "
                    "runs in its own process")
    if in_process and memory_limit_mb is not None:
        raise error(f"{key}.memory_limit_mb: an in_process kind is not measured, so it "
                    "cannot be limited")
    if memory_limit_mb is not None and memory_mb > memory_limit_mb:
        raise error(f"{key}.memory_mb: {memory_mb} is more than memory_limit_mb "
                    f"({memory_limit_mb}); a job could never stay under its limit")
    notify = want("notify", list, "a list of notification URLs")
    if notify is not None and not all(isinstance(u, str) for u in notify):
        raise error(f"{key}.notify: expected a list of notification URLs (strings)")
    return Kind(
        name=name,
        argv=argv,
        function=function,
        args=args,
        progress=progress,
        result=result,
        no_retry_on=no_retry_on or (),
        retry_on=retry_on,
        timeout_s=duration("timeout"),
        max_attempts=max_attempts,
        backoff_s=_default(duration("backoff"), 5.0),
        backoff_max_s=_default(duration("backoff_max"), 3600.0),
        retry_on_exit_codes=tuple(codes) if codes is not None else None,
        memory_mb=memory_mb,
        memory_auto=memory_auto,
        max_running=max_running,
        priority=priority,
        allow_private_urls=bool(want("allow_private_urls", bool, "true or false")),
        description=want("description", str, "a string") or "",
        memory_limit_mb=memory_limit_mb,
        retry_on_memory_limit=bool(want("retry_on_memory_limit", bool, "true or false")),
        nice=nice,
        in_process=in_process,
        partial_outputs=_partial_outputs(want("partial_outputs", str, '"keep" or "delete"'),
                                         f"{key}.partial_outputs", error),
        webhook_url=want("webhook_url", str, "a URL") or None,
        notify=tuple(notify or ()),
    )


def _partial_outputs(value: str | None, key: str, error: Callable[[str], Exception]) -> str:
    if value not in (None, "keep", "delete"):
        raise error(f'{key}: expected "keep" or "delete", got {value!r}')
    return value or "keep"


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _patterns(spec: dict[str, Any], k: str, key: str, error: Callable[[str], Exception]
              ) -> tuple[re.Pattern[str], ...] | None:
    raw = spec.get(k)
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
        raise error(f"{key}.{k}: expected a list of regular expressions (or plain text), "
                    f"got {raw!r}")
    compiled = []
    for pattern in raw:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise error(f"{key}.{k}: {pattern!r} is not a valid regular expression: {exc} "
                        "(escape special characters with a backslash)") from None
    return tuple(compiled)


def failure_matches(patterns: tuple[re.Pattern[str], ...], texts: list[str]) -> bool:
    """Whether any of a kind's `no_retry_on` / `retry_on` patterns is found in any text."""
    return any(p.search(text) for p in patterns for text in texts)


def _placeholders(text: str, key: str, error: Callable[[str], Exception]) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise error(f"{key}: bad placeholder in {text!r}: {exc}") from None
    names = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise error(f"{key}: placeholder {{{name}}} must be a plain {{name}}")
        names.append(name)
    return names


def _parse_arg(key: str, spec: Any, error: Callable[[str], Exception]) -> ArgSpec:
    if not isinstance(spec, dict):
        raise error(f"{key}: expected a table like {{ type = \"string\" }}")
    for k in spec:
        if k not in _ARG_KEYS:
            raise error(f"{key}.{k}: unknown key (known: {', '.join(sorted(_ARG_KEYS))})")
    typ = spec.get("type", "string")
    if typ not in ARG_TYPES:
        raise error(f"{key}.type: must be one of {', '.join(ARG_TYPES)}, got {typ!r}")
    pattern = spec.get("pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise error(f"{key}.pattern: invalid regular expression: {exc}") from None
    choices = spec.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise error(f"{key}.choices: expected a list")
    for bound in ("min", "max"):
        value = spec.get(bound)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise error(f"{key}.{bound}: expected a number")
    max_length = spec.get("max_length", 4096)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise error(f"{key}.max_length: expected a positive integer, got {max_length!r}")
    arg = ArgSpec(
        type=typ,
        default=spec.get("default"),
        required="default" not in spec,
        pattern=pattern,
        min=spec.get("min"),
        max=spec.get("max"),
        choices=tuple(choices) if choices is not None else None,
        description=str(spec.get("description", "")),
        max_length=max_length,
    )
    if arg.default is not None and typ not in ("path", "url"):
        try:
            check_value(arg, "default", arg.default)
        except ArgumentError as exc:
            raise error(f"{key}.default: {exc.reason}") from None
    return arg


#: Functions of kinds declared in code (`jobgate.registry`), by their `module:function`.
CODE_FUNCTIONS: dict[str, Callable[..., Any]] = {}


def load_function(
    target: str, key: str, error: Callable[[str], Exception]
) -> Callable[..., Any]:
    """Import `package.module:function` (or find it among the kinds declared in code)."""
    if target in CODE_FUNCTIONS:
        return CODE_FUNCTIONS[target]
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise error(f"{key}: expected 'package.module:function', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is a config error, shown in one line
        raise error(f"{key}: cannot import {module_name}: {exc}") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise error(f"{key}: {module_name} has no function {attr}")
    return func  # type: ignore[no-any-return]


_ANNOTATION_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string",
                     "int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def _args_from_signature(
    func: Callable[..., Any], key: str, error: Callable[[str], Exception]
) -> dict[str, ArgSpec]:
    """A Python kind without [args] takes its schema from the function's signature."""
    params = list(inspect.signature(func).parameters.values())[1:]  # the first is ctx
    args = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        typ = _ANNOTATION_TYPES.get(p.annotation, "string")
        has_default = p.default is not p.empty
        args[p.name] = ArgSpec(type=typ, default=p.default if has_default else None,
                               required=not has_default)
    return args


def render_argv(kind: Kind, args: dict[str, Any], output_dir: Path, job_id: str) -> list[str]:
    """The argv of a command job: each placeholder filled with one argument's text."""
    assert kind.argv is not None
    values = {**{k: _text(v) for k, v in args.items()}, "output_dir": str(output_dir),
              "job_id": job_id}
    out = []
    for element in kind.argv:
        parts = []
        for literal, name, _, _ in string.Formatter().parse(element):
            parts.append(literal)
            if name is not None:
                parts.append(values.get(name, ""))
        out.append("".join(parts))
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def check_fits(kinds: Iterable[Kind], limits: object) -> None:
    """ConfigError for a kind the limits (a `LimitsSettings`) would never let start."""
    for kind in kinds:
        for name in ("memory_budget_mb", "node_memory_budget_mb"):
            budget = getattr(limits, name)
            if budget is not None and kind.memory_mb > budget:
                raise ConfigError(
                    f"kinds.{kind.name}.memory_mb: {kind.memory_mb} is more than "
                    f"limits.{name} ({budget}); such a job could never start"
                )
