"""Performer (FAVOR+) approximation error against exact softmax attention.

For each number of random features m, builds `performer` and the exact reference `naive` with the
same Q/K/V/output projection weights (bias-free), feeds the same input x ~ N(0, 1) of shape
(1, n, dim), and measures, over 5 seeds (a seed fixes weights, input and random features):

    matrix error = ||A_performer - A_exact||_F / ||A_exact||_F   (the (h, n, n) attention matrices)
    output error = ||y_performer - y_exact||_F / ||y_exact||_F   (the block outputs)

in three regimes: the default nn.Linear init (logit std ~0.33, attention close to uniform), Q and K
projection weights scaled by 0.5 (smaller norms) and by 2 ("peaked": logits x 4, std ~1.3, closer to
a trained model). Writes a markdown table to benchmarks/results/performer_error.md.

    python benchmarks/performer_error.py [--n 1024 --dim 512 --heads 8 --features 64 256 1024 --seeds 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from models.attention import build_attention
from profiling.machine import cpu_model
from utils.io import write_text


def errors(n: int, dim: int, heads: int, features: int, seed: int, qk_scale: float):
    """(matrix error, output error) for one seed."""
    torch.manual_seed(seed)
    ref = build_attention("naive", dim, heads, bias=False)
    with torch.no_grad():
        ref.to_q.weight.mul_(qk_scale)
        ref.to_k.weight.mul_(qk_scale)
    perf = build_attention("performer", dim, heads, features=features, bias=False)
    perf.load_projection_weights(ref.get_projection_weights())
    perf.eval()
    x = torch.randn(1, n, dim)
    with torch.no_grad():
        y_exact, a_exact = ref(x, return_weights=True)
        y, a = perf(x, return_weights=True)
    rel = lambda u, v: ((u - v).norm() / v.norm()).item()  # noqa: E731
    return rel(a, a_exact), rel(y, y_exact)


def attention_context(n: int, dim: int, heads: int, qk_scale: float, seed: int = 0):
    """How peaked the exact attention is at this scale: std of the logits q.k/sqrt(e), the largest
    attention weight, and ||y_exact|| / ||V|| (small when attention is near uniform, which makes
    any relative error large)."""
    torch.manual_seed(seed)
    ref = build_attention("naive", dim, heads, bias=False)
    x = torch.randn(1, n, dim)
    with torch.no_grad():
        ref.to_q.weight.mul_(qk_scale)
        ref.to_k.weight.mul_(qk_scale)
        q, k, v = (ref.to_q(x), ref.to_k(x), ref.to_v(x))
        q, k, v = (t.view(1, n, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
        s = (q @ k.transpose(-2, -1)) * ref.scale
        a = s.softmax(-1)
        return s.std().item(), a.max().item(), ((a @ v).norm() / v.norm()).item()


def machine() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} logical cores ({torch.get_num_threads()} torch threads); "
        f"Python {platform.python_version()}, torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--features", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "performer_error.md")
    args = ap.parse_args()

    t0 = time.time()
    e = args.dim // args.heads
    lines = [
        "# Performer (FAVOR+) approximation error vs exact softmax attention",
        "",
        f"n = {args.n}, dim = {args.dim}, heads = {args.heads} (head dim {e}), batch 1, fp32, input x ~ N(0, 1), "
        f"bias-free projections shared with `naive`, orthogonal random features; mean +- std over {args.seeds} seeds "
        "(a seed fixes weights, input and features). Matrix error = ||A - A_exact||_F / ||A_exact||_F of the "
        "(h, n, n) attention matrices; output error = ||y - y_exact||_F / ||y_exact||_F of the block outputs.",
        "",
    ]
    for regime, qk_scale in (("small logits (Q, K weights x 0.5)", 0.5), ("default init", 1.0), ("peaked (Q, K weights x 2)", 2.0)):
        s_std, a_max, y_over_v = attention_context(args.n, args.dim, args.heads, qk_scale)
        lines += [
            f"## {regime}: logit std {s_std:.2f}, largest weight {a_max:.4f} (1/n = {1 / args.n:.4f}), "
            f"||y_exact|| / ||V|| = {y_over_v:.3f}",
            "",
            "| features | matrix error | output error | matrix error vs previous row |",
            "|---:|---:|---:|---:|",
        ]
        prev = None
        for m in args.features:
            errs = [errors(args.n, args.dim, args.heads, m, seed, qk_scale) for seed in range(args.seeds)]
            me = [a for a, _ in errs]
            oe = [b for _, b in errs]
            sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
            mm = statistics.mean(me)
            ratio = f"{prev / mm:.2f}x lower" if prev else ""
            lines.append(f"| {m} | {mm:.4f} +- {sd(me):.4f} | {statistics.mean(oe):.4f} +- {sd(oe):.4f} | {ratio} |")
            print(f"{regime:28s} features={m:5d} matrix {mm:.4f} output {statistics.mean(oe):.4f}")
            prev = mm
        lines.append("")
    elapsed = time.time() - t0
    lines += [
        "FAVOR+ is an unbiased estimator of the softmax kernel whose variance falls as 1/features, so errors "
        "should fall as 1/sqrt(features) (2x per 4x features). Its relative variance per query-key pair grows "
        "like exp(|q|^2 + |k|^2) / sqrt(e), so the constant in front depends steeply on the norms of queries "
        "and keys: small with small logits, large once attention is peaked, where heavy-tailed estimates also "
        "slow the 1/sqrt(features) decay at these feature counts. The output error is inflated under the "
        "default init because exact attention is close to uniform there, so y_exact (close to the mean of V) is "
        "small; the matrix error does not have that problem.",
        "",
        f"Machine: {machine()}. Run time {elapsed:.1f} s. Command: `python benchmarks/performer_error.py`.",
        "",
    ]
    write_text(args.out, "\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
