"""Measurement core shared by profile.py, the benchmarks and (later) the training callbacks:
timing statistics (timing.py), allocator-aware peak memory (memory.py) and FLOP counting
cross-checked against analytic formulas (flops.py). Depends on torch alone (ptflops optional).

Named `profiling`, never `profile`: see profile.py for why.
"""
from .flops import FLOP_TOLERANCE, FlopReport, counted_flops, flop_report, ptflops_macs
from .memory import CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD, MemoryStats, measure_peak_memory, module_bytes, peak_allocated_bytes
from .timing import TimeBudgetExceeded, TimingStats, summarize_times, time_fn

__all__ = [
    "CPU_MEMORY_METHOD",
    "CUDA_MEMORY_METHOD",
    "FLOP_TOLERANCE",
    "FlopReport",
    "MemoryStats",
    "TimeBudgetExceeded",
    "TimingStats",
    "counted_flops",
    "flop_report",
    "measure_peak_memory",
    "module_bytes",
    "peak_allocated_bytes",
    "ptflops_macs",
    "summarize_times",
    "time_fn",
]
