"""The Huey side of the benchmark: one `SqliteHuey` and the same no-op task as jobgate's.

Imported by `huey_consumer huey_app.huey` and by `huey_producer.py`, configured through
the environment so both processes open the same file the same way:

- `BENCH_HUEY_DB`: the SQLite file;
- `BENCH_HUEY_FSYNC`: `default` (Huey's own default, `fsync=None`, which leaves SQLite's
  `synchronous` as compiled in) or `true` (`fsync=True`, i.e. `synchronous=FULL`);
- `BENCH_HUEY_OUT`: a file each executed task appends to, so the bench counts executions
  (not dequeues) without touching Huey's database.
"""

from __future__ import annotations

import os
import time

from huey import SqliteHuey

_FSYNC = {"default": None, "true": True, "false": False}

huey = SqliteHuey(
    "bench",
    filename=os.environ.get("BENCH_HUEY_DB", "huey-bench.db"),
    fsync=_FSYNC[os.environ.get("BENCH_HUEY_FSYNC", "default")],
)
_out_fd: int | None = None


def _out() -> int:
    global _out_fd
    if _out_fd is None:
        _out_fd = os.open(os.environ["BENCH_HUEY_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return _out_fd


@huey.task()  # type: ignore[untyped-decorator]  # Huey ships no type hints
def noop() -> None:
    """Does nothing but say it ran: one byte appended to the count file."""
    os.write(_out(), b".")


@huey.task()  # type: ignore[untyped-decorator]  # Huey ships no type hints
def stamp(enqueued_at: float) -> None:
    """Records when it started next to when it was enqueued (submit-to-start delay)."""
    started_at = time.time()
    os.write(_out(), f"{enqueued_at!r} {started_at!r}\n".encode())
