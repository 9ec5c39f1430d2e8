"""A job's log, the pure parts: what a capped log keeps (its head and its tail, one gap
between, `moves.kept_log`) and where the gap line stands in a page read in order; output
split on line ends and `\\r` redraws, colours kept and other escapes taken out
(`logtext`); a run's lines on their way to the store, redraws collapsed and written at
most every half second (`runlog.RunLog`)."""

from __future__ import annotations

from jobgate import moves
from jobgate.cli import _print_event_lines
from jobgate.logtext import clean_line, log_lines, plain, redrawn, split_ends
from jobgate.runlog import REDRAW_WRITE_S, RunLog
from jobgate.terminal import log_line_shown


def numbered(first: int, last: int) -> list[str]:
    return [f"line {n}" for n in range(first, last + 1)]


def kept_after(batches: list[int], cap: int) -> tuple[set[int], tuple[int, int] | None]:
    """The line numbers a log keeps after batches of these sizes, run as a backend does."""
    stored: set[int] = set()
    count, dropped = 0, None
    for size in batches:
        kept = moves.kept_log(numbered(count + 1, count + size), count, cap, dropped)
        if kept.delete is not None:
            first, last = kept.delete
            assert all(first <= n <= last for n in stored & set(range(first, last + 1)))
            stored -= set(range(first, last + 1))
        for start, run in kept.runs:
            assert run == numbered(start, start + len(run) - 1)  # true numbers
            stored |= set(range(start, start + len(run)))
        count, dropped = count + size, kept.dropped
    return stored, dropped


# --- the keep rule ---------------------------------------------------------------------------

def test_a_log_within_its_cap_keeps_every_line():
    kept = moves.kept_log(["a", "b"], 3, 10)
    assert kept == moves.KeptLog([(4, ["a", "b"])], None, None)
    assert kept_after([4, 6], 10) == (set(range(1, 11)), None)


def test_a_capped_log_keeps_its_first_half_and_its_last_lines():
    assert kept_after([12_000], 10_000) == (
        set(range(1, 5_001)) | set(range(7_001, 12_001)), (5_001, 7_000))
    # The same, line by line and in batches of any size: the rule does not depend on them.
    assert kept_after([1] * 25, 10) == (set(range(1, 6)) | set(range(21, 26)), (6, 20))
    assert kept_after([3, 7, 1, 9, 5], 10) == (set(range(1, 6)) | set(range(21, 26)), (6, 20))


def test_a_batch_past_the_cap_deletes_one_range_of_stored_lines():
    kept = moves.kept_log(["x"] * 20, 9_990, 10_000)
    assert kept.runs == [(9_991, ["x"] * 20)]
    assert kept.delete == (5_001, 5_010) and kept.dropped == (5_001, 5_010)
    later = moves.kept_log(["y"] * 3, 10_010, 10_000, kept.dropped)
    assert later.delete == (5_011, 5_013) and later.dropped == (5_001, 5_013)


def test_a_batch_wider_than_the_gap_keeps_its_head_and_tail_lines_only():
    kept = moves.kept_log(numbered(1, 30), 0, 10)
    assert kept.runs == [(1, numbered(1, 5)), (26, numbered(26, 30))]
    assert kept.delete is None and kept.dropped == (6, 25)


def test_a_cap_of_zero_keeps_nothing_and_counts_everything():
    assert kept_after([4, 4], 0) == (set(), (1, 8))


def test_a_gap_keeps_its_first_line_when_the_cap_changes():
    _, dropped = kept_after([30], 10)
    assert dropped == (6, 25)
    kept = moves.kept_log(["z"], 30, 100, dropped)  # a larger cap: the gap stays as it is
    assert kept.runs == [(31, ["z"])] and kept.delete is None and kept.dropped == (6, 25)


# --- the gap line ----------------------------------------------------------------------------

ROWS = [(n, f"line {n}") for n in (*range(1, 6), *range(21, 26))]
GAP = moves.gap_line((6, 20))


def test_the_gap_line_says_how_many_and_which():
    assert GAP == ("[jobgate] 15 more lines not kept (lines 6-20; worker.log_max_lines "
                   "keeps the first and the last lines)")


def test_a_page_across_the_gap_has_the_gap_line_in_its_place():
    page = moves.with_gap_line(ROWS, 0, 100, (6, 20))
    assert page == [*ROWS[:5], (6, GAP), *ROWS[5:]]
    # A page that ends before the gap has no gap line; the next one starts with it.
    assert moves.with_gap_line(ROWS[:5], 0, 5, (6, 20)) == ROWS[:5]
    assert moves.with_gap_line(ROWS[5:], 5, 3, (6, 20)) == [(6, GAP), *ROWS[5:7]]
    # A reader past the gap's first line reads the tail on.
    assert moves.with_gap_line(ROWS[5:], 6, 100, (6, 20)) == ROWS[5:]
    assert moves.with_gap_line(ROWS, 0, 100, None) == ROWS
    assert moves.dropped_count((6, 20)) == 15 and moves.dropped_count(None) == 0
    assert moves.is_gap_line(GAP) and not moves.is_gap_line("line 6")


# --- escapes ---------------------------------------------------------------------------------

def test_colours_are_kept_and_every_other_escape_is_taken_out():
    assert clean_line("\x1b[1;31mred\x1b[0m and \x1b[38;5;208morange\x1b[m") == \
        "\x1b[1;31mred\x1b[0m and \x1b[38;5;208morange\x1b[m"
    assert clean_line("\x1b[2K\x1b[1G[download]  50.0%\x1b[K") == "[download]  50.0%"
    assert clean_line("a\x1b]0;title\x07b\x1b]52;c;cHduZWQ=\x1b\\c") == "abc"  # OSC
    assert clean_line("\x1b[?25lhidden cursor\x1b[?25h\x1b[2J\x1b[H") == "hidden cursor"
    assert clean_line("tab\tkept, bell\x07 and \x00nul\x7f out") == \
        "tab\tkept, bell and nul out"
    assert clean_line("\x9b2J8-bit CSI\x9b31m too\x85") == "8-bit CSI too"
    assert clean_line("\x1b(Bcharset\x1b7saved\x1bc") == "charsetsaved"
    assert clean_line("cut short \x1b[3") == "cut short "
    assert clean_line("cut title \x1b]0;never ends") == "cut title "
    assert clean_line("lone \x1b") == "lone "
    assert clean_line("é ünïcode \u202e kept") == "é ünïcode \u202e kept"
    assert clean_line("\x1b[>4;2mnot SGR") == "not SGR"


def test_plain_takes_the_colours_out_too():
    assert plain("\x1b[32mok\x1b[0m \x1b[2Kdone") == "ok done"


def test_a_terminal_gets_the_colours_a_file_plain_text():
    line = "\x1b[31mred\x1b[0m \x1b]0;t\x07x"
    assert log_line_shown(line, colour=True) == "\x1b[31mred\x1b[0m \\x1b]0;t\\x07x\x1b[0m"
    assert log_line_shown(line, colour=False) == "red x"
    assert log_line_shown("no colour", colour=True) == "no colour"


# --- \r redraws ------------------------------------------------------------------------------

BAR = "".join(f"\r\x1b[K[download] {p:5.1f}%" for p in range(0, 101, 5))  # 21 redraws


def test_a_line_of_redraws_shows_its_last_non_empty_segment():
    assert redrawn(BAR) == "[download] 100.0%"
    assert redrawn("10%\r50%\r\r\x1b[K\r") == "50%"
    assert redrawn("\r\r") == ""


def test_text_logged_whole_is_split_into_lines_with_redraws_collapsed():
    assert log_lines("one") == ["one"]
    assert log_lines("") == [""]
    assert log_lines("a\nb\r\nc 1%\rc 2%\n") == ["a", "b", "c 2%"]
    assert log_lines("\x1b[31mred\x1b[0m\x1b[K") == ["\x1b[31mred\x1b[0m"]


def test_output_splits_where_lines_end_and_where_they_are_redrawn():
    assert split_ends(b"a\rb\nc\r\rd") == (
        [(b"a", True), (b"b", False), (b"c", True), (b"", True)], b"d")
    assert split_ends(b"no end yet") == ([], b"no end yet")


# --- a run's lines on their way to the store -------------------------------------------------

def test_a_progress_bar_is_one_line_however_often_it_is_drawn():
    log = RunLog()
    log.add("starting")
    for segment in BAR.split("\r")[1:]:
        log.add(segment, "err", True)
    log.add("", "err", False)  # the \n that ends the bar
    log.add("done", "out")
    assert log.take() == (["starting", "[download] 100.0%", "done"], 0)
    assert not log.waiting()


def test_a_bar_redrawn_after_its_line_was_written_is_updated_in_place():
    log = RunLog()
    log.add("before", "out", False)
    log.add("  5%", "err", True)
    lines, start = log.take()
    assert (lines, start) == (["before", "  5%"], 0)
    log.added(start, len(lines), 41)  # the store numbered them 41 and 42
    log.add(" 50%", "err", True)
    log.add("a line between", "out", False)  # another stream's line does not end the bar
    assert log.take_redraws(100.0) == {42: " 50%"}
    log.add(" 60%", "err", True)
    assert log.take_redraws(100.0 + REDRAW_WRITE_S / 2) == {}  # held back a moment
    assert log.waiting()
    assert log.take_redraws(100.0 + REDRAW_WRITE_S) == {42: " 60%"}
    log.add(" 70%", "err", True)
    log.add("100%", "err", False)  # the line ends: its final text goes at once
    assert log.take_redraws(100.0 + REDRAW_WRITE_S + 0.01) == {42: "100%"}
    assert log.take() == (["a line between"], 2)
    assert not log.waiting()


def test_a_bar_that_ends_while_its_first_draw_is_being_written_keeps_its_last_draw():
    log = RunLog()
    log.add("  0%", "err", True)
    lines, start = log.take()  # on its way to the store...
    log.add(" 50%", "err", True)
    log.add("100%", "err", False)  # ... while the bar is drawn again and ends
    log.added(start, len(lines), 7)  # the store numbered it 7
    assert log.take_redraws(0.0) == {7: "100%"}
    assert not log.waiting()


def test_the_run_s_end_writes_what_is_held_back():
    log = RunLog()
    log.add("1%", "out", True)
    lines, start = log.take()
    log.added(start, len(lines), 1)
    assert log.take_redraws(0.0) == {}
    log.add("2%", "out", True)
    assert log.take_redraws(0.1) == {1: "2%"}
    log.add("3%", "out", True)
    assert log.take_redraws(0.2) == {}
    assert log.take_redraws(0.2, force=True) == {1: "3%"}


def test_empty_segments_and_escape_only_redraws_add_nothing():
    log = RunLog()
    log.add("", "out", False)
    log.add("\x1b[K", "out", True)
    log.add("", "out", False)
    log.add("", None)  # text logged whole is a line even when empty
    assert log.take() == ([""], 0)


# --- jobgate logs --follow -------------------------------------------------------------------

def test_follow_draws_a_redraw_over_its_line_on_a_terminal_and_prints_it_to_a_file(capsys):
    assert _print_event_lines({"first": 1, "lines": ["a", "\x1b[32m 5%\x1b[0m"]}, 0, True) == 2
    assert _print_event_lines({"first": 2, "lines": ["\x1b[32m50%\x1b[0m"], "replace": True},
                              2, True) == 2
    assert _print_event_lines({"first": 9, "lines": ["nine"]}, 2, True) == 9
    assert capsys.readouterr().out == (
        "a\n\x1b[32m 5%\x1b[0m\x1b[0m\n\x1b[1F\x1b[2K\x1b[32m50%\x1b[0m\x1b[0m\n"
        "[jobgate] 6 more lines not kept\nnine\n")
    assert _print_event_lines({"first": 2, "lines": ["\x1b[32m100%\x1b[0m"],
                               "replace": True}, 9, False) == 9
    assert capsys.readouterr().out == "100%\n"


def test_a_line_read_in_pieces_shows_as_far_as_it_came_then_whole():
    log = RunLog()
    log.add("hello wor", "out", True)  # what was read of it so far (the executor's partial)
    lines, start = log.take()
    log.added(start, len(lines), 7)
    log.add("hello world", "out", False)
    assert lines == ["hello wor"] and log.take_redraws(0.0) == {7: "hello world"}
