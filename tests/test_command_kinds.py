"""Command kinds that need no wrapper: named progress parsers and the regex form, a result
taken from the output, the final message, clear failures (the stdout tail, a missing
program, `no_retry_on` / `retry_on`), literal braces. Real subprocesses, real ffmpeg, a
real queue and worker on each backend.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_state
from jobgate.config import ConfigError, load_settings
from jobgate.follow import telling_line
from jobgate.model import Event
from jobgate.recipes import missing_tools_warnings

PY = sys.executable


def q(text: str) -> str:
    """A TOML basic string holding `text` exactly (JSON string syntax is valid TOML)."""
    return json.dumps(text)


def argv(*items: str) -> str:
    return "[" + ", ".join(q(item) for item in items) + "]"


def py(code: str, *args: str) -> str:
    """The argv of a small Python program (`sys.argv[1:]` are `args`); its braces doubled,
    so that they reach it as they are and not as placeholders."""
    code = textwrap.dedent(code).replace("{", "{{").replace("}", "}}")
    return argv(PY, "-c", code, *args)


# Waits for a flag file: the test looks at the running job, then lets it end.
_HOLD = """
import os, sys, time
def hold(flag):
    while not os.path.exists(flag):
        time.sleep(0.02)
"""

COMMAND_KINDS = f"""
[kinds.ffmpeg]
argv = ["ffmpeg", "-nostdin", "-hide_banner", "-re", "-i", "{{input}}", "-c:v", "mpeg4",
        "-progress", "pipe:1", "-nostats", "-y", "{{output_dir}}/out.mp4"]
progress = "ffmpeg"
[kinds.ffmpeg.args]
input = {{ type = "path" }}

[kinds.range]
argv = {py(_HOLD + '''
for value in sys.argv[2:]:
    print(f"p={value}", flush=True)
hold(sys.argv[1])
''', "{flag}", "50", "150", "250", "-5", "60")}
progress = 'p=(?P<percent>-?[0-9.]+)'
[kinds.range.args]
flag = {{ type = "string" }}

[kinds.fraction]
argv = {py(_HOLD + '''
print("copied 30 of 60 MiB", flush=True)
hold(sys.argv[1])
print("copied 1 of 1 GiB", flush=True)
''', "{flag}")}
progress = 'copied (?P<current>[0-9.]+) of (?P<total>[0-9.]+) (?P<unit>\\w+)'
[kinds.fraction.args]
flag = {{ type = "string" }}

[kinds.units]
argv = {py('print("512 KiB / 2 MiB", flush=True)')}
progress = '(?P<current>[0-9]+) (?P<current_unit>\\w+) / (?P<total>[0-9]+) (?P<total_unit>\\w+)'

[kinds.said]
argv = {py('print("p=40 reading"); print("p=100 wrote 3 files")')}
progress = 'p=(?P<percent>[0-9]+) (?P<message>.*)'

[kinds.quiet]
argv = ["true"]

[kinds.last_line]
argv = {py('''
import json, sys
print("hello")
print('{"first": 1}')
print("not json {")
print(json.dumps({"big": "x" * int(sys.argv[1])}))
print("42")
print("bye")
''', "{size}")}
result = "json-last-line"
[kinds.last_line.args]
size = {{ type = "integer", default = 10 }}

[kinds.no_json]
argv = {py('print("just words")')}
result = "json-last-line"
max_attempts = 3
backoff = "0.1s"

[kinds.braces]
argv = {argv(PY, "-c", "import sys; print(sys.argv[1])", '{{"n": {n}, "id": "{job_id}"}}')}
result = "json-last-line"
[kinds.braces.args]
n = {{ type = "integer" }}

[kinds.result_file]
argv = {py('''
import sys
from pathlib import Path
Path(sys.argv[1]).write_text(sys.argv[2])
Path("other.txt").write_text("an output")
''', "{output_dir}/result.json", "{text}")}
result = "json-file"
max_attempts = 3
backoff = "0.1s"
[kinds.result_file.args]
text = {{ type = "string" }}

[kinds.stdout_only]
argv = {py('''
for i in range(10):
    print(f"line {i}")
raise SystemExit(1)
''')}

[kinds.both]
argv = {py('''
import sys
print("said on stdout")
print("said on stderr", file=sys.stderr)
raise SystemExit(2)
''')}

[kinds.not_there]
argv = ["jobgate-test-not-installed", "x"]
max_attempts = 3
backoff = "0.1s"

[kinds.fetch]
argv = {py('''
import sys
print(sys.argv[1], file=sys.stderr)
for i in range(30):
    print(f"noise {i}", file=sys.stderr)
raise SystemExit(1)
''', "{said}")}
max_attempts = 2
backoff = "0.1s"
no_retry_on = ["HTTP Error 404", "Unsupported URL"]
[kinds.fetch.args]
said = {{ type = "string" }}

[kinds.only_network]
argv = {py('''
import sys
print(sys.argv[1])
raise SystemExit(1)
''', "{said}")}
max_attempts = 2
backoff = "0.1s"
retry_on = ['Connection (reset|refused)', "timed out"]
[kinds.only_network.args]
said = {{ type = "string" }}
"""

# A Python kind: its worker starts pool processes (importing this module), which only the
# tests of Python kinds wait for.
KINDS = COMMAND_KINDS + """
[kinds.py404]
function = "test_command_kinds:raises_404"
max_attempts = 2
backoff = "0.1s"
no_retry_on = ["HTTP Error 404"]
"""


def raises_404(ctx: Any) -> None:
    raise RuntimeError("HTTP Error 404: Not Found")


async def open_with(make_settings: Any, open_queue: Any, kinds: str = COMMAND_KINDS) -> Any:
    queue, _ = await open_queue(make_settings(kinds=kinds))
    return queue


async def log_lines(queue: Any, job_id: str) -> list[str]:
    return [line for _, line in await queue.store.logs(job_id)]


async def wait_progress(queue: Any, job_id: str, percent: float) -> Any:
    """The running job once it reports `percent` (woken by its events)."""
    with queue.bus.subscribe(lambda e: e.job_id == job_id) as sub:
        while True:
            job = await queue.get(job_id)
            assert job.state.value in ("queued", "running"), (job.state, job.error)
            if job.progress == percent:
                return job
            await asyncio.wait_for(sub.get(), 30)


def percents(sub: Any, job_id: str) -> list[float]:
    """The percents of the job's progress events a subscription has seen so far."""
    seen: list[Event] = []
    while not sub.queue.empty():
        seen.append(sub.queue.get_nowait())
    return [e.data["progress"] for e in seen if e.job_id == job_id
            and e.type == "job.progress" and e.data.get("progress") is not None]


# --- progress -----------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
async def test_ffmpeg_progress_rises_to_100_with_a_message_and_no_block_lines_logged(
        make_settings, open_queue, tmp_path):
    source = tmp_path / "input" / "testsrc.mkv"
    source.parent.mkdir(exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=duration=3:size=160x120:rate=25", "-c:v", "mpeg4", str(source)],
                   check=True, timeout=60)
    queue = await open_with(make_settings, open_queue)
    with queue.bus.subscribe(buffer=10_000) as sub:
        job, _ = await queue.submit("bob", "ffmpeg", {"input": str(source)})
        done = await wait_state(queue, job.id, "completed", "failed", timeout_s=120)
        seen = percents(sub, job.id)
    assert done.state.value == "completed", done.error
    # -re reads the input in real time: reports arrive on the way, not only at the end.
    assert len([p for p in seen if 0 < p < 100]) >= 2, seen
    assert seen == sorted(seen) and seen[-1] == 100.0, seen
    assert done.progress == 100.0
    assert re.match(r"00:0[23] of 00:03", done.message or ""), done.message
    lines = await log_lines(queue, job.id)
    # The blocks' lines stay out (ffmpeg's own last stats line, on stderr, is logged).
    assert not [line for line in lines
                if line.startswith(("out_time", "progress=", "total_size=", "dup_frames="))]
    assert any(line.startswith("frame=") and "Lsize=" in line for line in lines), lines
    assert (queue.job_dir(job.id) / "out.mp4").stat().st_size > 0


async def test_a_percent_outside_0_100_is_a_warning_once_and_never_shown(
        make_settings, open_queue, tmp_path):
    queue = await open_with(make_settings, open_queue)
    flag = tmp_path / "go"
    with queue.bus.subscribe(buffer=10_000) as sub:
        job, _ = await queue.submit("bob", "range", {"flag": str(flag)})
        running = await wait_progress(queue, job.id, 60.0)
        flag.touch()
        await wait_state(queue, job.id, "completed", "failed")
        seen = percents(sub, job.id)
    assert running.progress == 60.0
    assert all(0 <= p <= 100 for p in seen) and 60.0 in seen, seen
    warnings = [line for line in await log_lines(queue, job.id)
                if line.startswith("[jobgate] progress:")]
    assert len(warnings) == 1, warnings
    assert "150.0 %" in warnings[0] and "outside 0-100" in warnings[0]


async def test_current_and_total_make_a_percent(make_settings, open_queue, tmp_path):
    queue = await open_with(make_settings, open_queue)
    flag = tmp_path / "go"
    job, _ = await queue.submit("bob", "fraction", {"flag": str(flag)})
    running = await wait_progress(queue, job.id, 50.0)
    assert running.message == "30MiB of 60MiB"
    flag.touch()
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    assert done.message == "1GiB of 1GiB"  # the last progress message stays

    with queue.bus.subscribe(buffer=1000) as sub:
        job, _ = await queue.submit("bob", "units")
        done = await wait_state(queue, job.id, "completed", "failed")
        seen = percents(sub, job.id)
    assert done.state.value == "completed", done.error
    assert seen == [25.0]  # 512 KiB of 2 MiB
    assert await log_lines(queue, job.id) == ["512 KiB / 2 MiB"]  # no warning


async def test_the_last_progress_message_survives_completion(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "said")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert (done.state.value, done.progress, done.message) == \
        ("completed", 100.0, "wrote 3 files")
    job, _ = await queue.submit("bob", "quiet")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert (done.state.value, done.message) == ("completed", "completed")


# --- results ------------------------------------------------------------------------------

async def test_json_last_line_is_the_last_object_or_array_printed(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "last_line", {"size": 10})
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    assert done.result == {"big": "x" * 10}  # not "42": a bare number is not taken


async def test_a_json_last_line_longer_than_a_log_line_arrives_whole(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "last_line", {"size": 200_000})
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    assert done.result == {"big": "x" * 200_000}
    longest = max(len(line) for line in await log_lines(queue, job.id))
    assert longest <= 8192  # the log still gets it cut


async def test_no_json_line_fails_without_retry(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "no_json")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert (done.state.value, done.attempt) == ("failed", 1)
    assert "json-last-line" in done.error and "no result" in done.error


async def test_literal_braces_and_builtin_placeholders(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "braces", {"n": 5})
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    assert done.result == {"n": 5, "id": job.id}
    assert await log_lines(queue, job.id) == [json.dumps({"n": 5, "id": job.id})]


async def test_result_json_becomes_the_result_and_is_not_an_output(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "result_file", {"text": '{"frames": 75, "ok": true}'})
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "completed", done.error
    assert done.result == {"frames": 75, "ok": True}
    assert [o.name for o in done.outputs] == ["other.txt"]
    assert not (queue.job_dir(job.id) / "result.json").exists()


async def test_a_bad_result_json_fails_clearly_without_retry(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "result_file", {"text": '{"frames": 75,'})
    done = await wait_state(queue, job.id, "completed", "failed")
    assert (done.state.value, done.attempt) == ("failed", 1)
    assert "result.json is not valid JSON" in done.error


# --- failures -----------------------------------------------------------------------------

async def test_a_program_silent_on_stderr_fails_with_its_stdout_tail(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "stdout_only")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.state.value == "failed"
    assert done.error == "exit code 1: " + "\n".join(f"line {i}" for i in range(5, 10))

    job, _ = await queue.submit("bob", "both")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert done.error == "exit code 2: said on stderr"  # stderr, when there is some


async def test_a_missing_program_is_not_installed_on_this_server(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, KINDS)
    job, _ = await queue.submit("bob", "not_there")
    done = await wait_state(queue, job.id, "completed", "failed")
    assert (done.state.value, done.attempt) == ("failed", 1)
    assert done.error == "jobgate-test-not-installed is not installed on this server"
    warnings = missing_tools_warnings(queue.settings)  # what serve and worker say at start
    assert "kind not_there: jobgate-test-not-installed is not installed on this server" \
        in warnings
    assert not [w for w in warnings if w.startswith(("kind quiet:", "kind py404:"))]


@pytest.mark.parametrize(("said", "attempts"), [
    ("ERROR: [generic] Unable to download webpage: HTTP Error 404: Not Found", 1),
    ("ERROR: Unsupported URL: https://example.org/", 1),
    ("ERROR: HTTP Error 503: Service Unavailable", 2),
])
async def test_no_retry_on_makes_a_matching_failure_permanent(
        make_settings, open_queue, said, attempts):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "fetch", {"said": said})
    done = await wait_state(queue, job.id, "failed", timeout_s=60)
    # The match came 30 lines before the end: read on every line, not only in the tail.
    assert said not in done.error
    assert done.attempt == attempts


@pytest.mark.parametrize(("said", "attempts"), [
    ("Connection reset by peer", 2),
    ("read timed out", 2),
    ("Unsupported URL", 1),
])
async def test_retry_on_retries_only_matching_failures(make_settings, open_queue, said, attempts):
    queue = await open_with(make_settings, open_queue)
    job, _ = await queue.submit("bob", "only_network", {"said": said})
    done = await wait_state(queue, job.id, "failed", timeout_s=60)
    assert done.attempt == attempts
    assert done.error == f"exit code 1: {said}"


async def test_no_retry_on_reads_a_python_kinds_error(make_settings, open_queue):
    queue = await open_with(make_settings, open_queue, KINDS)
    job, _ = await queue.submit("bob", "py404")
    done = await wait_state(queue, job.id, "failed", timeout_s=60)
    assert done.attempt == 1
    assert "HTTP Error 404" in done.error


def test_watch_ends_with_the_telling_line_not_the_last():
    assert telling_line("exit code 1: [in#0] opening x.mkv\nx.mkv: No such file or directory\n"
                        "Error opening input files: No such file or directory\n"
                        "Conversion failed!") == \
        "exit code 1: Error opening input files: No such file or directory"
    assert telling_line("exit code 1: ERROR: [generic] Unable to download webpage: HTTP "
                        "Error 404\nSee the FAQ") == \
        "exit code 1: ERROR: [generic] Unable to download webpage: HTTP Error 404"
    assert telling_line("exit code 3: step 1\nstep 2") == "exit code 3: step 2"
    assert telling_line("exit code 2") == "exit code 2"
    assert telling_line("ValueError: bad input 7") == "ValueError: bad input 7"
    assert telling_line("timed out after 5 s") == "timed out after 5 s"


WATCH_KINDS = f"""
[kinds.telling]
argv = {py('''
import sys
print("[generic] Extracting URL", file=sys.stderr)
print(sys.argv[1], file=sys.stderr)
print("See the FAQ for how to report it", file=sys.stderr)
raise SystemExit(1)
''', "{said}")}
[kinds.telling.args]
said = {{ type = "string" }}
"""


def test_submit_watch_prints_the_telling_line(start_server):
    server = start_server(kinds=WATCH_KINDS)
    result = server.cli("submit", "telling", "said=ERROR: HTTP Error 404: Not Found",
                        "--watch", user="bob")
    assert result.returncode == 1, result.stderr
    job_id = result.stdout.split()[0]
    with server.client("bob") as http:
        error = http.get(f"/api/jobs/{job_id}").json()["error"]
    assert "See the FAQ" in error  # the last line of the error is not the telling one
    assert result.stderr.splitlines()[-1] == f"jobgate: {telling_line(error)}", error
    assert "HTTP Error 404" in result.stderr.splitlines()[-1], error


# --- configuration ------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "key", "says"), [
    ('argv = ["x"]\nprogress = "ffmpg"', "kinds.k.progress", "ffmpeg, spotdl, yt-dlp"),
    ('argv = ["x"]\nprogress = "(?P<percent>[0-9"', "kinds.k.progress",
     "invalid regular expression"),
    ('argv = ["x"]\nprogress = "(?P<current>[0-9]+)"', "kinds.k.progress", "go together"),
    ('argv = ["x"]\nprogress = 5', "kinds.k.progress", "a parser name"),
    ('function = "jobgate.demo:noop"\nprogress = "ffmpeg"', "kinds.k.progress",
     "only for a command kind"),
    ('argv = ["x"]\nresult = "xml"', "kinds.k.result", "json-last-line, json-file"),
    ('function = "jobgate.demo:noop"\nresult = "json-file"', "kinds.k.result",
     "only for a command kind"),
    ('argv = ["x"]\nno_retry_on = ["HTTP (404"]', "kinds.k.no_retry_on",
     "not a valid regular expression"),
    ('argv = ["x"]\nretry_on = [1]', "kinds.k.retry_on", "list of regular expressions"),
])
def test_bad_settings_name_the_key_and_the_reason(tmp_path: Path, kind, key, says):
    config = tmp_path / "jobgate.toml"
    config.write_text(f"[kinds.k]\n{kind}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    assert str(caught.value).startswith(key + ":"), caught.value
    assert says in str(caught.value)
