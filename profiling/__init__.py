"""Measurement, in two floors. The core, imported here, depends on torch alone (and utils/; ptflops optional): timing.py (a
timer, its statistics, ManualClock), memory.py (allocator peaks, the per-step meter), flops.py (a FLOP counter
cross-checked against analytic formulas), peaks.py (device peak FLOP/s for MFU), machine.py (what ran it),
errors.py (is_oom, one_line) and harness.py (what the benchmark scripts share). On top of models/: the sweep
(cli.py, sweep*.py, budget.py, results.py, environment.py, progress.py, report.py, plots.py), compare.py and
breakdown.py, imported by their own names. Named `profiling`, never `profile`: see profile.py for why.
"""
from .errors import is_oom, one_line
from .flops import FLOP_TOLERANCE, FlopReport, FlopTally, counted_flops, flop_report, ptflops_macs
from .memory import (
                     CPU_MEMORY_METHOD,
                     CUDA_MEMORY_METHOD,
                     MemoryStats,
                     StepMemory,
                     StepMemoryReading,
                     measure_peak_memory,
                     module_bytes,
                     peak_allocated_bytes,
)
from .peaks import matmul_dtype, mfu_note, peak_tflops
from .timing import (
                     Clock,
                     ManualClock,
                     StepTimer,
                     TimeBudgetExceeded,
                     TimingStats,
                     summarize_times,
                     synchronize,
                     time_fn,
                     time_interleaved,
)

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
    "is_oom",
    "matmul_dtype",
    "measure_peak_memory",
    "mfu_note",
    "module_bytes",
    "one_line",
    "peak_allocated_bytes",
    "peak_tflops",
    "ptflops_macs",
    "summarize_times",
    "synchronize",
    "time_fn",
    "time_interleaved",
]
