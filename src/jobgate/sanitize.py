"""Text and numbers at the edges: what is refused coming in, and what is stored safely.

Coming in (the API's models and query parameters, kinds' arguments), a string with a NUL
or a lone surrogate is refused with the field's name: neither survives a database (a NUL
ends a C string and PostgreSQL's text cannot hold one; a lone surrogate cannot be encoded
as UTF-8, so SQLite, psycopg, the file system and every JSON response fail on it). Every
number that reaches the database stays within 64-bit integers.

What a job's own code reports (progress, log lines, results, error text) is not refused:
it is stored safely (`stored_text`, `stored_json`), and what is read back is shown safely
(`scrub`), so nothing stored can break a listing. `shown` quotes user input in messages
without echoing control characters or invalid text.
"""

from __future__ import annotations

import math
import re
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why `value` may not be stored as it is (a NUL, a lone surrogate), or None."""
    if value.isascii():
        return "must not contain NUL characters" if "\x00" in value else None
    if _SURROGATE.search(value):
        return "must be valid Unicode text (it holds a lone surrogate)"
    return "must not contain NUL characters" if "\x00" in value else None


def checked_text(value: str) -> str:
    """`value` if it may be stored; ValueError (a 422 from the API's models) if not."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def stored_text(value: str) -> str:
    """Text a job reported, as it is stored: each lone surrogate becomes U+FFFD."""
    if value.isascii() or not _SURROGATE.search(value):
        return value
    return _SURROGATE.sub("\ufffd", value)


def scrub(value: Any, depth: int = 0) -> Any:
    """A JSON value that every encoder takes: lone surrogates become U+FFFD (in keys too),
    NaN and infinities become null, tuples lists, and what JSON cannot hold its text."""
    if isinstance(value, str):
        return stored_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth > 200:
        return None  # deeper than any encoder's stack: cut off
    if isinstance(value, dict):
        return {stored_text(str(k)): scrub(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, depth + 1) for v in value]
    return stored_text(str(value))


def stored_json(value: Any) -> Any:
    """A result a job returned, as it is stored (see `scrub`)."""
    return scrub(value)


def stored_percent(value: Any) -> float | None:
    """A progress percentage a job reported: a finite number within 0-100, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past a float's range
        return 100.0 if value > 0 else 0.0
    return max(0.0, min(100.0, number)) if math.isfinite(number) else None


def shown(value: object, limit: int = 80) -> str:
    """`value` quoted for a message, as `repr` quotes it (control characters, lone
    surrogates and invisible format characters escaped: `'\\x00'`, `'\\ud800'`), with U+FFFD
    (the mark of bytes that were not UTF-8) escaped too; cut to `limit` characters."""
    text = value if isinstance(value, str) else str(value)
    quoted = repr(text[:limit] + ("…" if len(text) > limit else ""))
    return quoted.replace("\ufffd", "\\ufffd")
