"""`GET /metrics`: the queue's numbers in Prometheus' text format, as the database has them.

Every number but one is read from the store at scrape time, so any node's server answers
for the whole cluster: jobs by state and kind, the finished ones by outcome, memory
reserved, live nodes, deliveries, and histograms of queue wait and run time. The counters
count the rows still in the database: cleaning finished jobs (`[retention]`) lowers them,
which Prometheus' `rate()` takes for a counter reset. The one number of this process alone
is `jobgate_stream_clients`, labelled with its `node`.

`MetricsCollector` is a `prometheus_client` Collector on a registry of the app's own (no
global registry): a scrape reads a `Snapshot` (async, the store), then renders it at once
(`render`, sync), so concurrent scrapes each render their own read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from jobgate.config import Settings
from jobgate.deliveries import CHANNELS, DELIVERED, FAILED, PENDING
from jobgate.model import FINAL, State
from jobgate.queue import JobQueue
from jobgate.scheduler import Limits
from jobgate.store.base import Durations, MetricCounts, Stats

#: The histograms' bucket bounds (seconds): from a quick job to a long transcode.
BOUNDS: tuple[float, ...] = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                             1800.0, 3600.0, 7200.0, 21600.0)
DELIVERY_STATES = (PENDING, DELIVERED, FAILED)


@dataclass(frozen=True)
class Snapshot:
    """What one scrape read: the store's numbers and this server's own."""

    counts: MetricCounts
    stats: Stats
    live_nodes: int
    node: str  # this server's node name
    stream_clients: int  # open on this server
    limits: Limits  # in force: the config's, with the live controls over them


async def read_snapshot(queue: JobQueue, node: str, stream_clients: int) -> Snapshot:
    """The store's numbers now (three reads: the metric counts, `stats`, live nodes)."""
    counts = await queue.store.metric_counts(BOUNDS)
    stats = await queue.stats()
    nodes = await queue.nodes(live=True)
    return Snapshot(counts, stats, len(nodes), node, stream_clients, queue.live.limits)


class MetricsCollector(Collector):
    """The metric families of the last snapshot handed to `render`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterable[Metric]:
        if self.snapshot is None:
            return []
        return list(self._families(self.snapshot))

    def _families(self, snap: Snapshot) -> Iterator[Metric]:
        jobs = snap.counts.jobs
        kinds = sorted(set(self.settings.kinds) | {kind for _, kind in jobs})
        gauge = GaugeMetricFamily("jobgate_jobs", "Jobs in the database by state and kind.",
                                  labels=["state", "kind"])
        for state in State:
            for kind in kinds:
                gauge.add_metric([state.value, kind], jobs.get((state.value, kind), 0))
        yield gauge
        yield GaugeMetricFamily("jobgate_jobs_waiting",
                                "Queued jobs waiting for their dependencies.",
                                value=snap.stats.waiting)
        finished = CounterMetricFamily(
            "jobgate_jobs_finished", "Finished jobs still in the database, by kind and final "
            "state.", labels=["kind", "state"])
        for kind in kinds:
            for state in sorted(FINAL):
                finished.add_metric([kind, state.value], jobs.get((state.value, kind), 0))
        yield finished
        submitted = CounterMetricFamily(
            "jobgate_jobs_submitted", "Jobs submitted that are still in the database (any "
            "state), by kind.", labels=["kind"])
        for kind in kinds:
            submitted.add_metric([kind], sum(n for (_, k), n in jobs.items() if k == kind))
        yield submitted
        running = sum(n for (state, _), n in jobs.items() if state == State.RUNNING.value)
        yield GaugeMetricFamily("jobgate_running", "Jobs running on all nodes.", value=running)
        yield GaugeMetricFamily("jobgate_max_running", "The most jobs that may run at once "
                                "([limits] max_running, or its live value).",
                                value=snap.limits.max_running)
        yield GaugeMetricFamily("jobgate_memory_reserved_mb", "Memory (MB) the running jobs "
                                "reserve.", value=snap.stats.memory_reserved_mb)
        budget = snap.limits.memory_budget_mb
        if budget is not None:
            yield GaugeMetricFamily("jobgate_memory_budget_mb", "Memory (MB) all running jobs "
                                    "may reserve ([limits] memory_budget_mb, or its live "
                                    "value).", value=budget)
        yield GaugeMetricFamily("jobgate_nodes_live", "Worker nodes with a recent heartbeat.",
                                value=snap.live_nodes)
        clients = GaugeMetricFamily("jobgate_stream_clients", "Event streams (SSE and "
                                    "WebSocket) open on this server process.", labels=["node"])
        clients.add_metric([snap.node], snap.stream_clients)
        yield clients
        deliveries = GaugeMetricFamily("jobgate_deliveries", "Webhook and notification "
                                       "deliveries in the database, by channel and state.",
                                       labels=["channel", "state"])
        for channel in sorted(set(CHANNELS) | {c for c, _ in snap.counts.deliveries}):
            for done in sorted(set(DELIVERY_STATES) | {s for _, s in snap.counts.deliveries}):
                deliveries.add_metric([channel, done],
                                      snap.counts.deliveries.get((channel, done), 0))
        yield deliveries
        yield _histogram("jobgate_job_queue_wait_seconds", "Seconds finished jobs waited from "
                         "submission to their (last) start, by kind.", snap.counts.waits, kinds)
        yield _histogram("jobgate_job_run_seconds", "Seconds finished jobs ran (their last "
                         "attempt), by kind.", snap.counts.runs, kinds)


def _histogram(name: str, doc: str, by_kind: dict[str, Durations], kinds: list[str]
               ) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["kind"])
    empty = Durations(0, 0.0, tuple(0 for _ in BOUNDS))
    for kind in kinds:
        spans = by_kind.get(kind, empty)
        buckets = [(_bound(b), float(n)) for b, n in zip(BOUNDS, spans.buckets, strict=True)]
        family.add_metric([kind], [*buckets, ("+Inf", float(spans.count))], spans.total_s)
    return family


def _bound(seconds: float) -> str:
    return f"{seconds:g}" if seconds != int(seconds) else f"{seconds:.1f}"


def new_registry(settings: Settings) -> tuple[CollectorRegistry, MetricsCollector]:
    """A registry of its own (not the process-wide default) holding one MetricsCollector."""
    registry = CollectorRegistry(auto_describe=False)
    collector = MetricsCollector(settings)
    registry.register(collector)
    return registry, collector


def render(registry: CollectorRegistry, collector: MetricsCollector, snapshot: Snapshot
           ) -> bytes:
    """The text exposition of `snapshot`. Synchronous, with no await between handing the
    snapshot over and rendering it: a concurrent scrape cannot swap it in between."""
    collector.snapshot = snapshot
    try:
        return generate_latest(registry)
    finally:
        collector.snapshot = None
