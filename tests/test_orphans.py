"""No job process outlives its worker: a child whose worker died while starting it exits at
once instead of running unsupervised."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import psutil

from conftest import alive, survivors

# A worker that dies between its fork and the child's arming of kill-on-parent-death: the
# forked child waits until its parent is gone, then goes on as a job's child does before
# exec (`executor._die_with_parent`, given the worker's pid), then would run the command.
_DIES_WHILE_STARTING = textwrap.dedent("""
    import os, sys, time
    from jobgate.executor import _die_with_parent

    worker = os.getpid()
    child = os.fork()
    if child == 0:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the test waits for the worker's output to end, not for this
            os.dup2(devnull, fd)
        while os.getppid() == worker:
            time.sleep(0.001)
        _die_with_parent(worker)
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)",
                                  sys.argv[1]])
    print(child, flush=True)
    os._exit(0)
""")


async def test_a_child_whose_worker_died_before_it_armed_the_signal_exits_at_once():
    marker = f"jgtest-orphan-{uuid.uuid4().hex}"
    out = subprocess.run([sys.executable, "-c", _DIES_WHILE_STARTING, marker],
                         capture_output=True, text=True, timeout=60, check=True)
    child = psutil.Process(int(out.stdout))
    try:
        assert await survivors([child], timeout_s=10) == [], \
            f"the orphan runs on: {child.cmdline() if alive(child) else ''}"
    finally:
        if alive(child):
            child.kill()
