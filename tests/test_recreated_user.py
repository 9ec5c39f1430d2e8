"""A user removed and made again under the same name is another user: the first one's
login tokens (and what stands on them, tickets and open streams) do not carry over
(issue 12). On every backend, through the real authenticator and store."""

from __future__ import annotations

import sqlite3
import time

import psycopg
import pytest

from jobgate.auth import Authenticator, AuthError, hash_password
from jobgate.store.base import Store


async def remove_user(db_url: str, name: str) -> None:
    """What a `user remove` does (there is no such command yet): the row goes."""
    if db_url.startswith("sqlite:"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            conn.execute("DELETE FROM users WHERE name = ?", (name,))
    else:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute("DELETE FROM users WHERE name = %s", (name,))


async def test_a_login_token_of_a_removed_user_does_not_sign_in_the_new_one(
        store: Store, db_url: str) -> None:
    auth = Authenticator(store, b"k" * 64, token_ttl_s=3600, ticket_ttl_s=30)
    first = await store.add_user("dana", hash_password("first"), admin=True)
    old_token, _ = auth.issue(first)
    old = await auth.token(old_token)
    assert old.user.name == "dana" and old.user.admin
    await remove_user(db_url, "dana")
    await store.add_user("dana", hash_password("second"), admin=False)
    with pytest.raises(AuthError):
        await auth.token(old_token)
    assert not await auth.current(old)  # a ticket or stream opened on it ends too
    new = await store.get_user("dana")
    assert new is not None
    fresh = await auth.token(auth.issue(new)[0])  # the new user's own login works
    assert fresh.user.name == "dana" and not fresh.user.admin
    assert await auth.current(fresh)


async def test_a_login_in_the_second_the_user_was_made_is_good(store: Store) -> None:
    auth = Authenticator(store, b"k" * 64, token_ttl_s=3600, ticket_ttl_s=30)
    user = await store.add_user("erin", None, admin=False)
    assert user.created_at <= time.time()
    principal = await auth.token(auth.issue(user)[0])
    assert principal.user.name == "erin"
