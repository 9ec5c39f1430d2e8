"""The progress parsers on real output: ffmpeg's from real runs here, yt-dlp's and spotdl's
from the formats in their sources (quoted by each test)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from jobgate.progress import (
    NAMES,
    FfmpegProgress,
    ProgressParser,
    Report,
    SpotdlProgress,
    YtDlpProgress,
    clock,
    compile_pattern,
    is_progress_block_line,
    parser_for,
)
from media_fixtures import ffmpeg, require_ffmpeg

# The brief's own command: two lavfi sources (which print `Duration: N/A`), 3 s.
LAVFI_ENCODE = ["-f", "lavfi", "-i", "testsrc=duration=3:size=320x240:rate=25",
                "-f", "lavfi", "-i", "sine=duration=3",
                "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]
# A fast machine encodes 3 s of video within one stats period and prints only the start and
# the end; reading the input at 4x real time gives every run several steps in between.
PACED = ["-readrate", "4"]


def paced(args: list[str]) -> list[str]:
    """`args` with each lavfi input read at the PACED rate."""
    out: list[str] = []
    for arg, following in zip(args, [*args[1:], ""], strict=True):
        if arg == "-f" and following == "lavfi":
            out += PACED
        out.append(arg)
    return out


MESSAGE = re.compile(r"^\d\d:\d\d of 00:03(, [\d.]+x)?$")


def feed_all(parser: ProgressParser, lines: list[str]) -> list[Report]:
    feed = parser.feed
    return [r for line in lines if (r := feed(line)) is not None]


def run_lines(args: list[str], stream: str) -> list[str]:
    """Real ffmpeg output, split the way the executor splits it (on \\n and \\r)."""
    done = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-y", *args],
                          capture_output=True, text=True, check=True)
    text = done.stdout if stream == "stdout" else done.stderr
    return [line for line in text.replace("\r", "\n").split("\n") if line]


def assert_rises_to_100(reports: list[Report]) -> list[float]:
    percents = [r.percent for r in reports if r.percent is not None]
    assert len(percents) >= 3, reports  # a start, at least one step, the end
    assert percents == sorted(percents), percents
    assert percents[-1] == 100.0
    assert all(0.0 <= p <= 100.0 for p in percents)
    assert not [r.warning for r in reports if r.warning], reports
    return percents


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 s file: an input whose `Duration:` line ffmpeg prints."""
    require_ffmpeg()
    path = tmp_path_factory.mktemp("progress") / "source.mp4"
    ffmpeg(*LAVFI_ENCODE, str(path))
    return path


# --- ffmpeg, real runs ---------------------------------------------------------------------

def test_ffmpeg_stderr_learns_duration_and_rises_to_100(source: Path, tmp_path: Path) -> None:
    lines = run_lines(["-stats_period", "0.1", *PACED, "-i", str(source), "-c:v", "libx264",
                       "-preset", "ultrafast", "-c:a", "aac", str(tmp_path / "out.mp4")],
                      "stderr")
    parser = FfmpegProgress()
    reports = feed_all(parser, lines)
    assert parser.duration_s == 3.0
    assert_rises_to_100(reports)
    assert all(MESSAGE.match(r.message or "") for r in reports), reports
    assert reports[-1].message is not None and reports[-1].message.startswith("00:03 of 00:03")


def test_ffmpeg_progress_pipe_rises_to_100(source: Path, tmp_path: Path) -> None:
    lines = run_lines(["-stats_period", "0.1", *PACED, "-i", str(source), "-c:v", "libx264",
                       "-preset", "ultrafast", "-c:a", "aac", "-progress", "pipe:1",
                       "-nostats", str(tmp_path / "out.mp4")], "stdout")
    assert "progress=end" in lines
    assert all(is_progress_block_line(line) for line in lines), lines
    # Only stdout here: the duration comes from the probe, as a recipe would give it.
    reports = feed_all(FfmpegProgress(duration_s=3.0), lines)
    assert_rises_to_100(reports)
    assert all(MESSAGE.match(r.message or "") for r in reports), reports


def test_ffmpeg_both_streams_of_the_briefs_lavfi_command(tmp_path: Path) -> None:
    """Lavfi inputs print `Duration: N/A`: no percent until a duration is given; then the
    final time (3.02 s of 3 s: AAC's last frame) is the end, not an overshoot warning."""
    require_ffmpeg()
    done = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-y", "-stats_period",
                           "0.1", *paced(LAVFI_ENCODE), "-progress", "pipe:1",
                           str(tmp_path / "out.mp4")],
                          capture_output=True, text=True, check=True)
    stderr = done.stderr.replace("\r", "\n").splitlines()
    stdout = done.stdout.splitlines()
    for lines in (stderr, stdout):
        unknown = feed_all(FfmpegProgress(), lines)
        # Without a duration: time and speed only, and 100 % at the end marker.
        assert [r.percent for r in unknown if r.percent is not None] == [100.0], unknown
        assert all(re.match(r"^\d\d:\d\d(, [\d.]+x)?$", r.message or "") for r in unknown)
        assert_rises_to_100(feed_all(FfmpegProgress(duration_s=3.0), lines))


# --- ffmpeg, the rules ---------------------------------------------------------------------

def block(out_time_us: int, speed: str = "2.1x", end: bool = False) -> list[str]:
    return [f"frame={out_time_us // 40000}", f"out_time_us={out_time_us}",
            f"out_time_ms={out_time_us}", f"out_time={out_time_us / 1e6:.6f}",
            f"speed={speed}", f"progress={'end' if end else 'continue'}"]


def test_ffmpeg_message_and_out_time_ms_is_microseconds() -> None:
    parser = FfmpegProgress()
    assert parser.feed("  Duration: 00:00:30.00, start: 0.000000, bitrate: 241 kb/s") is None
    # out_time_ms alone, as older ffmpeg sends it: microseconds despite its name.
    lines = ["frame=300", "out_time_ms=12340000", "speed=2.1x", "progress=continue"]
    (report,) = feed_all(parser, lines)
    assert report.percent == pytest.approx(41.1333, abs=1e-3)
    assert report == Report(report.percent, "00:12 of 00:30, 2.1x", None)


def test_ffmpeg_stats_line_format() -> None:
    parser = FfmpegProgress(duration_s=30.0)
    report = parser.feed("frame=  300 fps=60 q=28.0 size=  1024kB time=00:00:12.34 "
                         "bitrate= 679.8kbits/s speed=2.1x    ")
    assert report is not None and report.percent == pytest.approx(41.1333, abs=1e-3)
    assert report == Report(report.percent, "00:12 of 00:30, 2.1x", None)
    assert parser.feed("frame=   75 fps=0.0 q=-1.0 Lsize=      89kB time=00:00:03.01 "
                       "bitrate= 240.6kbits/s speed=7.98x") == \
        Report(100.0, "00:03 of 00:30, 7.98x", None)


def test_ffmpeg_longest_input_duration_unless_given() -> None:
    parser = FfmpegProgress()
    parser.feed("  Duration: 00:00:10.00, start: 0.000000, bitrate: 241 kb/s")
    parser.feed("  Duration: 00:01:00.50, start: 0.000000, bitrate: 128 kb/s")
    assert parser.duration_s == 60.5
    given = FfmpegProgress(duration_s=20.0)
    given.feed("  Duration: 01:00:00.00, start: 0.000000, bitrate: 128 kb/s")
    assert given.duration_s == 20.0
    assert clock(3723.4) == "1:02:03" and clock(59.9) == "00:59"


def test_ffmpeg_out_of_range_warns_once_and_is_not_shown() -> None:
    parser = FfmpegProgress(duration_s=10.0)
    reports = feed_all(parser, block(5_000_000) + block(12_000_000) + block(15_000_000)
                       + block(16_000_000, end=True))
    assert [r.percent for r in reports] == [50.0, None, None, 100.0]
    warnings = [r.warning for r in reports if r.warning]
    assert len(warnings) == 1 and "120.0 %" in warnings[0] and "00:12 of 00:10" in warnings[0]
    assert reports[1].message == "00:12 of 00:10, 2.1x"  # the message still says where
    # A negative time (priming samples) is out of range too: warned, not clamped to 0.
    early = FfmpegProgress(duration_s=10.0)
    report = early.feed("frame=    1 size=0kB time=-00:00:00.02 bitrate=N/A speed=N/A")
    assert report is not None and report.percent is None and report.warning


def test_progress_block_lines_are_told_apart() -> None:
    assert is_progress_block_line("out_time_us=3018594")
    assert is_progress_block_line("speed=5.97x") and is_progress_block_line("bitrate=N/A")
    assert not is_progress_block_line("bitrate= 240.4kbits/s speed=5.97x")  # a stats line
    assert not is_progress_block_line("frame=   75 fps=0.0 q=-1.0 Lsize=89kB time=00:00:03.01")
    assert not is_progress_block_line("[download]  42.3% of ~ 10.00MiB")


def test_ffmpeg_ignores_unrelated_lines() -> None:
    parser = FfmpegProgress(duration_s=10.0)
    for line in ("Stream mapping:", "  Stream #0:0 -> #0:0 (h264 (native) -> h264 (libx264))",
                 "[libx264 @ 0x55] frame I:1     Avg QP:20.00  size:  7637",
                 "    encoder         : Lavf59.27.100", "time=N/A"):
        assert parser.feed(line) is None, line


# --- yt-dlp --------------------------------------------------------------------------------
# Lines as yt-dlp's FileDownloader.report_progress writes them (yt_dlp/downloader/common.py:
# '%(_percent_str)s of %(_total_bytes_str)s at %(_speed_str)s ETA %(_eta_str)s', the `~`
# estimate form, the finished form '100% of %(_total_bytes_str)s in %(_elapsed_str)s at …',
# the unknown-total form '%(_downloaded_bytes_str)s at %(_speed_str)s (%(_elapsed_str)s)',
# `report_file_already_downloaded`), and YoutubeDL's playlist line "Downloading item N of M"
# ("Downloading video N of M" before 2022).

def test_ytdlp_single_download() -> None:
    parser = YtDlpProgress()
    reports = feed_all(parser, [
        "[youtube] abc: Downloading webpage",
        "[download] Destination: Some Video [abc].mp4",
        "[download]   0.0% of ~ 10.00MiB at  Unknown speed ETA Unknown ETA",
        "[download]  42.3% of ~ 10.00MiB at  1.20MiB/s ETA 00:05",
        "[download]  80.0% of   10.00MiB at    2.00MiB/s ETA 00:01 (frag 8/10)",
        "[download] 100% of   10.00MiB in 00:00:03 at 2.93MiB/s",
    ])
    assert [r.percent for r in reports] == [0.0, 42.3, 80.0, 100.0]
    assert reports[0].message == "10.00MiB at Unknown speed"
    assert reports[1].message == "10.00MiB at 1.20MiB/s, ETA 00:05"
    assert reports[2].message == "10.00MiB at 2.00MiB/s, ETA 00:01"
    assert reports[3].message == "10.00MiB in 00:00:03 at 2.93MiB/s"


def test_ytdlp_playlist_overall_percent() -> None:
    parser = YtDlpProgress()
    reports = feed_all(parser, [
        "[youtube:tab] Playlist Mix: Downloading 10 items of 10",
        "[download] Downloading item 1 of 10",
        "[download] 100% of    1.00MiB in 00:00:01 at 1.00MiB/s",
        "[download] Downloading item 3 of 10",
        "[download]  50.0% of    2.00MiB at  1.00MiB/s ETA 00:01",
        "[download] 100% of    2.00MiB in 00:00:02 at 1.00MiB/s",
        "[Merger] Merging formats into \"Three [c].mkv\"",
        "[download] Downloading video 4 of 10",  # the older wording
        "[download] Four [d].mp4 has already been downloaded",
    ])
    assert [r.percent for r in reports] == [0.0, 10.0, 20.0, 25.0, 30.0, None, 30.0, 40.0]
    assert reports[0].message == "item 1 of 10"
    assert reports[3].message == "item 3 of 10: 2.00MiB at 1.00MiB/s, ETA 00:01"
    assert reports[5].message == "item 3 of 10: merging formats"
    assert reports[7].message == "item 4 of 10: already downloaded"


def test_ytdlp_unknown_total_and_out_of_range() -> None:
    parser = YtDlpProgress()
    assert parser.feed("[download]    1.23MiB at  500.00KiB/s (00:00:02)") == \
        Report(None, "1.23MiB at 500.00KiB/s", None)
    first = parser.feed("[download] 104.5% of    1.00MiB at  1.00MiB/s ETA 00:00")
    again = parser.feed("[download] 110.0% of    1.00MiB at  1.00MiB/s ETA 00:00")
    assert first is not None and first.percent is None and "104.5 %" in (first.warning or "")
    assert again is not None and again.percent is None and again.warning is None
    assert parser.feed("[info] abc: Downloading 1 format(s): 22") is None


# --- spotdl --------------------------------------------------------------------------------
# Lines as spotDL 4 logs them: utils/search.py `"Found %s songs in %s (%s)"`,
# download/downloader.py `'Downloaded "%s": %s'` and `"Skipping %s (file already exists) %s"`,
# progress_handler.py `notify_error` → `"%s: %s", <exception class>, <exception>` (e.g.
# AudioProviderError, LookupError "No results found for song: …"), and the simple TUI's
# `"%s/%s complete"`. Rich writes them at 80 columns when not on a terminal.

def test_spotdl_track_by_track() -> None:
    parser = SpotdlProgress()
    reports = feed_all(parser, [
        "Processing query: https://open.spotify.com/playlist/37i9dQZF1E8UXBoz02kGID",
        "Found 4 songs in Road Trip (Playlist)",
        'Downloaded "Artist One - First Song": https://music.youtube.com/watch?v=aaaaaaaaaaa',
        "Skipping Artist Two - Second Song (file already exists) ",
        "LookupError: No results found for song: Artist Three - Third Song",
        "AudioProviderError: YT-DLP download error - https://music.youtube.com/watch?v=b",
    ])
    assert [r.percent for r in reports] == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert reports[0].message == "found 4 songs in Road Trip (Playlist)"
    assert reports[1].message == 'track 1 of 4: downloaded "Artist One - First Song"'
    assert reports[2].message == ('track 2 of 4: skipped "Artist Two - Second Song" '
                                  "(file already exists)")
    assert reports[3].message == ("track 3 of 4: LookupError: No results found for song: "
                                  "Artist Three - Third Song")
    assert reports[4].message is not None and reports[4].message.startswith(
        "track 4 of 4: AudioProviderError: YT-DLP download error")


def test_spotdl_lines_wrapped_by_rich() -> None:
    parser = SpotdlProgress()
    parser.feed("Found 2 songs in Long Names (Album)")
    # A name too long for 80 columns, broken at a space; a URL pushed to the next line.
    first = parser.feed('Downloaded "An Artist With A Long Name - A Song Title That Goes On '
                        'And')
    second = parser.feed('On (Remastered 2011)": https://music.youtube.com/watch?v=ccccccccccc')
    third = parser.feed('Downloaded "Short - Song":')
    fourth = parser.feed("https://music.youtube.com/watch?v=ddddddddddd")
    assert first is None and fourth is None
    assert second == Report(50.0, 'track 1 of 2: downloaded "An Artist With A Long Name - '
                                  'A Song Title That Goes On And On (Remastered 2011)"', None)
    assert third == Report(100.0, 'track 2 of 2: downloaded "Short - Song"', None)


def test_spotdl_single_song_and_simple_tui() -> None:
    parser = SpotdlProgress()  # one song: spotdl says no "Found N songs"
    assert parser.feed('Downloaded "Solo - Song": https://music.youtube.com/watch?v=e') == \
        Report(None, 'downloaded "Solo - Song"', None)
    tui = SpotdlProgress()
    assert tui.feed("2/5 complete") == Report(40.0, "track 2 of 5", None)
    over = SpotdlProgress()
    over.feed("Found 1 songs in One (Playlist)")
    over.feed('Downloaded "A - B": https://x')
    report = over.feed('Downloaded "C - D": https://y')  # more than it said: not 200 %
    assert report is not None and report.percent is None and report.warning


# --- the regex form and the registry -------------------------------------------------------

def test_regex_percent_and_message() -> None:
    parser = parser_for(r"progress=(?P<percent>[0-9.]+) (?P<message>.*)")()
    assert parser.feed("progress=40 step 2") == Report(40.0, "step 2", None)
    assert parser.feed("unrelated") is None
    over = parser.feed("progress=250 oops")
    assert over is not None and over.percent is None and "250.0 %" in (over.warning or "")
    assert parser.feed("progress=300 again") == Report(None, "again", None)  # warned once


def test_regex_current_total_with_units() -> None:
    parser = parser_for(r"(?P<current>[\d.]+) ?(?P<current_unit>[KMG]iB) of "
                        r"(?P<total>[\d.]+) ?(?P<total_unit>[KMG]iB)")()
    report = parser.feed("got 512KiB of 2MiB")
    assert report == Report(25.0, "512KiB of 2MiB", None)
    files = parser_for(r"file (?P<current>\d+)/(?P<total>\d+)")()
    assert files.feed("file 3/12 done") == Report(25.0, "3 of 12", None)
    shared = parser_for(r"(?P<current>\d+) of (?P<total>\d+) (?P<unit>frames)")()
    assert shared.feed("30 of 120 frames") == Report(25.0, "30frames of 120frames", None)
    odd = parser_for(r"(?P<current>\d+)(?P<current_unit>[a-z]+)/(?P<total>\d+)"
                     r"(?P<total_unit>[a-z]+)")()
    report = odd.feed("3apples/4pears")
    assert report is not None and report.percent is None and "units" in (report.warning or "")


def test_registry_and_validation() -> None:
    assert NAMES == ("ffmpeg", "spotdl", "yt-dlp")
    factory = parser_for("ffmpeg")
    one, two = factory(), factory()
    one.feed("  Duration: 00:00:10.00, start: 0.000000, bitrate: 1 kb/s")
    assert isinstance(one, FfmpegProgress) and isinstance(two, FfmpegProgress)
    assert one.duration_s == 10.0 and two.duration_s is None  # state is per run
    assert isinstance(parser_for("yt-dlp")(), YtDlpProgress)
    assert isinstance(parser_for("spotdl")(), SpotdlProgress)
    with pytest.raises(ValueError, match=r"'ffmpg' is not a parser name \(ffmpeg, spotdl, "
                                         r"yt-dlp\) nor a usable regular expression"):
        parser_for("ffmpg")
    with pytest.raises(ValueError, match="invalid regular expression"):
        compile_pattern("(?P<percent>[0-9")
    with pytest.raises(ValueError, match="go together"):
        compile_pattern(r"(?P<current>\d+)")
    with pytest.raises(ValueError, match="needs a named group"):
        compile_pattern(r"\d+%")
