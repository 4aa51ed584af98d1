"""The measurement core: timing statistics, the timer itself (one callable, and several interleaved), the time
budget, CPU peak memory, and the benchmarks' harness (paired comparisons of rounds, integer flags).

The timer and its budget are checked on a ManualClock that only the timed function advances, so every
figure is known exactly (1e-9 ms: float rounding of the clock's sums) whatever the machine's speed or
load. A real sleep on the real clock is a slow test (`make test-slow`) with a generous bound."""
import argparse
import gc
import math
import random
import time

import numpy as np
import pytest
import torch
from torch import nn

from profiling import (
    CPU_MEMORY_METHOD,
    ManualClock,
    StepTimer,
    TimeBudgetExceeded,
    measure_peak_memory,
    module_bytes,
    peak_allocated_bytes,
    summarize_times,
    time_fn,
    time_interleaved,
)
from profiling.harness import bootstrap_ci, compare_rounds, int_arg


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


EXACT_MS = 1e-9


def test_timer_measures_each_call_on_a_manual_clock():
    clock = ManualClock(start=50.0)
    durations = iter([0.5, 0.4, 0.005, 0.001, 0.003, 0.002])  # two warm-up calls, then four timed ones (s)
    s = time_fn(lambda: clock.advance(next(durations)), warmup=2, runs=4, clock=clock)
    assert s.times_ms == pytest.approx([5.0, 1.0, 3.0, 2.0], abs=EXACT_MS)  # warm-up not timed, order kept
    assert s.median_ms == pytest.approx(2.5, abs=EXACT_MS) and s.min_ms == pytest.approx(1.0, abs=EXACT_MS)
    assert s.clock == "manual clock" and s.device == "cpu"


def test_timer_stops_early_on_slow_calls_only():
    """target_seconds: warm-up stops after a quarter of it (one call at least), timed runs after the other three
    quarters once min_runs are done; fast calls still get every run."""
    clock = ManualClock()
    slow = time_fn(lambda: clock.advance(7.0), warmup=3, runs=10, target_seconds=20.0, clock=clock)
    assert slow.runs == 3 and clock.now == pytest.approx(7.0 * (1 + 3))  # 1 warm-up (7 s > 5 s), 3 runs (21 s > 15 s)
    clock = ManualClock()
    mid = time_fn(lambda: clock.advance(2.0), warmup=3, runs=10, target_seconds=20.0, clock=clock)
    assert mid.runs == 8  # warm-up 3 calls (6 s > 5 s after the third), runs until > 15 s: the 8th (16 s)
    clock = ManualClock()
    fast = time_fn(lambda: clock.advance(0.01), warmup=3, runs=10, target_seconds=20.0, clock=clock)
    assert fast.runs == 10 and clock.now == pytest.approx(0.13)
    clock = ManualClock()
    off = time_fn(lambda: clock.advance(7.0), warmup=3, runs=10, clock=clock)
    assert off.runs == 10  # no target: every run
    clock = ManualClock()
    assert time_fn(lambda: clock.advance(7.0), warmup=0, runs=2, target_seconds=1.0, clock=clock).runs == 2  # runs < min_runs


@pytest.mark.slow
def test_timer_measures_a_known_sleep():
    """A real 20 ms sleep on time.perf_counter: at least 20 ms (less 0.5 ms of clock granularity), median
    under 200 ms (a loaded, shared machine's scheduling)."""
    s = time_fn(lambda: time.sleep(0.02), warmup=1, runs=5)
    assert 19.5 <= s.min_ms and s.median_ms < 200
    assert s.clock == "perf_counter" and s.device == "cpu"


def test_step_timer_on_a_manual_clock():
    clock = ManualClock()
    timer = StepTimer("cpu", clock=clock)
    assert timer.clock == "manual clock" and StepTimer("cpu").clock == "perf_counter"
    timer.start()
    clock.advance(0.060)
    timer.stop("a")
    clock.advance(1.0)  # between spans: not counted
    timer.start()
    clock.advance(0.015)
    timer.stop("b")
    timer.stop("c")  # stop without start: nothing recorded
    got = timer.ready()
    assert [t for t, _ in got] == ["a", "b"] and [ms for _, ms in got] == pytest.approx([60.0, 15.0], abs=EXACT_MS)
    assert timer.flush() == []


def test_interleaved_timing_on_a_manual_clock():
    """Two callables in turn: a takes 30 ms, b 10 ms; warm-up rounds untimed; the CPU clock charged per callable."""
    clock, cpu, order = ManualClock(), ManualClock(), []

    def make(name, seconds, cpu_seconds):
        return lambda: (order.append(name), clock.advance(seconds), cpu.advance(cpu_seconds))

    (a, b), cpu_s = time_interleaved([make("a", 0.030, 0.05), make("b", 0.010, 0.01)], warmup=1, runs=3, threads=1,
                                     clock=clock, cpu_clock=cpu)
    assert order == ["a", "b"] * 4  # interleaved, warm-up round first
    assert a.times_ms == pytest.approx([30.0] * 3, abs=EXACT_MS) and b.times_ms == pytest.approx([10.0] * 3, abs=EXACT_MS)
    assert cpu_s == pytest.approx([0.15, 0.03]) and a.threads == 1 and a.clock == "manual clock"


def test_compare_rounds_is_paired_over_rounds():
    base, other = [[10.0, 12.0], [20.0, 22.0]], [[11.0, 13.0], [22.0, 24.0]]
    r = compare_rounds(base, other, random.Random(0), names=("off", "on"), samples=200)
    assert r["off"]["median_ms"] == 16.0 and r["on"]["median_ms"] == 17.5
    assert r["ratio"] == pytest.approx(17.5 / 16.0) and r["difference_ms"] == pytest.approx(1.5)
    assert r["per_round_ratio"] == pytest.approx([12.0 / 11.0, 23.0 / 21.0]) and r["ratio_of_minima"] == pytest.approx(1.1)
    lo, hi = r["bootstrap_ci95"]
    assert 12.0 / 11.0 - 1e-12 <= lo <= hi <= 23.0 / 21.0 + 1e-12  # resampling whole rounds stays between them
    assert compare_rounds(base[:1], other[:1], random.Random(0))["bootstrap_ci95"] is None  # one round: no interval
    assert bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx([1.1, 4.9])  # utils.stats.percentile, 2.5 / 97.5


def test_int_arg_speaks_utils_checks():
    assert int_arg("--runs")("3") == 3 and int_arg("--warmup", 0)("0") == 0
    for text, message in (("0", "--runs must be a positive integer, got 0"), ("x", "--runs must be a positive integer, got 'x'")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            int_arg("--runs")(text)


def test_manual_clock_never_goes_back():
    with pytest.raises(ValueError, match="never goes back"):
        ManualClock().advance(-1.0)


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


def test_time_budget_exceeded_during_timed_runs():
    """Each call takes 30 ms on the clock; the 100 ms budget is passed by the 4th call (1 warm-up + 3 timed)."""
    clock = ManualClock()
    calls = []
    with pytest.raises(TimeBudgetExceeded, match=r"budget during timed runs \(after 3 calls\)"):
        time_fn(lambda: (calls.append(1), clock.advance(0.030)), warmup=1, runs=50, max_seconds=0.1, clock=clock)
    assert len(calls) == 4


def test_time_budget_exceeded_during_warmup():
    clock = ManualClock()
    with pytest.raises(TimeBudgetExceeded, match=r"during warm-up \(after 2 calls\)"):
        time_fn(lambda: clock.advance(0.060), warmup=10, runs=5, max_seconds=0.1, clock=clock)


def test_time_budget_not_exceeded_at_exactly_the_budget():
    clock = ManualClock()
    s = time_fn(lambda: clock.advance(0.25), warmup=0, runs=4, max_seconds=1.0, clock=clock)  # 4 x 0.25 s = 1.0 s
    assert s.runs == 4


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
