"""Kinds declared in code, for tests/test_code_kinds.py: imported by `jobgate serve` through
`[server] kind_modules` and, by its `module:function` path, by the worker's pool processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import jobgate

jobs = jobgate.KindRegistry()


@jobs.kind(max_running=2, timeout="1m")
def count_words(ctx: Any, text: Annotated[str, jobgate.Arg(max_length=200)],
                times: Annotated[int, jobgate.Arg(min=1, max=10, description="repeats")] = 1,
                also: Path | None = None) -> dict[str, Any]:
    """Count the words of a text (and of a file), in a pool process."""
    ctx.progress(50, "counting")
    words = len(text.split()) + (len(also.read_text().split()) if also else 0)
    return {"words": words * times, "pid": os.getpid(), "also": type(also).__name__}


@jobs.kind("shout", in_process=True)
def shout(ctx: Any, text: str, style: Literal["upper", "title"] = "upper",
          signed: Annotated[Path | None, jobgate.Arg(description="a signature file")] = None
          ) -> dict[str, Any]:
    """Shout a text, in the worker's own process."""
    ctx.progress(90, "shouting")
    text += signed.read_text() if signed else ""
    return {"text": text.upper() if style == "upper" else text.title(), "pid": os.getpid(),
            "signed": type(signed).__name__}
