"""The media recipes' logic with the real ffmpeg: compressing a generated clip to a target
size, analysing a generated tone, and the arithmetic and errors around them."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jobgate import media
from jobgate.analysis import analyze, analyze_job
from jobgate.media import (
    BYTES_PER_MB,
    BadInput,
    ToolMissing,
    compress_argv,
    compress_job,
    missing_tools,
    probe,
    run_ffmpeg,
    video_bitrate_kbps,
)
from jobgate.progress import Report
from jobgate.pychild import NonRetryable
from media_fixtures import (
    FakeContext,
    ebur128_integrated_lufs,
    make_tone_with_gap,
    make_video,
    require_ffmpeg,
)

SOURCE_S = 10.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_ffmpeg()
    return make_video(tmp_path_factory.mktemp("media") / "clip.mp4", SOURCE_S)


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_ffmpeg()
    return make_tone_with_gap(tmp_path_factory.mktemp("media") / "tone.wav")


def percents_of(reports: list[tuple[float | None, str | None]]) -> list[float]:
    return [p for p, _ in reports if p is not None]


def moov_before_mdat(path: Path) -> bool:
    head = path.read_bytes()[:1 << 20]
    return 0 <= head.find(b"moov") < head.find(b"mdat")


# --- probe ---------------------------------------------------------------------------------

def test_probe_reads_the_generated_clip(clip: Path) -> None:
    info = probe(clip)
    assert info.duration_s == pytest.approx(SOURCE_S, abs=0.1)
    assert (info.has_video, info.has_audio) == (True, True)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert (info.width, info.height) == (320, 180)
    assert info.size_bytes == clip.stat().st_size
    assert info.size_bytes > 3 * BYTES_PER_MB  # so that 1 and 2 MB are real compression


def test_probe_cover_art_is_not_video() -> None:
    info = media.parse_probe({
        "format": {"duration": "181.5", "format_name": "mp3"},
        "streams": [{"codec_type": "audio", "codec_name": "mp3"},
                    {"codec_type": "video", "codec_name": "mjpeg",
                     "disposition": {"attached_pic": 1}}]})
    assert (info.has_video, info.has_audio, info.duration_s) == (False, True, 181.5)


def test_probe_refuses_what_is_not_media(tmp_path: Path) -> None:
    require_ffmpeg()
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(BadInput, match=r"cannot read notes\.mp4 as media") as info:
        probe(text)
    assert str(tmp_path) not in str(info.value)  # ffprobe's own words, without our folders
    assert issubclass(BadInput, NonRetryable)


# --- the bitrate arithmetic ----------------------------------------------------------------

def test_video_bitrate_arithmetic() -> None:
    # 8 MB over 60 s is 1066.7 kb/s; 2 % kept for the container: 1045.3; less 128 audio.
    assert video_bitrate_kbps(8, 60, 128) == 917
    assert video_bitrate_kbps(8, 60, 128, overhead=0) == 938
    assert video_bitrate_kbps(25, 600, 0) == 326  # no audio


@pytest.mark.parametrize(("target_mb", "duration_s", "audio_kbps", "match"), [
    (1, 600, 128, r"too small for 600 s of audio at 128 kb/s alone \(9\.8 MB\)"),
    (9.8, 600, 128,
     r"leaves 0 kb/s for 600 s of video \(at least 32 kb/s needed, so at least 12\.2 MB\)"),
    (0, 60, 128, "more than 0 MB"),
    (8, 0, 128, "duration must be more than 0 s"),
    (8, float("nan"), 128, "duration must be more than 0 s"),
    (8, 60, -1, "audio bitrate must be >= 0"),
])
def test_video_bitrate_refusals(target_mb: float, duration_s: float, audio_kbps: float,
                                match: str) -> None:
    with pytest.raises(ValueError, match=match):
        video_bitrate_kbps(target_mb, duration_s, audio_kbps)


# --- compress argv -------------------------------------------------------------------------

def test_compress_argv_two_pass_for_a_target(tmp_path: Path) -> None:
    require_ffmpeg()
    first, second = compress_argv("in.mkv", tmp_path / "out.mp4", target_mb=8,
                                  duration_s=60, passlog=tmp_path / "log")
    for argv in (first, second):
        assert all(isinstance(a, str) for a in argv)
        assert argv[argv.index("-b:v") + 1] == "917k"
        assert argv[argv.index("-passlogfile") + 1] == str(tmp_path / "log")
        assert argv[argv.index("-progress"):][:3] == ["-progress", "pipe:1", "-nostats"]
    assert first[first.index("-pass") + 1] == "1" and "-an" in first
    assert first[-3:] == ["-f", "null", os.devnull]
    assert second[second.index("-pass") + 1] == "2"
    assert second[second.index("-b:a") + 1] == "128k"
    assert second[-3:] == ["-movflags", "+faststart", str(tmp_path / "out.mp4")]


def test_compress_argv_one_pass_forms() -> None:
    require_ffmpeg()
    (crf,) = compress_argv("in.mkv", "out.mp4", crf=28, preset="veryfast")
    assert crf[crf.index("-crf") + 1] == "28" and "-pass" not in crf
    assert crf[crf.index("-preset") + 1] == "veryfast"
    (rate,) = compress_argv("in.mkv", "out.mp4", bitrate_kbps=800, audio_codec="libopus",
                            audio_kbps=96)
    assert rate[rate.index("-b:v") + 1] == "800k" and rate[rate.index("-c:a") + 1] == "libopus"
    (vp9,) = compress_argv("in.mkv", "out.webm", crf=31, video_codec="libvpx-vp9",
                           audio_codec="libopus")
    assert "-movflags" not in vp9 and vp9[vp9.index("-crf") + 2:][:2] == ["-b:v", "0"]
    (silent,) = compress_argv("in.mkv", "out.mp4", target_mb=2, duration_s=10,
                              has_audio=False, two_pass=False)
    assert "-an" in silent and silent[silent.index("-b:v") + 1] == "1568k"  # all for video
    (hevc,) = compress_argv("in.mkv", "out.mp4", crf=28, video_codec="libx265")
    assert hevc[hevc.index("-tag:v") + 1] == "hvc1"
    # A relative name with a colon would be a protocol to ffmpeg (concat:, http:…).
    (named,) = compress_argv("concat:a.mkv", "b:c.mp4", crf=23)
    assert named[named.index("-i") + 1] == "./concat:a.mkv" and named[-1] == "./b:c.mp4"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({}, "exactly one of target_mb, bitrate_kbps or crf"),
    ({"crf": 23, "target_mb": 8, "duration_s": 60}, r"exactly one .*\(got target_mb, crf\)"),
    ({"target_mb": 8}, "needs the input's duration"),
    ({"crf": 23, "video_codec": "h264; rm -rf /"}, "is not one of libx264"),
    ({"crf": 23, "audio_codec": "wav"}, "audio codec 'wav' is not one of"),
    ({"crf": 23, "preset": "-f"}, "not a preset name"),
    ({"crf": 99}, "crf must be from 0 to 63"),
    ({"bitrate_kbps": 5}, "at least 32 kb/s"),
])
def test_compress_argv_refusals(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compress_argv("in.mkv", "out.mp4", **kwargs)


# --- compress, for real --------------------------------------------------------------------

@pytest.mark.parametrize("target_mb", [1.0, 2.0])
def test_compress_to_target_size(clip: Path, tmp_path: Path, target_mb: float) -> None:
    info = probe(clip)
    out = tmp_path / "out.mp4"
    commands = compress_argv(clip, out, target_mb=target_mb, preset="ultrafast",
                             duration_s=info.duration_s, passlog=tmp_path / "pass")
    assert len(commands) == 2
    reports: list[Report] = []
    for argv in commands:
        run_ffmpeg(argv, reports.append, info.duration_s)
    size = out.stat().st_size
    print(f"target {target_mb:g} MB -> {size} bytes ({size / BYTES_PER_MB / target_mb:.3f} "
          "of target)")
    assert abs(size - target_mb * BYTES_PER_MB) <= 0.10 * target_mb * BYTES_PER_MB, size
    result = probe(out)  # playable: ffprobe reads it back whole
    assert result.duration_s == pytest.approx(info.duration_s, abs=0.2)
    assert (result.video_codec, result.audio_codec) == ("h264", "aac")
    assert moov_before_mdat(out)  # +faststart
    assert not [r.warning for r in reports if r.warning]


def test_compress_job_reports_and_cleans_up(clip: Path, tmp_path: Path) -> None:
    ctx = FakeContext(output_dir=tmp_path / "job")
    ctx.output_dir.mkdir()
    # A string, as a schema taken from the signature passes `float | None` arguments.
    # The other two at the defaults a kind's schema would give them: the size wins.
    result = compress_job(ctx, str(clip), target_mb="1.5",  # type: ignore[arg-type]  # as sent
                          bitrate_kbps=0, crf=23, preset="ultrafast")
    assert result["passes"] == 2 and result["output"] == "out.mp4"
    assert sorted(p.name for p in ctx.output_dir.iterdir()) == ["out.mp4"]  # no pass logs
    assert abs(result["size_bytes"] - 1.5 * BYTES_PER_MB) <= 0.15 * BYTES_PER_MB
    percents = percents_of(ctx.reports)
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert 50.0 in percents  # the end of pass 1 is half of the job
    messages = [m for _, m in ctx.reports if m]
    assert any(m.startswith("pass 2 of 2: ") and " of 00:10" in m for m in messages), messages
    assert ctx.lines and not [line for line in ctx.lines if str(tmp_path) in line]


def test_ffmpeg_failure_is_not_retried_and_names_no_folders(tmp_path: Path) -> None:
    require_ffmpeg()
    bad = tmp_path / "half.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    argv = ["ffmpeg", "-hide_banner", "-nostdin", "-i", str(bad), "-f", "null", "-"]
    with pytest.raises(media.CommandFailed, match=r"ffmpeg exit code \d+: .*half\.mp4") as info:
        run_ffmpeg(argv)
    assert isinstance(info.value, NonRetryable) and str(tmp_path) not in str(info.value)


def test_compress_job_by_quality_is_one_pass(clip: Path, tmp_path: Path) -> None:
    ctx = FakeContext(output_dir=tmp_path / "job")
    ctx.output_dir.mkdir()
    result = compress_job(ctx, str(clip), target_mb=0, bitrate_kbps=0, crf=35,
                          preset="ultrafast", audio_kbps=64)
    assert result["passes"] == 1 and result["target_mb"] is None
    assert probe(ctx.output_dir / "out.mp4").duration_s == pytest.approx(SOURCE_S, abs=0.2)
    percents = percents_of(ctx.reports)
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert not [m for _, m in ctx.reports if m and m.startswith("pass ")]


def test_cancelled_compress_leaves_no_output_and_no_ffmpeg(clip: Path, tmp_path: Path) -> None:
    ctx = FakeContext(output_dir=tmp_path / "job",
                      cancel_when=lambda percent, message: (message or "").startswith(
                          "pass 2 of 2") and (percent or 0) > 50)
    ctx.output_dir.mkdir()
    before = set(_ffmpeg_pids())
    with pytest.raises(InterruptedError):
        compress_job(ctx, str(clip), target_mb=1.0, preset="ultrafast")
    assert list(ctx.output_dir.iterdir()) == []  # the truncated out.mp4 is gone
    assert set(_ffmpeg_pids()) <= before


def _ffmpeg_pids() -> list[int]:
    me = str(os.getpid())
    done = subprocess.run(["ps", "-o", "pid=,ppid=,comm=", "-e"], capture_output=True,
                          text=True, check=True)
    return [int(pid) for pid, ppid, comm in
            (line.split(None, 2) for line in done.stdout.splitlines() if line.strip())
            if ppid == me and comm.startswith("ffmpeg")]


# --- analyze -------------------------------------------------------------------------------

def test_analyze_matches_ffmpegs_own_loudness(tone: Path) -> None:
    result = analyze(tone)
    reference = ebur128_integrated_lufs(tone)
    print(f"analyze: {result['integrated_lufs']} LUFS, ffmpeg ebur128 alone: {reference} LUFS")
    assert result["integrated_lufs"] == pytest.approx(reference, abs=0.5)
    # A 1 kHz sine at peak -18.06 dBFS (sine's default amplitude 1/8) measures about 3 dB
    # under its peak: -21 LUFS, whatever the build.
    assert result["integrated_lufs"] == pytest.approx(-21.1, abs=0.5)
    assert result["true_peak_dbtp"] == pytest.approx(-18.06, abs=0.5)
    assert result["levels"]["peak_level_db"] == pytest.approx(-18.06, abs=0.1)
    assert result["levels"]["rms_level_db"] < result["levels"]["peak_level_db"]
    assert result["duration_s"] == pytest.approx(8.0, abs=0.05)
    (gap,) = result["silences"]
    assert gap["start_s"] == pytest.approx(3.0, abs=0.05)
    assert gap["end_s"] == pytest.approx(5.0, abs=0.05)
    assert gap["duration_s"] == pytest.approx(2.0, abs=0.05)
    json.dumps(result, allow_nan=False)  # JSON as it is: no -inf, no NaN


def test_analyze_silence_to_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_ffmpeg()
    make_tone_with_gap(tmp_path / "live: tail.wav", tone_s=1, gap_s=1, tail_silence_s=2)
    monkeypatch.chdir(tmp_path)
    result = analyze("live: tail.wav")  # relative, with a colon: still a file
    assert [s["start_s"] for s in result["silences"]] == pytest.approx([1.0, 3.0], abs=0.05)
    assert result["silences"][-1]["end_s"] == pytest.approx(5.0, abs=0.05)
    assert result["silence_total_s"] == pytest.approx(3.0, abs=0.1)


def test_analyze_job_writes_analysis_json(tone: Path, tmp_path: Path) -> None:
    ctx = FakeContext(output_dir=tmp_path / "job")
    ctx.output_dir.mkdir()
    result = analyze_job(ctx, str(tone))
    written = json.loads((ctx.output_dir / "analysis.json").read_text())
    assert written == result and result["file"] == "tone.wav"
    assert str(tone.parent) not in json.dumps(result)  # no server paths in the result
    percents = percents_of(ctx.reports)
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert ctx.reports[-1][1] is not None and "LUFS" in ctx.reports[-1][1]


def test_analyze_refuses_a_file_without_audio(tmp_path: Path) -> None:
    require_ffmpeg()
    silent = tmp_path / "picture.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i",
                    "testsrc=duration=1:size=64x64:rate=5", str(silent)], check=True)
    with pytest.raises(BadInput, match=r"picture\.mp4 has no audio stream"):
        analyze(silent)


# --- missing programs ----------------------------------------------------------------------

def test_tool_missing_when_ffmpeg_is_not_on_path(tone: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ToolMissing, match=r"^ffprobe is not installed on this server$"):
        analyze(tone)
    with pytest.raises(ToolMissing, match=r"^ffmpeg is not installed on this server$") as info:
        compress_argv("in.mkv", "out.mp4", crf=23)
    assert isinstance(info.value, NonRetryable) and info.value.tool == "ffmpeg"
    assert missing_tools(["ffmpeg", "yt-dlp", "ffmpeg", "/bin/sh"]) == ["ffmpeg", "yt-dlp"]


def test_missing_tools_with_ffmpeg_installed() -> None:
    require_ffmpeg()
    assert missing_tools(["ffmpeg", "ffprobe", "sh"]) == []
    assert missing_tools(["jobgate-no-such-program", "/no/such/ffmpeg"]) == [
        "jobgate-no-such-program", "/no/such/ffmpeg"]


def test_run_ffmpeg_stops_on_cancel(tmp_path: Path) -> None:
    """A cancel stops a running ffmpeg within a second and says so."""
    require_ffmpeg()
    argv = ["ffmpeg", "-hide_banner", "-nostdin", "-re", "-f", "lavfi", "-i",
            "sine=duration=60", "-progress", "pipe:1", "-nostats", "-f", "null", "-"]
    flag = threading.Event()
    threading.Timer(1.0, flag.set).start()
    started = time.monotonic()
    with pytest.raises(InterruptedError):
        run_ffmpeg(argv, None, 60.0, flag.is_set)
    assert time.monotonic() - started < 8
