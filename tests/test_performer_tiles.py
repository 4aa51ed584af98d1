"""Performer's fused, row-tiled non-causal FAVOR+ (models/attention/performer.py: favor_attention) against the
plain two-step computation it replaces, written here from its parts: all features at once (favor_features, one
shift over all real keys) and functional.kernel_attention. Same maths, so only float rounding may differ: outputs
within 1e-6 absolute (they are O(1)), gradients within 1e-5 relative. Tiles of 1, 7 and all rows; padding left,
middle and right, a fully padded element, and keys whose logits grow from tile to tile (the running shift rises,
so earlier tiles' sums are rescaled). Plus a smoke test of benchmarks/bench_kernel_throughput.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script

from models.attention import build_attention
from models.attention.functional import kernel_attention, merge_heads
from models.attention.performer import favor_attention, favor_features, gaussian_orthogonal_features

B, H, N, E, M = 3, 2, 23, 8, 16


def plain(q, k, v, w, mask):
    qf, kf = favor_features(q, k, w, mask)
    return merge_heads(kernel_attention(qf, kf, v, causal=False, eps=1e-30))


def case(growing=False):
    q, k, v = (torch.randn(B, H, N, E, dtype=torch.float64).float() for _ in range(3))
    if growing:  # later keys larger: each tile's maximum logit exceeds the last one's
        k = k * torch.linspace(0.2, 3.0, N)[:, None]
    w = gaussian_orthogonal_features(M, E) * E**-0.25
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, :5] = False
    mask[0, 11:14] = False
    mask[1, -6:] = False
    mask[2] = False  # no real key at all: finite, zero features
    return q, k, v, w, mask


@pytest.mark.parametrize("growing", [False, True], ids=["plain", "growing-keys"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("rows", [1, 7, N])
def test_tiles_equal_the_plain_computation(rows, masked, growing):
    q, k, v, w, mask = case(growing)
    mask = mask if masked else None
    y = favor_attention(q, k, v, w, mask, rows=rows)
    ref = plain(q, k, v, w, mask)
    assert y.shape == (B, N, H * E) and torch.isfinite(y).all()
    real = mask if masked else torch.ones(B, N, dtype=torch.bool)  # element 2 fully padded: finite is all it owes
    torch.testing.assert_close(y[real], ref[real], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 7])
def test_tiles_gradients_equal_the_plain_computation(rows):
    q, k, v, w, mask = case(growing=True)
    mask[2, :4] = True  # every element has real keys here
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    g = torch.randn(B, N, H * E)
    grads = torch.autograd.grad((favor_attention(*inputs, w, mask, rows=rows) * g).sum(), inputs)
    ref_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_grads = torch.autograd.grad((plain(*ref_inputs, w, mask) * g).sum(), ref_inputs)
    for a, b in zip(grads, ref_grads):
        assert torch.isfinite(a).all()
        assert ((a - b).norm() / b.norm()).item() < 1e-5


def test_throughput_benchmark_runs_and_writes_its_tables(tmp_path):
    bench = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernel_throughput.py")
    threads = torch.get_num_threads()
    try:
        rc = bench.main(["--seq-len", "300", "--dim", "64", "--heads", "4", "--rounds", "2", "--warmup", "0",
                         "--threads", "1", "--mechanisms", "performer,linformer", "--out", str(tmp_path / "kt")])
    finally:
        torch.set_num_threads(threads)  # main() sets the thread count process-wide
    assert rc == 0
    data = json.loads((tmp_path / "kt.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {"matmul", "performer", "linformer"} and rows["matmul"]["fraction_of_matmul"] == 1.0
    assert all(r["fraction_of_matmul"] > 0 and r["fraction_by_cpu_time"] > 0 for r in rows.values())
    assert rows["performer"]["target"] == 0.8 and isinstance(rows["performer"]["target_met"], bool)
    assert "| performer |" in (tmp_path / "kt.md").read_text()
    with pytest.raises(SystemExit) as exc:
        bench.main(["--mechanisms", "nope", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2


def test_module_takes_the_tiles_on_one_thread_only_and_both_agree():
    """PerformerAttention uses the tiles on one CPU thread and the whole-sequence form with more: outputs and
    gradients agree to float rounding (1e-6 absolute, 1e-5 relative), with a padding mask."""
    attn = build_attention("performer", 32, 2, features=16)
    x = torch.randn(2, 300, 32)
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, :40] = False
    threads = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            xi = x.clone().requires_grad_()
            y = attn(xi, mask=mask)
            (g,) = torch.autograd.grad(y.square().sum(), xi)
            outs.append((y.detach(), g))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(outs[0][0][mask], outs[1][0][mask], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-6, rtol=1e-5)
