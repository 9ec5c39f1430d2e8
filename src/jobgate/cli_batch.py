"""`jobgate submit --batch FILE [--pipeline] [--watch]`: the jobs a JSON or TOML file lists,
submitted in one `POST /api/batches` (all or none), then followed to the end if asked."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from jobgate.batches import parse_batch_file
from jobgate.client import Client, CliError
from jobgate.terminal import printable

_POLL_S = 1.0  # how often --watch asks how the batch goes


def submit_batch(args: argparse.Namespace) -> int:
    """Submit the batch file `args.batch`; print the batch's id and state, then each job's
    id and state (one a line); with `--watch`, its progress until every job ended (exit 0
    if all completed, 1 otherwise, 130 on Ctrl-C)."""
    if args.kind is not None or args.args:
        raise CliError("submit --batch FILE takes no KIND or key=value: the file lists the "
                       "jobs", 2)
    path = Path(args.batch).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {str(path)!r}: {getattr(exc, 'strerror', None) or exc}",
                       2) from None
    try:
        jobs, pipeline = parse_batch_file(text, path.suffix.lower() == ".toml")
    except ValueError as exc:
        raise CliError(f"{path.name}: {exc}", 2) from None
    client = Client()
    batch: dict[str, Any] = client.call("POST", "/api/batches", json={
        "jobs": jobs, "pipeline": pipeline or args.pipeline})
    print(printable(f"{batch['id']} {batch['state']} {batch['summary']}"))
    for job in batch["jobs"]:
        print(printable(f"{job['id']} {job['kind']} {job['state']}"))
    if not args.watch:
        return 0
    return _watch(client, str(batch["id"]), str(batch["summary"]))


def _watch(client: Client, batch_id: str, shown: str) -> int:
    try:
        while True:
            batch = client.call("GET", f"/api/batches/{batch_id}")
            if batch["summary"] != shown or batch["state"] != "running":
                shown = batch["summary"]
                print(printable(f"{batch_id} {batch['state']} {shown}"), flush=True)
            if batch["state"] != "running":
                return 0 if batch["state"] == "completed" else 1
            time.sleep(_POLL_S)
    except KeyboardInterrupt:
        return 130
