"""The download recipes: yt-dlp (`download_job`) and spotdl (`music_job`) as Python kinds.

Each runs the program as an argv list (never a shell), reads its output line by line
through the named progress parser (`YtDlpProgress`, `SpotdlProgress`), logs what it says,
and turns its failure into the right kind of error: a network drop or a server's 5xx is a
RuntimeError (the kind's `max_attempts` retries it), a 404, an unsupported address or a
bad argument is `NonRetryable`. A program missing here is `ToolMissing` ("yt-dlp is not
installed on this server").

yt-dlp runs as `python -m jobgate.ytdlp_guard` (yt-dlp with every connection checked
against the kind's address rule: redirects, media addresses, DNS look-ups), which needs
the `yt_dlp` module in this Python (`jobgate[media]`); a kind with `allow_private_urls =
true` runs it unchecked, as `python -m yt_dlp` or the `yt-dlp` program on PATH. spotdl
pins libraries of its own, so it is always the `spotdl` program (installed with `uv tool
install spotdl` or `pipx install spotdl`); its connections are not checked.
Nothing a user gives becomes an option: yt-dlp's address comes after `--`, spotdl's (its
parser takes no `--`) is a checked http(s) URL, the format is `--format=VALUE`, the rest
are choices from the kind's schema.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobgate.media import ToolMissing, missing_tools, redact
from jobgate.progress import ProgressParser, SpotdlProgress, YtDlpProgress
from jobgate.pychild import NonRetryable
from jobgate.ytdlp_guard import REFUSED, UNCHECKED_PROGRAM

_TERM_GRACE_S = 5.0  # after SIGTERM on a cancel, before SIGKILL
_TAIL_LINES = 40  # kept for the error message
# What yt-dlp's info for each item gives as the job's result (not the whole info dict:
# with its list of formats that is hundreds of kB per video).
_INFO_FIELDS = ("id", "title", "uploader", "channel", "duration", "upload_date",
                "webpage_url", "extractor_key", "ext", "format_id", "format", "width",
                "height", "fps", "vcodec", "acodec", "abr", "filesize", "filesize_approx",
                "playlist_title", "playlist_index", "filepath")
# yt-dlp's errors that the same request would meet again: fail at once. Anything else
# (a timeout, a reset connection, 5xx, 429, a 403 from a CDN's expired link) may pass
# on a later attempt.
_YT_PERMANENT = re.compile(
    r"HTTP Error (400|401|404|405|410|451)\b|Unsupported URL|is not a valid URL|"
    r"Video unavailable|Private video|This video is (private|unavailable|not available)|"
    r"Requested format is not available|No video formats found|"
    r"Sign in to confirm your age|members-only|has been removed|"
    r"not available in your country|Unable to extract|no such option",
    re.IGNORECASE)
_SP_PERMANENT = re.compile(r"LookupError|No results found|QueryError|Invalid URL|"
                           r"not a valid|HTTP Error 404", re.IGNORECASE)
_SP_ERROR_LINE = re.compile(r"^([A-Z]\w*(Error|Exception)): |^error: |\bERROR\b")
# Left out of the log: the in-between percents (the progress carries them), and the note
# of where the metadata went (it is the result).
_YT_QUIET_LINE = re.compile(r"^\[download\]\s+(?!100%)[\d.]+%|^\[download\]\s+[\d.]+\w*B at|"
                            r"^\[info\] Writing '%\(")


@dataclass
class Ran:
    """How one program run ended: its exit code and the last lines it printed."""

    code: int
    tail: list[str]


def run_program(argv: Sequence[str], parser: ProgressParser, ctx: Any,
                quiet: Callable[[str], bool] = lambda line: False,
                env: dict[str, str] | None = None, hide: Sequence[Path] = ()) -> Ran:
    """Run `argv` with stdout and stderr as one stream, in order: each line is fed to
    `parser` (its reports become the job's progress) and logged unless `quiet(line)` (the
    many in-between progress lines). What is shown names no folder of the server: the
    absolute paths of `argv` and the folders of `hide` are cut out. A cancel stops the
    program (SIGTERM, then SIGKILL) and raises InterruptedError."""
    def shown(text: str) -> str:
        for folder in hide:
            text = text.replace(f"{folder}{os.sep}", "").replace(str(folder), ".")
        return redact(text, argv)

    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                env={**os.environ, **(env or {})})
    except FileNotFoundError:
        raise ToolMissing(Path(argv[0]).name) from None
    stop = threading.Event()
    stopped = threading.Event()

    def watch() -> None:  # the reading below blocks: a cancel is noticed here
        while not stop.wait(0.2):
            if ctx.cancelled:
                stopped.set()
                proc.terminate()
                try:
                    proc.wait(timeout=_TERM_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    tail: list[str] = []
    with proc:
        watcher.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                for line in raw.replace("\r", "\n").splitlines():
                    if not line.strip():
                        continue
                    report = parser.feed(line)
                    if report is not None:
                        if report.warning:
                            ctx.log(f"[jobgate] {report.warning}")
                        if report.percent is not None or report.message is not None:
                            ctx.progress(report.percent,
                                         shown(report.message) if report.message else None)
                    if not quiet(line):
                        text = shown(line)
                        ctx.log(text)
                        tail.append(text)
                        del tail[:-_TAIL_LINES]
            proc.wait()
        except BaseException:
            proc.kill()
            raise
        finally:
            stop.set()
            watcher.join(timeout=_TERM_GRACE_S + 1)
    if stopped.is_set() or (proc.returncode != 0 and ctx.cancelled):
        raise InterruptedError("cancelled")
    return Ran(proc.returncode, tail)


# --- yt-dlp -------------------------------------------------------------------------------

def ytdlp_command(check_addresses: bool = True, allow_networks: Sequence[str] = ()
                  ) -> list[str]:
    """How to run yt-dlp here. Checking the addresses it connects to (every redirect and
    look-up: `jobgate.ytdlp_guard`, public ones and `allow_networks` only) needs yt-dlp
    as a module of this Python; unchecked, the `yt-dlp` program on PATH does too."""
    if importlib.util.find_spec("yt_dlp") is not None:
        if not check_addresses:
            return [sys.executable, "-m", "yt_dlp"]
        return [sys.executable, "-m", "jobgate.ytdlp_guard",
                *(f"--allow={net}" for net in allow_networks)]
    found = shutil.which("yt-dlp")
    if found is None:
        raise ToolMissing("yt-dlp")
    if check_addresses:
        raise NonRetryable(UNCHECKED_PROGRAM)
    return [found]


def download_argv(command: Sequence[str], url: str, output_dir: Path, scratch: Path,
                  info_file: Path, format: str = "auto", audio_only: bool = False,
                  audio_format: str = "mp3", playlist: bool = False,
                  max_items: int = 50) -> list[str]:
    """yt-dlp's argv: files into `output_dir` once complete (unfinished ones in
    `scratch`), one JSON line per item (the fields of `_INFO_FIELDS`) into `info_file`."""
    fields = ",".join(_INFO_FIELDS)
    argv = [*command, "--ignore-config", "--newline", "--no-mtime",
            "--retries", "3", "--socket-timeout", "30",
            "--paths", f"home:{output_dir}", "--paths", f"temp:{scratch}",
            "--output", "%(playlist_index&{} - |)s%(title).150B [%(id)s].%(ext)s",
            "--print-to-file", f"after_move:%(.{{{fields}}})j", str(info_file),
            "--yes-playlist" if playlist else "--no-playlist",
            "--playlist-items", f"1:{max_items}"]
    chosen = format
    if audio_only:
        argv += ["--extract-audio", "--audio-format", audio_format]
        if chosen in ("auto", "best"):
            chosen = "bestaudio/best"
    if chosen != "auto":
        argv.append(f"--format={chosen}")
    return [*argv, "--", url]


def ytdlp_error(ran: Ran) -> Exception:
    """The job's error for a failed yt-dlp run: NonRetryable when trying again cannot
    help, RuntimeError otherwise; the message is yt-dlp's own ERROR line, or the refused
    address when it was sent somewhere the kind may not reach."""
    refused = [line for line in ran.tail if line.startswith(REFUSED)]
    if refused:  # the same address next time: not retried
        return NonRetryable("yt-dlp: " + refused[0].removeprefix("[jobgate] "))
    errors = [line for line in ran.tail if line.startswith("ERROR:")]
    usage = [line for line in ran.tail if line.startswith(("yt-dlp: error:", "Usage:"))]
    text = (errors or usage or ran.tail or [f"exit code {ran.code}"])[-1]
    message = "yt-dlp: " + text.removeprefix("ERROR: ")
    if ran.code == 2 or _YT_PERMANENT.search(text):
        return NonRetryable(message)
    return RuntimeError(message)


def _item(line: str, output_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(line)
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    path = info.pop("filepath", None)
    if isinstance(path, str):  # the name in the job's folder, never the server's path
        with contextlib.suppress(ValueError):
            info["file"] = Path(path).relative_to(output_dir).as_posix()
    return {k: v for k, v in info.items() if v is not None}


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def download_job(ctx: Any, url: str, format: str = "auto", audio_only: bool = False,
                 audio_format: str = "mp3", playlist: bool = False, max_items: int = 50,
                 *, check_addresses: bool = True, allow_networks: Sequence[str] = ()
                 ) -> dict[str, Any]:
    """The `download` recipe: yt-dlp into the job's folder, a percent with speed and ETA
    ("item 3 of 10: 4.20MiB at 1.20MiB/s, ETA 00:03"), the items' metadata as the result
    (`items`, and a single item's fields at the top), the files as outputs.

    Every connection yt-dlp makes (redirects, the media addresses a page names, each DNS
    look-up) goes to a public address or one of `allow_networks` only, unless
    `check_addresses` is off (`download_job_any_address`, for `allow_private_urls`); a
    refused one fails the job at once, naming the address."""
    command = ytdlp_command(check_addresses, allow_networks)
    if audio_only and missing_tools(["ffmpeg"]):
        raise ToolMissing("ffmpeg")
    output_dir = ctx.output_dir
    # Unfinished files (`.part`, formats not yet merged) stay in here until complete:
    # what is left in it after a hard stop is plainly not a result.
    scratch = output_dir / "incomplete"
    scratch.mkdir(exist_ok=True)
    info_file = scratch / "info.jsonl"
    argv = download_argv(command, url, output_dir, scratch, info_file, format, audio_only,
                         audio_format, playlist, max_items)
    ctx.progress(0.0, "starting yt-dlp")
    ran = run_program(argv, YtDlpProgress(), ctx,
                      quiet=lambda line: _YT_QUIET_LINE.match(line) is not None,
                      env={"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"},
                      hide=(output_dir,))
    lines = info_file.read_text(errors="replace").splitlines() if info_file.exists() else []
    info_file.unlink(missing_ok=True)
    items = [item for line in lines if (item := _item(line, output_dir)) is not None]
    if ran.code != 0 and not items:
        # A `.part` left in `incomplete/` lets the next attempt resume; nothing: no folder.
        with contextlib.suppress(OSError):
            scratch.rmdir()
        raise ytdlp_error(ran)
    shutil.rmtree(scratch, ignore_errors=True)
    files = _files(output_dir)
    if not files:
        raise RuntimeError("yt-dlp: it ended without a file: "
                           + (" | ".join(ran.tail[-3:]) or f"exit code {ran.code}"))
    result: dict[str, Any] = {"items": items, "files": files}
    if ran.code != 0:  # some items of a playlist failed: what came is kept
        result["errors"] = [line.removeprefix("ERROR: ") for line in ran.tail
                            if line.startswith("ERROR:")]
    if len(items) == 1:
        result.update(items[0])
    total = sum(_size(output_dir / name) for name in files)
    ctx.progress(100.0, f"{len(files)} file{'s' if len(files) != 1 else ''}, "
                        f"{total / 1_000_000:.1f} MB")
    return result


def download_job_any_address(ctx: Any, url: str, format: str = "auto",
                              audio_only: bool = False, audio_format: str = "mp3",
                              playlist: bool = False, max_items: int = 50) -> dict[str, Any]:
    """The `download` recipe of a kind with `allow_private_urls = true`: yt-dlp may
    connect anywhere, loopback and private networks included."""
    return download_job(ctx, url, format, audio_only, audio_format, playlist, max_items,
                        check_addresses=False)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --- spotdl -------------------------------------------------------------------------------

SPOTDL_TEMPLATE = "{artists} - {title}.{output-ext}"


def spotdl_argv(program: str, url: str, output_dir: Path, format: str = "mp3") -> list[str]:
    """spotdl 4's argv: songs of `url` into `output_dir` as "Artist - Title.mp3".

    Its options come first and the address last: spotdl's parser refuses `--` and any
    option after the operation (`download --output …` is a usage error). The address
    cannot pass for an option: a `url` argument starts with http:// or https://."""
    if not url.startswith(("http://", "https://")):
        raise NonRetryable(f"spotdl: expected an http(s) address, got {url[:80]!r}")
    return [program, "--output", str(output_dir / SPOTDL_TEMPLATE), "--format", format,
            "download", url]


def spotdl_error(ran: Ran) -> Exception:
    """A failed spotdl run as the job's error, with spotdl's own last lines (it prints
    its errors on stdout, often as a framed traceback: the error lines are picked out)."""
    telling = [line.strip() for line in ran.tail if _SP_ERROR_LINE.search(line)]
    lines = telling[-3:] or [line.strip() for line in ran.tail[-5:]
                             if line.strip(" ─│╭╮╰╯")]
    text = " | ".join(lines) or "no output"
    message = f"spotdl exit code {ran.code}: {text}" if ran.code else f"spotdl: {text}"
    if ran.code == 2 or _SP_PERMANENT.search(text):
        return NonRetryable(message)
    return RuntimeError(message)


def music_job(ctx: Any, url: str, format: str = "mp3") -> dict[str, Any]:
    """The `music` recipe: spotdl into the job's folder, a message per track ("track 3
    of 12: downloaded "Artist - Title""), the files and the tracks that failed as the
    result. A run where nothing came fails with spotdl's own last lines."""
    program = shutil.which("spotdl")
    if program is None:
        raise ToolMissing("spotdl")
    if missing_tools(["ffmpeg"]):
        raise ToolMissing("ffmpeg")
    output_dir = ctx.output_dir
    argv = spotdl_argv(program, url, output_dir, format)
    ctx.progress(0.0, "starting spotdl")
    # Rich wraps lines at the terminal's width: wide, so a song's line stays one line.
    ran = run_program(argv, SpotdlProgress(), ctx,
                      env={"COLUMNS": "400", "PYTHONUNBUFFERED": "1",
                           "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"},
                      hide=(output_dir,))
    files = _files(output_dir)
    if ran.code != 0 or not files:
        raise spotdl_error(ran)
    failed = [line.strip() for line in ran.tail if _SP_ERROR_LINE.search(line)]
    ctx.progress(100.0, f"{len(files)} song{'s' if len(files) != 1 else ''}"
                        + (f", {len(failed)} failed" if failed else ""))
    return {"files": files, "songs": len(files), "failed": failed}
