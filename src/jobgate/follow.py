"""Following a job from the command line: its event stream read in a thread, and the
live line `jobgate submit --watch` shows until the job ends.

The stream is `GET /api/jobs/{id}/events` (Server-Sent Events) with the caller's bearer
token; a connection that drops is resumed from the last event id seen, for a while, so a
server restart does not end a watch.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import sys
import threading
import time
from typing import Any

from jobgate.client import Client, CliError
from jobgate.model import FINAL, FINAL_EVENTS, JOB_EVENTS, EventType, State
from jobgate.terminal import printable


def apply_event(job: dict[str, Any], event: dict[str, Any]) -> None:
    """Bring the job as shown up to date with one event of its stream."""
    kind = event.get("type", "")
    if kind == EventType.QUEUE_STATS:
        if "position" in event:
            job["position"] = event["position"]
    elif kind == EventType.PROGRESS:
        for key in ("progress", "message"):
            if event.get(key) is not None:
                job[key] = event[key]
    elif kind in JOB_EVENTS and "state" in event:
        job.update({k: v for k, v in event.items()
                    if k in ("state", "progress", "message", "error", "attempt")})
        if job["state"] != State.QUEUED:
            job["position"] = None


class EventReader:
    """Reads a Server-Sent Events stream in a thread, into `events`: ("event", data),
    ("reset", None), ("end", None) once the server ends it, or ("error", message).

    A dropped connection is resumed from the last id seen, for a while: the server may be
    restarting.
    """

    THREAD_NAME = "jobgate-events"

    def __init__(self, url: str, headers: Any, path: str) -> None:
        self.url, self.headers, self.path = url, headers, path
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import httpx

        last_id: str | None = None
        give_up_at: float | None = None
        with httpx.Client(base_url=self.url, headers=self.headers,
                          timeout=httpx.Timeout(10, read=None)) as http:
            while not self._stop.is_set():
                headers = {"Last-Event-ID": last_id} if last_id else {}
                try:
                    with http.stream("GET", self.path, headers=headers) as response:
                        if response.status_code == 204:
                            self.events.put(("end", None))
                            return
                        if response.status_code >= 400:
                            response.read()
                            self.events.put(("error", error_message(response)))
                            return
                        self.connected.set()
                        give_up_at = None
                        for data, frame_id in frames(response.iter_lines()):
                            if frame_id is not None:
                                last_id = frame_id
                            if data.get("type") == EventType.STREAM_RESET:
                                self.events.put(("reset", None))
                            else:
                                self.events.put(("event", data))
                            if data.get("type") in FINAL_EVENTS or self._stop.is_set():
                                # A one-job stream ends after its final event.
                                self.events.put(("end", None))
                                return
                    # Ended without the job's end: the server stopped or dropped us. Resume.
                except httpx.HTTPError as exc:
                    now = time.monotonic()
                    give_up_at = give_up_at or now + _RECONNECT_FOR_S
                    if now >= give_up_at:
                        self.events.put(("error", f"lost the event stream of {self.path} "
                                                  f"({exc.__class__.__name__})"))
                        return
                self._stop.wait(0.5)


_RECONNECT_FOR_S = 30.0


def frames(lines: Any) -> Any:
    """(data, id) of each SSE frame with data; comments (keep-alives) skipped."""
    data: list[str] = []
    frame_id: str | None = None
    for line in lines:
        if line == "":
            if data:
                with contextlib.suppress(ValueError):
                    yield json.loads("\n".join(data)), frame_id
            data, frame_id = [], None
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("id:"):
            frame_id = line[3:].strip()


def error_message(response: Any) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip()[:200] or response.reason_phrase
    return f"{message} (HTTP {response.status_code})"


def progress_line(job: dict[str, Any], elapsed_s: float) -> str:
    state = job["state"]
    if state == "queued":
        where = f"position {job['position']}" if job.get("position") else "waiting"
        return f"{state:9} {where} {job.get('message') or ''} [{elapsed_s:.0f}s]"
    pct = job.get("progress")
    bar = ""
    if pct is not None:
        filled = int(pct / 5)
        bar = "[" + "#" * filled + "-" * (20 - filled) + f"] {pct:5.1f}% "
    return f"{state:9} {bar}{job.get('message') or ''} [{elapsed_s:.0f}s]".rstrip()


def watch(client: Client, job_id: str, cancel_on_exit: bool = False) -> int:
    """Follow a job to its end on its event stream, with a live progress line.

    The exit code says how it ended: 0 completed, 1 failed or cancelled. Ctrl-C leaves the
    job running (exit 130) unless `cancel_on_exit`.
    """
    started = time.monotonic()
    tty = sys.stderr.isatty()
    last = ""
    job = client.call("GET", f"/api/jobs/{job_id}")
    reader = EventReader(client.url, client.http.headers, f"/api/jobs/{job_id}/events")
    reader.start()
    try:
        while True:
            line = printable(progress_line(job, time.monotonic() - started))
            if line != last:
                print(("\r\x1b[2K" if tty else "") + line, end="" if tty else "\n",
                      file=sys.stderr, flush=True)
                last = line
            if job["state"] in FINAL:
                break
            try:
                kind, data = reader.events.get(timeout=1.0)  # the line's clock ticks on
            except queue.Empty:
                continue
            if kind == "event":
                apply_event(job, data)
            elif kind == "reset":
                job = client.call("GET", f"/api/jobs/{job_id}")
            elif kind == "end":
                job = client.call("GET", f"/api/jobs/{job_id}")
                if job["state"] not in FINAL:
                    raise CliError(f"the event stream of job {job_id} ended early")
            else:
                raise CliError(str(data))
    except KeyboardInterrupt:
        if tty:
            print(file=sys.stderr)
        if cancel_on_exit:
            client.call("POST", f"/api/jobs/{job_id}/cancel")
            print(f"jobgate: cancelled {job_id}", file=sys.stderr)
        else:
            print(f"jobgate: stopped watching; {job_id} goes on "
                  "(jobgate cancel ID stops it)", file=sys.stderr)
        return 130
    finally:
        reader.stop()
    if tty:
        print(file=sys.stderr)
    if job["state"] == "failed" and job.get("error"):
        print(f"jobgate: {printable(telling_line(job['error']))}", file=sys.stderr)
    return 0 if job["state"] == "completed" else 1


# Words of a line that says what went wrong (yt-dlp's "ERROR: …", ffmpeg's "… No such
# file or directory", Python's "ValueError: …"), rather than a program's last words
# ("Conversion failed!", "Exiting…") or a progress line.
_TELLING = re.compile(r"error|fatal|not found|no such|denied|invalid|unable|cannot|can't|"
                      r"could not|couldn't|unsupported|refused|forbidden|not installed|"
                      r"timed out|exceeded|missing", re.IGNORECASE)


def telling_line(error: str) -> str:
    """The one line of a job's error that best says why it failed: the last line naming a
    fault, else the last line; prefixed with how it ended ("exit code 1") when that is on
    the first line and the telling line is another one."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    if not lines:
        return error.strip()
    head, sep, first = lines[0].partition(": ")
    reason = head if sep and re.fullmatch(r"exit code -?\d+|killed by signal \d+", head) \
        else None
    if reason is not None:
        lines[0] = first
    telling = [line for line in lines if _TELLING.search(line)]
    line = (telling or lines)[-1]
    return f"{reason}: {line}" if reason is not None else line
