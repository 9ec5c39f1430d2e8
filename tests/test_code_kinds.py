"""Kinds declared in code (`jobgate.KindRegistry`): the schema a signature stands for,
declarations refused where they are made, the merge with TOML kinds and its clashes, and a
real `jobgate serve` running kinds of `[server] kind_modules` on both backends."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

import jobgate
from conftest import Backend, Server, wait_job
from jobgate import Arg, ConfigError, KindRegistry
from jobgate.config import Settings, load_settings

TESTS = Path(__file__).parent


def top_level(ctx: Any, name: str, count: Annotated[int, Arg(min=1, max=10,
              description="how many")] = 3, ratio: float = 0.5, loud: bool = False,
              mode: Literal["fast", "slow"] = "fast", level: Literal[1, 2, 3] = 2,
              source: Path = Path("in.txt"), site: Annotated[str, Arg(type="url")] = "",
              note: str | None = None, plain: Any = None) -> None:
    """Do a thing.

    At length."""


def only_ctx(ctx: Any) -> int:
    return 1


def with_list(ctx: Any, items: list[int]) -> None:
    pass


def schema_of(kind: jobgate.Kind) -> dict[str, dict[str, Any]]:
    return {n: {k: v for k, v in a.items() if v is not None and v != ""}
            for n, a in kind.schema()["args"].items()}


def test_the_signature_is_the_schema() -> None:
    jobs = KindRegistry()
    assert jobs.kind(max_running=2, memory_mb=300, timeout="5m", max_attempts=3,
                     priority=4)(top_level) is top_level
    kind = jobs.kinds["top_level"]
    assert kind.function == f"{__name__}:top_level"
    assert (kind.max_running, kind.memory_mb, kind.timeout_s, kind.max_attempts,
            kind.priority, kind.in_process) == (2, 300, 300.0, 3, 4, False)
    assert kind.description == "Do a thing."
    assert schema_of(kind) == {
        "name": {"type": "string", "required": True},
        "count": {"type": "integer", "required": False, "default": 3, "min": 1, "max": 10,
                  "description": "how many"},
        "ratio": {"type": "number", "required": False, "default": 0.5},
        "loud": {"type": "boolean", "required": False, "default": False},
        "mode": {"type": "string", "required": False, "default": "fast",
                 "choices": ["fast", "slow"]},
        "level": {"type": "integer", "required": False, "default": 2, "choices": [1, 2, 3]},
        "source": {"type": "path", "required": False, "default": "in.txt"},
        "site": {"type": "url", "required": False},
        "note": {"type": "string", "required": False},
        "plain": {"type": "string", "required": False},
    }
    print(schema_of(kind))
    jobs.kind(only_ctx)  # bare decorator; no arguments at all
    assert jobs.kinds["only_ctx"].args == {}


def test_bad_declarations_are_refused_where_they_are_made() -> None:
    jobs = KindRegistry()
    with pytest.raises(ConfigError, match=r"^kinds\.<lambda>: a kind's name"):
        jobs.kind(in_process=True)(lambda ctx: 1)
    with pytest.raises(ConfigError, match=r"^kinds\.anon: .*<lambda> is not a function at "
                       r"a module's top level .* in_process=True$"):
        jobs.kind("anon")(lambda ctx: 1)

    def nested(ctx: Any, text: str) -> str:
        return text

    with pytest.raises(ConfigError, match=r"nested is not a function at a module's top"):
        jobs.kind("nested")(nested)
    jobs.kind("nested", in_process=True)(nested)  # run in the worker's own process: fine
    kind = jobs.kinds["nested"]
    assert kind.in_process and "<locals>" in (kind.function or "")
    from jobgate.kinds import load_function
    assert load_function(kind.function or "", "k", ConfigError) is nested

    with pytest.raises(ConfigError, match=r"^kinds\.with_list\.args\.items: the annotation "
                       r"list\[int\] is no argument type \(supported: int, float"):
        jobs.kind(with_list)
    with pytest.raises(ConfigError, match=r"^kinds\.top_level\.args\.count\.default: "):
        jobs.kind()(_bad_default)
    with pytest.raises(ConfigError, match=r"first parameter is the job's context"):
        jobs.kind("noctx", in_process=True)(lambda: 1)
    with pytest.raises(ConfigError, match=r"^kinds\.top_level\.max_attempts: must be at least"):
        jobs.kind(max_attempts=0)(top_level)
    jobs.kind(top_level)
    with pytest.raises(ConfigError, match=rf"^kinds\.top_level: declared twice in this "
                       rf"registry \({__name__}:top_level and {__name__}:only_ctx\)"):
        jobs.kind("top_level")(only_ctx)


def _bad_default(ctx: Any, count: Annotated[int, Arg(min=1)] = 0) -> None:
    pass


_bad_default.__name__ = "top_level"


def test_toml_and_code_kinds_merge_and_a_clash_names_both(tmp_path: Path) -> None:
    config = tmp_path / "jobgate.toml"
    config.write_text('[kinds.noop]\nfunction = "jobgate.demo:noop"\nin_process = true\n'
                      '[kinds.only_ctx]\nargv = ["true"]\n')
    jobs = KindRegistry()
    jobs.kind(top_level)
    settings = jobs.merge_into(load_settings(config, env={}))
    assert sorted(settings.kinds) == ["noop", "only_ctx", "top_level"]
    assert jobs.merge_into(settings) is settings  # again: the same kinds, no clash

    clash = KindRegistry()
    clash.kind(only_ctx)
    with pytest.raises(ConfigError) as caught:
        clash.merge_into(settings)
    print(caught.value)
    assert str(caught.value) == (
        f"kinds.only_ctx: declared twice, in {config.resolve()} ([kinds.only_ctx]) and in "
        f"code ({__name__}:only_ctx); rename one of them")
    assert sorted(settings.kinds) == ["noop", "only_ctx", "top_level"]  # left as it was

    twice = KindRegistry()
    twice.kind("top_level")(only_ctx)
    with pytest.raises(ConfigError, match=rf"^kinds\.top_level: declared twice, in code "
                       rf"\({__name__}:top_level\) and in code \({__name__}:only_ctx\)"):
        twice.merge_into(settings)

    budget = KindRegistry()
    budget.kind("big", memory_mb=900)(only_ctx)
    small = Settings()
    small.limits.memory_budget_mb = 500
    with pytest.raises(ConfigError, match=r"^kinds\.big\.memory_mb: 900 is more than "
                       r"limits\.memory_budget_mb"):
        budget.merge_into(small)
    assert small.kinds == {}


def test_kind_modules_are_merged_at_load_and_refused_in_one_line(tmp_path: Path) -> None:
    if str(TESTS) not in sys.path:
        sys.path.append(str(TESTS))
    config = tmp_path / "jobgate.toml"
    config.write_text('[server]\nkind_modules = ["code_kinds_mod"]\n'
                      '[schedules.nightly]\nkind = "shout"\ncron = "0 3 * * *"\nowner = "alice"\n'
                      'args = { text = "hi" }\n')
    settings = load_settings(config, env={})
    assert sorted(settings.kinds) == ["count_words", "shout"]
    assert settings.kinds["count_words"].function == "code_kinds_mod:count_words"
    assert "nightly" in settings.schedules  # a schedule may name a kind of code
    config.write_text('[server]\nkind_modules = ["code_kinds_mod"]\n'
                      '[kinds.shout]\nargv = ["echo"]\n')
    with pytest.raises(ConfigError, match=r"^kinds\.shout: declared twice, in .*jobgate\.toml "
                       r"\(\[kinds\.shout\]\) and in code \(code_kinds_mod:shout\)"):
        load_settings(config, env={})
    config.write_text('[server]\nkind_modules = ["no_such_kinds_mod"]\n')
    with pytest.raises(ConfigError, match=r"^server\.kind_modules: cannot import "
                       r"no_such_kinds_mod: No module named"):
        load_settings(config, env={})
    config.write_text('[server]\nkind_modules = ["jobgate.demo"]\n')
    with pytest.raises(ConfigError, match=r"^server\.kind_modules: jobgate\.demo has no "
                       r"module-level jobgate\.KindRegistry$"):
        load_settings(config, env={})


def test_serve_runs_kinds_declared_in_code(start_server: Any, backend: Backend) -> None:
    server: Server = start_server(
        f'[server]\nkind_modules = ["code_kinds_mod"]\npython_path = ["{TESTS}"]\n', kinds="")
    assert server.proc is not None
    with server.client() as http:
        kinds = http.get("/api/kinds").json()
        print(backend.name, sorted(k["name"] for k in kinds["kinds"]))
        bad = http.post("/api/jobs", json={"kind": "count_words",
                                           "args": {"text": "a b", "times": 11}})
        assert bad.status_code == 422, bad.text
        assert "times" in bad.json()["error"]["message"], bad.text
        print(bad.json())
        bad = http.post("/api/jobs", json={"kind": "shout",
                                           "args": {"text": "a", "style": "whisper"}})
        assert bad.status_code == 422 and "style" in bad.json()["error"]["message"], bad.text
        print(bad.json())
        pooled = http.post("/api/jobs", json={"kind": "count_words",
                                              "args": {"text": "a b c", "times": 2}})
        inline = http.post("/api/jobs", json={"kind": "shout",
                                              "args": {"text": "hi there", "style": "title"}})
        assert pooled.status_code in (200, 201) and inline.status_code in (200, 201)
        done = wait_job(http, pooled.json()["id"], "completed", "failed")
        assert done["state"] == "completed", done
        assert done["result"]["words"] == 6 and done["message"] == "counting"
        assert done["result"]["pid"] != server.proc.pid  # a pool process ran it
        done = wait_job(http, inline.json()["id"], "completed", "failed")
        assert done["state"] == "completed", done
        assert done["result"]["text"] == "Hi There" and done["message"] == "shouting"
        assert done["result"]["pid"] == server.proc.pid  # the server's own process
        print(backend.name, "completed", done["result"], done["message"])

        # A parameter annotated Path gets a pathlib.Path, in a pool process and in process.
        (server.folder / "input" / "more.txt").write_text(" -- by me")
        more = str(server.folder / "input" / "more.txt")
        pooled = http.post("/api/jobs", json={"kind": "count_words",
                                              "args": {"text": "a b", "also": more}})
        inline = http.post("/api/jobs", json={"kind": "shout",
                                              "args": {"text": "hi", "signed": more}})
        done = wait_job(http, pooled.json()["id"], "completed", "failed")
        assert (done["result"]["words"], done["result"]["also"]) == (5, "PosixPath"), done
        done = wait_job(http, inline.json()["id"], "completed", "failed")
        assert done["result"]["text"] == "HI -- BY ME", done
        assert done["result"]["signed"] == "PosixPath"
        plain = http.post("/api/jobs", json={"kind": "shout", "args": {"text": "hi"}})
        done = wait_job(http, plain.json()["id"], "completed", "failed")
        assert (done["result"]["text"], done["result"]["signed"]) == ("HI", "NoneType"), done
