"""The Procrastinate side of the PostgreSQL benchmark: one `App` and the same no-op task
as jobgate's, for `procrastinate worker` and for `procrastinate_producer.py`.

Configured through the environment, so both processes open the same database:

- `BENCH_PROCRASTINATE_DB`: the PostgreSQL URL (a database of its own on the bench's
  server);
- `BENCH_PROCRASTINATE_OUT`: a file each executed task appends to, so the bench counts
  executions (not fetches) without querying Procrastinate's tables while it runs.
"""

from __future__ import annotations

import os
import time

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ.get("BENCH_PROCRASTINATE_DB", "")))
_out_fd: int | None = None


def _out() -> int:
    global _out_fd
    if _out_fd is None:
        _out_fd = os.open(os.environ["BENCH_PROCRASTINATE_OUT"],
                          os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return _out_fd


@app.task(name="noop")
async def noop() -> None:
    """Does nothing but say it ran: one byte appended to the count file."""
    os.write(_out(), b".")


@app.task(name="stamp")
async def stamp(enqueued_at: float) -> None:
    """Records when it started next to when it was deferred (submit-to-start delay)."""
    started_at = time.time()
    os.write(_out(), f"{enqueued_at!r} {started_at!r}\n".encode())
