"""The Huey producer: enqueues tasks into `huey_app.huey` and prints when it did (JSON).

    python huey_producer.py noop N        N no-op tasks, as fast as one loop can
    python huey_producer.py stamp N MS    N timestamped tasks, one every MS milliseconds
    python huey_producer.py pragma        the `synchronous` setting Huey's connection uses
"""

from __future__ import annotations

import json
import sys
import time

from huey_app import huey, noop, stamp


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "pragma":
        with huey.storage.db() as cursor:
            value = cursor.execute("PRAGMA synchronous").fetchone()[0]
        print(json.dumps({"synchronous": value}))
        return
    n = int(argv[1])
    started = time.time()
    if mode == "noop":
        for _ in range(n):
            noop()
    elif mode == "stamp":
        interval_s = float(argv[2]) / 1000
        for i in range(n):
            pause = started + i * interval_s - time.time()
            if pause > 0:
                time.sleep(pause)
            stamp(time.time())
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps({"started": started, "ended": time.time(), "n": n}))


if __name__ == "__main__":
    main(sys.argv[1:])
