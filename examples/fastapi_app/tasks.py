"""The example app's own work, declared in code next to its functions.

`app.py` merges this registry into the settings of `jobgate.toml` (which declares one
more kind, `count`, as a command). Each function's signature is its argument schema: a
`Path` is a `path` argument (a file of `input_dir` or an upload's `ref`), a `Literal` its
choices, `Annotated[..., jobgate.Arg(...)]` its bounds. Each job runs in a pool process of
its own, which imports this module by name, so the functions stay at its top level.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import jobgate

jobs = jobgate.KindRegistry()

_CHUNK = 1 << 20


@jobs.kind(max_running=2, memory_mb=64, timeout="30m")
def checksum(ctx: jobgate.JobContext, file: Path,
             algorithm: Literal["sha256", "sha1", "md5"] = "sha256") -> dict[str, Any] | None:
    """Checksums a file, reporting how much it has read; its output is ALGORITHMsum.txt."""
    size = file.stat().st_size
    digest = hashlib.new(algorithm)
    done = 0
    with file.open("rb") as f:
        while chunk := f.read(_CHUNK):
            if ctx.cancelled:
                return None
            digest.update(chunk)
            done += len(chunk)
            ctx.progress(100 * done / size, f"{done / 1e6:.1f} of {size / 1e6:.1f} MB")
    line = f"{digest.hexdigest()}  {file.name}\n"
    (ctx.output_dir / f"{algorithm}sum.txt").write_text(line)  # as `sha256sum -c` reads
    ctx.log(line.rstrip())
    return {"algorithm": algorithm, "digest": digest.hexdigest(), "bytes": size}


@jobs.kind(max_running=1, memory_mb=64, timeout="10m")
def primes(ctx: jobgate.JobContext,
           below: Annotated[int, jobgate.Arg(min=2, max=100_000_000,
                                             description="count the primes below this")]
           = 1_000_000) -> dict[str, int] | None:
    """Counts the primes below a number, a million at a time; one such job runs at once."""
    base = _sieve(math.isqrt(below) + 1)
    count = 0
    for low in range(0, below, _CHUNK):
        if ctx.cancelled:
            return None
        size = min(_CHUNK, below - low)
        segment = bytearray([1]) * size
        for p in base:
            start = max(p * p, -(-low // p) * p) - low
            if start < size:
                segment[start::p] = bytes(len(range(start, size, p)))
        if low == 0:
            segment[:2] = bytes(min(2, size))
        count += segment.count(1)
        ctx.progress(100 * (low + size) / below, f"{count:,} primes below {low + size:,}")
    return {"below": below, "primes": count}


def _sieve(n: int) -> list[int]:
    """The primes below `n` (here at most 10,001: the base of the segments)."""
    marks = bytearray([1]) * n
    marks[:2] = bytes(min(2, n))
    for p in range(2, math.isqrt(n) + 1):
        if marks[p]:
            marks[p * p::p] = bytes(len(range(p * p, n, p)))
    return [p for p in range(n) if marks[p]]
