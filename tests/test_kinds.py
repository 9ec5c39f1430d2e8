"""Kinds: argument schemas, validation of submitted arguments, and argv rendering."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobgate.arguments import ArgSpec, ArgumentError, validate_args
from jobgate.config import ConfigError
from jobgate.kinds import Kind, parse_kind, render_argv


def kind(args: dict[str, Any], **extra: Any) -> Kind:
    """A command kind using every declared argument, as `[kinds.k]` in a config would."""
    argv = ["tool", *(f"{{{name}}}" for name in args)]
    return parse_kind("k", {"argv": argv, "args": args, **extra}, ConfigError)


@pytest.fixture
def input_dir(tmp_path: Path) -> Path:
    folder = (tmp_path / "input").resolve()
    (folder / "sub").mkdir(parents=True)
    (folder / "movie.mp4").write_text("x")
    (folder / "sub" / "clip one.mp4").write_text("x")
    (tmp_path / "secret.txt").write_text("x")
    return folder


def refused(k: Kind, args: Any, input_dir: Path, field: str | None, reason: str) -> None:
    with pytest.raises(ArgumentError, match=reason) as info:
        validate_args(k, args, input_dir)
    assert info.value.field == field


# --- presence ------------------------------------------------------------------------------

def test_defaults_fill_missing_arguments(input_dir):
    k = kind({"bitrate": {"default": "800k"}, "crf": {"type": "integer", "default": 23}})
    assert validate_args(k, {}, input_dir) == {"bitrate": "800k", "crf": 23}
    assert validate_args(k, {"crf": 30}, input_dir) == {"bitrate": "800k", "crf": 30}


def test_a_missing_required_argument_is_refused(input_dir):
    k = kind({"name": {"type": "string"}})
    refused(k, {}, input_dir, "name", "is required")
    refused(k, {"name": None}, input_dir, "name", "is required")


def test_an_unknown_argument_is_refused_by_name(input_dir):
    k = kind({"name": {"default": "x"}})
    refused(k, {"name": "a", "evil": "b"}, input_dir, "evil", "unknown argument")
    refused(kind({}), {"x": 1}, input_dir, "x", r"known: none")


@pytest.mark.parametrize("args", [None, [], "name=x", 3])
def test_args_must_be_an_object(input_dir, args):
    refused(kind({}), args, input_dir, None, "args must be an object")


# --- strings -------------------------------------------------------------------------------

def test_string_pattern_must_match_the_whole_value(input_dir):
    k = kind({"bitrate": {"pattern": "^[0-9]+k$"}})
    assert validate_args(k, {"bitrate": "800k"}, input_dir) == {"bitrate": "800k"}
    for bad in ("800", "800k; rm -rf /", "800k\n", "x800k"):
        refused(k, {"bitrate": bad}, input_dir, "bitrate", "does not match the pattern")


def test_string_max_length(input_dir):
    k = kind({"title": {"max_length": 5}})
    assert validate_args(k, {"title": "abcde"}, input_dir) == {"title": "abcde"}
    refused(k, {"title": "abcdef"}, input_dir, "title", "longer than 5 characters")
    big = kind({"title": {}})
    refused(big, {"title": "x" * 4097}, input_dir, "title", "longer than 4096")


@pytest.mark.parametrize("value", ["-rf", "--output=/etc/passwd", "-"])
def test_a_string_may_not_start_with_a_dash(input_dir, value):
    refused(kind({"name": {}}), {"name": value}, input_dir, "name", "must not start with '-'")


def test_strings_refuse_non_strings_and_nul(input_dir):
    k = kind({"name": {}})
    refused(k, {"name": 5}, input_dir, "name", "expected a string")
    refused(k, {"name": ["a"]}, input_dir, "name", "expected a string")
    refused(k, {"name": "a\x00b"}, input_dir, "name", "NUL")


@pytest.mark.parametrize("typ", ["string", "path", "url", "integer", "number", "boolean"])
def test_every_argument_refuses_a_lone_surrogate_or_a_nul_by_name(input_dir, typ):
    k = kind({"a": {"type": typ}})
    refused(k, {"a": "x\ud800"}, input_dir, "a", "valid Unicode")
    refused(k, {"a": "\udfff"}, input_dir, "a", "valid Unicode")
    refused(k, {"a": "x\x00"}, input_dir, "a", "NUL")


def test_an_argument_name_that_is_not_valid_text_is_refused_without_echoing_it(input_dir):
    k = kind({"a": {}})
    for name in ("\ud800", "a\x00"):
        with pytest.raises(ArgumentError, match="is not valid text") as info:
            validate_args(k, {name: "x"}, input_dir)
        str(info.value).encode("utf-8")  # the message itself is valid text
        assert "\x00" not in str(info.value)


# --- numbers and booleans ------------------------------------------------------------------

def test_integer_bounds_and_coercion_from_strings(input_dir):
    k = kind({"n": {"type": "integer", "min": 1, "max": 10}})
    assert validate_args(k, {"n": 5}, input_dir) == {"n": 5}
    assert validate_args(k, {"n": "7"}, input_dir) == {"n": 7}
    assert validate_args(k, {"n": 3.0}, input_dir) == {"n": 3}
    assert isinstance(validate_args(k, {"n": 3.0}, input_dir)["n"], int)
    assert validate_args(k, {"n": 1}, input_dir) == {"n": 1}
    assert validate_args(k, {"n": 10}, input_dir) == {"n": 10}
    refused(k, {"n": 0}, input_dir, "n", "at least 1")
    refused(k, {"n": "11"}, input_dir, "n", "at most 10")
    refused(k, {"n": "7x"}, input_dir, "n", "expected an integer")
    refused(k, {"n": "2.5"}, input_dir, "n", "expected an integer")
    refused(k, {"n": 2.5}, input_dir, "n", "expected an integer")
    refused(k, {"n": True}, input_dir, "n", "expected a number")
    refused(k, {"n": [1]}, input_dir, "n", "expected a number")


@pytest.mark.parametrize("text", ["\u00b2", "\u0661\u0662", "\uff11", "1_000", "0x10", " "])
def test_numbers_given_as_text_take_ascii_digits_only(input_dir, text):
    # "²" passes str.isdigit() but not int(); "١٢" and fullwidth "1" pass int() as 12 and 1.
    refused(kind({"n": {"type": "integer"}}), {"n": text}, input_dir, "n", "expected an integer")
    refused(kind({"x": {"type": "number"}}), {"x": text}, input_dir, "x", "expected a number")


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30, "9" * 40, 1e300])
def test_numbers_without_bounds_stay_within_64_bit_integers(input_dir, value):
    for typ in ("integer", "number"):
        refused(kind({"n": {"type": typ}}), {"n": value}, input_dir, "n", "out of range")
    k = kind({"n": {"type": "integer"}})
    assert validate_args(k, {"n": 2**63 - 1}, input_dir) == {"n": 2**63 - 1}
    assert validate_args(k, {"n": -(2**63)}, input_dir) == {"n": -(2**63)}


def test_number_bounds_and_coercion_from_strings(input_dir):
    k = kind({"x": {"type": "number", "min": 0, "max": 1.5}})
    assert validate_args(k, {"x": "0.25"}, input_dir) == {"x": 0.25}
    assert validate_args(k, {"x": 1}, input_dir) == {"x": 1}
    assert validate_args(k, {"x": "1.5e0"}, input_dir) == {"x": 1.5}
    refused(k, {"x": -0.1}, input_dir, "x", "at least 0")
    refused(k, {"x": "2"}, input_dir, "x", "at most 1.5")
    refused(k, {"x": "abc"}, input_dir, "x", "expected a number")
    refused(kind({"x": {"type": "number"}}), {"x": "nan"}, input_dir, "x", "finite")
    refused(kind({"x": {"type": "number"}}), {"x": float("inf")}, input_dir, "x", "finite")


def test_boolean(input_dir):
    k = kind({"fast": {"type": "boolean", "default": False}})
    assert validate_args(k, {}, input_dir) == {"fast": False}
    assert validate_args(k, {"fast": True}, input_dir) == {"fast": True}
    for text, value in [("true", True), ("yes", True), ("1", True), ("False", False),
                        ("no", False), ("0", False)]:
        assert validate_args(k, {"fast": text}, input_dir) == {"fast": value}
    refused(k, {"fast": "maybe"}, input_dir, "fast", "expected true or false")
    refused(k, {"fast": 1}, input_dir, "fast", "expected true or false")


def test_choices(input_dir):
    k = kind({"codec": {"choices": ["h264", "vp9"]},
              "level": {"type": "integer", "choices": [1, 2, 3], "default": 1}})
    assert validate_args(k, {"codec": "vp9", "level": "2"}, input_dir) == {
        "codec": "vp9", "level": 2}
    refused(k, {"codec": "H264"}, input_dir, "codec", "must be one of h264, vp9")
    refused(k, {"codec": "vp9", "level": 4}, input_dir, "level", "must be one of 1, 2, 3")


# --- paths ---------------------------------------------------------------------------------

def test_a_path_inside_the_input_folder_is_resolved(input_dir):
    k = kind({"input": {"type": "path"}})
    assert validate_args(k, {"input": "movie.mp4"}, input_dir) == {
        "input": str(input_dir / "movie.mp4")}
    assert validate_args(k, {"input": "sub/clip one.mp4"}, input_dir) == {
        "input": str(input_dir / "sub" / "clip one.mp4")}
    assert validate_args(k, {"input": "sub/../movie.mp4"}, input_dir) == {
        "input": str(input_dir / "movie.mp4")}
    inside_abs = str(input_dir / "movie.mp4")
    assert validate_args(k, {"input": inside_abs}, input_dir) == {"input": inside_abs}


@pytest.mark.parametrize("value", ["../secret.txt", "sub/../../secret.txt", "/etc/passwd",
                                   "..", "/"])
def test_a_path_may_not_leave_the_input_folder(input_dir, value):
    k = kind({"input": {"type": "path"}})
    refused(k, {"input": value}, input_dir, "input", "must stay inside the input folder")


def test_a_symlink_out_of_the_input_folder_is_refused(input_dir):
    (input_dir / "link.txt").symlink_to(input_dir.parent / "secret.txt")
    (input_dir / "linkdir").symlink_to(input_dir.parent)
    k = kind({"input": {"type": "path"}})
    refused(k, {"input": "link.txt"}, input_dir, "input", "must stay inside")
    refused(k, {"input": "linkdir/secret.txt"}, input_dir, "input", "must stay inside")


def test_a_missing_file_is_refused(input_dir):
    k = kind({"input": {"type": "path"}})
    refused(k, {"input": "nope.mp4"}, input_dir, "input", "no such file")


def test_a_path_starting_with_a_dash_becomes_an_absolute_path(input_dir):
    (input_dir / "-rf").write_text("x")
    k = kind({"input": {"type": "path"}})
    assert validate_args(k, {"input": "-rf"}, input_dir) == {"input": str(input_dir / "-rf")}


def test_a_path_too_long_for_the_file_system_is_refused(input_dir):
    k = kind({"input": {"type": "path"}})
    refused(k, {"input": "a" * 300}, input_dir, "input", "not a usable file name")
    refused(k, {"input": "/".join(["a"] * 2040)}, input_dir, "input", "not a usable file name")


@pytest.fixture
def deployment(tmp_path: Path) -> dict[str, Path]:
    """A deployment folder that is also the input folder (`input_dir = "."`): its database
    with WAL files, its data folder (secrets, other jobs' outputs), its config."""
    root = (tmp_path / "site").resolve()
    (root / "data" / "secrets").mkdir(parents=True)
    (root / "data" / "secrets" / "jwt.key").write_text("key")
    (root / "data" / "jobs" / "01JOB").mkdir(parents=True)
    (root / "data" / "jobs" / "01JOB" / "out.txt").write_text("someone else's")
    for name in ("jobgate.db", "jobgate.db-wal", "jobgate.db-shm", "jobgate.toml", "ok.txt"):
        (root / name).write_text("x")
    return {"root": root, "db": root / "jobgate.db", "data": root / "data",
            "config": root / "jobgate.toml"}


def _protected(site: dict[str, Path]) -> list[Path]:
    db = site["db"]
    return [db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal")),
            site["data"], site["config"]]


@pytest.mark.parametrize("value", [
    "jobgate.db", "jobgate.db-wal", "jobgate.db-shm", "./jobgate.db", "data/../jobgate.db",
    "jobgate.toml", "data", "data/secrets", "data/secrets/jwt.key", "data/jobs/01JOB/out.txt",
    "data/jobs", "data/jobs/01JOB", "data/jobs/01JOB/../../secrets/jwt.key",
])
def test_a_path_may_never_name_the_servers_own_files(deployment, value):
    k = kind({"input": {"type": "path"}})
    with pytest.raises(ArgumentError, match="a file of the server itself") as info:
        validate_args(k, {"input": value}, deployment["root"],
                      protected=_protected(deployment))
    assert info.value.field == "input"


def test_a_folder_holding_the_servers_files_is_refused(deployment):
    site = deployment["root"]
    (site / "media").mkdir()
    (site / "media" / "movie.mp4").write_text("x")
    inner = {**deployment, "db": site / "media" / "jobgate.db"}
    (site / "media" / "jobgate.db").write_text("x")
    k = kind({"input": {"type": "path"}})
    with pytest.raises(ArgumentError, match="a file of the server itself"):
        validate_args(k, {"input": "media"}, site, protected=_protected(inner))
    assert validate_args(k, {"input": "media/movie.mp4"}, site,
                         protected=_protected(inner)) == {"input": str(site / "media/movie.mp4")}


def test_symlinks_and_hard_links_to_the_servers_files_are_refused(deployment):
    site = deployment["root"]
    (site / "innocent.txt").symlink_to(site / "data" / "secrets" / "jwt.key")
    (site / "folder").symlink_to(site / "data" / "jobs")
    os.link(site / "jobgate.db", site / "copy.db")
    k = kind({"input": {"type": "path"}})
    for value in ("innocent.txt", "folder/01JOB/out.txt", "copy.db"):
        with pytest.raises(ArgumentError, match="a file of the server itself"):
            validate_args(k, {"input": value}, site, protected=_protected(deployment))


def test_other_files_of_the_deployment_folder_are_still_accepted(deployment):
    k = kind({"input": {"type": "path"}})
    assert validate_args(k, {"input": "ok.txt"}, deployment["root"],
                         protected=_protected(deployment)) == {
        "input": str(deployment["root"] / "ok.txt")}


# --- urls ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["ftp://93.184.216.34/x", "file:///etc/passwd", "http://",
                                 "javascript:alert(1)", "93.184.216.34", "//93.184.216.34/"])
def test_a_url_must_be_http_or_https_with_a_host(input_dir, url):
    k = kind({"url": {"type": "url"}})
    refused(k, {"url": url}, input_dir, "url", "http:// or https://")


def test_a_public_address_is_accepted(input_dir):
    k = kind({"url": {"type": "url"}})
    for url in ("http://93.184.216.34/video", "https://93.184.216.34:8443/a?b=c",
                "https://[2606:2800:220:1:248:1893:25c8:1946]/x"):
        assert validate_args(k, {"url": url}, input_dir) == {"url": url}


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://127.1.2.3:8080/admin", "http://10.0.0.1/",
    "http://172.16.5.4/", "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/",
    "http://169.254.1.1/", "http://[::1]/", "http://[fe80::1]/", "http://[fd00::1]/",
    "http://0.0.0.0/", "http://[::ffff:127.0.0.1]/",
])
def test_loopback_private_and_link_local_hosts_are_refused(input_dir, url):
    k = kind({"url": {"type": "url"}})
    refused(k, {"url": url}, input_dir, "url", "private or local address")


def test_allow_private_urls_lets_local_hosts_through(input_dir):
    k = kind({"url": {"type": "url"}}, allow_private_urls=True)
    for url in ("http://127.0.0.1:8000/", "http://10.0.0.1/", "http://[::1]/",
                "http://169.254.1.1/"):
        assert validate_args(k, {"url": url}, input_dir) == {"url": url}


def test_resolve_false_skips_the_host_check_but_not_the_scheme(input_dir):
    k = kind({"url": {"type": "url"}})
    assert validate_args(k, {"url": "http://127.0.0.1/"}, input_dir, resolve=False) == {
        "url": "http://127.0.0.1/"}
    with pytest.raises(ArgumentError, match="http"):
        validate_args(k, {"url": "ftp://127.0.0.1/"}, input_dir, resolve=False)


# --- argv ----------------------------------------------------------------------------------

NASTY = [
    "two words",
    "it's \"quoted\"",
    "a; rm -rf /",
    "$(touch /tmp/pwned) `id` ${HOME}",
    "x && y || z | w > out < in &",
    "{output_dir} {job_id} {name}",
    "*.mp4 ~ \\ \t tab",
    "ünïcødé ✓",
]


@pytest.mark.parametrize("value", NASTY)
def test_each_argument_is_exactly_one_argv_element(tmp_path, value):
    k = parse_kind("k", {"argv": ["tool", "--title={name}", "{name}", "{output_dir}/out.mp4",
                                  "{job_id}", "--fast={fast}", "{n}"],
                         "args": {"name": {}, "fast": {"type": "boolean", "default": True},
                                  "n": {"type": "number", "default": 1.5}}}, ConfigError)
    args = validate_args(k, {"name": value}, tmp_path)
    argv = render_argv(k, args, tmp_path / "job", "J1")
    assert argv == ["tool", f"--title={value}", value, f"{tmp_path / 'job'}/out.mp4", "J1",
                    "--fast=true", "1.5"]


def test_rendered_argv_reaches_the_program_unchanged_without_a_shell(tmp_path):
    marker = tmp_path / "pwned"
    argv_template = [sys.executable, "-c", "import sys; sys.stdout.write(repr(sys.argv[1:]))"]
    names = [f"a{i}" for i in range(len(NASTY))]
    k = parse_kind("k", {"argv": argv_template + [f"{{{n}}}" for n in names],
                         "args": {n: {} for n in names}}, ConfigError)
    values = [v.replace("/tmp/pwned", str(marker)) for v in NASTY]
    argv = render_argv(k, validate_args(k, dict(zip(names, values, strict=True)), tmp_path),
                       tmp_path, "J1")
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30,
                         env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert ast.literal_eval(out.stdout) == values
    assert not marker.exists()


def test_unset_optional_arguments_render_as_empty_elements(tmp_path):
    k = Kind(name="k", argv=("tool", "{opt}"),
             args={"opt": ArgSpec(type="string", required=False, default=None)})
    args = validate_args(k, {}, tmp_path)
    assert args == {"opt": None}
    assert render_argv(k, args, tmp_path, "J1") == ["tool", ""]


# --- Python kinds --------------------------------------------------------------------------

def resize(ctx: Any, width: int, height: int = 480, scale: float = 1.0, keep: bool = True,
           label: str = "x", anything=None, *rest: Any, **options: Any) -> None:
    """A Python kind's function: its signature is the schema."""


def test_a_python_kind_takes_its_schema_from_the_signature(input_dir):
    k = parse_kind("resize", {"function": f"{__name__}:resize"}, ConfigError)
    assert k.argv is None and k.function == f"{__name__}:resize"
    schema = {name: (a.type, a.required, a.default) for name, a in k.args.items()}
    assert schema == {
        "width": ("integer", True, None),
        "height": ("integer", False, 480),
        "scale": ("number", False, 1.0),
        "keep": ("boolean", False, True),
        "label": ("string", False, "x"),
        "anything": ("string", False, None),
    }
    assert validate_args(k, {"width": "640", "keep": "no"}, input_dir) == {
        "width": 640, "height": 480, "scale": 1.0, "keep": False, "label": "x",
        "anything": None}
    refused(k, {}, input_dir, "width", "is required")
    refused(k, {"width": 1, "rest": 1}, input_dir, "rest", "unknown argument")


def test_a_python_kind_with_args_uses_them_instead_of_the_signature(input_dir):
    k = parse_kind("resize", {"function": f"{__name__}:resize",
                              "args": {"width": {"type": "integer", "max": 4096}}},
                   ConfigError)
    assert list(k.args) == ["width"]
    refused(k, {"width": 5000}, input_dir, "width", "at most 4096")


def test_the_demo_kind_schema():
    k = parse_kind("countdown", {"function": "jobgate.demo:countdown"}, ConfigError)
    assert {n: (a.type, a.default) for n, a in k.args.items()} == {
        "seconds": ("integer", 10), "fail": ("boolean", False)}
    assert k.schema()["type"] == "python"
    assert k.schema()["args"]["seconds"]["required"] is False


# --- memory ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("memory_mb", "auto", "reserved", "shown"), [
    (None, False, 0, 0), (512, False, 512, 512), ("auto", True, 0, "auto")])
def test_a_kinds_memory_is_megabytes_or_auto(memory_mb, auto, reserved, shown):
    extra = {} if memory_mb is None else {"memory_mb": memory_mb}
    k = kind({}, memory_limit_mb=1024, **extra)
    assert (k.memory_auto, k.memory_mb) == (auto, reserved)
    assert (k.schema()["memory_mb"], k.schema()["memory_limit_mb"]) == (shown, 1024)


@pytest.mark.parametrize(("memory_mb", "reason"), [
    ("Auto", 'kinds.k.memory_mb: expected an integer (megabytes) or "auto", got \'Auto\''),
    ([512], 'kinds.k.memory_mb: expected an integer (megabytes) or "auto", got [512]'),
    (2048, "kinds.k.memory_mb: 2048 is more than memory_limit_mb (1024); a job could never "
           "stay under its limit"),
])
def test_a_bad_memory_estimate_is_refused_with_its_key(memory_mb, reason):
    with pytest.raises(ConfigError) as info:
        kind({}, memory_mb=memory_mb, memory_limit_mb=1024)
    assert str(info.value) == reason
