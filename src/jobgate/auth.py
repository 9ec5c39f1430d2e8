"""Users, passwords, API tokens, logins (JWT) and single-use stream tickets.

API tokens are 32 random bytes shown once; only their SHA-256 is stored, which is enough
for a secret that long. Passwords are hashed with scrypt (memory-hard, in the standard
library), each with its own salt. A login gives a JWT signed with HS256 (pinned) by a key
of 64 random bytes made at first start in the data dir. Browsers cannot set headers on
EventSource or WebSocket, so they trade their token for a ticket: single-use, good for at
most 60 s, so no long-lived secret ever sits in a URL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from jobgate.model import USER_NAME as _NAME
from jobgate.secret_files import secret_file
from jobgate.store.base import Store, TokenInfo, User

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
TOKEN_PREFIX = "jg_"  # noqa: S105 - a prefix, so a leaked token is recognisable


class AuthError(Exception):
    """No or bad credentials (HTTP 401)."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad user name {name!r}: use 1-64 letters, digits, '_', '-', '.', '@'")
    return name


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def verify_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$") or stored.count("$") != 2:
        return False
    _, salt_b64, digest_b64 = stored.split("$")
    digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt_b64), n=_SCRYPT_N,
                            r=_SCRYPT_R, p=_SCRYPT_P)
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def new_token(store: Store, user: str, name: str | None = None) -> str:
    """A new API token for `user`; only its hash is kept."""
    return (await new_named_token(store, user, name))[0]


async def new_named_token(store: Store, user: str, name: str | None = None
                          ) -> tuple[str, TokenInfo]:
    """A new API token for `user`, optionally named ("laptop"): the secret (shown once,
    only its hash is kept) and the token as it is listed (its public id)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, await store.add_token(user, token_hash(token), name)


async def user_for_bearer(store: Store, header: str | None) -> User:
    """The user an `Authorization: Bearer …` header names; AuthError if none."""
    if not header:
        raise AuthError("missing Authorization: Bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("expected Authorization: Bearer <token>")
    user = await store.user_for_token(token_hash(token.strip()))
    if user is None:
        raise AuthError("invalid token")
    return user


# --- logins (JWT) and stream tickets ------------------------------------------------------

JWT_ALGORITHM = "HS256"  # pinned: a token naming any other algorithm is refused
_KEY_FILE = "jwt.key"
_KEY_BYTES = 64  # the contract asks for at least 32 random bytes
_MIN_KEY_BYTES = 32
#: A token's `last_used_at` is written at most this often per token (and API process).
TOUCH_EVERY_S = 60.0
_TOUCHED_MAX = 10_000  # tokens remembered as touched, before the oldest are forgotten


@dataclass(frozen=True)
class Principal:
    """Who a request acts as, and until when its credential is good (None: no end).

    `checked`: it came from a credential that `Authenticator.current` can look up again
    (a ticket, and an open stream, stand for it only while it still holds);
    `token_hash`: that credential was an API token (else a login JWT)."""

    user: User
    expires_at: float | None = None
    checked: bool = False
    token_hash: str | None = None


def load_or_create_key(data_dir: Path) -> bytes:
    """The JWT signing key in `data_dir`, made (64 random bytes, mode 0600) on first start.

    Made in a temporary file and linked into place, so two servers starting together end
    up with one key and nobody reads a half-written file.
    """
    path = secret_file(data_dir, _KEY_FILE, lambda: secrets.token_bytes(_KEY_BYTES))
    if path.stat().st_mode & 0o077:
        # Anyone who can read the key can sign in as anybody: keep it to the owner.
        os.chmod(path, 0o600)
    key = path.read_bytes()
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"{path}: the JWT key has {len(key)} bytes, fewer than "
                         f"{_MIN_KEY_BYTES}; delete it to have a new one made")
    return key


def issue_jwt(key: bytes, user: User, ttl_s: float, now: float | None = None) -> tuple[str, float]:
    """A signed login token for `user`: (token, expires_at)."""
    now = time.time() if now is None else now
    expires_at = now + ttl_s
    # `iat` to the microsecond: a token is refused when older than its user (see
    # `Authenticator.token`), and a login can come within the second a user was made.
    # `gen`: the user's login generation; raising it (a new password, "log out
    # everywhere") ends every login issued before.
    claims = {"sub": user.name, "iat": now, "exp": int(expires_at),
              "jti": secrets.token_urlsafe(12), "gen": user.generation}
    return jwt.encode(claims, key, algorithm=JWT_ALGORITHM), float(int(expires_at))


def read_jwt(key: bytes, token: str) -> tuple[str, float, float | None, int]:
    """(user name, expires_at, issued_at, generation) of a valid login token; AuthError if
    it is not one. Every token jobgate signs says when (`iat`); one signed before login
    generations existed has generation 0."""
    try:
        claims = jwt.decode(token, key, algorithms=[JWT_ALGORITHM],
                            options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired: log in again") from None
    except jwt.InvalidTokenError:
        raise AuthError("invalid token") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("invalid token")
    issued_at = claims.get("iat")
    generation = claims.get("gen", 0)
    if not isinstance(generation, int) or isinstance(generation, bool):
        raise AuthError("invalid token")
    return (sub, float(claims["exp"]), float(issued_at) if issued_at is not None else None,
            generation)


class Authenticator:
    """Checks credentials: API tokens, login JWTs, passwords, stream tickets.

    One per app (no module state); tickets live in memory, so a ticket is good only on
    the server process that issued it.
    """

    def __init__(self, store: Store, key: bytes, token_ttl_s: float, ticket_ttl_s: float,
                 hash_slots: int = 2) -> None:
        self.store = store
        self.key = key
        self.token_ttl_s = token_ttl_s
        self.ticket_ttl_s = ticket_ttl_s
        self._tickets: dict[str, tuple[Principal, float]] = {}
        # When this process last wrote each token's `last_used_at` (monotonic): at most
        # once a `TOUCH_EVERY_S`, so a busy API does not write on every request. Only that
        # write is spared: whether a token holds is read from the database every time.
        self._touched: dict[str, float] = {}
        # scrypt takes 16 MiB and tens of ms a try: a few at a time, off the event loop.
        self._hashing = asyncio.Semaphore(hash_slots)

    async def bearer(self, header: str | None) -> Principal:
        """The caller an `Authorization: Bearer …` header names; AuthError if none."""
        if not header:
            raise AuthError("missing Authorization: Bearer token")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("expected Authorization: Bearer <token>")
        return await self.token(token)

    async def token(self, token: str) -> Principal:
        """An API token (`jg_…`) or a login JWT; AuthError if neither."""
        if token.startswith(TOKEN_PREFIX):
            hashed = token_hash(token)
            user = await self.store.user_for_token(hashed)
            if user is None:
                raise AuthError("invalid token")
            await self._touch(hashed)
            return Principal(user, checked=True, token_hash=hashed)
        name, expires_at, issued_at, generation = read_jwt(self.key, token)
        # The user may have gone (or lost admin) since the token was issued, or gone and
        # been made again: a token older than its user was another user's. A login of an
        # older generation was ended (a new password, "log out everywhere").
        user = await self.store.get_user(name)
        if user is None or (issued_at is not None and issued_at < user.created_at):
            raise AuthError("invalid token")
        if generation < user.generation:
            raise AuthError("login ended (password changed or logged out everywhere): "
                            "log in again")
        return Principal(user, expires_at, checked=True)

    async def _touch(self, hashed: str) -> None:
        now = time.monotonic()
        last = self._touched.get(hashed)
        if last is not None and now - last < TOUCH_EVERY_S:
            return
        if len(self._touched) >= _TOUCHED_MAX:
            self._touched = {h: t for h, t in self._touched.items()
                             if now - t < TOUCH_EVERY_S}
        self._touched[hashed] = now
        await self.store.touch_token(hashed, time.time())

    async def current(self, principal: Principal) -> bool:
        """Whether `principal` still holds: its user is still there (not removed and made
        again), with no less right (not demoted from admin), its API token was not
        revoked, and its login's generation was not ended."""
        if not principal.checked:
            return True
        if principal.token_hash is not None:
            user = await self.store.user_for_token(principal.token_hash)
        else:
            user = await self.store.get_user(principal.user.name)
        return user is not None and user.name == principal.user.name and (
            user.admin or not principal.user.admin) and \
            user.created_at == principal.user.created_at and (
                principal.token_hash is not None
                or user.generation <= principal.user.generation)

    async def login(self, name: str, password: str) -> User | None:
        """The user if `password` is theirs, else None (in about the same time either way)."""
        user = await self.store.get_user(name) if _NAME.fullmatch(name) else None
        stored = user.password_hash if user is not None else None
        async with self._hashing:
            ok = await asyncio.to_thread(_verify_or_burn, password, stored)
        return user if ok else None

    def issue(self, user: User) -> tuple[str, float]:
        return issue_jwt(self.key, user, self.token_ttl_s)

    def ticket(self, principal: Principal) -> str:
        """A single-use ticket standing for `principal` for `ticket_ttl_s`."""
        now = time.monotonic()
        if len(self._tickets) > 1000:
            self._tickets = {t: v for t, v in self._tickets.items() if v[1] > now}
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = (principal, now + self.ticket_ttl_s)
        return ticket

    async def redeem(self, ticket: str) -> Principal:
        """The principal a ticket stands for, once; AuthError if unknown, used, expired,
        or if the login behind it no longer holds (its user deleted, its token revoked)."""
        entry = self._tickets.pop(ticket, None)
        if entry is None or entry[1] < time.monotonic():
            raise AuthError("invalid or expired ticket: get a new one from POST /api/auth/ticket")
        principal = entry[0]
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise AuthError("token expired: log in again")
        if not await self.current(principal):
            raise AuthError("invalid ticket: the login behind it was revoked")
        return principal


# A stored hash to check against when the user does not exist, so the answer takes as
# long for an unknown name as for a wrong password.
_DUMMY_HASH = "scrypt$" + base64.b64encode(b"\0" * 16).decode() + "$" + \
    base64.b64encode(b"\0" * 64).decode()


def _verify_or_burn(password: str, stored: str | None) -> bool:
    try:
        return verify_password(password, stored or _DUMMY_HASH) and stored is not None
    except (UnicodeEncodeError, ValueError):  # a lone surrogate, a damaged stored hash
        return False
