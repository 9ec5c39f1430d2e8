"""One run's log lines on their way to the store, `\\r` redraws collapsed in place.

A worker buffers what a run prints between two reports (`take`): whole lines, and the
lines a progress bar redraws. A redraw of a line still buffered only changes its text,
at no cost; one of a line already written is a new text for that line (`take_redraws`),
written at most every `REDRAW_WRITE_S` per run (each write is a `job.log` event with
`replace` that every live client gets), and without waiting once the line has ended (its
final state) or the run has. No I/O here: the worker writes what these return.
"""

from __future__ import annotations

from jobgate.logtext import clean_line, log_lines

REDRAW_WRITE_S = 0.5  # the most often a run's redrawn lines are written (and sent)


class RunLog:
    """The log lines of one run not yet written. Lines are indexed in the order the run
    added them (0, 1, …); the store numbers them when they are written (`added`)."""

    def __init__(self) -> None:
        self.pending: list[str] = []  # lines added, not yet taken to be written
        self._next = 0  # the index of the next line added
        self._open: dict[str, int] = {}  # output stream -> index of its line being redrawn
        self._numbers: dict[int, int] = {}  # index -> number in the log, of lines written
        self._redraws: dict[int, str] = {}  # index -> new text of a line already written
        self._final = False  # a redrawn line ended: its text is written at the next report
        self._written_at = float("-inf")

    def add(self, text: str, stream: str | None = None, redraw: bool = False) -> None:
        """Add what a run printed: with no `stream`, a text logged whole (`ctx.log`: it may
        hold several lines); else one segment of output `stream`, ended by a `\\r`
        (`redraw`: the line it is on is drawn again next) or by a line's end."""
        if stream is None:
            for line in log_lines(text):
                self._append(line)
            return
        text = clean_line(text)
        index = self._open.get(stream)
        if redraw:
            if text:
                if index is None:
                    self._open[stream] = self._append(text)
                else:
                    self._set(index, text)
            return
        if index is None:
            if text:
                self._append(text)
            return
        del self._open[stream]
        if text:
            self._set(index, text)
        if index in self._redraws:
            self._final = True  # its final text, written at the next report
        else:
            self._numbers.pop(index, None)

    def waiting(self) -> bool:
        """Whether anything is left to write."""
        return bool(self.pending or self._redraws)

    def take(self) -> tuple[list[str], int]:
        """The lines to write now, and the index of the first of them."""
        lines, self.pending = self.pending, []
        return lines, self._next - len(lines)

    def added(self, start: int, count: int, first: int | None) -> None:
        """`count` lines from index `start` were written, numbered from `first` (None: the
        job is gone)."""
        if first is None:
            return
        # A line still being redrawn needs its number, and so does one that was redrawn
        # and ended while it was being written: its last text is still to be written.
        for index in {*self._open.values(), *self._redraws}:
            if start <= index < start + count:
                self._numbers[index] = first + index - start

    def take_redraws(self, now: float, force: bool = False) -> dict[int, str]:
        """The new texts of written lines to write now ({number: text}): every
        `REDRAW_WRITE_S` at most, unless a redrawn line ended or `force` (the run ended)."""
        if not self._redraws or not (force or self._final or
                                     now - self._written_at >= REDRAW_WRITE_S):
            return {}
        out = {self._numbers[i]: text for i, text in self._redraws.items() if i in self._numbers}
        open_lines = set(self._open.values())
        for index in self._redraws:
            if index not in open_lines:
                self._numbers.pop(index, None)
        self._redraws.clear()
        self._final, self._written_at = False, now
        return out

    def _append(self, text: str) -> int:
        self.pending.append(text)
        self._next += 1
        return self._next - 1

    def _set(self, index: int, text: str) -> None:
        start = self._next - len(self.pending)
        if index >= start:
            self.pending[index - start] = text
        else:
            self._redraws[index] = text
