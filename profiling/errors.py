"""How a failure is told: `is_oom` (an allocation that failed, on any device) and `one_line` (an exception as
one line). The sweep records points with them, the CLIs end a run in one sentence with them, training too."""
from __future__ import annotations

import re

import torch

_OOM_MESSAGE = re.compile(r"out of memory|not enough memory|(can't|cannot|could not|couldn't|unable to|failed to) allocate", re.I)


def is_oom(e: BaseException) -> bool:
    """torch.OutOfMemoryError, MemoryError, or a RuntimeError whose message says an allocation failed (the CPU
    allocator raises a plain RuntimeError)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and bool(_OOM_MESSAGE.search(str(e)))


def one_line(e: BaseException) -> str:
    """`Type: first line of the message`, or the type alone."""
    text = str(e).strip()
    first = text.splitlines()[0].strip() if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
