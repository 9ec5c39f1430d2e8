"""The media recipes' logic: probing, compress-to-size arithmetic and argv, running ffmpeg.

Everything runs Debian's `ffmpeg` / `ffprobe` as argv lists (never a shell); no Python
library beyond the standard one. What lives here is pure or a thin wrapper around one
program run, so the kinds' configuration (kinds.py, the shipped jobgate.toml) only names
it: `compress_job` is a Python kind as it stands (`analyze_job`, in jobgate.analysis,
too), `compress_argv` builds the commands for a command kind, `missing_tools` is the
start-up check.

Units are in the names: `_s` seconds, `_mb` megabytes of 1,000,000 bytes (what upload
limits mean), `_kbps` kilobits (1000 bits) per second, `_db` decibels.

The recipes as kinds: `recipe = "compress"` / `recipe = "analyze"` in a `[kinds.NAME]`
table (jobgate.recipes holds their arguments, memory, timeout and retry settings).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from jobgate.progress import FfmpegProgress, Report
from jobgate.pychild import NonRetryable

BYTES_PER_MB = 1_000_000
# Share of the target kept for the container (mp4 boxes, interleaving): measured near
# 1 % for mp4 at these bitrates, doubled so that a miss lands under the target, not over.
DEFAULT_OVERHEAD = 0.02
# Below this there is no watchable picture left: refuse rather than make a smear.
MIN_VIDEO_KBPS = 32
VIDEO_CODECS = ("libx264", "libx265", "libvpx-vp9", "libsvtav1")
AUDIO_CODECS = ("aac", "libopus", "libmp3lame", "copy")
# Codecs whose ffmpeg wrappers take `-pass 1|2` with `-passlogfile`.
_TWO_PASS_CODECS = ("libx264", "libvpx-vp9")
_PRESET_CODECS = ("libx264", "libx265")
_FASTSTART_SUFFIXES = (".mp4", ".m4v", ".mov", ".m4a")
#: What an output being written is called until it is complete: `out.mp4.part`.
PART_SUFFIX = ".part"
_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".m4a": "mp4", ".mov": "mov", ".webm": "webm",
           ".mkv": "matroska"}
_PROBE_TIMEOUT_S = 60.0


class ToolMissing(NonRetryable):
    """A program a recipe needs is not installed: retrying will not install it."""

    def __init__(self, tool: str) -> None:
        super().__init__(f"{tool} is not installed on this server")
        self.tool = tool


class BadInput(NonRetryable):
    """The input file cannot be used (not media, no audio, unreadable): not retried."""


class CommandFailed(NonRetryable):
    """ffmpeg exited with an error: carries its own last lines. Not retried: on a local
    file the same command fails the same way (a signal, such as the OOM killer's, is a
    plain RuntimeError instead, which a kind's max_attempts may retry)."""


def missing_tools(argv0s: Iterable[str]) -> list[str]:
    """The programs among `argv0s` that cannot be run here (no duplicates, in order).

    For the server's start: each kind's argv[0], plus ffmpeg/ffprobe for the recipes.
    """
    missing: list[str] = []
    for name in argv0s:
        if name in missing:
            continue
        found = (os.access(name, os.X_OK) and os.path.isfile(name)) if os.sep in name \
            else shutil.which(name) is not None
        if not found:
            missing.append(name)
    return missing


def local_path(path: str | Path) -> str:
    """`path` as ffmpeg must read a file name: a relative `name:with colon.mp4` would be
    taken for a protocol (`concat:`, `http:`…), so relative names get `./`."""
    text = str(path)
    return text if os.path.isabs(text) or text.startswith(("./", "../")) else f"./{text}"


def tool_path(name: str) -> str:
    """Where the program `name` is on PATH; ToolMissing when it is not there."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(name)
    return path


# --- probe --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Probe:
    """What ffprobe says about a file, the parts the recipes use."""

    duration_s: float | None
    has_video: bool
    has_audio: bool
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    format_name: str | None
    size_bytes: int | None
    bit_rate_kbps: float | None
    # The first video stream's own bitrate; a container that does not say it per stream
    # (Matroska, WebM): the whole file's less the audio's.
    video_bit_rate_kbps: float | None = None


def probe(path: str | Path) -> Probe:
    """ffprobe's reading of `path`; BadInput when it is not a media file ffprobe knows."""
    argv = [tool_path("ffprobe"), "-v", "error", "-print_format", "json", "-show_format",
            "-show_streams", "--", local_path(path)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=_PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise BadInput(f"ffprobe gave no answer on {Path(path).name} within "
                       f"{_PROBE_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        reason = _last_lines(done.stderr, 3) or f"exit code {done.returncode}"
        raise BadInput(f"cannot read {Path(path).name} as media: "
                       f"{redact(reason, argv)}")
    return parse_probe(json.loads(done.stdout or "{}"))


def parse_probe(data: dict[str, Any]) -> Probe:
    """A Probe from ffprobe's JSON (`-show_format -show_streams`)."""
    streams = [s for s in data.get("streams", []) if isinstance(s, dict)]
    fmt = data.get("format", {}) if isinstance(data.get("format"), dict) else {}
    # A cover picture in an mp3 or m4a is a "video" stream with attached_pic: not video.
    video = [s for s in streams if s.get("codec_type") == "video"
             and not (s.get("disposition") or {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    duration = finite_float(fmt.get("duration"))
    if duration is None:
        lengths = [d for s in streams if (d := finite_float(s.get("duration"))) is not None]
        duration = max(lengths) if lengths else None
    rate = finite_float(fmt.get("bit_rate"))
    size = finite_float(fmt.get("size"))
    first_video = video[0] if video else {}
    video_rate = finite_float(first_video.get("bit_rate"))
    if video_rate is None and video and rate is not None:
        audio_rates = [r for s in audio if (r := finite_float(s.get("bit_rate"))) is not None]
        video_rate = rate - sum(audio_rates) if rate > sum(audio_rates) else None
    return Probe(
        duration_s=duration if duration and duration > 0 else None,
        has_video=bool(video), has_audio=bool(audio),
        video_codec=first_video.get("codec_name"),
        audio_codec=audio[0].get("codec_name") if audio else None,
        width=first_video.get("width"), height=first_video.get("height"),
        format_name=fmt.get("format_name"),
        size_bytes=int(size) if size is not None else None,
        bit_rate_kbps=rate / 1000 if rate is not None else None,
        video_bit_rate_kbps=video_rate / 1000 if video_rate is not None else None,
    )


def finite_float(value: Any) -> float | None:
    """`value` as a finite float (ffprobe's and ffmpeg's numbers come as text), or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --- compress -----------------------------------------------------------------------------

def video_bitrate_kbps(target_mb: float, duration_s: float, audio_kbps: float,
                       overhead: float = DEFAULT_OVERHEAD) -> int:
    """The video bitrate that makes `duration_s` of media about `target_mb` in all.

    The target, less `overhead` (a fraction kept for the container), spread over the
    duration, less the audio. ValueError, saying what would fit, when the audio alone
    (or the audio and the least watchable video) does not fit the target.
    """
    if not target_mb > 0 or not math.isfinite(target_mb):
        raise ValueError(f"target size must be more than 0 MB, got {target_mb}")
    if not duration_s > 0 or not math.isfinite(duration_s):
        raise ValueError(f"duration must be more than 0 s, got {duration_s}")
    if audio_kbps < 0 or not 0 <= overhead < 1:
        raise ValueError("audio bitrate must be >= 0 and overhead from 0 to under 1")
    total_kbps = target_mb * BYTES_PER_MB * 8 / 1000 * (1 - overhead) / duration_s
    video_kbps = total_kbps - audio_kbps
    if video_kbps <= 0:
        audio_mb = audio_kbps * 1000 / 8 * duration_s / BYTES_PER_MB / (1 - overhead)
        raise ValueError(
            f"target {target_mb:g} MB is too small for {duration_s:.0f} s of audio at "
            f"{audio_kbps:g} kb/s alone ({audio_mb:.1f} MB); choose a larger target or a "
            "lower audio bitrate")
    if video_kbps < MIN_VIDEO_KBPS:
        least_mb = ((MIN_VIDEO_KBPS + audio_kbps) * 1000 / 8 * duration_s / BYTES_PER_MB
                    / (1 - overhead))
        raise ValueError(
            f"target {target_mb:g} MB leaves {video_kbps:.0f} kb/s for {duration_s:.0f} s "
            f"of video (at least {MIN_VIDEO_KBPS} kb/s needed, so at least "
            f"{least_mb:.1f} MB); choose a larger target or a lower audio bitrate")
    return int(video_kbps)


def compress_argv(
    input: str | Path,  # the recipe's argument is named input
    output: str | Path,
    target_mb: float | None = None,
    bitrate_kbps: int | None = None,
    crf: int | None = None,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    audio_kbps: int = 128,
    preset: str = "medium",
    duration_s: float | None = None,
    has_audio: bool = True,
    passlog: str | Path | None = None,
    two_pass: bool = True,
    max_video_kbps: float | None = None,
) -> list[list[str]]:
    """The ffmpeg commands (one, or two for two-pass) that compress `input` to `output`.

    Exactly one of `target_mb` (needs `duration_s`, probed), `bitrate_kbps` (video) or
    `crf` (quality). A target size is encoded in two passes when the codec allows it
    (libx264, libvpx-vp9): one pass lands within a few % on even content but misses on
    content whose difficulty changes, and the recipe promises 10 %. `passlog` is the
    two-pass statistics prefix: keep it out of the job's folder (its files would become
    outputs). Each command reports on stdout with `-progress pipe:1 -nostats`, which the
    "ffmpeg" progress parser reads; the output gets `-movflags +faststart` when it is
    mp4/mov, so a browser plays it before it has all of it. `max_video_kbps` (the
    input's own video bitrate) caps the bitrate a target size works out to: a target
    above what the input has would make a bigger file of no better picture.
    """
    chosen = [name for name, value in (("target_mb", target_mb),
                                       ("bitrate_kbps", bitrate_kbps), ("crf", crf))
              if value is not None]
    if len(chosen) != 1:
        raise ValueError("give exactly one of target_mb, bitrate_kbps or crf"
                         + (f" (got {', '.join(chosen)})" if chosen else ""))
    if video_codec not in VIDEO_CODECS:
        raise ValueError(f"video codec {video_codec!r} is not one of "
                         f"{', '.join(VIDEO_CODECS)}")
    if audio_codec not in AUDIO_CODECS:
        raise ValueError(f"audio codec {audio_codec!r} is not one of "
                         f"{', '.join(AUDIO_CODECS)}")
    if not re.fullmatch(r"[a-z0-9]+", preset):
        raise ValueError(f"preset {preset!r} is not a preset name")
    audio = has_audio and audio_kbps > 0
    # `out.mp4.part`: written under a name that says unfinished, renamed once complete.
    final = Path(output).with_suffix("") if Path(output).suffix == PART_SUFFIX \
        else Path(output)
    suffix = final.suffix.lower()
    muxer = (["-f", _MUXERS.get(suffix, "mp4")] if final != Path(output) else [])
    if target_mb is not None:
        if duration_s is None:
            raise ValueError("a target size needs the input's duration (probe it first)")
        bitrate_kbps = video_bitrate_kbps(target_mb, duration_s,
                                          audio_kbps if audio and audio_codec != "copy"
                                          else 0)
        if max_video_kbps is not None:
            bitrate_kbps = min(bitrate_kbps, max(int(max_video_kbps), MIN_VIDEO_KBPS))
    elif bitrate_kbps is not None and bitrate_kbps < MIN_VIDEO_KBPS:
        raise ValueError(f"video bitrate must be at least {MIN_VIDEO_KBPS} kb/s")
    elif crf is not None and not 0 <= crf <= 63:
        raise ValueError(f"crf must be from 0 to 63, got {crf}")

    ffmpeg = tool_path("ffmpeg")
    head = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-i", local_path(input),
            "-map", "0:v:0?", "-map", "0:a:0?"]
    video = ["-c:v", video_codec]
    if video_codec in _PRESET_CODECS:
        video += ["-preset", preset]
    if video_codec in ("libx264", "libx265"):
        video += ["-pix_fmt", "yuv420p"]  # what every player decodes (not 4:4:4)
    if video_codec == "libx265" and suffix in _FASTSTART_SUFFIXES:
        video += ["-tag:v", "hvc1"]  # Apple's players want this tag for HEVC in mp4
    if bitrate_kbps is not None:
        video += ["-b:v", f"{bitrate_kbps}k"]
    else:
        video += ["-crf", str(crf)] + (["-b:v", "0"] if video_codec == "libvpx-vp9" else [])
    sound = (["-c:a", audio_codec] + (["-b:a", f"{audio_kbps}k"] if audio_codec != "copy"
                                      else [])) if audio else ["-an"]
    report = ["-progress", "pipe:1", "-nostats"]
    tail = (["-movflags", "+faststart"] if suffix in _FASTSTART_SUFFIXES else []) + muxer
    if target_mb is not None and two_pass and video_codec in _TWO_PASS_CODECS:
        log = str(passlog) if passlog is not None else str(final.with_suffix("")) \
            + ".passlog"
        first = [*head, *video, "-pass", "1", "-passlogfile", log, "-an", *report,
                 "-f", "null", os.devnull]
        second = [*head, *video, "-pass", "2", "-passlogfile", log, *sound, *report,
                  *tail, local_path(output)]
        return [first, second]
    return [[*head, *video, *sound, *report, *tail, local_path(output)]]


def remux_argv(input: str | Path, output: str | Path, audio: bool = True) -> list[str]:
    """The ffmpeg command that copies `input`'s first video and audio streams into
    `output` as they are (no encoding), with `-movflags +faststart` for mp4/mov."""
    final = Path(output).with_suffix("") if Path(output).suffix == PART_SUFFIX \
        else Path(output)
    suffix = final.suffix.lower()
    muxer = (["-f", _MUXERS.get(suffix, "mp4")] if final != Path(output) else [])
    return [tool_path("ffmpeg"), "-hide_banner", "-nostdin", "-y", "-i", local_path(input),
            "-map", "0:v:0", *(["-map", "0:a:0?"] if audio else []), "-c", "copy",
            *([] if audio else ["-an"]), "-progress", "pipe:1", "-nostats",
            *(["-movflags", "+faststart"] if suffix in _FASTSTART_SUFFIXES else []),
            *muxer, local_path(output)]


# --- running ffmpeg with progress ---------------------------------------------------------

class JobParts(Protocol):
    """The parts of a job's context (jobgate.executor.JobContext, pychild.ChildContext)
    that these kinds use."""

    @property
    def output_dir(self) -> Path: ...
    @property
    def cancelled(self) -> bool: ...
    def progress(self, percent: float | None = None, message: str | None = None) -> None: ...
    def log(self, line: str) -> None: ...


ReportFn = Callable[[Report], None]


def run_ffmpeg(argv: Sequence[str], on_report: ReportFn | None = None,
               duration_s: float | None = None,
               cancelled: Callable[[], bool] | None = None) -> list[str]:
    """Run one ffmpeg command; its stderr lines (progress lines left out) come back.

    stdout and stderr are both read line by line through an FfmpegProgress parser; a
    `cancelled()` that turns true stops ffmpeg (SIGTERM, then SIGKILL after 5 s) and
    raises InterruptedError. CommandFailed carries ffmpeg's last lines.
    """
    parser = FfmpegProgress(duration_s=duration_s)
    lock = threading.Lock()  # one parser, two pipes
    kept: list[str] = []

    def read(stream: Any, keep: bool) -> None:
        for raw in stream:
            for line in raw.replace("\r", "\n").splitlines():
                if not line:
                    continue
                with lock:
                    report = parser.feed(line)
                    if keep and report is None and not re.match(r"^[a-z_0-9]+=", line):
                        kept.append(line)
                if report is not None and on_report is not None:
                    on_report(report)

    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace")
    except FileNotFoundError:
        raise ToolMissing(Path(argv[0]).name) from None
    with proc:  # closes both pipes whatever happens
        readers = [threading.Thread(target=read, args=(proc.stdout, False), daemon=True),
                   threading.Thread(target=read, args=(proc.stderr, True), daemon=True)]
        for thread in readers:
            thread.start()
        stopped = False
        try:
            while True:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if cancelled is not None and cancelled():
                        stopped = True
                        proc.terminate()
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            proc.wait(timeout=5)
                        proc.kill()
                        proc.wait()
                        break
        except BaseException:
            proc.kill()  # e.g. KeyboardInterrupt, or the job's thread being stopped
            raise
        finally:
            for thread in readers:
                thread.join(timeout=5)
    code = proc.returncode
    # In a pool process a cancel's SIGTERM reaches ffmpeg too (same process group).
    if stopped or (code != 0 and cancelled is not None and cancelled()):
        raise InterruptedError("cancelled")
    if code < 0:
        raise RuntimeError(f"ffmpeg killed by signal {-code}")
    if code != 0:
        tail = redact(_last_lines("\n".join(kept), 5), argv)
        raise CommandFailed(f"ffmpeg exit code {code}: {tail}")
    return kept


def _last_lines(text: str, count: int) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])


def redact(text: str, argv: Sequence[str]) -> str:
    """`text` with the absolute paths of `argv` cut to their names: what a job shows its
    user (an error, a log line) never reveals the server's folders."""
    paths = sorted({a for a in argv if os.path.isabs(a) and a != os.devnull}, key=len,
                   reverse=True)
    for path in paths:
        text = text.replace(path, Path(path).name)
    return text


def compress_job(ctx: JobParts, input: str,  # named as the recipe's argument
                 target_mb: float | None = None, bitrate_kbps: int | None = None,
                 crf: int | None = None, video_codec: str = "libx264",
                 audio_codec: str = "aac", audio_kbps: int = 128,
                 preset: str = "medium") -> dict[str, Any]:
    """The `compress` recipe as a Python kind: probe, one or two ffmpeg passes with a real
    percent ("pass 2 of 2: 00:12 of 00:30, 2.1x"), `out.mp4` (or .webm for VP9).

    By size if `target_mb` is above 0, else by bitrate if `bitrate_kbps` is, else by
    quality (`crf`, 23 when not given): a kind's schema can then give every one a default.
    The output is written as `out.mp4.part` and renamed when complete; a cancel or a
    failure removes it."""
    # A schema taken from this signature types `float | None` as a string: read numbers.
    target_mb = _number_arg("target_mb", target_mb)
    bitrate_kbps = _int_arg("bitrate_kbps", bitrate_kbps)
    crf = _int_arg("crf", crf)
    audio_kbps = _int_arg("audio_kbps", audio_kbps) or 0
    if target_mb:
        bitrate_kbps = crf = None
    elif bitrate_kbps:
        target_mb = crf = None
    else:
        target_mb = bitrate_kbps = None
        crf = 23 if crf is None else crf
    info = probe(input)
    if not info.has_video:
        raise BadInput(f"{Path(input).name} has no video stream to compress")
    suffix = ".webm" if video_codec == "libvpx-vp9" else ".mp4"
    output = ctx.output_dir / f"out{suffix}"
    # A stop too hard to clean up after (SIGKILL, a power cut) leaves `out.mp4.part`,
    # never a truncated `out.mp4` that looks finished.
    partial = output.with_name(output.name + PART_SUFFIX)
    audio = info.has_audio and audio_kbps > 0
    size_in = Path(input).stat().st_size
    if target_mb is not None and size_in <= target_mb * BYTES_PER_MB:
        # Encoding what already fits only makes it bigger or worse: its own streams are
        # copied (a new container, +faststart) when the container takes them.
        kept = _copy_streams(ctx, input, partial, audio, info.duration_s)
        if kept is not None and kept <= target_mb * BYTES_PER_MB:
            partial.replace(output)
            ctx.progress(100.0, f"already under {target_mb:g} MB: kept at "
                                f"{kept / BYTES_PER_MB:.2f} MB (streams copied)")
            return {"output": output.name, "size_bytes": kept,
                    "duration_s": info.duration_s, "target_mb": target_mb, "passes": 1,
                    "streams_copied": True}
        partial.unlink(missing_ok=True)
    own_kbps = info.video_bit_rate_kbps
    note = ""
    if target_mb is not None and own_kbps is not None and info.duration_s:
        with contextlib.suppress(ValueError):  # compress_argv says what is wrong
            allowed = video_bitrate_kbps(target_mb, info.duration_s,
                                         audio_kbps if audio and audio_codec != "copy"
                                         else 0)
            if own_kbps < allowed:
                note = (f"; its video is at {own_kbps:.0f} kb/s, under the {allowed} kb/s "
                        "the target allows: encoded at its own bitrate")
    with tempfile.TemporaryDirectory(prefix="jobgate-passlog-") as scratch:
        try:
            commands = compress_argv(input, partial, target_mb, bitrate_kbps, crf,
                                     video_codec, audio_codec, audio_kbps, preset,
                                     info.duration_s, info.has_audio,
                                     passlog=Path(scratch) / "pass",
                                     max_video_kbps=own_kbps)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        for number, argv in enumerate(commands, 1):
            ctx.log(f"[jobgate] pass {number} of {len(commands)}: "
                    + redact(" ".join(argv), argv))
            try:
                run_ffmpeg(argv, job_reporter(ctx, number, len(commands)), info.duration_s,
                           lambda: ctx.cancelled)
            except BaseException:
                partial.unlink(missing_ok=True)  # a truncated file is no result
                raise
        partial.replace(output)
    size = output.stat().st_size
    ctx.progress(100.0, f"{size / BYTES_PER_MB:.2f} MB"
                 + (f" (target {target_mb:g} MB{note})" if target_mb is not None else ""))
    return {"output": output.name, "size_bytes": size, "duration_s": info.duration_s,
            "target_mb": target_mb, "passes": len(commands)}


def _copy_streams(ctx: JobParts, input: str, partial: Path, audio: bool,
                  duration_s: float | None) -> int | None:
    """Copy `input`'s streams into `partial` with progress; its size, or None (and no
    file) when the container cannot hold them."""
    argv = remux_argv(input, partial, audio)
    ctx.log("[jobgate] copying the streams: " + redact(" ".join(argv), argv))
    try:
        run_ffmpeg(argv, job_reporter(ctx), duration_s, lambda: ctx.cancelled)
    except CommandFailed as exc:
        partial.unlink(missing_ok=True)
        ctx.log(f"[jobgate] the streams cannot be copied ({exc}): encoding instead")
        return None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return partial.stat().st_size


def _number_arg(name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    number = finite_float(value)
    if number is None:
        raise BadInput(f"{name} must be a number, got {value!r}")
    return number


def _int_arg(name: str, value: Any) -> int | None:
    number = _number_arg(name, value)
    if number is not None and not number.is_integer():
        raise BadInput(f"{name} must be a whole number, got {value!r}")
    return None if number is None else int(number)


def job_reporter(ctx: JobParts, number: int = 1, count: int = 1) -> ReportFn:
    """Progress of pass `number` of `count` as a share of the whole job."""
    def on_report(report: Report) -> None:
        if report.warning:
            ctx.log(f"[jobgate] {report.warning}")
        percent = None if report.percent is None else \
            ((number - 1) * 100.0 + report.percent) / count
        message = report.message
        if count > 1 and message:
            message = f"pass {number} of {count}: {message}"
        if percent is not None or message is not None:
            ctx.progress(percent, message)
    return on_report
