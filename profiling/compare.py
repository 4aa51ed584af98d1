"""`profile.py --compare-builtin`: the from-scratch attention (`naive`) against PyTorch's built-ins, `torch_mha`
(nn.MultiheadAttention) and `softmax` (F.scaled_dot_product_attention), with shared weights: forward time, the
speed-up over naive and how closely the outputs agree, at a few (batch, seq, dim, heads) configurations.

    python profile.py --compare-builtin --threads 2 --runs 10
"""
from __future__ import annotations

import csv
import io
import platform
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from rich.console import Console
from rich.table import Table

from models.attention import build_attention
from utils.io import write_text

from .machine import cpu_model, device_name
from .sweep_config import DEVICE_ALIASES, DTYPES
from .timing import time_fn

REFERENCE = "naive"
BUILTINS = ("torch_mha", "softmax")
DEFAULT_CONFIGS: List[Tuple[int, int, int, int]] = [  # (batch, seq, dim, heads)
    (1, 128, 256, 4),
    (8, 256, 512, 8),
    (1, 1024, 512, 8),
    (4, 512, 768, 12),
    (1, 4096, 512, 8),
]
COLUMNS = [
    "device", "device_name", "batch", "seq_len", "dim", "heads", "dtype", "attention",
    "median_ms", "sem_ms", "runs", "threads", "speedup_vs_naive", "cosine_vs_naive", "max_abs_diff_vs_naive",
]  # fmt: skip


def cli_value(args, name: str, default=None):
    """A setting from profile.py's Namespace: its validated `config` (a SweepConfig) first, then the
    raw flag, then `default`."""
    cfg = getattr(args, "config", None)
    value = getattr(cfg, name, None) if cfg is not None else None
    if value is None:
        value = getattr(args, name, None)
    return default if value is None else value


def cli_list(args, name: str, default: Sequence, cast=str) -> list:
    """A list setting; a raw comma-separated flag ("cpu,gpu", "128,512") is split and cast."""
    value = cli_value(args, name, None)
    if value is None:
        return list(default)
    items = [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else list(value)
    return [cast(v) for v in items] or list(default)


def agreement(out: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    """(cosine similarity of the flattened outputs, max |out - ref|), computed in float64."""
    a, b = out.detach().double().flatten(), ref.detach().double().flatten()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return cos, (a - b).abs().max().item()


def compare_config(batch: int, seq: int, dim: int, heads: int, device="cpu", dtype: str = "fp32", runs: int = 10, warmup: int = 3, threads=None) -> List[Dict]:
    """Rows for naive and each built-in at one configuration; all share naive's projection weights."""
    ref = build_attention(REFERENCE, dim, heads).eval()
    weights = ref.get_projection_weights()
    modules = {REFERENCE: ref}
    for name in BUILTINS:
        m = build_attention(name, dim, heads).eval()
        m.load_projection_weights(weights)
        modules[name] = m
    x = torch.randn(batch, seq, dim)
    with torch.no_grad():  # agreement at fp32 on the CPU, whatever is timed
        outs = {name: m(x) for name, m in modules.items()}
    rows = []
    xd = x.to(device=device, dtype=DTYPES[dtype])
    for name, m in modules.items():
        m = m.to(device=device, dtype=DTYPES[dtype])
        with torch.no_grad():
            stats = time_fn(lambda m=m: m(xd), warmup=warmup, runs=runs, device=device, threads=threads)
        cos, diff = agreement(outs[name], outs[REFERENCE])
        rows.append(
            dict(device=str(torch.device(device)), device_name=device_name(device), batch=batch, seq_len=seq, dim=dim, heads=heads, dtype=dtype,
                 attention=name, median_ms=stats.median_ms, sem_ms=stats.sem_ms, runs=stats.runs, threads=stats.threads,
                 cosine_vs_naive=cos, max_abs_diff_vs_naive=diff)
        )
        m.to("cpu", torch.float32)
    t_ref = rows[0]["median_ms"]
    for r in rows:
        r["speedup_vs_naive"] = t_ref / r["median_ms"]
    return [{c: r.get(c) for c in COLUMNS} for r in rows]


def available_devices(args) -> List[str]:
    """args.devices (canonical names), without a CUDA device this machine lacks (said on stdout)."""
    out = []
    for d in cli_list(args, "devices", ["cpu"], cast=lambda t: DEVICE_ALIASES.get(str(t).lower(), str(t).lower())):
        if torch.device(d).type == "cuda" and not torch.cuda.is_available():
            print(f"skipping device {d}: CUDA is not available on this machine")
            continue
        out.append(d)
    return list(dict.fromkeys(out))


def markdown(rows: Sequence[Dict], threads) -> str:
    lines = [
        "# From-scratch attention vs PyTorch built-ins",
        "",
        f"Machine: {cpu_model()}; threads: {threads if threads is not None else torch.get_num_threads()}; "
        f"torch {torch.__version__}; Python {platform.python_version()}.",
        "",
        f"`{REFERENCE}` is the from-scratch reference (separate Q/K/V projections, explicit softmax(QK^T/sqrt(e))V); "
        "`torch_mha` is nn.MultiheadAttention, `softmax` is F.scaled_dot_product_attention with a merged QKV "
        "projection. All three share the same projection weights. Forward pass, eval mode, no_grad; "
        "speed-up = naive median / median (> 1: faster than naive); agreement is measured on fp32 outputs.",
        "",
        "| device | batch | n | dim | heads | dtype | attention | median ms (± SEM) | speed-up vs naive | 1 − cosine vs naive | max abs diff |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['batch']} | {r['seq_len']} | {r['dim']} | {r['heads']} | {r['dtype']} | {r['attention']} | "
            f"{r['median_ms']:.3f} (± {r['sem_ms']:.3f}) | {r['speedup_vs_naive']:.2f}x | {1 - r['cosine_vs_naive']:.1e} | {r['max_abs_diff_vs_naive']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def _print_table(rows: Sequence[Dict], threads) -> None:
    table = Table(title="naive vs PyTorch built-ins (shared weights, forward)",
                  caption=f"{cpu_model()} | threads {threads if threads is not None else torch.get_num_threads()} | torch {torch.__version__}")
    for col, just in (("device", "left"), ("B x n x d / h", "left"), ("attention", "left"), ("median ms", "right"),
                      ("± SEM", "right"), ("speed-up", "right"), ("1 − cosine", "right"), ("max |Δ|", "right")):
        table.add_column(col, justify=just)
    for r in rows:
        table.add_row(
            r["device"], f"{r['batch']}x{r['seq_len']}x{r['dim']} / {r['heads']}", r["attention"],
            f"{r['median_ms']:.3f}", f"{r['sem_ms']:.3f}",
            "—" if r["attention"] == REFERENCE else f"{r['speedup_vs_naive']:.2f}x",
            f"{1 - r['cosine_vs_naive']:.1e}", f"{r['max_abs_diff_vs_naive']:.1e}",
            end_section=r["attention"] == rows[-1]["attention"],
        )
    console = Console()
    if not console.is_terminal:  # a log file: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)


def run_compare_builtin(args, out_dir: Path) -> List[Dict]:
    """`profile.py --compare-builtin`: every configuration (args.compare_configs or DEFAULT_CONFIGS)
    on every device in args.devices; writes compare_builtin.csv and .md to out_dir."""
    configs = [tuple(c) for c in (getattr(args, "compare_configs", None) or DEFAULT_CONFIGS)]
    threads = cli_value(args, "threads")
    runs, warmup = int(cli_value(args, "runs", 10)), int(cli_value(args, "warmup", 3))
    dtype = cli_value(args, "dtype", "fp32")
    if dtype not in DTYPES:
        raise SystemExit(f"--compare-builtin: unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    rows: List[Dict] = []
    for device in available_devices(args):
        for batch, seq, dim, heads in configs:
            rows += compare_config(batch, seq, dim, heads, device=device, dtype=dtype, runs=runs, warmup=warmup, threads=threads)
    out_dir = Path(out_dir)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    write_text(out_dir / "compare_builtin.csv", buf.getvalue())
    write_text(out_dir / "compare_builtin.md", markdown(rows, threads))
    _print_table(rows, threads)
    return rows
