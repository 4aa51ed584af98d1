"""retention (Sun et al. 2023, RetNet) against the paper's equations written here token by token
(tests/recurrent_reference.py, float64): the chunkwise form (n > chunk) and the parallel form (n <= chunk)
equal the recurrent form S_n = gamma S_{n-1} + k_n^T v_n, o_n = q_n S_n within 1e-5 relative in fp32,
over several chunk sizes and lengths that are no multiple of the chunk; the whole layer (rotation,
GroupNorm, swish gate, projections) equals its reference built from the module's weights. Registry-wide
properties (padding, decoding, FLOPs, bad input) are in test_attention.py, test_decoding.py, test_flops.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from recurrent_reference import gated_recurrence, heads, linear, rel_err

from models.attention import build_attention
from models.attention.retention import retention_chunks

DIM, HEADS = 32, 4


def make(seed=0, **options):
    torch.manual_seed(seed)
    return build_attention("retention", DIM, HEADS, **options)


def paper_gammas(h):
    return torch.tensor([1 - 2.0 ** (-5 - i) for i in range(h)], dtype=torch.float64)


def rotate_complex(x, pos):
    """The paper's Theta: pairs (x_2i, x_2i+1) as complex numbers times e^(i n theta_i), theta_i = 10000^(-2i/e)."""
    e = x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, e, 2, dtype=torch.float64) / e)
    z = torch.complex(x[..., 0::2].double(), x[..., 1::2].double()) * torch.polar(
        torch.ones(1, dtype=torch.float64), pos.double()[:, None] * theta)
    return torch.stack([z.real, z.imag], dim=-1).flatten(-2)


def reference_layer(attn, x):
    """The whole retention layer from the module's weights, token by token: q = x W_Q / sqrt(e), k = x W_K
    (rotated), v = x W_V; the recurrence; GroupNorm per head; swish(x W_G) gate; W_O."""
    w = attn.get_projection_weights()
    n, h, e = x.shape[1], attn.heads, attn.head_dim
    q = heads(linear(x, w["q_w"], w["q_b"]), h) / math.sqrt(e)
    k = heads(linear(x, w["k_w"], w["k_b"]), h)
    v = heads(linear(x, w["v_w"], w["v_b"]), h)
    if attn.rotary:
        pos = torch.arange(n)
        q, k = rotate_complex(q, pos), rotate_complex(k, pos)
    gamma = torch.tensor([math.exp(g) for g in attn.log_gammas], dtype=torch.float64)[None, :, None, None]
    o, _ = gated_recurrence(q, k, v, gamma)  # (B, h, n, e)
    mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
    y = ((o - mean) / torch.sqrt(var + attn.norm.eps)).transpose(1, 2).reshape(x.shape)
    y = y * attn.norm.weight.double() + attn.norm.bias.double()
    g = linear(x, attn.gate.weight, attn.gate.bias)
    return linear(y * g * torch.sigmoid(g), w["o_w"], w["o_b"])


@pytest.mark.parametrize("n", [1, 13, 37])
@pytest.mark.parametrize("chunk", [1, 4, 5, 16, 64])
@pytest.mark.parametrize("decay", [None, 0.05], ids=["paper", "strong"])
def test_chunkwise_equals_recurrent(n, chunk, decay):
    """retention_chunks (parallel form when n <= chunk) against the token-by-token recurrence; with a
    strong decay (gamma = 0.05: gamma^C underflows fp32 for C >= 32) too. fp32 within 1e-5 relative."""
    torch.manual_seed(n * 100 + chunk)
    B, h, e, f = 2, 3, 8, 6
    q, k, v = torch.randn(B, h, n, e), torch.randn(B, h, n, e), torch.randn(B, h, n, f)
    gamma = paper_gammas(h) if decay is None else torch.full((h,), decay, dtype=torch.float64)
    log_decay = gamma.log().float()[None, :, None, None].expand(1, h, n, 1)
    o, s = retention_chunks(q, k, v, log_decay, chunk, need_state=True)
    o_ref, s_ref = gated_recurrence(q, k, v, gamma[None, :, None, None])
    assert rel_err(o, o_ref) < 1e-5
    assert rel_err(s, s_ref) < 1e-5  # the state handed to decoding, too


def test_parallel_form_is_the_d_matrix():
    """n <= chunk: (Q K^T * D) V with D_nm = gamma^(n - m) (m <= n), built here from the definition."""
    B, h, n, e = 2, 4, 11, 8
    q, k, v = torch.randn(B, h, n, e), torch.randn(B, h, n, e), torch.randn(B, h, n, e)
    gamma = paper_gammas(h)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    D = torch.where(j <= i, gamma[:, None, None] ** (i - j).clamp_min(0), torch.zeros(()))  # (h, n, n)
    ref = ((q.double() @ k.double().transpose(-2, -1)) * D) @ v.double()
    o, _ = retention_chunks(q, k, v, gamma.log().float()[None, :, None, None].expand(1, h, n, 1), chunk=n)
    assert rel_err(o, ref) < 1e-5  # fp32


@pytest.mark.parametrize("rotary", [True, False])
@pytest.mark.parametrize("chunk,n", [(4, 18), (8, 37), (64, 21)])
def test_layer_equals_reference(chunk, n, rotary):
    """The module (projections, rotation, chunkwise retention, GroupNorm, gate) against the reference layer
    from its own weights; causal or not, the same (always_causal). fp32 within 1e-5 relative."""
    attn = make(chunk=chunk, rotary=rotary)
    with torch.no_grad():  # GroupNorm's affine parameters away from (1, 0), so they are exercised
        attn.norm.weight.normal_()
        attn.norm.bias.normal_()
    x = torch.randn(2, n, DIM)
    ref = reference_layer(attn, x)
    assert rel_err(attn(x), ref) < 1e-5
    assert rel_err(attn(x, causal=True), ref) < 1e-5


def test_paper_decay_schedule_and_override():
    assert make().log_gammas == pytest.approx([math.log(1 - 2.0 ** (-5 - i)) for i in range(HEADS)], rel=1e-12)
    assert make(decay=0.9).log_gammas == pytest.approx([math.log(0.9)] * HEADS)
    assert make(decay=[0.5, 0.6, 0.7, 0.8]).log_gammas == pytest.approx([math.log(g) for g in (0.5, 0.6, 0.7, 0.8)])
    # 32 heads: gamma = 1 - 2^-36 is 1 in fp32, its log is not 0
    assert all(g < 0 for g in build_attention("retention", 64, 32).log_gammas)


def test_later_tokens_leave_earlier_outputs_unchanged():
    """Causality across chunk boundaries (chunk 8, n 40), asked causal or not."""
    attn = make(chunk=8)
    x = torch.randn(1, 40, DIM)
    for causal in (False, True):
        y = attn(x, causal=causal)
        for j in (3, 8, 17, 39):
            x2 = x.clone()
            x2[0, j:] = torch.randn(40 - j, DIM)
            y2 = attn(x2, causal=causal)
            torch.testing.assert_close(y2[0, :j], y[0, :j], atol=1e-6, rtol=1e-5)  # fp32 rounding only
            assert (y2[0, j] - y[0, j]).abs().max() > 1e-4


def test_middle_padding_is_an_identity_step():
    """Padding in the middle neither decays the state nor advances the rotation: equal to the unpadded run
    at a length spanning several chunks (1e-5 relative)."""
    attn = make(chunk=4)
    x = torch.randn(1, 30, DIM)
    keep = torch.ones(30, dtype=torch.bool)
    keep[[0, 5, 6, 7, 8, 9, 15, 29]] = False
    xp = x.clone()
    xp[0, ~keep] = 100 * torch.randn(int((~keep).sum()), DIM)
    y = attn(xp, mask=keep[None])[0, keep]
    assert rel_err(y, attn(x[:, keep])[0]) < 1e-5


def test_bf16_autocast_finite_at_length():
    """bf16 autocast at n = 300 with the default chunk (64: chunkwise), mask and all: finite, near fp32."""
    attn = make()
    x = torch.randn(2, 300, DIM)
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, 200:] = False
    y32 = attn(x, mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = attn(x, mask=mask)
    assert torch.isfinite(y16).all()
    assert rel_err(y16.float()[mask], y32[mask]) < 3e-2  # bf16 projections (unit roundoff 2^-9), GroupNorm after


def test_refusals_say_why():
    with pytest.raises(ValueError, match="rotary needs an even head dim"):
        build_attention("retention", 12, 4)  # head dim 3
    assert build_attention("retention", 12, 4, rotary=False)(torch.randn(1, 5, 12)).shape == (1, 5, 12)
    with pytest.raises(ValueError, match=r"decay must be .* 4 numbers"):
        make(decay=(0.9, 0.9, 0.9, 1.0))


@pytest.mark.parametrize("chunk", [4, 64])
def test_gradients_equal_the_recurrences(chunk):
    """Backpropagating through the chunkwise form gives the recurrence's gradients (autograd through the float64
    reference) for q, k and v, within 1e-5 relative in fp32."""
    B, h, n, e = 1, 3, 37, 8
    leaves = [torch.randn(B, h, n, e, requires_grad=True) for _ in range(3)]
    gamma = paper_gammas(h)
    w = torch.randn(B, h, n, e)
    grads = torch.autograd.grad((retention_chunks(*leaves, gamma.log().float()[None, :, None, None].expand(1, h, n, 1), chunk)[0] * w).sum(), leaves)
    ref = torch.autograd.grad((gated_recurrence(*leaves, gamma[None, :, None, None])[0] * w.double()).sum(), leaves)
    for got, want in zip(grads, ref):
        assert rel_err(got, want) < 1e-5
