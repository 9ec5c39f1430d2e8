"""Kinds declared in code, next to their function: `KindRegistry` and its `kind` decorator.

    jobs = jobgate.KindRegistry()

    @jobs.kind(max_running=2, memory_mb=300, timeout="10m")
    def thumbnail(ctx, image: Path, size: Annotated[int, jobgate.Arg(min=16, max=1024)] = 256,
                  fit: Literal["crop", "pad"] = "pad"):
        ...

    settings = jobs.merge_into(jobgate.load_settings("jobgate.toml"))

Each declaration becomes the very `Kind` a `[kinds.NAME]` table would: the decorator writes
the equivalent table (`function = "module:function"`, the arguments from the signature) and
hands it to `kinds.parse_kind`, so every rule of a kind is checked in one place. The first
parameter is the job's context; each other one is an argument: `int`, `float`, `bool`,
`str`, `pathlib.Path` (a `path` argument, handed over as a Path), `Literal[...]` (its
choices), `X | None`, each optionally `Annotated[X, Arg(...)]` for its bounds, pattern and
description; a default of the signature is the argument's default. Anything else is
refused where it is declared.

A pool process imports the function by its `module:function` path, so a kind that does not
run `in_process` must be a module-level function of an importable module (not a lambda,
a nested function or a method, nor one of `__main__`).

`jobgate serve` imports the modules of `[server] kind_modules` at start; each module-level
`KindRegistry` of theirs is merged. A name declared both in TOML and in code (or by two
registries) is refused, naming both places.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from jobgate.delivery_config import check_deliveries
from jobgate.kinds import CODE_FUNCTIONS, Kind, check_fits, parse_kind
from jobgate.units import ConfigError

if TYPE_CHECKING:
    from jobgate.config import Settings

F = typing.TypeVar("F", bound=Callable[..., Any])

_BASE_TYPES: dict[Any, str] = {int: "integer", float: "number", bool: "boolean",
                               str: "string", pathlib.Path: "path"}
_SUPPORTED = ("int, float, bool, str, pathlib.Path, Literal[...], X | None, each optionally "
              "Annotated[X, jobgate.Arg(...)]")
# Each declared kind → where it was declared, for the message of a clash (by id: a Kind
# holds a dict, so it is not hashable).
_DECLARED: dict[int, tuple[Kind, str]] = {}


@dataclass(frozen=True)
class Arg:
    """An argument's constraints in a signature: `Annotated[int, Arg(min=1, max=10)]`.

    `type` overrides the one the annotation gives (e.g. `"url"` for a `str`)."""

    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    choices: tuple[Any, ...] | list[Any] | None = None
    max_length: int | None = None
    description: str | None = None
    type: str | None = None


class KindRegistry:
    """Kinds declared in code with `@registry.kind(...)`; `merge_into(settings)` adds them."""

    def __init__(self) -> None:
        self.kinds: dict[str, Kind] = {}
        self._where: dict[str, str] = {}

    @typing.overload
    def kind(self, name: F, /) -> F: ...

    @typing.overload
    def kind(self, name: str | None = None, *, max_running: int | None = None,
             memory_mb: int | Literal["auto"] | None = None,
             memory_limit_mb: int | None = None, timeout: str | float | None = None,
             max_attempts: int | None = None, backoff: str | float | None = None,
             backoff_max: str | float | None = None, priority: int | None = None,
             in_process: bool = False, description: str | None = None,
             retry_on: list[str] | str | None = None, no_retry_on: list[str] | str | None = None,
             retry_on_memory_limit: bool | None = None, allow_private_urls: bool | None = None,
             nice: int | None = None, partial_outputs: str | None = None,
             webhook_url: str | None = None, notify: list[str] | None = None
             ) -> Callable[[F], F]: ...

    def kind(self, name: str | Callable[..., Any] | None = None, *,
             max_running: int | None = None, memory_mb: int | Literal["auto"] | None = None,
             memory_limit_mb: int | None = None, timeout: str | float | None = None,
             max_attempts: int | None = None, backoff: str | float | None = None,
             backoff_max: str | float | None = None, priority: int | None = None,
             in_process: bool = False, description: str | None = None,
             retry_on: list[str] | str | None = None, no_retry_on: list[str] | str | None = None,
             retry_on_memory_limit: bool | None = None, allow_private_urls: bool | None = None,
             nice: int | None = None, partial_outputs: str | None = None,
             webhook_url: str | None = None, notify: list[str] | None = None) -> Any:
        """Declare the decorated function a kind (named `name`, else the function's name);
        the keys are those of a `[kinds.NAME]` table. `@registry.kind` alone works too."""
        options = {"max_running": max_running, "memory_mb": memory_mb,
                   "memory_limit_mb": memory_limit_mb, "timeout": timeout,
                   "max_attempts": max_attempts, "backoff": backoff, "backoff_max": backoff_max,
                   "priority": priority, "in_process": in_process or None,
                   "retry_on": retry_on, "no_retry_on": no_retry_on,
                   "retry_on_memory_limit": retry_on_memory_limit,
                   "allow_private_urls": allow_private_urls, "nice": nice,
                   "partial_outputs": partial_outputs, "webhook_url": webhook_url,
                   "notify": notify, "description": description}
        table = {k: v for k, v in options.items() if v is not None}

        def declare(func: F) -> F:
            self._declare(name if isinstance(name, str) else None, func, table)
            return func

        if callable(name):  # `@registry.kind` without parentheses
            return declare(name)
        return declare

    def _declare(self, name: str | None, func: Callable[..., Any], table: dict[str, Any]
                 ) -> None:
        if not callable(func) or not hasattr(func, "__qualname__"):
            raise ConfigError(f"KindRegistry.kind: expected a function, got {func!r}")
        name = name or func.__name__
        key = f"kinds.{name}"
        module, qualname = func.__module__, func.__qualname__
        where = f"{module}:{qualname}"
        if name in self.kinds:
            raise ConfigError(f"{key}: declared twice in this registry ({self._where[name]} "
                              f"and {where}); give one of them another name")
        importable = module != "__main__" and "." not in qualname and "<" not in qualname
        if not importable and not table.get("in_process"):
            why = ("is a function of the program's __main__ module" if module == "__main__"
                   else "is not a function at a module's top level (a lambda, a nested "
                   "function or a method)")
            raise ConfigError(f"{key}: {where} {why}, which the worker's pool processes "
                              "cannot import by its 'module:function' path; define it at "
                              "the top level of an importable module, or declare it with "
                              "in_process=True")
        # A function no process could import is found by a path made unique to it.
        target = where if importable else f"{where}@{id(func):x}"
        if not table.get("description") and func.__doc__:
            table["description"] = inspect.cleandoc(func.__doc__).split("\n\n")[0]
        args = _args_table(func, key)
        CODE_FUNCTIONS[target] = func
        kind = parse_kind(name, {**table, "function": target, **({"args": args} if args
                                                                    else {})}, ConfigError)
        self.kinds[name] = kind
        self._where[name] = where
        _DECLARED[id(kind)] = (kind, where)

    def merge_into(self, settings: Settings) -> Settings:
        """Add these kinds to `settings.kinds` (those of its TOML file) and return it; a name
        both declare is a ConfigError naming both places."""
        before = dict(settings.kinds)
        self._merge(settings)
        try:
            check_fits(settings.kinds.values(), settings.limits)
            check_deliveries(settings)
        except ConfigError:
            settings.kinds = before
            raise
        return settings

    def _merge(self, settings: Settings) -> None:
        for name, kind in self.kinds.items():
            existing = settings.kinds.get(name)
            if existing is not None and existing is not kind:
                raise ConfigError(f"kinds.{name}: declared twice, {_origin(existing, settings)}"
                                  f" and in code ({self._where[name]}); rename one of them")
        settings.kinds.update(self.kinds)


def load_kind_modules(settings: Settings) -> None:
    """Import `[server] kind_modules` and merge each module-level KindRegistry of theirs."""
    seen: set[int] = set()
    for module_name in settings.server.kind_modules:
        try:
            module = importlib.import_module(module_name)
        except ConfigError:
            raise
        except Exception as exc:  # any import failure is a config error, shown in one line
            raise ConfigError(f"server.kind_modules: cannot import {module_name}: {exc}"
                              ) from None
        registries = [r for r in vars(module).values() if isinstance(r, KindRegistry)]
        if not registries:
            raise ConfigError(f"server.kind_modules: {module_name} has no module-level "
                              "jobgate.KindRegistry")
        for registry in registries:
            if id(registry) not in seen:
                seen.add(id(registry))
                registry._merge(settings)


def _origin(kind: Kind, settings: Settings) -> str:
    declared = _DECLARED.get(id(kind))
    if declared is not None and declared[0] is kind:
        return f"in code ({declared[1]})"
    file = settings.config_file or "the settings"
    return f"in {file} ([kinds.{kind.name}])"


def _args_table(func: Callable[..., Any], key: str) -> dict[str, dict[str, Any]]:
    """The `[kinds.NAME.args]` table a function's signature stands for."""
    try:
        params = list(inspect.signature(func).parameters.values())
        hints = typing.get_type_hints(func, include_extras=True)
    except (NameError, TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot read the signature of {func.__qualname__}: {exc}"
                          ) from None
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY,
                                            params[0].POSITIONAL_OR_KEYWORD):
        raise ConfigError(f"{key}: the function's first parameter is the job's context "
                          "(`def f(ctx, ...)`)")
    args: dict[str, dict[str, Any]] = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        akey = f"{key}.args.{p.name}"
        if p.kind is p.POSITIONAL_ONLY:
            raise ConfigError(f"{akey}: a positional-only parameter cannot be given by name")
        spec = _arg_spec(hints.get(p.name, inspect.Parameter.empty), akey)
        if p.default is not p.empty:
            default = p.default
            spec["default"] = str(default) if isinstance(default, pathlib.PurePath) else default
        args[p.name] = spec
    return args


def _arg_spec(hint: Any, key: str) -> dict[str, Any]:
    arg: Arg | None = None
    shown = _shown(hint)
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        marks = [m for m in extras if isinstance(m, Arg)]
        if len(marks) > 1:
            raise ConfigError(f"{key}: one jobgate.Arg(...) per argument, got {len(marks)}")
        arg = marks[0] if marks else None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            hint = rest[0]
    spec: dict[str, Any] = {}
    if typing.get_origin(hint) is Literal:
        values = list(typing.get_args(hint))
        spec["choices"] = values
        spec["type"] = _literal_type(values, key, shown)
    elif hint is inspect.Parameter.empty or hint is Any:  # unsaid: text, as in TOML
        spec["type"] = "string"
    elif hint in _BASE_TYPES:
        spec["type"] = _BASE_TYPES[hint]
    else:
        raise ConfigError(f"{key}: the annotation {shown} is no argument type (supported: "
                          f"{_SUPPORTED})")
    if arg is not None:
        for field in ("min", "max", "pattern", "max_length", "description", "type"):
            value = getattr(arg, field)
            if value is not None:
                spec[field] = value
        if arg.choices is not None:
            spec["choices"] = list(arg.choices)
    return spec


def _literal_type(values: list[Any], key: str, shown: str) -> str:
    if all(isinstance(v, bool) for v in values):
        return "boolean"
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "integer"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "number"
    raise ConfigError(f"{key}: {shown}: a Literal's values must be all strings or all numbers")


def _shown(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__qualname__
    return repr(hint).replace("typing.", "")
