"""Peak memory of one call, from the allocator's own accounting.

CUDA: torch.cuda.reset_peak_memory_stats, then max_memory_allocated after the call, minus what was
allocated before it. CPU: tracemalloc does not see tensor memory, so the PyTorch CPU allocator's
events are read through the profiler (profile_memory=True); every allocation event carries the
allocator's running total, and the peak of that total during the call, above its level at the start,
is the figure. Memory that bypasses the PyTorch allocator (oneDNN / BLAS scratch, Python objects) is
not seen on CPU. In both cases tensors that exist before the call (parameters, inputs) are excluded;
`module_bytes` reports a module's own parameters and buffers separately.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

CPU_MEMORY_METHOD = "torch.profiler CPU allocator events (profile_memory=True): peak bytes allocated during the call above the level at its start"
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus bytes allocated before the call"


@dataclass
class MemoryStats:
    peak_bytes: int  # above the level before the call
    module_bytes: int  # parameters + buffers of the module, reported apart
    method: str

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20

    def to_dict(self) -> dict:
        d = asdict(self)
        d["peak_mib"] = self.peak_mib
        return d


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


@contextlib.contextmanager
def _quiet_fd2():
    """The profiler's native layer prints start/stop lines on fd 2; keep them off the console."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak(fn: Callable[[], object]) -> int:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            ef = node.extra_fields
            events.append((node.start_time_ns, ef.alloc_size, ef.total_allocated))
        stack.extend(node.children)
    if not events:
        return 0
    events.sort(key=lambda e: e[0])
    # the running total carries over from earlier profiling sessions: baseline = level before the first event
    baseline = events[0][2] - events[0][1]
    return max(0, max(e[2] for e in events) - baseline)


def _cuda_peak(fn: Callable[[], object], device) -> int:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def peak_allocated_bytes(fn: Callable[[], object], device="cpu") -> int:
    """Peak bytes allocated during `fn()` above the level at its start."""
    dev = torch.device(device)
    return _cuda_peak(fn, dev) if dev.type == "cuda" else _cpu_peak(fn)


def measure_peak_memory(fn: Callable[[], object], module: nn.Module, device="cpu") -> MemoryStats:
    dev = torch.device(device)
    return MemoryStats(
        peak_bytes=peak_allocated_bytes(fn, dev),
        module_bytes=module_bytes(module),
        method=CUDA_MEMORY_METHOD if dev.type == "cuda" else CPU_MEMORY_METHOD,
    )
