"""The measurement core: timing statistics, the timer itself, the time budget, CPU peak memory."""
import gc
import math
import statistics
import time

import numpy as np
import pytest
import torch
from torch import nn

from profiling import (
    CPU_MEMORY_METHOD,
    TimeBudgetExceeded,
    measure_peak_memory,
    module_bytes,
    peak_allocated_bytes,
    summarize_times,
    time_fn,
)


def test_statistics_against_numpy():
    xs = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0, 5.5, 3.5, 8.0]
    s = summarize_times(xs)
    assert s.runs == len(xs)
    assert s.mean_ms == pytest.approx(np.mean(xs), rel=1e-12)
    assert s.std_ms == pytest.approx(np.std(xs, ddof=1), rel=1e-12)
    assert s.sem_ms == pytest.approx(np.std(xs, ddof=1) / math.sqrt(len(xs)), rel=1e-12)
    assert s.median_ms == pytest.approx(np.median(xs))
    assert s.p95_ms == pytest.approx(np.percentile(xs, 95), rel=1e-12)
    assert s.p99_ms == pytest.approx(np.percentile(xs, 99), rel=1e-12)
    assert (s.min_ms, s.max_ms) == (min(xs), max(xs))
    one = summarize_times([2.0])
    assert one.std_ms == 0.0 and one.p99_ms == 2.0


def test_timer_measures_a_known_sleep():
    # sleep is a lower bound; allow generous scheduling slack above it (shared, noisy machine)
    s = time_fn(lambda: time.sleep(0.02), warmup=1, runs=5)
    assert 19.5 <= s.min_ms and s.median_ms < 60
    assert s.clock == "perf_counter" and s.device == "cpu"


def test_warmup_runs_are_not_timed_and_gc_is_off_while_timing():
    calls, gc_states = [], []

    def fn():
        calls.append(1)
        gc_states.append(gc.isenabled())

    was = gc.isenabled()
    s = time_fn(fn, warmup=2, runs=4)
    assert len(calls) == 6 and s.runs == 4
    assert gc_states[2:] == [False] * 4
    assert gc.isenabled() == was


def test_threads_set_for_the_call_recorded_and_restored():
    before = torch.get_num_threads()
    seen = []
    s = time_fn(lambda: seen.append(torch.get_num_threads()), warmup=0, runs=2, threads=1)
    assert seen == [1, 1] and s.threads == 1
    assert torch.get_num_threads() == before


def test_time_budget_exceeded():
    with pytest.raises(TimeBudgetExceeded, match="budget"):
        time_fn(lambda: time.sleep(0.03), warmup=1, runs=50, max_seconds=0.1)


@pytest.mark.parametrize("kw", [dict(runs=0), dict(warmup=-1)])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        time_fn(lambda: None, **kw)


def test_cpu_peak_sees_tensor_allocations():
    nbytes = 4 * 2**20

    def fn():
        a = torch.empty(nbytes // 4)  # 4 MiB, freed before the next
        del a
        b = torch.empty(nbytes // 8)  # 2 MiB
        return b

    peak = peak_allocated_bytes(fn)
    assert nbytes <= peak < nbytes + 2**16  # the allocator's view, not the process RSS


def test_cpu_peak_excludes_existing_tensors_and_is_repeatable():
    big = torch.randn(2**20)  # allocated before: not part of the peak
    peaks = [peak_allocated_bytes(lambda: big * 2) for _ in range(3)]
    assert len(set(peaks)) == 1  # no carry-over between profiling sessions
    assert 4 * 2**20 <= peaks[0] <= 4 * 2**20 + 64  # the result, plus the scalar 2 as a 0-dim tensor
    assert peak_allocated_bytes(lambda: None) == 0


def test_measure_peak_memory_reports_module_apart():
    lin = nn.Linear(256, 256)
    x = torch.randn(64, 256)
    m = measure_peak_memory(lambda: lin(x), lin)
    assert m.module_bytes == module_bytes(lin) == (256 * 256 + 256) * 4
    assert m.peak_bytes >= 64 * 256 * 4 and m.method == CPU_MEMORY_METHOD
