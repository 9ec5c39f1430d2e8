"""Progress parsers: a command's output lines in, a percent and a message out.

A command kind names a parser (`progress = "ffmpeg"`, `"yt-dlp"`, `"spotdl"`) or gives a
regular expression with named groups (`percent`, `message`, or `current` and `total` with
an optional `unit` / `current_unit` / `total_unit`). `parser_for(setting)` turns either
form into a factory; each run gets its own instance, since a parser learns as it reads
(ffmpeg's input duration, yt-dlp's place in a playlist, spotdl's song count).

A parser never clamps silently: a percent outside 0-100 is not reported (the last good
value stands), and the first such value of a run comes back once as `Report.warning`, a
line for the job's log. The executor's use of it, per output line (stdout and stderr):

    report = parser.feed(line)
    if report is not None:
        if report.warning:
            log(f"[jobgate] {report.warning}")
        if report.percent is not None or report.message is not None:
            progress(report.percent, report.message)
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Report:
    """What one line said: a percent (0-100) and/or a message, and at most one warning."""

    percent: float | None = None
    message: str | None = None
    warning: str | None = None


class ProgressParser(Protocol):
    """Reads a run's output line by line; None when a line says nothing about progress."""

    def feed(self, line: str) -> Report | None: ...


ParserFactory = Callable[[], ProgressParser]


class _OnceWarner:
    """The one-warning-per-run rule shared by every parser."""

    def __init__(self) -> None:
        self._warned = False

    def _checked(self, percent: float, what: str) -> tuple[float | None, str | None]:
        """(percent, None) when 0-100, else (None, a warning the first time only)."""
        if 0.0 <= percent <= 100.0:
            return percent, None
        if self._warned or math.isnan(percent):
            return None, None
        self._warned = True
        return None, (f"progress: {what} gives {percent:.1f} %, outside 0-100; not shown "
                      "(the last value in range stands)")


# --- ffmpeg -------------------------------------------------------------------------------

_CLOCK = r"(-)?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)"
_DURATION = re.compile(r"^\s*Duration:\s*" + _CLOCK)
# `\btime=` does not match inside `out_time=` ('_' is a word character).
_STATS_TIME = re.compile(r"\btime=\s*" + _CLOCK)
_STATS_SPEED = re.compile(r"\bspeed=\s*(\S+)")
# The keys of a `-progress` block (ffmpeg 4 to 7), each alone on its line.
_BLOCK_KEYS = re.compile(r"^(frame|fps|stream_\d+_\d+_q|bitrate|total_size|out_time_us|"
                         r"out_time_ms|out_time|dup_frames|drop_frames|speed|progress)= *(\S*)$")


def _clock_s(match: re.Match[str], first: int = 1) -> float:
    sign, hours, minutes, seconds = match.group(first, first + 1, first + 2, first + 3)
    value = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return -value if sign else value


def clock(seconds: float) -> str:
    """00:12, 03:04, 1:02:03: what a person reads on a player."""
    sign = "-" if seconds < 0 else ""
    whole = int(abs(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}:{minutes:02d}:{secs:02d}"
    return f"{sign}{minutes:02d}:{secs:02d}"


class FfmpegProgress(_OnceWarner):
    """ffmpeg's own output: its `Duration:` line(s), then either the stats lines on stderr
    (`frame=… time=00:00:12.34 … speed=2.1x`) or `-progress` key=value blocks
    (`out_time_us=`, `out_time_ms=`, `out_time=`, `speed=`, `progress=continue|end`).

    Give `duration_s` when it is known up front (probed, or an output cut with `-t`): it
    then wins over the `Duration:` lines. Otherwise the longest input duration is used,
    which is the output's length unless the command cuts it. Without any duration the
    message still shows the time and speed, with no percent.
    """

    def __init__(self, duration_s: float | None = None) -> None:
        super().__init__()
        self.duration_s = duration_s if duration_s and duration_s > 0 else None
        self._given = self.duration_s is not None
        self._block: dict[str, str] = {}

    def feed(self, line: str) -> Report | None:
        if (m := _DURATION.match(line)) is not None:
            if not self._given:
                self.duration_s = max(self.duration_s or 0.0, _clock_s(m)) or None
            return None
        # A stats line (`frame=  75 fps=… time=…`) would also read as key=value: first.
        if (m := _STATS_TIME.search(line)) is not None:
            speed = _STATS_SPEED.search(line)
            # The final stats line reports the last size as `Lsize=`.
            return self._report(_clock_s(m), speed.group(1) if speed else None,
                                "Lsize=" in line)
        if (m := _BLOCK_KEYS.match(line.strip())) is not None:
            key, value = m.group(1), m.group(2)
            if key != "progress":
                self._block[key] = value
                return None
            block, self._block = self._block, {}
            return self._report(_block_time_s(block), block.get("speed"), value == "end")
        return None

    def _report(self, time_s: float | None, speed: str | None, end: bool) -> Report | None:
        if time_s is None and not end:
            return None
        parts = []
        if time_s is not None:
            parts.append(clock(time_s) + (f" of {clock(self.duration_s)}"
                                          if self.duration_s else ""))
        if speed and speed not in ("N/A", "0x"):
            parts.append(speed)
        message = ", ".join(parts) or None
        if end:
            return Report(100.0, message)
        if self.duration_s is None or time_s is None:
            return Report(None, message)
        percent, warning = self._checked(100.0 * time_s / self.duration_s,
                                         f"ffmpeg's time {clock(time_s)} of "
                                         f"{clock(self.duration_s)}")
        return Report(percent, message, warning)


def is_progress_block_line(line: str) -> bool:
    """Whether `line` is one of ffmpeg's `-progress` key=value lines: a dozen every half
    second, which the executor may leave out of the job's log once the parser has read
    them (the percent and message carry what they say)."""
    return _BLOCK_KEYS.match(line.strip()) is not None


def _block_time_s(block: dict[str, str]) -> float | None:
    # `out_time_ms` is in microseconds too (a long-standing ffmpeg quirk): read as
    # milliseconds it runs past 100 % a thousandth of the way in.
    for key in ("out_time_us", "out_time_ms"):
        raw = block.get(key, "")
        if raw.lstrip("-").isdigit():
            return int(raw) / 1_000_000
    if (m := re.fullmatch(_CLOCK, block.get("out_time", ""))) is not None:
        return _clock_s(m)
    return None


# --- yt-dlp -------------------------------------------------------------------------------

# Formats from yt-dlp's downloader/common.py (`report_progress`) and YoutubeDL.py:
#   [download]  42.3% of ~ 10.00MiB at  1.20MiB/s ETA 00:05 (frag 3/20)
#   [download] 100% of   10.00MiB in 00:00:03 at 2.93MiB/s
#   [download]   1.23MiB at  500.00KiB/s (00:00:02)          (total unknown)
#   [download] Downloading item 3 of 10                      (older: "video 3 of 10")
#   [download] NAME has already been downloaded
_YT_PERCENT = re.compile(r"^\[download\]\s+(?P<pct>-?[\d.]+)%\s+of\s+(?P<size>~?\s*\S+)"
                         r"(?P<rest>.*)$")
_YT_NO_TOTAL = re.compile(r"^\[download\]\s+(?P<size>[\d.]+\w*B)\s+at\s+(?P<speed>\S+)")
_YT_ITEM = re.compile(r"^\[download\] Downloading (?:item|video) (\d+) of (\d+)")
_YT_ALREADY = re.compile(r"^\[download\] .* has already been downloaded")
_YT_SPEED = re.compile(r"\bat\s+(Unknown speed|\S+)")
_YT_ETA = re.compile(r"\bETA\s+(Unknown|\S+)")
_YT_ELAPSED = re.compile(r"\bin\s+(\S+)")
_YT_STAGES = (("[Merger]", "merging formats"), ("[ExtractAudio]", "extracting audio"),
              ("[VideoConvertor]", "converting"), ("[FixupM3u8]", "fixing container"))


class YtDlpProgress(_OnceWarner):
    """yt-dlp's `[download]` lines (best with `--newline`; `\\r` redraws work too).

    In a playlist the percent is overall: item 3 of 10 at 50 % is 25 %. An item made of
    several files (video and audio fetched apart, then merged) runs 0-100 once per file.
    """

    def __init__(self) -> None:
        super().__init__()
        self.item: int | None = None
        self.items: int | None = None

    def feed(self, line: str) -> Report | None:
        if (m := _YT_ITEM.match(line)) is not None:
            self.item, self.items = int(m.group(1)), int(m.group(2))
            return self._report(0.0, None)
        if _YT_ALREADY.match(line):
            return self._report(100.0, "already downloaded")
        if (m := _YT_PERCENT.match(line)) is not None:
            size = m.group("size").replace(" ", "").lstrip("~")
            rest = m.group("rest")
            detail = size
            if (elapsed := _YT_ELAPSED.search(rest)) is not None:
                detail += f" in {elapsed.group(1)}"
            if (speed := _YT_SPEED.search(rest)) is not None:
                detail += f" at {speed.group(1)}"
            if (eta := _YT_ETA.search(rest)) is not None and eta.group(1) != "Unknown":
                detail += f", ETA {eta.group(1)}"
            try:
                item_percent = float(m.group("pct"))
            except ValueError:
                return Report(None, self._with_item(detail))
            return self._report(item_percent, detail)
        if (m := _YT_NO_TOTAL.match(line)) is not None:
            return Report(None, self._with_item(f"{m.group('size')} at {m.group('speed')}"))
        for prefix, stage in _YT_STAGES:
            if line.startswith(prefix):
                return Report(None, self._with_item(stage))
        return None

    def _with_item(self, detail: str | None) -> str:
        where = f"item {self.item} of {self.items}" if self.item and self.items else ""
        return ": ".join(part for part in (where, detail) if part)

    def _report(self, item_percent: float, detail: str | None) -> Report:
        percent, warning = self._checked(item_percent, "yt-dlp's download percent")
        if percent is not None and self.item and self.items:
            # Overall: whole items done before this one, plus this one's share.
            percent, warning = self._checked(
                100.0 * ((self.item - 1) + percent / 100.0) / self.items,
                f"yt-dlp's item {self.item} of {self.items}")
        return Report(percent, self._with_item(detail), warning)


# --- spotdl -------------------------------------------------------------------------------

# Formats from spotDL 4's sources (utils/search.py, download/downloader.py,
# download/progress_handler.py), logged one per line through rich:
#   Found 12 songs in My Playlist (Playlist)
#   Downloaded "Artist - Title": https://music.youtube.com/watch?v=…
#   Skipping Artist - Title (file already exists) (duplicate)
#   LookupError: No results found for song: Artist - Title       (notify_error)
#   3/12 complete                                                (--simple-tui)
# Rich wraps a line at the console's width (80 columns when not on a terminal, unless
# COLUMNS says otherwise), so a long name can end on the next line: a started
# `Downloaded "`/`Skipping` line without its end is held and joined with the next one.
_SP_FOUND = re.compile(r"^Found (\d+) songs? in (.+)$")
_SP_DOWNLOADED = re.compile(r'^Downloaded "(.+)":(?:\s+(\S+))?\s*$')
_SP_SKIPPING = re.compile(r"^Skipping (.+?) \((file already exists|skip file found)\)")
_SP_ERROR = re.compile(r"^([A-Z]\w*Error): (.+)$")
_SP_COMPLETE = re.compile(r"^(\d+)/(\d+) complete$")
_SP_STARTS = ('Downloaded "', "Skipping ")


class SpotdlProgress(_OnceWarner):
    """spotdl 4's console lines: a message per track, a percent once it said how many."""

    def __init__(self) -> None:
        super().__init__()
        self.total: int | None = None
        self.done = 0
        self._held = ""

    def feed(self, line: str) -> Report | None:
        text = line.strip()
        if self._held:
            joined, self._held = f"{self._held} {text}", ""
            if (report := self._read(joined)) is not None:
                return report
        report = self._read(text)
        if report is None and text.startswith(_SP_STARTS):
            self._held = text  # wrapped by rich, or not one of ours: one more line decides
        return report

    def _read(self, text: str) -> Report | None:
        if (m := _SP_FOUND.match(text)) is not None:
            self.total = int(m.group(1))
            return Report(0.0 if self.total else None, f"found {self.total} songs in "
                                                       f"{m.group(2)}")
        if (m := _SP_COMPLETE.match(text)) is not None:
            self.done, self.total = int(m.group(1)), int(m.group(2))
            return self._report(None)
        if (m := _SP_DOWNLOADED.match(text)) is not None:
            return self._track(f'downloaded "{m.group(1)}"')
        if (m := _SP_SKIPPING.match(text)) is not None:
            return self._track(f'skipped "{m.group(1)}" ({m.group(2)})')
        if (m := _SP_ERROR.match(text)) is not None:
            return self._track(f"{m.group(1)}: {m.group(2)}")
        return None

    def _track(self, what: str) -> Report:
        self.done += 1
        return self._report(what)

    def _report(self, what: str | None) -> Report:
        if not self.total:
            return Report(None, what if what else f"{self.done} done")
        where = f"track {self.done} of {self.total}"
        percent, warning = self._checked(100.0 * self.done / self.total,
                                         f"spotdl's {where}")
        return Report(percent, f"{where}: {what}" if what else where, warning)


# --- the regex form -----------------------------------------------------------------------

_UNIT_SCALE = {
    "": 1.0, "b": 1.0, "B": 1.0, "bytes": 1.0,
    "k": 1e3, "K": 1e3, "kB": 1e3, "KB": 1e3, "KiB": 1024.0,
    "M": 1e6, "MB": 1e6, "MiB": 1024.0**2,
    "G": 1e9, "GB": 1e9, "GiB": 1024.0**3,
    "T": 1e12, "TB": 1e12, "TiB": 1024.0**4,
    "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0,
}


class RegexProgress(_OnceWarner):
    """A kind's own regular expression, searched in each line.

    Groups: `percent`; or `current` and `total` (a percent from two numbers, with an
    optional `unit` for both or `current_unit` / `total_unit` each: B, KiB, MB, s, min…);
    `message` (else "12 of 30 MB" is made from current and total).
    """

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def feed(self, line: str) -> Report | None:
        if (m := self.pattern.search(line)) is None:
            return None
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        message = groups.get("message")
        percent: float | None = None
        warning: str | None = None
        if "percent" in groups:
            value = _number(groups["percent"])
            if value is not None:
                percent, warning = self._checked(value, "the progress pattern's percent")
        elif "current" in groups and "total" in groups:
            unit = groups.get("unit", "")
            units = groups.get("current_unit", unit), groups.get("total_unit", unit)
            current, total = _number(groups["current"]), _number(groups["total"])
            if message is None:
                message = (f"{groups['current']}{units[0]} of {groups['total']}{units[1]}"
                           .strip())
            if current is not None and total:
                scales = [_UNIT_SCALE.get(u.strip()) for u in units]
                if units[0].strip() == units[1].strip():
                    scales = [1.0, 1.0]
                if None in scales:
                    if not self._warned:
                        self._warned = True
                        warning = (f"progress: cannot compare units {units[0]!r} and "
                                   f"{units[1]!r}; no percent")
                else:
                    cur_scale, tot_scale = (s or 1.0 for s in scales)
                    percent, warning = self._checked(
                        100.0 * current * cur_scale / (total * tot_scale),
                        f"the progress pattern's {groups['current']} of {groups['total']}")
        if percent is None and message is None and warning is None:
            return None
        return Report(percent, message, warning)


def _number(text: str) -> float | None:
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A kind's progress regex, checked: ValueError with the reason if it cannot work."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    groups = set(compiled.groupindex)
    if ("current" in groups) != ("total" in groups):
        raise ValueError("(?P<current>…) and (?P<total>…) go together")
    if not groups & {"percent", "message", "current"}:
        raise ValueError("needs a named group (?P<percent>…), (?P<message>…), or "
                         "(?P<current>…) with (?P<total>…)")
    return compiled


# --- the registry -------------------------------------------------------------------------

_NAMED: dict[str, ParserFactory] = {
    "ffmpeg": FfmpegProgress,
    "yt-dlp": YtDlpProgress,
    "spotdl": SpotdlProgress,
}
NAMES: tuple[str, ...] = tuple(sorted(_NAMED))


def parser_for(setting: str) -> ParserFactory:
    """The factory for a kind's `progress` setting: a parser name or a regex.

    Call it once when the config is read (ValueError says what is wrong), then call the
    factory once per run. A name cannot be mistaken for a regex: a usable regex needs a
    named group, which no name has.
    """
    if setting in _NAMED:
        return _NAMED[setting]
    try:
        compiled = compile_pattern(setting)
    except ValueError as exc:
        raise ValueError(f"{setting!r} is not a parser name ({', '.join(NAMES)}) nor a "
                         f"usable regular expression: {exc}") from None
    return functools.partial(RegexProgress, compiled)
