"""Text a job controls, made safe to print on a terminal.

A job's log lines, message, error, arguments, result, output names, kind and owner come
from whoever submitted it or from the program it ran. Printed raw, their control
characters would drive the user's terminal: set the window title, write the clipboard
(OSC 52), clear the screen, move the cursor over earlier lines, or reorder text (bidi
overrides). `printable` shows each such character as a visible escape instead (`\\x1b`,
`\\x9b`, `\\u202e`); tab stays, and so do newlines where the text may span lines. JSON
output needs none of this: its escapes (`\\u001b`) are already inert.
"""

from __future__ import annotations

import re

from jobgate.logtext import SGR, plain

# C0 controls but tab and newline, DEL, C1 controls (U+0080-U+009F, CSI U+009B among
# them), and the invisible marks that change the direction or order of what follows.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069]")
_UNSAFE_KEEP_NEWLINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028"
                                   "\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, newlines: bool = False) -> str:
    """`value` as text whose control characters are shown, not obeyed (see the module's
    docstring); with `newlines`, line breaks are kept."""
    text = value if isinstance(value, str) else str(value)
    return (_UNSAFE_KEEP_NEWLINES if newlines else _UNSAFE).sub(_escape, text)


def log_line_shown(line: str, colour: bool) -> str:
    """A log line as `jobgate logs` prints it: with `colour` (a terminal), its SGR colour
    sequences obeyed and reset at its end, everything else as `printable` shows it; else
    plain text, colours taken out."""
    if not colour:
        return printable(plain(line))
    parts = SGR.split(line)
    codes = SGR.findall(line)
    if not codes:
        return printable(line)
    shown = [printable(parts[0])]
    for code, part in zip(codes, parts[1:], strict=True):
        shown += [code, printable(part)]
    return "".join(shown) + "\x1b[0m"
