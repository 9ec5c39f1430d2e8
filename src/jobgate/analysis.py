"""The `analyze` recipe: one ffmpeg pass over a file's first audio stream measuring its
loudness (EBU R128 integrated LUFS, loudness range, true peak), its silences
(silencedetect) and its levels (astats), returned as the job's result and written as
`analysis.json`. ffmpeg's own filters only: no Python audio library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jobgate.media import (
    BadInput,
    CommandFailed,
    JobParts,
    ReportFn,
    finite_float,
    job_reporter,
    local_path,
    probe,
    run_ffmpeg,
    tool_path,
)

_EBUR_I = re.compile(r"^\s*I:\s*(\S+) LUFS")
_EBUR_LRA = re.compile(r"^\s*LRA:\s*(\S+) LU\b")
_EBUR_PEAK = re.compile(r"^\s*Peak:\s*(\S+) dB")
_SILENCE_START = re.compile(r"\[silencedetect @ [^\]]*\] silence_start: (\S+)")
_SILENCE_END = re.compile(r"\[silencedetect @ [^\]]*\] silence_end: (\S+)")
_ASTATS = re.compile(r"\[Parsed_astats_\d+ @ [^\]]*\] ([^:]+): (\S+)")


def analyze_argv(path: str | Path, silence_db: float = -50.0,
                 min_silence_s: float = 0.5) -> list[str]:
    """One ffmpeg pass measuring loudness (EBU R128 with true peak), silences and levels."""
    chain = (f"ebur128=peak=true:framelog=verbose,"
             f"silencedetect=noise={silence_db:g}dB:d={min_silence_s:g},"
             f"astats=measure_perchannel=none")
    return [tool_path("ffmpeg"), "-hide_banner", "-nostdin", "-i", local_path(path),
            "-map", "0:a:0",
            "-af", chain, "-progress", "pipe:1", "-nostats", "-f", "null", "-"]


def parse_analysis(lines: Iterable[str], duration_s: float | None) -> dict[str, Any]:
    """The measures from ffmpeg's stderr for `analyze_argv`; -inf (silence) becomes None."""
    loudness: dict[str, float | None] = {}
    silences: list[dict[str, float | None]] = []
    stats: dict[str, float | None] = {}
    in_summary = in_overall = False
    for line in lines:
        if "Summary:" in line and "ebur128" in line:
            in_summary = True
        elif in_summary and (m := _EBUR_I.match(line)):
            loudness["integrated_lufs"] = _level(m.group(1))
        elif in_summary and (m := _EBUR_LRA.match(line)):
            loudness["loudness_range_lu"] = _level(m.group(1))
        elif in_summary and (m := _EBUR_PEAK.match(line)):
            loudness["true_peak_dbtp"] = _level(m.group(1))
        elif m := _SILENCE_START.search(line):
            silences.append({"start_s": max(0.0, _level(m.group(1)) or 0.0),
                             "end_s": None, "duration_s": None})
        elif (m := _SILENCE_END.search(line)) and silences:
            end = _level(m.group(1))
            silences[-1]["end_s"] = end
            if end is not None and silences[-1]["start_s"] is not None:
                silences[-1]["duration_s"] = round(end - (silences[-1]["start_s"] or 0), 3)
        elif (m := _ASTATS.search(line)) is not None:
            name = m.group(1).strip()
            if in_overall and name in ("RMS level dB", "Peak level dB", "RMS peak dB",
                                         "Crest factor", "DC offset", "Dynamic range"):
                stats[_snake(name)] = _level(m.group(2))
        elif "astats" in line and line.rstrip().endswith("] Overall"):
            in_overall = True  # the per-channel sections come first
    if silences and silences[-1]["end_s"] is None and duration_s is not None:
        # Silent to the end: silencedetect never saw it end.
        start = silences[-1]["start_s"] or 0.0
        silences[-1].update(end_s=round(duration_s, 3), duration_s=round(duration_s - start, 3))
    if "integrated_lufs" not in loudness:
        raise CommandFailed("ffmpeg printed no loudness summary (ebur128)")
    return {
        "duration_s": duration_s,
        **loudness,
        "silences": silences,
        "silence_total_s": round(sum(s["duration_s"] or 0.0 for s in silences), 3),
        "levels": stats,
    }


def _level(text: str) -> float | None:
    value = finite_float(text)
    return None if value is None else round(value, 3)


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace(" db", "_db")).strip("_")


def analyze(path: str | Path, silence_db: float = -50.0, min_silence_s: float = 0.5,
            on_report: ReportFn | None = None,
            cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Duration, loudness (integrated LUFS, true peak dBTP, range LU), silence spans and
    levels (RMS, peak) of a file's first audio stream, as a JSON-ready dict."""
    info = probe(path)
    if not info.has_audio:
        raise BadInput(f"{Path(path).name} has no audio stream")
    lines = run_ffmpeg(analyze_argv(path, silence_db, min_silence_s), on_report,
                       info.duration_s, cancelled)
    result = parse_analysis(lines, info.duration_s)
    result["audio_codec"] = info.audio_codec
    result["silence_threshold_db"] = silence_db
    return result


def analyze_job(ctx: JobParts, path: str, silence_db: float = -50.0,
                min_silence_s: float = 0.5) -> dict[str, Any]:
    """The `analyze` recipe as a Python kind: the result, also as `analysis.json`."""
    result = analyze(path, silence_db, min_silence_s, job_reporter(ctx),
                     lambda: ctx.cancelled)
    result["file"] = Path(path).name  # the name only: never the server's folders
    (ctx.output_dir / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    ctx.progress(100.0, _analysis_message(result))
    return result


def _analysis_message(result: dict[str, Any]) -> str:
    lufs, peak = result.get("integrated_lufs"), result.get("true_peak_dbtp")
    parts = [f"{lufs:.1f} LUFS" if lufs is not None else "silent",
             f"peak {peak:.1f} dBTP" if peak is not None else "",
             f"{len(result['silences'])} silences" if result["silences"] else ""]
    return ", ".join(p for p in parts if p)


