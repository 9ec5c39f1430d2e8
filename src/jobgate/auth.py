"""Users, passwords and API tokens.

API tokens are 32 random bytes shown once; only their SHA-256 is stored, which is enough
for a secret that long. Passwords are hashed with scrypt (memory-hard, in the standard
library), each with its own salt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from jobgate.store.base import Store, User

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
TOKEN_PREFIX = "jg_"  # noqa: S105 - a prefix, so a leaked token is recognisable
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


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
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt_b64, digest_b64 = stored.split("$")
    digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt_b64), n=_SCRYPT_N,
                            r=_SCRYPT_R, p=_SCRYPT_P)
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def new_token(store: Store, user: str) -> str:
    """A new API token for `user`; only its hash is kept."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await store.add_token(user, token_hash(token))
    return token


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
