"""The operator's verbs on users (users.py) and what they do to credentials (auth.py), on
every backend: removing a user with a queued and a running job (the queued one cancelled,
the running one's process really stopped, events for both; with `delete_data`, their
finished jobs, outputs and uploads gone), a new password ending login JWTs but not API
tokens, "log out everywhere", a demotion at once, and a token's last use written at most
once a minute."""

from __future__ import annotations

import asyncio
import secrets
import time

import psutil
import pytest

from conftest import survivors, wait_state
from jobgate import users
from jobgate.auth import Authenticator, AuthError, hash_password, new_token, token_hash
from jobgate.model import State
from jobgate.store.base import NotFound

SETTINGS = """
[worker]
cancel_grace_s = 2
"""


async def _running_with_pid(queue, job_id):
    await wait_state(queue, job_id, "running")
    found = {}

    async def has_pid() -> None:
        while True:
            job = await queue.get(job_id)
            if job is not None and job.pid:
                found["pid"] = job.pid
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(has_pid(), 30)
    return psutil.Process(found["pid"])


@pytest.mark.parametrize("delete_data", [False, True])
async def test_removing_a_user_cancels_their_queued_job_and_stops_their_running_one(
        make_settings, open_queue, delete_data):
    settings = make_settings(SETTINGS + "[limits]\nper_user_running = 1\n")
    queue, _ = await open_queue(settings)
    store = queue.store
    await store.add_user("bob", hash_password("bob-password"), admin=False)
    token = await new_token(store, "bob")
    await store.add_user("carol", None, admin=False)
    done, _ = await queue.submit("bob", "noop", {})
    await wait_state(queue, done.id, "completed")
    (queue.job_dir(done.id)).mkdir(parents=True, exist_ok=True)
    (queue.job_dir(done.id) / "out.txt").write_text("output")
    busy, _ = await queue.submit("bob", "sleep", {"seconds": 120})
    waiting, _ = await queue.submit("bob", "sleep", {"seconds": 120})  # per_user_running = 1
    carols, _ = await queue.submit("carol", "sleep", {"seconds": 120})
    proc = await _running_with_pid(queue, busy.id)
    assert (await queue.get(waiting.id)).state is State.QUEUED
    incoming = await queue.uploads.begin("bob", "clip.mp4")
    await incoming.write(b"data")
    upload = await incoming.commit()
    before = (await store.events_after(0))[-1].seq

    removal = await users.remove_user(queue, "bob", delete_data=delete_data)

    assert (removal.cancelled, removal.stopped, removal.still_running) == (
        [waiting.id], [busy.id], [])
    assert await survivors([proc], timeout_s=10) == []  # the process really stopped
    assert await store.get_user("bob") is None
    assert await store.user_for_token(token_hash(token)) is None
    events = [(e.type, e.job_id) for e in await store.events_after(before)]
    assert ("job.cancelled", waiting.id) in events and ("job.cancelled", busy.id) in events
    assert (await queue.get(carols.id)).state in (State.QUEUED, State.RUNNING)  # not hers
    if delete_data:
        assert (removal.deleted_jobs, removal.deleted_uploads) == (3, 1)
        assert [await queue.get(j.id) for j in (done, busy, waiting)] == [None] * 3
        assert not queue.job_dir(done.id).exists()
        assert await store.get_upload(upload.id) is None
        assert not queue.uploads.file("bob", upload.id).exists()
        assert "deleted 3 jobs and 1 upload" in removal.summary()
    else:
        assert removal.deleted_jobs == 0
        kept = {j.id: j.state for j in (await store.list_jobs("bob")).jobs}
        assert kept == {done.id: State.COMPLETED, busy.id: State.CANCELLED,
                        waiting.id: State.CANCELLED}
        assert (queue.job_dir(done.id) / "out.txt").exists()
        assert await store.get_upload(upload.id) is not None
        assert "their jobs are kept" in removal.summary()
    with pytest.raises(NotFound):
        await users.remove_user(queue, "bob")
    await queue.cancel(carols.id)


def _auth(store) -> Authenticator:
    return Authenticator(store, secrets.token_bytes(64), token_ttl_s=3600, ticket_ttl_s=60)


async def test_a_new_password_ends_login_jwts_but_not_api_tokens(store, other_node):
    await store.add_user("bob", hash_password("old-password"), admin=False)
    auth, other = _auth(store), _auth(other_node)
    other.key = auth.key  # two API nodes share the data dir's key
    api_token = await new_token(store, "bob")
    user = await auth.login("bob", "old-password")
    assert user is not None
    login, _ = auth.issue(user)
    held = await other.token(login)
    assert await other.current(held)

    await users.change_password(store, "bob", "new-password")

    with pytest.raises(AuthError, match="log in again"):
        await other.token(login)
    assert not await other.current(held)  # an open stream of that login ends too
    assert (await other.token(api_token)).user.name == "bob"  # tokens stay
    assert await auth.login("bob", "old-password") is None
    fresh = await auth.login("bob", "new-password")
    assert fresh is not None and fresh.generation == 1
    new_login, _ = auth.issue(fresh)
    assert (await other.token(new_login)).user.name == "bob"
    with pytest.raises(ValueError, match="at least 8"):
        await users.change_password(store, "bob", "short")
    with pytest.raises(NotFound):
        await users.change_password(store, "nobody", "long-enough")


async def test_log_out_everywhere_ends_logins_and_keeps_tokens(store):
    await store.add_user("bob", hash_password("bob-password"), admin=False)
    auth = _auth(store)
    api_token = await new_token(store, "bob")
    by_token = await auth.token(api_token)
    user = await auth.login("bob", "bob-password")
    assert user is not None
    logins = [auth.issue(user)[0] for _ in range(2)]
    principals = [await auth.token(t) for t in logins]
    assert (await users.log_out_everywhere(store, "bob")).generation == 1
    for login, principal in zip(logins, principals, strict=True):
        with pytest.raises(AuthError):
            await auth.token(login)
        assert not await auth.current(principal)
    assert await auth.current(by_token)


async def test_a_demoted_admin_has_no_admin_right_at_once(store, other_node):
    await store.add_user("ann", hash_password("ann-password"), admin=True)
    auth, other = _auth(store), _auth(other_node)
    api_token = await new_token(store, "ann")
    held = await other.token(api_token)
    assert held.user.admin
    await users.set_admin(store, "ann", False)
    assert not (await other.token(api_token)).user.admin  # the next request
    assert not await other.current(held)  # an admin's open stream ends
    await users.set_admin(store, "ann", True)
    assert (await auth.token(api_token)).user.admin


async def test_a_token_s_last_use_is_written_at_most_once_a_minute(store):
    await store.add_user("bob", None, admin=False)
    auth = _auth(store)
    token = await new_token(store, "bob", "laptop")
    before = time.time()
    await auth.token(token)
    [listed] = await store.list_tokens("bob")
    first = listed.last_used_at
    assert first is not None and before <= first <= time.time()
    for _ in range(20):  # any write would have moved it on: it only ever grows
        await auth.token(token)
    [listed] = await store.list_tokens("bob")
    assert listed.last_used_at == first
    # a minute on (this process's clock), the next use writes again
    auth._touched = {h: t - 61 for h, t in auth._touched.items()}
    await auth.token(token)
    [listed] = await store.list_tokens("bob")
    assert listed.last_used_at is not None and listed.last_used_at > first


async def test_a_revoked_token_is_refused_on_the_next_request(store, other_node):
    await store.add_user("bob", None, admin=False)
    other = _auth(other_node)
    token = await new_token(store, "bob")
    held = await other.token(token)
    [listed] = await store.list_tokens("bob")
    await users.revoke_token(store, listed.id)
    with pytest.raises(AuthError):
        await other.token(token)
    assert not await other.current(held)
    with pytest.raises(NotFound, match="no token"):
        await users.revoke_token(store, listed.id)


async def test_users_json_never_shows_a_hash(store):
    await store.add_user("bob", hash_password("bob-password"), admin=False)
    user = await store.get_user("bob")
    [info] = await store.list_users()
    await new_token(store, "bob", "laptop")
    [token] = await store.list_tokens("bob")
    for shown in (users.user_json(user), users.user_json(info), users.token_json(token)):
        text = repr(shown)
        assert "scrypt" not in text and "hash" not in text


async def test_a_removal_cut_short_is_finished_by_running_it_again(make_settings, open_queue):
    queue, _ = await open_queue(make_settings(SETTINGS), worker=False)
    await queue.store.add_user("bob", None, admin=False)
    job, _ = await queue.submit("bob", "sleep", {"seconds": 120})
    assert await queue.store.remove_user("bob")  # as if the sweep had not run yet
    removal = await users.remove_user(queue, "bob")
    assert removal.cancelled == [job.id]
    assert (await queue.get(job.id)).state is State.CANCELLED
    with pytest.raises(NotFound, match="no user bob"):
        await users.remove_user(queue, "bob")  # nothing left: an unknown name
