"""The Synthesizer (Tay et al. 2021) in its four forms against an independent reference written here from
the paper's definitions: dense (S_i = W2 relu(W1 x_i + b1) + b2), random (S = R), factorised dense (the
tiled A times the repeated B, a b >= max_len) and factorised random (R = R1 R2^T); then softmax over the
allowed keys and the weights times V. The registry-wide tests (tests/test_attention.py, tests/test_flops.py)
cover the default (dense) form; this file runs the properties that differ between forms on each of them.
Sizes: B = 2, n = 18, d = 32, 4 heads, max_len 24. Tolerances: fp32 1e-5 unless stated.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.attention import build_attention
from profiling import counted_flops

B, N, DIM, HEADS, MAX_LEN = 2, 18, 32, 4, 24

FORMS = {
    "dense": dict(kind="dense"),
    "dense-factorized": dict(kind="dense", factorized=True),
    "random": dict(kind="random"),
    "random-factorized": dict(kind="random", factorized=True, rank=3),
    "random-fixed": dict(kind="random", fixed=True),
    "random-factorized-fixed": dict(kind="random", factorized=True, rank=3, fixed=True),
}


def make(form, seed=0, **kw):
    torch.manual_seed(seed)
    return build_attention("synthesizer", DIM, HEADS, max_seq_len=MAX_LEN, **{**FORMS[form], **kw})


def reference_scores(attn, x):
    """(B, h, n, n) synthesized scores from the paper's definitions, no padding (positions = ranks)."""
    n, h, e = x.shape[1], attn.heads, attn.head_dim
    if attn.kind == "random":
        R = attn.r1 @ attn.r2.transpose(-2, -1) if attn.factorized else attn.r  # (h, max_len, max_len)
        return R[:, :n, :n].expand(x.shape[0], h, n, n)
    hid = F.relu(x @ attn.hidden.weight.T + attn.hidden.bias).view(x.shape[0], n, h, e).transpose(1, 2)
    if not attn.factorized:
        return hid @ attn.w2[:, :, :n] + attn.b2[:, None, :n]
    A = hid @ attn.w_a + attn.b_a[:, None]  # (B, h, n, a)
    Bm = hid @ attn.w_b + attn.b_b[:, None]  # (B, h, n, b)
    a, b = A.shape[-1], Bm.shape[-1]
    assert a * b >= MAX_LEN
    full = A.repeat(1, 1, 1, b) * Bm.repeat_interleave(a, dim=-1)  # H_A(A) * H_B(B): (B, h, n, a b)
    return full[..., :n]


def reference(attn, x, mask=None, causal=False):
    """Output and weights for real queries: padding removed per element, scores from the unpadded tokens."""
    outs, weights = [], []
    for i in range(x.shape[0]):
        real = torch.ones(x.shape[1], dtype=torch.bool) if mask is None else mask[i]
        xr = x[i : i + 1, real]
        n = xr.shape[1]
        s = reference_scores(attn, xr)
        if causal:
            s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        w = s.softmax(-1)  # (1, h, n, n)
        v = (xr @ attn.value.weight.T + attn.value.bias).view(1, n, attn.heads, -1).transpose(1, 2)
        y = (w @ v).transpose(1, 2).reshape(1, n, DIM) @ attn.out.weight.T + attn.out.bias
        outs.append(y[0])
        weights.append(w[0])
    return outs, weights


def mixed_mask():
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, [0, 1, 5, 9, 10, 17]] = False  # left, middle and right padding
    return mask


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("form", FORMS)
def test_matches_reference(form, causal, masked):
    """Outputs and returned weights equal the paper's definition, padding removed (fp32, 1e-5); the returned
    weights are zero on padding keys and (causal) above the diagonal."""
    attn = make(form)
    x = torch.randn(B, N, DIM)
    mask = mixed_mask() if masked else None
    real = mask if masked else torch.ones(B, N, dtype=torch.bool)
    y, w = attn(x, mask=mask, causal=causal, return_weights=True)
    assert y.shape == (B, N, DIM) and w.shape == (B, HEADS, N, N)
    ref_y, ref_w = reference(attn, x, mask, causal)
    for i in range(B):
        r = real[i]
        torch.testing.assert_close(y[i, r], ref_y[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w[i][:, r][:, :, r], ref_w[i], atol=1e-6, rtol=1e-5)
        assert (w[i][:, r][:, :, ~r] == 0).all()  # padding keys get no weight
    if causal:
        assert w.triu(diagonal=1).abs().max() == 0


@pytest.mark.parametrize("form", ["random", "random-fixed"])
def test_random_weights_are_softmax_of_R(form):
    """The random synthesizer applies exactly softmax(R[:n, :n]) (masked), the same for every input."""
    attn = make(form)
    x1, x2 = torch.randn(B, N, DIM), 5 * torch.randn(B, N, DIM)
    _, w1 = attn(x1, return_weights=True)
    _, w2 = attn(x2, return_weights=True)
    expected = attn.r[:, :N, :N].softmax(-1)
    torch.testing.assert_close(w1, expected.expand_as(w1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w2, w1, atol=0, rtol=0)
    # masked: columns of padding keys are dropped and the real ones renormalised, by rank
    m = torch.ones(1, N, dtype=torch.bool)
    m[0, :3] = False
    _, wm = attn(x1[:1], mask=m, return_weights=True)
    L = N - 3
    torch.testing.assert_close(wm[0][:, 3:, 3:], attn.r[:, :L, :L].softmax(-1), atol=1e-6, rtol=1e-6)


def test_factorized_random_equals_its_full_product():
    """A factorised random synthesizer equals a plain one whose R is R1 R2^T (fp32, 1e-5)."""
    fac, full = make("random-factorized"), make("random")
    with torch.no_grad():
        full.r.copy_(fac.r1 @ fac.r2.transpose(-2, -1))
        full.load_projection_weights(fac.get_projection_weights())
    x, mask = torch.randn(B, N, DIM), mixed_mask()
    for causal in (False, True):
        torch.testing.assert_close(fac(x, mask=mask, causal=causal), full(x, mask=mask, causal=causal), atol=1e-5, rtol=1e-5)


def test_factorized_dense_equals_its_full_product():
    """A factorised dense synthesizer equals a plain dense one whose W2, b2 hold the tiled-times-repeated
    product: S_ij = (B_i)_(j // a) (A_i)_(j % a) is bilinear in hid, so compare the scores directly."""
    fac = make("dense-factorized")
    x = torch.randn(B, N, DIM)
    s = fac._dense_scores(x, N)
    hid = F.relu(fac.hidden(x)).view(B, N, HEADS, -1).transpose(1, 2)
    A, Bm = hid @ fac.w_a + fac.b_a[:, None], hid @ fac.w_b + fac.b_b[:, None]
    j = torch.arange(N)
    torch.testing.assert_close(s, Bm[..., j // fac.a] * A[..., j % fac.a], atol=1e-6, rtol=1e-6)
    assert fac.a * fac.b >= MAX_LEN and fac.a == 5 and fac.b == 5  # ceil(sqrt(24)) = 5, ceil(24 / 5) = 5


@pytest.mark.parametrize("form", ["dense", "dense-factorized"])
def test_dense_row_depends_on_its_own_token_only(form):
    """Row i of the dense synthesizer's weights depends on token i alone: changing token j changes row j
    and no other row."""
    attn = make(form)
    x = torch.randn(1, N, DIM)
    _, w = attn(x, return_weights=True)
    for j in (0, 7, N - 1):
        x2 = x.clone()
        x2[0, j] = torch.randn(DIM)
        _, w2 = attn(x2, return_weights=True)
        others = torch.arange(N) != j
        torch.testing.assert_close(w2[:, :, others], w[:, :, others], atol=0, rtol=0)
        assert (w2[:, :, j] - w[:, :, j]).abs().max() > 1e-4


@pytest.mark.parametrize("form", FORMS)
def test_causal_no_future_leak(form):
    attn = make(form)
    x = torch.randn(1, N, DIM)
    y = attn(x, causal=True)
    for j in (0, 5, N - 1):
        x2 = x.clone()
        x2[0, j] += torch.randn(DIM)
        y2 = attn(x2, causal=True)
        torch.testing.assert_close(y2[0, :j], y[0, :j], atol=1e-6, rtol=1e-5)
        assert (y2[0, j:] - y[0, j:]).abs().max() > 1e-4


@pytest.mark.parametrize("where", ["left", "middle", "right"])
@pytest.mark.parametrize("form", FORMS)
def test_padding_anywhere_equals_unpadded(form, where):
    """Rows and columns by rank: real outputs of a padded sequence are the unpadded outputs (1e-5)."""
    attn = make(form)
    real = torch.ones(N, dtype=torch.bool)
    real[{"left": slice(0, 5), "middle": slice(6, 11), "right": slice(N - 5, N)}[where]] = False
    xr = torch.randn(1, int(real.sum()), DIM)
    xp = 3 * torch.randn(1, N, DIM)
    xp[0, real] = xr[0]
    for causal in (False, True):
        torch.testing.assert_close(attn(xp, mask=real[None], causal=causal)[0, real], attn(xr, causal=causal)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_gradients_and_fixed_matrix(form):
    """Every trainable parameter gets a gradient; a fixed R (or R1, R2) is a buffer and never trained."""
    attn = make(form)
    x = torch.randn(B, N, DIM, requires_grad=True)
    attn(x, mask=mixed_mask()).square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    names = {name for name, _ in attn.named_parameters()}
    buffers = {name for name, _ in attn.named_buffers()}
    if attn.kind == "random":
        held = {"r1", "r2"} if attn.factorized else {"r"}
        assert held <= (buffers if attn.fixed else names) and not held & (names if attn.fixed else buffers)
        assert held <= set(attn.state_dict())  # saved in checkpoints either way


@pytest.mark.parametrize("form", FORMS)
def test_flops_equal_counted(form):
    """Analytic FLOPs equal the counter's exactly (integer counts of the same matmuls), forward, causal and
    forward + backward, for every form (the registry-wide test covers only the default, dense); max_len 128."""
    torch.manual_seed(0)
    attn = build_attention("synthesizer", 64, 4, max_seq_len=128, **FORMS[form])
    assert counted_flops(lambda: attn(torch.randn(2, 100, 64))) == attn.flops(100, 2)
    assert counted_flops(lambda: attn(torch.randn(2, 77, 64), causal=True)) == attn.flops(77, 2, causal=True)
    x = torch.randn(2, 100, 64, requires_grad=True)
    assert counted_flops(lambda: attn(x), backward=True) == attn.flops(100, 2, backward=True)


@pytest.mark.parametrize("form", FORMS)
def test_bf16_autocast_finite_and_close(form):
    attn = make(form)
    x, mask = torch.randn(B, N, DIM), mixed_mask()
    y32 = attn(x, mask=mask, causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = attn(x, mask=mask, causal=True)
    assert torch.isfinite(y16).all()
    # bf16 unit roundoff 2^-9; two matmuls and the projections: relative error < 2e-2
    assert ((y16.float() - y32)[mask].norm() / y32[mask].norm()) < 2e-2


def _raises(fn, *words):
    with pytest.raises(ValueError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("form", FORMS)
def test_longer_than_max_len_refused(form):
    attn = make(form)
    _raises(lambda: attn(torch.randn(1, MAX_LEN + 1, DIM)), str(MAX_LEN + 1), str(MAX_LEN), "max_seq_len")
    assert attn(torch.randn(1, MAX_LEN, DIM)).shape == (1, MAX_LEN, DIM)


def test_bad_options():
    _raises(lambda: build_attention("synthesizer", DIM, HEADS, kind="dense", fixed=True), "fixed", "random", "'dense'")
    _raises(lambda: build_attention("synthesizer", DIM, HEADS, kind="gaussian"), "kind", "dense, random", "'gaussian'")
    _raises(lambda: build_attention("synthesizer", DIM, HEADS, rank=-1), "rank", "-1")
    attn = make("dense")
    w = attn.get_projection_weights()
    assert w["q_w"].shape == (0, DIM) and w["k_w"].shape == (0, DIM)  # no query or key
    _raises(lambda: attn.load_projection_weights({**w, "q_w": torch.ones(DIM, DIM)}), "query", "q_w")
