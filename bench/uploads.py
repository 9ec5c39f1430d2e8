"""Uploads: a large file (1 GB by default) sent to POST /api/uploads of a real `jobgate
serve`, with the server's resident memory sampled (psutil) while it arrives.

The body is a real multipart/form-data request with a Content-Length, streamed by httpx
from a generator (the same 1 MB of random bytes over and over), so the bench process holds
no copy of the file either. Prints one table: the server's idle RSS, its peak during the
upload, the difference, and the throughput; checks the answered sha256 against the bytes
sent. The issue's target: the peak within 50 MB of idle.

    uv run python bench/uploads.py [--size-mb 1024]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

_MB = 1024 * 1024
_SAMPLE_S = 0.02
_BOUNDARY = "jobgatebenchboundary"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"jobgate serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    sys.exit("jobgate serve did not become healthy in 120 s")


class _Sampler(threading.Thread):
    """The peak RSS of a process, sampled every 20 ms until stopped."""

    def __init__(self, proc: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.proc, self.peak_bytes, self.samples = proc, 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_bytes = max(self.peak_bytes, self.proc.memory_info().rss)
            self.samples += 1
            self._stop_event.wait(_SAMPLE_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _body(size_bytes: int, block: bytes, digest: hashlib._Hash) -> tuple[int, Iterator[bytes]]:
    head = (f"--{_BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"film.mkv\"\r\nContent-Type: video/x-matroska\r\n\r\n").encode()
    tail = f"\r\n--{_BOUNDARY}--\r\n".encode()

    def chunks() -> Iterator[bytes]:
        yield head
        left = size_bytes
        while left > 0:
            piece = block if left >= len(block) else block[:left]
            digest.update(piece)
            left -= len(piece)
            yield piece
        yield tail

    return len(head) + size_bytes + len(tail), chunks()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobgate-upload-bench-") as tmp:
        folder = Path(tmp)
        port = _free_port()
        config = folder / "jobgate.toml"
        config.write_text(
            f'[server]\nport = {port}\ndata_dir = "./data"\ninput_dir = "./input"\n'
            f'[auth]\nenabled = false\n'
            f'[uploads]\nmax_file_mb = {opts.size_mb + 1}\n'
            f'quota_per_user_mb = {opts.size_mb + 1}\n')
        log = folder / "serve.log"
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "jobgate", "serve", "--config",
                                     str(config)], cwd=folder, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            _wait_healthy(url, proc, log)
            server = psutil.Process(proc.pid)
            with httpx.Client(base_url=url, timeout=120) as http:
                # Warm up the route (imports, first request) before idle is measured.
                http.post("/api/uploads", files={"file": ("warm.bin", b"warm")})
                time.sleep(1)
                idle_bytes = server.memory_info().rss
                digest = hashlib.sha256()
                length, chunks = _body(opts.size_mb * _MB, os.urandom(_MB), digest)
                sampler = _Sampler(server)
                sampler.start()
                started = time.perf_counter()
                response = http.post("/api/uploads", content=chunks, headers={
                    "content-type": f"multipart/form-data; boundary={_BOUNDARY}",
                    "content-length": str(length)})
                elapsed_s = time.perf_counter() - started
                sampler.stop()
            if response.status_code != 201:
                sys.exit(f"upload refused: HTTP {response.status_code} {response.text[:300]}")
            answer = response.json()
            sha_ok = answer["sha256"] == digest.hexdigest() and \
                answer["size"] == opts.size_mb * _MB
        finally:
            proc.terminate()
            proc.wait(30)
    peak_bytes = max(sampler.peak_bytes, idle_bytes)
    rows = [
        ("upload size", f"{opts.size_mb} MB"),
        ("idle RSS", f"{idle_bytes / _MB:.1f} MB"),
        ("peak RSS during upload", f"{peak_bytes / _MB:.1f} MB"),
        ("delta", f"{(peak_bytes - idle_bytes) / _MB:.1f} MB"),
        ("throughput", f"{opts.size_mb / elapsed_s:.1f} MB/s ({elapsed_s:.1f} s)"),
        ("RSS samples", str(sampler.samples)),
        ("sha256 and size as sent", "yes" if sha_ok else "NO"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':{width}}  value")
    print(f"{'-' * width}  {'-' * 24}")
    for name, value in rows:
        print(f"{name:{width}}  {value}")
    return 0 if sha_ok else 1


if __name__ == "__main__":
    sys.exit(main())
