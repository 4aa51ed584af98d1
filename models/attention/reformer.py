"""`reformer`: Kitaev et al. 2020, LSH attention with shared query/key.

One projection gives the queries q; the keys are the unit-normalised queries, k_j = q_j / |q_j|, as in
the paper. Each of `hash_rounds` rounds hashes q with its own random rotation R (e x buckets/2),
h(x) = argmax([xR; -xR]), sorts the positions by (bucket, position) and cuts that order into chunks of
`bucket_size`; a query attends to the keys of its own bucket in its chunk and the previous one, so a
round costs O(n * bucket_size) time and memory (never an n x n matrix). A token attends to itself only
when no other key is available (the paper lowers its score by m_ii = 1e5; here that is taken to its
limit: excluded unless alone, and a round where a token had only itself weighs nothing beside rounds
where it had other keys, which keeps float32 exact where s - 1e5 would not be). The rounds are combined
by the paper's log-sum-exp weighting, o_i = sum_r exp(z_r(i) - z(i)) o_r(i), where a pair seen in N_ij
rounds is charged log N_ij in each (`dedup=True`, the paper's formula: the result is then one softmax
over the union of the rounds' key sets); `dedup=False` counts such a pair N_ij times, as lucidrains'
reformer-pytorch does by default.

Choices, where the paper leaves room:
- Rotations are a buffer drawn at construction from torch's global generator (reproducible under
  torch.manual_seed, saved in checkpoints). `redraw=True` draws new ones at every training-mode forward,
  as the paper does; eval mode always uses the stored ones, so it is deterministic.
- `buckets` is a fixed count (the paper takes about n / bucket_size; 64 buckets of 64 at n = 4096): the
  hash then does not depend on the length, and padding tokens get a bucket of their own that sorts
  last, so padding anywhere leaves the real tokens' outputs unchanged.
- Causal: chunk boundaries in the sorted order move with the buckets of later tokens, so the paper's
  chunk rule would let the future change which past keys a query sees. Causal mode gives each query
  instead the keys of its bucket at most `bucket_size` places back in the sorted order (itself
  included): the same blocked computation with a band mask, and that distance between two tokens of one
  bucket counts only tokens of that bucket between them, none after the query.

Decoding (causal): a token's keys in a round are the last `bucket_size` earlier tokens of its bucket, which no
later token changes, so a step keeps a KV cache (the unit keys, the values) and every position's buckets
(B, h, rounds, n); a new token finds in each round the last bucket_size positions of its bucket, scores the
cached keys once (O(n e), like a KV cache), and combines the rounds as the forward does (duplicates counted
over the rounds, itself only when alone, log-sum-exp weights). An empty state is prefilled by the forward pass
itself (causal outputs of a prefix are the prefix's). A state belongs to one draw of the rotations.

Rounds run in groups (as many as keep the scores within ROUND_SCORES elements: one at a time at n = 4096,
h = 8, C = 64; all at once for short sequences) merged online, so forward memory is that of one group.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.checks import check_bool, check_int

from .base import Attention
from .functional import append_cache, merge_heads, split_heads
from .registry import register_attention

ROUND_SCORES = 2**22  # rounds are computed in groups whose scores stay within this many elements (16 MiB fp32)


def _with_previous(t: Tensor, fill, axis: int) -> Tensor:
    """Chunks (..., c, C, ...) with C at `axis` (negative) -> (..., c, 2C, ...): each chunk's predecessor
    (`fill` before the first), then the chunk itself."""
    first = torch.full_like(t.narrow(axis - 1, 0, 1), fill)
    prev = torch.cat([first, t.narrow(axis - 1, 0, t.shape[axis - 1] - 1)], dim=axis - 1)
    return torch.cat([prev, t], dim=axis)


def lsh_attention(
    qk: Tensor,
    v: Tensor,
    codes: Tensor,
    pad_code: int,
    chunk: int,
    causal: bool,
    dedup: bool,
    scale: float,
    need_weights: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Shared-QK LSH attention over given hash codes.

    qk, v: (B, h, n, e); codes: (B, h, R, n) bucket of each token in each round, `pad_code` for padding
    tokens (never attended). Returns (B, h, n, e) and, with `need_weights`, the (B, h, n, n) matrix applied.
    """
    B, h, n, e = qk.shape
    R = codes.shape[2]
    C = min(chunk, n)
    nc = -(-n // C)
    Np, pad = nc * C, nc * C - n
    look = nc > 1  # with one chunk there is no previous one
    W = 2 * C if look else C
    dev = qk.device
    codes_sorted, perm = torch.sort(codes, dim=-1, stable=True)  # by (bucket, position), padding last
    inv = torch.empty_like(perm).scatter_(-1, perm, torch.arange(n, device=dev).expand_as(perm))  # sorted place
    if dedup and R > 1:
        # round r' sees pair (i, j) iff 0 <= loc(i) - loc(j) <= reach: same bucket and, non-causal, key chunk
        # = query chunk or the one before; causal, at most C places back in the sorted order
        loc = codes * (Np + C + 2) + inv if causal else codes * (nc + 2) + inv // C  # (B, h, R, n)
        loc = loc.int() if (pad_code + 1) * (Np + C + 2) < 2**31 else loc
        reach = C if causal else 1
    off = C if look else 0  # where a chunk's own keys start in its window
    t = torch.arange(C, device=dev)[:, None]
    u = torch.arange(W, device=dev)[None, :]
    # causal: sorted distance 0..C, i.e. the previous chunk from the query's offset on, its own chunk up to it
    band = (u >= t) & (u < off) | (u >= off) & (u - off <= t) if causal else None
    # rows of every (batch, head) one after another, so that a round's gathers are row copies (index_select)
    base = torch.arange(B * h, device=dev).view(B, h, 1)
    q_rows = (qk * scale).reshape(B * h * n, e)
    k_rows = F.normalize(qk, dim=-1).reshape(B * h * n, e)  # keys: the unit-length queries
    v_rows = v.reshape(B * h * n, e)
    G = max(1, min(R, ROUND_SCORES // max(1, B * h * Np * W)))  # rounds per group
    low = float(torch.finfo(torch.float32).min)
    out = lse_all = alone_all = None
    rounds = []
    for r0 in range(0, R, G):
        g = min(R, r0 + G) - r0
        idx = F.pad(perm[:, :, r0 : r0 + g], (0, pad))  # (B, h, g, Np), padded slots read token 0 and are masked
        flat = (idx + base[..., None] * n).reshape(B, h, g, nc, C)
        qs = q_rows.index_select(0, flat.reshape(-1)).view(B, h, g, nc, C, e)
        qcode = F.pad(codes_sorted[:, :, r0 : r0 + g], (0, pad), value=-2).view(B, h, g, nc, C)
        kcode = qcode.masked_fill(qcode == pad_code, -1)  # padding tokens are never keys
        if look:
            flat, kcode = _with_previous(flat, 0, -1), _with_previous(kcode, -1, -1)
        ks = k_rows.index_select(0, flat.reshape(-1)).view(B, h, g, nc, W, e)
        vs = v_rows.index_select(0, flat.reshape(-1)).view(B, h, g, nc, W, e)
        s = (qs @ ks.transpose(-2, -1)).float()  # (B, h, g, nc, C, W)
        barred = qcode[..., :, None] != kcode[..., None, :]  # another bucket or no real key (itself not barred)
        if band is not None:
            barred |= ~band
        if dedup and R > 1:  # N_ij: the rounds (this one included) in which j is among i's keys
            lr = loc[:, :, None].expand(B, h, g, R, n).gather(-1, idx[:, :, :, None, :].expand(B, h, g, R, Np))
            lr = lr.view(B, h, g, R, nc, C)
            count = torch.zeros(s.shape, dtype=torch.uint8, device=dev)
            for r2 in range(R):
                lq = lr[:, :, :, r2, :, :, None]
                lk = _with_previous(lr[:, :, :, r2], -1, -1) if look else lr[:, :, :, r2]
                seen = lq >= lk[..., None, :]
                seen &= lq <= (lk + reach)[..., None, :]
                count += seen
            s = s - count.clamp_min_(1).float().log_()
        # a token attends to itself only when it has no other key (the paper's m_ii = 1e5, taken to its limit);
        # a padding token, which has none, attends to itself (finite, and causal)
        alone = barred.sum(dim=-1) >= W - 1  # nothing but (perhaps) itself unbarred
        itself_s = torch.where(alone, s.diagonal(offset=off, dim1=-2, dim2=-1), low)
        s = s.masked_fill_(barred, low)
        s.diagonal(offset=off, dim1=-2, dim2=-1).copy_(itself_s)
        p = s.softmax(dim=-1)  # (a fused softmax is several times faster on CPU than exp on its own)
        lse = s.amax(dim=-1) - p.amax(dim=-1).log()  # log-sum-exp: the largest p is exp(max - lse)
        o = p.to(vs.dtype) @ vs  # (B, h, g, nc, C, e)
        # back to position order
        back = inv[:, :, r0 : r0 + g]  # (B, h, g, n)
        rows = torch.arange(B * h * g, device=dev).view(B, h, g, 1) * Np
        o = o.view(B * h * g * Np, e).index_select(0, (back + rows).reshape(-1)).view(B, h, g, n, e).float()
        lse = lse.view(B, h, g, Np).gather(-1, back)  # (B, h, g, n)
        alone = alone.view(B, h, g, Np).gather(-1, back)
        if need_weights:
            rounds.append((p, idx, lse, alone))
        # o = sum_r exp(z_r - z) o_r; a round where the token had only itself (z_r lowered by 1e5) weighs
        # nothing beside one where it had other keys. First over this group's rounds...
        if g > 1:
            alone_g = alone.all(dim=2)  # (B, h, n)
            z = lse.masked_fill(alone != alone_g[:, :, None], float("-inf"))
            lse_g = z.logsumexp(dim=2)
            o = (o * (z - lse_g[:, :, None]).exp()[..., None]).sum(dim=2)
            lse, alone = lse_g, alone_g
        else:
            o, lse, alone = o[:, :, 0], lse[:, :, 0], alone[:, :, 0]
        if out is None:
            out, lse_all, alone_all = o, lse, alone
            continue
        # ... then into the groups before it
        new = torch.logaddexp(lse_all, lse)
        keep_old, take_new = ~alone_all & alone, alone_all & ~alone
        w_old = torch.where(keep_old, 1.0, torch.where(take_new, 0.0, (lse_all - new).exp()))
        w_new = torch.where(keep_old, 0.0, torch.where(take_new, 1.0, (lse - new).exp()))
        out = out * w_old[..., None] + o * w_new[..., None]
        lse_all = torch.where(keep_old, lse_all, torch.where(take_new, lse, new))
        alone_all = alone_all & alone
    weights = None
    if need_weights:
        weights = qk.new_zeros(B, h, n * n, dtype=torch.float32)
        slot_real = (torch.arange(Np, device=dev) < n).view(nc, C)
        for p_g, idx_g, lse_g, alone_g in rounds:
            for j in range(idx_g.shape[2]):
                p, idx, lse, alone = p_g[:, :, j], idx_g[:, :, j], lse_g[:, :, j], alone_g[:, :, j]
                share = torch.where(alone == alone_all, (lse - lse_all).exp(), 0.0)  # (B, h, n) the round's weight
                share = share.gather(-1, idx)  # per sorted slot
                qpos = idx.view(B, h, nc, C)
                kpos = _with_previous(qpos, 0, -1) if look else qpos
                flat = (qpos[..., :, None] * n + kpos[..., None, :]).reshape(B, h, -1)
                contrib = p * (share.view(B, h, nc, C) * slot_real)[..., None]
                weights.scatter_add_(-1, flat, contrib.reshape(B, h, -1))
        weights = weights.view(B, h, n, n)
    return out.to(v.dtype), weights


def lsh_attention_flops(batch: int, heads: int, n: int, e: int, rounds: int, chunk: int) -> int:
    """Matmul FLOPs of `lsh_attention` (scores and weighted values; hashing not included)."""
    C = min(chunk, n)
    nc = -(-n // C)
    W = 2 * C if nc > 1 else C
    return 2 * 2 * batch * heads * rounds * nc * C * W * e


@register_attention("reformer")
class ReformerAttention(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True
    supports_decoding = True
    decoding_state = "kv-cache"  # unit keys and values (B, h, n, e) each, buckets (B, h, rounds, n)
    example_options = {"hash_rounds": 2, "buckets": 4, "bucket_size": 4}
    bad_options = ({"hash_rounds": 0}, {"buckets": 0}, {"buckets": 3}, {"bucket_size": 0})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        hash_rounds: int = 8,
        buckets: int = 64,
        bucket_size: int = 64,
        dedup: bool = True,
        redraw: bool = False,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.hash_rounds = check_int("hash_rounds", hash_rounds)
        self.buckets = check_int("buckets", buckets)
        if self.buckets > 1 and self.buckets % 2:
            raise ValueError(f"buckets must be 1 or an even number (the hash is the argmax over [xR; -xR]), got {buckets!r}")
        self.bucket_size = check_int("bucket_size", bucket_size)
        self.dedup, self.redraw = check_bool("dedup", dedup), check_bool("redraw", redraw)
        self.register_buffer("rotations", self._draw())  # (h, e, rounds * buckets/2)
        self._draws = 0  # redraws so far: a decoding state records the draw its buckets were hashed with

    def _build_projections(self, bias: bool) -> None:
        self.to_qk_v = nn.Linear(self.dim, 2 * self.dim, bias=bias)  # shared query/key, then values
        self.out = nn.Linear(self.dim, self.dim, bias=bias)

    def _draw(self, device=None) -> Tensor:
        return torch.randn(self.heads, self.head_dim, self.hash_rounds * (self.buckets // 2), device=device)

    @torch.no_grad()
    def redraw_rotations(self) -> None:
        self.rotations.copy_(self._draw(self.rotations.device))
        self._draws += 1

    def get_projection_weights(self) -> Dict[str, Optional[Tensor]]:
        """Q and K are one matrix here (k_w is q_w; the keys are then normalised)."""
        d = self.dim
        w, b = self.to_qk_v.weight, self.to_qk_v.bias
        out = {"q_w": w[:d], "k_w": w[:d], "v_w": w[d:], "o_w": self.out.weight, "o_b": self.out.bias}
        out.update(q_b=None, k_b=None, v_b=None) if b is None else out.update(q_b=b[:d], k_b=b[:d], v_b=b[d:])
        return {k: (t.detach().clone() if t is not None else None) for k, t in out.items()}

    @torch.no_grad()
    def load_projection_weights(self, w: Dict[str, Optional[Tensor]]) -> None:
        if not torch.equal(w["q_w"], w["k_w"]) or (w["q_b"] is not None and not torch.equal(w["q_b"], w["k_b"])):
            raise ValueError("attention 'reformer' shares one query/key projection, got different q and k weights")
        self.to_qk_v.weight.copy_(torch.cat([w["q_w"], w["v_w"]]))
        if self.to_qk_v.bias is not None:
            self.to_qk_v.bias.copy_(torch.cat([w["q_b"], w["v_b"]]))
        self.out.weight.copy_(w["o_w"])
        if self.out.bias is not None:
            self.out.bias.copy_(w["o_b"])

    def project_qk_v(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, n, d) -> shared query/key and values, each (B, h, n, e)"""
        qk, v = self.to_qk_v(x).chunk(2, dim=-1)
        return split_heads(qk, self.heads), split_heads(v, self.heads)

    def hash_codes_of(self, qk: Tensor, mask: Optional[Tensor]) -> Tensor:
        """(B, h, n, e) queries -> (B, h, rounds, n) buckets; padding tokens get bucket `buckets` (sorts last)."""
        B, h, n, _ = qk.shape
        with torch.no_grad():
            if self.buckets == 1:
                codes = torch.zeros(B, h, self.hash_rounds, n, dtype=torch.long, device=qk.device)
            else:
                proj = (qk.detach() @ self.rotations.to(qk.dtype)).view(B, h, n, self.hash_rounds, self.buckets // 2)
                # argmax over [xR; -xR] (first index on ties), without building the concatenation
                top, arg_top = proj.max(dim=-1)
                bottom, arg_bottom = proj.min(dim=-1)
                codes = torch.where(top >= -bottom, arg_top, arg_bottom + self.buckets // 2).transpose(-2, -1)
            if mask is not None:
                codes = codes.masked_fill(~mask[:, None, None, :], self.buckets)
        return codes

    @torch.no_grad()
    def hash_codes(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """The (B, h, rounds, n) buckets a forward call on x would use (for inspection and tests)."""
        self.check_input(x, mask)
        return self.hash_codes_of(self.project_qk_v(x)[0], mask)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        if self.training and self.redraw:
            self.redraw_rotations()
        qk, v = self.project_qk_v(x)  # (B, h, n, e)
        codes = self.hash_codes_of(qk, mask)
        y, w = lsh_attention(qk, v, codes, self.buckets, self.bucket_size, causal, self.dedup, self.scale, need_weights)
        return self.out(merge_heads(y)), w

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        if state.setdefault("draw", self._draws) != self._draws:
            raise ValueError(f"state was hashed with the rotations of draw {state['draw']}, but they have been redrawn "
                             f"since (draw {self._draws}); start a new state (state=None) after a redraw")
        qk, v = self.project_qk_v(x)  # (B, h, t, e)
        codes = self.hash_codes_of(qk, None).int()  # (B, h, R, t)
        keys = F.normalize(qk, dim=-1)
        if "k" not in state:  # a prefix: the forward pass itself
            y, _ = lsh_attention(qk, v, codes, self.buckets, self.bucket_size, True, self.dedup, self.scale)
            state.update(k=keys, v=v, codes=codes)
            return self.out(merge_heads(y)), state
        ys = []
        for i in range(x.shape[1]):
            ys.append(self._next(qk[:, :, i], v[:, :, i], state["k"], state["v"], state["codes"], codes[..., i]))
            append_cache(state, "k", keys[:, :, i : i + 1])
            append_cache(state, "v", v[:, :, i : i + 1])
            append_cache(state, "codes", codes[..., i : i + 1], dim=3)
        return self.out(merge_heads(torch.stack(ys, 2))), state

    def _next(self, q: Tensor, v_new: Tensor, k: Tensor, v: Tensor, codes: Tensor, code: Tensor) -> Tensor:
        """One new token after n cached ones: q (B, h, e) its shared query/key and v_new its value, k (B, h, n, e)
        the cached unit keys and v their values, codes (B, h, R, n) their buckets, code (B, h, R) its own.
        Returns its output (B, h, e)."""
        R = codes.shape[2]
        same = codes == code[..., None]  # (B, h, R, n)
        # sorted distance from the token back to key j of its bucket: the bucket's tokens in (j, i], itself included
        dist = same.flip(-1).cumsum(-1).flip(-1)
        seen = same & (dist <= self.bucket_size)  # (B, h, R, n): the round's keys, itself aside
        s = ((q[:, :, None] * self.scale) @ k.transpose(-2, -1)).float()  # (B, h, 1, n)
        itself = (q * self.scale * F.normalize(q, dim=-1)).sum(-1).float()  # (B, h)
        if self.dedup and R > 1:  # a pair seen in N rounds is charged log N in each; itself is seen in all R
            s = s - seen.sum(2, keepdim=True).clamp_min(1).float().log()
            itself = itself - math.log(R)
        scores = s.expand(seen.shape).masked_fill(~seen, float("-inf"))  # (B, h, R, n)
        alone = ~seen.any(-1)  # (B, h, R): no other key in that round, so the token attends to itself
        z = torch.where(alone, itself[..., None], scores.logsumexp(-1))  # (B, h, R): each round's log-sum-exp
        p = (scores - torch.where(alone, 0.0, z)[..., None]).exp()  # (B, h, R, n), all 0 where alone
        o = torch.where(alone[..., None], v_new[:, :, None].float(), p @ v.float())  # (B, h, R, e)
        # rounds where the token had only itself weigh nothing beside rounds where it had other keys
        z = z.masked_fill(alone != alone.all(-1, keepdim=True), float("-inf"))
        return ((z - z.logsumexp(-1, keepdim=True)).exp()[..., None] * o).sum(2).to(v.dtype)

    def projection_flops(self, seq_len: int, batch: int = 1) -> int:
        return 2 * batch * seq_len * self.dim * self.dim * 3  # shared QK, V and output

    def _hash_flops(self, seq_len: int, batch: int) -> int:
        return 2 * batch * self.heads * seq_len * self.head_dim * self.hash_rounds * (self.buckets // 2)

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        h, e = self.heads, self.head_dim
        return self._hash_flops(seq_len, batch) + lsh_attention_flops(batch, h, seq_len, e, self.hash_rounds, self.bucket_size)

    def backward_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        # the hash (an argmax) passes no gradient: its matmul has no backward
        return super().backward_flops(seq_len, batch, causal) - 2 * self._hash_flops(seq_len, batch)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", hash_rounds={self.hash_rounds}, buckets={self.buckets}, "
                f"bucket_size={self.bucket_size}, dedup={self.dedup}, redraw={self.redraw}")
