"""plot_sweep on synthetic flat rows: every figure is written (PNG + PDF), non-"ok" rows are skipped,
and the speed-up helper computes t_softmax / t with propagated standard errors."""
import math

import pytest

from profiling.plots import FIGURES, mechanism_styles, plot_sweep, speedups, throughput_sem
from profiling.results import CSV_COLUMNS


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


def test_several_configs_get_their_own_figures(tmp_path):
    rows = [_row("softmax", "cpu", n, n / 10, 0.1, dtype=dt) for n in (64, 128) for dt in ("fp32", "bf16")]
    names = {p.name for p in plot_sweep(rows, tmp_path, figures=("time",))}
    assert names == {f"time_d64_h4_b1_{dt}_fwd.{ext}" for dt in ("fp32", "bf16") for ext in ("png", "pdf")}
