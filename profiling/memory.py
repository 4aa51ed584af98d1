"""Peak memory from the allocator's own accounting: `measure_peak_memory` / `peak_allocated_bytes` for one call
(CUDA: max_memory_allocated after a reset; CPU: the PyTorch allocator's running total in profiler events, since
tracemalloc cannot see tensors), `CPUAllocatorPeak` for the same over live work, and `StepMemory`, the per-step
meter of the training callbacks (CUDA: the allocator's peak; CPU: the process's resident-set high-water mark).
Tensors that exist before the work are excluded; `module_bytes` gives a module's own parameters and buffers."""
from __future__ import annotations

import contextlib
import gc
import os
import resource
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

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


class CPUAllocatorPeak:
    """The method of CPU_MEMORY_METHOD held open over live work that is not one Python call (a training
    step across Lightning hooks): `start()`, then `stop()` -> peak bytes allocated above the level at
    the start. Costly: the profiler records every op in between, so use it on chosen steps only."""

    def __init__(self):
        self._prof = None

    @property
    def active(self) -> bool:
        return self._prof is not None

    def start(self) -> None:
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _quiet_fd2():  # the profiler's native layer prints on start and stop
            self._prof.__enter__()

    def stop(self) -> int:
        if self._prof is None:
            return 0
        prof, self._prof = self._prof, None
        with _quiet_fd2():
            prof.__exit__(None, None, None)
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


def _cpu_peak(fn: Callable[[], object]) -> int:
    meter = CPUAllocatorPeak()
    meter.start()
    try:
        fn()
    finally:
        peak = meter.stop()
    return peak


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


CUDA_STEP_MEMORY_METHOD = "torch.cuda.max_memory_allocated since reset_peak_memory_stats at the step's start (memory_reserved alongside)"
RSS_STEP_MEMORY_METHOD = ("process resident-set high-water mark (Linux VmHWM, reset at the step's start through "
                          "/proc/self/clear_refs): all memory the process holds, tensors and everything else")
RUSAGE_STEP_MEMORY_METHOD = ("process lifetime peak resident set (getrusage ru_maxrss; this system cannot reset it, "
                             "so the figure never falls)")
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(*keys: str) -> dict:
    out = {}
    with open(_STATUS, "rb") as f:
        for line in f:
            for key in keys:
                if line.startswith(key):
                    out[key] = int(line.split()[1])  # "VmHWM:   223984 kB"
    return out


def _can_reset_rss_peak() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")  # 5: reset the resident-set high-water mark to the current resident set
        return len(_status_kib(b"VmHWM:", b"VmRSS:")) == 2
    except OSError:
        return False


@dataclass
class StepMemoryReading:
    peak_bytes: int  # the peak during the step, absolute (not above the start level)
    start_bytes: int  # the level when the step began
    reserved_bytes: Optional[int] = None  # CUDA: the caching allocator's reserved memory at the step's end

    @property
    def growth_bytes(self) -> int:
        return max(0, self.peak_bytes - self.start_bytes)


class StepMemory:
    """Peak memory of live work between `start()` and `stop()`, cheap enough to run every step
    (two small /proc accesses on CPU, two allocator-statistics calls on CUDA)."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.method = CUDA_STEP_MEMORY_METHOD
        elif _can_reset_rss_peak():
            self.method = RSS_STEP_MEMORY_METHOD
        else:
            self.method = RUSAGE_STEP_MEMORY_METHOD
        self._start = 0

    def _rss_now(self) -> int:
        if self.method == RSS_STEP_MEMORY_METHOD:
            return _status_kib(b"VmRSS:")[b"VmRSS:"] * 1024
        return _maxrss_bytes()

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.method == RSS_STEP_MEMORY_METHOD:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")
            self._start = self._rss_now()
        else:
            self._start = _maxrss_bytes()

    def stop(self) -> StepMemoryReading:
        if self.cuda:
            return StepMemoryReading(torch.cuda.max_memory_allocated(self.device), self._start,
                                     torch.cuda.memory_reserved(self.device))
        if self.method == RSS_STEP_MEMORY_METHOD:
            return StepMemoryReading(_status_kib(b"VmHWM:")[b"VmHWM:"] * 1024, self._start)
        return StepMemoryReading(_maxrss_bytes(), self._start)


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def free_memory() -> None:
    """Collect garbage and hand cached CUDA blocks back, so the next measurement starts from a clean slate."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
