"""The Procrastinate producer: defers tasks of `procrastinate_app.app`, prints when (JSON).

    python procrastinate_producer.py schema             apply Procrastinate's schema
    python procrastinate_producer.py noop N CHUNK       N no-op jobs, CHUNK per batch_defer
    python procrastinate_producer.py stamp N MS         N timestamped jobs, one every MS ms
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from procrastinate_app import app, noop, stamp


async def main(argv: list[str]) -> None:
    mode = argv[0]
    async with app.open_async():
        if mode == "schema":
            await app.schema_manager.apply_schema_async()
            print(json.dumps({"schema": "applied"}))
            return
        n = int(argv[1])
        started = time.time()
        if mode == "noop":
            # Many jobs at once, as Procrastinate's docs say: one `batch_defer_async`
            # call (one INSERT) per chunk.
            chunk = int(argv[2])
            for start in range(0, n, chunk):
                await noop.batch_defer_async(*({} for _ in range(min(chunk, n - start))))
        elif mode == "stamp":
            interval_s = float(argv[2]) / 1000
            for i in range(n):
                pause = started + i * interval_s - time.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                await stamp.defer_async(enqueued_at=time.time())
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        print(json.dumps({"started": started, "ended": time.time(), "n": n}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
