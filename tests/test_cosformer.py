"""`cosformer` (Qin et al. 2022) against an independent reference that builds the n x n re-weighted similarity
matrix from the paper's definition, position by position:

    S[i, j] = relu(q_i) . relu(k_j) * cos(pi/2 * (i - j) / M)   (j <= i when causal; padding keys excluded)
    out_i   = sum_j S[i, j] v_j / sum_j S[i, j]                  (0 where the sum is 0: the 0/0 rows)

with positions counted among the real tokens and M the `max_seq_len` option. No Ptolemy decomposition, no
prefix sums, no feature maps: those are what the mechanism does and what this checks.
Sizes B = 2, d = 32, h = 4 (e = 8); fp32; tolerances next to each assertion.
"""
from __future__ import annotations

import math

import pytest
import torch

from models.attention import build_attention

B, DIM, HEADS = 2, 32, 4
E = DIM // HEADS


def make(seed=0, **opts):
    torch.manual_seed(seed)
    return build_attention("cosformer", DIM, HEADS, **opts)


def reference(attn, x, mask=None, causal=False):
    """(B, n, d) outputs and (B, h, n, n) normalised matrices from the definition."""
    w = attn.get_projection_weights()
    Bx, n, _ = x.shape

    def heads(key):
        return (x @ w[f"{key}_w"].T + w[f"{key}_b"]).view(Bx, n, HEADS, E).transpose(1, 2)  # (B, h, n, e)

    q, k, v = heads("q"), heads("k"), heads("v")
    M = attn.max_seq_len
    S = torch.zeros(Bx, HEADS, n, n)
    for b in range(Bx):
        real = range(n) if mask is None else [i for i in range(n) if mask[b, i]]
        pos = {i: p for p, i in enumerate(real)}  # rank among the real tokens
        for i in range(n):
            pi = pos.get(i, 0 if mask is None else int(mask[b, :i].sum().clamp_min(1)) - 1)
            for j in real:
                if causal and j > i:
                    continue
                cos = math.cos(math.pi / 2 * (pi - pos[j]) / M)
                S[b, :, i, j] = (q[b, :, i].relu() * k[b, :, j].relu()).sum(-1) * cos
    den = S.sum(-1, keepdim=True)
    A = torch.where(den > 0, S / den.clamp_min(1e-30), torch.zeros_like(S))
    y = (A @ v).transpose(1, 2).reshape(Bx, n, DIM) @ w["o_w"].T + w["o_b"]
    return y, A


def mixed_mask(n):
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[1, [0, 1, 6, 10, n - 2, n - 1]] = False  # left, middle and right padding
    return mask


@pytest.mark.parametrize("n,chunk", [(19, 4), (19, 8), (16, 8), (23, 64)])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_equals_reweighted_matrix_reference(causal, masked, n, chunk):
    """M = n (the paper's choice for a fixed length: the re-weighting spans cos 1 .. cos(pi/2 (n-1)/n), far from
    linear attention), several chunk sizes, lengths not divisible by the chunk. fp32: atol 1e-5 on O(1) outputs."""
    attn = make(max_seq_len=n, chunk=chunk)
    x = torch.randn(B, n, DIM)
    mask = mixed_mask(n) if masked else None
    real = mask if masked else torch.ones(B, n, dtype=torch.bool)
    y_ref, A = reference(attn, x, mask, causal)
    torch.testing.assert_close(attn(x, mask=mask, causal=causal)[real], y_ref[real], atol=1e-5, rtol=0)
    # the explicit matrix (has_weights is False for now: see models/attention/cosformer.py): the reference's A
    y, w = attn._attend(x, mask, causal, True)
    rq = real[:, None, :, None].expand_as(w)
    torch.testing.assert_close(w[rq], A[rq], atol=1e-6, rtol=1e-5)  # fp32 ratios: atol 1e-6
    assert (w >= 0).all()
    sums = w.sum(-1)[real[:, None, :].expand(B, HEADS, n)]
    assert (((sums - 1).abs() < 1e-5) | (sums == 0)).all()  # distributions, or the 0/0 rows


def test_reweighting_is_not_linear_attention():
    """With M = n the cos factor matters (the outputs move by far more than rounding when M grows 64-fold), and
    at a large M it fades: cosformer approaches ReLU linear attention (M = 10^6: the cos factor is 1 - 1e-10)."""
    n = 19
    x = torch.randn(B, n, DIM)
    small, large, huge = (make(max_seq_len=m) for m in (n, 64 * n, 10**6))
    assert (small(x) - large(x)).abs().max() > 1e-2
    w = huge.get_projection_weights()
    q = (x @ w["q_w"].T + w["q_b"]).view(B, n, HEADS, E).transpose(1, 2).relu()
    k = (x @ w["k_w"].T + w["k_b"]).view(B, n, HEADS, E).transpose(1, 2).relu()
    v = (x @ w["v_w"].T + w["v_b"]).view(B, n, HEADS, E).transpose(1, 2)
    S = q @ k.transpose(-2, -1)
    lin = (S @ v / S.sum(-1, keepdim=True).clamp_min(1e-30)).transpose(1, 2).reshape(B, n, DIM) @ w["o_w"].T + w["o_b"]
    torch.testing.assert_close(huge(x), lin, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pieces", [[1] * 21, [5, 1, 7, 8]], ids=["tokens", "mixed"])
def test_stepping_equals_reference_with_constant_state(pieces):
    """Decoding with a fixed M computes the full causal forward's function (atol 1e-5 against the reference), and
    its state is sum_j phi(k_j) [v_j, 1]: (B, h, 2e, e + 1) floats whatever the number of positions."""
    n = 21
    attn = make(max_seq_len=32, chunk=4).eval()
    x = torch.randn(B, n, DIM)
    with torch.no_grad():
        y_ref = reference(attn, x, causal=True)[0]
        state, outs, start = None, [], 0
        for size in pieces:
            y, state = attn.step(x[:, start : start + size], state)
            outs.append(y)
            start += size
            assert state["kv"].shape == (B, HEADS, 2 * E, E + 1)
            assert attn.state_bytes(state) == B * HEADS * 2 * E * (E + 1) * 4
        torch.testing.assert_close(torch.cat(outs, 1), y_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(attn(x, causal=True), y_ref, atol=1e-5, rtol=0)
        # beyond M positions the decoding refuses, like the forward
        x_long = torch.randn(B, 32 - n + 1, DIM)
        with pytest.raises(ValueError, match="33.*32"):
            attn.step(x_long, state)


def test_zero_feature_query_gives_zero_row():
    """A query whose projections are all negative: s(i, j) = 0 for every key, the 0/0 row; output 0 before W_O
    (so the output projection's bias), weights row 0, gradients finite."""
    attn = make(max_seq_len=8)
    with torch.no_grad():
        attn.qkv.bias[:DIM] = -100.0  # every query channel negative
    x = torch.randn(B, 8, DIM, requires_grad=True)
    for causal in (False, True):
        y, w = attn._attend(x, None, causal, True)
        torch.testing.assert_close(y, attn.out.bias.expand_as(y), atol=1e-6, rtol=0)
        assert (w == 0).all()
    attn(x, causal=True).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_bad_options_are_one_sentence():
    for opts, words in (({"max_seq_len": 0}, ["max_seq_len", "0"]), ({"chunk": -1}, ["chunk", "-1"])):
        with pytest.raises(ValueError) as ei:
            make(**opts)
        assert "\n" not in str(ei.value) and all(w in str(ei.value) for w in words), str(ei.value)
    with pytest.raises(ValueError, match="sequence length 9 exceeds the maximum 8"):
        make(max_seq_len=8)(torch.randn(1, 9, DIM))
