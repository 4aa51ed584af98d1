"""How close does each mechanism come to the machine's matmul throughput? Achieved FLOP/s of its analytic count
(attn.flops, equal to the counted figure: tests/test_flops.py) over the FLOP/s of a plain torch.matmul measured in
the same interleaved rounds, so a shared machine's load falls on both alike.

    python benchmarks/bench_kernel_throughput.py [--seq-len 10000 --dim 512 --heads 8 --batch 1 --threads 2
        --rounds 7 --warmup 2 --out benchmarks/results/kernel_throughput]

CPU, fp32, forward under no_grad, eval mode, each mechanism with its default options (a fixed-length mechanism's max_seq_len set
to the sequence length). The matmul: (batch * n, dim) x (dim, 3 dim), the size of the mechanisms' QKV projection.
Per round, fraction = (F_mech / t_mech) / (F_matmul / t_matmul); the table gives the median over rounds, its
range and a 95 % bootstrap interval over rounds. Target (issue 15): performer at least 0.80.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from models.attention import build_attention, list_attentions
from models.encoder import sized_attention_options
from profiling.harness import bootstrap_ci, command_line, finish, int_arg, machine, write_results
from profiling.machine import git_commit
from profiling.timing import time_interleaved

ROOT = Path(__file__).resolve().parents[1]

MECHANISMS = ("performer", "linear", "linformer", "softmax", "nystromformer")
TARGETS = {"performer": 0.80}  # issue 15: performer >= 80 % of the matmul's throughput
BOOTSTRAP = 2000


def build(name: str, n: int, dim: int, heads: int) -> torch.nn.Module:
    return build_attention(name, dim, heads, **sized_attention_options(name, None, n)).eval()


def measure(names: Sequence[str], n: int, dim: int, heads: int, batch: int, threads: int, rounds: int, warmup: int,
            seed: int = 0) -> Dict[str, object]:
    torch.manual_seed(seed)
    x = torch.randn(batch, n, dim)
    a, w = torch.randn(batch * n, dim), torch.randn(dim, 3 * dim)
    mods = {name: build(name, n, dim, heads) for name in names}
    flops = {"matmul": 2 * batch * n * dim * 3 * dim, **{name: m.flops(n, batch) for name, m in mods.items()}}
    fns = [lambda: torch.matmul(a, w)] + [lambda m=m: m(x) for m in mods.values()]
    with torch.no_grad():
        stats, cpu = time_interleaved(fns, warmup=warmup, runs=rounds, threads=threads)
    labels = ["matmul", *mods]
    times = {label: s.times_ms for label, s in zip(labels, stats)}
    mm_rate = [flops["matmul"] / t for t in times["matmul"]]  # FLOP per ms, per round
    mm_cpu_rate = flops["matmul"] * rounds / cpu[0]  # FLOP per process CPU second, over all timed rounds
    rng = random.Random(seed)
    rows = []
    for label, s, c in zip(labels, stats, cpu):
        per_round = [flops[label] / t / r for t, r in zip(times[label], mm_rate)]
        boot = [statistics.median(rng.choices(per_round, k=len(per_round))) for _ in range(BOOTSTRAP if rounds > 1 else 0)]
        target = TARGETS.get(label)
        frac = statistics.median(per_round)
        rows.append({"name": label, "gflop": flops[label] / 1e9, "median_ms": s.median_ms, "min_ms": s.min_ms,
                     "times_ms": s.times_ms, "gflops": flops[label] / s.median_ms / 1e6,
                     "fraction_of_matmul": frac, "fraction_per_round": per_round,
                     "fraction_min": min(per_round), "fraction_max": max(per_round),
                     "fraction_ci95": bootstrap_ci(boot),
                     "cpu_s": c, "fraction_by_cpu_time": flops[label] * rounds / c / mm_cpu_rate,
                     "cpu_busy": c / (sum(s.times_ms) / 1e3 * threads),  # CPU seconds / (wall seconds * threads)
                     "target": target, "target_met": None if target is None else frac >= target})
    return {"rows": rows}


def render_markdown(report: Dict) -> str:
    m, c = report["machine"], report["config"]
    lines = ["# Kernel throughput: achieved FLOP/s as a fraction of the matmul's", "",
             f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['physical_cores']} physical cores), "
             f"{m['torch_threads']} torch threads; torch {m['torch_version']}, Python {m['python_version']}; git "
             f"{m.get('git_commit') or '?'}; {m['started_utc']} to {m['finished_utc']}; load average "
             f"{m['load_avg_start']} at the start, {m['load_avg_end']} at the end (1, 5, 15 min; the machine is "
             f"shared with other agents' work). Command: `{m['command']}`.", "",
             f"CPU, fp32, forward under no_grad, batch {c['batch']}, n = {c['seq_len']:,}, dim {c['dim']}, "
             f"{c['heads']} heads, default options (max_seq_len = n where a mechanism has one); {c['rounds']} interleaved rounds "
             f"after {c['warmup']} warm-up. FLOPs are each mechanism's analytic count (= the counted figure). The "
             f"matmul is torch.matmul of ({c['batch'] * c['seq_len']:,}, {c['dim']}) by ({c['dim']}, {3 * c['dim']}). "
             "Fraction = the mechanism's FLOP/s over the matmul's in the same round; median over rounds, range, "
             "95 % bootstrap interval. CPU busy = process CPU seconds / (wall seconds x threads): well below 1 means "
             "other processes took the cores. By CPU time: the fraction from process CPU seconds over all rounds "
             "instead of wall time (with one thread, blind to the time other processes held the core; with several, "
             "it counts a thread's waiting for the others as work).", "",
             *([f"Note: {report['note']}", ""] if report.get("note") else []),
             "| | GFLOP | median ms | GFLOP/s | fraction of matmul | range | 95 % CI | CPU busy | by CPU time | target |",
             "|---|---:|---:|---:|---:|---|---|---:|---:|---|"]
    for r in report["rows"]:
        ci = r["fraction_ci95"]
        target = "" if r["target"] is None else f">= {r['target']:.2f}: {'met' if r['target_met'] else 'NOT met'}"
        lines.append(f"| {r['name']} | {r['gflop']:.2f} | {r['median_ms']:,.1f} | {r['gflops']:.1f} | "
                     f"{r['fraction_of_matmul']:.3f} | {r['fraction_min']:.3f}-{r['fraction_max']:.3f} | "
                     f"{'' if ci is None else f'{ci[0]:.3f}-{ci[1]:.3f}'} | {r['cpu_busy']:.2f} | "
                     f"{r['fraction_by_cpu_time']:.3f} | {target} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int_arg("--seq-len"), default=10_000)
    p.add_argument("--dim", type=int_arg("--dim"), default=512)
    p.add_argument("--heads", type=int_arg("--heads"), default=8)
    p.add_argument("--batch", type=int_arg("--batch"), default=1)
    p.add_argument("--threads", type=int_arg("--threads"), default=2)
    p.add_argument("--rounds", type=int_arg("--rounds"), default=7)
    p.add_argument("--warmup", type=int_arg("--warmup", 0), default=2)
    p.add_argument("--mechanisms", default=",".join(MECHANISMS), help="comma-separated registered names")
    p.add_argument("--note", default="", help="a sentence for the results (what code was measured, if not this tree's)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kernel_throughput")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.mechanisms.split(",") if s.strip()]
    unknown = sorted(set(names) - set(list_attentions()))
    if unknown or not names:
        p.error(f"--mechanisms must name registered mechanisms ({', '.join(list_attentions())}), got {args.mechanisms!r}")
    report: Dict[str, object] = {
        "machine": machine(args.threads, command_line("bench_kernel_throughput.py", argv), git_commit=git_commit()),
        "config": {"seq_len": args.seq_len, "dim": args.dim, "heads": args.heads, "batch": args.batch,
                   "rounds": args.rounds, "warmup": args.warmup, "dtype": "fp32", "mode": "forward, no_grad",
                   "matmul": [args.batch * args.seq_len, args.dim, 3 * args.dim]}, "note": args.note}
    report.update(measure(names, args.seq_len, args.dim, args.heads, args.batch, args.threads, args.rounds, args.warmup))
    finish(report["machine"])
    md, js = write_results(args.out, report, render_markdown(report))
    print(render_markdown(report))
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
