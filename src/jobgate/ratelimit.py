"""Rate limits on submits and logins, and the growing wait after bad passwords.

Logins are limited per address, and per user *from one address*: a guesser elsewhere
spends their own allowance and back-off, never the real user's, so they cannot lock the
user out; a guesser trying many users from one address is slowed per address too. The
address is the connection's (behind a reverse proxy: the proxy's, as no forwarded header
is trusted).

Token buckets per key (a user name, a client IP): `count` requests per `per_s`, refilled
evenly, so a burst of `count` passes and then one more every `per_s / count` seconds. A
refused request learns how long to wait (HTTP 429 with `Retry-After`). Memory stays
bounded: at most `max_keys` buckets, full ones forgotten first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from jobgate.config import Rate, RateLimitSettings

_MAX_KEYS = 100_000


class RateLimiter:
    """Token buckets for one rate, one per key; `rate=None` allows everything."""

    def __init__(self, rate: Rate | None, max_keys: int = _MAX_KEYS) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, as of when)

    def hit(self, key: str, now: float | None = None) -> float:
        """Take a token for `key`: 0.0 if allowed, else the seconds until one is free."""
        if self.rate is None:
            return 0.0
        now = time.monotonic() if now is None else now
        capacity, per_token_s = self.rate.count, self.rate.per_s / self.rate.count
        tokens, then = self._buckets.get(key, (float(capacity), now))
        tokens = min(capacity, tokens + (now - then) / per_token_s)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) * per_token_s
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            self._forget(now)
        self._buckets[key] = (tokens - 1, now)
        return 0.0

    def _forget(self, now: float) -> None:
        assert self.rate is not None
        per_token_s = self.rate.per_s / self.rate.count
        full = [k for k, (tokens, then) in self._buckets.items()
                if tokens + (now - then) / per_token_s >= self.rate.count]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) >= self.max_keys:  # all busy: the oldest go first
            del self._buckets[next(iter(self._buckets))]


class FailureBackoff:
    """After `free` failures in a row for a key, each attempt must wait twice as long as
    the one before (1 s, 2 s, 4 s … up to `max_s`) after the last failure. A success, or
    a quiet spell of twice `max_s`, clears the count."""

    def __init__(self, free: int, max_s: float, max_keys: int = _MAX_KEYS) -> None:
        self.free, self.max_s, self.max_keys = free, max_s, max_keys
        self._failures: dict[str, tuple[int, float]] = {}  # key → (count, last failure)

    def wait_s(self, key: str, now: float | None = None) -> float:
        """Seconds `key` must still wait before its next attempt (0.0: go ahead)."""
        now = time.monotonic() if now is None else now
        count, last = self._failures.get(key, (0, now))
        if now - last > 2 * self.max_s:
            self._failures.pop(key, None)
            return 0.0
        if count < self.free:
            return 0.0
        return max(0.0, last + min(self.max_s, 2.0 ** (count - self.free)) - now)

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        count = self._failures.pop(key, (0, now))[0]
        if len(self._failures) >= self.max_keys:
            del self._failures[next(iter(self._failures))]
        self._failures[key] = (count + 1, now)  # re-inserted: the dict stays oldest-first

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


@dataclass
class RateLimits:
    """Every limiter of one server, built from `[rate_limits]`."""

    submit_per_user: RateLimiter
    submit_per_ip: RateLimiter
    login_per_user: RateLimiter  # keyed by user *and* address
    login_per_ip: RateLimiter
    bad_logins: FailureBackoff  # keyed by user and address
    bad_logins_per_ip: FailureBackoff

    @classmethod
    def from_settings(cls, settings: RateLimitSettings) -> RateLimits:
        return cls(RateLimiter(settings.submit_per_user), RateLimiter(settings.submit_per_ip),
                   RateLimiter(settings.login_per_user), RateLimiter(settings.login_per_ip),
                   FailureBackoff(settings.login_free_failures, settings.login_backoff_max),
                   FailureBackoff(settings.login_free_failures_per_ip,
                                  settings.login_backoff_max))


def retry_after(wait_s: float) -> int:
    """Whole seconds for a `Retry-After` header: never 0 for a refusal."""
    return max(1, math.ceil(wait_s))
