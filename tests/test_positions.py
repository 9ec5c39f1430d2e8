"""Queue positions: exact ranks in dispatch order, checked against a brute-force sort."""

from __future__ import annotations

import bisect
import itertools
import random
import time

from jobgate import positions
from jobgate.model import Event, iso, new_id, parse_iso
from jobgate.positions import Entry, PositionIndex, RankedKeys, sort_key
from jobgate.scheduler import Limits

_seq = itertools.count(1)


def ms(ts: float) -> float:
    """A time as events carry it: ISO-8601 to the millisecond."""
    return parse_iso(iso(ts) or "")


def queued(job_id: str, priority: int, vt: int, run_at: float,
           type_: str = "job.queued") -> Event:
    data = {"priority": priority, "vt": vt, "run_at": iso(run_at), "state": "queued"}
    return Event(next(_seq), type_, time.time(), job_id, "alice", data)


def left(job_id: str, type_: str) -> Event:
    return Event(next(_seq), type_, time.time(), job_id, "alice", {})


def test_ranks_follow_priority_then_vt_then_id():
    now = time.time()
    a, b, c, d = (new_id(now + i) for i in range(4))
    index = PositionIndex()
    index.apply([queued(a, 0, 2, now - 1), queued(b, 0, 1, now - 1),
                 queued(c, 5, 9, now - 1), queued(d, 0, 1, now - 1)])
    assert [index.position(x) for x in (c, b, d, a)] == [1, 2, 3, 4]
    assert len(index) == 4 and index.ready_count() == 4


def test_a_job_leaves_the_order_when_it_starts_or_ends_and_others_move_up():
    now = time.time()
    ids = [new_id(now + i) for i in range(5)]
    index = PositionIndex()
    index.apply([queued(x, 0, i + 1, now - 1) for i, x in enumerate(ids)])
    index.apply([left(ids[0], "job.started"), left(ids[2], "job.cancelled")])
    assert [index.position(x) for x in ids] == [None, 1, None, 2, 3]
    index.apply([left(ids[1], "job.failed"), left(ids[3], "job.completed")])
    assert index.position(ids[4]) == 1
    assert index.position("no-such-job") is None


def test_a_retried_job_goes_behind_with_its_new_key():
    now = time.time()
    a, b = new_id(now), new_id(now + 1)
    index = PositionIndex()
    index.apply([queued(a, 0, 1, now - 1), queued(b, 0, 2, now - 1)])
    index.apply([left(a, "job.started"), queued(a, 0, 3, now - 1, "job.retrying")])
    assert (index.position(b), index.position(a)) == (1, 2)


def test_delayed_jobs_have_no_position_until_due():
    now = time.time()
    ready, later = new_id(now), new_id(now + 1)
    index = PositionIndex()
    # The delayed job would come first (higher priority), but it is not due yet.
    index.apply([queued(ready, 0, 5, now - 1), queued(later, 9, 1, now + 60)])
    assert index.position(later) is None
    assert index.position(ready) == 1
    assert index.ready_count() == 1 and len(index) == 2
    assert index.position(later, now_s=now + 61) == 1
    assert index.position(ready, now_s=now + 61) == 2


def test_a_delayed_job_that_is_cancelled_never_comes_back():
    now = time.time()
    job = new_id(now)
    index = PositionIndex()
    index.apply([queued(job, 0, 1, now + 60), left(job, "job.cancelled")])
    assert index.position(job, now_s=now + 61) is None
    assert index.ready_count(now_s=now + 61) == 0


def test_load_replaces_the_whole_index():
    now = time.time()
    a, b = new_id(now), new_id(now + 1)
    index = PositionIndex()
    index.apply([queued("stale", 0, 1, now - 1)])
    index.load([((0, 2, a), now - 1), ((-1, 7, b), now - 1)])
    assert index.position("stale") is None
    assert (index.position(b), index.position(a)) == (1, 2)


def test_ranks_match_a_brute_force_sort_over_random_events():
    """Thousands of random queue/start/cancel/retry/delay events; every rank checked."""
    rng = random.Random(20240601)
    base = time.time()
    clock = base + 1000  # virtual "now", always ahead of the real clock
    index = PositionIndex()
    truth: dict[str, tuple[int, int, float]] = {}  # id -> (priority, vt, run_at)
    vt = 0

    def expected(now_s: float) -> dict[str, int]:
        ready = sorted((-p, v, i) for i, (p, v, r) in truth.items() if r <= now_s)
        return {key[2]: n for n, key in enumerate(ready, 1)}

    every_id: list[str] = []
    for step in range(3000):
        clock += rng.random()
        action = rng.random()
        present = sorted(truth)
        if action < 0.4 or not present:
            job_id = new_id(base + step * 0.001)
            every_id.append(job_id)
            vt += rng.randint(0, 2)
            run_at = ms(rng.choice([base - 5, base - 5, clock + rng.uniform(1, 50)]))
            priority = rng.choice([0, 0, 0, 5, 10])
            index.apply([queued(job_id, priority, vt, run_at)])
            truth[job_id] = (priority, vt, run_at)
        elif action < 0.75:
            job_id = rng.choice(present)
            index.apply([left(job_id, rng.choice(["job.started", "job.cancelled",
                                                  "job.failed"]))])
            del truth[job_id]
        else:
            job_id = rng.choice(present)
            vt += 1
            run_at = ms(rng.choice([base - 5, clock + rng.uniform(1, 50)]))
            index.apply([left(job_id, "job.started"),
                         queued(job_id, truth[job_id][0], vt, run_at, "job.retrying")])
            truth[job_id] = (truth[job_id][0], vt, run_at)
        if step % 10 == 0:
            want = expected(clock)
            got = {i: index.position(i, now_s=clock) for i in every_id}
            assert {i: p for i, p in got.items() if p is not None} == want, f"step {step}"
            assert index.ready_count(now_s=clock) == len(want)
            assert len(index) == len(truth)


# --- end to end: the queue's positions are the order claim takes ---------------------------

async def test_queue_position_is_the_order_claim_takes(make_settings, open_queue):
    queue, _ = await open_queue(make_settings(), worker=False)
    rng = random.Random(7)
    jobs = []
    for owner in ["alice"] * 6 + ["bob"] * 3 + ["carol"] * 4 + ["alice", "bob", "carol"] * 2:
        kind = rng.choice(["noop", "sleep"])
        job, created = await queue.submit(owner, kind, priority=rng.choice([0, 0, 3]))
        assert created
        jobs.append(job)
    later, _ = await queue.submit("bob", "noop", priority=9, run_at=time.time() + 3600)
    assert queue.position(later) is None
    assert queue.to_json(later)["position"] is None

    positions = {job.id: queue.position(job) for job in jobs}
    assert sorted(positions.values()) == list(range(1, len(jobs) + 1))
    assert all(queue.to_json(job)["position"] == positions[job.id] for job in jobs)

    limits = Limits(max_running=1000)
    claimed = []
    for n in range(len(jobs)):
        head = min(jobs, key=lambda j: positions[j.id] if j.id not in claimed else 10**9)
        assert queue.positions.position(head.id) == 1  # the index moved everyone up
        got = await queue.store.claim("w1", 1, limits, 30, sorted(queue.settings.kinds))
        assert len(got) == 1, f"claim {n} found nothing"
        claimed.append(got[0].id)
        assert queue.position(got[0]) is None
    assert [positions[job_id] for job_id in claimed] == list(range(1, len(jobs) + 1))
    assert await queue.store.claim("w1", 1, limits, 30, sorted(queue.settings.kinds)) == []


def test_ranked_keys_match_a_sorted_list_across_block_splits_and_merges():
    """Thousands of keys (several blocks), added and removed at random, in and out of
    order, with ranks asked in between (so entries' remembered places go stale): every
    rank equals the index in a plainly sorted list."""
    rng = random.Random(7)
    keys = RankedKeys()
    plain: list[str] = []
    pool = [sort_key((-rng.choice([0, 0, 5, -1000, 1000]), rng.randrange(10**12), f"j{i:06d}"))
            for i in range(7000)]
    entries = {key: Entry(key) for key in pool}

    def check(samples: int) -> None:
        plain.sort()
        assert len(keys) == len(plain) and list(keys) == plain
        for i in rng.sample(range(len(plain)), min(samples, len(plain))):
            assert keys.rank(entries[plain[i]]) == i

    for n, key in enumerate(pool):
        keys.add(entries[key])
        plain.append(key)
        if n % 997 == 0:
            check(50)
    check(300)
    for n, key in enumerate(rng.sample(pool, 4000)):
        keys.discard(entries[key])
        keys.discard(entries[key])  # a second time: nothing left to remove
        plain.remove(key)
        if n % 499 == 0:
            check(50)
    for key in pool[:500]:
        if key not in plain:
            keys.add(entries[key])
            plain.append(key)
    check(300)
    # The head of the queue leaves one by one (claims) while new keys enter at both ends.
    for n in range(1500):
        plain.sort()
        keys.discard(entries[plain.pop(0)])
        if n % 3 == 0:
            fresh = sort_key((0, rng.choice([0, 10**13]), f"k{n:06d}"))
            entries[fresh] = Entry(fresh)
            keys.add(entries[fresh])
            plain.append(fresh)
        if n % 50 == 0:
            check(20)
    check(300)


def test_ranks_in_a_queue_that_fills_in_order_need_no_search(monkeypatch):
    """A queue filling up in dispatch order (one producer, one priority) keeps every key
    where its entry last saw it: ranks are found without a search."""
    keys = RankedKeys()
    entries = [Entry(sort_key((0, vt, f"j{vt:06d}"))) for vt in range(5000)]
    for entry in entries:
        keys.add(entry)
    searched = 0
    original = bisect.bisect_left

    def counting(*args: object, **kwargs: object) -> int:
        nonlocal searched
        searched += 1
        return original(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(positions, "bisect_left", counting)
    assert [keys.rank(e) for e in entries[::7]] == list(range(0, 5000, 7))
    assert searched == 0
    keys.discard(entries[3])  # keys behind it in its block move: theirs are searched again
    assert keys.rank(entries[4]) == 3 and searched == 2
    assert keys.rank(entries[4]) == 3 and searched == 2  # ... once


def test_sort_keys_sort_like_dispatch_keys():
    rng = random.Random(3)
    keys = [(-rng.randint(-1000, 1000), rng.randrange(10**15), new_id(rng.uniform(0, 2e9)))
            for _ in range(2000)]
    assert sorted(keys, key=sort_key) == sorted(keys)
