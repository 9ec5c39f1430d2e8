"""The public surface (`jobgate.__all__`) is listed once, and what it lists is there.

What "public" means is written in `jobgate/__init__.py`'s docstring: the names of `__all__`,
which are what a program embedding jobgate meets, every exception it can be raised among
them. These tests hold it to that: each name imports, is defined where `_EXPORTS` says,
has a docstring of its own; the imports for type checkers name the same; no exception
class of those modules is left out; the version is the one pyproject.toml says, wherever
it is shown.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import jobgate
from jobgate.config import Settings

ROOT = Path(__file__).parent.parent
INIT = ROOT / "src" / "jobgate" / "__init__.py"


def test_all_is_made_from_the_one_list() -> None:
    assert jobgate.__all__ == sorted(jobgate._EXPORTS)


@pytest.mark.parametrize("name", jobgate.__all__)
def test_each_name_imports_from_where_it_is_defined(name: str) -> None:
    obj = getattr(jobgate, name)
    namespace: dict[str, object] = {}
    exec(f"from jobgate import {name}", namespace)  # the way a caller writes it
    assert namespace[name] is obj
    assert obj is getattr(importlib.import_module(jobgate._EXPORTS[name]), name)
    assert obj.__module__ == jobgate._EXPORTS[name], "listed under the module defining it"


@pytest.mark.parametrize("name", jobgate.__all__)
def test_each_name_has_a_docstring_of_its_own(name: str) -> None:
    obj = getattr(jobgate, name)
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert doc and doc.strip(), f"{name} has no docstring"
    # A dataclass without one is given its signature, which says nothing of what it is.
    assert not doc.startswith(f"{name}("), f"{name} has only dataclass's made-up docstring"


def test_the_imports_for_type_checkers_name_the_same() -> None:
    tree = ast.parse(INIT.read_text())
    blocks = [node for node in tree.body if isinstance(node, ast.If)
              and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"]
    assert len(blocks) == 1
    named = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names:
            assert alias.asname == alias.name, f"`{alias.name} as {alias.name}` re-exports it"
            named[alias.name] = node.module
    assert named == jobgate._EXPORTS


def test_every_exception_a_caller_meets_is_exported() -> None:
    """Each exception class of the modules the public names come from is itself public."""
    missing = []
    for module_name in sorted(set(jobgate._EXPORTS.values())):
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception)
                    and obj.__module__ == module_name and not name.startswith("_")
                    and name not in jobgate.__all__):
                missing.append(f"{module_name}.{name}")
    assert not missing, f"exceptions a caller meets but cannot import from jobgate: {missing}"


@pytest.mark.parametrize("name", ["QueueFull", "NotFound", "Conflict", "IllegalMove",
                                  "ArgumentError", "ConfigError", "UnknownKind",
                                  "SchemaTooNew", "StoreError", "NonRetryable"])
def test_the_exceptions_are_there(name: str) -> None:
    assert issubclass(getattr(jobgate, name), Exception)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        jobgate.nothing  # noqa: B018


def test_the_version_is_read_once_from_pyproject() -> None:
    written = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert jobgate.__version__ == written == importlib.metadata.version("jobgate")
    shown = subprocess.run([sys.executable, "-m", "jobgate", "--version"], check=True,
                           capture_output=True, text=True).stdout
    assert shown.strip() == f"jobgate {written}"
    assert jobgate.create_app(Settings()).version == written  # OpenAPI's info.version


def test_no_source_names_an_extra_pyproject_does_not_have() -> None:
    """An install hint must name what exists: `pip install 'jobgate[X]'` needs extra X."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {})
    wrong = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for extra in _extras_named(path.read_text()):
            if extra not in extras:
                wrong.append(f"{path.relative_to(ROOT)}: jobgate[{extra}]")
    assert not wrong, f"hints naming extras pyproject.toml does not define: {wrong}"


def _extras_named(text: str) -> list[str]:
    found, start = [], 0
    while (at := text.find("jobgate[", start)) >= 0:
        end = text.find("]", at)
        found.append(text[at + len("jobgate["):end])
        start = end
    return found
