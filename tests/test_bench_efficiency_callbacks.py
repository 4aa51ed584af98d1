"""Smoke test of benchmarks/bench_efficiency_callbacks.py: a tiny config runs end to end (both sides real Lightning
fits, with and without EfficiencyMonitor) and writes both result files; bad input exits 2 and writes nothing."""
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script
from test_bench_train_step import TINY  # the same tiny config: batch 4, 3 steps, 2 rounds, dim 32, 1 thread, ...

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_efficiency_callbacks.py"


@pytest.fixture(scope="module")
def script():
    """The benchmark, imported by path (as the other benchmark smoke tests do), with its folder first on
    sys.path as when run as `python benchmarks/bench_efficiency_callbacks.py` (it imports bench_train_step)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield load_script(SCRIPT)
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.mark.usefixtures("training_isolated")
def test_tiny_run_writes_results(script, tmp_path, capsys):
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    out = tmp_path / "efficiency"
    assert script.main([*TINY, "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det  # restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["efficiency.json", "efficiency.md"]  # no .tmp left
    data = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    stdout = capsys.readouterr().out
    assert data["complete"] and "efficiency (" not in stdout  # the callback's table is not printed into the progress
    m, c, r = data["machine"], data["config"], data["results"]
    assert m["cpu_model"] and m["torch_threads"] == 1 and m["torch_version"] and m["lightning_version"] and m["finished_utc"]
    assert (c["batch_size"], c["dim"], c["depth"], c["steps"], c["rounds"], c["warmup_steps"]) == (4, 32, 1, 3, 2, 1)
    assert c["parameters"] > 0 and c["precision"] == "32-true"

    # verdict, headline and its consistency
    target = data["target"]["max_ratio"]
    assert target == 1.02 and r["verdict"] in ("PASS", "FAIL")
    rz = r["resolution"]  # with a resolution phase, the verdict rests on the resolved cost (the headline must reach it)
    resolved_ok = rz["projected_ratio_ci95"][1] <= target and r["ratio_ci95"][0] <= target
    assert (r["verdict"] == "PASS") == resolved_ok and r["verdict_basis"].startswith("the resolved cost")
    h = r["measures"]["intervals_ms"]
    assert r["ratio"] == h["ratio"] == pytest.approx(h["on"]["median_ms"] / h["off"]["median_ms"])
    assert h["off"]["runs"] == h["on"]["runs"] == 2 * 3  # timed steps only, warm-up dropped
    for key, s in r["measures"].items():
        assert s["off"]["median_ms"] > 0 and s["on"]["median_ms"] > 0 and s["ratio"] > 0, key
        assert len(s["per_round_ratio"]) == 2 and s["bootstrap_ci95"][0] <= s["bootstrap_ci95"][1], key
    assert set(r["measures"]) == {"intervals_ms", "windows_ms", "mean_step_ms", "first_step_ms", "epoch_end_ms", "fit_extra_ms"}
    oo = r["one_off"]
    # only the arithmetic: whether the first `on` step (under the FLOP counter) is slower is the benchmark's
    # finding, and two single steps on a loaded machine can come out either way
    assert oo["extra_ms"] == pytest.approx(oo["on_ms"] - oo["off_ms"]) and oo["on_ms"] > 0 and oo["off_ms"] > 0

    # the two sides: really with and without the callback, same work
    cb = r["callbacks"]
    assert "EfficiencyMonitor" in cb["on"] and "EfficiencyMonitor" not in cb["off"] and cb["checked_every_round"]
    assert set(cb["on"]) - set(cb["off"]) == {"EfficiencyMonitor"}
    assert len(data["rounds"]) == 2 and [rd["first"] for rd in data["rounds"]] == ["off", "on"]
    for rd in data["rounds"]:
        for side in ("off", "on"):
            assert len(rd[side]["intervals_ms"]) == len(rd[side]["windows_ms"]) == 1 + 3
            assert rd[side]["global_step"] == 1 + 3 and rd[side]["threads"] == 1
        assert ("EfficiencyMonitor" in rd["on"]["callbacks"]) and ("EfficiencyMonitor" not in rd["off"]["callbacks"])
        assert rd["on"]["efficiency"]["flop_shapes_counted"] == 1 and "efficiency" not in rd["off"]
    assert r["equivalence"]["max_abs_loss_diff"] == 0 and r["equivalence"]["steps_compared"] == 2 * 4

    # what the `on` side's efficiency.json said (last round)
    e = r["efficiency_json"]
    assert e["latency_ms_p50"] > 0 and e["peak_mem_mib"] > 0 and e["flops_per_sample_fwd_bwd"] > e["flops_per_sample_fwd"] > 0
    assert e["steps"] == 4 and e["batch_size"] == 4 and e["flop_shapes_counted"] == 1
    assert e["latency_ms_p50"] <= r["efficiency_window_ms"]  # the callback's span lies inside this script's window

    # resolution phase
    rz = r["resolution"]
    assert rz["config"]["steps"] == 5 and rz["config"]["dim"] == 32 and rz["measures"]["intervals_ms"]["off"]["runs"] == 2 * 5
    assert len(data["resolution_rounds"]) == 2 and rz["equivalence"]["max_abs_loss_diff"] == 0
    base = h["off"]["median_ms"]
    assert rz["overhead_ms"] == pytest.approx(rz["measures"]["intervals_ms"]["difference_ms"])
    assert rz["projected_ratio"] == pytest.approx((base + rz["overhead_ms"]) / base)
    lo, hi = rz["projected_ratio_ci95"]
    assert lo <= hi and (lo, hi) == pytest.approx([(base + v) / base for v in rz["overhead_ci95_ms"]])

    assert f"**{r['verdict']}**" in md and "| per step, start to start (headline)" in md and "One-off cost" in md
    assert "## Resolution" in md and "## Rounds" in md and "## The two sides" in md and "efficiency.json" in md


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be a positive integer"),  # utils.checks' words, as everywhere
    (["--warmup", "0"], "--warmup must be a positive integer"),  # the headline must be the steady state
    (["--resolution-steps", "-1"], "--resolution-steps must be a non-negative integer"),
    (["--heads", "3"], "--dim (256) must be divisible by --heads (3)"),
])
def test_bad_input_is_one_sentence_and_exit_2(script, tmp_path, capsys, argv, message):
    try:
        code = script.main(argv + ["--out", str(tmp_path / "overhead")])
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert (code, len(lines)) == (2, 1)
    assert lines[0].startswith(f"{script.PROG}: error: ") and message in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written
