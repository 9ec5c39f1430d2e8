"""`compress` to a target size never makes a file bigger than it was: a clip already under
the target gets its streams copied (a new mp4 with +faststart, same size), one whose video
is under the bitrate the target allows is encoded at its own bitrate, and an input whose
streams the output's container cannot take (PCM audio in an mp4) is encoded instead. All
with clips ffmpeg makes here."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobgate.media import BYTES_PER_MB, compress_job, probe
from media_fixtures import FakeContext, ffmpeg, make_video, require_ffmpeg


def moov_before_mdat(path: Path) -> bool:
    head = path.read_bytes()[:1 << 20]
    return 0 <= head.find(b"moov") < head.find(b"mdat")


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 0.45 MB: 3 s of grainy test pattern at crf 30, with a tone."""
    require_ffmpeg()
    return make_video(tmp_path_factory.mktemp("small") / "small.mp4", 3.0, crf=30)


def context(tmp_path: Path) -> FakeContext:
    ctx = FakeContext(output_dir=tmp_path / "job")
    ctx.output_dir.mkdir()
    return ctx


def test_a_clip_under_the_target_is_kept_at_its_size(small_clip: Path, tmp_path: Path
                                                     ) -> None:
    size_in = small_clip.stat().st_size
    assert size_in < 0.9 * BYTES_PER_MB  # the premise: well under the 1 MB target
    ctx = context(tmp_path)
    result = compress_job(ctx, str(small_clip), target_mb=1, preset="ultrafast")
    out = ctx.output_dir / "out.mp4"
    assert sorted(p.name for p in ctx.output_dir.iterdir()) == ["out.mp4"]
    assert result["streams_copied"] is True and result["size_bytes"] == out.stat().st_size
    # The same streams in a new container: within a few kB of the input, never the
    # bigger file an encode at the target's bitrate makes.
    assert abs(out.stat().st_size - size_in) <= 8_000, (size_in, out.stat().st_size)
    assert moov_before_mdat(out)
    played, given = probe(out), probe(small_clip)
    assert (played.video_codec, played.audio_codec) == ("h264", "aac")
    assert played.duration_s == pytest.approx(given.duration_s, abs=0.1)
    message = ctx.reports[-1]
    assert message == (100.0, f"already under 1 MB: kept at {out.stat().st_size / 1e6:.2f} MB "
                              "(streams copied)")


def test_a_matroska_clip_under_the_target_becomes_an_mp4(small_clip: Path, tmp_path: Path
                                                         ) -> None:
    mkv = tmp_path / "small.mkv"
    ffmpeg("-i", str(small_clip), "-c", "copy", str(mkv))
    ctx = context(tmp_path)
    result = compress_job(ctx, str(mkv), target_mb=1, preset="ultrafast")
    out = ctx.output_dir / "out.mp4"
    assert result["streams_copied"] is True and moov_before_mdat(out)
    assert probe(out).format_name is not None and "mp4" in str(probe(out).format_name)


def test_streams_the_container_cannot_take_are_encoded_no_bigger(small_clip: Path,
                                                                  tmp_path: Path) -> None:
    # PCM audio does not go into an mp4: the copy fails, and it is encoded instead, the
    # video at its own bitrate.
    source = tmp_path / "pcm.mkv"
    ffmpeg("-i", str(small_clip), "-c:v", "copy", "-c:a", "pcm_s16le", str(source))
    size_in = source.stat().st_size
    assert size_in < 0.9 * BYTES_PER_MB
    ctx = context(tmp_path)
    result = compress_job(ctx, str(source), target_mb=1, preset="ultrafast")
    out = ctx.output_dir / "out.mp4"
    assert sorted(p.name for p in ctx.output_dir.iterdir()) == ["out.mp4"]
    assert "streams_copied" not in result and result["passes"] == 2
    assert any("the streams cannot be copied" in line for line in ctx.lines), ctx.lines
    assert out.stat().st_size <= size_in, (size_in, out.stat().st_size)
    assert (probe(out).video_codec, probe(out).audio_codec) == ("h264", "aac")
    last = ctx.reports[-1][1] or ""
    assert "encoded at its own bitrate" in last, last


def test_video_under_the_targets_bitrate_is_encoded_at_its_own(tmp_path: Path) -> None:
    # Over the target only by its PCM audio (1536 kb/s); its video is about 50 kb/s. The
    # target's 0.5 MB over 5 s would allow the video 650 kb/s: a file near 0.5 MB where
    # a tenth of that holds the same picture.
    require_ffmpeg()
    source = tmp_path / "loud.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=5:size=320x180:rate=25",
           "-f", "lavfi", "-i", "sine=frequency=440:duration=5:sample_rate=48000",
           "-c:v", "libx264", "-preset", "ultrafast", "-crf", "35", "-pix_fmt", "yuv420p",
           "-ac", "2", "-c:a", "pcm_s16le", str(source))
    given = probe(source)
    assert given.video_bit_rate_kbps is not None and given.video_bit_rate_kbps < 200
    assert source.stat().st_size > 0.5 * BYTES_PER_MB
    ctx = context(tmp_path)
    result = compress_job(ctx, str(source), target_mb=0.5, preset="ultrafast")
    size = result["size_bytes"]
    # At its own ~50-100 kb/s and 128 kb/s of audio: about 0.15 MB, not 0.5.
    assert size < 0.3 * BYTES_PER_MB, size
    last = ctx.reports[-1][1] or ""
    assert last.startswith(f"{size / 1e6:.2f} MB (target 0.5 MB; its video is at "), last
    assert "encoded at its own bitrate" in last
    assert probe(ctx.output_dir / "out.mp4").duration_s == pytest.approx(5.0, abs=0.2)
