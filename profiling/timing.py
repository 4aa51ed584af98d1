"""Wall-clock timing with honest statistics: `time_fn` (one callable), `time_interleaved` (several, in
turn, so noise falls on all alike), `StepTimer` (spans of live work across hooks), `summarize_times`.

    stats = time_fn(lambda: model(x), warmup=3, runs=10, device="cpu", threads=2)
    stats.median_ms, stats.sem_ms, stats.p95_ms

Warm-up calls first, then each timed call on its own: CUDA events on CUDA, elsewhere a clock
(time.perf_counter unless one is handed in: tests pass a ManualClock). The garbage collector is off
while timing; on CPU the thread count is set on purpose, restored afterwards and recorded.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from utils.stats import percentile


class TimeBudgetExceeded(RuntimeError):
    """A measurement ran past its time budget (recorded by the sweep, which then moves on)."""


@dataclass
class TimingStats:
    runs: int
    mean_ms: float
    std_ms: float  # sample standard deviation (n - 1)
    sem_ms: float  # standard error of the mean: std / sqrt(runs)
    min_ms: float
    median_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    device: str = "cpu"
    threads: Optional[int] = None  # CPU threads used (None on CUDA)
    clock: str = "perf_counter"
    times_ms: List[float] = field(default_factory=list)

    def to_dict(self, with_times: bool = False) -> dict:
        d = asdict(self)
        if not with_times:
            d.pop("times_ms")
        return d


def summarize_times(times_ms: Sequence[float], **meta) -> TimingStats:
    if not times_ms:
        raise ValueError("summarize_times needs at least one time")
    xs = sorted(times_ms)
    n = len(xs)
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if n > 1 else 0.0
    return TimingStats(
        runs=n,
        mean_ms=mean,
        std_ms=std,
        sem_ms=std / math.sqrt(n),
        min_ms=xs[0],
        median_ms=statistics.median(xs),
        p95_ms=percentile(xs, 95),
        p99_ms=percentile(xs, 99),
        max_ms=xs[-1],
        times_ms=list(times_ms),
        **meta,
    )


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


Clock = Callable[[], float]  # seconds from an arbitrary origin, never going back


def clock_name(clock: Clock) -> str:
    """How results name the clock ("perf_counter" for the default)."""
    return getattr(clock, "__name__", type(clock).__name__)


class ManualClock:
    """A clock that moves only when told: hand it to time_fn, StepTimer, the sweep's budget or the
    EfficiencyMonitor, make the measured work `advance` it, and the figures are known exactly.

        clock = ManualClock()
        time_fn(lambda: clock.advance(0.06), runs=3, clock=clock).median_ms   # 60.0
    """

    __name__ = "manual clock"

    def __init__(self, start: float = 0.0):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"a clock never goes back; got advance({seconds!r})")
        self.now += seconds


def time_fn(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    runs: int = 10,
    device="cpu",
    threads: Optional[int] = None,
    max_seconds: Optional[float] = None,
    target_seconds: Optional[float] = None,
    min_runs: int = 3,
    clock: Clock = time.perf_counter,
) -> TimingStats:
    """Time `fn()` after `warmup` untimed calls. Raises TimeBudgetExceeded once warm-up plus timed
    runs have taken longer than `max_seconds` by `clock` (checked after every call, so one call may
    overrun). On CUDA the runs are timed by events, and `clock` only keeps the budget.

    `target_seconds` bounds the work on slow calls without losing the point: warm-up stops once it has
    taken a quarter of it (after one call at least), and the timed runs stop once they have taken the rest
    and `min_runs` of them are done (fewer runs, wider error bars; the stats say how many)."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    cuda = _is_cuda(device)
    prev_threads = torch.get_num_threads()
    if not cuda and threads is not None:
        torch.set_num_threads(threads)
    start = clock()

    def check_budget(stage: str, done: int) -> None:
        if max_seconds is not None and clock() - start > max_seconds:
            raise TimeBudgetExceeded(f"over the {max_seconds:g} s budget during {stage} (after {done} calls)")

    gc_was_enabled = gc.isenabled()
    try:
        for i in range(warmup):
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            check_budget("warm-up", i + 1)
            if target_seconds is not None and clock() - start > target_seconds / 4:
                break
        timed_start = clock()

        def enough(done: int) -> bool:
            return target_seconds is not None and done >= min(min_runs, runs) and clock() - timed_start > target_seconds * 3 / 4
        gc.collect()
        gc.disable()
        times: List[float] = []
        if cuda:
            torch.cuda.synchronize(device)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
            done = 0
            for i, (a, b) in enumerate(events):
                a.record()
                fn()
                b.record()
                done = i + 1
                if max_seconds is not None or target_seconds is not None:
                    torch.cuda.synchronize(device)
                    check_budget("timed runs", done)
                    if enough(done):
                        break
            torch.cuda.synchronize(device)
            times = [a.elapsed_time(b) for a, b in events[:done]]
        else:
            for i in range(runs):
                t0 = clock()
                fn()
                times.append((clock() - t0) * 1e3)
                check_budget("timed runs", i + 1)
                if enough(i + 1):
                    break
    finally:
        if gc_was_enabled:
            gc.enable()
        if not cuda:
            torch.set_num_threads(prev_threads)
    return summarize_times(
        times,
        device=str(torch.device(device)),
        threads=None if cuda else (threads if threads is not None else prev_threads),
        clock="cuda events" if cuda else clock_name(clock),
    )


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    *,
    warmup: int = 3,
    runs: int = 10,
    threads: Optional[int] = None,
    clock: Clock = time.perf_counter,
    cpu_clock: Clock = time.process_time,
) -> Tuple[List[TimingStats], List[float]]:
    """Time several CPU callables in turn (a, b, a, b, ...), so that a shared machine's noise falls on all
    alike: `warmup` untimed rounds, then `runs` timed ones. Returns each callable's TimingStats and the process
    CPU seconds spent in its timed calls (CPU / (wall * threads) well below 1: other processes competed)."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    prev_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    times: List[List[float]] = [[] for _ in fns]
    cpu = [0.0 for _ in fns]
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(warmup):
            for fn in fns:
                fn()
        gc.collect()
        gc.disable()
        for _ in range(runs):
            for i, fn in enumerate(fns):
                c0, t0 = cpu_clock(), clock()
                fn()
                times[i].append((clock() - t0) * 1e3)
                cpu[i] += cpu_clock() - c0
        used = torch.get_num_threads()
    finally:
        if gc_was_enabled:
            gc.enable()
        torch.set_num_threads(prev_threads)
    return [summarize_times(t, device="cpu", threads=used, clock=clock_name(clock)) for t in times], cpu


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA, MPS); nothing to wait for on CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


class StepTimer:
    """Times spans of live work that start and stop in different places (a training step across
    Lightning hooks), the same two ways as `time_fn`: CUDA events on CUDA, `clock` (time.perf_counter
    unless one is handed in) after a device synchronisation elsewhere.

        timer.start(); ...; timer.stop(tag)     # tag: what the span was (a step number)
        for tag, ms in timer.ready(): ...       # spans whose times are known
        for tag, ms in timer.flush(): ...       # all remaining (synchronises)

    On CUDA nothing here synchronises the device per span: an event pair is resolved once the device
    has passed its end event, so the measured work keeps its CPU/GPU overlap.
    """

    def __init__(self, device="cpu", clock: Clock = time.perf_counter):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._now = clock
        self.clock = "cuda events" if self.cuda else clock_name(clock)  # the name results carry
        self._begin = None
        self._pending: List[tuple] = []  # (tag, start, end): events on CUDA, milliseconds elsewhere

    def start(self) -> None:
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._begin.record()
        else:
            synchronize(self.device)
            self._begin = self._now()

    def stop(self, tag=None) -> None:
        if self._begin is None:
            return  # stop without start (e.g. a hook pair interrupted): nothing to record
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((tag, self._begin, end))
        else:
            synchronize(self.device)
            self._pending.append((tag, 0.0, (self._now() - self._begin) * 1e3))
        self._begin = None

    def ready(self) -> List[tuple]:
        """(tag, milliseconds) of the finished spans, oldest first, in order."""
        out = []
        while self._pending:
            tag, a, b = self._pending[0]
            if self.cuda:
                if not b.query():
                    break
                out.append((tag, a.elapsed_time(b)))
            else:
                out.append((tag, b))
            self._pending.pop(0)
        return out

    def flush(self) -> List[tuple]:
        if self.cuda and self._pending:
            torch.cuda.synchronize(self.device)
        return self.ready()
