"""
`reformer` and `sinkhorn` beside lucidrains' reformer-pytorch (LSHSelfAttention) and sinkhorn-transformer
(SinkhornSelfAttention) with matching hyper-parameters, including the settings where the two differ in what
they compute (the integrated table of every mechanism is benchmarks/bench_attention.py).

$ python benchmarks/bench_lsh_sinkhorn.py                 # n = 4096, dim 512, 8 heads, batch 1, 10 runs
$ python benchmarks/bench_lsh_sinkhorn.py --quick         # smoke test: n = 256, 2 runs

CPU, fp32, forward only under torch.no_grad() with models in eval(), ours and the reference interleaved run
by run (profiling.time_interleaved), medians; peak memory of one forward call by the PyTorch CPU allocator's
own accounting (profiling.peak_allocated_bytes), inputs and parameters excluded. The references are
optional: a missing package gives a "skipped" row. Results: benchmarks/results/lsh_sinkhorn_vs_reference.{md,json}.

Pairs (ours vs reference):
    reformer                 vs LSHSelfAttention(bucket_size=64, n_hashes=8, attend_across_buckets=False,
                                allow_duplicate_attention=False): both attend within a bucket and correct duplicates
    reformer dedup=False     vs LSHSelfAttention(bucket_size=64, n_hashes=8), the package's defaults (it attends
                                across buckets inside a chunk; ours still keeps to the bucket)
    sinkhorn                 vs SinkhornSelfAttention(bucket_size=64, non_permutative=False, sinkhorn_iter=8,
                                temperature=0.75)
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.attention import build_attention  # noqa: E402
from profiling import peak_allocated_bytes, time_interleaved  # noqa: E402
from profiling.harness import command_line, finish, int_arg, machine, timing_summary, write_results  # noqa: E402

MIB = 2**20
OUT = Path(__file__).resolve().parent / "results" / "lsh_sinkhorn_vs_reference"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def pairs(n: int, dim: int, heads: int) -> List[Dict[str, Any]]:
    def lsh(**kw):
        return importlib.import_module("reformer_pytorch").LSHSelfAttention(dim, heads=heads, bucket_size=64, n_hashes=8, **kw)

    def sink():
        mod = importlib.import_module("sinkhorn_transformer")
        return mod.SinkhornSelfAttention(dim, bucket_size=64, max_seq_len=n, heads=heads, non_permutative=False,
                                         sinkhorn_iter=8, temperature=0.75)

    return [
        dict(name="reformer", opts={}, package="reformer-pytorch",
             reference="LSHSelfAttention(bucket_size=64, n_hashes=8, attend_across_buckets=False, allow_duplicate_attention=False)",
             make_ref=lambda: lsh(attend_across_buckets=False, allow_duplicate_attention=False)),
        dict(name="reformer", opts={"dedup": False}, package="reformer-pytorch",
             reference="LSHSelfAttention(bucket_size=64, n_hashes=8) (its defaults)", make_ref=lambda: lsh()),
        dict(name="sinkhorn", opts={}, package="sinkhorn-transformer",
             reference="SinkhornSelfAttention(bucket_size=64, non_permutative=False, sinkhorn_iter=8, temperature=0.75)",
             make_ref=sink),
    ]


def reference_checks() -> List[str]:
    """Small live checks of reference behaviours that differ from ours."""
    out = []
    x = torch.randn(1, 256, 64)
    with torch.no_grad():
        try:
            ref = importlib.import_module("reformer_pytorch").LSHSelfAttention(64, heads=4, bucket_size=16, n_hashes=2).eval()
            d = (ref(x) - ref(x)).abs().max().item()
            out.append(f"reformer-pytorch {_version('reformer-pytorch')}: eval mode draws new random rotations at every call "
                       f"(two calls on one input differ by up to {d:.3g}); ours keeps its rotations in eval mode.")
            causal = importlib.import_module("reformer_pytorch").LSHSelfAttention(64, heads=4, bucket_size=16, n_hashes=2, causal=True).eval()
            x2 = x.clone()
            x2[0, -1] = 3 * torch.randn(64)  # only the last token changes
            torch.manual_seed(1)
            y = causal(x)
            torch.manual_seed(1)  # the same rotations
            d = (causal(x2)[0, :-1] - y[0, :-1]).abs().max().item()
            out.append(f"reformer-pytorch causal=True: changing only the last token changes the outputs before it by up to "
                       f"{d:.3g} (same rotations): the chunk boundaries of the sorted order move with later tokens' buckets "
                       f"and its causal mask compares positions only. Ours uses a band in the sorted order (no change: "
                       f"tests/test_attention.py::test_causal_no_future_leak).")
        except ImportError:
            out.append("reformer-pytorch not installed")
        try:
            mod = importlib.import_module("sinkhorn_transformer")
            ref = mod.SinkhornSelfAttention(64, bucket_size=16, max_seq_len=256, heads=4, non_permutative=False).eval()
            d = (ref(x) - ref(x)).abs().max().item()
            out.append(f"sinkhorn-transformer {_version('sinkhorn-transformer')}: Gumbel noise is added in eval mode too "
                       f"(two calls differ by up to {d:.3g}); ours adds it only in training, and only with gumbel=True.")
            ref.to_kv.weight[64:].zero_()  # the value half: every value is 0, so attention should give 0
            d = (ref(x) - ref.to_out.bias).abs().max().item()
            out.append(f"sinkhorn-transformer (non-causal, n_sortcut=0): with every value 0 the output still differs from the "
                       f"output projection's bias by up to {d:.3g}: SinkhornAttention.forward sets b_v_r = b_k_r.reshape(...), "
                       f"so the sorted block's values are its keys.")
        except ImportError:
            out.append("sinkhorn-transformer not installed")
    return out


def run_pair(p: Dict[str, Any], x: torch.Tensor, cfg: Dict[str, Any]) -> Dict[str, Any]:
    row = dict(name=p["name"], opts=p["opts"], reference=p["reference"], package=p["package"],
               package_version=_version(p["package"]))
    try:
        ref = p["make_ref"]().eval()
    except ImportError as e:
        return {**row, "skipped": f"reference not installed ({e})"}
    torch.manual_seed(0)
    ours = build_attention(p["name"], cfg["dim"], cfg["heads"], **p["opts"]).eval()

    def f_ours():
        with torch.no_grad():
            return ours(x)

    def f_ref():
        with torch.no_grad():
            return ref(x)

    (t_ours, t_ref), _ = time_interleaved([f_ours, f_ref], warmup=cfg["warmup"], runs=cfg["runs"], threads=cfg["threads"])
    row.update(ours=timing_summary(t_ours), ref=timing_summary(t_ref), time_ratio=t_ours.median_ms / t_ref.median_ms)
    row["ours_peak_mib"] = peak_allocated_bytes(f_ours, "cpu") / MIB
    row["ref_peak_mib"] = peak_allocated_bytes(f_ref, "cpu") / MIB
    row["mem_ratio"] = row["ours_peak_mib"] / row["ref_peak_mib"]
    return row


def markdown(report: Dict[str, Any]) -> str:
    m, c = report["machine"], report["config"]
    lines = [
        "# reformer and sinkhorn vs lucidrains' packages",
        "",
        f"Machine: {m['cpu_model']}, {m['physical_cores']} physical cores / {m['logical_cpus']} logical, torch {m['torch_version']}, "
        f"{m['torch_threads']} threads; load average {m['load_avg_start']} at the start, {m['load_avg_end']} at the end "
        f"(other processes competing for the CPUs add noise; interleaving spreads it over both sides). "
        f"{m['started_utc']} to {m['finished_utc']}. Command: `{m['command']}`.",
        "",
        f"CPU fp32, batch {c['batch']}, n = {c['seq_len']}, dim {c['dim']}, {c['heads']} heads; forward only under "
        f"torch.no_grad(), eval(); {c['warmup']} warm-up + {c['runs']} timed runs each, interleaved. Peak MiB: the PyTorch "
        "CPU allocator's peak during one forward call.",
        "",
        "| ours | reference | ours ms (median) | ref ms (median) | time ratio | ours peak MiB | ref peak MiB | memory ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        ours = r["name"] + (" " + ", ".join(f"{k}={v}" for k, v in r["opts"].items()) if r["opts"] else "")
        if "skipped" in r:
            lines.append(f"| {ours} | {r['reference']} | {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {ours} | {r['reference']} | {r['ours']['median_ms']:.1f} | {r['ref']['median_ms']:.1f} | "
                     f"{r['time_ratio']:.3f} | {r['ours_peak_mib']:.1f} | {r['ref_peak_mib']:.1f} | {r['mem_ratio']:.3f} |")
    lines += ["", "Reference behaviours checked live:", ""] + [f"- {s}" for s in report["remarks"]] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-len", type=int_arg("--seq-len"), default=4096)
    ap.add_argument("--runs", type=int_arg("--runs"), default=10)
    ap.add_argument("--warmup", type=int_arg("--warmup", 0), default=2)
    ap.add_argument("--threads", type=int_arg("--threads"), default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="n = 256, 2 runs, 1 warm-up (a smoke test)")
    ap.add_argument("--out", type=Path, default=OUT, help="output path without suffix (.md and .json are written)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seq_len, args.runs, args.warmup = 256, 2, 1
    cfg = dict(seq_len=args.seq_len, dim=512, heads=8, batch=1, runs=args.runs, warmup=args.warmup, threads=args.threads)
    torch.set_num_threads(args.threads)
    report: Dict[str, Any] = {"machine": machine(args.threads, command_line("bench_lsh_sinkhorn.py", argv or sys.argv[1:])),
                              "config": cfg}
    torch.manual_seed(0)
    x = torch.randn(cfg["batch"], cfg["seq_len"], cfg["dim"])
    report["rows"] = []
    for p in pairs(cfg["seq_len"], cfg["dim"], cfg["heads"]):
        report["rows"].append(run_pair(p, x, cfg))
        print(report["rows"][-1].get("skipped") or f"{p['name']} {p['opts']}: time ratio {report['rows'][-1]['time_ratio']:.3f}, "
              f"memory ratio {report['rows'][-1]['mem_ratio']:.3f}", flush=True)
    report["remarks"] = reference_checks()
    finish(report["machine"])
    md, js = write_results(args.out, report, markdown(report))
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
