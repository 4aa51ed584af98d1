"""The per-point time budget of the sweep (--max-seconds-per-point): checked between stages and handed to
time_fn; on the real clock (main thread, POSIX) an interval timer also interrupts a stage that runs past it.

    with Budget(120.0) as budget:
        with budget.in_stage("timing"):
            ...
"""
from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from typing import Callable, Optional

from .timing import Clock, TimeBudgetExceeded, TimingStats, time_fn


class Budget:
    """`seconds` from entering, by `clock` (time.perf_counter by default). The interval timer counts real
    seconds, so it is armed only on that default: a test hands in a ManualClock and decides exactly when the
    budget runs out. A stage entered `shielded` (one that must close cleanly, such as the memory profiler) is
    not interrupted; a deadline passed during it is reported right after. The timer stops between Python-level
    ops: one long kernel still finishes first."""

    MAX_ALARM_S = 1e8  # setitimer overflows a platform time_t somewhere above 1e9 s; a budget this long never fires anyway

    def __init__(self, seconds: float, clock: Optional[Clock] = None):
        self.seconds = float(seconds)
        self._interrupts = clock is None
        self.clock: Clock = clock or time.perf_counter
        self.start = self.clock()
        self.stage = "setup"
        self._shielded = False
        self._pending = False
        self._armed = False
        self._old_handler = None

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def exceeded(self, detail: str = "") -> TimeBudgetExceeded:
        extra = f" ({detail})" if detail else ""
        return TimeBudgetExceeded(
            f"over the --max-seconds-per-point budget of {self.seconds:g} s: stopped during {self.stage}{extra} after {self.elapsed():.1f} s"
        )

    def check(self) -> None:
        if self.remaining() <= 0:
            raise self.exceeded()

    def _on_alarm(self, signum, frame):
        if self._shielded:
            self._pending = True
            return
        raise self.exceeded("interrupted")

    def __enter__(self):
        if self._interrupts and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            try:
                self._old_handler = signal.signal(signal.SIGALRM, self._on_alarm)
                signal.setitimer(signal.ITIMER_REAL, min(max(self.remaining(), 1e-3), self.MAX_ALARM_S))
                self._armed = True
            except (ValueError, OSError):
                self._armed = False
        return self

    def __exit__(self, *exc):
        self._shielded = True  # an alarm arriving now is ignored: the point is over
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old_handler if self._old_handler is not None else signal.SIG_DFL)
            self._armed = False
        return False

    def timed(self, fn: Callable[[], object], *, warmup: int, runs: int, device, threads: Optional[int],
              target_seconds: Optional[float] = None) -> TimingStats:
        """timing.time_fn within what is left of the budget, on the budget's clock; running out is this
        budget's TimeBudgetExceeded (naming the stage, and the part of time_fn it stopped in). target_seconds:
        time_fn's early stop for slow calls (None: every run)."""
        try:
            return time_fn(fn, warmup=warmup, runs=runs, device=device, threads=threads,
                           max_seconds=max(self.remaining(), 1e-6), target_seconds=target_seconds, clock=self.clock)
        except TimeBudgetExceeded as e:
            m = re.search(r"during (.*)$", str(e))
            raise self.exceeded(m.group(1) if m else "") from None

    @contextlib.contextmanager
    def in_stage(self, name: str, shielded: bool = False):
        self.stage = name
        self._shielded = shielded
        try:
            yield
        finally:
            self._shielded = False
        if self._pending:
            self._pending = False
            raise self.exceeded()
        self.check()
