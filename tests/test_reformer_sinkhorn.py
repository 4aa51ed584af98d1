"""`reformer` and `sinkhorn` against references written here from the papers' definitions.

Reformer (Kitaev et al. 2020): the references are dense (n x n) and built from the hash codes alone:
positions sorted by (bucket, position), chunks of `bucket_size`, a query sees its bucket's keys in its
chunk and the previous one (causal: at most `bucket_size` places back in the sorted order), keys are
the unit-length queries, the token itself only when it has nothing else (the paper's m_ii = 1e5), the
rounds combined by o_i = sum_r exp(z_r(i) - z(i)) o_r(i) with m_ij = log N_ij for a pair seen in N_ij
rounds (dedup). Computed in float64, compared in fp32 within 1e-5.

Sinkhorn (Tay et al. 2020): block means, scores between query and key block summaries, Sinkhorn
normalisation in log space, each query block attending over its own block and the softly permuted
block (keys and values mixed by the sorting matrix).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.attention import build_attention

B, DIM, HEADS = 2, 32, 4
E = DIM // HEADS


def heads_of(attn, x, key):
    """(B, n, d) -> (B, h, n, e) float64 through the projection weights the module reports."""
    w = attn.get_projection_weights()
    y = x.double() @ w[f"{key}_w"].double().T
    if w[f"{key}_b"] is not None:
        y = y + w[f"{key}_b"].double()
    Bx, n, _ = y.shape
    return y.view(Bx, n, attn.heads, -1).transpose(1, 2)


def output_of(attn, y):
    """(B, h, n, e) float64 per-head outputs -> (B, n, d) through the output projection."""
    w = attn.get_projection_weights()
    Bx, h, n, e = y.shape
    out = y.transpose(1, 2).reshape(Bx, n, h * e) @ w["o_w"].double().T
    return out + w["o_b"].double() if w["o_b"] is not None else out


def mixed_mask(n):
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[1, [0, 1, 5, 9, n - 1]] = False  # left, middle and right padding
    return mask


# =========================================================================== reformer


def make_reformer(seed=0, **opts):
    torch.manual_seed(seed)
    return build_attention("reformer", DIM, HEADS, **opts)


def visibility(codes, real, chunk, causal):
    """(R, n) codes of one (batch, head), (n,) real -> (R, n, n) bool: key j in query i's set in round r."""
    R, n = codes.shape
    vis = torch.zeros(R, n, n, dtype=torch.bool)
    for r in range(R):
        order = sorted(range(n), key=lambda i: (int(codes[r, i]), i))
        slot = torch.empty(n, dtype=torch.long)
        slot[torch.tensor(order)] = torch.arange(n)
        same = codes[r][:, None] == codes[r][None, :]
        if causal:
            dist = slot[:, None] - slot[None, :]
            near = (dist >= 0) & (dist <= chunk)
        else:
            cq, ck = (slot // chunk)[:, None], (slot // chunk)[None, :]
            near = (ck == cq) | (ck == cq - 1)
        vis[r] = same & near & real[None, :]
    return vis


def reformer_reference(attn, x, mask=None, causal=False):
    """Dense LSH attention from the paper's formula (float64); also the (B, h, n, n) matrix applied."""
    Bx, n, _ = x.shape
    codes = attn.hash_codes(x, mask)  # (B, h, R, n)
    qk, v = heads_of(attn, x, "q"), heads_of(attn, x, "v")
    k = qk / qk.norm(dim=-1, keepdim=True)
    s = qk @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)  # (B, h, n, n)
    real = mask if mask is not None else torch.ones(Bx, n, dtype=torch.bool)
    out = torch.zeros_like(v)
    weights = torch.zeros_like(s)
    eye = torch.eye(n, dtype=torch.bool)
    for b in range(Bx):
        for hd in range(attn.heads):
            vis = visibility(codes[b, hd], real[b], min(attn.bucket_size, n), causal)  # (R, n, n)
            count = vis.sum(0).double()
            z, probs = [], []
            for r in range(vis.shape[0]):
                m = torch.full((n, n), math.inf, dtype=torch.float64)
                m[vis[r]] = count[vis[r]].log() if attn.dedup else 0.0
                m[eye & vis[r]] = 1e5  # the paper's m_ii: itself only when nothing else
                logits = s[b, hd] - m
                z.append(torch.logsumexp(logits, -1))
                probs.append(torch.softmax(logits, -1))
            z = torch.stack(z)  # (R, n)
            share = (z - torch.logsumexp(z, 0)).exp()  # exp(z_r - z)
            w = (share[:, :, None] * torch.stack(probs)).sum(0)
            weights[b, hd] = w
            out[b, hd] = w @ v[b, hd]
    return output_of(attn, out), weights


def test_reformer_hash_is_argmax_over_rotations():
    """h(x) = argmax([xR; -xR]) with each round's own R (columns of the rotation buffer); padding -> `buckets`."""
    attn = make_reformer(hash_rounds=3, buckets=6, bucket_size=4)
    x = torch.randn(B, 20, DIM)
    mask = mixed_mask(20)
    codes = attn.hash_codes(x, mask)
    qk = heads_of(attn, x, "q").float()
    rot = attn.rotations.view(HEADS, E, 3, 3)  # (h, e, rounds, buckets/2)
    for r in range(3):
        xr = torch.einsum("bhne,hef->bhnf", qk, rot[:, :, r])
        expect = torch.cat([xr, -xr], -1).argmax(-1)  # (B, h, n)
        expect = expect.masked_fill(~mask[:, None, :], 6)
        assert torch.equal(codes[:, :, r], expect)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_reformer_one_bucket_is_exact_shared_qk_attention(causal, masked):
    """One bucket, one round, a chunk as long as the sequence: exact softmax attention with keys = unit
    queries, the diagonal masked unless the row has nothing else (written here without the module's codes)."""
    n = 19
    attn = make_reformer(hash_rounds=1, buckets=1, bucket_size=n)
    x = torch.randn(B, n, DIM)
    mask = mixed_mask(n) if masked else None
    real = mask if masked else torch.ones(B, n, dtype=torch.bool)
    qk, v = heads_of(attn, x, "q"), heads_of(attn, x, "v")
    s = qk @ (qk / qk.norm(dim=-1, keepdim=True)).transpose(-2, -1) / math.sqrt(E)
    allowed = real[:, None, None, :].expand(B, HEADS, n, n).clone()
    if causal:
        allowed &= torch.ones(n, n, dtype=torch.bool).tril()
    eye = torch.eye(n, dtype=torch.bool)
    others = allowed & ~eye
    allowed = others | (eye & ~others.any(-1, keepdim=True))
    ref = output_of(attn, s.masked_fill(~allowed, -math.inf).softmax(-1) @ v)
    y = attn(x, mask=mask, causal=causal)
    # fp32 against float64, real positions: 1e-5
    torch.testing.assert_close(y[real], ref[real].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_reformer_buckets_equal_dense_masked_softmax(causal, masked):
    """Several buckets, one round: a dense softmax over the pairs that share a bucket within the chunk
    rule (mask built here from the hash codes), 1e-5."""
    n = 40
    attn = make_reformer(hash_rounds=1, buckets=4, bucket_size=6)
    x = torch.randn(B, n, DIM)
    mask = mixed_mask(n) if masked else None
    real = mask if masked else torch.ones(B, n, dtype=torch.bool)
    ref, w_ref = reformer_reference(attn, x, mask, causal)
    y, w = attn(x, mask=mask, causal=causal, return_weights=True)
    torch.testing.assert_close(y[real], ref[real].float(), atol=1e-5, rtol=1e-5)
    rq = real[:, None, :].expand(B, HEADS, n)
    torch.testing.assert_close(w[rq], w_ref[rq].float(), atol=1e-5, rtol=0)
    codes = attn.hash_codes(x, mask)
    assert codes.unique().numel() >= 3 + masked  # several buckets really in use (and the padding bucket)


@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "dup"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_reformer_rounds_combine_by_the_papers_formula(causal, dedup):
    """Three rounds: o_i = sum_r exp(z_r - z) o_r, m_ij = log N_ij (dedup) or 0, within 1e-5; with dedup the
    result is one softmax over the union of the rounds' key sets."""
    n = 40
    attn = make_reformer(hash_rounds=3, buckets=4, bucket_size=6, dedup=dedup)
    x = torch.randn(B, n, DIM)
    mask = mixed_mask(n)
    ref, w_ref = reformer_reference(attn, x, mask, causal)
    y, w = attn(x, mask=mask, causal=causal, return_weights=True)
    torch.testing.assert_close(y[mask], ref[mask].float(), atol=1e-5, rtol=1e-5)
    rq = mask[:, None, :].expand(B, HEADS, n)
    torch.testing.assert_close(w[rq], w_ref[rq].float(), atol=1e-5, rtol=0)
    codes = attn.hash_codes(x, mask)
    union = torch.stack([torch.stack([visibility(codes[b, hd], mask[b], 6, causal).any(0)
                                      for hd in range(HEADS)]) for b in range(B)])  # (B, h, n, n)
    eye = torch.eye(n, dtype=torch.bool)
    others = union & ~eye
    multi = torch.stack([torch.stack([visibility(codes[b, hd], mask[b], 6, causal).sum(0)
                                      for hd in range(HEADS)]) for b in range(B)])
    assert (multi[others] > 1).any() and (multi[others] == 1).any()  # some pairs repeat across rounds
    if dedup:  # the union's softmax, each key once
        qk = heads_of(attn, x, "q")
        s = qk @ (qk / qk.norm(dim=-1, keepdim=True)).transpose(-2, -1) / math.sqrt(E)
        allowed = others | (eye & ~others.any(-1, keepdim=True))
        union_w = s.masked_fill(~allowed, -math.inf).softmax(-1)
        torch.testing.assert_close(w[rq], union_w[rq].float(), atol=1e-5, rtol=0)


def test_reformer_never_builds_an_n_by_n_tensor():
    """n = 1024: no tensor the forward pass creates is larger than all rounds' scores, h rounds n 2C (n^2 / 4)."""
    n = 1024
    attn = make_reformer(hash_rounds=2, buckets=16, bucket_size=16)
    x = torch.randn(1, n, DIM)
    sizes = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    sizes.append(t.numel())
            return out

    with Record():
        attn(x, mask=torch.ones(1, n, dtype=torch.bool), causal=True)
        attn(x)
    bound = HEADS * 2 * n * 2 * 16  # every round's scores at once: h rounds n 2C, a quarter of n^2 here
    assert sizes and max(sizes) <= bound < n * n, max(sizes)


def test_reformer_eval_is_deterministic_and_redraw_draws_in_training():
    attn = make_reformer(hash_rounds=2, buckets=4, bucket_size=4, redraw=True)
    x = torch.randn(B, 24, DIM)
    with torch.no_grad():
        rot = attn.rotations.clone()
        attn(x)
        assert not torch.equal(attn.rotations, rot)  # training mode: new rotations every call
        attn.eval()
        rot = attn.rotations.clone()
        y = attn(x)
        assert torch.equal(attn.rotations, rot) and all(torch.equal(attn(x), y) for _ in range(3))
    plain = make_reformer(hash_rounds=2, buckets=4, bucket_size=4)  # redraw=False: fixed even in training
    assert torch.equal(plain(x), plain(x))
    # the same seed gives the same rotations
    assert torch.equal(make_reformer(seed=3, buckets=4).rotations, make_reformer(seed=3, buckets=4).rotations)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_reformer_bf16_autocast_at_length(causal):
    """Default options at n = 256 (several chunks and buckets in use) under bf16 autocast: finite, and
    within 3e-2 relative of fp32 (bf16 rounding can move a token to another bucket, which is allowed)."""
    torch.manual_seed(0)
    attn = build_attention("reformer", 64, 4, bucket_size=16, buckets=8, hash_rounds=4)
    x = torch.randn(1, 256, 64)
    mask = torch.ones(1, 256, dtype=torch.bool)
    mask[0, 200:] = False
    y32 = attn(x, mask=mask, causal=causal)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = attn(x, mask=mask, causal=causal)
    assert torch.isfinite(y16).all()
    assert ((y16.float() - y32)[mask].norm() / y32[mask].norm()).item() < 0.1


def test_reformer_refuses_bad_requests():
    with pytest.raises(ValueError, match="buckets must be 1 or an even number"):
        make_reformer(buckets=5)
    attn = make_reformer()
    w = attn.get_projection_weights()
    w["k_w"] = torch.randn_like(w["k_w"])
    with pytest.raises(ValueError, match="shares one query/key projection"):
        attn.load_projection_weights(w)


# =========================================================================== sinkhorn


def make_sinkhorn(seed=0, **opts):
    torch.manual_seed(seed)
    return build_attention("sinkhorn", DIM, HEADS, **opts)


def exact_reference(attn, x, mask=None, causal=False):
    q, k, v = (heads_of(attn, x, key) for key in "qkv")
    n = x.shape[1]
    allowed = torch.ones(x.shape[0], 1, n, n, dtype=torch.bool)
    if mask is not None:
        allowed &= mask[:, None, None, :]
    if causal:
        allowed &= torch.ones(n, n, dtype=torch.bool).tril()
    s = (q @ k.transpose(-2, -1) / math.sqrt(E)).masked_fill(~allowed, -math.inf)
    return output_of(attn, s.softmax(-1) @ v)


def sinkhorn_reference(attn, x, mask=None, causal=False):
    """Sparse Sinkhorn attention from the paper's steps, float64, the Sinkhorn rounds in exp space: blocks
    of `block_size` real tokens (by rank), S from exp(R / temperature) by alternate row and column
    normalisation (causal: only j < i, each column summed over the rows up to the current one), sorted
    slot t of block i = sum_j S_ij k_jt over the blocks j with a real slot t, renormalised."""
    Bx, n, _ = x.shape
    q, k, v = (heads_of(attn, x, key) for key in "qkv")
    real = mask if mask is not None else torch.ones(Bx, n, dtype=torch.bool)
    out = torch.zeros_like(q)
    for bi in range(Bx):
        pos = real[bi].nonzero()[:, 0]  # real positions in order
        blocks = [pos[i : i + attn.block_size] for i in range(0, len(pos), attn.block_size)]
        nb = len(blocks)
        for hd in range(attn.heads):
            Q, K, V = q[bi, hd], k[bi, hd], v[bi, hd]
            sk = torch.stack([K[blk].mean(0) for blk in blocks])
            if causal:  # queries up to and including the block's first token
                sq = torch.stack([Q[pos[: i * attn.block_size + 1]].mean(0) for i in range(nb)])
            else:
                sq = torch.stack([Q[blk].mean(0) for blk in blocks])
            R = sq @ sk.T / math.sqrt(E) / attn.temperature
            allow = torch.ones(nb, nb, dtype=torch.bool).tril(-1) if causal else torch.ones(nb, nb, dtype=torch.bool)
            P = (R - R.max()).exp() * allow
            for _ in range(attn.sinkhorn_iters):
                rs = P.sum(1, keepdim=True)
                P = torch.where(rs > 0, P / rs.clamp_min(1e-300), P)
                cs = P.cumsum(0) if causal else P.sum(0, keepdim=True)
                P = torch.where(cs > 0, P / cs.clamp_min(1e-300), P)
            for i, blk in enumerate(blocks):
                keys, vals = [K[blk]], [V[blk]]
                slot_keys, slot_vals = [], []
                for t in range(attn.block_size):
                    js = [j for j in range(nb) if len(blocks[j]) > t and P[i, j] > 0]
                    if js:
                        wts = torch.stack([P[i, j] for j in js])
                        slot_keys.append((wts[:, None] * K[torch.stack([blocks[j][t] for j in js])]).sum(0) / wts.sum())
                        slot_vals.append((wts[:, None] * V[torch.stack([blocks[j][t] for j in js])]).sum(0) / wts.sum())
                if slot_keys:
                    keys.append(torch.stack(slot_keys))
                    vals.append(torch.stack(slot_vals))
                keys, vals = torch.cat(keys), torch.cat(vals)
                s = Q[blk] @ keys.T / math.sqrt(E)  # (len(blk), keys)
                if causal:  # own block: up to the query itself; the sorted slots are all in the past
                    own = torch.ones(len(blk), len(blk), dtype=torch.bool).tril()
                    s[:, : len(blk)] = s[:, : len(blk)].masked_fill(~own, -math.inf)
                out[bi, hd, blk] = s.softmax(-1) @ vals
    return output_of(attn, out)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_sinkhorn_one_block_is_exact_attention(causal, masked):
    """block_size >= n: one block, S = [[1]] (causal: nothing to sort to), its own block twice (or once):
    exact softmax attention, fp32 within 1e-5."""
    n = 19
    attn = make_sinkhorn(block_size=32)
    x = torch.randn(B, n, DIM)
    mask = mixed_mask(n) if masked else None
    real = mask if masked else torch.ones(B, n, dtype=torch.bool)
    y = attn(x, mask=mask, causal=causal)
    torch.testing.assert_close(y[real], exact_reference(attn, x, mask, causal)[real].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("n,masked", [(24, False), (22, False), (24, True)], ids=["whole", "partial", "mask"])
def test_sinkhorn_equals_the_papers_steps(causal, n, masked):
    """Several blocks (whole, a partial last one, padding in the middle): the reference above, 1e-5."""
    attn = make_sinkhorn(block_size=4, sinkhorn_iters=5)
    x = 2 * torch.randn(B, n, DIM)  # larger logits: S far from uniform
    mask = mixed_mask(n) if masked else None
    real = mask if masked else torch.ones(B, n, dtype=torch.bool)
    y = attn(x, mask=mask, causal=causal)
    torch.testing.assert_close(y[real], sinkhorn_reference(attn, x, mask, causal)[real].float(), atol=1e-5, rtol=1e-5)
    S = attn.sorting_matrix(x, mask, causal=causal)
    assert S.max() > 0.3  # the sorting is not uniform here (uniform would be 1/6)


def test_sinkhorn_sorting_matrix_is_doubly_stochastic():
    """Non-causal: the last step normalises the columns (sums 1 within 1e-5); the rows converge with the
    iterations: within 1e-5 after 20 on these inputs (x ~ 3 N(0, 1), temperature 0.75), and each extra
    round brings them closer. Blocks without a real token have zero rows and columns."""
    x = 3 * torch.randn(B, 64, DIM)
    devs = []
    for iters in (1, 4, 8, 20):
        S = make_sinkhorn(block_size=4, sinkhorn_iters=iters).sorting_matrix(x)  # (B, h, 16, 16)
        assert (S >= 0).all()
        torch.testing.assert_close(S.sum(-2), torch.ones_like(S.sum(-2)), atol=1e-5, rtol=0)
        devs.append((S.sum(-1) - 1).abs().max().item())
    assert devs[0] > devs[1] > devs[2] > devs[3] and devs[0] > 1e-2 and devs[3] < 1e-5, devs
    mask = torch.ones(B, 64, dtype=torch.bool)
    mask[1, 10:30] = False  # 44 real tokens: 11 blocks in use, 5 empty
    S = make_sinkhorn(block_size=4, sinkhorn_iters=20).sorting_matrix(x, mask)
    used = S[1, :, :11, :11]
    torch.testing.assert_close(used.sum(-1), torch.ones_like(used.sum(-1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(used.sum(-2), torch.ones_like(used.sum(-2)), atol=1e-5, rtol=0)
    assert (S[1, :, 11:] == 0).all() and (S[1, :, :, 11:] == 0).all()


def test_sinkhorn_causal_sorting_sees_only_the_past():
    """Causal: block i sorts over blocks j < i only (block 0 over none), and changing a later block leaves
    the rows of earlier blocks unchanged (the cumulative column normaliser)."""
    attn = make_sinkhorn(block_size=4, sinkhorn_iters=6)
    x = 3 * torch.randn(B, 32, DIM)
    S = attn.sorting_matrix(x, causal=True)  # (B, h, 8, 8)
    assert (S.triu() == 0).all() and (S[:, :, 1:].sum(-1) > 0).all()
    x2 = x.clone()
    x2[:, 21:] = 3 * torch.randn(B, 11, DIM)  # inside block 5 (its first token, 20, unchanged) and later
    S2 = attn.sorting_matrix(x2, causal=True)
    torch.testing.assert_close(S2[:, :, :6], S[:, :, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(S2[:, :, 6:], S[:, :, 6:])


def test_sinkhorn_gumbel_noise_in_training_only():
    attn = make_sinkhorn(block_size=4, gumbel=True)
    x = torch.randn(B, 24, DIM)
    with torch.no_grad():
        assert not torch.equal(attn(x), attn(x))  # training: fresh noise every call
        attn.eval()
        y = attn(x)
        assert all(torch.equal(attn(x), y) for _ in range(3))
    plain = make_sinkhorn(block_size=4).eval()
    assert torch.equal(plain(x), plain(x))


def test_sinkhorn_never_builds_an_n_by_n_tensor():
    """n = 1024, blocks of 16: no tensor of the forward pass holds n^2 elements."""
    n = 1024
    attn = make_sinkhorn(block_size=16)
    x = torch.randn(1, n, DIM)
    sizes = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    sizes.append(t.numel())
            return out

    mask = torch.ones(1, n, dtype=torch.bool)
    mask[0, 100:140] = False
    with Record():
        attn(x, mask=mask, causal=True)
        attn(x)
    assert sizes and max(sizes) < n * n / 4, max(sizes)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_sinkhorn_bf16_autocast_at_length(causal):
    """n = 256, blocks of 16, padding in the tail, bf16 autocast: finite and within 2e-2 relative of fp32."""
    torch.manual_seed(0)
    attn = build_attention("sinkhorn", 64, 4, block_size=16)
    x = torch.randn(1, 256, 64)
    mask = torch.ones(1, 256, dtype=torch.bool)
    mask[0, 200:] = False
    y32 = attn(x, mask=mask, causal=causal)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = attn(x, mask=mask, causal=causal)
    assert torch.isfinite(y16).all()
    assert ((y16.float() - y32)[mask].norm() / y32[mask].norm()).item() < 2e-2
