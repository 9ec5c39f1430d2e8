"""Settings: defaults, TOML, JOBGATE_* overrides, and refusal with the key and the reason."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jobgate.config import (
    DEFAULT_DB_URL,
    DEFAULT_LEASE_S,
    DEFAULT_MAX_RUNNING,
    DEFAULT_PORT,
    ConfigError,
    Rate,
    Settings,
    load_settings,
    parse_duration,
)


@pytest.fixture
def load(tmp_path: Path):
    """`load(toml_text, **env)` → Settings from that file and exactly that environment."""

    def load_(text: str = "", **env: str) -> Settings:
        path = tmp_path / "jobgate.toml"
        path.write_text(textwrap.dedent(text))
        return load_settings(path, env=env)

    return load_


def refused(load, text: str, key: str, reason: str, **env: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text, **env)
    message = str(info.value)
    assert message.startswith(key + ":"), message
    assert reason in message, message
    assert "\n" not in message


# --- values --------------------------------------------------------------------------------

def test_defaults_without_a_file():
    settings = load_settings(None, env={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == DEFAULT_PORT
    assert settings.storage.url == DEFAULT_DB_URL
    assert settings.storage.durability == "full"
    assert settings.limits.max_running == DEFAULT_MAX_RUNNING
    assert settings.limits.max_queued is None and settings.limits.start_timeout is None
    assert settings.worker.lease_s == DEFAULT_LEASE_S
    assert settings.auth.enabled is True
    assert settings.kinds == {}
    assert settings.slots == DEFAULT_MAX_RUNNING
    assert settings.retention.finished == 7 * 86400.0


def test_values_from_the_file(load, tmp_path):
    settings = load("""
        [server]
        port = 9000
        data_dir = "data"
        input_dir = "media"
        allowed_origins = ["https://example.org"]
        [storage]
        url = "sqlite:///other.db"
        durability = "normal"
        [limits]
        max_running = 4
        max_queued = 100
        per_user_running = 2
        per_user_queued = 20
        memory_budget_mb = 2048
        min_free_memory_mb = 256
        start_timeout = "10m"
        [retention]
        finished = "2d"
        per_user_history = 50
        [auth]
        enabled = false
        [worker]
        slots = 3
        lease_s = 10
        log_max_lines = 500
    """)
    assert settings.server.port == 9000
    assert settings.server.allowed_origins == ["https://example.org"]
    assert settings.data_path == tmp_path.resolve() / "data"  # relative to the file
    assert settings.input_path == tmp_path.resolve() / "media"
    assert (settings.storage.url, settings.storage.durability) == ("sqlite:///other.db",
                                                                   "normal")
    limits = settings.limits
    assert (limits.max_running, limits.max_queued, limits.per_user_running,
            limits.per_user_queued, limits.memory_budget_mb,
            limits.min_free_memory_mb) == (4, 100, 2, 20, 2048, 256)
    assert limits.start_timeout == 600
    assert settings.retention.finished == 2 * 86400
    assert settings.retention.per_user_history == 50
    assert settings.auth.enabled is False
    assert settings.worker.lease_s == 10.0 and isinstance(settings.worker.lease_s, float)
    assert settings.slots == 3


def test_environment_overrides_the_file(load):
    settings = load(
        "[limits]\nmax_running = 4\n[server]\nport = 9000\n",
        JOBGATE_LIMITS_MAX_RUNNING="6",
        JOBGATE_LIMITS_START_TIMEOUT="1h30m",
        JOBGATE_SERVER_HOST="0.0.0.0",
        JOBGATE_SERVER_ALLOWED_ORIGINS="https://a.example, https://b.example",
        JOBGATE_AUTH_ENABLED="false",
        JOBGATE_WORKER_LEASE_S="12.5",
        JOBGATE_STORAGE_DURABILITY="normal",
    )
    assert settings.limits.max_running == 6
    assert settings.limits.start_timeout == 5400
    assert settings.server.port == 9000
    assert settings.server.host == "0.0.0.0"
    assert settings.server.allowed_origins == ["https://a.example", "https://b.example"]
    assert settings.auth.enabled is False
    assert settings.worker.lease_s == 12.5
    assert settings.storage.durability == "normal"


def test_jobgate_db_is_short_for_the_storage_url(load):
    settings = load('[storage]\nurl = "sqlite:///file.db"\n', JOBGATE_DB="sqlite:///env.db")
    assert settings.storage.url == "sqlite:///env.db"
    assert load(JOBGATE_STORAGE_URL="sqlite:///x.db").storage.url == "sqlite:///x.db"


def test_client_variables_are_not_settings(load):
    settings = load(JOBGATE_URL="http://x:1", JOBGATE_TOKEN="t", JOBGATE_CONFIG="c.toml")
    assert settings.server.port == DEFAULT_PORT


def test_explicit_overrides_win_over_environment_and_file(tmp_path):
    path = tmp_path / "jobgate.toml"
    path.write_text("[server]\nport = 9000\n")
    settings = load_settings(path, env={"JOBGATE_SERVER_PORT": "9001"},
                             overrides={"server": {"port": 9002, "host": None}})
    assert settings.server.port == 9002
    assert settings.server.host == "127.0.0.1"  # None means "not given"


def test_load_settings_ignores_the_process_environment_when_env_is_given(monkeypatch):
    monkeypatch.setenv("JOBGATE_LIMITS_MAX_RUNNING", "9")
    assert load_settings(None, env={}).limits.max_running == DEFAULT_MAX_RUNNING
    assert load_settings(None).limits.max_running == 9


@pytest.mark.parametrize(("text", "seconds"), [
    (90, 90.0), (1.5, 1.5), ("90", 90.0), ("250ms", 0.25), ("30s", 30.0), ("5m", 300.0),
    ("1h30m", 5400.0), ("1h 30m", 5400.0), ("7d", 604800.0), ("2w", 1209600.0),
])
def test_durations(text, seconds):
    assert parse_duration(text, "k") == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "-5s", "1h-30m", "5x", True, [5],
                                  -1])
def test_bad_durations(text):
    with pytest.raises(ConfigError, match=r"^k: "):
        parse_duration(text, "k")


def test_kinds_from_the_file(load):
    settings = load("""
        [limits]
        memory_budget_mb = 1024
        [kinds.compress]
        argv = ["ffmpeg", "-y", "-i", "{input}", "-b:v", "{bitrate}", "{output_dir}/out.mp4"]
        progress = 'progress=(?P<percent>[0-9.]+)'
        timeout = "1h"
        max_attempts = 3
        backoff = "10s"
        memory_mb = 512
        max_running = 2
        priority = 1
        [kinds.compress.args]
        input = { type = "path" }
        bitrate = { type = "string", pattern = "^[0-9]+k$", default = "800k" }
        [kinds.countdown]
        function = "jobgate.demo:countdown"
    """)
    compress = settings.kinds["compress"]
    assert compress.argv is not None and compress.argv[3] == "{input}"
    assert compress.timeout_s == 3600 and compress.backoff_s == 10
    assert (compress.max_attempts, compress.memory_mb, compress.max_running,
            compress.priority) == (3, 512, 2, 1)
    assert compress.progress is not None
    report = compress.progress().feed("progress=42.5")
    assert report is not None and report.percent == 42.5
    assert compress.args["bitrate"].default == "800k"
    assert compress.args["input"].required
    assert set(settings.kinds["countdown"].args) == {"seconds", "fail"}


# --- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[serve]\nport = 1\n", "serve", "unknown section"),
    ("[limits]\nmax_runing = 2\n", "limits.max_runing", "unknown key"),
    ("[server]\nport = \"80\"\n", "server.port", "expected an integer"),
    ("[server]\nport = 70000\n", "server.port", "between 1 and 65535"),
    ("[server]\nhost = 5\n", "server.host", "expected a string"),
    ("[server]\nallowed_origins = [1]\n", "server.allowed_origins", "list of strings"),
    ("[limits]\nmax_running = true\n", "limits.max_running", "expected an integer"),
    ("[limits]\nmax_running = 2.5\n", "limits.max_running", "expected an integer"),
    ("[limits]\nmax_running = 0\n", "limits.max_running", "at least 1"),
    ("[limits]\nmax_queued = -1\n", "limits.max_queued", "at least 1"),
    ("[limits]\nper_user_running = 0\n", "limits.per_user_running", "at least 1"),
    ("[limits]\nper_user_queued = 0\n", "limits.per_user_queued", "at least 1"),
    ("[limits]\nmemory_budget_mb = -5\n", "limits.memory_budget_mb", "at least 1"),
    ("[limits]\nstart_timeout = \"soon\"\n", "limits.start_timeout", "duration"),
    ("[limits]\nstart_timeout = -3\n", "limits.start_timeout", "negative"),
    ("[retention]\nfinished = \"1 fortnight\"\n", "retention.finished", "duration"),
    ("[auth]\nenabled = \"perhaps\"\n", "auth.enabled", "true or false"),
    ("[worker]\nlease_s = 0.5\n", "worker.lease_s", "at least 1"),
    ("[worker]\nslots = 0\n", "worker.slots", "at least 1"),
    ("[storage]\ndurability = \"fast\"\n", "storage.durability", "'full' or 'normal'"),
    ("[storage]\nurl = \"mysql://x\"\n", "storage.url", "sqlite:///"),
    ("limits = 3\n", "limits", "expected a table"),
    ("[auth]\nticket_ttl = \"2m\"\n", "auth.ticket_ttl", "at most 60 seconds"),
    ("[auth]\nticket_ttl = 0\n", "auth.ticket_ttl", "more than 0"),
    ("[auth]\ntoken_ttl = \"10s\"\n", "auth.token_ttl", "at least 1 minute"),
    ("[streams]\nkeepalive = \"0.1s\"\n", "streams.keepalive", "at least 1 second"),
    ("[streams]\nmax_per_user = 0\n", "streams.max_per_user", "at least 1"),
    ("[streams]\nbuffer_kb = -1\n", "streams.buffer_kb", "at least 1"),
    ("[rate_limits]\nsubmit_per_user = \"lots\"\n", "rate_limits.submit_per_user",
     "rate like"),
    ("[rate_limits]\nsubmit_per_ip = 10\n", "rate_limits.submit_per_ip", "rate like"),
    ("[rate_limits]\nlogin_per_ip = \"0/m\"\n", "rate_limits.login_per_ip", "at least 1"),
    ("[rate_limits]\nlogin_per_user = \"5/0s\"\n", "rate_limits.login_per_user",
     "positive duration"),
    ("[rate_limits]\nlogin_per_user = \"5/fortnight\"\n", "rate_limits.login_per_user",
     "duration"),
    ("[rate_limits]\nlogin_free_failures = -1\n", "rate_limits.login_free_failures",
     "negative"),
    ("[server]\nallowed_origins = [\"example.org\"]\n", "server.allowed_origins",
     "not an origin"),
    ("[server]\nallowed_origins = [\"https://a.example/path\"]\n", "server.allowed_origins",
     "not an origin"),
    ("[server]\ntrusted_proxies = [\"proxy.lan\"]\n", "server.trusted_proxies",
     "not an IP address or network"),
])
def test_bad_settings_are_refused_with_the_key_and_the_reason(load, text, key, reason):
    refused(load, text, key, reason)


@pytest.mark.parametrize(("env", "key", "reason"), [
    ({"JOBGATE_LIMITS_MAX_RUNNING": "two"}, "limits.max_running", "expected an integer"),
    ({"JOBGATE_LIMITS_MAX_RUNNING": "0"}, "limits.max_running", "at least 1"),
    ({"JOBGATE_LIMITS_NOPE": "1"}, "limits.nope", "unknown key"),
    ({"JOBGATE_SERVER_PORT": "8o80"}, "server.port", "expected an integer"),
    ({"JOBGATE_DB": "oracle://x"}, "storage.url", "sqlite:///"),
])
def test_bad_environment_values_are_refused_with_the_key(load, env, key, reason):
    refused(load, "", key, reason, **env)


def test_stream_auth_and_rate_limit_settings_parse(load):
    settings = load(
        "[auth]\ntoken_ttl = \"1h\"\nticket_ttl = \"30s\"\n"
        "[streams]\nkeepalive = \"5s\"\nmax_per_user = 3\nbuffer_kb = 64\n"
        "[rate_limits]\nsubmit_per_user = \"10/s\"\nsubmit_per_ip = \"5/30s\"\n"
        "login_per_user = \"off\"\nlogin_per_ip = \"1000/1h\"\n"
        "login_free_failures = 0\nlogin_backoff_max = \"1m\"\n",
        JOBGATE_RATE_LIMITS_SUBMIT_PER_IP="7/m")
    assert (settings.auth.token_ttl, settings.auth.ticket_ttl) == (3600, 30)
    assert (settings.streams.keepalive, settings.streams.max_per_user,
            settings.streams.buffer_kb) == (5, 3, 64)
    limits = settings.rate_limits
    assert limits.submit_per_user == Rate(10, 1)
    assert limits.submit_per_ip == Rate(7, 60)  # the environment wins over the file
    assert limits.login_per_user is None
    assert limits.login_per_ip == Rate(1000, 3600)
    assert (limits.login_free_failures, limits.login_backoff_max) == (0, 60)


def test_stream_auth_and_rate_limit_defaults(load):
    settings = load("")
    assert settings.auth.ticket_ttl == 60 and settings.streams.keepalive == 15
    assert settings.rate_limits.submit_per_user == Rate(600, 60)
    assert settings.rate_limits.submit_per_ip == Rate(1200, 60)
    assert settings.rate_limits.login_per_ip == Rate(30, 60)


def test_a_negative_min_free_memory_is_refused(load):
    refused(load, "[limits]\nmin_free_memory_mb = -100\n", "limits.min_free_memory_mb",
            "at least")


def test_auto_memory_defaults_and_settings(load):
    limits = load("").limits
    assert (limits.auto_memory_default_mb, limits.auto_memory_history,
            limits.auto_memory_margin_pct) == (256, 20, 25)
    limits = load("[limits]\nauto_memory_default_mb = 64\nauto_memory_history = 5\n"
                  "auto_memory_margin_pct = 0\n").limits
    assert (limits.auto_memory_default_mb, limits.auto_memory_history,
            limits.auto_memory_margin_pct) == (64, 5, 0)


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[limits]\nauto_memory_default_mb = 0\n", "limits.auto_memory_default_mb", "at least 1"),
    ("[limits]\nauto_memory_history = 0\n", "limits.auto_memory_history", "at least 1"),
    ("[limits]\nauto_memory_margin_pct = -5\n", "limits.auto_memory_margin_pct",
     "from 0 to 1000"),
    ('[limits]\nauto_memory_margin_pct = "lots"\n', "limits.auto_memory_margin_pct",
     "expected an integer"),
])
def test_bad_auto_memory_settings_are_refused(load, text, key, reason):
    refused(load, text, key, reason)


def test_a_kind_may_learn_its_memory_estimate(load):
    kind = load('[kinds.k]\nargv = ["true"]\nmemory_mb = "auto"\nmemory_limit_mb = 100\n'
                ).kinds["k"]
    assert kind.memory_auto and kind.memory_mb == 0
    assert kind.schema()["memory_mb"] == "auto"
    fixed = load('[kinds.k]\nargv = ["true"]\nmemory_mb = 40\n').kinds["k"]
    assert not fixed.memory_auto and fixed.schema()["memory_mb"] == 40


def test_a_zero_start_timeout_is_refused(load):
    refused(load, "[limits]\nstart_timeout = \"0s\"\n", "limits.start_timeout", "at least")


def test_a_missing_or_broken_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "nope.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[limits\nmax_running = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, env={})


COMMAND = '[kinds.k]\nargv = ["tool", "{a}"]\n'


@pytest.mark.parametrize(("text", "key", "reason"), [
    ('[kinds.k]\nargv = ["tool", "{missing}"]\n', "kinds.k.argv", "{missing} names no argument"),
    ('[kinds.k]\nargv = ["tool", "{a}", "{b}"]\n[kinds.k.args]\na = {}\n', "kinds.k.argv",
     "{b} names no argument"),
    ('[kinds.k]\nargv = ["tool", "{a!r}"]\n[kinds.k.args]\na = {}\n', "kinds.k.argv",
     "plain {name}"),
    ('[kinds.k]\nargv = ["tool", "{a"]\n[kinds.k.args]\na = {}\n', "kinds.k.argv",
     "bad placeholder"),
    ('[kinds.k]\nargv = []\n', "kinds.k.argv", "non-empty list of strings"),
    ('[kinds.k]\nargv = "tool {a}"\n', "kinds.k.argv", "non-empty list of strings"),
    (COMMAND + "progress = '(?P<percent>[0-9'\n[kinds.k.args]\na = {}\n", "kinds.k.progress",
     "invalid regular expression"),
    (COMMAND + "progress = '[0-9]+'\n[kinds.k.args]\na = {}\n", "kinds.k.progress",
     "named group"),
    (COMMAND + '[kinds.k.args]\na = { pattern = "([a-z" }\n', "kinds.k.args.a.pattern",
     "invalid regular expression"),
    (COMMAND + '[kinds.k.args]\na = { type = "float" }\n', "kinds.k.args.a.type",
     "must be one of"),
    (COMMAND + '[kinds.k.args]\na = { typ = "string" }\n', "kinds.k.args.a.typ",
     "unknown key"),
    (COMMAND + '[kinds.k.args]\na = { type = "integer", default = "x" }\n',
     "kinds.k.args.a.default", "expected an integer"),
    (COMMAND + '[kinds.k.args]\na = { type = "integer", min = "1" }\n', "kinds.k.args.a.min",
     "expected a number"),
    (COMMAND + '[kinds.k.args]\na = { choices = "ab" }\n', "kinds.k.args.a.choices",
     "expected a list"),
    (COMMAND + '[kinds.k.args]\na = "string"\n', "kinds.k.args.a", "expected a table"),
    ('[kinds.k]\nargv = ["tool"]\nfunction = "jobgate.demo:noop"\n', "kinds.k",
     "exactly one of argv"),
    ('[kinds.k]\ntimeout = "1h"\n', "kinds.k", "exactly one of argv"),
    ('[kinds.k]\nfunction = "no_such_module_xyz:run"\n', "kinds.k.function",
     "cannot import no_such_module_xyz"),
    ('[kinds.k]\nfunction = "jobgate.demo:nope"\n', "kinds.k.function",
     "has no function nope"),
    ('[kinds.k]\nfunction = "jobgate.demo"\n', "kinds.k.function",
     "'package.module:function'"),
    ('[kinds.k]\nargv = ["true"]\ntimeout = "forever"\n', "kinds.k.timeout", "duration"),
    ('[kinds.k]\nargv = ["true"]\nmax_attempts = -1\n', "kinds.k.max_attempts", "at least 1"),
    ('[kinds.k]\nargv = ["true"]\nmax_attempts = "3"\n', "kinds.k.max_attempts",
     "expected an integer"),
    ('[kinds.k]\nargv = ["true"]\nmax_running = 0\n', "kinds.k", "max_running >= 1"),
    ('[kinds.k]\nargv = ["true"]\nmemory_mb = -1\n', "kinds.k", "memory_mb must be >= 0"),
    ('[kinds.k]\nargv = ["true"]\npriority = true\n', "kinds.k.priority", "expected an integer"),
    ('[kinds.k]\nargv = ["true"]\npriority = 1001\n', "kinds.k.priority", "between -1000 and 1000"),
    ('[kinds.k]\nargv = ["true"]\nretry_on_exit_codes = ["1"]\n',
     "kinds.k.retry_on_exit_codes", "list of integers"),
    ('[kinds.k]\nargv = ["true"]\nshell = true\n', "kinds.k.shell", "unknown key"),
    ('[kinds."bad name"]\nargv = ["true"]\n', "kinds.bad name", "letters, digits"),
    ('[kinds]\nk = 3\n', "kinds.k", "expected a table"),
    ('[limits]\nmemory_budget_mb = 100\n[kinds.k]\nargv = ["true"]\nmemory_mb = 200\n',
     "kinds.k.memory_mb", "could never start"),
    ('[limits]\nnode_memory_budget_mb = 100\n[kinds.k]\nargv = ["true"]\nmemory_mb = 200\n',
     "kinds.k.memory_mb", "limits.node_memory_budget_mb (100); such a job could never start"),
    ('[kinds.k]\nargv = ["true"]\nmemory_mb = "lots"\n', "kinds.k.memory_mb",
     'expected an integer (megabytes) or "auto", got \'lots\''),
    ('[kinds.k]\nargv = ["true"]\nmemory_mb = 1.5\n', "kinds.k.memory_mb",
     'or "auto"'),
    ('[kinds.k]\nargv = ["true"]\nmemory_mb = true\n', "kinds.k.memory_mb", 'or "auto"'),
    ('[kinds.k]\nargv = ["true"]\nmemory_mb = 300\nmemory_limit_mb = 200\n',
     "kinds.k.memory_mb", "more than memory_limit_mb (200)"),
])
def test_bad_kinds_are_refused_with_the_key_and_the_reason(load, text, key, reason):
    refused(load, text, key, reason)


def test_zero_max_attempts_is_refused(load):
    refused(load, '[kinds.k]\nargv = ["true"]\nmax_attempts = 0\n', "kinds.k.max_attempts",
            "at least 1")


@pytest.mark.parametrize("value", ['"long"', "[1]"])
def test_a_bad_max_length_is_refused_with_its_key(load, value):
    refused(load, COMMAND + f"[kinds.k.args]\na = {{ max_length = {value} }}\n",
            "kinds.k.args.a.max_length", "integer")


# --- the command line ----------------------------------------------------------------------

def serve(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "bad.toml"
    config.write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "jobgate", "serve", "--config", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(("text", "key"), [
    ("[limits]\nmax_runing = 2\n", "limits.max_runing"),
    ('[kinds.k]\nargv = ["tool", "{input}"]\n', "kinds.k.argv"),
    ("[kinds.k]\nargv = [\"tool\"]\nprogress = '(unclosed'\n", "kinds.k.progress"),
])
def test_serve_with_a_bad_config_prints_one_line_and_exits_2(tmp_path, text, key):
    result = serve(tmp_path, text)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "jobgate.db").exists()


def test_serve_with_a_non_integer_max_length_prints_one_line(tmp_path):
    result = serve(tmp_path, COMMAND + "[kinds.k.args]\na = { max_length = [1] }\n")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "kinds.k.args.a.max_length" in result.stderr


def test_jobgate_db_as_a_bare_path_is_that_sqlite_file_as_with_db(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    for how, extra_env, args in (("JOBGATE_DB", {"JOBGATE_DB": "./env.db"}, []),
                                 ("--db", {}, ["--db", "./flag.db"])):
        result = subprocess.run(
            [sys.executable, "-m", "jobgate", "migrate", *args], cwd=tmp_path,
            env={**env, **extra_env}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{how}: {result.stderr}"
        assert "schema version 0 ->" in result.stdout, f"{how}: {result.stdout}"
    assert (tmp_path / "env.db").is_file() and (tmp_path / "flag.db").is_file()
    assert not (tmp_path / "jobgate.db").exists()


def test_a_bare_path_is_a_sqlite_url_and_a_url_stays_as_it_is(load):
    assert load(JOBGATE_DB="./env.db").storage.url == "sqlite:///./env.db"
    assert load(JOBGATE_DB="/var/lib/jobgate/j.db").storage.url == \
        "sqlite:////var/lib/jobgate/j.db"
    assert load(JOBGATE_STORAGE_URL="data/j.db").storage.url == "sqlite:///data/j.db"
    assert load(JOBGATE_DB="postgresql://u@h/db").storage.url == "postgresql://u@h/db"
