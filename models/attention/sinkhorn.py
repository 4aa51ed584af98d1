"""`sinkhorn`: Tay et al. 2020, Sparse Sinkhorn Attention.

The sequence is cut into blocks of `block_size`. A sorting network scores every pair of blocks from
their summaries, R_ij = mean(q in block i) . mean(k in block j) / sqrt(e) (lucidrains' attention sort
net: it has no fixed number of blocks, unlike the paper's feed-forward P(X) with N_B outputs), and
`sinkhorn_iters` rounds of Sinkhorn balancing in log space (rows, then columns) turn
exp((R + Gumbel noise) / temperature) into a soft permutation S, doubly stochastic in the limit. Block i
of keys and values is replaced by the mixture sum_j S_ij K_j (the sorted block), and each query block
attends over its own block and its sorted block in one softmax: O(n b + (n/b)^2 (b e)) per head.
Heads are computed one after another, each from its own rows of the QKV projection, so that forward
memory is one head's (the projection's FLOPs are the same).

Choices, where the paper leaves room:
- Gumbel noise (`gumbel=True`) is drawn in training mode only; eval is deterministic.
- Padding: the real tokens are moved to the front (in order) before blocking, and back afterwards, so
  blocks hold real tokens by rank and padding anywhere changes nothing; block summaries average the
  real tokens only and blocks without any take no part in the balancing. Each slot of a sorted block
  mixes only the real keys at that slot, renormalised: K'_it = sum_j S_ij m_jt K_jt / sum_j S_ij m_jt.
  Without padding (n a multiple of block_size) that is S K with S's rows rescaled to sum to one, which
  keeps the applied matrix a distribution over tokens. The normaliser is one small product,
  S (nb x nb) times the real-token indicator (nb x b), made with or without padding.
- Causal (the paper's causal Sinkhorn balancing): block i may only sort to blocks j < i, all of whose
  tokens precede all of block i's; its summary is the mean of the queries up to and including its first
  token (known to every query of the block); and the column normalisation is a cumulative
  log-sum-exp down the rows, so row i is balanced against rows 0..i only. A full column sum would carry
  later blocks (future tokens) into earlier rows; with the cumulative one no output depends on a later
  token. Within its own block a query sees the keys up to itself; block 0 has nothing to sort to.

Decoding: causally, block i's row of S depends on the summaries of blocks 0..i-1 (complete), the queries up to its
first token, and the earlier rows, none of which a later token changes; so a step keeps the queries, keys and values
of every position (a KV cache with queries, 3 e per position) and, for each new token, balances S over the cached
blocks with the forward's own `_sort` (O(n e + (n/b)^2 iters)), mixes its block's sorted keys and values
(O(n e)) and attends over its own block up to itself and the sorted block: O(n e) per token, like a KV cache,
where recomputing costs a whole forward pass per token. An empty state is prefilled by the forward
pass itself (causal outputs of a prefix are the prefix's; a prefix shorter than block_size is one block, as the
first block of any longer sequence is).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.checks import check_bool, check_int, check_number

from .base import Attention
from .functional import append_cache, merge_heads
from .registry import register_attention

SCORES_PER_GROUP = 2**21  # heads are computed in groups whose scores stay within this many elements (8 MiB fp32)
NEG = -1e4  # log-space "zero" for blocks that may not be paired: exp underflows to 0, gradients stay finite


def sinkhorn_balance(logits: Tensor, support: Optional[Tensor], iters: int, causal: bool) -> Tensor:
    """Sinkhorn normalisation in log space. logits: (..., N, N) fp32; support: bool, broadcastable, where
    pairing is allowed (None: everywhere). Each round normalises the rows, then the columns (causal: each row
    against the rows up to it, a cumulative log-sum-exp). Returns S = exp(log S), exactly 0 off the support."""
    def keep(t: Tensor) -> Tensor:
        return t if support is None else t.masked_fill(~support, NEG)

    log_s = keep(logits)
    for _ in range(iters):
        log_s = keep(log_s - log_s.logsumexp(dim=-1, keepdim=True))
        col = log_s.logcumsumexp(dim=-2) if causal else log_s.logsumexp(dim=-2, keepdim=True)
        log_s = keep(log_s - col)
    return log_s.exp() if support is None else log_s.exp() * support


@register_attention("sinkhorn")
class SinkhornAttention(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True
    supports_decoding = True
    decoding_state = "kv-cache"  # every position's queries, keys and values: (B, h, n, e) each
    example_options = {"block_size": 4, "sinkhorn_iters": 4}
    bad_options = ({"block_size": 0}, {"sinkhorn_iters": -1}, {"temperature": 0.0})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        block_size: int = 64,
        sinkhorn_iters: int = 8,
        temperature: float = 0.75,
        gumbel: bool = False,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.block_size = check_int("block_size", block_size)
        self.sinkhorn_iters = check_int("sinkhorn_iters", sinkhorn_iters, low=0)
        self.temperature = check_number("temperature", temperature, low=0, low_open=True)
        self.gumbel = check_bool("gumbel", gumbel)

    # ------------------------------------------------------------------ pieces (a group of G heads: B, G, n, e)

    def _layout(self, n: int) -> Tuple[int, int]:
        b = min(self.block_size, n)
        return b, -(-n // b)

    def _group(self, batch: int, n: int) -> int:
        """Heads per group: as many as keep a group's (B, G, n, 2b) scores within SCORES_PER_GROUP elements.
        Fewer, larger operations than one head at a time (a shared CPU's threads wait at every parallel
        operation); less memory than all heads at once."""
        b, nb = self._layout(n)
        return max(1, min(self.heads, SCORES_PER_GROUP // max(1, batch * nb * b * 2 * b)))

    def _plan(self, mask: Optional[Tensor], n: int, device):
        """The order that puts real tokens first (None without a mask) and the (B, nb, b) real-token
        indicator of the blocks (None when every slot is real)."""
        b, nb = self._layout(n)
        if mask is None:
            if nb * b == n:
                return None, None
            valid = torch.arange(nb * b, device=device) < n
            return None, valid.view(1, nb, b)
        order = torch.sort((~mask).to(torch.uint8), dim=-1, stable=True).indices  # real tokens first, in order
        valid = torch.arange(nb * b, device=device) < mask.sum(-1, keepdim=True)  # (B, nb*b)
        return order, valid.view(-1, nb, b)

    def _project(self, x: Tensor, i0: int, i1: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Heads i0..i1-1: q, k, v each (B, G, n, e), contiguous, from their rows of the merged QKV projection."""
        B, n, d = x.shape
        h, e, G = self.heads, self.head_dim, i1 - i0
        w = self.qkv.weight.view(3, h, e, d)[:, i0:i1].reshape(3 * G * e, d)
        bias = self.qkv.bias.view(3, h, e)[:, i0:i1].reshape(3 * G * e) if self.qkv.bias is not None else None
        qkv = F.linear(x, w, bias).view(B, n, 3, G, e).permute(2, 0, 3, 1, 4).contiguous()
        return qkv[0], qkv[1], qkv[2]

    def _blocks(self, t: Tensor, order: Optional[Tensor]) -> Tensor:
        """(B, G, n, e) -> (B, G, nb, b, e), real tokens first, zero slots after the last token."""
        Bx, G, n, e = t.shape
        b, nb = self._layout(n)
        if order is not None:
            t = t.gather(2, order[:, None, :, None].expand(Bx, G, n, e))
        if nb * b > n:
            t = F.pad(t, (0, 0, 0, nb * b - n))
        return t.view(Bx, G, nb, b, e)

    def _sort(self, qb: Tensor, kb: Tensor, valid: Optional[Tensor], causal: bool) -> Tensor:
        """S (B, G, nb, nb) in fp32, exactly 0 where pairing is not allowed."""
        nb, b = qb.shape[2], qb.shape[3]
        with torch.autocast(qb.device.type, enabled=False):
            qf, kf = qb.float(), kb.float()
            if valid is None:
                m, count, used = None, qf.new_full((1, 1, nb, 1), float(b)), None
            else:
                m = valid[:, None, :, :, None].float()  # (B, 1, nb, b, 1)
                qf, kf, count, used = qf * m, kf * m, m.sum(-2), valid.any(-1)
            qsum = qf.sum(-2)  # (B, G, nb, e)
            sk = kf.sum(-2) / count.clamp_min(1)  # mean of a block's real keys
            if causal:  # mean of the queries up to and including each block's first token
                first_q = qf[:, :, :, 0]
                first_n = count.new_ones(()).expand_as(count) if m is None else m[:, :, :, 0]
                sq = (qsum.cumsum(2) - qsum + first_q) / (count.cumsum(2) - count + first_n).clamp_min(1)
            else:
                sq = qsum / count.clamp_min(1)
            logits = (sq @ sk.transpose(-2, -1)) * self.scale  # (B, G, nb, nb)
            support = None
            if used is not None:
                support = (used[:, :, None] & used[:, None, :])[:, None]  # (B, 1, nb, nb)
            if causal:
                past = torch.ones(nb, nb, dtype=torch.bool, device=qb.device).tril_(-1)
                support = past if support is None else support & past
            if self.gumbel and self.training:
                u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
                logits = logits - (-u.log()).log()
            return sinkhorn_balance(logits / self.temperature, support, self.sinkhorn_iters, causal)

    def _heads(self, q: Tensor, k: Tensor, v: Tensor, order, valid, causal: bool, need_weights: bool):
        """A group of heads: q, k, v (B, G, n, e) -> (B, G, n, e) in the blocked order, and the blocked weights."""
        Bx, G, n, e = q.shape
        qb, kb, vb = (self._blocks(t, order) for t in (q, k, v))
        nb, b = qb.shape[2], qb.shape[3]
        S = self._sort(qb, kb, valid, causal).to(qb.dtype)  # (B, G, nb, nb)
        # each sorted slot mixes the real keys / values at that slot, renormalised by den = S @ real
        real = qb.new_ones(1, 1, nb, b) if valid is None else valid[:, None].to(qb.dtype)
        den = S @ real  # (B, G, nb, b)
        slot_ok = den > 0
        if valid is None:  # every slot real: den is S's row sum, folded into S
            S_mix = S / torch.where(slot_ok, den, 1.0)[..., :1]
            kb_mix, vb_mix = kb, vb
        else:
            S_mix = S
            kb_mix, vb_mix = kb * real[..., None], vb * real[..., None]
        # [I; S] with the rows interleaved: one product gives each block's own keys followed by its sorted
        # ones, (B, G, nb, 2b, e), with no concatenation of the large tensors
        eye = torch.eye(nb, dtype=S.dtype, device=S.device).expand_as(S_mix)
        own_then_sorted = torch.stack([eye, S_mix], dim=3).view(Bx, G, 2 * nb, nb)
        keys = (own_then_sorted @ kb_mix.flatten(3)).view(Bx, G, nb, 2 * b, e)
        vals = (own_then_sorted @ vb_mix.flatten(3)).view(Bx, G, nb, 2 * b, e)
        if valid is not None:  # own keys as they are; sorted slots renormalised over their real keys
            dd = torch.where(slot_ok, den, 1.0)[..., None]
            keys = torch.cat([kb, keys[:, :, :, b:] / dd], dim=3)
            vals = torch.cat([vb, vals[:, :, :, b:] / dd], dim=3)
        s = ((qb * self.scale) @ keys.transpose(-2, -1)).float()  # (B, G, nb, b, 2b)
        del keys
        if valid is not None or causal:
            own = torch.ones(1, 1, nb, b, b, dtype=torch.bool, device=q.device) if valid is None else valid[:, None, :, None, :].expand(-1, 1, nb, b, b)
            if causal:
                own = own & torch.ones(b, b, dtype=torch.bool, device=q.device).tril_()
            allowed = torch.cat([own.expand(Bx, G, nb, b, b), slot_ok[:, :, :, None, :].expand(Bx, G, nb, b, b)], dim=-1)
            if valid is not None:  # a padding query attends to itself only (finite, causal wherever it sits)
                itself = torch.eye(b, 2 * b, dtype=torch.bool, device=q.device)
                real_q = valid[:, None, :, :, None]
                allowed = allowed & real_q | itself & ~real_q
            s = s.masked_fill_(~allowed, torch.finfo(s.dtype).min)
        p = s.softmax(dim=-1)
        del s
        y = (p.to(vals.dtype) @ vals).view(Bx, G, nb * b, e)[:, :, :n]
        w = self._dense_weights(p, S, real, den, slot_ok, n) if need_weights else None
        return y, w

    @staticmethod
    def _dense_weights(p: Tensor, S: Tensor, real: Tensor, den: Tensor, slot_ok: Tensor, n: int) -> Tensor:
        """(B, G, n, n) matrices in the blocked (real-first) order: own-block weights on the block diagonal,
        a sorted slot's weight spread over the keys it mixes (O(n^2), for inspection)."""
        Bx, G, nb, b, _ = p.shape
        p = p.float()
        own, srt = p[..., :b], p[..., b:]  # (B, G, nb, b_q, b_t)
        share = S.float()[..., None] * real.float()[:, :, None, :, :]  # (B, G, nb_i, nb_j, b_t): S_ij m_jt
        share = share / torch.where(slot_ok, den, 1.0).float()[:, :, :, None, :]
        w = torch.einsum("bgiqt,bgijt->bgijqt", srt, share)  # (B, G, nb_i, nb_j, b_q, b_t)
        w.diagonal(dim1=2, dim2=3).add_(own.permute(0, 1, 3, 4, 2))  # block i's own keys
        return w.permute(0, 1, 2, 4, 3, 5).reshape(Bx, G, nb * b, nb * b)[:, :, :n, :n]

    def sorting_matrix(self, x: Tensor, mask: Optional[Tensor] = None, causal: Optional[bool] = None) -> Tensor:
        """The (B, h, nb, nb) soft permutations a forward call on x uses (blocks of the real tokens by rank)."""
        causal = self.resolve_causal(causal)
        self.check_input(x, mask)
        order, valid = self._plan(mask, x.shape[1], x.device)
        q, k, _ = self._project(x, 0, self.heads)
        return self._sort(self._blocks(q, order), self._blocks(k, order), valid, causal)

    # ------------------------------------------------------------------ forward

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        B, n, _ = x.shape
        h, e = self.heads, self.head_dim
        order, valid = self._plan(mask, n, x.device)
        inv = torch.argsort(order, dim=-1) if order is not None else None
        G = self._group(B, n)
        y = ws = None
        for i0 in range(0, h, G):  # a group of heads at a time, each from its own rows of the projection
            i1 = min(h, i0 + G)
            yg, wg = self._heads(*self._project(x, i0, i1), order, valid, causal, need_weights)  # (B, G, n, e)
            if inv is not None:  # back to the original positions
                yg = yg.gather(2, inv[:, None, :, None].expand(B, i1 - i0, n, e))
                if wg is not None:
                    wg = wg.gather(2, inv[:, None, :, None].expand(B, i1 - i0, n, n))
                    wg = wg.gather(3, inv[:, None, None, :].expand(B, i1 - i0, n, n))
            if y is None:
                y = yg.new_empty(B, n, h, e)  # heads side by side, as merge_heads lays them out
                ws = [] if need_weights else None
            y[:, :, i0:i1] = yg.transpose(1, 2)
            if need_weights:
                ws.append(wg)
        return self.out(y.view(B, n, h * e)), (torch.cat(ws, dim=1) if need_weights else None)

    # ------------------------------------------------------------------ incremental decoding

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        q, k, v = self._project(x, 0, self.heads)  # (B, h, t, e)
        if "k" not in state:  # a prefix: the forward pass itself
            state.update(q=q, k=k, v=v)
            return self._attend(x, None, True, False)[0], state
        ys = []
        for i in range(x.shape[1]):
            for name, new in (("q", q), ("k", k), ("v", v)):
                append_cache(state, name, new[:, :, i : i + 1])
            ys.append(self._last(state["q"], state["k"], state["v"]))
        return self.out(merge_heads(torch.stack(ys, dim=2))), state

    def _last(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The causal output (B, h, e) of the last of n positions, given every position's q, k, v (B, h, n, e)."""
        n = q.shape[2]
        b, nb = self._layout(n)
        i = nb - 1  # the last position's block
        ql = q[:, :, -1:] * self.scale  # (B, h, 1, e)
        keys, vals = k[:, :, i * b :], v[:, :, i * b :]  # its own block up to itself
        s = (ql @ keys.transpose(-2, -1)).float()  # (B, h, 1, m)
        if i:  # its block's row of the causal soft permutation, from the blocks so far (the forward's _sort)
            _, valid = self._plan(None, n, q.device)
            S = self._sort(self._blocks(q, None), self._blocks(k, None), valid, True)[:, :, i, :i]  # (B, h, i)
            den = S.sum(-1, keepdim=True)  # (B, h, 1): earlier blocks are whole, every slot real
            S = (S / den.clamp_min(torch.finfo(S.dtype).tiny)).to(k.dtype)
            mixed = [torch.einsum("bhj,bhjte->bhte", S, t[:, :, : i * b].reshape(*t.shape[:2], i, b, -1)) for t in (k, v)]
            sorted_s = (ql @ mixed[0].transpose(-2, -1)).float().masked_fill(den[..., None] <= 0, torch.finfo(s.dtype).min)
            s, vals = torch.cat([s, sorted_s], dim=-1), torch.cat([vals, mixed[1]], dim=2)
        return (s.softmax(-1).to(vals.dtype) @ vals)[:, :, 0]  # (B, h, e)

    # ------------------------------------------------------------------ cost model

    def _normaliser_flops(self, seq_len: int, batch: int) -> int:
        b, nb = self._layout(seq_len)
        return 2 * batch * self.heads * nb * nb * b  # S @ real-token indicator

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        b, nb = self._layout(seq_len)
        h, e = self.heads, self.head_dim
        sort_net = 2 * batch * h * nb * nb * e  # block-pair scores
        mix = 2 * 2 * batch * h * (2 * nb) * nb * b * e  # [I; S] @ K and [I; S] @ V
        attend = 2 * 2 * batch * h * nb * b * (2 * b) * e  # each query over its block and the sorted block
        return sort_net + mix + self._normaliser_flops(seq_len, batch) + attend

    def backward_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        # the real-token indicator is a constant: the normaliser's product backpropagates to S only
        return super().backward_flops(seq_len, batch, causal) - self._normaliser_flops(seq_len, batch)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", block_size={self.block_size}, sinkhorn_iters={self.sinkhorn_iters}, "
                f"temperature={self.temperature}, gumbel={self.gumbel}")
