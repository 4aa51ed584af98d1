"""Smoke test of benchmarks/bench_train_step.py: a tiny config runs end to end and writes both result files."""
import json
from pathlib import Path

import pytest
import torch
from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_step.py"
TINY = ["--batch-size", "4", "--steps", "3", "--rounds", "2", "--warmup", "1", "--dim", "32", "--depth", "1",
        "--heads", "2", "--threads", "1", "--resolution-steps", "5"]


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT)


def test_tiny_run_writes_results(bench, tmp_path):
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    out = tmp_path / "overhead"
    assert bench.main([*TINY, "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det  # restored
    data = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    assert data["complete"]
    m, c, r = data["machine"], data["config"], data["results"]
    assert m["cpu_model"] and m["torch_threads"] == 1 and m["torch_version"] and m["lightning_version"]
    assert (c["batch_size"], c["dim"], c["depth"], c["steps"], c["rounds"], c["warmup_steps"]) == (4, 32, 1, 3, 2, 1)
    assert c["parameters"] > 0 and c["precision"] == "32-true" and c["gradient_clip_val"] == 1.0
    assert r["verdict"] in ("PASS", "FAIL") and (r["verdict"] == "PASS") == (r["ratio"] <= data["target"]["max_ratio"])
    for key in ("intervals_ms", "windows_ms", "epoch_s", "fit_s"):
        s = r["measures"][key]
        assert s["plain"]["median_ms"] > 0 and s["lightning"]["median_ms"] > 0 and s["ratio"] > 0
        assert len(s["per_round_ratio"]) == 2 and s["bootstrap_ci95"][0] <= s["bootstrap_ci95"][1]
    assert r["measures"]["intervals_ms"]["plain"]["runs"] == 2 * 3  # timed steps only, warm-up dropped
    eq = r["equivalence"]
    assert eq["param_groups_identical"] and eq["max_abs_loss_diff"] == 0  # same work, step for step
    assert eq["threads_plain"] == eq["threads_lightning"] == 1
    assert {"FiniteLossGuard", "LearningRateMonitor", "ModelCheckpoint"} <= set(data["lightning_setup"]["callbacks"])
    assert len(data["rounds"]) == 2 and data["rounds"][1]["first"] == "lightning"
    fc = r["fixed_costs"]["lightning"]
    assert fc["per_fit_ms"] > 0 and fc["trainer_build_ms"] > 0 and fc["outside_window_per_step_ms"] >= 0
    rz = r["resolution"]
    assert rz["config"]["steps"] == 5 and rz["measures"]["intervals_ms"]["plain"]["runs"] == 2 * 5
    assert rz["equivalence"]["max_abs_loss_diff"] == 0 and rz["metric_update_ms"]["headline_batch"] > 0
    base = r["measures"]["intervals_ms"]["plain"]["median_ms"]
    assert rz["projected_ratio"] == pytest.approx((base + rz["overhead_ms"]) / base)
    assert f"**{r['verdict']}**" in md and "| per step, start to start (headline)" in md
    assert "## Fixed costs" in md and "## Resolution" in md and "## Rounds" in md


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be a positive integer, got 0"),  # utils.checks' words, as everywhere
    (["--batch-size", "x"], "--batch-size must be a positive integer, got 'x'"),
    (["--dim", "30", "--heads", "4"], "--dim (30) must be divisible by --heads (4)"),
])
def test_bad_input_exits_2(bench, tmp_path, capsys, argv, message):
    try:
        rc = bench.main([*argv, "--out", str(tmp_path / "x")])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
