"""Smoke test of benchmarks/bench_attention.py: the quick config runs end to end and writes its tables."""
import json
from pathlib import Path

import pytest
from conftest import load_script

for _pkg in ("linformer", "performer_pytorch", "nystrom_attention"):
    pytest.importorskip(_pkg, reason=f"reference package {_pkg} not installed (pip install -e '.[bench]')")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attention.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT)


def test_quick_run_writes_tables(bench, tmp_path):
    threads = bench.torch.get_num_threads()
    try:
        rc = bench.main(["--quick", "--dim", "64", "--heads", "4", "--runs", "1", "--out", str(tmp_path)])
    finally:
        bench.torch.set_num_threads(threads)  # main() sets the thread count process-wide
    assert rc == 0
    md = (tmp_path / "attention_vs_reference.md").read_text()
    data = json.loads((tmp_path / "attention_vs_reference.json").read_text())
    assert data["complete"] and data["config"]["seq_len"] == 256
    assert data["machine"]["torch_threads"] >= 1 and data["machine"]["cpu_model"]
    assert len(data["pairs"]) == 12
    # where both sides compute the same function (weights copied in), the outputs agree to float rounding
    same = [r for r in data["pairs"] if r.get("status") == "ok" and "max_abs_diff" in r]
    assert all(r["max_abs_diff"] < 1e-5 for r in same), [(r["ours"], r["ref"], r["max_abs_diff"]) for r in same]
    exact = [r for r in data["pairs"] if r["ours"] in ("softmax", "torch_mha")]
    assert exact and all(r["status"] == "ok" for r in exact)
    assert all(r["time_ratio"] > 0 and r["ours_peak_mib"] > 0 for r in exact)
    assert data["scaling"]["rows"]
    assert "| softmax | minimal SDPA module" in md and "## Memory scaling" in md


def test_bad_flag_exits_2(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--seq-len", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--seq-len must be a positive integer" in capsys.readouterr().err
