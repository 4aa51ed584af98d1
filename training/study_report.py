"""The comparison study's report, from study.json (training/study.py): one row per mechanism, the
trade-off plots with the Pareto front, the attention maps side by side, report.md tying them together.

    from training.study_report import write_report
    write_report(json.loads(Path("lightning_logs/study-vit/study.json").read_text()), Path("lightning_logs/study-vit"))

Files: table.md, table.csv, tradeoff.png/.pdf (metric vs latency p50, vs a step's tensor memory, vs FLOPs per sample;
error bars +-1 standard deviation over seeds; ringed: the Pareto front within the error bars, see `pareto`),
attention_maps.png/.pdf (same validation input, every mechanism that has attention weights: a row per mechanism, a
column per layer, heads averaged, one colour scale with a colour bar; the mechanisms without weights named in a
note), report.md. The headline metric is the test score of each run's best checkpoint (the best validation
score when a run was not tested); with several seeds, mean +- standard deviation over seeds.

The report can be drawn again from a committed study.json without the checkpoints (`write_report(study, out_dir,
maps=False)`): everything but the attention maps, which are kept as they were drawn.
"""
from __future__ import annotations

import csv
import io
import math
import os
import statistics
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from matplotlib.lines import Line2D

from models.tasks.base import attention_scale
from profiling.plots import STYLE, format_linear_axis, format_log_axis, mechanism_styles, plt
from training.runner import prepare
from training.tasks import get_task
from utils.io import write_text

COST_AXES = [  # (key in a row, axis label); lower is better on every axis
    ("latency_ms_p50", "training step latency p50 (ms)"),
    ("step_alloc_peak_mib", "tensor memory of a training step (MiB)"),
    ("gflop_per_sample", "GFLOP per sample (fwd + bwd)"),
]


def headline_metric(study: Dict[str, Any]) -> str:
    return "test/" + study["monitor"].split("/", 1)[1]


def run_metric(rec: Dict[str, Any], metric: str) -> Optional[float]:
    res = rec.get("results") or {}
    value = (res.get("test") or {}).get(metric)
    return float(value) if value is not None else (float(res["best_val"]) if res.get("best_val") is not None else None)


def _mean_std(xs: List[float]) -> Tuple[Optional[float], Optional[float]]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def rows(study: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per mechanism that was planned: aggregated over its finished seeds."""
    metric = headline_metric(study)
    by_name: Dict[str, List[Dict[str, Any]]] = {}
    for rec in study["runs"]:
        by_name.setdefault(rec["attention"], []).append(rec)
    out = []
    for name, recs in by_name.items():
        ok = [r for r in recs if r["status"] == "finished" and r.get("results")]
        row: Dict[str, Any] = {"attention": name, "seeds": len(ok), "failed": sum(r["status"] == "failed" for r in recs),
                               "status": "finished" if ok else recs[0]["status"],
                               "error": next((r.get("error") for r in recs if r.get("error")), "")}
        if ok:
            effs = [r.get("efficiency") or {} for r in ok]
            row["metric"], row["metric_std"] = _mean_std([run_metric(r, metric) for r in ok])
            row["best_val"], _ = _mean_std([r["results"].get("best_val") for r in ok])
            for key in ("latency_ms_p50", "step_alloc_peak_mib", "peak_mem_mib", "samples_per_s", "wall_time_s"):
                row[key], row[f"{key}_std"] = _mean_std([e.get(key) for e in effs])  # efficiency.json's names
            fwd_bwd = [e.get("flops_per_sample_fwd_bwd") for e in effs]
            row["gflop_per_sample"], _ = _mean_std([f / 1e9 if f else None for f in fwd_bwd])
            row["gflop_per_sample_std"] = None
            unit = effs[0].get("token_unit")
            row["token_unit"] = unit
            row["tokens_per_s"], _ = _mean_std([e.get(f"{unit}_per_s") for e in effs]) if unit else (None, None)
            row["parameters"] = ok[0]["results"].get("parameters")
            row["fit_seconds"], _ = _mean_std([r["results"].get("fit_seconds") for r in ok])
            row["data_source"] = ok[0]["results"].get("data_source")
            row["machine"] = effs[0].get("device_name") or ""
            row["attention_options"] = ok[0].get("attention_options") or {}
        out.append(row)
    return out


PARETO_RULE = ("ringed: the Pareto front within the error bars (a mechanism is off it only where another is cheaper "
               "and better, each by more than the two ±1 std bars together)")


def pareto(points: Sequence[Tuple], maximize: bool) -> List[str]:
    """Names of the points on the Pareto front within their error bars. A point is (name, cost, metric) or
    (name, cost, metric, cost_std, metric_std) (a std None or absent counts as 0). Another point q beats p on an
    axis when it is better by more than the two stds added (gap > s_p + s_q), and is no worse on it when it beats
    it or, with no spread on that axis (s_p + s_q = 0), is better or equal. p is off the front only where some q
    is no worse on both axes and beats it on one: where error bars overlap on an axis, neither point beats the
    other there, so the front holds every mechanism the data cannot rank. Without stds this is the usual front
    (lower cost, better metric; ties on one axis need a strict gain on the other)."""
    def full(p: Tuple) -> Tuple[str, float, float, float, float]:
        name, c, m, *std = p
        sc, sm = (list(std) + [None, None])[:2]
        return name, float(c), float(m), float(sc or 0.0), float(sm or 0.0)

    def no_worse(gap: float, err: float) -> bool:
        return gap > err or (err == 0 and gap >= 0)

    pts = [full(p) for p in points]
    front = []
    for name, c, m, sc, sm in pts:
        dominated = False
        for n2, c2, m2, sc2, sm2 in pts:
            if n2 == name:
                continue
            gap_c, err_c = c - c2, sc + sc2
            gap_m, err_m = (m2 - m if maximize else m - m2), sm + sm2
            if no_worse(gap_c, err_c) and no_worse(gap_m, err_m) and (gap_c > err_c or gap_m > err_m):
                dominated = True
                break
        if not dominated:
            front.append(name)
    return front


def cost_points(done: Sequence[Dict[str, Any]], key: str) -> List[Tuple]:
    """(name, cost, metric, cost std, metric std) of the finished rows that have this cost."""
    return [(r["attention"], r[key], r["metric"], r.get(f"{key}_std"), r.get("metric_std")) for r in done if r.get(key)]


def seeds_phrase(done: Sequence[Dict[str, Any]]) -> str:
    """What the error bars are: "±1 std over 3 seeds" (or "2-3 seeds" when mechanisms differ)."""
    counts = sorted({int(r.get("seeds") or 0) for r in done})
    if not counts or counts[-1] < 2:
        return "no error bars: one seed per mechanism"
    span = str(counts[-1]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"error bars: ±1 std over {span} seeds"


# ------------------------------------------------------------------ table
COLUMNS = [  # (key, header, format)
    ("attention", "attention", "s"), ("metric", "{metric}", ".4g"), ("best_val", "best {monitor}", ".4g"),
    ("parameters", "params", ","), ("gflop_per_sample", "GFLOP / sample (fwd+bwd)", ".4g"),
    ("latency_ms_p50", "latency p50 (ms)", ".1f"), ("step_alloc_peak_mib", "step memory (MiB)", ",.1f"),
    ("samples_per_s", "samples/s", ",.1f"), ("tokens_per_s", "{unit}/s", ",.0f"), ("fit_seconds", "training (s)", ",.0f"),
    ("seeds", "seeds", "d"), ("data_source", "data", "s"), ("machine", "machine", "s"),
]


def _cell(row: Dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None or v == "":
        return "–"
    text = format(v, fmt) if fmt != "s" else str(v)
    std = row.get(f"{key}_std")
    return f"{text} ± {format(std, fmt)}" if std is not None and fmt != "s" and fmt != "d" else text


def _headers(study: Dict[str, Any], table_rows: List[Dict[str, Any]]) -> List[str]:
    unit = next((r.get("token_unit") for r in table_rows if r.get("token_unit")), None) or "tokens"
    return [h.format(metric=headline_metric(study), monitor=study["monitor"], unit=unit) for _, h, _ in COLUMNS]


def table_markdown(study: Dict[str, Any], table_rows: List[Dict[str, Any]]) -> str:
    heads = _headers(study, table_rows)
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" if f == "s" else "---:" for _, _, f in COLUMNS) + "|"]
    for r in sorted(table_rows, key=lambda r: (r["status"] != "finished", r["attention"])):
        if r["status"] != "finished":
            lines.append(f"| {r['attention']} | {r['status']}: {r.get('error') or ''} |" + " |" * (len(COLUMNS) - 2))
            continue
        lines.append("| " + " | ".join(_cell(r, k, f) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines)


def table_csv(study: Dict[str, Any], table_rows: List[Dict[str, Any]]) -> str:
    keys = ["attention", "status", "error", "metric", "metric_std", "best_val", "parameters", "gflop_per_sample",
            "latency_ms_p50", "latency_ms_p50_std", "step_alloc_peak_mib", "step_alloc_peak_mib_std", "peak_mem_mib", "samples_per_s",
            "samples_per_s_std", "tokens_per_s", "token_unit", "fit_seconds", "seeds", "failed", "data_source", "machine"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["metric_name", *keys], extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in table_rows:
        w.writerow({"metric_name": headline_metric(study), **{k: r.get(k) for k in keys}})
    return buf.getvalue()


# ------------------------------------------------------------------ plots
def save_figure(fig, out_dir: Path, stem: str) -> List[Path]:
    """PNG and PDF of a figure, then closed."""
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths


def tradeoff_figure(study: Dict[str, Any], table_rows: List[Dict[str, Any]]):
    """The trade-off figure (None without a finished row): a panel per cost axis, each mechanism's mean with
    +-1 std bars over its seeds, the Pareto front within the error bars ringed (rings carry the gid
    "pareto:<name>"), the bars and the ring rule said in the legend and the caption."""
    done = [r for r in table_rows if r["status"] == "finished" and r.get("metric") is not None]
    if not done:
        return None
    maximize = study["mode"] == "max"
    styles = mechanism_styles([r["attention"] for r in done])
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(COST_AXES), figsize=(3.4 * len(COST_AXES) + 1.6, 3.4), constrained_layout=True)
        for ax, (key, label) in zip(axes, COST_AXES):
            pts = cost_points(done, key)
            front = set(pareto(pts, maximize))
            for r in done:
                if not r.get(key):
                    continue
                color, marker = styles[r["attention"]]
                ax.errorbar(r[key], r["metric"], xerr=r.get(f"{key}_std"), yerr=r.get("metric_std"), fmt=marker,
                            color=color, label=r["attention"], markersize=6, elinewidth=0.9, zorder=3)
                if r["attention"] in front:
                    ring = ax.scatter([r[key]], [r["metric"]], s=170, facecolors="none", edgecolors="black", linewidths=1.0, zorder=4)
                    ring.set_gid(f"pareto:{r['attention']}")
            xs = [c for _, c, *_ in pts]
            if xs and max(xs) / max(min(xs), 1e-12) > 5:  # log only where the costs span orders of magnitude
                format_log_axis(ax, "x")
            else:
                format_linear_axis(ax, "x")
            format_linear_axis(ax, "y")
            ax.set_xlabel(label)
            ax.set_ylabel(headline_metric(study))
        handles, labels = axes[0].get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        note = seeds_phrase(done)
        extra = [Line2D([], [], color="0.35", marker="|", markersize=10, linestyle="none", label=note.replace("error bars: ", "error bars:\n")),
                 Line2D([], [], color="black", marker="o", markersize=10, markerfacecolor="none", linestyle="none",
                        label="Pareto front within\nthe error bars")]
        fig.legend([*uniq.values(), *extra], [*uniq.keys(), *(h.get_label() for h in extra)], loc="outside right center", frameon=False)
        fig.suptitle(f"{study['task']}: {headline_metric(study)} ({'higher' if maximize else 'lower'} is better) against cost; "
                     f"{note}\n{PARETO_RULE}", fontsize=9)
    return fig


def plot_tradeoffs(study: Dict[str, Any], table_rows: List[Dict[str, Any]], out_dir: Path) -> List[Path]:
    fig = tradeoff_figure(study, table_rows)
    if fig is None:
        return []
    with plt.rc_context(STYLE):
        return save_figure(fig, out_dir, "tradeoff")


def attention_maps(study: Dict[str, Any], out_dir: Path, max_layers: int = 4) -> List[Path]:
    """Head-averaged attention of one validation input, every layer, for each mechanism that has weights
    (its first finished seed's best checkpoint). The input is the first validation sample of the data the
    study trained on."""
    firsts: Dict[str, Dict[str, Any]] = {}
    for rec in study["runs"]:
        if rec["status"] == "finished" and rec.get("results") and rec["attention"] not in firsts:
            if (rec["results"].get("best_checkpoint") or "") and Path(rec["results"]["best_checkpoint"]).is_file():
                firsts[rec["attention"]] = rec
    if not firsts:
        return []
    task = get_task(study["task"])
    maps: Dict[str, List[torch.Tensor]] = {}
    without: List[str] = []
    batch = None
    for name, rec in firsts.items():
        cfg = dict(rec["results"]["config"])
        _, dm, net = prepare(cfg)
        if not getattr(net, "has_attention_maps", False):
            without.append(name)
            continue
        state = torch.load(rec["results"]["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
        net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
        net.eval()
        module = task.build_module(cfg, dm, net)
        if batch is None:
            batch = next(iter(dm.val_dataloader()))
        with torch.no_grad():
            layer_maps = net.attention_maps(*module.map_inputs(batch))
        maps[name] = [m[0].float().mean(0).cpu() for m in layer_maps[:max_layers]]  # (n, n) per layer
    if not maps:
        return []
    fig = attention_maps_figure(study["task"], maps, without)
    with plt.rc_context(STYLE):
        return save_figure(fig, out_dir, "attention_maps")


def attention_maps_figure(task: str, maps: Dict[str, List[torch.Tensor]], without: Sequence[str] = ()):
    """A row per mechanism (head-averaged (n, n) maps, a column per layer) on one colour scale for the whole
    figure (models.tasks.base.attention_scale: 0 to the largest weight, or centred on 0 where any is negative)
    with one colour bar, query / key position axes, and a note naming the mechanisms in `without` (no weights)."""
    layers = max(len(v) for v in maps.values())
    cmap, vmin, vmax, label = attention_scale([m.numpy() for per_layer in maps.values() for m in per_layer])
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(maps), layers, figsize=(2.0 * layers + 1.6, 2.0 * len(maps) + 0.9), squeeze=False,
                                 constrained_layout=True)
        im = None
        for i, (name, per_layer) in enumerate(sorted(maps.items())):
            for j in range(layers):
                ax = axes[i][j]
                ax.grid(False)
                ax.tick_params(labelsize=6.5)
                if j >= len(per_layer):
                    ax.axis("off")
                    continue
                im = ax.imshow(per_layer[j].numpy(), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                ax.set_title(f"{name}, layer {j + 1}", fontsize=8.5)
                if j == 0:
                    ax.set_ylabel("query position", fontsize=8)
                if i == len(maps) - 1:
                    ax.set_xlabel("key position", fontsize=8)
        fig.colorbar(im, ax=axes, shrink=0.8, label=label)
        width = max(30, int(fig.get_figwidth() * 13))  # characters of 8-9 pt text across the figure
        fig.suptitle(textwrap.fill(f"{task}: one validation input through each mechanism, heads averaged, one colour scale",
                                   width), fontsize=9)
        if without:
            fig.supxlabel(textwrap.fill(f"Not shown, no attention weights to draw: {', '.join(sorted(without))} (the "
                                        "mechanism never forms the n x n matrix of weights).", width), fontsize=8, style="italic")
    return fig


# ------------------------------------------------------------------ report
BUDGET_KEYS = ("data_source", "max_epochs", "max_steps", "limit_train_batches", "limit_val_batches", "batch_size", "lr",
               "dim", "depth", "heads", "seq_len", "precision", "accelerator", "devices", "seed")


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def write_report(study: Dict[str, Any], out_dir: Path, maps: bool = True) -> Path:
    """Write table.md, table.csv, the plots and report.md into out_dir; returns report.md's path. With
    maps=False the attention maps are not drawn (they need the runs' checkpoints): attention_maps.png / .pdf
    already in out_dir are kept and linked, so a report re-drawn from a committed study.json keeps them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table_rows = rows(study)
    md_table = table_markdown(study, table_rows)
    write_text(out_dir / "table.md", md_table + "\n")
    write_text(out_dir / "table.csv", table_csv(study, table_rows))
    plots = plot_tradeoffs(study, table_rows, out_dir)
    draw_maps = maps
    if not draw_maps:
        kept = [out_dir / f"attention_maps.{ext}" for ext in ("png", "pdf")]
        maps = kept if all(p.is_file() for p in kept) else []
        maps_note = "" if maps else "Attention maps not drawn (the report was re-drawn without the runs' checkpoints)."
    else:
        try:
            maps = attention_maps(study, out_dir)
            maps_note = "" if maps else "No finished mechanism has attention weights to show."
        except Exception as e:  # noqa: BLE001 - the table and plots are already written
            maps, maps_note = [], f"Attention maps could not be drawn ({type(e).__name__}: {e})."
    done = [r for r in table_rows if r["status"] == "finished" and r.get("metric") is not None]
    maximize = study["mode"] == "max"
    lines = [f"# Comparison study: `{study['task']}`", "",
             f"Command: `{study['command']}`", "",
             f"Machine: {next((r['machine'] for r in done if r.get('machine')), study.get('machine', {}).get('cpu', '?'))}. "
             f"Seeds: {', '.join(map(str, study['seeds']))}.", "",
             "Budget and recipe (the same for every mechanism): "
             + ", ".join(f"{k} {study['recipe'].get(k)}" for k in BUDGET_KEYS if k in study["recipe"] and k != "seed") + ".",
             "", f"Headline metric: `{headline_metric(study)}` of each run's best checkpoint "
             f"({'higher' if maximize else 'lower'} is better); costs from each run's efficiency.json "
             f"(latency p50 of a training step; step memory: the tensor memory a training step allocates above "
             f"its start, by the allocator, as profile.py measures it; FLOPs per sample of forward + backward).", "",
             "## Results", "", md_table, ""]
    if max((int(r.get("seeds") or 0) for r in done), default=0) < 2:
        lines.append("Pareto front (one seed per mechanism, so no error bars: the usual front, lower cost and better "
                     "metric; a second seed may well reorder it).")
    else:
        lines.append(f"Pareto front within the error bars ({seeds_phrase(done)}): a mechanism is off it only where another "
                     f"is cheaper and better, each by more than the two ±1 std bars together; where bars overlap the data "
                     f"do not rank the two, and both stay on the front.")
    lines.append("")
    for key, label in COST_AXES:
        pts = cost_points(done, key)
        front = pareto(pts, maximize)
        off = sorted({n for n, *_ in pts} - set(front))
        lines.append(f"- {headline_metric(study)} against {label}: on the front {', '.join(sorted(front)) or '–'}"
                     + (f"; off it {', '.join(off)}" if off else "; every mechanism (none is beaten beyond the error bars)"))
    lines.append("")
    if plots:
        lines += ["## Trade-offs", "", f"![trade-offs]({_rel(plots[0], out_dir)}) ([PDF]({_rel(plots[1], out_dir)}))", ""]
    lines += ["## Attention maps", ""]
    lines += ["The same validation input through each mechanism's best checkpoint: a row per mechanism, a column per "
              "layer, heads averaged (rows of a matrix: queries; columns: keys).", "",
              f"![attention maps]({_rel(maps[0], out_dir)}) ([PDF]({_rel(maps[1], out_dir)}))", ""] if maps else [maps_note, ""]
    if study.get("sweep_dir"):
        sweep = Path(study["sweep_dir"])
        lines += ["## Sequence-length sweep at the same width", "",
                  f"profile.py's sweep of the same mechanisms at the model's width and heads (forward + backward, batch 1), "
                  f"around the task's sequence length: [summary]({_rel(sweep / 'summary.md', out_dir)}).", ""]
        for fig in ("time", "memory", "flops"):
            png = sorted(sweep.glob(f"{fig}*.png"))
            if png:
                lines.append(f"![{fig}]({_rel(png[0], out_dir)})")
        lines.append("")
    skipped, failed = study.get("skipped") or [], [r for r in study["runs"] if r["status"] == "failed"]
    if skipped or failed:
        lines += ["## Not in the comparison", ""]
        lines += [f"- {s['attention']}: skipped, {s['reason']}" for s in skipped]
        lines += [f"- {r['attention']} seed {r['seed']}: failed, {r.get('error')}" for r in failed]
        lines.append("")
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path
