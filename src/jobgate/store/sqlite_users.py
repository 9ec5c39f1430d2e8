"""SQLite's user and token operations (`Store.list_users`, `remove_user`, `update_user`,
`list_tokens`, `revoke_token`, `touch_token`, `add_token`): functions of an open
transaction, which `SqliteStore` hands to its connection thread. What a removal does to
the user's jobs is decided above the store (users.py, through the queue's verbs)."""

from __future__ import annotations

import sqlite3

from jobgate.store.base import NotFound, TokenInfo, User, UserInfo
from jobgate.store.sqlite_conn import Tx
from jobgate.store.user_rows import (
    TOKEN_COLUMNS,
    USER_COLUMNS,
    new_token_id,
    token_from_row,
    user_from_row,
    user_infos,
)

_TOKENS = TOKEN_COLUMNS.format(user="user")


def get(tx: Tx, name: str) -> User | None:
    row = tx.conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE name = ?",
                          (name,)).fetchone()
    return user_from_row(row) if row else None


def for_token(tx: Tx, token_hash: str) -> User | None:
    row = tx.conn.execute(
        "SELECT u.name, u.admin, NULL, u.created_at, u.generation FROM tokens t "
        "JOIN users u ON u.name = t.user WHERE t.hash = ?", (token_hash,)).fetchone()
    return user_from_row(row) if row else None


def add_token(tx: Tx, user: str, token_hash: str, name: str | None) -> TokenInfo:
    if get(tx, user) is None:
        raise NotFound(f"no user {user}")
    while True:  # a clash of 48 random bits: not in practice, but never a 500 for it
        token_id = new_token_id()
        try:
            tx.conn.execute("INSERT INTO tokens (hash, user, created_at, id, name) "
                            "VALUES (?, ?, ?, ?, ?)", (token_hash, user, tx.now, token_id, name))
        except sqlite3.IntegrityError:
            if tx.conn.execute("SELECT 1 FROM tokens WHERE id = ?", (token_id,)).fetchone():
                continue
            raise
        return TokenInfo(token_id, user, name, tx.now, None)


def list_users(tx: Tx) -> list[UserInfo]:
    users = tx.conn.execute(f"SELECT {USER_COLUMNS} FROM users ORDER BY name").fetchall()
    counts = tx.conn.execute("SELECT owner, state, count(*) FROM jobs WHERE state IN "
                             "('queued', 'running') GROUP BY owner, state").fetchall()
    tokens = tx.conn.execute("SELECT user, count(*) FROM tokens GROUP BY user").fetchall()
    return user_infos(users, counts, tokens)


def remove(tx: Tx, name: str) -> bool:
    # Its tokens too (the foreign key cascades as well: said here, not left to a pragma).
    tx.conn.execute("DELETE FROM tokens WHERE user = ?", (name,))
    return bool(tx.conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount)


def update(tx: Tx, name: str, password_hash: str | None, admin: bool | None,
           bump_generation: bool) -> User:
    row = tx.conn.execute(
        "UPDATE users SET password_hash = coalesce(?, password_hash), "
        "admin = coalesce(?, admin), generation = generation + ? WHERE name = ? "
        f"RETURNING {USER_COLUMNS}",
        (password_hash, None if admin is None else int(admin), int(bump_generation),
         name)).fetchone()
    if row is None:
        raise NotFound(f"no user {name}")
    return user_from_row(row)


def list_tokens(tx: Tx, user: str) -> list[TokenInfo]:
    if get(tx, user) is None:
        raise NotFound(f"no user {user}")
    return [token_from_row(r) for r in tx.conn.execute(
        f"SELECT {_TOKENS} FROM tokens WHERE user = ? ORDER BY created_at, id", (user,))]


def revoke(tx: Tx, token_id: str, user: str | None) -> TokenInfo | None:
    row = tx.conn.execute(
        f"DELETE FROM tokens WHERE id = ? AND (? IS NULL OR user = ?) RETURNING {_TOKENS}",
        (token_id, user, user)).fetchone()
    return token_from_row(row) if row else None


def touch(tx: Tx, token_hash: str, at: float) -> None:
    tx.conn.execute("UPDATE tokens SET last_used_at = ? WHERE hash = ? AND "
                    "(last_used_at IS NULL OR last_used_at < ?)", (at, token_hash, at))
