"""Figures of a sweep (time, memory, flops, throughput, speedup, combined; PNG at 200 dpi and PDF) from flat
result rows (profiling/results.py). "ok" rows only; one panel per device, one line per mechanism in the same
colour and marker in every figure; log-log axes; error bars are +-1 standard error of the mean over the timed runs
(sem_ms), carried into throughput and speed-up as relative errors, and the legend says so. A point over the time
budget or out of memory ("timeout" / "oom" rows) is not left out silently: it is marked at the top edge of every
panel, in its mechanism's colour (x: over the time budget, +: out of memory). Each configuration in the rows gets its own set of figures. A decoding sweep
(mode "decode") gets time per token, cache/state size, one step's peak memory and speed-up per token against the
context length L (DECODE_FIGURES).

    plot_sweep(read_csv_rows("results/sweep-.../results.csv"), Path("results/sweep-..."))
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from models.attention import list_attentions  # noqa: E402

BASELINE = "softmax"
FIGURES = ("time", "memory", "flops", "throughput", "speedup", "combined")
DECODE_FIGURES = ("time", "state", "memory", "speedup", "combined")
# statuses of a point that was tried and did not fit: (marker, legend label); marked at a panel's top edge
FAILED_MARKS = {"timeout": ("x", "over the time budget (at the top edge)"), "oom": ("+", "out of memory (at the top edge)")}
ERRORBAR_NOTE = "error bars: ±1 s.e.m. over the timed runs"
CONFIG_FIELDS = ("batch", "dim", "heads", "dtype", "mode", "causal")

STYLE = {
    "font.family": "serif",
    "font.serif": ["DejaVu Serif", "Times New Roman", "Times", "Nimbus Roman", "serif"],
    "mathtext.fontset": "dejavuserif",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "axes.grid.which": "major",
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "lines.markersize": 4.5,
    "errorbar.capsize": 2.0,
    "savefig.dpi": 200,
    "pdf.fonttype": 42,  # embed TrueType: editable text, no Type 3 fonts in the PDF
    "ps.fonttype": 42,
}

# Okabe-Ito (colour-blind safe) first, then darker tab colours, then Paul Tol's muted ones: a colour of its own for
# each of the registry's 20 mechanisms (two mechanisms in one colour read as one in a legend); markers differ too,
# for greyscale print
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF", "#9467BD",
           "#332288", "#882255", "#117733", "#44AA99", "#999933", "#AA4499", "#661100", "#6699CC"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*"]


def mechanism_styles(names: Iterable[str]) -> Dict[str, Tuple[str, str]]:
    """name -> (colour, marker), fixed over the sorted registry names plus the given names, so a
    mechanism looks the same in every figure and every sweep. Past the palette's length the markers shift by one
    per round, so every (colour, marker) pair stays distinct up to len(PALETTE) * len(MARKERS) mechanisms."""
    ordered = sorted(set(list_attentions()) | set(names))
    return {n: (PALETTE[i % len(PALETTE)], MARKERS[(i + i // len(PALETTE)) % len(MARKERS)]) for i, n in enumerate(ordered)}


# ------------------------------------------------------------------------------ pure helpers


def ok_rows(rows: Iterable[Dict]) -> List[Dict]:
    return [r for r in rows if r.get("status") == "ok"]


def _truthy(v) -> bool:
    return v in (True, 1, "1", "True", "true")


def config_of(row: Dict) -> Tuple:
    return tuple(_truthy(row.get(k)) if k == "causal" else row.get(k) for k in CONFIG_FIELDS)


def config_title(cfg: Tuple) -> str:
    c = dict(zip(CONFIG_FIELDS, cfg))
    return (f"dim {c['dim']}, {c['heads']} heads, batch {c['batch']}, {c['dtype']}, "
            f"{c['mode']}, {'causal' if c['causal'] else 'non-causal'}")


def config_suffix(cfg: Tuple) -> str:
    c = dict(zip(CONFIG_FIELDS, cfg))
    return f"d{c['dim']}_h{c['heads']}_b{c['batch']}_{c['dtype']}_{str(c['mode']).replace('+', '')}" + ("_causal" if c["causal"] else "")


def speedups(rows: Iterable[Dict], baseline: str = BASELINE) -> List[Dict]:
    """Speed-up of each "ok" row over `baseline` at the same device, length and configuration:
    s = t_baseline / t (ratio of medians), with standard error s * sqrt((sem_b/t_b)^2 + (sem/t)^2)
    (relative errors of independent measurements add in quadrature). Rows without a baseline at
    their point are left out; the baseline's own rows are included (s = 1)."""
    rows = ok_rows(rows)
    base = {(r["device"], r["seq_len"], config_of(r)): r for r in rows if r["attention"] == baseline}
    out = []
    for r in rows:
        b = base.get((r["device"], r["seq_len"], config_of(r)))
        if b is None or not r.get("median_ms") or not b.get("median_ms"):
            continue
        t, tb = float(r["median_ms"]), float(b["median_ms"])
        s = tb / t
        rel = math.hypot(float(b.get("sem_ms") or 0.0) / tb, float(r.get("sem_ms") or 0.0) / t)
        out.append(dict(attention=r["attention"], device=r["device"], seq_len=r["seq_len"], config=config_of(r), speedup=s, speedup_sem=s * rel))
    return out


def throughput_sem(row: Dict) -> float:
    """Standard error of achieved GFLOP/s (= analytic / time): the time's relative SEM carried over."""
    g, t, sem = row.get("achieved_gflops"), row.get("median_ms"), row.get("sem_ms")
    if not g or not t or sem is None:
        return 0.0
    return float(g) * float(sem) / float(t)


# ----------------------------------------------------------------------------------- metrics

# metric -> (y label, panel title, y(row), yerr(row) or None)
METRICS = {
    "time": ("median time per call (ms)", "Time", lambda r: r.get("median_ms"), lambda r: r.get("sem_ms") or 0.0),
    "memory": ("peak memory (MiB)", "Peak memory", lambda r: r.get("peak_mib"), None),
    "flops": ("FLOPs per call (GFLOP)", "FLOPs", lambda r: r.get("analytic_gflop"), None),
    "throughput": ("achieved throughput (GFLOP/s)", "Throughput", lambda r: r.get("achieved_gflops"), throughput_sem),
    "speedup": (f"speed-up over {BASELINE} ($t_{{\\mathrm{{{BASELINE}}}}}/t$)", f"Speed-up over {BASELINE}", lambda r: r.get("speedup"), lambda r: r.get("speedup_sem") or 0.0),
    "state": ("cache / state after the prefill (MiB)", "Decoding state", lambda r: r.get("state_mib"), None),
}
# the decoding mode's words for the metrics it shares (y label, panel title)
DECODE_LABELS = {
    "time": ("median time per token (ms)", "Time per token"),
    "memory": ("peak memory of one step (MiB)", "Peak memory per step"),
    "speedup": (METRICS["speedup"][0], f"Speed-up per token over {BASELINE}"),
}


def figures_of(mode: str) -> Tuple[str, ...]:
    """The figures a configuration of this mode gets."""
    return DECODE_FIGURES if mode == "decode" else FIGURES


def metric_spec(metric: str, mode: str) -> tuple:
    """(y label, panel title, y(row), yerr(row) or None) of a metric in a mode."""
    ylabel, title, y, yerr = METRICS[metric]
    if mode == "decode":
        ylabel, title = DECODE_LABELS.get(metric, (ylabel, title))
    return ylabel, title, y, yerr


def _device_title(device: str, rows: Sequence[Dict]) -> str:
    names = {r.get("device_name") for r in rows if r.get("device") == device and r.get("device_name")}
    if len(names) == 1:
        name = names.pop()
        name = name if len(name) <= 38 else name[:36] + "…"
        return f"{device.upper()}: {name}"
    return device.upper()


def _format_x(ax, seq_lens: Sequence[int], mode: str = "fwd") -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(seq_lens))
    if len(ticks) > 7:  # keep labels apart: every other length
        ticks = ticks[:: math.ceil(len(ticks) / 7)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(round(v)):,}"))  # the exact swept lengths
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("context length $L$" if mode == "decode" else "sequence length $n$")


def _plain(v: float, _=None) -> str:
    if v <= 0:
        return ""
    if 1e-3 <= v < 1e5:
        return f"{v:.4g}"
    exp = math.floor(math.log10(v))
    mant = v / 10**exp
    return f"$10^{{{exp}}}$" if abs(mant - 1) < 1e-9 else f"${mant:.2g}\\times10^{{{exp}}}$"


def format_log_axis(ax, which: str = "y") -> None:
    """A log axis ("x" or "y") that reads: up to ~2.5 decades the ticks are plain numbers in 1-2-5 steps (0.5, 1,
    2, 5, ...; 1-1.5-2-3-5-7 when that leaves fewer than 3), which reads better than 6x10^-1 labels; wider
    ranges keep decade ticks only. On x, where labels sit side by side, at most 5 are kept (every other one)."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    lo, hi = (ax.get_ylim if which == "y" else ax.get_xlim)()

    def inside() -> List[float]:
        return [t for t in axis.get_majorticklocs() if lo <= t <= hi]

    if hi / lo < 10**2.5:
        axis.set_major_formatter(FuncFormatter(_plain))
        axis.set_minor_formatter(NullFormatter())
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_locator(LogLocator(base=10, subs=(1.5, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
        if len(inside()) < 3:
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))  # not 0.9 beside 1
            axis.set_minor_locator(NullLocator())
        ticks = inside()
        if which == "x" and len(ticks) > 5:
            axis.set_major_locator(FixedLocator(ticks[:: math.ceil(len(ticks) / 5)]))
            axis.set_minor_locator(NullLocator())
    else:
        axis.set_minor_formatter(NullFormatter())
    (ax.set_ylim if which == "y" else ax.set_xlim)(lo, hi)


def format_linear_axis(ax, which: str = "y", ticks: int = 5) -> None:
    """A linear axis with at most `ticks` + 1 round ticks in plain numbers (0.025, 0.03, 0.035; no offset or
    trailing zeros), so the labels of a narrow range do not run into each other."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(MaxNLocator(nbins=ticks, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))
    axis.set_minor_locator(NullLocator())


def overlapping_tick_labels(fig) -> List[str]:
    """The tick labels of a figure's axes that run into a neighbour on the same axis, as "label|label" (empty
    when every label reads): drawn first, then the labels' boxes compared pairwise."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    clashes = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            boxes = [t.get_window_extent(renderer) for t in labels]
            for i in range(len(labels)):
                for j in range(i + 1, len(labels)):
                    if boxes[i].overlaps(boxes[j]):
                        clashes.append(f"{labels[i].get_text()}|{labels[j].get_text()}")
    return clashes


def _format_log_y(ax) -> None:
    format_log_axis(ax, "y")


def _counted_differs(r: Dict) -> bool:
    c, a = r.get("counted_gflop"), r.get("analytic_gflop")
    return c not in (None, "") and bool(a) and abs(float(c) / float(a) - 1.0) > 1e-3


def _series(rows: Sequence[Dict], metric: str, device: str) -> Dict[str, List[Dict]]:
    out: Dict[str, List[Dict]] = defaultdict(list)
    y = METRICS[metric][2]
    for r in rows:
        if r["device"] == device and y(r) not in (None, "") and float(y(r)) > 0:
            out[r["attention"]].append(r)
    for v in out.values():
        v.sort(key=lambda r: r["seq_len"])
    return out


def failed_rows(rows: Iterable[Dict]) -> List[Dict]:
    """The points that were tried and did not fit: over the time budget or out of memory."""
    return [r for r in rows if r.get("status") in FAILED_MARKS]


def _mark_failed(ax, failed: Sequence[Dict], device: str, styles: Dict[str, Tuple[str, str]]) -> List[Line2D]:
    """A marker per failed point of `device` at the panel's top edge (x: its length; y: axes fraction), in
    its mechanism's colour, points at one length stacked downwards; labelled with the status for tests."""
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    marks, at = [], defaultdict(int)
    for r in sorted((r for r in failed if r.get("device") == device), key=lambda r: (r["seq_len"], r["attention"])):
        marker, label = FAILED_MARKS[r["status"]]
        k = at[r["seq_len"]]
        at[r["seq_len"]] += 1
        (mark,) = ax.plot([r["seq_len"]], [0.96 - 0.06 * k], transform=trans, linestyle="none", marker=marker, markersize=7,
                          markeredgewidth=1.6, color=styles[r["attention"]][0], clip_on=False, zorder=5,
                          label=f"_{r['attention']} {r['status']}")
        mark.set_gid(f"{r['status']}:{r['attention']}:{r['seq_len']}")
        marks.append(mark)
    return marks


def _draw_panel(ax, rows: Sequence[Dict], metric: str, device: str, styles: Dict[str, Tuple[str, str]], seq_lens: Sequence[int],
                mode: str = "fwd", failed: Sequence[Dict] = ()) -> None:
    ylabel, _, y, yerr = metric_spec(metric, mode)
    for name, series in sorted(_series(rows, metric, device).items()):
        color, marker = styles[name]
        xs = [r["seq_len"] for r in series]
        ys = [float(y(r)) for r in series]
        errs = [float(yerr(r)) for r in series] if yerr else None
        if errs is not None:
            errs = [min(e, 0.999 * v) for e, v in zip(errs, ys)]  # a log axis cannot show a bar below 0
        ax.errorbar(xs, ys, yerr=errs, color=color, marker=marker, label=name, markeredgewidth=0.8, elinewidth=0.9, zorder=3)
        if metric == "flops":  # counted FLOPs, hollow, where they differ from the analytic figure
            pts = [(r["seq_len"], float(r["counted_gflop"])) for r in series if _counted_differs(r)]
            if pts:
                ax.plot(*zip(*pts), linestyle="none", marker=marker, markersize=7, markerfacecolor="none", markeredgecolor=color, markeredgewidth=1.0, zorder=4)
    if metric == "speedup":
        ax.axhline(1.0, color="0.3", linestyle="--", linewidth=0.9, zorder=2)
    ax.set_yscale("log")
    if any(r.get("device") == device for r in failed):  # headroom: the marks sit in a band above every value
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (hi / lo) ** 0.18)
    _format_log_y(ax)
    _format_x(ax, seq_lens, mode)
    _mark_failed(ax, failed, device, styles)
    ax.set_ylabel(ylabel)


def _legend_handles(names: Sequence[str], styles: Dict[str, Tuple[str, str]], metric: Optional[str] = None, counted: bool = True,
                    statuses: Iterable[str] = ()) -> List[Line2D]:
    handles = [Line2D([], [], color=styles[n][0], marker=styles[n][1], label=n) for n in names]
    if metric is None or METRICS[metric][3] is not None:
        handles.append(Line2D([], [], color="0.35", marker="|", markersize=9, linestyle="none", label=ERRORBAR_NOTE))
    statuses = set(statuses)
    for status in (s for s in FAILED_MARKS if s in statuses):
        marker, label = FAILED_MARKS[status]
        handles.append(Line2D([], [], color="0.25", marker=marker, markersize=7, markeredgewidth=1.6, linestyle="none", label=label))
    if metric in ("flops", None) and counted:
        handles.append(Line2D([], [], color="0.35", marker="o", linestyle="none", markerfacecolor="none", markersize=7, label="counted (where ≠ analytic)"))
    if metric in ("speedup", None):
        handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=0.9, label=f"{BASELINE} (= 1)"))
    return handles


def save_figure(fig, stem: Path) -> List[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=200, bbox_inches="tight", pad_inches=0.05)
        paths.append(p)
    return paths


def _metric_rows(rows: Sequence[Dict], metric: str) -> List[Dict]:
    if metric != "speedup":
        return list(rows)
    by_key = {(s["attention"], s["device"], s["seq_len"]): s for s in speedups(rows)}
    out = []
    for r in rows:
        s = by_key.get((r["attention"], r["device"], r["seq_len"]))
        if s is not None and r["attention"] != BASELINE:
            out.append(dict(r, speedup=s["speedup"], speedup_sem=s["speedup_sem"]))
    return out


def sweep_figure(rows: Sequence[Dict], metric: str, devices: Sequence[str], styles, title: str, mode: str = "fwd",
                 failed: Sequence[Dict] = ()):
    """One metric's figure (a panel per device) of one configuration's "ok" rows, its failed points marked."""
    mrows = _metric_rows(rows, metric)
    seq_lens = sorted({r["seq_len"] for r in [*rows, *failed]})
    fig, axes = plt.subplots(1, len(devices), figsize=(max(4.6, 3.9 * len(devices)), 3.4), squeeze=False)
    for ax, dev in zip(axes[0], devices):
        _draw_panel(ax, mrows, metric, dev, styles, seq_lens, mode, failed)
        ax.set_title(_device_title(dev, rows))
    names = sorted({r["attention"] for r in mrows} | {r["attention"] for r in failed})
    name = metric_spec(metric, mode)[1]
    fig.suptitle(f"{name}\n{title}" if len(devices) == 1 else f"{name} — {title}", fontsize=10.5)
    fig.tight_layout()
    handles = _legend_handles(names, styles, metric, any(map(_counted_differs, rows)), (r["status"] for r in failed))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="mechanism")
    return fig


def _single_figure(rows: Sequence[Dict], metric: str, devices: Sequence[str], styles, title: str, stem: Path, mode: str = "fwd",
                   failed: Sequence[Dict] = ()) -> List[Path]:
    fig = sweep_figure(rows, metric, devices, styles, title, mode, failed)
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def _combined_figure(rows: Sequence[Dict], devices: Sequence[str], styles, title: str, stem: Path, mode: str = "fwd",
                     failed: Sequence[Dict] = ()) -> List[Path]:
    metrics = [m for m in figures_of(mode) if m in METRICS]
    seq_lens = sorted({r["seq_len"] for r in [*rows, *failed]})
    names = sorted({r["attention"] for r in [*rows, *failed]})
    if len(devices) == 1:  # 2 x 3 grid, the cell after the metrics holds the legend
        fig, grid = plt.subplots(2, 3, figsize=(11.0, 6.4))
        cells = [(grid.flat[i], m, devices[0]) for i, m in enumerate(metrics)]
        for ax in grid.flat[len(metrics):]:
            ax.axis("off")
        legend_ax = grid.flat[len(metrics)]
    else:  # one row per device, one column per metric
        fig, grid = plt.subplots(len(devices), len(metrics), figsize=(3.1 * len(metrics), 2.8 * len(devices)), squeeze=False)
        cells = [(grid[i, j], m, d) for i, d in enumerate(devices) for j, m in enumerate(metrics)]
        legend_ax = None
    for ax, metric, dev in cells:
        _draw_panel(ax, _metric_rows(rows, metric), metric, dev, styles, seq_lens, mode, failed)
        ax.set_title(metric_spec(metric, mode)[1])
    if len(devices) > 1:
        for i, d in enumerate(devices):
            name = _device_title(d, rows).split(": ", 1)
            label = name[0] + (f"\n{name[1]}" if len(name) > 1 else "")
            grid[i, 0].annotate(label, xy=(-0.36, 0.5), xycoords="axes fraction", rotation=90, va="center", ha="right",
                                ma="center", fontsize=9.5, fontweight="bold")
    fig.suptitle(f"{title}" + (f" — {_device_title(devices[0], rows)}" if len(devices) == 1 else ""), fontsize=11)
    fig.tight_layout()
    handles = _legend_handles(names, styles, None, "flops" in metrics and any(map(_counted_differs, rows)), (r["status"] for r in failed))
    if legend_ax is not None:
        legend_ax.legend(handles=handles, loc="center", frameon=False, title="mechanism", ncol=1 if len(handles) <= 12 else 2)
    else:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 6), frameon=False)
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def plot_sweep(rows: List[Dict], out_dir: Path, figures: Optional[Sequence[str]] = None) -> List[Path]:
    """Write the figures (PNG + PDF) of the "ok" rows to out_dir: each configuration's (figures_of its mode),
    or those of `figures` that apply to it; returns the paths written."""
    known = list(dict.fromkeys(FIGURES + DECODE_FIGURES))
    unknown = sorted(set(figures or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    failed_by_cfg: Dict[Tuple, List[Dict]] = defaultdict(list)
    for r in failed_rows(rows):
        failed_by_cfg[config_of(r)].append(r)
    rows = ok_rows(rows)
    if not rows:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    styles = mechanism_styles([r["attention"] for r in rows] + [r["attention"] for fs in failed_by_cfg.values() for r in fs])
    by_cfg: Dict[Tuple, List[Dict]] = defaultdict(list)
    for r in rows:
        by_cfg[config_of(r)].append(r)
    order = {"cpu": 0, "cuda": 1}
    paths: List[Path] = []
    with plt.rc_context(STYLE):
        for cfg, cfg_rows in by_cfg.items():
            devices = sorted({r["device"] for r in cfg_rows}, key=lambda d: (order.get(d, 2), d))
            suffix = "" if len(by_cfg) == 1 else "_" + config_suffix(cfg)
            title = config_title(cfg)
            mode = dict(zip(CONFIG_FIELDS, cfg))["mode"]
            wanted = [f for f in figures_of(mode) if figures is None or f in figures]
            failed = [r for r in failed_by_cfg.get(cfg, []) if r["device"] in devices]
            for metric in (m for m in wanted if m in METRICS):
                paths += _single_figure(cfg_rows, metric, devices, styles, title, out_dir / f"{metric}{suffix}", mode, failed)
            if "combined" in wanted:
                paths += _combined_figure(cfg_rows, devices, styles, title, out_dir / f"combined{suffix}", mode, failed)
    return paths
