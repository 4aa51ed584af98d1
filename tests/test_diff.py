"""`diff` (Ye et al. 2024, Differential Transformer) against the paper's equations written out here:

    [Q1 Q2] = X W_Q, [K1 K2] = X W_K (per head, halves of width e/2), V = X W_V (width e per head)
    lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init,  lambda_init = 0.8 - 0.6 exp(-0.3 (depth - 1))
    head = (softmax(Q1 K1^T / sqrt(e/2)) - lambda softmax(Q2 K2^T / sqrt(e/2))) V
    out = W_O concat((1 - lambda_init) RMSNorm(head)),  RMSNorm(y) = y / sqrt(mean(y^2) + 1e-5)

The reference reads only public weights (get_projection_weights and the four lambda vectors), builds the
maps explicitly (masked keys -inf) and is independent of the SDPA path under test. Sizes B = 2, n = 19,
d = 32, h = 4 (e = 8, halves of 4); fp32; tolerances next to each assertion.
"""
from __future__ import annotations

import math

import pytest
import torch

from models.attention import build_attention

B, N, DIM, HEADS = 2, 19, 32, 4
E = DIM // HEADS


def make(seed=0, **opts):
    torch.manual_seed(seed)
    return build_attention("diff", DIM, HEADS, **opts)


def mixed_mask():
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, [0, 1, 6, 10, 17, 18]] = False  # left, middle and right padding
    return mask


def reference(attn, x, mask=None, causal=False, lambda_init=None):
    """Outputs (B, n, d), the difference maps (B, h, n, n) and lambda, from the paper's equations."""
    w = attn.get_projection_weights()
    Bx, n, _ = x.shape

    def heads(key):
        return (x @ w[f"{key}_w"].T + w[f"{key}_b"]).view(Bx, n, HEADS, E).transpose(1, 2)  # (B, h, n, e)

    q, k, v = heads("q"), heads("k"), heads("v")
    q1, q2, k1, k2 = q[..., : E // 2], q[..., E // 2 :], k[..., : E // 2], k[..., E // 2 :]
    li = attn.lambda_init if lambda_init is None else lambda_init
    lam = (torch.exp(torch.dot(attn.lambda_q1, attn.lambda_k1)) - torch.exp(torch.dot(attn.lambda_q2, attn.lambda_k2))
           + li)
    allowed = torch.ones(Bx, 1, n, n, dtype=torch.bool)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]

    def softmax_map(qi, ki):
        return (qi @ ki.transpose(-2, -1) / math.sqrt(E // 2)).masked_fill(~allowed, float("-inf")).softmax(-1)

    dmap = softmax_map(q1, k1) - lam * softmax_map(q2, k2)  # (B, h, n, n)
    head = dmap @ v  # (B, h, n, e)
    head = (1 - li) * head / torch.sqrt(head.square().mean(-1, keepdim=True) + 1e-5)
    y = head.transpose(1, 2).reshape(Bx, n, DIM) @ w["o_w"].T + w["o_b"]
    return y, dmap, lam


def test_lambda_init_schedule():
    assert make().lambda_init == pytest.approx(0.2, abs=1e-12)  # depth 1: 0.8 - 0.6
    assert make(depth=12).lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-3.3), abs=1e-12)
    assert make(depth=12, lambda_init=0.5).lambda_init == 0.5  # a fixed value replaces the schedule


@pytest.mark.parametrize("opts", [{}, {"depth": 6}, {"lambda_init": 0.65}], ids=["depth1", "depth6", "fixed"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_equals_paper_reference(causal, masked, opts):
    attn = make(**opts)
    with torch.no_grad():  # lambda away from its initial value, so its four vectors all matter
        for p in (attn.lambda_q1, attn.lambda_k1, attn.lambda_q2, attn.lambda_k2):
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(B, N, DIM)
    mask = mixed_mask() if masked else None
    real = mask if masked else torch.ones(B, N, dtype=torch.bool)
    y_ref, _, lam = reference(attn, x, mask, causal)
    torch.testing.assert_close(attn.lam(), lam, atol=1e-6, rtol=1e-6)
    # fp32; the RMS normalisation rescales each head to unit RMS, so outputs are O(1): atol 1e-5
    torch.testing.assert_close(attn(x, mask=mask, causal=causal)[real], y_ref[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_applied_matrix_is_the_scaled_difference_map(causal, masked):
    """The explicit path's (B, h, n, n) matrix w: out = W_O merge(w @ V) (atol 1e-5), and w is the difference map
    with each row scaled by (1 - lambda_init) / rms of that head's output; the map's rows sum to 1 - lambda."""
    attn = make()
    x = torch.randn(B, N, DIM)
    mask = mixed_mask() if masked else None
    real = mask if masked else torch.ones(B, N, dtype=torch.bool)
    y, w = attn._attend(x, mask, causal, True)  # has_weights is False for now: see models/attention/diff.py
    y_ref, dmap, lam = reference(attn, x, mask, causal)
    torch.testing.assert_close(y[real], y_ref[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(y, attn(x, mask=mask, causal=causal), atol=1e-5, rtol=0)  # explicit == SDPA path
    pw = attn.get_projection_weights()
    v = (x @ pw["v_w"].T + pw["v_b"]).view(B, N, HEADS, E).transpose(1, 2)
    yv = (w @ v).transpose(1, 2).reshape(B, N, DIM) @ pw["o_w"].T + pw["o_b"]
    torch.testing.assert_close(yv[real], y[real], atol=1e-5, rtol=0)
    rq = real[:, None, :, None].expand_as(w)
    ratio = w / dmap  # one positive factor per (element, head, query): the normalisation
    row = (dmap @ v).square().mean(-1, keepdim=True).add(1e-5).rsqrt() * (1 - attn.lambda_init)
    nz = rq & (dmap.abs() > 1e-6)
    torch.testing.assert_close(ratio[nz], row.expand_as(w)[nz], atol=0, rtol=1e-4)  # fp32 quotient: rtol 1e-4
    sums = dmap.sum(-1)[real[:, None, :].expand(B, HEADS, N)]
    torch.testing.assert_close(sums, (1 - lam.detach()).expand_as(sums), atol=1e-5, rtol=0)
    if causal:
        assert w.triu(1).abs().max() == 0


def test_gradient_flows_into_lambda_and_matches_reference():
    """lambda's four vectors (and every projection) get the reference's gradients (atol 1e-5, fp32)."""
    attn = make()
    x = torch.randn(B, N, DIM)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, -5:] = False  # right padding: every query keeps a real key, so the -inf reference has no empty row
    g = torch.randn(B, N, DIM) * mask[..., None]  # real outputs only
    (attn(x, mask=mask, causal=True) * g).sum().backward()
    got = {n: p.grad.clone() for n, p in attn.named_parameters()}
    attn.zero_grad()
    # the reference, differentiable through the same parameters (get_projection_weights detaches: rebuild inline)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    y_ref = _reference_live(attn, q, k, v, mask, True)
    (y_ref * g).sum().backward()
    for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
        assert got[name].abs().sum() > 0, f"{name}: no gradient"
    for name, p in attn.named_parameters():
        torch.testing.assert_close(got[name], p.grad, atol=1e-5, rtol=1e-4, msg=lambda s, n=name: f"{n}: {s}")


def _reference_live(attn, q, k, v, mask, causal):
    """The paper's equations on live (differentiable) projections."""
    n = q.shape[1]
    q, k, v = (t.view(B, n, HEADS, E).transpose(1, 2) for t in (q, k, v))
    lam = torch.exp(torch.dot(attn.lambda_q1, attn.lambda_k1)) - torch.exp(torch.dot(attn.lambda_q2, attn.lambda_k2)) \
        + attn.lambda_init
    allowed = mask[:, None, None, :] & (torch.ones(n, n, dtype=torch.bool).tril() if causal else True)

    def smap(qi, ki):
        return (qi @ ki.transpose(-2, -1) / math.sqrt(E // 2)).masked_fill(~allowed, float("-inf")).softmax(-1)

    head = (smap(q[..., : E // 2], k[..., : E // 2]) - lam * smap(q[..., E // 2 :], k[..., E // 2 :])) @ v
    head = (1 - attn.lambda_init) * head / torch.sqrt(head.square().mean(-1, keepdim=True) + 1e-5)
    return attn.out(head.transpose(1, 2).reshape(B, n, DIM))


def test_token_by_token_decoding_equals_reference_and_cache_size():
    """Stepping one position at a time equals the reference's causal outputs (atol 1e-5); the cache holds K1, K2
    (e/2 each) and V (e) per head and position: 2 e floats, the size of softmax's cache."""
    attn = make().eval()
    x = torch.randn(B, N, DIM)
    with torch.no_grad():
        y_ref = reference(attn, x, causal=True)[0]
        state, outs = None, []
        for i in range(N):
            y, state = attn.step(x[:, i : i + 1], state)
            outs.append(y)
            assert attn.state_bytes(state) == B * HEADS * (i + 1) * 2 * E * 4
        torch.testing.assert_close(torch.cat(outs, 1), y_ref, atol=1e-5, rtol=0)


def test_bad_options_are_one_sentence():
    for opts, words in (({"depth": 0}, ["depth", "0"]), ({"lambda_init": 1.0}, ["lambda_init", "1.0"]),
                        ({"lambda_init": float("nan")}, ["lambda_init", "nan"])):
        with pytest.raises(ValueError) as ei:
            make(**opts)
        assert "\n" not in str(ei.value) and all(w in str(ei.value) for w in words), str(ei.value)
    with pytest.raises(ValueError, match="heads.*even.*dim=12.*heads=4"):  # head width 3 has no two halves
        build_attention("diff", 12, 4)
