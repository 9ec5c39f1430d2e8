"""SQLite's read for the estimates (`Store.eta_snapshot`): a function of an open
transaction, which `SqliteStore` hands to its connection thread. What the rows mean is
worked out in `eta.py`; this only reads them, all in one transaction."""

from __future__ import annotations

from jobgate.eta import Active, Queued, Snapshot
from jobgate.store.rows import loads
from jobgate.store.sqlite_conn import Tx

# The ready jobs walk the dispatch index; the waiting ones the index of waiting jobs.
READY = ("SELECT id, kind, owner, memory_mb, priority, vt, run_at FROM jobs "
         "WHERE state = 'queued' AND waiting = 0 ORDER BY priority DESC, vt, id LIMIT ?")
WAITING = ("SELECT id, kind, owner, memory_mb, priority, vt, run_at, depends_on FROM jobs "
           "WHERE state = 'queued' AND waiting > 0 ORDER BY id LIMIT ?")
RUNNING = "SELECT id, kind, owner, memory_mb, started_at, progress FROM jobs " \
    "WHERE state = 'running'"
SLOTS = "SELECT count(*), coalesce(sum(slots), 0) FROM nodes WHERE heartbeat_at >= ?"
# The last N runs of each kind that ran to an end (a failed run held its slot too).
HISTORY = ("SELECT kind, finished_at - started_at FROM (SELECT kind, started_at, finished_at, "
           "row_number() OVER (PARTITION BY kind ORDER BY finished_at DESC) AS rn FROM jobs "
           "WHERE state IN ('completed', 'failed') AND started_at IS NOT NULL "
           "AND finished_at IS NOT NULL) AS r WHERE rn <= ?")


def snapshot(tx: Tx, queued_limit: int, history: int, live_since: float
             ) -> tuple[Snapshot, dict[str, list[float]] | None]:
    queued = [Queued(i, k, o, int(m), int(p), int(vt), float(r))
              for i, k, o, m, p, vt, r in tx.conn.execute(READY, (queued_limit,))]
    queued += [Queued(i, k, o, int(m), int(p), int(vt), float(r), tuple(loads(d)))
               for i, k, o, m, p, vt, r, d in tx.conn.execute(WAITING, (queued_limit,))]
    running = [Active(i, k, o, int(m), float(s), None if p is None else float(p))
               for i, k, o, m, s, p in tx.conn.execute(RUNNING)]
    nodes, slots = tx.conn.execute(SLOTS, (live_since,)).fetchone()
    runs: dict[str, list[float]] | None = None
    if history > 0:
        runs = {}
        for kind, span in tx.conn.execute(HISTORY, (history,)):
            runs.setdefault(kind, []).append(float(span))
    return Snapshot(queued, running, int(slots) if nodes else None), runs
