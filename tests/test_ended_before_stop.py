"""A command that ended by itself before a stop came (a cancel, its worker's SIGTERM) is
what it ended as, even when the event loop has not yet heard of its exit: its work is
done, and handing it back would run it a second time (issue 12's chaos campaign, at
load 20: a run ended, its worker's SIGTERM came, and the job was run again)."""

from __future__ import annotations

import subprocess
import sys
import time

from jobgate.executor import has_exited


def test_a_child_that_has_exited_is_seen_so_before_it_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while not has_exited(child.pid):
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    # Not reaped by the look: its exit status is still there for its owner.
    assert child.wait(timeout=5) == 0


def test_a_running_child_has_not_exited() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not has_exited(child.pid)
    finally:
        child.kill()
        child.wait()
    assert has_exited(child.pid)  # reaped: gone, so it has exited
