"""gla (Yang et al. 2024, Gated Linear Attention) against the paper's recurrence written here token by token
(tests/recurrent_reference.py, float64): S_t = diag(alpha_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t. The chunkwise
form equals it within 1e-5 relative in fp32 over several chunk sizes and lengths that are no multiple of the
chunk, with gates so strong that the gate product over a chunk underflows fp32 by hundreds of orders of
magnitude (a form that divides by the cumulative gate would overflow there); the whole layer (low-rank gate,
LayerNorm per head, swish gate, projections) equals its reference built from the module's weights.
Registry-wide properties (padding, decoding, FLOPs, bad input) are in test_attention.py, test_decoding.py,
test_flops.py.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from recurrent_reference import gated_recurrence, heads, linear, rel_err

from models.attention import build_attention
from models.attention.gla import gla_chunks

DIM, HEADS = 32, 4


def make(seed=0, **options):
    torch.manual_seed(seed)
    return build_attention("gla", DIM, HEADS, **options)


def log_gates(shape, strength):
    """log alpha <= 0: the paper's sigmoid(z)^(1/16) with z ~ N(0, 1) ("paper"), or up to e^-20 per step
    ("strong": over a chunk of 64 the product reaches e^-1280, far below fp32's smallest number)."""
    if strength == "paper":
        return F.logsigmoid(torch.randn(shape)) / 16
    return -20 * torch.rand(shape) * (torch.rand(shape) < 0.5)  # half the steps keep (alpha = 1), half forget hard


@pytest.mark.parametrize("n", [1, 13, 37])
@pytest.mark.parametrize("chunk", [1, 2, 4, 16, 64])
@pytest.mark.parametrize("strength", ["paper", "strong"])
def test_chunkwise_equals_recurrent(n, chunk, strength):
    torch.manual_seed(n * 100 + chunk)
    B, h, e, f = 2, 3, 8, 6
    q, k, v = torch.randn(B, h, n, e), torch.randn(B, h, n, e), torch.randn(B, h, n, f)
    g = log_gates((B, h, n, e), strength)
    o, s = gla_chunks(q, k, v, g, chunk, need_state=True)
    o_ref, s_ref = gated_recurrence(q, k, v, g.double().exp())
    assert rel_err(o, o_ref) < 1e-5  # fp32
    assert rel_err(s, s_ref) < 1e-5  # the state handed to decoding, too


def test_chunkwise_from_a_state_equals_recurrent():
    """Starting from a state (decoding several tokens at once): the same recurrence continued (1e-5)."""
    B, h, n, e = 2, 3, 21, 8
    q, k, v = torch.randn(B, h, n, e), torch.randn(B, h, n, e), torch.randn(B, h, n, e)
    g, s0 = log_gates((B, h, n, e), "paper"), torch.randn(B, h, e, e)
    o, s = gla_chunks(q, k, v, g, 8, state=s0, need_state=True)
    o_ref, s_ref = gated_recurrence(q, k, v, g.double().exp(), state=s0)
    assert rel_err(o, o_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5


def test_strong_gates_give_finite_gradients():
    """Chunk 64 with gates down to e^-20 a step: forward and backward finite (no exp of a positive sum)."""
    B, h, n, e = 1, 2, 100, 8
    q, k, v = (torch.randn(B, h, n, e, requires_grad=True) for _ in range(3))
    g = log_gates((B, h, n, e), "strong").requires_grad_()
    o, _ = gla_chunks(q, k, v, g, 64)
    o.square().sum().backward()
    assert torch.isfinite(o).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, g))


def reference_layer(attn, x):
    """The whole GLA layer from the module's weights, token by token: alpha = sigmoid(x W_a1 W_a2 + b_a)^(1/tau),
    q = x W_Q / sqrt(e), k, v; the recurrence; LayerNorm per head (affine over d); swish(x W_r) gate; W_O."""
    w = attn.get_projection_weights()
    h, e = attn.heads, attn.head_dim
    q = heads(linear(x, w["q_w"], w["q_b"]), h) / math.sqrt(e)
    k = heads(linear(x, w["k_w"], w["k_b"]), h)
    v = heads(linear(x, w["v_w"], w["v_b"]), h)
    z = linear(linear(x, attn.alpha_down.weight, None), attn.alpha_up.weight, attn.alpha_up.bias)
    alpha = heads(torch.sigmoid(z) ** (1 / attn.gate_temperature), h)
    o, _ = gated_recurrence(q, k, v, alpha)
    y = F.layer_norm(o, (e,), eps=attn.norm.eps).transpose(1, 2).reshape(x.shape)
    y = y * attn.norm.weight.double() + attn.norm.bias.double()
    r = linear(x, attn.gate.weight, attn.gate.bias)
    return linear(y * r * torch.sigmoid(r), w["o_w"], w["o_b"])


@pytest.mark.parametrize("chunk,n", [(1, 9), (4, 18), (8, 37), (64, 21)])
def test_layer_equals_reference(chunk, n):
    """The module against the reference layer from its own weights; causal or not, the same (always_causal).
    fp32 within 1e-5 relative."""
    attn = make(chunk=chunk, gate_rank=4)
    with torch.no_grad():
        attn.norm.weight.normal_()
        attn.norm.bias.normal_()
    x = torch.randn(2, n, DIM)
    ref = reference_layer(attn, x)
    assert rel_err(attn(x), ref) < 1e-5
    assert rel_err(attn(x, causal=True), ref) < 1e-5


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
    """Padding in the middle neither gates the state nor writes to it: equal to the unpadded run (1e-5)."""
    attn = make(chunk=4)
    x = torch.randn(1, 30, DIM)
    keep = torch.ones(30, dtype=torch.bool)
    keep[[0, 5, 6, 7, 8, 9, 15, 29]] = False
    xp = x.clone()
    xp[0, ~keep] = 100 * torch.randn(int((~keep).sum()), DIM)
    assert rel_err(attn(xp, mask=keep[None])[0, keep], attn(x[:, keep])[0]) < 1e-5


def test_bf16_autocast_finite_at_length():
    """bf16 autocast at n = 300 with the default chunk (64), a padding mask too: finite, near fp32."""
    attn = make()
    x = torch.randn(2, 300, DIM)
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, 200:] = False
    y32 = attn(x, mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = attn(x, mask=mask)
    assert torch.isfinite(y16).all()
    assert rel_err(y16.float()[mask], y32[mask]) < 3e-2  # bf16 projections (unit roundoff 2^-9), LayerNorm after


def test_refusals_say_why():
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        make(chunk=48)
    with pytest.raises(ValueError, match="gate_temperature"):
        make(gate_temperature=-1.0)


@pytest.mark.parametrize("chunk", [4, 64])
def test_gradients_equal_the_recurrences(chunk):
    """Backpropagating through the chunked form gives the recurrence's gradients (autograd through the float64
    reference) for q, k, v and the log gates, within 1e-5 relative in fp32."""
    B, h, n, e = 1, 2, 37, 8
    g = log_gates((B, h, n, e), "paper")
    leaves = [t.requires_grad_() for t in (torch.randn(B, h, n, e), torch.randn(B, h, n, e), torch.randn(B, h, n, e), g)]
    w = torch.randn(B, h, n, e)
    grads = torch.autograd.grad((gla_chunks(*leaves, chunk)[0] * w).sum(), leaves)
    q, k, v, lg = leaves
    ref = torch.autograd.grad((gated_recurrence(q, k, v, lg.double().exp())[0] * w.double()).sum(), leaves)
    for got, want in zip(grads, ref):
        assert rel_err(got, want) < 1e-5
