"""Real media for the media tests, made by ffmpeg itself (testsrc, sine, anullsrc).

Without ffmpeg these tests fail, with the reason, rather than skip: CI installs Debian's
ffmpeg, and a skipped media test would hide that it did not.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def require_ffmpeg() -> None:
    """Fail (not skip) when ffmpeg or ffprobe is missing."""
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found on PATH: these tests run the real "
                    "programs (apt-get install ffmpeg)", pytrace=False)


def ffmpeg(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ffmpeg quietly; fail the test with its stderr if it fails."""
    done = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-y", *args],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"ffmpeg {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done


def make_video(path: Path, duration_s: float = 10.0, size: str = "320x180",
               crf: int = 20) -> Path:
    """A hard-to-compress clip (moving test pattern, grain) with a 440 Hz tone, at high
    quality (`crf`), so that compressing it to a few MB has to drop real bits."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=duration={duration_s:g}:size={size}:rate=25",
           "-f", "lavfi", "-i", f"sine=frequency=440:duration={duration_s:g}",
           "-vf", "noise=alls=20:allf=t", "-c:v", "libx264", "-preset", "ultrafast",
           "-crf", str(crf), "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "192k",
           str(path))
    return path


def make_tone_with_gap(path: Path, tone_s: float = 3.0, gap_s: float = 2.0,
                       tail_silence_s: float = 0.0) -> Path:
    """1 kHz sine at sine's default amplitude 1/8 (peak -18.06 dBFS), silence, tone again,
    optionally silence to the end; 48 kHz mono PCM."""
    inputs = [f"sine=frequency=1000:sample_rate=48000:duration={tone_s:g}",
              f"anullsrc=r=48000:cl=mono:d={gap_s:g}",
              f"sine=frequency=1000:sample_rate=48000:duration={tone_s:g}"]
    if tail_silence_s:
        inputs.append(f"anullsrc=r=48000:cl=mono:d={tail_silence_s:g}")
    args: list[str] = []
    for source in inputs:
        args += ["-f", "lavfi", "-i", source]
    labels = "".join(f"[{i}:a]" for i in range(len(inputs)))
    ffmpeg(*args, "-filter_complex", f"{labels}concat=n={len(inputs)}:v=0:a=1",
           "-c:a", "pcm_s16le", str(path))
    return path


def ebur128_integrated_lufs(path: Path) -> float:
    """ffmpeg's own integrated loudness of `path`, from a run of its own."""
    done = ffmpeg("-nostats", "-i", str(path), "-af", "ebur128", "-f", "null", "-")
    found = re.findall(r"^\s*I:\s*(-?[\d.]+) LUFS", done.stderr, re.MULTILINE)
    assert found, done.stderr[-2000:]
    return float(found[-1])


@dataclass
class FakeContext:
    """A job context as a Python kind sees it (jobgate.executor.JobContext's attributes),
    recording what the job reports; `cancel_when` decides from each report."""

    output_dir: Path
    reports: list[tuple[float | None, str | None]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    cancel_when: object = None
    _cancelled: bool = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def progress(self, percent: float | None = None, message: str | None = None) -> None:
        self.reports.append((percent, message))
        if callable(self.cancel_when) and self.cancel_when(percent, message):
            self._cancelled = True

    def log(self, line: str) -> None:
        self.lines.append(line)
