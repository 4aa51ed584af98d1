"""Grouped-query / multi-query attention: the `kv_heads` option of `softmax` and `naive`.

The reference is written here from the definition (Ainslie et al. 2023, "GQA"): K and V projected to
kv_heads heads, each repeated for heads / kv_heads consecutive query heads (repeat_interleave), then
plain softmax(Q K^T / sqrt(e)) V per query head. kv_heads = heads must be today's softmax bit for bit.
Sizes: B = 2, n = 19, d = 32, h = 4 (e = 8); fp32; tolerances next to each assertion.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.attention import build_attention
from profiling import counted_flops

B, N, DIM, HEADS = 2, 19, 32, 4
E = DIM // HEADS
GQA = ["softmax", "naive"]


def make(name, seed=0, **opts):
    torch.manual_seed(seed)
    return build_attention(name, DIM, HEADS, **opts)


def mixed_mask():
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, [0, 1, 6, 10, 17, 18]] = False  # left, middle and right padding
    return mask


def reference(attn, x, kv_heads, mask=None, causal=False):
    """GQA from the definition, through the public projection weights: (B, n, d) outputs, (B, h, n, n) weights."""
    w = attn.get_projection_weights()

    def lin(key, heads):
        y = x @ w[f"{key}_w"].T + w[f"{key}_b"]
        return y.view(x.shape[0], x.shape[1], heads, E).transpose(1, 2)  # (B, heads, n, e)

    q = lin("q", HEADS)
    k = lin("k", kv_heads).repeat_interleave(HEADS // kv_heads, dim=1)  # query head i reads K/V head i // group
    v = lin("v", kv_heads).repeat_interleave(HEADS // kv_heads, dim=1)
    s = q @ k.transpose(-2, -1) / math.sqrt(E)  # (B, h, n, n)
    allowed = torch.ones(x.shape[0], 1, N, N, dtype=torch.bool)
    if causal:
        allowed = allowed & torch.ones(N, N, dtype=torch.bool).tril()
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    p = s.masked_fill(~allowed, float("-inf")).softmax(-1)
    y = (p @ v).transpose(1, 2).reshape(x.shape) @ w["o_w"].T + w["o_b"]
    return y, p


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_default_is_todays_softmax_bit_for_bit(causal, masked):
    """kv_heads = heads (and the default None): the same parameters from the same seed, and outputs torch.equal to
    the pre-GQA softmax path (merged QKV chunked in three, SDPA without enable_gqa), written out here."""
    default, explicit = make("softmax"), make("softmax", kv_heads=HEADS)
    for (name, p), (_, p2) in zip(default.named_parameters(), explicit.named_parameters()):
        assert torch.equal(p, p2), name
    assert default.qkv.weight.shape == (3 * DIM, DIM)
    x = torch.randn(B, N, DIM)
    mask = mixed_mask() if masked else None
    q, k, v = (t.view(B, N, HEADS, E).transpose(1, 2) for t in default.qkv(x).chunk(3, dim=-1))
    if mask is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    elif causal:
        allowed = torch.ones(N, N, dtype=torch.bool).tril() & mask[:, None, None, :]
        allowed = allowed | (~allowed.any(-1, keepdim=True) & torch.eye(N, dtype=torch.bool))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    today = default.out(y.transpose(1, 2).reshape(B, N, DIM))
    assert torch.equal(default(x, mask=mask, causal=causal), today)
    assert torch.equal(explicit(x, mask=mask, causal=causal), today)


@pytest.mark.parametrize("kv_heads", [1, 2], ids=["mqa", "gqa2"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", GQA)
def test_gqa_equals_reference(name, causal, masked, kv_heads):
    attn = make(name, kv_heads=kv_heads)
    x = torch.randn(B, N, DIM)
    mask = mixed_mask() if masked else None
    real = mask if masked else torch.ones(B, N, dtype=torch.bool)
    y_ref, p_ref = reference(attn, x, kv_heads, mask, causal)
    y, w = attn(x, mask=mask, causal=causal, return_weights=True)
    # fp32, the same sums in another order (fused SDPA vs explicit): atol 1e-5 on O(1) outputs
    torch.testing.assert_close(attn(x, mask=mask, causal=causal)[real], y_ref[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[real], y_ref[real], atol=1e-5, rtol=0)
    rq = real[:, None, :, None].expand_as(w)
    torch.testing.assert_close(w[rq], p_ref[rq], atol=1e-6, rtol=1e-5)  # weights: fp32 softmax, 1e-6


@pytest.mark.parametrize("kv_heads", [1, 2], ids=["mqa", "gqa2"])
def test_parameters_shapes_and_shared_weights(kv_heads):
    """K/V projections are (kv_heads e, d); the parameter count follows; softmax and naive share weights through
    get/load_projection_weights and then agree (atol 1e-5, fused vs explicit)."""
    soft, naive = make("softmax", kv_heads=kv_heads), make("naive", seed=1, kv_heads=kv_heads)
    w = soft.get_projection_weights()
    assert w["q_w"].shape == (DIM, DIM) and w["o_w"].shape == (DIM, DIM)
    assert w["k_w"].shape == w["v_w"].shape == (kv_heads * E, DIM)
    assert w["k_b"].shape == w["v_b"].shape == (kv_heads * E,)
    expected = 2 * (DIM * DIM + DIM) + 2 * (kv_heads * E * DIM + kv_heads * E)
    for attn in (soft, naive):
        assert sum(p.numel() for p in attn.parameters()) == expected
    naive.load_projection_weights(w)
    for key, t in naive.get_projection_weights().items():
        assert torch.equal(t, w[key]), key
    x = torch.randn(B, N, DIM)
    for causal in (False, True):
        torch.testing.assert_close(naive(x, causal=causal), soft(x, causal=causal), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kv_heads", [1, 2, HEADS])
@pytest.mark.parametrize("name", GQA)
def test_analytic_flops_equal_counted(name, kv_heads):
    """Projections shrink with kv_heads, attention does not; analytic == counted exactly (integer counts).
    naive's causal forward computes the full product and masks it (see tests/test_flops.py), so causal is
    counted for softmax only."""
    attn = make(name, kv_heads=kv_heads)
    n = 37
    assert attn.projection_flops(n, B) == 2 * B * n * DIM * (2 * DIM + 2 * kv_heads * E)
    assert attn.attention_flops(n, B, False) == 4 * B * n * n * DIM
    assert counted_flops(lambda: attn(torch.randn(B, n, DIM))) == attn.flops(n, B)
    x = torch.randn(B, n, DIM, requires_grad=True)
    assert counted_flops(lambda: attn(x), backward=True) == attn.flops(n, B, backward=True)
    if name == "softmax":
        assert counted_flops(lambda: attn(torch.randn(B, n, DIM), causal=True)) == attn.flops(n, B, causal=True)


@pytest.mark.parametrize("kv_heads", [1, 2], ids=["mqa", "gqa2"])
@pytest.mark.parametrize("name", GQA)
def test_gqa_stepping_equals_full_forward_with_smaller_cache(name, kv_heads):
    """Decoding in pieces equals the full causal forward (relative 1e-5, fp32); the KV cache holds kv_heads heads,
    so it is heads / kv_heads times smaller than with kv_heads = heads, at every step."""
    attn = make(name, kv_heads=kv_heads).eval()
    full_heads = make(name).eval()
    x = torch.randn(B, N, DIM)
    with torch.no_grad():
        ref = attn(x, causal=True)
        for pieces in ([1] * N, [4, 1, 9, 5]):
            outs, state, state_full, start = [], None, None, 0
            for size in pieces:
                y, state = attn.step(x[:, start : start + size], state)
                _, state_full = full_heads.step(x[:, start : start + size], state_full)
                outs.append(y)
                start += size
                assert state["k"].shape == state["v"].shape == (B, kv_heads, start, E)
                assert attn.state_bytes(state) * (HEADS // kv_heads) == full_heads.state_bytes(state_full)
            y = torch.cat(outs, dim=1)
            assert ((y - ref).norm() / ref.norm()).item() < 1e-5
        # and against the independent reference (atol 1e-5)
        torch.testing.assert_close(ref, reference(attn, x, kv_heads, causal=True)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", GQA)
def test_gqa_gradients_reach_every_parameter(name):
    attn = make(name, kv_heads=2)
    x = torch.randn(B, N, DIM, requires_grad=True)
    y = attn(x, mask=mixed_mask(), causal=True)
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", GQA)
def test_kv_heads_refused_with_one_sentence(name):
    for bad, words in ((3, ["kv_heads", "3", "divide", str(HEADS)]), (0, ["kv_heads", "0"]), (8, ["kv_heads", "8"])):
        with pytest.raises(ValueError) as ei:
            make(name, kv_heads=bad)
        msg = str(ei.value)
        assert "\n" not in msg and all(w in msg for w in words), msg
