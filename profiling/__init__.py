"""Measurement core shared by profile.py, the benchmarks and the training callbacks (callbacks/):
timing statistics and a step timer (timing.py), allocator-aware peak memory and a per-step meter
(memory.py), FLOP counting cross-checked against analytic formulas (flops.py) and device peak
FLOP/s for MFU (peaks.py). Depends on torch alone (ptflops optional).

Named `profiling`, never `profile`: see profile.py for why.
"""
from .flops import FLOP_TOLERANCE, FlopReport, FlopTally, counted_flops, flop_report, ptflops_macs
from .memory import (CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD, MemoryStats, StepMemory, StepMemoryReading, measure_peak_memory,
                     module_bytes, peak_allocated_bytes)
from .peaks import matmul_dtype, mfu_note, peak_tflops
from .timing import Clock, ManualClock, StepTimer, TimeBudgetExceeded, TimingStats, summarize_times, synchronize, time_fn

__all__ = [
    "CPU_MEMORY_METHOD",
    "Clock",
    "CUDA_MEMORY_METHOD",
    "FLOP_TOLERANCE",
    "FlopReport",
    "FlopTally",
    "ManualClock",
    "MemoryStats",
    "StepMemory",
    "StepMemoryReading",
    "StepTimer",
    "TimeBudgetExceeded",
    "TimingStats",
    "counted_flops",
    "flop_report",
    "matmul_dtype",
    "measure_peak_memory",
    "mfu_note",
    "module_bytes",
    "peak_allocated_bytes",
    "peak_tflops",
    "ptflops_macs",
    "summarize_times",
    "synchronize",
    "time_fn",
]
