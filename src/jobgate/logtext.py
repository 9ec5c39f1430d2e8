"""A job's output as log lines: split on line ends, `\\r` redraws collapsed, escapes cleaned.

Pure functions, no I/O. A program's output is split where a line ends (`\\n`) and where a
progress bar redraws its line (`\\r`): `split_ends`. A run of `\\r` redraws is one log line
whose text is the last non-empty redraw (`redrawn`), so a bar drawn 21 times is one line,
not 21, and does not fill the log's cap. What is stored keeps SGR colour sequences
(`ESC[…m`, which the page renders), and nothing else that would drive a terminal or hide
text: cursor moves, erase-line, OSC titles and clipboard writes, other escapes and C0/C1
controls but tab are taken out (`clean_line`). `plain` takes the colours out too.
"""

from __future__ import annotations

import re

# ESC [ params intermediates final: a CSI sequence. SGR (colours) is the one whose final is
# `m` and whose parameters are digits, `;` and `:` only: kept. An 8-bit CSI (U+009B) is
# taken out whole, SGR or not: the page renders only the 7-bit form.
_CSI = r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]"
# OSC (title, clipboard, hyperlink), DCS, SOS, PM, APC: up to their terminator (BEL or
# ESC \), or to the end of the text when it was cut before it.
_STRING = (r"\x1b[\]PX^_][\s\S]*?(?:\x07|\x1b\\|$)"
           r"|[\x90\x98\x9d\x9e\x9f][\s\S]*?(?:\x07|\x1b\\|\x9c|$)")
# A CSI cut short at the end of the text; any other escape: ESC, intermediates, a final
# (`ESC 7`, `ESC ( B`, `ESC c`); a lone ESC.
_OTHER = r"\x1b\[[0-?]*[ -/]*$|\x1b[ -/]*[0-~]|\x1b"
# C0 controls but tab, DEL and C1 controls left once the sequences above are out.
_CONTROL = r"[\x00-\x08\x0a-\x1f\x7f-\x9f]"
_ESCAPES = re.compile(f"{_STRING}|{_CSI}|{_OTHER}|{_CONTROL}")
SGR = re.compile(r"\x1b\[[0-9;:]*m")
_LINE_ENDS = re.compile(rb"([\r\n])")


def _keep_sgr(match: re.Match[str]) -> str:
    text = match.group()
    return text if SGR.fullmatch(text) else ""


def clean_line(text: str) -> str:
    """`text` with its SGR colour sequences kept and every other escape sequence and
    control character (tab kept) taken out."""
    if text.isprintable() and "\x1b" not in text:
        return text  # the common line: nothing to take out
    return _ESCAPES.sub(_keep_sgr, text)


def plain(text: str) -> str:
    """`text` as `clean_line` keeps it, without its colours either."""
    return SGR.sub("", clean_line(text))


def redrawn(text: str) -> str:
    """What a line of `\\r` redraws shows once drawn: its last segment that shows
    something (cleaned), or "" when none does."""
    for segment in reversed(text.split("\r")):
        shown = clean_line(segment)
        if shown:
            return shown
    return ""


def log_lines(text: str) -> list[str]:
    """The log lines of one text a job's code logged (`ctx.log`): one per `\\n`-ended line
    (a last `\\n` ends the text, not a line), each with its `\\r` redraws collapsed."""
    parts = text.replace("\r\n", "\n").removesuffix("\n").split("\n")
    return [redrawn(part) if "\r" in part else clean_line(part) for part in parts]


def split_ends(pending: bytes) -> tuple[list[tuple[bytes, bool]], bytes]:
    """Output read so far (`pending`, `\\r\\n` already made `\\n`) as the segments that
    ended, each with whether a `\\r` ended it (a redraw of its line comes next) rather than
    a `\\n`, and the rest, not yet ended."""
    pieces = _LINE_ENDS.split(pending)
    rest = pieces.pop()
    return [(pieces[i], pieces[i + 1] == b"\r") for i in range(0, len(pieces), 2)], rest
