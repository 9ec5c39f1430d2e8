"""Recipes: ready kinds for the real tools, named in `jobgate.toml` with `recipe = "NAME"`.

A recipe is a `[kinds.NAME]` table shipped with jobgate: the Python function that runs the
tool, its arguments' schema, and the settings a small shared server wants for it (memory
estimate, timeout, `max_running`, retries). A kind that names a recipe starts from that
table; each key it sets itself wins, and under `args` each argument's keys merge with the
recipe's (so `args.target_mb = { default = 8 }` changes only that default):

    [kinds.compress]
    recipe = "compress"
    max_running = 2

The recipes: `compress` (ffmpeg, `jobgate.media`), `analyze` (ffmpeg, `jobgate.analysis`),
`download` (yt-dlp) and `music` (spotdl), both in `jobgate.downloads`; a `download` kind
with `allow_private_urls = true` runs `download_job_any_address` (its connections are not
checked). `missing_tools_warnings` is the start-up check of `jobgate serve` and `jobgate
worker`: the programs the configured kinds need that this machine lacks, one line each.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobgate.media import AUDIO_CODECS, VIDEO_CODECS, missing_tools
from jobgate.ytdlp_guard import UNCHECKED_PROGRAM

if TYPE_CHECKING:
    from jobgate.config import Settings

_PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
            "slower", "veryslow"]
# yt-dlp's audio formats that `--audio-format` takes ("best" keeps the source's codec).
AUDIO_FORMATS = ("best", "mp3", "m4a", "opus", "vorbis", "flac", "wav", "aac", "alac")
# A yt-dlp format selector (`bv*[height<=720]+ba/b`, `mp4`, `22`): letters, digits and the
# selector's own signs; never a leading dash (it is also given as `--format=VALUE`).
_FORMAT_PATTERN = r"[A-Za-z0-9*+/()\[\]<>=!?^$~:.,_ ]{1,200}"


@dataclass(frozen=True)
class Recipe:
    """One ready kind: its `[kinds.NAME]` table and the programs it runs."""

    name: str
    table: dict[str, Any]
    tools: tuple[str, ...]  # what it cannot run without
    # Needed only for some arguments (download: ffmpeg to extract audio or merge formats).
    optional_tools: tuple[tuple[str, str], ...] = ()
    # The function a kind with `allow_private_urls = true` runs instead, when the tool's
    # own connections are checked too (download: every redirect and look-up of yt-dlp).
    any_address_function: str | None = None

    @property
    def function(self) -> str:
        """The `package.module:function` the recipe runs."""
        return str(self.table["function"])


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("compress", {
        "description": "Compress a video with ffmpeg to a target size in MB (target_mb), "
                       "a video bitrate (bitrate_kbps) or a quality (crf)",
        "function": "jobgate.media:compress_job",
        # x264 at 1080p with lookahead holds a few hundred MB; 4K more than twice that.
        "memory_mb": 600,
        "timeout": "3h",
        "max_running": 1,  # ffmpeg takes every core it finds: two at once only share them
        "max_attempts": 2,  # a bad input fails at once (not retried); a kill is retried
        "backoff": "30s",
        "nice": 10,  # the API and the other jobs stay responsive while it encodes
        "args": {
            "input": {"type": "path", "description": "the video to compress"},
            "target_mb": {"type": "number", "min": 0, "max": 100000, "default": 0,
                          "description": "target size in MB (0: not by size)"},
            "bitrate_kbps": {"type": "integer", "min": 0, "max": 200000, "default": 0,
                             "description": "video bitrate in kb/s (0: not by bitrate)"},
            "crf": {"type": "integer", "min": 0, "max": 63, "default": 23,
                    "description": "quality when neither size nor bitrate is given "
                                   "(lower is better; 18-28 is usual)"},
            "video_codec": {"type": "string", "choices": list(VIDEO_CODECS),
                            "default": "libx264"},
            "audio_codec": {"type": "string", "choices": list(AUDIO_CODECS),
                            "default": "aac"},
            "audio_kbps": {"type": "integer", "min": 0, "max": 512, "default": 128,
                           "description": "audio bitrate in kb/s (0: no audio)"},
            "preset": {"type": "string", "choices": _PRESETS, "default": "medium",
                       "description": "x264/x265 speed against size at equal quality"},
        },
    }, tools=("ffmpeg", "ffprobe")),
    Recipe("analyze", {
        "description": "Audio analysis with ffmpeg: duration, loudness (LUFS, true peak), "
                       "silences and levels, as the result and analysis.json",
        "function": "jobgate.analysis:analyze_job",
        "memory_mb": 150,
        "timeout": "30m",
        "max_running": 2,
        "max_attempts": 1,  # a local file fails the same way twice
        "nice": 5,
        "args": {
            "path": {"type": "path", "description": "an audio or video file"},
            "silence_db": {"type": "number", "min": -120, "max": 0, "default": -50.0,
                           "description": "below this level counts as silence (dBFS)"},
            "min_silence_s": {"type": "number", "min": 0.01, "max": 3600, "default": 0.5,
                              "description": "the shortest silence reported (seconds)"},
        },
    }, tools=("ffmpeg", "ffprobe")),
    Recipe("download", {
        "description": "Download a video or its audio with yt-dlp (a playlist item by item)",
        "function": "jobgate.downloads:download_job",
        "memory_mb": 300,  # yt-dlp itself, and ffmpeg merging or extracting audio
        "timeout": "2h",
        "max_running": 2,
        "max_attempts": 3,  # network drops and 5xx retry; 404 / unsupported URL do not
        "backoff": "1m",
        "backoff_max": "30m",
        "args": {
            "url": {"type": "url", "description": "the page or media address"},
            "format": {"type": "string", "pattern": _FORMAT_PATTERN, "default": "best",
                       "description": "yt-dlp's format selector: best, or e.g. "
                                      "bv*[height<=720]+ba/b"},
            "audio_only": {"type": "boolean", "default": False,
                           "description": "keep the audio only (extracted by ffmpeg)"},
            "audio_format": {"type": "string", "choices": list(AUDIO_FORMATS),
                             "default": "mp3", "description": "with audio_only"},
            "playlist": {"type": "boolean", "default": False,
                         "description": "a link to a video in a playlist: the whole list"},
            "max_items": {"type": "integer", "min": 1, "max": 1000, "default": 50,
                          "description": "at most this many items of a playlist"},
        },
    }, tools=("yt-dlp",), optional_tools=(("ffmpeg", "for audio_only and merging"),),
       any_address_function="jobgate.downloads:download_job_any_address"),
    Recipe("music", {
        "description": "Download songs from a Spotify link (track, album, playlist) "
                       "with spotdl",
        "function": "jobgate.downloads:music_job",
        "memory_mb": 400,
        "timeout": "3h",
        "max_running": 1,  # spotdl runs several downloads of its own at once
        "max_attempts": 3,
        "backoff": "1m",
        "backoff_max": "30m",
        "args": {
            "url": {"type": "url", "pattern": r"https://open\.spotify\.com/\S+",
                    "description": "an open.spotify.com link"},
            "format": {"type": "string", "choices": ["mp3", "m4a", "opus", "flac", "ogg",
                                                     "wav"], "default": "mp3"},
        },
    }, tools=("spotdl", "ffmpeg")),
)}


def kind_table(name: str, spec: Any, error: Callable[[str], Exception]) -> Any:
    """The `[kinds.NAME]` table with its recipe's keys filled in (the kind's own win).

    `spec` is returned as it is when it names no recipe; `error(msg)` makes the exception
    for an unknown recipe.
    """
    if not isinstance(spec, dict) or "recipe" not in spec:
        return spec
    key = f"kinds.{name}.recipe"
    recipe = RECIPES.get(spec["recipe"]) if isinstance(spec["recipe"], str) else None
    if recipe is None:
        raise error(f"{key}: expected one of {', '.join(RECIPES)}, got {spec['recipe']!r}")
    if "argv" in spec:
        raise error(f"kinds.{name}.argv: a recipe runs its own function; drop argv or recipe")
    table = copy.deepcopy(recipe.table)
    for k, value in spec.items():
        if k == "args" and isinstance(value, dict):
            args = table["args"]
            for arg, arg_spec in value.items():
                base = args.get(arg)
                args[arg] = {**base, **arg_spec} if isinstance(base, dict) and \
                    isinstance(arg_spec, dict) else arg_spec
        else:
            table[k] = value
    if recipe.any_address_function is not None and table.get("allow_private_urls") is True \
            and table.get("function") == recipe.function:
        table["function"] = recipe.any_address_function
    return table


def tool_found(tool: str) -> bool:
    """Whether `tool` can be run here; yt-dlp also as the `yt_dlp` module of this Python."""
    if tool == "yt-dlp" and importlib.util.find_spec("yt_dlp") is not None:
        return True
    return not missing_tools([tool])


def missing_tools_warnings(settings: Settings) -> list[str]:
    """One line per program a configured kind needs and this machine lacks: the tools of
    each recipe's function, and each command kind's argv[0]. For the log at start-up: a
    job of such a kind fails with "… is not installed on this server"."""
    by_function = {r.function: r for r in RECIPES.values()}
    by_function.update({r.any_address_function: r for r in RECIPES.values()
                        if r.any_address_function is not None})
    lines: list[str] = []
    for kind in settings.kinds.values():
        if kind.argv is not None:
            program = kind.argv[0]
            if "{" not in program and not tool_found(program):
                lines.append(f"kind {kind.name}: {program} is not installed on this server")
            continue
        recipe = by_function.get(kind.function or "")
        if recipe is None:
            continue
        for tool in recipe.tools:
            if not tool_found(tool):
                lines.append(f"kind {kind.name}: {tool} is not installed on this server"
                             + _how_to_install(tool))
            elif tool == "yt-dlp" and kind.function == recipe.function and \
                    importlib.util.find_spec("yt_dlp") is None:
                lines.append(f"kind {kind.name}: {UNCHECKED_PROGRAM}; its jobs fail")
        for tool, why in recipe.optional_tools:
            if not tool_found(tool):
                lines.append(f"kind {kind.name}: {tool} is not installed on this server "
                             f"(needed {why})")
    return lines


def _how_to_install(tool: str) -> str:
    hints = {"ffmpeg": "apt-get install ffmpeg", "ffprobe": "apt-get install ffmpeg",
             # the module: the program alone cannot have its connections checked
             "yt-dlp": "uv sync --extra media",
             "spotdl": "uv tool install spotdl, or pipx install spotdl"}
    return f" ({hints[tool]})" if tool in hints else ""

