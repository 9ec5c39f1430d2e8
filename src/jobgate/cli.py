"""The `jobgate` command: parses arguments into Settings or API calls, nothing more.

Client commands talk to the API at `JOBGATE_URL` with `JOBGATE_TOKEN`. Every error is one
line on stderr and a non-zero exit: 1 for a refused request or a failed job, 2 for bad
usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from jobgate import cli_bulk, cli_stats, logs
from jobgate.cli_batch import submit_batch
from jobgate.cli_controls import add_commands as add_control_commands
from jobgate.cli_users import add_commands as add_user_commands
from jobgate.client import Client, CliError
from jobgate.config import ConfigError, Settings, database_url, load_settings, parse_duration
from jobgate.follow import EventReader, watch
from jobgate.model import EventType, State
from jobgate.terminal import log_line_shown, printable


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except CliError as exc:
        print(f"jobgate: {printable(exc)}", file=sys.stderr)
        sys.exit(exc.code)
    except (ConfigError, ValueError) as exc:
        print(f"jobgate: {printable(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        code = 130
    _exit(code or 0)


def _exit(code: int) -> NoReturn:
    # An event-stream reader still blocked in a socket read would be torn down by the
    # interpreter's finalization, which can crash it (SIGSEGV) inside C code; nothing is
    # left to clean up in a client, so leave without finalizing.
    if any(t.name == EventReader.THREAD_NAME and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


# --- server-side commands ----------------------------------------------------------------

def _settings(args: argparse.Namespace, **sections: dict[str, Any]) -> Settings:
    config = args.config or os.environ.get("JOBGATE_CONFIG")
    if config is None and os.path.exists("jobgate.toml"):
        config = "jobgate.toml"
    overrides = dict(sections)
    if getattr(args, "db", None):
        overrides.setdefault("storage", {})["url"] = _db_url(args.db)
    return load_settings(config, overrides=overrides)


def _db_url(value: str) -> str:
    return database_url(value)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from jobgate.api import create_app

    settings = _settings(args, server={"host": args.host, "port": args.port})
    logs.start(settings, args.log_level)
    host, port = settings.server.host, settings.server.port
    # Bind before anything else: a second server on a busy port must not touch the database.
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets it knows are TCP,
        # and without it every response waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    _check_schema(settings)
    _warn_missing_tools(settings)
    app = create_app(settings, run_worker=not args.no_worker)
    logs.started(settings, "serve" if args.no_worker else "serve+worker")
    logs.say(settings, f"jobgate: serving on http://{host}:{port} "
             f"({_safe_url(settings.storage.url)}, {len(settings.kinds)} kinds)")
    from jobgate.connection import protocol_class

    keepalive = settings.streams.keepalive
    config = uvicorn.Config(app, log_level=None, log_config=None,  # logs.start's
                            access_log=settings.logging.access,
                            http=protocol_class(settings.server.request_timeout),
                            ws_ping_interval=keepalive, ws_ping_timeout=max(20.0, 2 * keepalive),
                            ws_max_size=64 * 1024, timeout_graceful_shutdown=10,
                            proxy_headers=bool(settings.server.trusted_proxies),
                            forwarded_allow_ips=settings.server.trusted_proxies or None)
    _StreamingServer(config, app).run(sockets=[sock])
    return 0


def _streaming_server_class() -> type[Any]:
    import uvicorn

    class StreamingServer(uvicorn.Server):
        """Ends every event stream as shutdown begins: uvicorn waits for open responses,
        and an event stream never ends by itself."""

        def __init__(self, config: uvicorn.Config, app: Any) -> None:
            super().__init__(config)
            self.jobgate_app = app

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            services = getattr(self.jobgate_app.state, "services", None)  # after start-up
            if services is not None:
                services.hub.shutdown_soon()

    return StreamingServer


def _StreamingServer(config: Any, app: Any) -> Any:
    return _streaming_server_class()(config, app)


def cmd_worker(args: argparse.Namespace) -> int:
    import signal

    from jobgate.queue import JobQueue
    from jobgate.store import store_for_url
    from jobgate.worker import Worker

    settings = _settings(args, worker={"slots": args.slots, "name": args.name})
    logs.start(settings)
    _check_schema(settings)
    _warn_missing_tools(settings)
    logs.started(settings, "worker")

    async def run() -> None:
        queue = JobQueue(settings, store_for_url(settings.storage.url,
                                                 settings.storage.durability), positions=False)
        await queue.open()
        worker = Worker(queue)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        logs.say(settings, f"jobgate: worker {worker.name} with {worker.slots} slots")
        try:
            await worker.run()
        finally:
            await queue.close()

    asyncio.run(run())
    return 0


def _warn_missing_tools(settings: Settings) -> None:
    """A kind whose program is missing still loads (its jobs fail saying so): the start
    names each one, so whoever runs the server learns it before a user does."""
    from jobgate.recipes import missing_tools_warnings

    for line in missing_tools_warnings(settings):
        logs.say(settings, f"jobgate: warning: {printable(line)}", warning=True)


def _safe_url(url: str) -> str:
    """A database URL fit to print: without its password."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


def _schema_versions(settings: Settings, migrate: bool = False) -> tuple[int, int, int]:
    """(the database's schema version before, after migrating if asked, this jobgate's)."""
    from jobgate.store import store_for_url
    from jobgate.store.base import SchemaTooNew

    store = store_for_url(settings.storage.url, settings.storage.durability)

    async def run() -> tuple[int, int, int]:
        before, latest = await store.schema_version(), store.latest_schema_version()
        if before > latest:
            raise SchemaTooNew(f"the database has schema version {before}, newer than this "
                               f"jobgate ({latest}): upgrade jobgate")
        if migrate and before < latest:
            await store.open()  # opening migrates
            await store.close()
            return before, await store.schema_version(), latest
        return before, before, latest

    try:
        return asyncio.run(run())
    except SchemaTooNew as exc:
        raise CliError(f"{_safe_url(settings.storage.url)}: {exc}") from None
    except Exception as exc:  # unreachable, refused, not a database: one line, as always
        message = str(exc).strip().splitlines()
        raise CliError(f"cannot open the database {_safe_url(settings.storage.url)}: "
                       f"{message[0] if message else type(exc).__name__}") from None


def _check_schema(settings: Settings) -> None:
    """Refuse, before serving or working, a database migrated by a newer jobgate."""
    _schema_versions(settings)


def cmd_check(args: argparse.Namespace) -> int:
    from jobgate.check import run_check

    return run_check(_settings(args), strict=args.strict, as_json=args.json)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    before, after, latest = _schema_versions(settings, migrate=True)
    where = _safe_url(settings.storage.url)
    if before == after:
        print(f"{where}: schema version {after}, up to date")
    else:
        print(f"{where}: schema version {before} -> {after} "
              f"({after - before} migration{'s' if after - before != 1 else ''} applied)")
    return 0 if after == latest else 1


def _local(args: argparse.Namespace, action: Callable[[Any], Any]) -> Any:
    """Run `action(store)` against the configured database directly (admin commands)."""
    from jobgate.store import store_for_url

    settings = _settings(args)

    async def run() -> Any:
        store = store_for_url(settings.storage.url, settings.storage.durability)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_user_add(args: argparse.Namespace) -> int:
    from jobgate.auth import check_name, hash_password
    from jobgate.store.base import Conflict

    name = check_name(args.name)
    password_hash = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if len(password) < 8:
            raise CliError("password must be at least 8 characters", 2)
        password_hash = hash_password(password)
    try:
        _local(args, lambda store: store.add_user(name, password_hash, args.admin))
    except Conflict as exc:
        raise CliError(str(exc)) from None
    print(f"added user {name}{' (admin)' if args.admin else ''}")
    return 0


# --- client commands ---------------------------------------------------------------------

_JOB_ID = re.compile(r"[0-9A-Za-z]{1,64}")


def _job_id(text: str) -> str:
    """A job id as it may appear in a URL path; anything else cannot name a job."""
    if not _JOB_ID.fullmatch(text):
        raise CliError(f"no job {text[:80]!r}")
    return text


def _parse_kv(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"expected key=value, got {pair!r}", 2)
        out[key] = value
    return out


def _upload_files(client: Client, job_args: dict[str, Any]) -> dict[str, Any]:
    """Each `NAME=@./file` uploaded first and given as its upload (`upload:<id>`); `@@`
    stands for a literal leading `@`."""
    out = dict(job_args)
    for key, value in job_args.items():
        if value.startswith("@@"):
            out[key] = value[1:]
        elif value.startswith("@"):
            if not value[1:]:
                raise CliError(f"{key}=@ needs a file name after the @ (e.g. {key}=@./film.mkv)",
                               2)
            path = Path(value[1:]).expanduser()
            if not path.exists():
                raise CliError(f"{key}: no such file {value[1:]!r}", 2)
            upload = client.upload(path)
            print(printable(f"uploaded {upload['name']} ({upload['size']} bytes) as "
                            f"{upload['ref']}"), file=sys.stderr)
            out[key] = upload["ref"]
    return out


def cmd_submit(args: argparse.Namespace) -> int:
    if args.batch is not None:
        return submit_batch(args)
    if args.kind is None:
        raise CliError("submit needs a kind: jobgate submit KIND key=value… (or --batch FILE)", 2)
    client = Client()
    body: dict[str, Any] = {"kind": args.kind,
                            "args": _upload_files(client, _parse_kv(args.args))}
    if args.depends_on:
        body["depends_on"] = args.depends_on
    if args.priority is not None:
        body["priority"] = args.priority
    if args.unique_key:
        body["unique_key"] = args.unique_key
    if args.memory_mb is not None:
        body["memory_mb"] = args.memory_mb
    job = client.call("POST", "/api/jobs", json=body)
    where = f", position {job['position']}" if job.get("position") else ""
    message = job.get("message") or ""
    if where and message.startswith("position "):
        where = f", {message}"  # with its estimated start
    elif where and message and job["state"] == "queued":
        where += f" ({message})"  # why it waits: "queue paused", "waiting for 1 job"
    print(printable(f"{job['id']} {job['state']}{where}"))
    if args.watch:
        return watch(client, job["id"], args.cancel_on_exit)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    client = Client()
    params = {k: v for k, v in (("state", args.state), ("kind", args.kind),
                                ("owner", args.owner), ("limit", args.limit)) if v}
    page = client.call("GET", "/api/jobs", params=params)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    print(f"{'ID':26}  {'KIND':12} {'OWNER':10} {'STATE':9} {'POS':>4} {'PROG':>5}  MESSAGE")
    for job in page["jobs"]:
        pos = job["position"] or ""
        prog = f"{job['progress']:.0f}%" if job["progress"] is not None else ""
        message = (job.get("error") or job.get("message") or "").splitlines()
        print(printable(
            f"{job['id']:26}  {job['kind'][:12]:12} {job['owner'][:10]:10} {job['state']:9} "
            f"{pos!s:>4} {prog:>5}  {(message[-1] if message else '')[:60]}"
            f"{_partial_note(job.get('outputs'))}"))
    return 0


def _partial_note(outputs: Any) -> str:
    """What `ls` adds for a job whose outputs a run that did not complete left (they are
    not its result): " [2 partial outputs]"."""
    count = sum(1 for o in outputs or () if isinstance(o, dict) and o.get("partial") is True)
    return f" [{count} partial output{'s' if count != 1 else ''}]" if count else ""


def cmd_show(args: argparse.Namespace) -> int:
    print(json.dumps(Client().call("GET", f"/api/jobs/{_job_id(args.id)}"), indent=2))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client = Client()
    job_id = _job_id(args.id)
    colour = sys.stdout.isatty()  # colours for a terminal; a file or a pipe gets plain text
    if not args.follow:
        _print_logs(client, job_id, 0, colour)
        return 0
    # Listen first, then read what is already there: no line falls in between, and the
    # line numbers of `job.log` events skip what the reads printed.
    reader = EventReader(client.url, client.http.headers, f"/api/jobs/{job_id}/events")
    reader.start()
    while not reader.connected.wait(0.05) and reader.events.empty():
        pass
    last = _print_logs(client, job_id, 0, colour)
    try:
        while True:
            kind, data = reader.events.get()
            if kind == "event" and data.get("type") == EventType.LOG:
                last = _print_event_lines(data, last, colour)
            elif kind == "reset":
                last = _print_logs(client, job_id, last, colour)
            elif kind == "end":
                break
            elif kind == "error":
                raise CliError(str(data))
    finally:
        reader.stop()
    _print_logs(client, job_id, last, colour)  # what no event carried
    return 0


def _print_event_lines(data: Any, last: int, colour: bool) -> int:
    """Print the lines of a `job.log` event after line `last`; returns the last line
    number. A redraw (`replace`: a progress bar moved) of a line printed is drawn over it
    on a terminal when it is the last line printed, else printed again as a line (a file
    or a pipe gets the bar's states as they came, its last one too); lines the event skips
    (not kept) are said in one line."""
    first = data.get("first", 1)
    lines = data.get("lines", [])
    if data.get("replace"):
        if lines and first <= last:
            # On a terminal: up to the line printed last, erased, drawn again.
            redraw = "\x1b[1F\x1b[2K" if colour and first == last else ""
            print(redraw + log_line_shown(lines[-1], colour), flush=True)
        return last
    if last and first > last + 1:
        print(f"[jobgate] {first - last - 1} more lines not kept", flush=True)
    for n, line in enumerate(lines, start=first):
        if n > last:
            print(log_line_shown(line, colour), flush=True)
            last = n
    return last


def _print_logs(client: Client, job_id: str, after: int, colour: bool = False) -> int:
    """Print the job's log lines after line `after`; returns the last line number."""
    while True:
        page = client.call("GET", f"/api/jobs/{job_id}/logs", params={"after": after})
        for line in page["lines"]:
            print(log_line_shown(line["line"], colour), flush=True)
        if not page["lines"]:
            return after
        after = page["next"]


def cmd_cancel(args: argparse.Namespace) -> int:
    job = Client().call("POST", f"/api/jobs/{_job_id(args.id)}/cancel")
    print(printable(f"{job['id']} {job['state']}"
                    f"{' (stopping)' if job['state'] == 'running' else ''}"))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    job = Client().call("POST", f"/api/jobs/{_job_id(args.id)}/retry")
    print(printable(f"{job['id']} {job['state']}" + (f", position {job['position']}"
                                                     if job.get("position") else "")))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    try:
        health = Client().call("GET", "/health")
    except CliError as exc:
        print(f"jobgate: unhealthy: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(health))
    return 0 if health.get("status") == "ok" else 1


def cmd_clean(args: argparse.Namespace) -> int:
    older = parse_duration(args.older_than, "--older-than") if args.older_than else 0.0
    result = Client().call("POST", "/api/clean", json={"older_than_s": older})
    print(f"deleted {result['deleted']} finished jobs")
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    listing = Client().call("GET", "/api/schedules")
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    rows = listing["schedules"]
    if not rows:
        print("no schedules (add [schedules.NAME] tables to the config)")
        return 0
    width = max(8, *(len(r["name"]) for r in rows))
    print(f"{'NAME':{width}}  {'CRON':16} {'TIMEZONE':14} {'KIND':12} {'OWNER':10} "
          f"{'NEXT DUE (UTC)':20} LAST")
    for r in rows:
        due = (r["next_due_at"] or "disabled")[:19].replace("T", " ")
        last = r["last"]
        done = "-" if last is None else \
            f"{last['fired_at'][:19].replace('T', ' ')} {last['outcome']}" + \
            (f" {last['job_id']}" if last.get("job_id") else "")
        print(printable(f"{r['name']:{width}}  {r['cron'][:16]:16} {r['timezone'][:14]:14} "
                        f"{r['kind'][:12]:12} {r['owner'][:10]:10} {due:20} {done}"))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


class _Version(argparse.Action):
    """`--version`: argparse's own wants the text as the parser is made, and reading the
    version costs a look at the installed package, which only this option needs."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        import jobgate

        print(f"jobgate {jobgate.__version__}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jobgate", description="A job queue for heavy work.")
    p.add_argument("--version", action=_Version, help="show jobgate's version and exit")
    p.set_defaults(func=lambda a: p.print_help())
    sub = p.add_subparsers(metavar="COMMAND", parser_class=_Parser)

    def server_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config",
                        help="jobgate.toml (default: $JOBGATE_CONFIG or ./jobgate.toml)")
        sp.add_argument("--db", help="database: a SQLite file or URL (default: ./jobgate.db)")

    sp = sub.add_parser("serve", help="API, dashboard and an embedded worker")
    server_opts(sp)
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.add_argument("--no-worker", action="store_true", help="API only")
    sp.add_argument("--log-level", default="warning",
                    choices=["critical", "error", "warning", "info", "debug"])
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("worker", help="a worker node only")
    server_opts(sp)
    sp.add_argument("--slots", type=int)
    sp.add_argument("--name")
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser("check", help="validate the configuration without starting anything")
    server_opts(sp)
    sp.add_argument("--strict", action="store_true", help="a warning fails too (exit 1)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("migrate", help="bring the database's schema up to date")
    server_opts(sp)
    sp.set_defaults(func=cmd_migrate)

    sp = sub.add_parser("submit", help="submit a job (or a batch of them: --batch FILE)")
    sp.add_argument("kind", nargs="?")
    sp.add_argument("args", nargs="*", metavar="key=value",
                    help="arguments; key=@./file uploads the file first and passes it")
    sp.add_argument("--priority", type=int)
    sp.add_argument("--unique-key")
    sp.add_argument("--memory-mb", type=int, metavar="N",
                    help="memory the job reserves, in place of its kind's estimate")
    sp.add_argument("--watch", action="store_true",
                    help="follow it to the end (exit 0 completed, 1 failed, 130 on Ctrl-C)")
    sp.add_argument("--cancel-on-exit", action="store_true",
                    help="with --watch: Ctrl-C cancels the job too")
    sp.add_argument("--depends-on", action="append", metavar="ID",
                    help="wait until job ID completed (repeatable); job:ID/NAME in a path "
                    "argument names its output NAME")
    sp.add_argument("--batch", metavar="FILE",
                    help="submit the jobs a JSON or TOML file lists, all or none")
    sp.add_argument("--pipeline", action="store_true",
                    help="with --batch: each job depends on the one before it")
    sp.set_defaults(func=cmd_submit)

    sp = sub.add_parser("ls", help="list jobs")
    sp.add_argument("--state", choices=[s.value for s in State])
    sp.add_argument("--kind")
    sp.add_argument("--owner")
    sp.add_argument("--limit", type=int)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_ls)

    for name, func, text in (("show", cmd_show, "one job as JSON"),
                             ("cancel", cmd_cancel, "cancel a queued or running job"),
                             ("retry", cmd_retry, "queue a failed or cancelled job again")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("id")
        sp.set_defaults(func=func)

    sp = sub.add_parser("logs", help="a job's log")
    sp.add_argument("id")
    sp.add_argument("--follow", "-f", action="store_true")
    sp.set_defaults(func=cmd_logs)

    cli_stats.add_parser(sub)

    sp = sub.add_parser("schedules", help="the schedules with their next due times")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_schedules)

    sp = sub.add_parser("health", help="exit 0 if the server is healthy")
    sp.set_defaults(func=cmd_health)

    sp = sub.add_parser("clean", help="delete finished jobs, their logs and outputs")
    sp.add_argument("--older-than", help="e.g. 7d, 12h (default: all finished)")
    sp.set_defaults(func=cmd_clean)

    cli_bulk.add_parser(sub)

    sp = sub.add_parser("user", help="manage users")
    usub = sp.add_subparsers(metavar="ACTION", required=True, parser_class=_Parser)
    ua = usub.add_parser("add", help="add a user")
    server_opts(ua)
    ua.add_argument("name")
    ua.add_argument("--admin", action="store_true")
    ua.add_argument("--password-stdin", action="store_true")
    ua.set_defaults(func=cmd_user_add)

    add_user_commands(sub, usub, server_opts, _settings)  # user list|remove|…, token
    add_control_commands(sub)  # pause, resume, limits, drain, undrain (cli_controls.py)
    return p
