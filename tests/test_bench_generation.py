"""Smoke test of benchmarks/bench_generation.py: the quick config runs end to end for a KV cache, a window cache,
a constant state and a mechanism without decoding, and writes its tables."""
import json
from pathlib import Path

import pytest
from conftest import load_script

from models.attention import get_attention, list_attentions

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generation.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT)


# a causal mechanism without decoding, timed by recomputation alone (none once every one decodes)
NO_CACHE = [n for n in list_attentions() if get_attention(n).supports_causal and not get_attention(n).supports_decoding][:1]


def test_quick_run_writes_tables(bench, tmp_path):
    threads = bench.torch.get_num_threads()
    names = ["softmax", "local", "linear"] + NO_CACHE
    try:
        rc = bench.main(["--quick", "--threads", "1", "--mechanisms", ",".join(names), "--out", str(tmp_path / "gen")])
    finally:
        bench.torch.set_num_threads(threads)  # time_interleaved restores it, but a failure must not leak
    assert rc == 0
    data = json.loads((tmp_path / "gen.json").read_text())
    md = (tmp_path / "gen.md").read_text()
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == names
    assert data["machine"]["cpu_model"] and data["machine"]["finished_utc"]
    for name in ("softmax", "local", "linear"):
        r = rows[name]
        assert r["decoding"] and r["same_tokens"]  # greedy tokens identical with and without the cache
        assert r["cached_tokens_per_s"] > 0 and r["speedup"] > 0
        assert r["cached_peak_bytes_per_token"] > 0 and r["recomputed_peak_bytes_per_token"] > 0
    # a KV cache grows with the positions, a constant state does not
    assert rows["softmax"]["state_bytes_at_end"] > rows["softmax"]["state_bytes_after_prompt"] > 0
    assert rows["linear"]["state_bytes_at_end"] == rows["linear"]["state_bytes_after_prompt"] > 0
    assert "| softmax | kv-cache |" in md
    for name in NO_CACHE:
        assert not rows[name]["decoding"] and "cached" not in rows[name]
        assert f"| {name} | none |" in md


def test_bad_flags_exit_2(bench, tmp_path, capsys):
    for flags, says in ((["--new-tokens", "0"], "--new-tokens must be a positive integer"),
                        (["--mechanisms", "linformer"], "--mechanisms must be a comma-separated list")):
        with pytest.raises(SystemExit) as exc:
            bench.main(flags + ["--out", str(tmp_path / "x")])
        assert exc.value.code == 2
        assert says in capsys.readouterr().err
