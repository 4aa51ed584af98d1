"""What the benchmark scripts (benchmarks/*.py) share, so that each holds only its own comparison: the machine
they ran on and when, paired comparisons of interleaved rounds (ratio of medians, bootstrap over whole rounds),
argparse integers checked by utils.checks, and results written as OUT.json + OUT.md, each atomically.

    report = {"machine": machine(threads, command_line("bench_x.py", argv)), ...}; finish(report["machine"])
    write_results(Path("benchmarks/results/x"), report, render_markdown(report))
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import random
import shlex
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from utils.checks import check_int
from utils.io import write_json, write_text
from utils.stats import percentile

from .machine import cpu_model, load_average, physical_cores
from .timing import TimingStats, summarize_times

BOOTSTRAP_SAMPLES = 2000


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def command_line(script: str, argv: Sequence[str]) -> str:
    """How the run was asked for, as a user would type it: `python benchmarks/<script> ARGS`."""
    return f"python benchmarks/{script}" + (" " + shlex.join(argv) if argv else "")


def machine(threads: int, command: str, **extra: Any) -> Dict[str, Any]:
    """The machine, the software and the start of a run; `finish` adds its end."""
    return dict(cpu_model=cpu_model(), logical_cpus=os.cpu_count(), physical_cores=physical_cores(), torch_threads=threads,
                torch_version=torch.__version__, python_version=platform.python_version(), platform=platform.platform(),
                **extra, command=command, started_utc=utc_now(), load_avg_start=load_average())


def finish(info: Dict[str, Any]) -> None:
    info.update(finished_utc=utc_now(), load_avg_end=load_average())


def int_arg(flag: str, low: int = 1) -> Callable[[str], int]:
    """An argparse `type` for an integer flag >= low, refused in utils.checks' words."""

    def parse(text: str) -> int:
        try:
            value: Any = int(text)
        except ValueError:
            value = text
        try:
            return check_int(flag, value, low)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def result_paths(stem: Path) -> Tuple[Path, Path]:
    """(OUT.md, OUT.json) for an output path given without suffix."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".md"), stem.with_name(stem.name + ".json")


def write_results(stem: Path, report: Dict[str, Any], markdown: str) -> Tuple[Path, Path]:
    """OUT.json and OUT.md, each atomically (a reader never sees half a file); the folder is made."""
    md, js = result_paths(stem)
    write_json(js, report)
    write_text(md, markdown)
    return md, js


def timing_summary(stats: TimingStats) -> Dict[str, Any]:
    """A TimingStats as a results entry: every statistic, the quartiles and IQR, and the times themselves."""
    q1, q3 = percentile(stats.times_ms, 25), percentile(stats.times_ms, 75)
    return {**stats.to_dict(with_times=True), "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1}


def bootstrap_ci(xs: Sequence[float], level: float = 95.0) -> Optional[List[float]]:
    """The central `level` % interval of bootstrap replicates (utils.stats.percentile), or None without any."""
    if not xs:
        return None
    tail = (100.0 - level) / 2
    return [percentile(xs, tail), percentile(xs, 100.0 - tail)]


def compare_rounds(base: List[List[float]], other: List[List[float]], rng: random.Random, names=("base", "other"),
                   threads: Optional[int] = None, samples: int = BOOTSTRAP_SAMPLES) -> Dict[str, Any]:
    """`other` against `base`, measured in the same rounds (ms; one list of values per round and side): each
    side's statistics over all rounds, the ratio and the difference of the medians, the ratio of the minima, the
    per-round ratios, and 95 % bootstrap intervals that resample whole rounds (paired, so a round's drift hits
    both sides)."""
    idx = list(range(len(base)))

    def pooled(side: List[List[float]], rounds: Sequence[int]) -> List[float]:
        return [v for i in rounds for v in side[i]]

    a, b = pooled(base, idx), pooled(other, idx)
    per_round = [statistics.median(other[i]) / statistics.median(base[i]) for i in idx]
    boot_ratio, boot_diff = [], []
    for _ in range(samples if len(base) > 1 else 0):
        pick = [rng.randrange(len(base)) for _ in idx]
        ma, mb = statistics.median(pooled(base, pick)), statistics.median(pooled(other, pick))
        boot_ratio.append(mb / ma)
        boot_diff.append(mb - ma)
    return {
        names[0]: summarize_times(a, device="cpu", threads=threads).to_dict(),
        names[1]: summarize_times(b, device="cpu", threads=threads).to_dict(),
        "ratio": statistics.median(b) / statistics.median(a), "ratio_of_minima": min(b) / min(a),
        "difference_ms": statistics.median(b) - statistics.median(a),
        "per_round_ratio": per_round, "per_round_min": min(per_round), "per_round_max": max(per_round),
        "bootstrap_ci95": bootstrap_ci(boot_ratio), "difference_ci95_ms": bootstrap_ci(boot_diff),
    }
