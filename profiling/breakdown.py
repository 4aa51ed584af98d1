"""Where a model's forward time and FLOPs go, component by component (attention, MLP, norms, ...), across
sequence lengths: FLOPs by FlopCounterMode's per-module counts, time by forward hooks around each component,
"other" for the rest. A component is a named group of modules (a dict, or a classifier of module names).

    python profile.py --breakdown encoder --dim 256 --heads 4 --seq-lens 128,256,512,1024
"""
from __future__ import annotations

import csv
import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from models.encoder import AttentionSpec, TransformerEncoder, sized_attention_options
from utils.io import write_text

from .compare import available_devices, cli_list, cli_value
from .flops import SDPA_FORMULAS
from .plots import STYLE, plt, save_figure

Components = Union[Mapping[str, Sequence[nn.Module]], Callable[[str, nn.Module], Optional[str]]]
OTHER = "other"


@dataclass
class BreakdownTarget:
    """What a model builder hands to `breakdown`: the model, `make_input(seq_len) -> args tuple`, and
    its components."""

    model: nn.Module
    make_input: Callable[[int], tuple]
    components: Components
    description: str = ""


def encoder_target(
    *,
    dim: int,
    heads: int,
    depth: int = 4,
    attention: AttentionSpec = "softmax",
    attention_options: Optional[Dict[str, Any]] = None,
    max_len: int = 1024,
    batch: int = 1,
    vocab_size: int = 1000,
    num_classes: int = 2,
) -> BreakdownTarget:
    """`--breakdown encoder`: models/encoder.py's token classifier, random ids as input, and its components."""
    name = attention if isinstance(attention, str) else attention.name
    options = sized_attention_options(attention, attention_options, max_len)  # Linformer must cover the longest n
    model = TransformerEncoder(vocab_size, dim, depth, heads, attention, num_classes, max_len, attention_options=options)

    def make_input(seq_len: int) -> Tuple[Tensor]:
        return (torch.randint(0, vocab_size, (batch, seq_len)),)  # (B, n) token ids

    return BreakdownTarget(model=model, make_input=make_input, components=model.components(),
                           description=f"TransformerEncoder(depth={depth}, dim={dim}, heads={heads}, attention={name})")


MODELS: Dict[str, Callable[..., BreakdownTarget]] = {"encoder": encoder_target}  # what --breakdown can take


# ---------------------------------------------------------------------------------------- core


def resolve_components(model: nn.Module, components: Components) -> Dict[str, List[Tuple[str, nn.Module]]]:
    """{component: [(module path, module), ...]}, checked to be disjoint and non-nested."""
    names = {id(m): n for n, m in model.named_modules()}
    out: Dict[str, List[Tuple[str, nn.Module]]] = {}
    if callable(components) and not isinstance(components, Mapping):
        claimed: List[str] = []
        for name, module in model.named_modules():
            if any(name == c or name.startswith(c + ".") for c in claimed):
                continue
            comp = components(name, module)
            if comp:
                out.setdefault(comp, []).append((name, module))
                claimed.append(name)
    else:
        for comp, modules in components.items():
            for m in modules:
                if id(m) not in names:
                    raise ValueError(f"component {comp!r} holds a module that is not part of the model: {type(m).__name__}")
                out.setdefault(comp, []).append((names[id(m)], m))
    if OTHER in out:
        raise ValueError(f"{OTHER!r} is reserved for what no component covers; rename that component")
    paths = [(p, c) for c, mods in out.items() for p, _ in mods]
    for p, c in paths:
        for q, d in paths:
            if p != q and (p == "" or q.startswith(p + ".")):
                raise ValueError(f"components nest: {q!r} ({d}) lies inside {p or '<root>'!r} ({c})")
        if sum(1 for q, _ in paths if q == p) > 1:
            raise ValueError(f"module {p!r} belongs to more than one component")
    return out


def component_flops(model: nn.Module, inputs: tuple, comps: Dict[str, List[Tuple[str, nn.Module]]]) -> Tuple[Dict[str, int], int]:
    """(FLOPs per component, total FLOPs) of one forward, counted by FlopCounterMode."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=SDPA_FORMULAS) as counter:
        model(*inputs)
    per_module: Dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        # keys are "<RootClass>.<module path>" (the root alone for the whole model)
        path = key.split(".", 1)[1] if "." in key else ""
        per_module[path] = per_module.get(path, 0) + int(sum(ops.values()))
    total = int(counter.get_total_flops())
    return {c: sum(per_module.get(p, 0) for p, _ in mods) for c, mods in comps.items()}, total


def component_times(
    model: nn.Module,
    inputs: tuple,
    comps: Dict[str, List[Tuple[str, nn.Module]]],
    device,
    runs: int,
    warmup: int,
) -> Tuple[Dict[str, List[float]], List[float]]:
    """Per-run milliseconds per component (summed over its modules' calls) and per-run totals."""
    cuda = torch.device(device).type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    acc: Dict[str, float] = {c: 0.0 for c in comps}
    starts: Dict[int, float] = {}
    handles = []

    def pre(comp):
        def hook(module, args):
            sync()
            starts[id(module)] = time.perf_counter()

        return hook

    def post(comp):
        def hook(module, args, output):
            sync()
            acc[comp] += time.perf_counter() - starts.pop(id(module))

        return hook

    for comp, mods in comps.items():
        for _, m in mods:
            handles.append(m.register_forward_pre_hook(pre(comp)))
            handles.append(m.register_forward_hook(post(comp)))
    per_comp: Dict[str, List[float]] = {c: [] for c in comps}
    totals: List[float] = []
    try:
        with torch.no_grad():
            for i in range(warmup + runs):
                for c in acc:
                    acc[c] = 0.0
                sync()
                t0 = time.perf_counter()
                model(*inputs)
                sync()
                total = time.perf_counter() - t0
                if i >= warmup:
                    totals.append(total * 1e3)
                    for c in comps:
                        per_comp[c].append(acc[c] * 1e3)
    finally:
        for h in handles:
            h.remove()
    return per_comp, totals


def breakdown(
    model: nn.Module,
    make_input: Callable[[int], tuple],
    components: Components,
    seq_lens: Sequence[int],
    device="cpu",
    runs: int = 5,
    warmup: int = 2,
    threads: Optional[int] = None,
) -> List[Dict]:
    """One row per (seq_len, component), "other" included: time_ms (median over runs), time_share,
    gflop, flop_share, plus the totals. Shares of each seq_len sum to 1."""
    comps = resolve_components(model, components)
    model = model.to(device).eval()
    prev_threads = torch.get_num_threads()
    cuda = torch.device(device).type == "cuda"
    if threads is not None and not cuda:
        torch.set_num_threads(threads)
    rows: List[Dict] = []
    try:
        for n in seq_lens:
            inputs = make_input(n)
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)
            inputs = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs)
            flops, total_flops = component_flops(model, inputs, comps)
            per_comp, totals = component_times(model, inputs, comps, device, runs, warmup)
            others = [max(0.0, t - sum(per_comp[c][i] for c in comps)) for i, t in enumerate(totals)]
            med = {c: statistics.median(v) for c, v in per_comp.items()}
            med[OTHER] = statistics.median(others)
            flops[OTHER] = max(0, total_flops - sum(flops.values()))
            time_sum = sum(med.values()) or 1.0
            total_ms = statistics.median(totals)
            for c in list(comps) + [OTHER]:
                rows.append(
                    dict(
                        seq_len=n,
                        component=c,
                        modules=len(comps[c]) if c in comps else 0,
                        time_ms=med[c],
                        time_share=med[c] / time_sum,
                        gflop=flops[c] / 1e9,
                        flops=flops[c],
                        flop_share=flops[c] / total_flops if total_flops else 0.0,
                        total_ms=total_ms,
                        total_gflop=total_flops / 1e9,
                        runs=runs,
                        device=str(torch.device(device)),
                        threads=None if cuda else torch.get_num_threads(),
                    )
                )
    finally:
        torch.set_num_threads(prev_threads)
    return rows


# ------------------------------------------------------------------------------- outputs


def write_csv(rows: List[Dict], path: Path) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def _pivot(rows: List[Dict], key: str) -> Tuple[List[int], List[str], Dict[Tuple[int, str], float]]:
    seq_lens = sorted({r["seq_len"] for r in rows})
    comps: List[str] = []
    for r in rows:
        if r["component"] not in comps:
            comps.append(r["component"])
    return seq_lens, comps, {(r["seq_len"], r["component"]): r[key] for r in rows}


def markdown(rows: List[Dict], title: str = "") -> str:
    seq_lens, comps, t = _pivot(rows, "time_share")
    _, _, f = _pivot(rows, "flop_share")
    _, _, ms = _pivot(rows, "time_ms")
    totals = {r["seq_len"]: (r["total_ms"], r["total_gflop"]) for r in rows}
    lines = [f"# Component breakdown{': ' + title if title else ''}", ""]
    lines.append("Share of forward time (median ms in brackets) and of FLOPs per component; FLOPs counted by "
                 "FlopCounterMode (matmuls only), time by forward hooks. `other` = whole forward minus components.")
    lines.append("")
    lines.append("| n | " + " | ".join(f"{c} time | {c} FLOPs" for c in comps) + " | total ms | total GFLOP |")
    lines.append("|" + "---:|" * (2 * len(comps) + 3))
    for n in seq_lens:
        cells = [f"{100 * t[(n, c)]:.1f}% ({ms[(n, c)]:.2f}) | {100 * f[(n, c)]:.1f}%" for c in comps]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {totals[n][0]:.2f} | {totals[n][1]:.3f} |")
    return "\n".join(lines) + "\n"


def plot_breakdown(rows: List[Dict], out_dir: Path, title: str = "", stem: str = "breakdown") -> List[Path]:
    """Two stacked-bar panels: share of time and share of FLOPs per component vs sequence length."""
    with plt.rc_context(STYLE):
        return _plot_breakdown(rows, out_dir, title, stem)


def _plot_breakdown(rows: List[Dict], out_dir: Path, title: str, stem: str) -> List[Path]:
    seq_lens, comps, t = _pivot(rows, "time_share")
    _, _, f = _pivot(rows, "flop_share")
    cmap = plt.get_cmap("tab10")
    colors = {c: ("0.75" if c == OTHER else cmap(i % 10)) for i, c in enumerate(comps)}
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), sharey=True)
    xs = range(len(seq_lens))
    for ax, shares, label in ((axes[0], t, "share of forward time"), (axes[1], f, "share of FLOPs")):
        bottom = [0.0] * len(seq_lens)
        for c in comps:
            h = [shares[(n, c)] for n in seq_lens]
            ax.bar(xs, h, bottom=bottom, color=colors[c], edgecolor="white", linewidth=0.5, width=0.7, label=c)
            for x, b, v in zip(xs, bottom, h):
                if v >= 0.07:  # label segments tall enough to hold text
                    ax.text(x, b + v / 2, f"{100 * v:.0f}%", ha="center", va="center", fontsize=7.5,
                            color="black" if c == OTHER else "white")
            bottom = [b + v for b, v in zip(bottom, h)]
        ax.set_xticks(list(xs), [str(n) for n in seq_lens])
        ax.set_xlabel("sequence length $n$")
        ax.set_title(label)
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_ylabel("share")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="component")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    paths = save_figure(fig, Path(out_dir) / stem)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------ profile.py --breakdown


def run_breakdown(args, out_dir: Path, models: Mapping[str, Callable[..., BreakdownTarget]] = MODELS) -> List[Dict]:
    """`profile.py --breakdown MODEL`: build MODEL (args.breakdown) with args.dim / args.heads and the
    first of args.attentions, break its forward down over args.seq_lens, write breakdown.csv,
    breakdown.md and (unless args.no_plots) breakdown.png/.pdf to out_dir."""
    name = getattr(args, "breakdown", None) or "encoder"
    if name not in models:
        raise ValueError(f"--breakdown: unknown model {name!r}; available: {', '.join(sorted(models))}")
    # the first mechanism named by --attentions; softmax when none was named (the validated config
    # lists every registered mechanism then, which says nothing about this choice)
    raw = getattr(args, "attentions", None)
    named = [t.strip() for t in raw.split(",") if t.strip()] if isinstance(raw, str) else list(raw or [])
    attention = named[0] if named else "softmax"
    seq_lens = sorted(set(cli_list(args, "seq_lens", [128, 256, 512, 1024], cast=int)))
    devices = available_devices(args) or ["cpu"]
    device = devices[0]
    batch, dim, heads = int(cli_value(args, "batch", 1)), int(cli_value(args, "dim", 256)), int(cli_value(args, "heads", 4))
    depth = int(getattr(args, "depth", None) or 4)
    options = dict((cli_value(args, "options", {}) or {}).get(attention, {})) or dict(getattr(args, "attention_options", None) or {})
    target = models[name](
        dim=dim,
        heads=heads,
        depth=depth,
        attention=attention,
        attention_options=options,
        max_len=max(seq_lens),
        batch=batch,
    )
    rows = breakdown(
        target.model,
        target.make_input,
        target.components,
        seq_lens,
        device=device,
        runs=int(cli_value(args, "runs", 5)),
        warmup=int(cli_value(args, "warmup", 2)),
        threads=cli_value(args, "threads"),
    )
    for r in rows:
        r.update(model=name, attention=attention, dim=dim, heads=heads, depth=depth, batch=batch)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{name} ({attention}), depth {depth}, dim {dim}, heads {heads}, batch {batch}, {device}, fwd"
    write_csv(rows, out_dir / "breakdown.csv")
    write_text(out_dir / "breakdown.md", markdown(rows, title))
    if not getattr(args, "no_plots", False):
        plot_breakdown(rows, out_dir, title)
    _print_table(rows, title)
    return rows


def _print_table(rows: List[Dict], title: str) -> None:
    seq_lens, comps, t = _pivot(rows, "time_share")
    _, _, f = _pivot(rows, "flop_share")
    table = Table(title=f"Component breakdown: {title}", caption="time share / FLOP share")
    table.add_column("n", justify="right")
    for c in comps:
        table.add_column(c, justify="right")
    totals = {r["seq_len"]: r["total_ms"] for r in rows}
    table.add_column("total ms", justify="right")
    for n in seq_lens:
        table.add_row(str(n), *[f"{100 * t[(n, c)]:.0f}% / {100 * f[(n, c)]:.0f}%" for c in comps], f"{totals[n]:.2f}")
    console = Console()
    if not console.is_terminal:  # a log file: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)
