"""`jobgate stats [--json]`: `GET /api/queue` for people (numbers rounded, durations in
units that read well) or, with `--json`, exactly as the API says it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from jobgate.client import Client
from jobgate.terminal import printable

#: The contract's numbers, printed one a line as `key value` (in this order, then any
#: other scalar key the server adds that the sections below do not show).
_SECTIONS = frozenset({"nodes", "throughput", "ended", "by_kind", "by_kind_window", "totals",
                       "started_at", "uptime_s", "limits", "by_owner", "depth"})


def add_parser(sub: Any) -> None:
    """Add `stats` to the subcommands `sub` of the `jobgate` parser."""
    sp = sub.add_parser("stats", help="queue statistics")
    sp.add_argument("--json", action="store_true", help="exactly as GET /api/queue says")
    sp.set_defaults(func=cmd_stats)


def cmd_stats(args: argparse.Namespace) -> int:
    client = Client()
    stats: dict[str, Any] = client.call("GET", "/api/queue")
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    for key, value in stats.items():
        if key not in _SECTIONS:
            print(printable(f"{key:20} {_scalar(key, value)}"))
    _print_activity(stats)
    _print_kinds(stats.get("by_kind"), stats.get("by_kind_window"))
    _print_nodes(stats.get("nodes"))
    _print_kind_memory(client)
    return 0


def _scalar(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "success_rate" and isinstance(value, int | float):
        return f"{value * 100:.1f}%"
    if key.endswith("_s") and isinstance(value, int | float):
        return duration(value)
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def duration(seconds: float | None) -> str:
    """A duration for people: "0.25 s", "12.3 s", "4 min 05 s", "2 h 07 min", "3 d 04 h"."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600:02d} h"


def _rate(per_min: float) -> str:
    return f"{per_min:.1f}/min" if per_min >= 1 or per_min == 0 else f"{per_min:.2f}/min"


def _print_activity(stats: dict[str, Any]) -> None:
    """Throughput, totals, uptime and limits: a few labelled lines."""
    lines = []
    if throughput := stats.get("throughput"):
        lines.append("throughput          " + "   ".join(
            f"{window} {_rate(t['per_min'])}" for window, t in throughput.items()))
    for window, counts in (stats.get("ended") or {}).items():
        lines.append(f"{'ended, last ' + window:20}" + "  ".join(
            f"{k} {v}" for k, v in counts.items()))
    if totals := stats.get("totals"):
        for label, counts in (("since start", totals.get("since_start")),
                              ("in database", totals.get("in_database"))):
            if counts:
                lines.append(f"{label:20}" + "  ".join(f"{k} {v}" for k, v in counts.items()))
    if "uptime_s" in stats:
        lines.append(f"{'uptime':20}{duration(stats['uptime_s'])} (since "
                     f"{stats.get('started_at') or '-'})")
    if limits := stats.get("limits"):
        lines.append(f"{'limits':20}" + "  ".join(
            f"{k} {_limit(v)}" for k, v in limits.items()))
    if lines:
        print()
        for line in lines:
            print(printable(line))


def _limit(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _print_kinds(kinds: dict[str, Any] | None, window: dict[str, Any] | None) -> None:
    """Per kind: jobs in the window, run time and queue wait (p50, p95), retries."""
    if not kinds:
        return
    print()
    if window:
        print(f"finished in the last {duration(window['window_s'])} (the last "
              f"{window['max_jobs']} at most): {window['jobs']} jobs")
    print(f"{'KIND':20} {'JOBS':>5} {'RUN_P50':>12} {'RUN_P95':>12} {'WAIT_P50':>12} "
          f"{'WAIT_P95':>12} {'RETRIES':>7}")
    for name, k in kinds.items():
        print(printable(
            f"{name[:20]:20} {k['jobs']:>5} {duration(k['run_s']['p50']):>12} "
            f"{duration(k['run_s']['p95']):>12} {duration(k['wait_s']['p50']):>12} "
            f"{duration(k['wait_s']['p95']):>12} {k['retries']:>7}"))


def _print_nodes(nodes: list[dict[str, Any]] | None) -> None:
    """The live worker nodes as a table: name, host, slots, jobs running, the memory its
    jobs hold and its machine has available (MB, "-" when a node does not say), heartbeat
    age."""
    if nodes is None:
        return
    print(f"\nlive nodes: {len(nodes)}")
    if not nodes:
        return
    width = max(12, *(len(n["name"]) for n in nodes))

    def mb(value: Any) -> str:
        return "-" if not isinstance(value, int | float) else f"{value:.0f}"

    print(f"{'NODE':{width}}  {'HOST':16} {'SLOTS':>5} {'RUNNING':>7} {'JOBS_MB':>8} "
          f"{'FREE_MB':>8}  HEARTBEAT")
    for n in nodes:
        print(printable(f"{n['name']:{width}}  {n['host'][:16]:16} {n['slots']:>5} "
                        f"{n.get('running_count', len(n['running'])):>7} "
                        f"{mb(n.get('running_rss_mb')):>8} {mb(n.get('memory_available_mb')):>8}  "
                        f"{n['heartbeat_age_s']:.1f} s ago"))


def _print_kind_memory(client: Client) -> None:
    """Per kind: the memory a job reserves now and the peaks its recent jobs measured."""
    kinds = client.call("GET", "/api/kinds")["kinds"]
    if not kinds:
        return

    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    print()
    print(f"{'KIND':20} {'ESTIMATE_MB':>11} {'FROM':9} {'PEAK_P50_MB':>11} {'PEAK_MAX_MB':>11} "
          f"{'JOBS':>5}")
    for k in kinds:
        print(printable(
            f"{k['name'][:20]:20} {mb(k.get('memory_estimate_mb')):>11} "
            f"{k.get('memory_estimate_from') or '-':9} {mb(k.get('peak_memory_p50_mb')):>11} "
            f"{mb(k.get('peak_memory_max_mb')):>11} {k.get('peak_memory_jobs') or 0:>5}"))
