"""Units written in config: durations ("90s", "1h30m"), rates ("10/m"), and ConfigError.

A leaf module: `config` (settings) and `kinds` (a kind's `timeout`, `backoff`) both parse
these, so neither imports the other for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ConfigError(ValueError):
    """An invalid setting: the message names the key and the reason."""


class Duration(float):
    """Seconds, written in config as a number or as "90s", "5m", "1h30m", "7d"."""


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object, key: str) -> float:
    """Seconds from a number or a string like "1h30m"; ConfigError otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like '30s' or '1h', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            return parse_duration(float(text), key)
        except ValueError:
            pass
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNIT_S[u] for n, u in parts)
    raise ConfigError(f"{key}: expected a duration like '30s', '5m' or '1h', got {value!r}")


@dataclass(frozen=True)
class Rate:
    """At most `count` requests per `per_s` seconds, written in config as "10/m", "5/30s"."""

    count: int
    per_s: float

    def __str__(self) -> str:
        return f"{self.count}/{self.per_s:g}s"


_RATE = re.compile(r"\s*(\d+)\s*/\s*(\S+)\s*")


def parse_rate(value: object, key: str) -> Rate:
    """A Rate from "N/DURATION" ("120/m", "5/30s", "1000/1h"); ConfigError otherwise."""
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f"{key}: expected a rate like '10/m' or '5/30s', got {value!r}")
    count, per = int(match.group(1)), match.group(2)
    per_s = parse_duration(per if per[0].isdigit() else "1" + per, key)
    if count < 1 or per_s <= 0:
        raise ConfigError(f"{key}: a rate needs at least 1 request per a positive duration, "
                          f"got {value!r}")
    return Rate(count, per_s)
