"""Property tests for every registered attention mechanism.

Tests are parametrized over `list_attentions()` and skip on the declared capability flags
(supports_mask, supports_causal, has_weights, exact, max_seq_len); a newly registered mechanism is
picked up automatically. What they build comes from the mechanism's own declarations: its
`example_options` (small settings) and `bad_options` (values it refuses), plus bad values derived
from its options' defaults; `test_mechanism_declares_what_the_tests_need` checks those declarations.
Mechanism names appear only in the convergence / option tests specific to one mechanism (these skip
while it is not registered).
Tests marked slow (benchmark-sized) run with `make test-slow`.

Default sizes: B=2, n=18, d=32, h=4 (head dim 8). n=18 is deliberately not a multiple of the small
chunk / landmark sizes below, so padding-to-a-multiple code paths run too.
All comparisons are in fp32 unless stated; tolerances are given next to each assertion.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.attention import (
    Attention,
    attention_options,
    build_attention,
    capabilities,
    get_attention,
    list_attentions,
    register_attention,
)

B, N, DIM, HEADS = 2, 18, 32, 4

# The options every mechanism takes through Attention.__init__; tested for all of them in BAD_COMMON_ARGS.
COMMON_OPTIONS = ("causal", "dropout", "bias")
# The longest sequence a test builds from `example_options` (tests/test_flops.py counts FLOPs at 250).
LONGEST_TEST_SEQ = 256

ALL = list_attentions()
EXACT = [n for n in ALL if get_attention(n).exact]


def make(name, dim=DIM, heads=HEADS, seed=0, **overrides):
    opts = {**get_attention(name).example_options, **overrides}
    torch.manual_seed(seed)
    return build_attention(name, dim, heads, **opts)


def cls_of(name):
    return get_attention(name)


def need(name, flag):
    if not getattr(cls_of(name), flag):
        pytest.skip(f"{name}: {flag} is False")


def need_causal(name, causal):
    if causal:
        need(name, "supports_causal")


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def pad_mask(n, n_pad, where):
    """(n,) bool, True = real token; `n_pad` padding positions at the right / left / middle."""
    m = torch.ones(n, dtype=torch.bool)
    if where == "right":
        m[n - n_pad :] = False
    elif where == "left":
        m[:n_pad] = False
    elif where == "middle":
        s = (n - n_pad) // 2
        m[s : s + n_pad] = False
    else:
        raise AssertionError(where)
    return m


def share_weights(src, dst):
    dst.load_projection_weights(src.get_projection_weights())
    return dst


def manual_qkv(attn, x):
    """Q, K, V (B, h, n, e) computed from `get_projection_weights` (the mechanism-independent view)."""
    w = attn.get_projection_weights()

    def lin(key):
        y = x @ w[f"{key}_w"].T
        if w[f"{key}_b"] is not None:
            y = y + w[f"{key}_b"]
        Bx, n, d = y.shape
        return y.view(Bx, n, attn.heads, d // attn.heads).transpose(1, 2)

    return lin("q"), lin("k"), lin("v"), w


# =========================================================================== basic properties


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", ALL)
def test_shape_and_finite(name, causal):
    need_causal(name, causal)
    attn = make(name)
    x = torch.randn(B, N, DIM)
    y = attn(x, causal=causal)
    assert y.shape == (B, N, DIM) and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    # also at a short length (n=5, shorter than the chunks and 4 * the landmarks above)
    y5 = attn(torch.randn(3, 5, DIM), causal=causal)
    assert y5.shape == (3, 5, DIM) and torch.isfinite(y5).all()


@pytest.mark.parametrize("name", ALL)
def test_capabilities_declared(name):
    caps = capabilities()[name]
    assert set(caps) == {"mask", "padding_anywhere", "causal", "always_causal", "weights", "weights_are_distributions",
                         "exact", "decoding"}
    assert all(isinstance(v, bool) for v in caps.values())
    attn = make(name)
    assert attn.max_seq_len is None or (isinstance(attn.max_seq_len, int) and attn.max_seq_len > 0)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter(name, causal):
    need_causal(name, causal)
    attn = make(name)
    x = torch.randn(B, N, DIM, requires_grad=True)
    y = attn(x, causal=causal)
    (y * torch.randn_like(y)).sum().backward()  # touches every output
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    params = [(n, p) for n, p in attn.named_parameters() if p.requires_grad]
    assert params, "mechanism has no trainable parameters"
    for pname, p in params:
        assert p.grad is not None, f"{pname}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname}: non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname}: gradient is all zero"


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", ALL)
def test_batch_elements_independent(name, causal, masked):
    need_causal(name, causal)
    if masked:
        need(name, "supports_mask")
    attn = make(name)
    x = torch.randn(B, N, DIM)
    mask = None
    if masked:
        mask = torch.ones(B, N, dtype=torch.bool)
        mask[0, -4:] = False
        mask[1, :6] = False
    y = attn(x, mask=mask, causal=causal)
    x2 = x.clone()
    x2[1] = 3 * torch.randn(N, DIM)
    mask2 = None
    if masked:
        mask2 = mask.clone()
        mask2[1] = torch.rand(N) > 0.5
    y2 = attn(x2, mask=mask2, causal=causal)
    # element 0 must not see element 1: equal up to float rounding (atol 1e-6, outputs are O(0.1-1))
    torch.testing.assert_close(y2[0], y[0], atol=1e-6, rtol=1e-5)


# =========================================================================== padding


@pytest.mark.parametrize("where", ["right", "left", "middle"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", ALL)
def test_padding_content_ignored(name, causal, where):
    """Outputs of real tokens do not depend on what the padding tokens hold."""
    need(name, "supports_mask")
    need_causal(name, causal)
    attn = make(name)
    m = pad_mask(N, 5, where)
    mask = torch.stack([m, torch.ones(N, dtype=torch.bool)])
    x = torch.randn(B, N, DIM)
    x2 = x.clone()
    x2[0, ~m] = 5 * torch.randn(int((~m).sum()), DIM)  # large garbage
    y, y2 = attn(x, mask=mask, causal=causal), attn(x2, mask=mask, causal=causal)
    # atol 1e-5 / rtol 1e-4: only float rounding may differ
    torch.testing.assert_close(y2[0, m], y[0, m], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(y2[1], y[1], atol=1e-5, rtol=1e-4)


PAD_CASES = [("right", False), ("right", True), ("left", False), ("left", True), ("middle", False)]


def _pad_params():
    out = []
    for name in ALL:
        for where, causal in PAD_CASES:
            out.append(pytest.param(name, where, causal, id=f"{name}-{where}-{'causal' if causal else 'full'}"))
    return out


@pytest.mark.parametrize("name,where,causal", _pad_params())
def test_padded_equals_unpadded(name, where, causal):
    """Real-token outputs of a sequence padded with random garbage (mask False) equal the outputs of
    the unpadded sequence (right padding; left padding also causal; middle padding non-causal)."""
    need(name, "supports_mask")
    need_causal(name, causal)
    attn = make(name)
    if where == "middle" and not attn.padding_anywhere:
        pytest.skip(f"{name}: padding_anywhere is False (padding must sit at the ends)")
    n_real, n_pad = 13, 5
    m = pad_mask(n_real + n_pad, n_pad, where)
    x_real = torch.randn(1, n_real, DIM)
    xp = 2 * torch.randn(2, n_real + n_pad, DIM)  # element 0: garbage at padding; element 1: all real
    xp[0, m] = x_real[0]
    mask = torch.stack([m, torch.ones_like(m)])
    y_pad = attn(xp, mask=mask, causal=causal)[0, m]
    y_ref = attn(x_real, causal=causal)[0]
    # atol 1e-5 / rtol 1e-4: same maths on a different layout, float rounding only
    torch.testing.assert_close(y_pad, y_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", ALL)
def test_fully_masked_element_finite(name, causal):
    """An element whose mask is all False gives finite outputs and gradients; others unaffected."""
    need(name, "supports_mask")
    need_causal(name, causal)
    attn = make(name)
    x = torch.randn(B, N, DIM, requires_grad=True)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1] = False
    y = attn(x, mask=mask, causal=causal)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters() if p.grad is not None)
    y0 = attn(x[:1].detach(), causal=causal)[0]
    torch.testing.assert_close(y[0].detach(), y0, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_causal_left_padding_finite(name):
    """Causal + left padding: padding queries at the start have no allowed key; still finite."""
    need(name, "supports_mask")
    need(name, "supports_causal")
    attn = make(name)
    x = torch.randn(B, N, DIM, requires_grad=True)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, :7] = False
    y = attn(x, mask=mask, causal=True)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


# =========================================================================== causality


@pytest.mark.parametrize("name", ALL)
def test_causal_no_future_leak(name):
    need(name, "supports_causal")
    attn = make(name)
    x = torch.randn(1, N, DIM)
    y = attn(x, causal=True)
    for j in [0, 1, 7, 8, N // 2, N - 1]:  # 7/8: both sides of a chunk boundary for chunk=8
        x2 = x.clone()
        x2[0, j] += torch.randn(DIM)
        y2 = attn(x2, causal=True)
        # i < j: unchanged up to float rounding (atol 1e-6)
        torch.testing.assert_close(y2[0, :j], y[0, :j], atol=1e-6, rtol=1e-5, msg=lambda s, j=j: f"j={j}: {s}")
        # i = j always sees token j, so it must change; overall i >= j must change
        assert (y2[0, j] - y[0, j]).abs().max() > 1e-4, f"output at i=j={j} did not change"
        assert (y2[0, j:] - y[0, j:]).abs().max() > 1e-4


@pytest.mark.parametrize("name", ALL)
def test_non_causal_sees_the_future_unless_always_causal(name):
    """Non-causal attention lets a later token change earlier outputs; a mechanism that declares always_causal
    (a recurrence over positions) runs causally whatever it is asked: its full and causal outputs agree."""
    attn = make(name)
    x = torch.randn(1, N, DIM)
    y = attn(x)
    if cls_of(name).always_causal:
        assert cls_of(name).supports_causal, f"{name}: always_causal without supports_causal"
        torch.testing.assert_close(y, attn(x, causal=True), atol=1e-6, rtol=1e-5)  # the same computation
    else:
        x2 = x.clone()
        x2[0, -1] += torch.randn(DIM)
        assert (attn(x2)[0, :-1] - y[0, :-1]).abs().max() > 1e-4, "the last token changed no earlier output"


@pytest.mark.parametrize("name", ALL)
def test_causal_flag_at_construction_equals_forward_flag(name):
    need(name, "supports_causal")
    a = make(name, causal=True)
    b = make(name)  # same seed, same weights
    x = torch.randn(B, N, DIM)
    torch.testing.assert_close(a(x), b(x, causal=True), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a(x, causal=False), b(x), atol=1e-6, rtol=1e-5)


# =========================================================================== exact mechanisms agree


def _mixed_mask():
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, [0, 1, 5, 9, 10, 17]] = False  # left, middle and right padding
    return mask


EXACT_PAIRS = list(itertools.combinations(EXACT, 2))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("a,b", EXACT_PAIRS, ids=[f"{a}-{b}" for a, b in EXACT_PAIRS])
def test_exact_mechanisms_agree(a, b, causal, masked):
    ma = make(a)
    mb = share_weights(ma, make(b, seed=1))
    x = torch.randn(B, N, DIM)
    mask = _mixed_mask() if masked else None
    real = mask if masked else torch.ones(B, N, dtype=torch.bool)
    if masked and not (cls_of(a).supports_mask and cls_of(b).supports_mask):
        pytest.skip("supports_mask is False")
    if causal and not (cls_of(a).supports_causal and cls_of(b).supports_causal):
        pytest.skip("supports_causal is False")
    ya, yb = ma(x, mask=mask, causal=causal), mb(x, mask=mask, causal=causal)
    # outputs (fused vs explicit paths) agree within 1e-5 in fp32 at real positions
    torch.testing.assert_close(ya[real], yb[real], atol=1e-5, rtol=0)
    if cls_of(a).has_weights and cls_of(b).has_weights:
        ya2, wa = ma(x, mask=mask, causal=causal, return_weights=True)
        yb2, wb = mb(x, mask=mask, causal=causal, return_weights=True)
        # weights (B, h, n, n) agree within 1e-5 for real queries
        rq = real[:, None, :, None].expand_as(wa)
        torch.testing.assert_close(wa[rq], wb[rq], atol=1e-5, rtol=0)
        # the explicit weights path agrees with the weight-free (fused) path
        torch.testing.assert_close(ya2[real], ya[real], atol=1e-5, rtol=0)
        torch.testing.assert_close(yb2[real], yb[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", EXACT)
def test_exact_agree_in_eval_mode(name):
    """eval() may take other kernels (e.g. nn.MultiheadAttention's fast path)."""
    ref = make(EXACT[0])
    other = share_weights(ref, make(name, seed=1)).eval()
    x = torch.randn(B, N, DIM)
    mask = _mixed_mask()
    with torch.no_grad():
        for causal in (False, True):
            y, yr = other(x, mask=mask, causal=causal), ref(x, mask=mask, causal=causal)
            torch.testing.assert_close(y[mask], yr[mask], atol=1e-5, rtol=0)


# =========================================================================== returned weights


def _weights_case(name, causal, masked):
    """A mechanism that returns weights, run on a (possibly padded) batch: attn, x, mask, real, y, w."""
    need(name, "has_weights")
    need_causal(name, causal)
    if masked:
        need(name, "supports_mask")
    attn = make(name)
    x = torch.randn(B, N, DIM)
    mask = _mixed_mask() if masked else None
    real = mask if masked else torch.ones(B, N, dtype=torch.bool)
    y, w = attn(x, mask=mask, causal=causal, return_weights=True)
    assert w.shape == (B, HEADS, N, N)
    assert torch.isfinite(w).all()
    return attn, x, mask, real, y, w


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", ALL)
def test_weights_row_stochastic(name, causal, masked):
    attn, x, mask, real, y, w = _weights_case(name, causal, masked)
    wr = w.permute(0, 2, 1, 3)[real]  # (real queries, h, n)
    if attn.weights_are_distributions:
        assert (wr >= -1e-7).all(), f"negative weight (min {wr.min().item():.3g}): not a distribution"
        # rows sum to 1 within 1e-5 for real queries; an approximation with a non-negative (ReLU) feature map
        # may also return an all-zero row, for a query with no positive similarity to any key (its 0/0 is 0)
        sums = wr.sum(-1)
        ok = (sums - 1).abs() <= 1e-5
        if not attn.exact:
            ok |= wr.abs().amax(-1) == 0
        assert ok.all(), f"rows not summing to 1: {sums[~ok][:5].tolist()}"
    # matrices that are not distributions (Nystrom's, diff's difference of two maps) are checked by their own
    # tests; here, as for all, only that they are the matrix applied (below) and respect padding and causality
    if masked:  # zero (<= 1e-7) on masked keys for real queries
        keymask = (~mask)[:, None, None, :].expand_as(w) & real[:, None, :, None]
        assert w[keymask].abs().max() <= 1e-7
    if causal:  # zero above the diagonal
        assert w.triu(diagonal=1).abs().max() <= 1e-7


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", ALL)
def test_weights_are_the_applied_matrix(name, causal, masked):
    """The returned (B, h, n, n) matrix is the one applied: out = O(merge(w @ V)) (atol 1e-5)."""
    attn, x, mask, real, y, w = _weights_case(name, causal, masked)
    torch.testing.assert_close(attn(x, mask=mask, causal=causal), y, atol=1e-6, rtol=1e-5)  # same with/without weights
    _, _, v, pw = manual_qkv(attn, x)
    yv = (w @ v).transpose(1, 2).reshape(B, N, DIM) @ pw["o_w"].T
    if pw["o_b"] is not None:
        yv = yv + pw["o_b"]
    torch.testing.assert_close(yv[real], y[real], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", ALL)
def test_exact_weights_equal_softmax(name, causal):
    need(name, "exact")
    need(name, "has_weights")
    need_causal(name, causal)
    attn = make(name)
    x = torch.randn(B, N, DIM)
    _, w = attn(x, causal=causal, return_weights=True)
    q, k, _, _ = manual_qkv(attn, x)
    s = q @ k.transpose(-2, -1) / math.sqrt(DIM // HEADS)
    if causal:
        s = s.masked_fill(~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(w, s.softmax(-1), atol=1e-6, rtol=1e-5)  # fp32, atol 1e-6


# =========================================================================== convergence to exact softmax


def _exact_ref(approx, x, **kw):
    ref = share_weights(approx, build_attention("naive", approx.dim, approx.heads))
    return ref(x, **kw)


def _require_registered(name):
    assert name in ALL, f"{name} is not registered"  # a missing mechanism fails, never skips


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_nystromformer_weights_rows_sum_to_about_one(masked):
    """Nystrom's k1 pinv(k2) k3 is not a distribution (entries can be negative) but approximates one: rows sum
    to 1 within 2e-2 for real queries."""
    _require_registered("nystromformer")
    _, _, _, real, _, w = _weights_case("nystromformer", False, masked)
    sums = w.permute(0, 2, 1, 3)[real].sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=2e-2, rtol=0)


def test_nystromformer_exact_pinv_full_landmarks_is_exact():
    _require_registered("nystromformer")
    n = 16
    attn = make("nystromformer", landmarks=n, pinv="exact")
    x = torch.randn(B, n, DIM)
    # landmarks = n: segment means are the tokens themselves, so A pinv(A) A = A (fp32, pinv
    # amplifies rounding by cond(A)): atol 1e-4
    torch.testing.assert_close(attn(x), _exact_ref(attn, x), atol=1e-4, rtol=1e-4)


def test_nystromformer_more_landmarks_than_tokens_is_exact_with_mask():
    """landmarks >= number of real tokens: each real token is its own landmark, so with the exact
    pinv the result is exact softmax attention, padding anywhere (atol 1e-4 as above)."""
    _require_registered("nystromformer")
    attn = make("nystromformer", landmarks=32, pinv="exact")
    x = torch.randn(B, N, DIM)
    mask = _mixed_mask()
    torch.testing.assert_close(attn(x, mask=mask)[mask], _exact_ref(attn, x, mask=mask)[mask], atol=1e-4, rtol=1e-4)


def test_nystromformer_iterative_pinv_converges():
    _require_registered("nystromformer")
    n = 16
    attn = make("nystromformer", landmarks=n, pinv="iterative", pinv_iterations=30)
    x = torch.randn(B, n, DIM)
    # Newton-Schulz iterations converge quadratically once started; 30 iterations: rel. error < 1e-3
    assert rel_err(attn(x), _exact_ref(attn, x)) < 1e-3
    # and the default 6 iterations with landmarks < n is a (looser) approximation: < 0.5 relative
    attn6 = make("nystromformer", landmarks=4)
    assert rel_err(attn6(x), _exact_ref(attn6, x)) < 0.5


def test_linformer_identity_projection_is_exact():
    _require_registered("linformer")
    n = 16
    attn = make("linformer", k=n, max_seq_len=n, sharing="headwise")
    projs = [(pn, p) for pn, p in attn.named_parameters() if pn.split(".")[-1].startswith("proj")]
    assert {pn.split(".")[-1] for pn, _ in projs} == {"proj_k", "proj_v"}
    with torch.no_grad():
        for _, p in projs:
            assert p.shape == (n, n)
            p.copy_(torch.eye(n))
    x = torch.randn(B, n, DIM)
    torch.testing.assert_close(attn(x), _exact_ref(attn, x), atol=1e-5, rtol=1e-5)  # fp32, 1e-5


@pytest.mark.parametrize("sharing", ["headwise", "kv", "none"])
def test_linformer_sharing_modes_build_and_run(sharing):
    _require_registered("linformer")
    attn = make("linformer", sharing=sharing)
    y = attn(torch.randn(B, N, DIM))
    assert y.shape == (B, N, DIM) and torch.isfinite(y).all()


@pytest.mark.parametrize("window_off", [-1, 0, 5], ids=["n-1", "n", "n+5"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_local_full_window_is_exact(causal, masked, window_off):
    _require_registered("local")
    n = N
    attn = make("local", window=n + window_off)  # radius >= n-1: every query sees every key
    x = torch.randn(B, n, DIM)
    mask = _mixed_mask() if masked else None
    real = mask if masked else torch.ones(B, n, dtype=torch.bool)
    y = attn(x, mask=mask, causal=causal)
    torch.testing.assert_close(y[real], _exact_ref(attn, x, mask=mask, causal=causal)[real], atol=1e-5, rtol=1e-5)


def _banded_reference(attn, x, window, dilation, causal, mask=None):
    """Exact softmax restricted to keys j = i + dilation * t, |t| <= window (t <= 0 causal)."""
    n = x.shape[1]
    q, k, v, pw = manual_qkv(attn, x)
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # j - i
    band = (rel % dilation == 0) & (rel.abs() <= window * dilation)
    if causal:
        band &= rel <= 0
    allowed = band if mask is None else band & mask[:, None, None, :]
    s = (q @ k.transpose(-2, -1)) / math.sqrt(attn.head_dim)
    a = s.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (a @ v).transpose(1, 2).reshape(x.shape) @ pw["o_w"].T + pw["o_b"]


@pytest.mark.parametrize("window,dilation", [(1, 1), (3, 1), (5, 1), (2, 2), (3, 3), (1, 5)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_local_window_matches_banded_softmax(causal, window, dilation):
    """window < n: equals exact softmax over |i-j| <= window (causal: i-window <= j <= i), dilated
    windows over j = i + dilation * t; with a right/left/middle padding mask too. fp32, 1e-5."""
    _require_registered("local")
    attn = make("local", window=window, dilation=dilation)
    x = torch.randn(B, N, DIM)
    torch.testing.assert_close(attn(x, causal=causal), _banded_reference(attn, x, window, dilation, causal), atol=1e-5, rtol=1e-5)
    mask = _mixed_mask()  # a real query always sees itself, so no real row is empty
    y = attn(x, mask=mask, causal=causal)
    torch.testing.assert_close(y[mask], _banded_reference(attn, x, window, dilation, causal, mask)[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hybrid_all_local_heads_equals_local(causal):
    _require_registered("hybrid")
    _require_registered("local")
    hyb = make("hybrid", local_heads=HEADS, window=3, dilations=(1,))
    loc = share_weights(hyb, make("local", window=3, seed=1))
    x = torch.randn(B, N, DIM)
    torch.testing.assert_close(hyb(x, causal=causal), loc(x, causal=causal), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hybrid_no_local_heads_equals_linear(causal):
    _require_registered("hybrid")
    _require_registered("linear")
    hyb = make("hybrid", local_heads=0)
    lin = share_weights(hyb, make("linear", seed=1))
    x = torch.randn(B, N, DIM)
    mask = _mixed_mask()
    torch.testing.assert_close(hyb(x, mask=mask, causal=causal)[mask], lin(x, mask=mask, causal=causal)[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_hybrid_heads_split_local_dilated(causal):
    """local_heads=2, dilations=(1, 2): head 0 a dense window, head 1 a dilated one (checked through
    the returned weights' support), heads 2-3 global (dense support)."""
    _require_registered("hybrid")
    w_, n = 2, N
    hyb = make("hybrid", local_heads=2, window=w_, dilations=(1, 2))
    _, w = hyb(torch.randn(1, n, DIM), causal=causal, return_weights=True)
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    causal_ok = rel <= 0 if causal else torch.ones(n, n, dtype=torch.bool)
    for head, dil in ((0, 1), (1, 2)):
        band = (rel % dil == 0) & (rel.abs() <= w_ * dil) & causal_ok
        assert (w[0, head][~band] == 0).all() and (w[0, head][band] > 0).all()
    assert (w[0, 2:][:, causal_ok] > 0).all()


@pytest.mark.parametrize("where", ["right", "left"])
def test_nystromformer_conv_padding_at_ends(where):
    """With the depthwise conv skip, padding at either end is still invariant (documented)."""
    _require_registered("nystromformer")
    attn = make("nystromformer", conv_kernel=5)
    n_real, n_pad = 13, 5
    m = pad_mask(n_real + n_pad, n_pad, where)
    x_real = torch.randn(1, n_real, DIM)
    xp = 2 * torch.randn(1, n_real + n_pad, DIM)
    xp[0, m] = x_real[0]
    torch.testing.assert_close(attn(xp, mask=m[None])[0, m], attn(x_real)[0], atol=1e-5, rtol=1e-4)


def _performer_errors(features, seeds, n=1024, dim=64, heads=2, std=1.0):
    errs = []
    for s in seeds:
        attn = make("performer", dim=dim, heads=heads, seed=s, features=features)
        g = torch.Generator().manual_seed(1000 + s)
        x = std * torch.randn(1, n, dim, generator=g)
        with torch.no_grad():
            errs.append(rel_err(attn(x), _exact_ref(attn, x)))
    return sum(errs) / len(errs)


def test_performer_error_falls_with_features():
    _require_registered("performer")
    # n = 1024, head dim 32, inputs std 1; mean over 3 seeds. FAVOR+ error ~ 1/sqrt(features), so
    # each 4x in features should roughly halve it; require a strict decrease and >= 1.5x overall.
    e = {m: _performer_errors(m, seeds=range(3)) for m in (64, 256, 1024)}
    assert e[64] > e[256] > e[1024], e
    assert e[64] > 1.5 * e[1024], e


def test_performer_redraw_changes_projection():
    _require_registered("performer")
    attn = make("performer")
    x = torch.randn(B, N, DIM)
    y0 = attn(x)
    torch.testing.assert_close(attn(x), y0)  # redraw_interval=None: no redraw between calls
    attn.redraw_projection()
    assert not torch.allclose(attn(x), y0)


def test_performer_redraw_interval():
    """redraw_interval=2: in training mode new features every 2 forward calls; never in eval mode."""
    _require_registered("performer")
    attn = make("performer", redraw_interval=2)
    x = torch.randn(B, N, DIM)
    with torch.no_grad():
        ys = [attn(x) for _ in range(5)]
        same = [torch.equal(a, b) for a, b in zip(ys, ys[1:])]
        assert same.count(False) == 2, same  # calls 1-2 same draw, 3-4 a new one, 5 another
        attn.eval()
        y = attn(x)
        assert all(torch.equal(attn(x), y) for _ in range(3))


@pytest.mark.parametrize("name", ALL)
def test_default_options_run(name):
    """The mechanisms' own defaults (what benchmarks use; example_options not applied) at n=300:
    forward/backward finite, with a padding mask and causal where supported."""
    torch.manual_seed(0)
    attn = build_attention(name, 64, 4)
    cls = cls_of(name)
    x = torch.randn(2, 300, 64, requires_grad=True)
    mask = None
    if cls.supports_mask:
        mask = torch.ones(2, 300, dtype=torch.bool)
        mask[1, 250:] = False
    for causal in (False, True) if cls.supports_causal else (False,):
        y = attn(x, mask=mask, causal=causal)
        assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_long_sequence_default_options(name):
    """n = 4096 (linformer's default max_seq_len), dim 128, 8 heads, default options: finite outputs,
    padded tail ignored (real outputs equal the unpadded run, atol 1e-4 / rtol 1e-3 at this length)."""
    torch.manual_seed(0)
    attn = build_attention(name, 128, 8)
    n = 4096
    x = torch.randn(1, n, 128)
    with torch.no_grad():
        y = attn(x)
        assert torch.isfinite(y).all()
        if cls_of(name).supports_mask:
            xp = torch.cat([x[:, : n - 96], torch.randn(1, 96, 128)], dim=1)
            mask = torch.ones(1, n, dtype=torch.bool)
            mask[0, n - 96 :] = False
            yp = attn(xp, mask=mask)
            yr = attn(x[:, : n - 96])
            torch.testing.assert_close(yp[0, : n - 96], yr[0], atol=1e-4, rtol=1e-3)
        if cls_of(name).supports_causal:
            assert torch.isfinite(attn(x, causal=True)).all()


@pytest.mark.slow
@pytest.mark.parametrize("a,b", EXACT_PAIRS, ids=[f"{a}-{b}" for a, b in EXACT_PAIRS])
def test_exact_mechanisms_agree_large(a, b):
    """Benchmark-sized: n = 1024, dim 512, 8 heads; fp32 within 1e-4 (longer reductions)."""
    ma = build_attention(a, 512, 8)
    mb = share_weights(ma, build_attention(b, 512, 8))
    x = torch.randn(1, 1024, 512)
    mask = torch.ones(1, 1024, dtype=torch.bool)
    mask[0, 900:] = False
    with torch.no_grad():
        for causal in (False, True):
            ya, yb = ma(x, mask=mask, causal=causal), mb(x, mask=mask, causal=causal)
            torch.testing.assert_close(ya[mask], yb[mask], atol=1e-4, rtol=0)


# =========================================================================== low precision


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_close_to_fp32(name, causal):
    need_causal(name, causal)
    attn = make(name)
    x = torch.randn(B, N, DIM)
    mask = _mixed_mask() if cls_of(name).supports_mask else None
    real = mask if mask is not None else torch.ones(B, N, dtype=torch.bool)
    y32 = attn(x, mask=mask, causal=causal)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = attn(x, mask=mask, causal=causal)
    assert torch.isfinite(y16).all()
    # bf16 keeps 8 mantissa bits (~3 significant digits, unit roundoff 2^-9 = 2e-3); a few matmuls
    # accumulate that (observed 3.5e-3 to 6.5e-3): relative error of the real-token outputs < 2e-2
    assert rel_err(y16.float()[real], y32[real]) < 2e-2


@pytest.mark.parametrize("name", ALL)
def test_fp16_autocast_finite(name):
    """fp16 (max 65504) overflows easily in exp-based feature maps; outputs must stay finite."""
    attn = make(name)
    x = 3 * torch.randn(B, N, DIM)  # larger inputs -> larger logits
    mask = _mixed_mask() if cls_of(name).supports_mask else None
    with torch.autocast("cpu", dtype=torch.float16):
        y = attn(x, mask=mask)
        assert torch.isfinite(y).all()
        if cls_of(name).supports_causal:
            assert torch.isfinite(attn(x, mask=mask, causal=True)).all()


# =========================================================================== bad input


def _raises(fn, *words):
    with pytest.raises(ValueError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg, f"not one sentence: {msg}"
    for word in words:
        assert word in msg, f"{word!r} not in message: {msg}"
    return msg


@pytest.mark.parametrize("name", ALL)
def test_bad_x_rank(name):
    attn = make(name)
    _raises(lambda: attn(torch.randn(N, DIM)), "x", str((N, DIM)))
    _raises(lambda: attn(torch.randn(1, 1, N, DIM)), "x", str((1, 1, N, DIM)))


@pytest.mark.parametrize("name", ALL)
def test_bad_x_last_dim(name):
    attn = make(name)
    _raises(lambda: attn(torch.randn(B, N, DIM - 1)), "x", str(DIM - 1), str(DIM))


@pytest.mark.parametrize("name", ALL)
def test_seq_longer_than_max_seq_len(name):
    attn = make(name)
    if attn.max_seq_len is None:
        pytest.skip(f"{name}: max_seq_len is None (unbounded)")
    L = attn.max_seq_len
    _raises(lambda: attn(torch.randn(1, L + 1, DIM)), str(L + 1), str(L))
    assert attn(torch.randn(1, L, DIM)).shape == (1, L, DIM)  # the limit itself is fine


@pytest.mark.parametrize("name", ALL)
def test_bad_mask(name):
    need(name, "supports_mask")
    attn = make(name)
    x = torch.randn(B, N, DIM)
    _raises(lambda: attn(x, mask=torch.ones(B, N - 1, dtype=torch.bool)), "mask", str((B, N - 1)))
    _raises(lambda: attn(x, mask=torch.ones(B, N, 1, dtype=torch.bool)), "mask", str((B, N, 1)))
    _raises(lambda: attn(x, mask=torch.ones(B, N)), "mask", "bool", "float32")
    _raises(lambda: attn(x, mask=torch.ones(B, N, dtype=torch.long)), "mask", "bool", "int64")


@pytest.mark.parametrize("name", ALL)
def test_mask_rejected_when_unsupported(name):
    if cls_of(name).supports_mask:
        pytest.skip(f"{name}: supports_mask is True")
    attn = make(name)
    _raises(lambda: attn(torch.randn(B, N, DIM), mask=torch.ones(B, N, dtype=torch.bool)), "mask")


@pytest.mark.parametrize("name", ALL)
def test_heads_must_divide_dim(name):
    _raises(lambda: make(name, dim=30, heads=4), "heads", "30", "4")


@pytest.mark.parametrize("name", ALL)
def test_return_weights_rejected_when_unsupported(name):
    if cls_of(name).has_weights:
        pytest.skip(f"{name}: has_weights is True")
    attn = make(name)
    _raises(lambda: attn(torch.randn(B, N, DIM), return_weights=True), "weights")


@pytest.mark.parametrize("name", ALL)
def test_causal_rejected_when_unsupported(name):
    if cls_of(name).supports_causal:
        pytest.skip(f"{name}: supports_causal is True")
    causal_ok = [n for n in ALL if cls_of(n).supports_causal]
    msg = _raises(lambda: make(name, causal=True), name)
    assert any(n in msg for n in causal_ok), f"no causal alternative named in: {msg}"
    attn = make(name)
    _raises(lambda: attn(torch.randn(B, N, DIM), causal=True), name)


def test_unknown_mechanism_lists_known_names():
    _raises(lambda: build_attention("no_such_attention", DIM, HEADS), "no_such_attention", *ALL)


@pytest.mark.parametrize("name", ALL)
def test_unknown_option_lists_valid_ones(name):
    _raises(lambda: build_attention(name, DIM, HEADS, bogus_option=1), "bogus_option", *attention_options(name))


def derived_bad_values(default):
    """Values of the wrong type for an option with this default: a whole-number float, NaN, a bool, a string or
    None where an int belongs; a non-bool for a flag; None or a number for a string choice; a string, None or
    NaN for a float. A default of None says nothing about the type: such an option declares its bad values."""
    if isinstance(default, bool):
        return ["yes", 1, None]
    if isinstance(default, int):
        return [float(default), float("nan"), True, str(default), None]
    if isinstance(default, str):
        return [None, 3]
    if isinstance(default, float):
        return [str(default), None, float("nan")]
    return []


def _bad_option_params():
    out = []
    for name in ALL:
        cases = [dict(opts) for opts in get_attention(name).bad_options]
        cases += [{key: bad} for key, default in attention_options(name).items() if key not in COMMON_OPTIONS
                  for bad in derived_bad_values(default)]
        out += [pytest.param(name, opts, id=f"{name}-{'-'.join(f'{k}={v!r}' for k, v in opts.items())}")
                for opts in cases]
    return out


@pytest.mark.parametrize("name,opts", _bad_option_params())
def test_bad_option_values(name, opts):
    ((key, value),) = opts.items()
    _raises(lambda: build_attention(name, DIM, HEADS, **opts), key, repr(value))


@pytest.mark.parametrize("name", ALL)
def test_mechanism_declares_what_the_tests_need(name):
    """The registry-wide tests build each mechanism from its own declarations; a new mechanism is tested by
    declaring them on its class (see models/attention/base.py), never by editing a table here."""
    cls, options = get_attention(name), attention_options(name)
    own = set(options) - set(COMMON_OPTIONS)
    # example_options: a dict of the mechanism's own options (an unknown key would fail every test at build time)
    assert isinstance(cls.example_options, dict), f"{name}: example_options must be a dict"
    assert set(cls.example_options) <= own, f"{name}: example_options {sorted(set(cls.example_options) - own)} " \
                                            f"are not options of its own ({sorted(own)})"
    # ... that build at the test sizes and cover the longest sequence a test uses
    attn = make(name)
    assert attn.max_seq_len is None or attn.max_seq_len >= LONGEST_TEST_SEQ, \
        f"{name}: example_options allow {attn.max_seq_len} positions, the tests use up to {LONGEST_TEST_SEQ}"
    assert isinstance(attn.flops(N), int) and attn.flops(N) > 0, f"{name}: no analytic FLOP count"
    # bad_options: one known option each
    assert isinstance(cls.bad_options, (tuple, list)), f"{name}: bad_options must be a tuple of dicts"
    for opts in cls.bad_options:
        assert isinstance(opts, dict) and len(opts) == 1 and set(opts) <= own, \
            f"{name}: each of bad_options must be one option of its own, got {opts!r}"
    # an option whose default (None) tells nothing about its type must declare at least one bad value
    declared = {key for opts in cls.bad_options for key in opts}
    untested = sorted(k for k in own if not derived_bad_values(options[k]) and k not in declared)
    assert not untested, f"{name}: declare a refused value of {untested} in bad_options"


# The arguments every mechanism takes, in the constructor, forward and flops: (overrides, argument, value shown).
BAD_COMMON_ARGS = [
    (dict(dim=None), "dim", "None"),
    (dict(dim=32.0), "dim", "32.0"),
    (dict(dim=True), "dim", "True"),
    (dict(dim=-32), "dim", "-32"),
    (dict(heads=0), "heads", "0"),
    (dict(heads=4.0), "heads", "4.0"),
    (dict(heads=float("nan")), "heads", "nan"),
    (dict(dropout=float("nan")), "dropout", "nan"),
    (dict(dropout=None), "dropout", "None"),
    (dict(dropout="0.1"), "dropout", "'0.1'"),
    (dict(dropout=1.0), "dropout", "1.0"),
    (dict(causal="yes"), "causal", "'yes'"),
    (dict(causal=None), "causal", "None"),
    (dict(bias="no"), "bias", "'no'"),
]


@pytest.mark.parametrize("overrides,arg,shown", BAD_COMMON_ARGS, ids=[f"{a}={v}" for _, a, v in BAD_COMMON_ARGS])
@pytest.mark.parametrize("name", ALL)
def test_bad_constructor_argument(name, overrides, arg, shown):
    _raises(lambda: make(name, **overrides), arg, shown)


BAD_FLOPS = [
    (dict(seq_len=-5), "seq_len", "-5"),
    (dict(seq_len=0), "seq_len", "0"),
    (dict(seq_len=2.5), "seq_len", "2.5"),
    (dict(seq_len=True), "seq_len", "True"),
    (dict(seq_len=None), "seq_len", "None"),
    (dict(seq_len=float("inf")), "seq_len", "inf"),
    (dict(seq_len="16"), "seq_len", "'16'"),
    (dict(seq_len=16, batch=0), "batch", "0"),
    (dict(seq_len=16, batch=-1), "batch", "-1"),
    (dict(seq_len=16, batch=1.5), "batch", "1.5"),
    (dict(seq_len=16, causal="x"), "causal", "'x'"),
    (dict(seq_len=16, backward="x"), "backward", "'x'"),
]


@pytest.mark.parametrize("kwargs,arg,shown", BAD_FLOPS, ids=[f"{a}={v}" for _, a, v in BAD_FLOPS])
@pytest.mark.parametrize("name", ALL)
def test_bad_flops_argument(name, kwargs, arg, shown):
    _raises(lambda: make(name).flops(**kwargs), arg, shown)


@pytest.mark.parametrize("name", ALL)
def test_flops_refuse_what_forward_refuses(name):
    """No figure for a run that cannot happen: beyond max_seq_len, or causal where the mechanism is not."""
    attn = make(name)
    if attn.max_seq_len is not None:
        L = attn.max_seq_len
        _raises(lambda: attn.flops(L + 1), str(L + 1), str(L))
        assert attn.flops(L) > 0
    if not attn.supports_causal:
        _raises(lambda: attn.flops(16, causal=True), name, "causal")


def _x():
    return torch.randn(B, N, DIM)


BAD_FORWARD = [
    ("x=None", lambda a: a(None), ("x", "NoneType")),
    ("x=list", lambda a: a([[0.0] * DIM] * N), ("x", "list")),
    ("x=int64", lambda a: a(torch.ones(B, N, DIM, dtype=torch.long)), ("x", "int64")),
    ("x=float64", lambda a: a(_x().double()), ("x", "float64", "float32")),
    ("x=float16", lambda a: a(_x().half()), ("x", "float16", "float32")),
    ("batch=0", lambda a: a(torch.randn(0, N, DIM)), ("x", "batch = 0")),
    ("seq=0", lambda a: a(torch.randn(B, 0, DIM)), ("x", "seq = 0")),
    ("x-on-meta", lambda a: a(torch.randn(B, N, DIM, device="meta")), ("x", "meta", "cpu")),
    ("causal='yes'", lambda a: a(_x(), causal="yes"), ("causal", "'yes'")),
    ("causal=1", lambda a: a(_x(), causal=1), ("causal", "1")),
    ("return_weights='no'", lambda a: a(_x(), return_weights="no"), ("return_weights", "'no'")),
]


@pytest.mark.parametrize("call,words", [(c, w) for _, c, w in BAD_FORWARD], ids=[i for i, _, _ in BAD_FORWARD])
@pytest.mark.parametrize("name", ALL)
def test_bad_forward_argument(name, call, words):
    _raises(lambda: call(make(name)), *words)


BAD_REGISTRY = [
    ("build-None", lambda: build_attention(None, DIM), ("attention", "None")),
    ("build-int", lambda: build_attention(3, DIM), ("attention", "3")),
    ("build-list", lambda: build_attention(["softmax"], DIM), ("attention", "['softmax']")),
    ("build-non-attention-class", lambda: build_attention(dict, DIM), ("attention", "dict")),
    ("get-unhashable", lambda: get_attention([]), ("attention", "[]")),
    ("options-None", lambda: attention_options(None), ("attention", "None")),
    ("register-None", lambda: register_attention(None), ("register_attention", "None")),
    ("register-empty", lambda: register_attention(""), ("register_attention", "''")),
]


@pytest.mark.parametrize("call,words", [(c, w) for _, c, w in BAD_REGISTRY], ids=[i for i, _, _ in BAD_REGISTRY])
def test_bad_registry_argument(call, words):
    before = list_attentions()
    _raises(call, *words)
    assert list_attentions() == before


def test_integer_like_sizes_are_accepted():
    """numpy integers (from a config or an array) are integers: the checks must not refuse them."""
    np = pytest.importorskip("numpy")
    attn = build_attention("softmax", np.int64(DIM), np.int32(HEADS))
    assert (attn.dim, attn.heads) == (DIM, HEADS) and type(attn.dim) is int
    assert attn.flops(np.int64(16), np.int64(2)) == attn.flops(16, 2)


def test_duplicate_registration_raises():
    before = list_attentions()
    with pytest.raises(ValueError, match="already registered"):

        @register_attention(before[0])
        class Dup(Attention):  # noqa: F841
            pass

    assert list_attentions() == before


# =========================================================================== flops


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", ALL)
def test_flops_positive_and_growing(name, causal):
    need_causal(name, causal)
    attn = make(name)
    f = [attn.flops(n, 1, causal=causal) for n in (8, 16, 32, 64)]
    assert all(isinstance(v, int) and v > 0 for v in f), f
    assert all(b > a for a, b in zip(f, f[1:])), f
    assert attn.flops(32, 3, causal=causal) == 3 * attn.flops(32, 1, causal=causal)  # linear in batch


@pytest.mark.parametrize("name", ALL)
def test_exact_flops_analytic(name):
    need(name, "exact")
    for d, h, n, b in [(32, 4, 16, 1), (64, 8, 100, 3)]:
        attn = make(name, dim=d, heads=h)
        assert attn.flops(n, b, causal=False) == 8 * b * n * d * d + 4 * b * n * n * d
