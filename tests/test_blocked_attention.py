"""The blocked family (longformer, bigbird, sparse; the kernel in models/attention/blocked.py, shared with
local and hybrid) against references written here from each paper's definition.

The strong test: for each pattern the test builds the n x n allowed matrix itself (not from the module) and
runs a dense masked softmax over it; the blocked kernel must agree within 1e-5 in fp32 (atol and rtol), with
and without causality, dilation, global tokens, random blocks, and sizes that are no multiple of a block.
Also: convergence to exact attention when the window covers the sequence (1e-5), padding anywhere equal to
no padding (1e-5), no leak from the future, bf16 autocast finite and within 2e-2, the returned weights, the
random blocks' seed, and FLOPs equal to the counted figure (exact integers) for every variant.
Sizes: B = 2, n = 37 (a multiple of no block below), dim 32, 4 heads (head dim 8).
"""
from __future__ import annotations

import math

import pytest
import torch

from models.attention import build_attention
from models.attention.bigbird import random_blocks
from profiling import counted_flops

B, N, DIM, HEADS = 2, 37, 32, 4


def make(name, **opts):
    torch.manual_seed(0)  # the same projection weights for every build
    return build_attention(name, DIM, HEADS, **opts)


def exact(attn, x, allowed=None, causal=False):
    """Softmax attention with attn's projections over the allowed (n, n) pairs (all when None), written here."""
    w = attn.get_projection_weights()
    n, e = x.shape[1], DIM // HEADS

    def lin(key):
        return (x @ w[f"{key}_w"].T + w[f"{key}_b"]).view(x.shape[0], n, HEADS, e).transpose(1, 2)

    q, k, v = lin("q"), lin("k"), lin("v")
    ok = torch.ones(n, n, dtype=torch.bool) if allowed is None else allowed.clone()
    if causal:
        ok &= torch.ones(n, n, dtype=torch.bool).tril()
    s = (q @ k.transpose(-2, -1)) / math.sqrt(e)
    a = s.masked_fill(~ok, float("-inf")).softmax(-1)
    return (a @ v).transpose(1, 2).reshape(x.shape) @ w["o_w"].T + w["o_b"]


# ----------------------------------------------------------------- the papers' allowed matrices, written here


def grid(n):
    return torch.arange(n)[:, None], torch.arange(n)[None, :]  # i (query), j (key)


def longformer_allowed(n, window, dilation, g):
    """Beltagy et al.: the (dilated) window |i - j| <= w d, j - i a multiple of d; global tokens 0..g-1 both ways."""
    i, j = grid(n)
    win = ((j - i) % dilation == 0) & ((j - i).abs() <= window * dilation)
    return win | (j < g) | (i < g)


def bigbird_allowed(n, block, g, R):
    """Zaheer et al. (ITC): window of 3 blocks, g global blocks both ways, random blocks R[a] of query block a."""
    i, j = grid(n)
    a, b = i // block, j // block
    ok = ((a - b).abs() <= 1) | (b < g) | (a < g)
    if R is not None:
        for qa in range(R.shape[0]):
            for kb in R[qa].tolist():
                if kb >= 0:
                    ok |= (a == qa) & (b == kb)
    return ok


def sparse_allowed(n, pattern, stride, c):
    """Child et al., stride l: fixed = own block of l or the last c positions of any block; strided =
    |i - j| < l or (i - j) mod l = 0."""
    i, j = grid(n)
    if pattern == "fixed":
        return (i // stride == j // stride) | (j % stride >= stride - c)
    return ((i - j).abs() < stride) | ((i - j) % stride == 0)


def allowed_of(name, opts, n):
    if name == "longformer":
        return longformer_allowed(n, opts["window"], opts.get("dilation", 1), opts.get("global_tokens", 1))
    if name == "bigbird":
        blk = min(opts["block"], n)
        nb = -(-n // blk)
        g = min(opts.get("global_blocks", 2), nb)
        return bigbird_allowed(n, blk, g, random_blocks(nb, g, opts.get("random_blocks", 3), opts.get("seed", 0)))
    return sparse_allowed(n, opts.get("pattern", "fixed"), opts["stride"], opts.get("summary", 8))


CASES = [
    ("longformer", dict(window=3, global_tokens=0)),
    ("longformer", dict(window=4, global_tokens=2)),
    ("longformer", dict(window=2, dilation=3, global_tokens=1)),
    ("longformer", dict(window=5, dilation=2, global_tokens=3)),
    ("bigbird", dict(block=4, random_blocks=2, global_blocks=1)),
    ("bigbird", dict(block=3, random_blocks=3, global_blocks=2, seed=7)),
    ("bigbird", dict(block=5, random_blocks=1, global_blocks=0)),
    ("sparse", dict(pattern="fixed", stride=6, summary=2)),
    ("sparse", dict(pattern="fixed", stride=5, summary=5)),
    ("sparse", dict(pattern="strided", stride=6)),
    ("sparse", dict(pattern="strided", stride=4)),
]
IDS = [f"{n}-" + "-".join(f"{k}{v}" for k, v in o.items()) for n, o in CASES]


def causal_ok(name):
    return name != "bigbird"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_pattern_equals_dense_masked_softmax(name, opts, causal):
    if causal and not causal_ok(name):
        pytest.skip("bigbird is not causal")
    attn = make(name, **opts)
    x = torch.randn(B, N, DIM)
    ref = exact(attn, x, allowed_of(name, opts, N), causal)
    torch.testing.assert_close(attn(x, causal=causal), ref, atol=1e-5, rtol=1e-5)
    # the weights it returns: the same softmax, zero outside the pattern
    _, w = attn(x, causal=causal, return_weights=True)
    ok = allowed_of(name, opts, N) & (torch.ones(N, N, dtype=torch.bool).tril() if causal else True)
    assert (w[:, :, ~ok] == 0).all() and (w[:, :, ok] > 0).all()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_padding_anywhere_equals_no_padding(name, opts, causal):
    """Real tokens padded left, in the middle and right (garbage in the padding) give the outputs of the real
    tokens alone: positions are ranks among real tokens. fp32, 1e-5."""
    if causal and not causal_ok(name):
        pytest.skip("bigbird is not causal")
    attn = make(name, **opts)
    n_real = 29
    x_real = torch.randn(1, n_real, DIM)
    mask = torch.ones(3, N, dtype=torch.bool)
    mask[0, :8] = False
    mask[1, 10:18] = False
    mask[2, -8:] = False
    xp = 3 * torch.randn(3, N, DIM)
    for b in range(3):
        xp[b, mask[b]] = x_real[0]
    y = attn(xp, mask=mask, causal=causal)
    ref = attn(x_real, causal=causal)[0]
    for b in range(3):
        torch.testing.assert_close(y[b, mask[b]], ref, atol=1e-5, rtol=1e-5)
    # and against the paper's pattern on the real tokens, written here
    torch.testing.assert_close(ref, exact(attn, x_real, allowed_of(name, opts, n_real), causal)[0], atol=1e-5, rtol=1e-5)


COVERING = [
    ("longformer", dict(window=N), True),
    ("longformer", dict(window=N - 1, global_tokens=0), True),
    ("bigbird", dict(block=N), False),
    ("bigbird", dict(block=4, random_blocks=N, global_blocks=1), False),  # random blocks fill every gap
    ("sparse", dict(pattern="fixed", stride=N + 3, summary=1), True),
    ("sparse", dict(pattern="strided", stride=N), True),
]


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name,opts,can_causal", COVERING, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(COVERING)])
def test_covering_pattern_is_exact_attention(name, opts, can_causal, causal, masked):
    """When the pattern covers every pair, the mechanism is exact softmax attention (fp32, 1e-5)."""
    if causal and not can_causal:
        pytest.skip(f"{name} is not causal")
    attn = make(name, **opts)
    x = torch.randn(B, N, DIM)
    if not masked:
        torch.testing.assert_close(attn(x, causal=causal), exact(attn, x, causal=causal), atol=1e-5, rtol=1e-5)
        return
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, [0, 3, 17, 18, 36]] = False
    y = attn(x, mask=mask, causal=causal)
    for b in range(B):
        xb = x[b : b + 1, mask[b]]
        torch.testing.assert_close(y[b, mask[b]], exact(attn, xb, causal=causal)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,opts", [c for c in CASES if causal_ok(c[0])], ids=[i for c, i in zip(CASES, IDS) if causal_ok(c[0])])
def test_causal_no_future_leak(name, opts):
    attn = make(name, **opts)
    x = torch.randn(1, N, DIM)
    y = attn(x, causal=True)
    for j in (0, 1, 5, 6, 18, N - 1):
        x2 = x.clone()
        x2[0, j] += torch.randn(DIM)
        y2 = attn(x2, causal=True)
        torch.testing.assert_close(y2[0, :j], y[0, :j], atol=1e-6, rtol=1e-5)  # float rounding only
        assert (y2[0, j] - y[0, j]).abs().max() > 1e-4  # i = j sees itself


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_bf16_autocast(name, opts):
    attn = make(name, **opts)
    x = torch.randn(B, N, DIM)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, :5] = False
    y32 = attn(x, mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = attn(x, mask=mask)
        yc = attn(x, mask=mask, causal=True) if causal_ok(name) else y16
    assert torch.isfinite(y16).all() and torch.isfinite(yc).all()
    # bf16 unit roundoff 2^-9; a few matmuls: relative error of real outputs below 2e-2
    assert ((y16.float() - y32)[mask].norm() / y32[mask].norm()).item() < 2e-2


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_flops_equal_counted(name, opts):
    attn = make(name, **opts)
    x = torch.randn(B, N, DIM, requires_grad=True)
    assert counted_flops(lambda: attn(x)) == attn.flops(N, B)
    assert counted_flops(lambda: attn(x), backward=True) == attn.flops(N, B, backward=True)
    if causal_ok(name):
        assert counted_flops(lambda: attn(x, causal=True)) == attn.flops(N, B, causal=True)


# ----------------------------------------------------------------- bigbird's random blocks


def test_random_blocks_follow_the_definition():
    for nb, g, r in [(10, 1, 3), (10, 2, 2), (7, 0, 4), (4, 1, 5), (3, 1, 2)]:
        R = random_blocks.__wrapped__(nb, g, r, 0)
        if R is None:  # no query block has a block outside its window and the global ones
            assert all(abs(a - b) <= 1 or b < g or a < g for a in range(nb) for b in range(nb))
            continue
        for a in range(nb):
            picked = [b for b in R[a].tolist() if b >= 0]
            assert len(picked) == len(set(picked))  # distinct
            assert all(abs(a - b) > 1 and b >= g for b in picked)  # outside the window and the global blocks
            candidates = [b for b in range(nb) if abs(a - b) > 1 and b >= g and a >= g]
            assert len(picked) == min(r, len(candidates))  # r of them, or every candidate where fewer are left


def test_random_blocks_reproducible_from_seed():
    a = random_blocks.__wrapped__(20, 1, 3, 5)
    assert torch.equal(a, random_blocks.__wrapped__(20, 1, 3, 5))  # same seed, fresh draw: same blocks
    assert not torch.equal(a, random_blocks.__wrapped__(20, 1, 3, 6))  # another seed: other blocks
    x = torch.randn(1, 80, DIM)
    y1 = make("bigbird", block=4, random_blocks=3, global_blocks=1, seed=5)(x)
    y2 = make("bigbird", block=4, random_blocks=3, global_blocks=1, seed=5)(x)  # same weights, a new module
    y3 = make("bigbird", block=4, random_blocks=3, global_blocks=1, seed=6)(x)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    assert (y1 - y3).abs().max() > 1e-4


def test_bigbird_refuses_causal_with_the_reason():
    with pytest.raises(ValueError, match="random blocks"):
        make("bigbird", block=4, causal=True)


def test_sparse_refuses_summary_beyond_stride():
    with pytest.raises(ValueError, match="summary must be at most stride"):
        make("sparse", stride=4, summary=5)


INFERENCE_CASES = CASES + [("local", dict(window=3)), ("local", dict(window=4, dilation=2)), ("local", dict(window=40)),
                           ("hybrid", dict(window=3, local_heads=2, dilations=(1, 2), chunk=8))]


@pytest.mark.parametrize("name,opts", INFERENCE_CASES, ids=[f"{n}-" + "-".join(f"{k}{v}" for k, v in o.items())
                                                            for n, o in INFERENCE_CASES])
def test_inference_path_equals_autograd_path(name, opts):
    """Without autograd the kernel writes into reused buffers (out= forms, in-place softmax): same outputs
    as the autograd path within 1e-6, with and without padding and causality, at two lengths (the cached
    masks of the first must not leak into the second)."""
    attn = make(name, **opts)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, -6:] = False
    for n in (N, 50):
        x = torch.randn(B, n, DIM)
        for m in (None, mask if n == N else None):
            for causal in ((False, True) if causal_ok(name) else (False,)):
                y = attn(x, mask=m, causal=causal)
                with torch.no_grad():
                    y0 = attn(x, mask=m, causal=causal)
                assert y.requires_grad and not y0.requires_grad
                torch.testing.assert_close(y0, y.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name,opts", INFERENCE_CASES, ids=[f"{n}-" + "-".join(f"{k}{v}" for k, v in o.items())
                                                            for n, o in INFERENCE_CASES])
def test_heads_in_chunks_equal_all_at_once(name, opts, monkeypatch):
    """Long sequences go through the kernel a few heads at a time (blocked.SCORES_BUDGET); one head per chunk
    must give what all heads at once give (1e-6), with autograd and without, with padding."""
    import models.attention.blocked as blocked

    attn = make(name, **opts)
    x = torch.randn(B, N, DIM)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, :4] = False
    ref = attn(x, mask=mask)
    with torch.no_grad():
        ref0 = attn(x, mask=mask)
    monkeypatch.setattr(blocked, "SCORES_BUDGET", 1)
    torch.testing.assert_close(attn(x, mask=mask), ref, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask=mask), ref0, atol=1e-6, rtol=1e-5)


def test_throughput_benchmark_smoke(tmp_path):
    """benchmarks/bench_blocked_throughput.py --quick writes its two files with a row per blocked mechanism."""
    import json
    from pathlib import Path

    from conftest import load_script

    bench = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_blocked_throughput.py")
    assert bench.main(["--quick", "--seq-len", "200", "--threads", "1", "--out", str(tmp_path / "t")]) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    assert [r["label"] for r in report["rows"]] == [label for label, _, _ in bench.MECHANISMS]
    assert all(r["status"] == "ok" and r["flops"] > 0 and r["ratio"] > 0 for r in report["rows"])
    assert "| local |" in (tmp_path / "t.md").read_text()
