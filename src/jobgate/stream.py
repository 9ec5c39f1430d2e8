"""Live events for clients: the hub that fans committed events out to SSE and WebSocket
streams, replays what a reconnecting client missed, and pushes queue statistics.

Every committed event reaches the hub once, in `seq` order, through the queue's event bus
(the store delivers other processes' events too). Each event is encoded once and the same
bytes go to every stream that may see it. A stream buffers at most `[streams] buffer_kb`
of frames; a client that falls further behind is dropped (it reconnects and resumes from
the store) instead of growing the server's memory.

Resuming: a client names the last `seq` it has. The hub replays the kept events after it
from the store (`Store.events_after`), then goes on live without a gap or a duplicate: the
live feed is subscribed before the replay is read, and the replay stops at the `seq` the
hub had seen when the stream opened. A `seq` older than the kept window (or newer than
anything this database ever stored) gets a `stream.reset`: the client reloads state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psutil

from jobgate.auth import Principal
from jobgate.config import Settings
from jobgate.depth import DepthRing
from jobgate.model import (
    CONTROL_EVENTS,
    QUEUED_EVENTS,
    SCHEDULE_EVENTS,
    STATE_EVENTS,
    Event,
    EventType,
    State,
    iso,
)
from jobgate.queue import JobQueue, node_live_s
from jobgate.stats import by_owner_json
from jobgate.store.base import Node, Stats
from jobgate.tasks import cancel_and_wait

log = logging.getLogger("jobgate.stream")

STATS_INTERVAL_S = 0.5  # queue.stats at most this often
# Queued jobs whose places a dashboard's stream follows (the newest, past this many: an
# admin's stream sees everyone's, and a page shows the newest few dozen).
MAX_TRACKED_POSITIONS = 1000
_PAGE = 1000  # events per read of the store while replaying
_SENT_MEMORY = 10_000  # seqs a WebSocket remembers sending, so a replay skips them


class TooManyStreams(Exception):
    """The user already has `[streams] max_per_user` streams open (HTTP 429)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One message for clients: JSON text, and its SSE bytes (with `id:` if stored), both
    made once however many clients get it."""

    kind: str  # "event" (stored), "stats", "control", "keepalive", "command"
    text: str = ""
    seq: int | None = None
    event: Event | None = None
    sse: bytes = b""

    @property
    def size(self) -> int:
        """What the frame weighs in a client's buffer."""
        return len(self.sse) or len(self.text)

    @classmethod
    def make(cls, kind: str, text: str, seq: int | None = None,
             event: Event | None = None) -> Frame:
        head = f"id: {seq}\n" if seq is not None else ""
        return cls(kind, text, seq, event, f"{head}data: {text}\n\n".encode())

    @classmethod
    def of_event(cls, event: Event) -> Frame:
        return cls.make("event", json.dumps(event.to_json(), separators=(",", ":")), event.seq,
                        event)

    @classmethod
    def control(cls, data: dict[str, Any], seq: int | None = None) -> Frame:
        return cls.make("control", json.dumps(data, separators=(",", ":")), seq)


_KEEPALIVE = Frame("keepalive", sse=b": keep-alive\n\n")


def visible_to(principal: Principal) -> Callable[[Event], bool]:
    """What a user may see: their own jobs' events and their schedules' (an admin:
    everyone's)."""
    if principal.user.admin:
        return lambda event: event.job_id is not None or event.type in SCHEDULE_EVENTS or \
            event.type in CONTROL_EVENTS
    name = principal.user.name
    return lambda event: event.owner == name


class Stream:
    """One client's feed: a filter, a bounded buffer of frames, and why it ended."""

    def __init__(self, hub: Hub, principal: Principal, match: Callable[[Event], bool],
                 stats: bool = False, job_id: str | None = None,
                 positions: bool = False) -> None:
        self.hub = hub
        self.principal = principal
        self.match = match
        self.stats = stats  # wants queue.stats frames
        self.job_id = job_id  # a one-job stream: stats frames carry the job's position
        self.job_queued = False
        # With `positions`: the queued jobs it sees (ids, oldest first), whose places its
        # queue.stats frames carry, since any job's start, cancel or end moves them; and
        # the ids that left the queue before `seed_positions` read the queued ones.
        self.queued: dict[str, None] | None = {} if positions else None
        self._left: set[str] | None = set() if positions else None
        self.opened_head = hub.head  # the replay stops here; live frames come after it
        self.closed: str | None = None  # the reason, once the hub let go of this stream
        self._frames: deque[Frame] = deque()
        self._bytes = 0
        self._limit = hub.settings.streams.buffer_kb * 1024
        self._wake = asyncio.Event()
        self._sent: set[int] = set()
        self._sent_order: deque[int] = deque()
        self.idle = True  # nothing sent since the last keep-alive tick
        self._expiry: asyncio.TimerHandle | None = None
        self.released = False  # closed by its route: it no longer counts for its user
        self._abort: Callable[[], None] | None = None
        self._abort_grace_s = 0.0
        self._abort_timer: asyncio.TimerHandle | None = None

    # --- fed by the hub ------------------------------------------------------------------
    def abort_on_end(self, abort: Callable[[], None], grace_s: float) -> None:
        """Once the stream ends, give its route `grace_s` to finish the response (a
        reading client gets why), then `abort` the connection: a client that reads
        nothing would hold it, and what it has not read, for ever."""
        self._abort, self._abort_grace_s = abort, grace_s

    def push(self, frame: Frame) -> None:
        if self.closed is not None:
            return
        self._frames.append(frame)
        self._bytes += frame.size
        self._wake.set()
        # One frame may be larger than the budget (a burst of log lines); two may not.
        if self._bytes > self._limit and len(self._frames) > 1:
            self.hub.drop(self, f"too slow: more than {self._limit // 1024} KB of events "
                                "waiting; reconnect and resume")

    def end(self, reason: str) -> None:
        """Stop the feed: frames not yet sent are dropped, the reader gets None next."""
        if self.closed is None:
            self.closed = reason
            self._frames.clear()
            self._bytes = 0
            self._wake.set()
            if self._expiry is not None:
                self._expiry.cancel()
            if self._abort is not None and not self.released:
                self._abort_timer = asyncio.get_running_loop().call_later(
                    self._abort_grace_s, self._abort)

    # --- read by the route ---------------------------------------------------------------
    async def next(self) -> Frame | None:
        """The next frame, or None once the stream has ended."""
        while True:
            if self.closed is not None:
                return None
            if self._frames:
                frame = self._frames.popleft()
                self._bytes -= frame.size
                return frame
            self._wake.clear()
            await self._wake.wait()

    def take(self) -> Frame | None:
        """The next frame if one is waiting (None if none is, or the stream ended)."""
        if self.closed is not None or not self._frames:
            return None
        frame = self._frames.popleft()
        self._bytes -= frame.size
        return frame

    def follow_queued(self, event: Event) -> None:
        """Keep `queued` current from one of the stream's own state events."""
        if self.queued is None or event.job_id is None:
            return
        if event.type in QUEUED_EVENTS:
            self.queued.pop(event.job_id, None)  # re-queued: among the newest again
            self.queued[event.job_id] = None
            if len(self.queued) > MAX_TRACKED_POSITIONS:
                del self.queued[next(iter(self.queued))]
        else:
            self.queued.pop(event.job_id, None)
            if self._left is not None:
                self._left.add(event.job_id)

    def seeded(self, queued_ids: list[str]) -> None:
        """The queued jobs read from the store (newest first) after the stream opened:
        those that left the queue since are not, those queued since stay the newest."""
        if self.queued is None:
            return
        left = self._left or set()
        before = {i: None for i in reversed(queued_ids[:MAX_TRACKED_POSITIONS])
                  if i not in left and i not in self.queued}
        self.queued = {**before, **self.queued}
        self._left = None  # from now on the events alone keep it

    def pending_for(self, job_id: str) -> bool:
        return any(f.event is not None and f.event.job_id == job_id for f in self._frames)

    def mark_sent(self, seq: int) -> None:
        """Remember a stored event as sent (the last `_SENT_MEMORY` of them)."""
        self._sent.add(seq)
        self._sent_order.append(seq)
        if len(self._sent_order) > _SENT_MEMORY:
            self._sent.discard(self._sent_order.popleft())

    def was_sent(self, seq: int) -> bool:
        return seq in self._sent

    def close(self) -> None:
        self.hub.close(self)


class Hub:
    """All open streams of one server, fed from the queue's event bus."""

    def __init__(self, queue: JobQueue, settings: Settings) -> None:
        self.queue = queue
        self.settings = settings
        self.head = 0  # the highest seq this server knows was stored
        self.streams: set[Stream] = set()
        self.per_user: Counter[str] = Counter()
        self.stats_frame: Frame | None = None
        # `by_owner` of the last queue.stats, as JSON text: admins' frames carry it (read
        # only while an admin's stream takes stats frames).
        self.by_owner_text: str | None = None
        self.depth = DepthRing()  # the queue's depth over the last hour (depth.py)
        self._stats_due = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Whether a stream's login still holds (its user not deleted, its token not
        # revoked): looked up again every keep-alive period, once per login.
        self.login_check: Callable[[Principal], Awaitable[bool]] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = self.queue.bus.on(self._on_event)
        self.head = max(self.head, await self._stored_head())
        self.stats_frame = await self._stats()
        self._tasks = [asyncio.create_task(self._stats_loop(), name="jobgate-stats"),
                       asyncio.create_task(self._keepalive_loop(), name="jobgate-keepalive"),
                       asyncio.create_task(self._depth_loop(), name="jobgate-depth"),
                       asyncio.create_task(self._login_loop(), name="jobgate-logins")]

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        await cancel_and_wait(self._tasks)
        self._end_all("server shutting down")

    def shutdown_soon(self) -> None:
        """End every stream (from any thread or a signal handler): the server is stopping."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._end_all, "server shutting down")

    def _end_all(self, reason: str) -> None:
        for stream in list(self.streams):
            self.drop(stream, reason)

    async def _stored_head(self) -> int:
        """The last stored seq, found once at start by galloping probes of one event each
        (after that, events keep it current)."""
        head, step = 0, 1
        while True:
            found = await self.queue.store.events_after(head + step - 1, 1)
            if found:
                head, step = found[0].seq, step * 2
            elif step > 1:
                step //= 2
            else:
                return head

    # --- streams ---------------------------------------------------------------------------
    def open(self, principal: Principal, match: Callable[[Event], bool], *, stats: bool = False,
             job_id: str | None = None, positions: bool = False) -> Stream:
        """A new stream, fed from now on; TooManyStreams past the user's cap."""
        name = principal.user.name
        cap = self.settings.streams.max_per_user
        if self.per_user[name] >= cap:
            raise TooManyStreams(f"{name} already has {cap} streams open "
                                 "([streams] max_per_user)")
        stream = Stream(self, principal, match, stats, job_id, positions)
        self.streams.add(stream)
        self.per_user[name] += 1
        if principal.expires_at is not None:
            # A stream lives no longer than the login that opened it.
            delay = max(0.0, principal.expires_at - time.time())
            stream._expiry = asyncio.get_running_loop().call_later(
                delay, self.drop, stream, "token expired")
        return stream

    def close(self, stream: Stream) -> None:
        """The route is done with `stream` (its response ended): it stops counting."""
        self.streams.discard(stream)
        if not stream.released:
            stream.released = True
            if stream._abort_timer is not None:
                stream._abort_timer.cancel()
            name = stream.principal.user.name
            self.per_user[name] -= 1
            if self.per_user[name] <= 0:
                del self.per_user[name]
        stream.end(stream.closed or "closed")

    def drop(self, stream: Stream, reason: str) -> None:
        """End a stream for `reason` (slow, expired, shutdown); its reader sees why. It
        gets no more frames, but counts for its user until its route closes it."""
        if stream.closed is None:
            log.warning("dropping a stream of %s: %s", stream.principal.user.name, reason)
        stream.end(reason)
        self.streams.discard(stream)

    def _on_event(self, event: Event) -> None:
        # Called inside the store's delivery of a committed batch: a failure here must not
        # stop the delivery to the worker and to waiting callers.
        try:
            self._fan_out(event)
        except Exception:
            log.exception("fanning out event %s failed", event.seq)

    def _fan_out(self, event: Event) -> None:
        self.head = max(self.head, event.seq)
        frame: Frame | None = None
        for stream in list(self.streams):
            if stream.match(event):
                frame = frame or Frame.of_event(event)
                stream.push(frame)
                if event.type in STATE_EVENTS:
                    if stream.job_id is not None:
                        stream.job_queued = event.type in QUEUED_EVENTS
                    stream.follow_queued(event)
        if event.type in STATE_EVENTS or event.type in CONTROL_EVENTS:
            self._stats_due.set()

    # --- replay ----------------------------------------------------------------------------
    async def too_old(self, after: int) -> bool:
        """True when events after `after` were pruned (or `after` is from elsewhere)."""
        if after > self.head:
            return True  # newer than anything stored here: another database, or a reset one
        first = await self.queue.store.events_after(0, 1)
        if not first:
            return after < self.head  # everything after `after` was pruned
        return after < first[0].seq - 1

    async def seq_before(self, ts: float) -> int:
        """A seq whose events all happened before `ts` (give or take a clock's wobble), by
        binary search over the kept events: a job's replay need not read the whole window."""
        store = self.queue.store
        lo, hi = 0, self.head
        while lo < hi:
            probe = (lo + hi + 1) // 2
            first = await store.events_after(probe - 1, 1)
            if not first or first[0].ts >= ts:
                hi = probe - 1
            else:
                lo = first[0].seq
        return lo

    async def history(self, after: int, upto: int, match: Callable[[Event], bool]
                      ) -> AsyncIterator[Event]:
        """Stored events with after < seq <= upto that `match` takes, in seq order."""
        cursor = after
        while cursor < upto:
            page = await self.queue.store.events_after(cursor, _PAGE)
            if not page:
                return
            for event in page:
                if event.seq > upto:
                    return
                if match(event):
                    yield event
            cursor = page[-1].seq

    # --- queue.stats and keep-alive --------------------------------------------------------
    async def _stats(self) -> Frame:
        stats = await self.queue.stats()
        self.note_depth(stats)
        data = {"type": EventType.QUEUE_STATS, "seq": self.head, "ts": iso(time.time()),
                **stats_json(self.queue, self.settings, stats)}
        # Live nodes by name only: this frame goes to every client, at every queue change;
        # GET /api/queue has each node's details and running jobs.
        nodes = await self.queue.store.nodes(node_live_s(self.settings))
        data["nodes"] = [n.name for n in nodes]
        if any(s.stats and s.principal.user.admin for s in self.streams):
            owners = by_owner_json(await self.queue.store.owner_counts())
            self.by_owner_text = json.dumps(owners, separators=(",", ":"))
        else:
            self.by_owner_text = None
        return Frame.make("stats", json.dumps(data, separators=(",", ":")))

    def position_frame(self, stats: Frame, job_id: str) -> Frame:
        """`stats` for a one-job stream: with that job's place in the queue."""
        data = json.loads(stats.text)
        data["job_id"] = job_id
        data["position"] = self.queue.positions.position(job_id)
        return Frame.make("stats", json.dumps(data, separators=(",", ":")))

    async def seed_positions(self, stream: Stream) -> None:
        """Read which of the stream's jobs are queued now (its events keep it after)."""
        if stream.queued is None:
            return
        user = stream.principal.user
        page = await self.queue.store.list_jobs(None if user.admin else user.name,
                                                State.QUEUED, limit=MAX_TRACKED_POSITIONS)
        stream.seeded([job.id for job in page.jobs])

    def stats_for(self, stats: Frame, stream: Stream) -> Frame:
        """`stats` for one stream: with the places of its queued jobs, if it follows them
        (`positions`: job id → 1-based place, null while not due or waiting), and for an
        admin's, `by_owner` (as `GET /api/queue` has it)."""
        extra = ""
        if stream.principal.user.admin and self.by_owner_text is not None:
            extra += ',"by_owner":' + self.by_owner_text
        if stream.queued:
            where = self.queue.positions.position
            places = {job_id: where(job_id) for job_id in stream.queued}
            extra += ',"positions":' + json.dumps(places, separators=(",", ":"))
        if not extra:
            return stats
        return Frame.make("stats", stats.text[:-1] + extra + "}")

    async def _stats_loop(self) -> None:
        while True:
            await self._stats_due.wait()
            self._stats_due.clear()
            try:
                frame = await self._stats()
            except Exception:  # a database hiccup must not end the pushes for good
                log.exception("queue.stats failed")
                await asyncio.sleep(STATS_INTERVAL_S)
                continue
            self.stats_frame = frame
            for stream in list(self.streams):
                if stream.stats:
                    try:
                        own = self.stats_for(frame, stream)
                    except Exception:  # one stream's places must not stop everyone's stats
                        log.exception("the places of a stream's queued jobs failed")
                        own = frame
                    stream.push(own)
                elif stream.job_id is not None and stream.job_queued:
                    stream.push(self.position_frame(frame, stream.job_id))
            await asyncio.sleep(STATS_INTERVAL_S)

    async def _login_loop(self) -> None:
        """End the streams whose login was revoked (a deleted user, a revoked token)."""
        while True:
            await asyncio.sleep(self.settings.streams.keepalive)
            check = self.login_check
            if check is None:
                continue
            by_login: dict[Principal, list[Stream]] = {}
            for stream in self.streams:
                if stream.principal.checked:
                    by_login.setdefault(stream.principal, []).append(stream)
            for principal, streams in by_login.items():
                try:
                    holds = await check(principal)
                except Exception:  # a database hiccup: look again next time
                    log.exception("checking the login of %s failed", principal.user.name)
                    continue
                if not holds:
                    for stream in streams:
                        self.drop(stream, "login revoked: the user or token is gone")

    def note_depth(self, stats: Stats) -> None:
        """Count the queued and running jobs of `stats` (just read), and how long the job
        due the longest has waited, in the depth ring."""
        now = time.time()
        wait_s = 0.0 if stats.oldest_due_at is None else max(0.0, now - stats.oldest_due_at)
        self.depth.note(now, stats.counts.get(State.QUEUED.value, 0),
                        stats.counts.get(State.RUNNING.value, 0), wait_s)

    async def _depth_loop(self) -> None:
        """A reading of the counts each slot of the depth ring, changes or not."""
        while True:
            await asyncio.sleep(self.depth.every_s)
            try:
                self.note_depth(await self.queue.stats())
            except Exception:  # a database hiccup: a gap in the chart, not the end of it
                log.exception("reading the queue's depth failed")

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.streams.keepalive)
            for stream in list(self.streams):
                if stream.idle:
                    stream.push(_KEEPALIVE)
                stream.idle = True


def stats_json(queue: JobQueue, settings: Settings, stats: Any,
               nodes: list[Node] | None = None) -> dict[str, Any]:
    """The queue's statistics in the shape of `GET /api/queue` (with `nodes`: the live
    worker nodes and the jobs each runs).

    The memory keys after `success_rate` are this server's machine and its embedded
    worker, if any: the node's budget, the memory the machine has available now, why the
    worker starts nothing (null, "memory pressure" or "load"), and what its running jobs'
    process trees hold now (`running_rss_mb`) and held at most (`running_peak_mb`, the sum
    of each job's peak so far). None of it costs a database read.
    """
    measured = queue.job_memory.values()
    out = {
        **{s.value: stats.counts.get(s.value, 0) for s in State},
        "waiting": stats.waiting,  # of the queued: waiting for their dependencies
        "max_running": settings.limits.max_running,
        "memory_reserved_mb": stats.memory_reserved_mb,
        "memory_budget_mb": settings.limits.memory_budget_mb,
        "throughput_per_min": stats.finished_last_min,
        "avg_duration_s": stats.avg_duration_s,
        "success_rate": stats.success_rate,
        "node_memory_budget_mb": queue.node_memory_budget_mb,
        "memory_available_mb": psutil.virtual_memory().available // 1048576,
        "pressure": queue.pressure,
        "running_rss_mb": round(sum(rss for rss, _ in measured), 1),
        "running_peak_mb": round(sum(peak for _, peak in measured), 1),
    }
    out.update(queue.live.stats())  # the limits in force, what is paused or drained
    if nodes is not None:
        out["nodes"] = [node_json(n) for n in nodes]
    return out


def node_json(node: Node) -> dict[str, Any]:
    """A live node as `GET /api/queue` lists it: `running` are the ids of the jobs it runs
    that the caller may see, `running_count` counts all of them; its memory as its last
    heartbeat wrote it, `running_rss_mb` (its running jobs' process trees) and
    `memory_available_mb` (its machine's; MB, null when not known, e.g. an older node)."""
    return {
        "name": node.name, "host": node.host, "pid": node.pid, "slots": node.slots,
        "version": node.version, "running": list(node.running), "running_count": node.busy,
        "started_at": iso(node.started_at), "heartbeat_at": iso(node.heartbeat_at),
        "heartbeat_age_s": round(max(0.0, time.time() - node.heartbeat_at), 1),
        "running_rss_mb": node.running_rss_mb, "memory_available_mb": node.memory_available_mb,
    }


@contextlib.contextmanager
def opened(stream: Stream) -> Any:
    """Close `stream` when the block ends, however it ends."""
    try:
        yield stream
    finally:
        stream.close()
