"""PostgreSQL's user and token operations (`Store.list_users`, `remove_user`,
`update_user`, `list_tokens`, `revoke_token`, `touch_token`, `add_token`): functions of an
open transaction, which `PostgresStore` runs. What a removal does to the user's jobs is
decided above the store (users.py, through the queue's verbs)."""

from __future__ import annotations

from jobgate.store.base import NotFound, TokenInfo, User, UserInfo
from jobgate.store.postgres_conn import Tx, pg_errors
from jobgate.store.user_rows import (
    TOKEN_COLUMNS,
    USER_COLUMNS,
    new_token_id,
    token_from_row,
    user_from_row,
    user_infos,
)

_TOKENS = TOKEN_COLUMNS.format(user='"user"')


async def get(tx: Tx, name: str) -> User | None:
    row = await tx.row(f"SELECT {USER_COLUMNS} FROM users WHERE name = %s", (name,))
    return user_from_row(row) if row else None


async def for_token(tx: Tx, token_hash: str) -> User | None:
    row = await tx.row(
        "SELECT u.name, u.admin, NULL, u.created_at, u.generation FROM tokens t "
        'JOIN users u ON u.name = t."user" WHERE t.hash = %s', (token_hash,))
    return user_from_row(row) if row else None


async def add_token(tx: Tx, user: str, token_hash: str, name: str | None) -> TokenInfo:
    if await get(tx, user) is None:
        raise NotFound(f"no user {user}")
    while True:  # a clash of 48 random bits: not in practice, but never a 500 for it
        token_id = new_token_id()
        if await tx.row("SELECT 1 FROM tokens WHERE id = %s", (token_id,)) is None:
            break
    try:
        await tx.execute('INSERT INTO tokens (hash, "user", created_at, id, name) '
                         "VALUES (%s, %s, %s, %s, %s)",
                         (token_hash, user, tx.now, token_id, name))
    except pg_errors.ForeignKeyViolation:  # the user went meanwhile
        raise NotFound(f"no user {user}") from None
    return TokenInfo(token_id, user, name, tx.now, None)


async def list_users(tx: Tx) -> list[UserInfo]:
    users = await tx.rows(f"SELECT {USER_COLUMNS} FROM users ORDER BY name")
    counts = await tx.rows("SELECT owner, state, count(*) FROM jobs WHERE state IN "
                           "('queued', 'running') GROUP BY owner, state")
    tokens = await tx.rows('SELECT "user", count(*) FROM tokens GROUP BY "user"')
    return user_infos(users, counts, tokens)


async def remove(tx: Tx, name: str) -> bool:
    await tx.execute('DELETE FROM tokens WHERE "user" = %s', (name,))
    await tx.execute("DELETE FROM users WHERE name = %s", (name,))
    return bool(tx.cur.rowcount)


async def update(tx: Tx, name: str, password_hash: str | None, admin: bool | None,
                 bump_generation: bool) -> User:
    row = await tx.row(
        "UPDATE users SET password_hash = coalesce(%s, password_hash), "
        "admin = coalesce(%s, admin), generation = generation + %s WHERE name = %s "
        f"RETURNING {USER_COLUMNS}", (password_hash, admin, int(bump_generation), name))
    if row is None:
        raise NotFound(f"no user {name}")
    return user_from_row(row)


async def list_tokens(tx: Tx, user: str) -> list[TokenInfo]:
    if await get(tx, user) is None:
        raise NotFound(f"no user {user}")
    return [token_from_row(r) for r in await tx.rows(
        f'SELECT {_TOKENS} FROM tokens WHERE "user" = %s ORDER BY created_at, id', (user,))]


async def revoke(tx: Tx, token_id: str, user: str | None) -> TokenInfo | None:
    row = await tx.row(
        'DELETE FROM tokens WHERE id = %s AND (%s::text IS NULL OR "user" = %s) '
        f"RETURNING {_TOKENS}", (token_id, user, user))
    return token_from_row(row) if row else None


async def touch(tx: Tx, token_hash: str, at: float) -> None:
    await tx.execute("UPDATE tokens SET last_used_at = %s WHERE hash = %s AND "
                     "(last_used_at IS NULL OR last_used_at < %s)", (at, token_hash, at))
