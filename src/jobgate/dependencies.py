"""Dependencies between jobs, as submitted: which ids a job may depend on, and the
`job:<id>/<name>` references of its `path` arguments. Pure functions, no I/O.

A job submitted with `depends_on: [ids]` waits, queued, until every one of them completed,
then enters the dispatch order as if submitted then; when one fails or is cancelled it
fails with "dependency failed: ID" (moves.py has those rules, the backends apply them in
the transaction that ends the dependency). A `path` argument may name an output of a job
it depends on, `job:<id>/<name>`: checked here at submit (the id must be among its
`depends_on`, the name a plain relative path) and found in that job's folder when it runs.

In a batch (batches.py) a job names an earlier or later job of the same batch by its
index, `#0`, in `depends_on` and in `job:#0/<name>`; the batch's ids are put in before the
jobs are stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from jobgate.arguments import JOB_PREFIX, ArgumentError
from jobgate.sanitize import shown, text_problem

if TYPE_CHECKING:
    from jobgate.kinds import Kind

#: How a job of a batch names another of the same batch: `#<index>` (from 0).
BATCH_REF = "#"
MAX_DEPENDENCIES = 1000


class DependencyError(ArgumentError):
    """A dependency that cannot be: unknown, someone else's, a cycle (HTTP 422)."""

    def __init__(self, message: str, field_name: str = "depends_on") -> None:
        super().__init__(field_name, message)


def unknown(dep_id: str) -> DependencyError:
    """The error for an id that is no job of the caller's (another user's job is refused
    in the same words as one that never was)."""
    return DependencyError(f"no job {shown(dep_id)} of yours to depend on")


def check_ids(depends_on: Sequence[Any]) -> list[str]:
    """`depends_on` as a list of distinct ids, in the order given (DependencyError for
    anything but short text)."""
    if len(depends_on) > MAX_DEPENDENCIES:
        raise DependencyError(f"at most {MAX_DEPENDENCIES} dependencies per job")
    out: list[str] = []
    for dep in depends_on:
        if not isinstance(dep, str) or not 0 < len(dep) <= 64 or text_problem(dep) is not None:
            raise DependencyError(f"expected job ids, got {shown(dep)}")
        if dep not in out:
            out.append(dep)
    return out


def parse_output_ref(value: str) -> tuple[str, str] | None:
    """(job id, output name) of `job:<id>/<name>`, or None if `value` is not one."""
    if not value.startswith(JOB_PREFIX):
        return None
    job_id, sep, name = value.removeprefix(JOB_PREFIX).partition("/")
    return (job_id, name) if sep else None


def _check_name(arg: str, value: str, name: str) -> None:
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or "\\" in name or any(p in ("..", ".") for p in parts):
        raise ArgumentError(arg, f"{shown(value)}: the output name must be a plain path "
                            "inside that job's folder (job:ID/NAME)")


def output_refs(kind: Kind, args: Mapping[str, Any], depends_on: Sequence[str]
                ) -> dict[str, Path]:
    """The `job:<id>/<name>` values of `args`' path arguments, each checked: `id` among
    `depends_on`, `name` a plain relative path. For `validate_args`' `uploads` mapping
    (the file is not there yet: it is found when the job runs, `output_file`)."""
    found: dict[str, Path] = {}
    for arg, spec in kind.args.items():
        value = args.get(arg)
        if spec.type != "path" or not isinstance(value, str) or \
                not value.startswith(JOB_PREFIX):
            continue
        ref = parse_output_ref(value)
        if ref is None:
            raise ArgumentError(arg, f"{shown(value)}: a job's output is named job:ID/NAME")
        job_id, name = ref
        if job_id not in depends_on:
            raise ArgumentError(arg, f"{shown(value)}: job {shown(job_id)} is not among "
                                "this job's depends_on")
        _check_name(arg, value, name)
        found[value] = Path(name)  # where it will be: found when the job runs
    return found


def output_file(job_dir: Callable[[str], Path], depends_on: Sequence[str], arg: str,
                value: str) -> Path:
    """The file `job:<id>/<name>` names when the job runs: inside that job's folder (links
    followed), a file (ArgumentError otherwise: a job's output is gone, or never was)."""
    ref = parse_output_ref(value)
    if ref is None or ref[0] not in depends_on:
        raise ArgumentError(arg, f"{shown(value)} is not an output of a job this job "
                            "depends on")
    job_id, name = ref
    _check_name(arg, value, name)
    folder = job_dir(job_id).resolve()
    try:
        path = (folder / name).resolve()
        found = path.is_relative_to(folder) and path.is_file()
    except (OSError, ValueError):
        found = False
    if not found:
        raise ArgumentError(arg, f"job {job_id} has no output {shown(name)} (deleted, or "
                            "never made)")
    return path


def batch_index(ref: str, size: int, at: int) -> int | None:
    """The index `#<n>` names in a batch of `size` (None: `ref` is an id, not `#…`);
    DependencyError for an index out of the batch or the job's own."""
    if not ref.startswith(BATCH_REF):
        return None
    text = ref.removeprefix(BATCH_REF)
    if not text.isascii() or not text.isdigit() or int(text) >= size:
        raise DependencyError(f"jobs[{at}]: {shown(ref)} names no job of this batch "
                              f"(#0 to #{size - 1})")
    if int(text) == at:
        raise DependencyError(f"jobs[{at}]: a job cannot depend on itself (a cycle)")
    return int(text)


def topological(edges: Sequence[Sequence[int]]) -> list[int]:
    """The indexes 0..n-1 in an order where each comes after those it depends on
    (`edges[i]`: the indexes job i depends on), earliest index first among equals;
    DependencyError naming a cycle if there is one."""
    order: list[int] = []
    state = [0] * len(edges)  # 0 unseen, 1 on the current path, 2 placed
    for start in range(len(edges)):
        if state[start]:
            continue
        path: list[tuple[int, int]] = [(start, 0)]
        state[start] = 1
        while path:
            node, i = path[-1]
            deps = edges[node]
            if i < len(deps):
                path[-1] = (node, i + 1)
                dep = deps[i]
                if state[dep] == 1:
                    nodes = [n for n, _ in path]
                    cycle = [*nodes[nodes.index(dep):], dep]
                    raise DependencyError("a cycle: " + " -> ".join(f"#{n}" for n in cycle))
                if state[dep] == 0:
                    state[dep] = 1
                    path.append((dep, 0))
                continue
            state[node] = 2
            order.append(node)
            path.pop()
    return order
