"""The depth ring behind the dashboard's chart (depth.py): a bounded sample per slot,
holding the most jobs seen queued and running in it, and the longest wait."""

from __future__ import annotations

from jobgate.depth import DepthRing


def test_a_slot_keeps_the_most_jobs_seen_in_it_and_the_next_slot_starts_afresh():
    ring = DepthRing(every_s=30, keep=120)
    ring.note(1000.0, 3, 1, 12.34)
    ring.note(1019.0, 5, 0, 40.0)
    ring.note(1019.5, 2, 2, 0.0)
    ring.note(1020.0, 1, 0)  # 1020 starts the next slot of 30 s
    assert [(s.at, s.queued, s.running, s.wait_s) for s in ring.samples] == [
        (990.0, 5, 2, 40.0), (1020.0, 1, 0, 0.0)]
    shown = ring.to_json()
    assert shown["every_s"] == 30
    assert shown["samples"][0] == {"at": "1970-01-01T00:16:30.000Z", "queued": 5,
                                   "running": 2, "wait_s": 40.0}


def test_the_ring_keeps_an_hour_and_drops_a_slot_older_than_its_last():
    ring = DepthRing(every_s=30, keep=120)
    for i in range(200):
        ring.note(i * 30.0, i, 0)
    assert len(ring.samples) == 120
    assert ring.samples[0].queued == 80 and ring.samples[-1].queued == 199
    ring.note(0.0, 1000, 0)  # the clock stepped back: not written out of order
    assert ring.samples[-1].queued == 199 and len(ring.samples) == 120
