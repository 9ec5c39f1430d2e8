"""Kinds declared in code, for tests/test_code_kinds.py: imported by `jobgate serve` through
`[server] kind_modules` and, by its `module:function` path, by the worker's pool processes."""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

import jobgate

jobs = jobgate.KindRegistry()


@jobs.kind(max_running=2, timeout="1m")
def count_words(ctx: Any, text: Annotated[str, jobgate.Arg(max_length=200)],
                times: Annotated[int, jobgate.Arg(min=1, max=10, description="repeats")] = 1
                ) -> dict[str, Any]:
    """Count the words of a text, in a pool process."""
    ctx.progress(50, "counting")
    return {"words": len(text.split()) * times, "pid": os.getpid()}


@jobs.kind("shout", in_process=True)
def shout(ctx: Any, text: str, style: Literal["upper", "title"] = "upper") -> dict[str, Any]:
    """Shout a text, in the worker's own process."""
    ctx.progress(90, "shouting")
    return {"text": text.upper() if style == "upper" else text.title(), "pid": os.getpid()}
