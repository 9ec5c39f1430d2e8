"""Users' and tokens' rows as Python values, for both backends (no SQL statements here)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from jobgate.store.base import TokenInfo, User, UserInfo

#: The users table's columns, in the order `user_from_row` reads them.
USER_COLUMNS = "name, admin, password_hash, created_at, generation"
#: What `token_from_row` reads (the table's `user` column is named by each backend,
#: quoted on PostgreSQL).
TOKEN_COLUMNS = "id, {user}, name, created_at, last_used_at"  # noqa: S105 - column names
_TOKEN_ID_BYTES = 6  # 12 hex digits: public, short to type, unique (checked on insert)


def new_token_id() -> str:
    """A public id for a new API token (not derived from the secret)."""
    return secrets.token_hex(_TOKEN_ID_BYTES)


def user_from_row(row: Sequence[Any]) -> User:
    """A user from a row of `USER_COLUMNS`."""
    return User(row[0], bool(row[1]), row[2], float(row[3]), int(row[4]))


def token_from_row(row: Sequence[Any]) -> TokenInfo:
    """A token from a row of `TOKEN_COLUMNS`."""
    return TokenInfo(row[0], row[1], row[2], float(row[3]),
                     None if row[4] is None else float(row[4]))


def user_infos(users: Sequence[Sequence[Any]], counts: Sequence[Sequence[Any]],
               tokens: Sequence[Sequence[Any]]) -> list[UserInfo]:
    """Users (rows of `USER_COLUMNS`) with their (owner, state, count) job counts and
    (user, count) token counts."""
    jobs: dict[tuple[str, str], int] = {(o, s): int(n) for o, s, n in counts}
    held = {u: int(n) for u, n in tokens}
    out = []
    for row in users:
        user = user_from_row(row)
        out.append(UserInfo(user.name, user.admin, user.created_at, user.generation,
                            user.password_hash is not None, jobs.get((user.name, "queued"), 0),
                            jobs.get((user.name, "running"), 0), held.get(user.name, 0)))
    return out
