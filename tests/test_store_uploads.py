"""Storage conformance, uploads: their rows, each user's total, the oldest first for
retention, and a delete that holds back while a job in the given states names the upload.
Runs on every backend."""

from __future__ import annotations

import time

from jobgate.model import State, new_id
from jobgate.store.base import Store, Upload
from jobgate.uploads import ALL_STATES, BUSY, reference
from storekit import claim_one, done, submit


def upload(owner: str = "alice", size: int = 10, created_at: float | None = None) -> Upload:
    return Upload(new_id(), owner, "film one.mkv", size, "ab" * 32,
                  time.time() if created_at is None else created_at)


async def test_an_upload_is_stored_and_read_back_as_it_was(store: Store) -> None:
    up = upload(size=3 * 2**40)  # past 32 bits
    await store.add_upload(up)
    assert await store.get_upload(up.id) == up
    assert await store.get_upload(new_id()) is None


async def test_uploads_are_listed_per_owner_newest_first_with_their_total(store: Store) -> None:
    first, second = upload(size=5), upload(size=7)
    theirs = upload("bob", size=100)
    for up in (first, second, theirs):
        await store.add_upload(up)
    assert [u.id for u in await store.list_uploads("alice")] == [second.id, first.id]
    assert [u.id for u in await store.list_uploads("bob")] == [theirs.id]
    assert await store.list_uploads("carol") == []
    assert await store.uploads_size("alice") == 12
    assert await store.uploads_size("carol") == 0


async def test_uploads_before_a_time_oldest_first(store: Store) -> None:
    now = time.time()
    old, older, fresh = upload(created_at=now - 100), upload("bob", created_at=now - 200), \
        upload(created_at=now)
    for up in (old, older, fresh):
        await store.add_upload(up)
    assert [u.id for u in await store.uploads_before(now - 50)] == [older.id, old.id]
    assert [u.id for u in await store.uploads_before(now - 50, limit=1)] == [older.id]


async def test_delete_holds_back_while_a_job_of_the_owner_in_those_states_names_it(
        store: Store) -> None:
    up = upload()
    await store.add_upload(up)
    ref = reference(up.id)
    job = await submit(store, "alice", kind="solo", args={"input": f"upload:{up.id}"})
    # Another user's job naming the same text does not count: it could never use the file.
    await submit(store, "bob", args={"input": f"upload:{up.id}"})
    assert not await store.delete_upload(up.id, ref, BUSY)  # queued
    running = await claim_one(store, kinds=["solo"])
    assert running.id == job.id
    assert not await store.delete_upload(up.id, ref, BUSY)  # running
    assert await store.finish(running.id, running.lease_token, done()) is State.COMPLETED
    assert not await store.delete_upload(up.id, ref, ALL_STATES)  # finished, still named
    assert await store.get_upload(up.id) == up
    assert await store.delete_upload(up.id, ref, BUSY)  # no job may run with it now
    assert await store.get_upload(up.id) is None
    assert not await store.delete_upload(up.id, ref, BUSY)  # gone already


async def test_a_reference_is_matched_as_it_is_not_as_a_pattern(store: Store) -> None:
    up = upload()
    await store.add_upload(up)
    # A job naming an id that differs only in case, or holding LIKE's wildcards, is
    # not a user of this upload.
    await submit(store, "alice", args={"input": f"upload:{up.id.lower()}"})
    await submit(store, "alice", args={"input": "upload:%"})
    await submit(store, "alice", args={"input": "upload:" + "_" * len(up.id)})
    assert await store.delete_upload(up.id, reference(up.id), ALL_STATES)


async def test_an_unconditional_delete(store: Store) -> None:
    up = upload()
    await store.add_upload(up)
    await submit(store, "alice", args={"input": f"upload:{up.id}"})
    assert await store.delete_upload(up.id)
    assert await store.get_upload(up.id) is None
    assert State.QUEUED in BUSY and State.RUNNING in BUSY
