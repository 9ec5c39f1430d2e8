"""Output a job controls does not control the user's terminal: the real `jobgate` command
against a real server, with a job whose log lines, progress message, argument and error
carry terminal escapes (window title, OSC 52 clipboard write, screen clear, CSI as the C1
character U+009B, a bidi override, BEL)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from conftest import TEST_KINDS, Backend, Server, running_server
from jobgate.terminal import printable

HOSTILE = ("\x1b]0;pwned\x07 \x1b]52;c;cHduZWQ=\x07 \x1b[2J\x1b[H \u009b2J \u202eevil \x7f"
           "\x1b[31mred")
CONTROL = ["\x1b", "\x07", "\x9b", "\u202e", "\x7f"]

# Prints the hostile text as log lines and as its progress message, then fails with it.
KINDS = TEST_KINDS + f"""
[kinds.evil]
argv = [{json.dumps(sys.executable)}, "-c", '''
import sys
text = sys.argv[1]
print("line " + text, flush=True)
print("progress=50 " + text, flush=True)
print("boom " + text, file=sys.stderr, flush=True)
sys.exit(3)
''', "{{label}}"]
progress = 'progress=(?P<percent>[0-9.]+) (?P<message>.*)'
[kinds.evil.args]
label = {{ type = "string", default = {json.dumps(HOSTILE)} }}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("terminal"), KINDS, backend) as srv:
        yield srv


def jobgate(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobgate", *args], env=server.env("bob"),
                          cwd=server.folder, capture_output=True, text=True, timeout=60)


def assert_inert(out: str) -> None:
    found = [c for c in CONTROL if c in out]
    assert not found, f"raw control characters {found!r} in {out!r}"


def test_printable_shows_control_characters_and_keeps_the_rest():
    assert printable("a\tb\x1b[2Jc\x07\u009b\u202e\x7fé") == \
        "a\tb\\x1b[2Jc\\x07\\x9b\\u202e\\x7fé"
    assert printable("one\ntwo") == "one\\x0atwo"
    assert printable("one\ntwo\r", newlines=True) == "one\ntwo\\x0d"


def test_watch_logs_ls_and_show_print_a_hostile_jobs_text_inert(server):
    watched = jobgate(server, "submit", "evil", "--watch")
    assert watched.returncode == 1, watched.stderr
    job_id = watched.stdout.split()[0]
    assert_inert(watched.stdout + watched.stderr)
    assert "\\x1b]52;c;cHduZWQ=\\x07" in watched.stderr  # shown, not obeyed

    logs = jobgate(server, "logs", job_id)
    assert logs.returncode == 0, logs.stderr
    assert_inert(logs.stdout)
    # The server stored the log lines with their escapes taken out but colours
    # (logtext.clean_line); printed to a file, the colours go too; what is left is shown.
    assert "pwned" not in logs.stdout and "2J" not in logs.stdout
    assert "line     \\u202eevil red\n" in logs.stdout

    follow = jobgate(server, "logs", job_id, "--follow")
    assert follow.returncode == 0, follow.stderr
    assert_inert(follow.stdout)
    assert follow.stdout == logs.stdout

    listed = jobgate(server, "ls")
    assert listed.returncode == 0, listed.stderr
    assert_inert(listed.stdout)
    assert job_id in listed.stdout

    shown = jobgate(server, "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert_inert(shown.stdout)
    job = json.loads(shown.stdout)  # JSON stays exact: its escapes are inert already
    assert job["args"]["label"] == HOSTILE and HOSTILE in job["error"]

    as_json = jobgate(server, "ls", "--json")
    assert_inert(as_json.stdout)
    assert any(j["id"] == job_id and j["args"]["label"] == HOSTILE
               for j in json.loads(as_json.stdout)["jobs"])
