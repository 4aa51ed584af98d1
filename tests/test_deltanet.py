"""deltanet (Schlag et al. 2021; Yang et al. 2024) against the delta rule written here token by token in the
papers' column convention (tests/recurrent_reference.py, float64): S_t = S_{t-1} (I - beta_t k_t k_t^T) +
beta_t v_t k_t^T, o_t = S_t q_t. The chunked WY/UT form equals it within 1e-5 relative in fp32 over several
chunk sizes and lengths that are no multiple of the chunk, including repeated keys with beta = 1 (the
triangular system at its least benign); the blocked triangular inverse equals the inverse; the whole layer
equals its reference built from the module's weights. Registry-wide properties (padding, decoding, FLOPs,
bad input) are in test_attention.py, test_decoding.py, test_flops.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from recurrent_reference import delta_recurrence, heads, linear, rel_err
from torch.utils.flop_counter import FlopCounterMode

from models.attention import build_attention
from models.attention.deltanet import delta_chunks
from models.attention.recurrent import unit_lower_inverse, unit_lower_inverse_flops

DIM, HEADS = 32, 4


def make(seed=0, **options):
    torch.manual_seed(seed)
    return build_attention("deltanet", DIM, HEADS, **options)


def inputs(B, h, n, e, f, keys="random"):
    q, k, v = F.normalize(torch.randn(B, h, n, e), dim=-1), torch.randn(B, h, n, e), torch.randn(B, h, n, f)
    beta = torch.rand(B, h, n)
    if keys == "repeated":  # three distinct keys cycled, written at full strength: the state overwrites in place
        k = k[:, :, :3].repeat(1, 1, n // 3 + 1, 1)[:, :, :n]
        beta = torch.ones(B, h, n)
    return q, F.normalize(k, dim=-1), v, beta


@pytest.mark.parametrize("n", [1, 13, 37])
@pytest.mark.parametrize("chunk", [1, 2, 4, 16, 64])
@pytest.mark.parametrize("keys", ["random", "repeated"])
def test_chunked_equals_recurrent(n, chunk, keys):
    torch.manual_seed(n * 100 + chunk)
    q, k, v, beta = inputs(2, 3, n, 8, 6, keys)
    o, m = delta_chunks(q, k, v, beta, chunk, need_state=True)
    o_ref, s_ref = delta_recurrence(q, k, v, beta)
    assert rel_err(o, o_ref) < 1e-5  # fp32
    assert rel_err(m.transpose(-2, -1), s_ref) < 1e-5  # the state handed to decoding (M = S^T), too


def test_chunked_from_a_state_equals_recurrent():
    """Starting from a state (decoding several tokens at once): the same recurrence continued (1e-5)."""
    q, k, v, beta = inputs(2, 3, 21, 8, 8)
    s0 = torch.randn(2, 3, 8, 8)
    o, m = delta_chunks(q, k, v, beta, 8, state=s0, need_state=True)
    o_ref, s_ref = delta_recurrence(q, k, v, beta, state=s0.transpose(-2, -1))
    assert rel_err(o, o_ref) < 1e-5 and rel_err(m.transpose(-2, -1), s_ref) < 1e-5


@pytest.mark.parametrize("P", [1, 2, 4, 8, 64])
def test_blocked_inverse_is_the_inverse_and_counted(P):
    """(I + A)^-1 by blocks against torch.linalg.inv in float64 (norm-wise 1e-11 relative: the entries of this
    random inverse grow to ~1e3 at P = 64); its FLOPs as the counter sees them."""
    a = 0.5 * torch.randn(3, 5, P, P, dtype=torch.float64).tril(-1)
    with FlopCounterMode(display=False) as counter:
        t = unit_lower_inverse(a)
    assert rel_err(t, torch.linalg.inv(torch.eye(P, dtype=a.dtype) + a)) < 1e-11  # observed 7e-13 at P = 64
    assert counter.get_total_flops() == 15 * unit_lower_inverse_flops(P)


def reference_layer(attn, x):
    """The whole layer from the module's weights, token by token: q, k = L2-normalised x W_Q, x W_K per head,
    v = x W_V, beta = sigmoid(x W_beta + b); the delta rule; W_O."""
    w = attn.get_projection_weights()
    h = attn.heads
    q = F.normalize(heads(linear(x, w["q_w"], w["q_b"]), h), dim=-1)
    k = F.normalize(heads(linear(x, w["k_w"], w["k_b"]), h), dim=-1)
    v = heads(linear(x, w["v_w"], w["v_b"]), h)
    beta = torch.sigmoid(linear(x, attn.beta.weight, attn.beta.bias)).transpose(1, 2)
    o, _ = delta_recurrence(q, k, v, beta)
    return linear(o.transpose(1, 2).reshape(x.shape), w["o_w"], w["o_b"])


@pytest.mark.parametrize("chunk,n", [(1, 9), (4, 18), (8, 37), (64, 21)])
def test_layer_equals_reference(chunk, n):
    """The module against the reference layer from its own weights; causal or not, the same (always_causal).
    fp32 within 1e-5 relative."""
    attn = make(chunk=chunk)
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
    """Padding in the middle writes nothing and erases nothing: equal to the unpadded run (1e-5)."""
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
    assert rel_err(y16.float()[mask], y32[mask]) < 3e-2  # bf16 projections (unit roundoff 2^-9)


def test_refusals_say_why():
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        make(chunk=24)


@pytest.mark.parametrize("chunk", [4, 64])
def test_gradients_equal_the_recurrences(chunk):
    """Backpropagating through the chunked form (through the blocked inverse too) gives the recurrence's gradients
    (autograd through the float64 reference) for q, k, v and beta, within 1e-5 relative in fp32."""
    leaves = [t.requires_grad_() for t in inputs(1, 2, 37, 8, 8)]
    w = torch.randn(1, 2, 37, 8)
    grads = torch.autograd.grad((delta_chunks(*leaves, chunk)[0] * w).sum(), leaves)
    ref = torch.autograd.grad((delta_recurrence(*leaves)[0] * w.double()).sum(), leaves)
    for got, want in zip(grads, ref):
        assert rel_err(got, want) < 1e-5
