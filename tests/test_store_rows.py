"""Both backends store a job the same way: the same life (submit, claim, progress, finish
ok and failed, retry, requeue, hand back, cancel queued and running, recover, expire) run
on SQLite and on PostgreSQL leaves, after every verb, the same raw column values in the
job's row and the same raw event text, but for what must differ (ids and times). So one
write path per column holds: an empty result is SQL NULL everywhere, never the text
'null', and JSON is written by one encoder."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

from jobgate.model import Job, Output, State, new_id
from jobgate.scheduler import Limits
from jobgate.store import store_for_url
from jobgate.store.base import Outcome, Quota, Store
from jobgate.store.rows import COLUMNS
from pg import PgServer

_READ = COLUMNS + ", log_count"
_NAMES = [c.strip() for c in _READ.split(",")]
_TIMES = {"created_at", "run_at", "started_at", "finished_at", "lease_expires_at"}
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_OPEN = Limits(max_running=100)

Raw = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


class _Names:
    """Job ids in order of first sight: the same life makes the same names on each backend."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def __call__(self, job_id: str) -> str:
        return self.names.setdefault(job_id, f"job{len(self.names)}")

    def text(self, value: str) -> str:
        for job_id, name in self.names.items():
            value = value.replace(job_id, name)
        return _ISO.sub("<time>", value)


def _normal(names: _Names, row: tuple[Any, ...]) -> dict[str, Any]:
    out = {}
    for name, value in zip(_NAMES, row, strict=True):
        if name == "id":
            value = names(value)
        elif name in _TIMES:
            value = value is not None  # when differs; whether does not
        elif isinstance(value, bool):
            value = int(value)  # SQLite has no boolean: 0 and 1
        out[name] = value
    return out


async def _life(store: Store, raw: Raw) -> list[tuple[str, Any]]:
    """The verbs, each followed by its job's raw row; then every event's raw columns."""
    names = _Names()
    seen: list[tuple[str, Any]] = []

    def row(verb: str, job_id: str) -> None:
        [found] = raw(f"SELECT {_READ} FROM jobs WHERE id = %s", (job_id,))
        seen.append((verb, _normal(names, found)))

    async def submit(kind: str, **fields: Any) -> Job:
        now = time.time()
        base: dict[str, Any] = {"args": {"n": 1, "text": "é\u2028"}, "created_at": now,
                                "run_at": now, "max_attempts": 2}
        job, created = await store.submit(
            Job(id=new_id(now), kind=kind, owner="alice", **{**base, **fields}), Quota())
        assert created
        row("submit", job.id)
        return job

    async def claim(kind: str) -> Job:
        [job] = await store.claim("w1", 1, _OPEN, 30, [kind])
        row("claim", job.id)
        return job

    async def finish(job: Job, outcome: Outcome, verb: str) -> None:
        assert await store.finish(job.id, job.lease_token, outcome) is not None
        row(verb, job.id)

    async def verb(name: str, job: Job, call: Awaitable[Any]) -> None:
        await call
        row(name, job.id)

    a = await submit("a", priority=1, unique_key="u", depends_on=[], memory_mb=5)
    a = await claim("a")
    await verb("progress", a, store.progress(a.id, a.lease_token, 50.0, "half", rss_mb=3.0))
    await store.append_logs(a.id, ["one", "two"], 10)
    await finish(a, Outcome(State.COMPLETED, result={"x": [1, 2.5]}, message="done",
                            peak_memory_mb=12.5, outputs=[Output("out.txt", 2)]), "finish ok")

    b = await submit("b")
    b = await claim("b")
    await finish(b, Outcome(State.FAILED, error="boom", message="failed"), "finish failed")
    await verb("retry", b, store.retry(b.id))
    b = await claim("b")
    await finish(b, Outcome(State.QUEUED, error="again", message="retrying",
                            retry_at=time.time()), "requeue")
    b = await claim("b")
    await finish(b, Outcome(State.QUEUED, message="handed back", retry_at=time.time(),
                            hand_back=True), "hand back")
    b = await claim("b")
    await finish(b, Outcome(State.CANCELLED, result=None, message="cancelled"),
                 "finish cancelled")

    c = await submit("c")
    await verb("cancel queued", c, store.cancel(c.id))
    await verb("retry cancelled", c, store.retry(c.id))

    d = await submit("d")
    d = await claim("d")
    await verb("cancel running", d, store.cancel(d.id))
    await verb("recover cancelled", d, store.recover(["w1"]))

    e = await submit("e")
    e = await claim("e")
    await verb("recover queued", e, store.recover(["w1"]))
    e = await claim("e")
    await verb("recover failed", e, store.recover(["w1"]))

    f = await submit("f", run_at=time.time() - 100)
    await verb("expire", f, store.expire_queued(10))

    for event in raw("SELECT type, job_id, owner, data FROM events ORDER BY seq", ()):
        type_, job_id, owner, data = event
        seen.append(("event", (type_, names(job_id) if job_id else None, owner,
                               names.text(data))))
    return seen


async def _on(url: str, raw: Raw) -> list[tuple[str, Any]]:
    store = store_for_url(url)
    await store.open()
    try:
        return await _life(store, raw)
    finally:
        await store.close()


async def test_a_jobs_row_reads_back_identically_on_both_backends_after_every_verb(
        tmp_path: Path, postgres: PgServer) -> None:
    path = tmp_path / "jobgate.db"

    def sqlite_raw(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return conn.execute(sql.replace("%s", "?"), params).fetchall()

    pg_url = postgres.new_database()

    def pg_raw(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(pg_url) as conn:
            return conn.execute(sql, params).fetchall()

    on_sqlite = await _on(f"sqlite:///{path}", sqlite_raw)
    on_postgres = await _on(pg_url, pg_raw)
    assert [verb for verb, _ in on_sqlite] == [verb for verb, _ in on_postgres]
    for (verb, lite), (_, pg) in zip(on_sqlite, on_postgres, strict=True):
        assert lite == pg, verb
    # The rule for NULL: no JSON column holds the text 'null'.
    rows = {verb: row for verb, row in on_sqlite if verb != "event"}
    assert rows["retry"]["result"] is None and rows["finish failed"]["result"] is None
    assert rows["finish ok"]["result"] == '{"x":[1,2.5]}'
