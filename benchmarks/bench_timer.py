"""Does profiling.time_fn agree with torch.utils.benchmark.Timer?

Same callables, same thread count, one process. The two timers alternate in rounds (time_fn, Timer,
time_fn, Timer, ...) so machine noise falls on both; each round's median is kept and the ratio of
the medians over rounds is reported. Target: within 3 %.

    python benchmarks/bench_timer.py [--threads 2 --rounds 7 --out benchmarks/results/timer_agreement.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

from models.attention import build_attention
from profiling import time_fn
from profiling.machine import cpu_model
from utils.io import write_text


def cases():
    torch.manual_seed(0)
    a = torch.randn(512, 512)
    yield "matmul 512x512 fp32", lambda: a @ a
    for name, n, opts in (("softmax", 1024, {}), ("local", 4096, {}), ("linear", 4096, {}), ("performer", 2048, {})):
        attn = build_attention(name, 512, 8, **opts).eval()
        x = torch.randn(1, n, 512)

        def fwd(attn=attn, x=x):
            with torch.no_grad():
                return attn(x)

        yield f"{name} attention, n={n}, d=512, h=8, fwd", fwd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per time_fn round")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "timer_agreement.md")
    args = ap.parse_args()
    if args.threads < 1 or args.rounds < 1 or args.runs < 1:
        ap.error("--threads, --rounds and --runs must be positive integers")

    rows = []
    t0 = time.time()
    for label, fn in cases():
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(time_fn(fn, warmup=3, runs=args.runs, threads=args.threads).median_ms)
            m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=args.threads).blocked_autorange(min_run_time=0.5)
            theirs.append(m.median * 1e3)
        mo, mt = statistics.median(ours), statistics.median(theirs)
        ratio = mo / mt
        rows.append((label, mo, mt, ratio))
        print(f"{label:42s} time_fn {mo:9.3f} ms  Timer {mt:9.3f} ms  ratio {ratio:.4f}", flush=True)

    lines = [
        "# profiling.time_fn vs torch.utils.benchmark.Timer",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {args.threads} torch threads for both timers; "
        f"torch {torch.__version__}, Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Command: `python benchmarks/bench_timer.py --threads {args.threads} --rounds {args.rounds} --runs {args.runs}`.",
        "",
        f"Per round: time_fn's median of {args.runs} runs after 3 warm-ups; Timer.blocked_autorange(min_run_time=0.5)'s "
        f"median. Reported: the median over {args.rounds} alternating rounds. Target: ratio within 3 % of 1.",
        "",
        "| callable | time_fn median (ms) | Timer median (ms) | ratio | within 3 % |",
        "|---|---:|---:|---:|---|",
    ]
    for label, mo, mt, r in rows:
        lines.append(f"| {label} | {mo:.3f} | {mt:.3f} | {r:.4f} | {'yes' if abs(r - 1) <= 0.03 else 'no'} |")
    lines += ["", f"Run time {time.time() - t0:.0f} s.", ""]
    write_text(args.out, "\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
