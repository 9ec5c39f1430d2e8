"""Submitted arguments checked against a kind's schema: types, bounds, paths, addresses.

Every value a user sends passes here before it is stored: text without NULs or lone
surrogates, numbers within 64 bits and the kind's bounds, `path` arguments inside the
input folder and clear of the server's own files, `url` arguments to addresses the
config allows.

A `path` argument is one of two things:

- a name inside `[server] input_dir` (`film.mkv`, `sub/film.mkv`), checked at submit and
  again when the job runs (the file may have become a symlink meanwhile);
- `upload:<id>`, a file its owner uploaded (uploads.py), found from the job's owner, so
  nobody's job can use another user's upload. A file of the input folder whose name starts
  with `upload:` is still reachable as `./upload:…`;
- `job:<id>/<name>`, output `name` of job `id`, one the job depends on (`depends_on`;
  dependencies.py checks the reference at submit and finds the file when the job runs).

The value is stored as it was given; the real path is put in only for the run
(`resolve_paths`), so a job's args never show the server's folders.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jobgate.addresses import is_public, parse_address, url_problem
from jobgate.sanitize import INT64_MAX, INT64_MIN, shown, text_problem

if TYPE_CHECKING:
    from jobgate.kinds import Kind

#: How a `path` argument names an upload of its job's owner: `upload:<id>`.
UPLOAD_PREFIX = "upload:"
#: How a `path` argument names an output of a job it depends on: `job:<id>/<name>`.
JOB_PREFIX = "job:"


class ArgumentError(ValueError):
    """An argument the kind's schema refuses; `field` names it (HTTP 422)."""

    def __init__(self, field_name: str | None, message: str) -> None:
        super().__init__(f"{field_name}: {message}" if field_name else message)
        self.field = field_name
        self.reason = message


@dataclass(frozen=True)
class ArgSpec:
    type: str = "string"
    default: Any = None
    required: bool = True
    pattern: str | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    description: str = ""
    max_length: int = 4096



def validate_args(
    kind: Kind, args: Any, input_dir: Path, resolve: bool = True,
    protected: Sequence[Path] = (), *, uploads: Mapping[str, Path] | None = None,
    as_given: bool = False,
) -> dict[str, Any]:
    """Arguments checked against the kind's schema, defaults filled; ArgumentError if not.

    `resolve=False` skips the DNS look-up of `url` arguments (for re-validation).
    `protected` are the server's own files and folders (its database, data folder and
    config file): no `path` argument may name one, lie inside one or contain one.
    `uploads` maps each `upload:<id>` the caller may use to its file; any other is
    refused as unknown; so does each `job:<id>/<name>` the job may name, to where its
    file will be (dependencies.py). With `as_given`, a `path` argument keeps the value it was given
    (what a job stores); else it becomes the real path.
    """
    if not isinstance(args, dict):
        raise ArgumentError(None, "args must be an object")
    for name in args:
        if not isinstance(name, str) or text_problem(name) is not None:
            raise ArgumentError(None, f"argument name {shown(name)} is not valid text")
    unknown = sorted(set(args) - set(kind.args))
    if unknown:
        known = ", ".join(kind.args) or "none"
        raise ArgumentError(unknown[0][:64],
                            f"unknown argument for kind {kind.name} (known: {known})")
    out: dict[str, Any] = {}
    for name, spec in kind.args.items():
        if args.get(name) is None:
            if spec.required:
                raise ArgumentError(name, "is required")
            out[name] = spec.default
            if spec.default is None:
                continue
        else:
            out[name] = args[name]
        value = check_value(spec, name, out[name])
        if spec.type == "path":
            real = _real_path(name, value, input_dir, protected, uploads or {})
            value = value if as_given else real
        elif spec.type == "url" and resolve:
            _check_url_host(name, value, kind.allow_private_urls)
        out[name] = value
    return out


def check_value(spec: ArgSpec, name: str, value: Any) -> Any:
    typ = spec.type
    if isinstance(value, str) and (problem := text_problem(value)) is not None:
        raise ArgumentError(name, problem)
    if typ == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ArgumentError(name, f"expected true or false, got {shown(value)}")
    if typ in ("integer", "number"):
        value = _number(spec, name, value)
    else:
        if not isinstance(value, str):
            raise ArgumentError(name, f"expected a string, got {shown(value)}")
        if len(value) > spec.max_length:
            raise ArgumentError(name, f"is longer than {spec.max_length} characters")
        if typ == "string" and value.startswith("-"):
            # A leading dash would be read as an option by most programs.
            raise ArgumentError(name, "must not start with '-'")
        if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
            raise ArgumentError(name, f"does not match the pattern {spec.pattern}")
        if typ == "url" and (problem := url_problem(value)) is not None:
            raise ArgumentError(name, problem)
    if spec.choices is not None and value not in spec.choices:
        raise ArgumentError(name, f"must be one of {', '.join(map(str, spec.choices))}")
    return value


# What `int()` and `float()` read in an argument given as text: ASCII only (they also take
# other scripts' digits, "١٢" for 12, and refuse "²" that `isdigit()` takes).
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_NUMBER_TEXT = re.compile(
    r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def _number(spec: ArgSpec, name: str, value: Any) -> int | float:
    """An integer or number argument, bounded: within 64 bits, finite, within min/max."""
    typ = spec.type
    what = "an integer" if typ == "integer" else "a number"
    if isinstance(value, str):
        text = value.strip()
        if not (_INTEGER_TEXT if typ == "integer" else _NUMBER_TEXT).fullmatch(text) or \
                len(text) > 400:
            raise ArgumentError(name, f"expected {what}, got {shown(value)}")
        value = int(text) if typ == "integer" else float(text)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentError(name, f"expected a number, got {shown(value)}")
    number: int | float = value
    if isinstance(number, float) and not math.isfinite(number):
        raise ArgumentError(name, "must be a finite number")
    if typ == "integer":
        if isinstance(number, float) and not number.is_integer():
            raise ArgumentError(name, f"expected an integer, got {shown(number)}")
        number = int(number)
    if spec.min is not None and number < spec.min:
        raise ArgumentError(name, f"must be at least {spec.min:g}")
    if spec.max is not None and number > spec.max:
        raise ArgumentError(name, f"must be at most {spec.max:g}")
    if not INT64_MIN <= number <= INT64_MAX:
        raise ArgumentError(name, "is out of range (beyond a 64-bit integer)")
    return number


def resolve_paths(kind: Kind, args: Mapping[str, Any], input_dir: Path,
                  protected: Sequence[Path], upload_file: Callable[[str], Path],
                  job_output: Callable[[str, str], Path] | None = None) -> dict[str, Any]:
    """A stored job's args with each `path` argument made its real path, checked again
    now (ArgumentError if it no longer passes): what its run is given. `upload_file`
    names where the job owner's upload of an id is kept; `job_output` (argument name,
    `job:<id>/<name>` value) finds a dependency's output file, or raises ArgumentError."""
    out = dict(args)
    for name, spec in kind.args.items():
        value = out.get(name)
        if spec.type != "path" or not isinstance(value, str):
            continue
        if value.startswith(UPLOAD_PREFIX):
            upload_id = value.removeprefix(UPLOAD_PREFIX)
            file = upload_file(upload_id) if is_upload_id(upload_id) else None
            # The uploads folder is the server's own: only the very file, never a link.
            if file is None or file.is_symlink() or not file.is_file():
                raise ArgumentError(name, f"the upload {shown(upload_id)} is gone (deleted "
                                    "by its owner or by retention)")
            out[name] = str(file)
        elif value.startswith(JOB_PREFIX):
            if job_output is None:
                raise ArgumentError(name, "names a job's output, which this run cannot use")
            out[name] = str(job_output(name, value))
        else:
            out[name] = _check_path(name, value, input_dir, protected)
    return out


def _real_path(name: str, value: str, input_dir: Path, protected: Sequence[Path],
               uploads: Mapping[str, Path]) -> str:
    if value.startswith(JOB_PREFIX):
        found = uploads.get(value)
        if found is None:
            raise ArgumentError(name, f"{shown(value)} is not an output of a job this job "
                                "depends on (job:ID/NAME, with ID in depends_on)")
        return str(found)
    if value.startswith(UPLOAD_PREFIX):
        found = uploads.get(value)
        if found is None:
            # Someone else's upload is refused in the same words as one that never was.
            raise ArgumentError(name, f"no upload {shown(value.removeprefix(UPLOAD_PREFIX))} "
                                "of yours (upload the file first: POST /api/uploads)")
        return str(found)
    return _check_path(name, value, input_dir, protected)


def is_upload_id(text: str) -> bool:
    """Whether `text` could be an upload's id (letters and digits, at most 64)."""
    return 0 < len(text) <= 64 and text.isascii() and text.isalnum()


def _check_path(name: str, value: str, input_dir: Path, protected: Sequence[Path] = ()
                ) -> str:
    """The resolved path of a `path` argument (symlinks followed): inside the input
    folder, existing, and clear of the server's own files (`protected`)."""
    try:
        path = (input_dir / value).resolve()
        exists = path.exists()
    except (OSError, ValueError):  # too long for the file system, a symlink loop, …
        raise ArgumentError(name, "is not a usable file name") from None
    if not path.is_relative_to(input_dir):
        raise ArgumentError(name, "must stay inside the input folder")
    if path == input_dir:
        raise ArgumentError(name, "must name a file or folder inside the input folder")
    for own in protected:
        if path == own or path.is_relative_to(own) or own.is_relative_to(path) or \
                (exists and _same_file(path, own)):
            raise ArgumentError(name, "names a file of the server itself (its database, "
                                "data folder or configuration)")
    if not exists:
        raise ArgumentError(name, f"no such file in the input folder: {shown(value)}")
    return str(path)


def _same_file(a: Path, b: Path) -> bool:
    """True if `a` and `b` are one file (a hard link of `b` counts), as far as it can tell."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_url_host(name: str, url: str, allow_private: bool) -> None:
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        raise ArgumentError(name, f"cannot resolve host {shown(host)}") from None
    if allow_private:
        return
    for info in infos:
        if not is_public(parse_address(str(info[4][0]))):
            raise ArgumentError(name, f"host {host!r} is a private or local address")
