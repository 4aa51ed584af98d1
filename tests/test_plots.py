"""plot_sweep on synthetic flat rows: every figure is written (PNG + PDF), "ok" rows are drawn as lines, points over
the time budget or out of memory are marked at the panel's top edge (not dropped), the legend says what the error
bars are, tick labels do not run into each other, and the speed-up helper computes t_softmax / t with propagated
standard errors. The training runs' attention figure (models/tasks/base.py): one colour scale, labelled."""
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from models.tasks.base import attention_figure, attention_scale
from profiling.plots import (
    FIGURES,
    config_of,
    config_title,
    failed_rows,
    mechanism_styles,
    ok_rows,
    overlapping_tick_labels,
    plot_sweep,
    speedups,
    sweep_figure,
    throughput_sem,
)
from profiling.results import CSV_COLUMNS, read_csv_rows


def _row(attention, device, n, ms, sem, status="ok", **kw):
    r = {c: None for c in CSV_COLUMNS}
    r.update(attention=attention, device=device, device_name=f"{device} test device", seq_len=n, batch=1, dim=64, heads=4,
             dtype="fp32", mode="fwd", causal=False, status=status, median_ms=ms, sem_ms=sem,
             peak_mib=n / 100, analytic_gflop=n / 1e3, counted_gflop=n / 1e3 * (0.5 if attention == "performer" else 1.0),
             achieved_gflops=(n / 1e3) / (ms / 1e3) if ms else None)
    r.update(kw)
    return r


def synthetic_rows():
    rows = []
    for device, scale in (("cpu", 1.0), ("cuda", 0.05)):
        for mech, factor in (("softmax", 1.0), ("performer", 0.5), ("linformer", 0.25)):
            for n in (64, 128, 256):
                rows.append(_row(mech, device, n, scale * factor * n / 10, scale * factor * n / 200))
    rows.append(_row("linformer", "cpu", 512, None, None, status="oom", reason="out of memory"))
    rows.append(_row("naive", "cuda", 512, None, None, status="timeout", reason="over budget"))
    rows.append(_row("performer", "cuda", 512, None, None, status="unsupported", reason="no"))
    return rows


def test_plot_sweep_writes_every_figure(tmp_path):
    paths = plot_sweep(synthetic_rows(), tmp_path)
    expected = {tmp_path / f"{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")}
    assert set(paths) == expected
    for p in expected:
        assert p.exists() and p.stat().st_size > 1000, p


def test_non_ok_rows_are_skipped(tmp_path):
    assert plot_sweep([r for r in synthetic_rows() if r["status"] != "ok"], tmp_path) == []
    # a mechanism present only in failed rows gets no line, and plotting does not fail on it
    assert all(s["attention"] != "naive" for s in speedups(synthetic_rows()))


def test_speedups_ratio_of_medians_with_propagated_sem():
    rows = [_row("softmax", "cpu", 128, 10.0, 0.3), _row("performer", "cpu", 128, 4.0, 0.2),
            _row("performer", "cpu", 256, 4.0, 0.2),  # no softmax at 256: left out
            _row("performer", "cuda", 128, 1.0, 0.1),  # no softmax on cuda: left out
            _row("softmax", "cpu", 128, 1.0, 0.1, dim=128),  # another config: not a baseline for dim 64
            _row("softmax", "cpu", 512, None, None, status="oom")]
    out = {(s["attention"], s["seq_len"], s["config"][1]): s for s in speedups(rows)}
    assert set(out) == {("softmax", 128, 64), ("performer", 128, 64), ("softmax", 128, 128)}
    s = out[("performer", 128, 64)]
    assert s["speedup"] == pytest.approx(2.5)
    assert s["speedup_sem"] == pytest.approx(2.5 * math.hypot(0.3 / 10.0, 0.2 / 4.0))
    assert out[("softmax", 128, 64)]["speedup"] == pytest.approx(1.0)
    assert throughput_sem(_row("softmax", "cpu", 128, 10.0, 0.5)) == pytest.approx((0.128 / 0.01) * 0.05)


def test_mechanism_styles_are_fixed():
    a, b = mechanism_styles(["softmax"]), mechanism_styles(["performer", "softmax", "linformer"])
    assert a["softmax"] == b["softmax"]  # the mapping does not depend on which mechanisms a sweep holds
    assert len({b[n] for n in b}) == len(b)
    registry = mechanism_styles([])
    assert len({color for color, _ in registry.values()}) == len(registry)  # a colour of its own for each registered one


def test_several_configs_get_their_own_figures(tmp_path):
    rows = [_row("softmax", "cpu", n, n / 10, 0.1, dtype=dt) for n in (64, 128) for dt in ("fp32", "bf16")]
    names = {p.name for p in plot_sweep(rows, tmp_path, figures=("time",))}
    assert names == {f"time_d64_h4_b1_{dt}_fwd.{ext}" for dt in ("fp32", "bf16") for ext in ("png", "pdf")}


def _sweep_figure(rows, metric="time", devices=("cpu", "cuda")):
    ok = ok_rows(rows)
    return sweep_figure(ok, metric, list(devices), mechanism_styles(r["attention"] for r in rows), config_title(config_of(ok[0])),
                        failed=failed_rows(rows))


def test_points_over_budget_or_out_of_memory_are_marked_not_dropped():
    """linformer's oom at n = 512 on the CPU and naive's timeout at 512 on CUDA are drawn at the panel's top edge
    with their own markers and legend entries; the unsupported point is not (it was never tried)."""
    for metric in ("time", "memory", "speedup"):
        fig = _sweep_figure(synthetic_rows(), metric)
        cpu, cuda = fig.axes[:2]
        marks = {ax: {ln.get_gid(): ln for ln in ax.lines if (ln.get_gid() or "").count(":") == 2} for ax in (cpu, cuda)}
        assert set(marks[cpu]) == {"oom:linformer:512"} and set(marks[cuda]) == {"timeout:naive:512"}
        oom, timeout = marks[cpu]["oom:linformer:512"], marks[cuda]["timeout:naive:512"]
        assert (oom.get_marker(), timeout.get_marker()) == ("+", "x")
        assert list(oom.get_xdata()) == [512] and oom.get_ydata()[0] > 0.9  # at n = 512, the top edge (axes fraction)
        assert oom.get_color() == mechanism_styles([])["linformer"][0]  # in the mechanism's colour
        assert 512 in cpu.get_xticks()  # the failed length is on the axis though no point there finished
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "over the time budget (at the top edge)" in legend and "out of memory (at the top edge)" in legend
        assert "naive" in legend  # named though it has no finished point
        if metric != "memory":
            assert "error bars: ±1 s.e.m. over the timed runs" in legend
        plt.close(fig)


def test_committed_sweep_rows_mark_naive_over_budget(tmp_path):
    """The committed CPU sweep: naive at n = 10,000 ran over the 120 s budget and is marked in every figure."""
    rows = read_csv_rows(Path(__file__).resolve().parents[1] / "benchmarks/results/sweep-cpu-default/results.csv")
    for metric in ("time", "memory", "flops", "throughput", "speedup"):
        fig = _sweep_figure(rows, metric, ("cpu",))
        assert [ln.get_gid() for ln in fig.axes[0].lines if (ln.get_gid() or "").startswith("timeout:")] == ["timeout:naive:10000"]
        assert fig.axes[0].get_xlabel() == "sequence length $n$" and fig.axes[0].get_ylabel()
        assert overlapping_tick_labels(fig) == [], metric
        plt.close(fig)


def test_tick_labels_do_not_run_into_each_other():

    for metric in ("time", "memory", "flops", "throughput", "speedup"):
        fig = _sweep_figure(synthetic_rows(), metric)
        assert overlapping_tick_labels(fig) == [], metric
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(3, 3))  # the check itself sees a clash: labels forced onto neighbouring values
    ax.set_xticks([1.0, 1.001, 1.002])
    ax.set_xticklabels(["0.0250000", "0.0275000", "0.0300000"])
    assert overlapping_tick_labels(fig)
    plt.close(fig)


def test_attention_scale_shared_and_centred_where_weights_are_negative():
    probs = [np.full((4, 4), 0.25), np.eye(4)]
    assert attention_scale(probs) == ("viridis", 0.0, 1.0, "attention weight")  # 0 to the largest over all maps
    cmap, lo, hi, label = attention_scale([np.eye(4), -0.5 * np.eye(4) * 3])
    assert (lo, hi) == (-1.5, 1.5) and cmap == "RdBu_r" and "signed" in label  # centred on 0, the largest magnitude


def test_attention_figure_is_a_labelled_rgb_image():
    maps = [torch.softmax(torch.randn(2, 3, 8, 8), -1) for _ in range(2)]  # 2 layers, 3 heads, batch 2
    image = attention_figure(maps, title="softmax")
    assert image.shape[0] == 3 and min(image.shape[1:]) >= 200 and 0 <= float(image.min()) and float(image.max()) <= 1
    figs_before = plt.get_fignums()
    attention_figure(maps)
    assert plt.get_fignums() == figs_before  # closed, not left open in a long run
