"""Storage conformance for the operator's side of users and tokens (store/sqlite_users.py,
store/postgres_users.py): listing users with their job counts, changing them, login
generations, tokens' public ids, names, last use and revocation, and a database made by
the schema before token ids whose tokens keep working. Runs on every backend."""

from __future__ import annotations

import sqlite3
import time

import psycopg
import pytest

from jobgate.auth import new_named_token, token_hash
from jobgate.store import store_for_url
from jobgate.store.base import NotFound
from jobgate.store.rows import migrations
from jobgate.store.sqlite_conn import _split
from storekit import claim_one, submit


async def test_users_are_listed_with_their_queued_and_running_jobs(store):
    await store.add_user("alice", "hash-a", admin=True)
    await store.add_user("bob", None, admin=False)
    await store.add_token("bob", "h1", "laptop")
    await store.add_token("bob", "h2")
    for _ in range(3):
        await submit(store, "bob", kind="solo")
    await submit(store, "alice")
    await claim_one(store, kinds=["solo"])
    listed = {u.name: u for u in await store.list_users()}
    assert list(listed) == ["alice", "bob"]
    alice, bob = listed["alice"], listed["bob"]
    assert (alice.admin, alice.has_password, alice.queued, alice.running, alice.tokens) == (
        True, True, 1, 0, 0)
    assert (bob.admin, bob.has_password, bob.queued, bob.running, bob.tokens) == (
        False, False, 2, 1, 2)
    assert bob.generation == 0 and bob.created_at > 0
    assert not hasattr(bob, "password_hash")


async def test_update_user_changes_what_is_given_and_bumps_the_generation(store):
    await store.add_user("bob", "old-hash", admin=False)
    user = await store.update_user("bob", admin=True)
    assert (user.admin, user.password_hash, user.generation) == (True, "old-hash", 0)
    user = await store.update_user("bob", password_hash="new-hash", bump_generation=True)
    assert (user.admin, user.password_hash, user.generation) == (True, "new-hash", 1)
    user = await store.update_user("bob", admin=False, bump_generation=True)
    assert (user.admin, user.generation) == (False, 2)
    got = await store.get_user("bob")
    assert got is not None and (got.admin, got.password_hash, got.generation) == (
        False, "new-hash", 2)
    await store.add_token("bob", "h1")
    by_token = await store.user_for_token("h1")
    assert by_token is not None and by_token.generation == 2
    assert by_token.password_hash is None  # a token's lookup never reads the hash
    with pytest.raises(NotFound):
        await store.update_user("nobody", bump_generation=True)


async def test_tokens_have_public_ids_names_and_a_last_use(store, other_node):
    await store.add_user("bob", None, admin=False)
    await store.add_user("carol", None, admin=False)
    secret, laptop = await new_named_token(store, "bob", "laptop")
    phone = await store.add_token("bob", "h-phone")
    await store.add_token("carol", "h-carol")
    assert secret.startswith("jg_") and laptop.id != phone.id
    assert len(laptop.id) == 12 and laptop.id not in (secret, token_hash(secret))
    assert (laptop.user, laptop.name, laptop.last_used_at) == ("bob", "laptop", None)
    listed = await other_node.list_tokens("bob")  # another node sees them
    assert [(t.id, t.name, t.last_used_at) for t in listed] == [
        (laptop.id, "laptop", None), (phone.id, None, None)]
    used_at = time.time()
    await store.touch_token(token_hash(secret), used_at)
    await store.touch_token(token_hash(secret), used_at - 30)  # never moves back
    [first, _] = await other_node.list_tokens("bob")
    assert first.last_used_at == pytest.approx(used_at)
    with pytest.raises(NotFound):
        await store.list_tokens("nobody")


async def test_a_revoked_token_is_refused_by_every_node(store, other_node):
    await store.add_user("bob", None, admin=False)
    await store.add_user("carol", None, admin=False)
    bobs = await store.add_token("bob", "h-bob")
    carols = await store.add_token("carol", "h-carol")
    assert await other_node.user_for_token("h-bob") is not None
    # a user's revocation names their own tokens only
    assert await store.revoke_token(carols.id, user="bob") is None
    revoked = await store.revoke_token(bobs.id, user="bob")
    assert revoked is not None and (revoked.id, revoked.user) == (bobs.id, "bob")
    assert await other_node.user_for_token("h-bob") is None
    assert await store.revoke_token(bobs.id) is None  # once
    assert await store.revoke_token(carols.id) is not None  # an admin's: anyone's
    assert await other_node.user_for_token("h-carol") is None


async def test_removing_a_user_takes_their_tokens_not_their_jobs(store):
    await store.add_user("bob", None, admin=False)
    await store.add_token("bob", "h-bob")
    job = await submit(store, "bob")
    assert await store.remove_user("bob") is True
    assert await store.remove_user("bob") is False
    assert await store.get_user("bob") is None
    assert await store.user_for_token("h-bob") is None
    assert await store.get(job.id) is not None
    # made again: a new user, with no token of the first
    await store.add_user("bob", None, admin=False)
    assert await store.list_tokens("bob") == []


# --- a database made by the schema before token ids -------------------------------------

def _old_sqlite(path: str, before: int) -> None:
    with sqlite3.connect(path) as conn:
        for version, sql in migrations("sqlite"):
            if version >= before:
                break
            for statement in _split(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version:d}")
        conn.execute("INSERT INTO users (name, password_hash, admin, created_at) "
                     "VALUES ('bob', NULL, 0, ?)", (time.time(),))
        conn.execute("INSERT INTO tokens (hash, user, created_at) VALUES (?, 'bob', ?)",
                     (token_hash("jg_old"), time.time()))


def _old_postgres(url: str, before: int) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE jobgate_schema (version INTEGER NOT NULL)")
        for version, sql in migrations("postgres"):
            if version >= before:
                break
            conn.execute(sql.encode())
            conn.execute("INSERT INTO jobgate_schema (version) VALUES (%s)", (version,))
        conn.execute("INSERT INTO users (name, password_hash, admin, created_at) "
                     "VALUES ('bob', NULL, FALSE, %s)", (time.time(),))
        conn.execute('INSERT INTO tokens (hash, "user", created_at) VALUES (%s, \'bob\', %s)',
                     (token_hash("jg_old"), time.time()))


async def test_tokens_made_before_token_ids_keep_working(db_url):
    if db_url.startswith("sqlite:"):
        _old_sqlite(db_url.removeprefix("sqlite:///"), before=9)
    else:
        _old_postgres(db_url, before=7)
    store = store_for_url(db_url)
    assert await store.schema_version() == (8 if db_url.startswith("sqlite:") else 6)
    await store.open()
    try:
        assert await store.schema_version() == store.latest_schema_version()
        user = await store.user_for_token(token_hash("jg_old"))
        assert user is not None and (user.name, user.generation) == ("bob", 0)
        [old] = await store.list_tokens("bob")
        assert len(old.id) == 12 and (old.name, old.last_used_at) == (None, None)
        new = await store.add_token("bob", "h-new", "laptop")
        assert new.id != old.id
        assert await store.revoke_token(old.id) is not None
        assert await store.user_for_token(token_hash("jg_old")) is None
        assert await store.user_for_token("h-new") is not None
    finally:
        await store.close()
