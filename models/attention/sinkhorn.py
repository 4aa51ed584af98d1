"""`sinkhorn`: Tay et al. 2020, Sparse Sinkhorn Attention.

The sequence is cut into blocks of `block_size`. A sorting network scores every pair of blocks from
their summaries, R_ij = mean(q in block i) . mean(k in block j) / sqrt(e) (lucidrains' attention sort
net: it has no fixed number of blocks, unlike the paper's feed-forward P(X) with N_B outputs), and
`sinkhorn_iters` rounds of Sinkhorn balancing in log space (rows, then columns) turn
exp((R + Gumbel noise) / temperature) into a soft permutation S, doubly stochastic in the limit. Block i
of keys and values is replaced by the mixture sum_j S_ij K_j (the sorted block), and each query block
attends over its own block and its sorted block in one softmax: O(n b + (n/b)^2 (b e)) per head.

Choices, where the paper leaves room:
- Gumbel noise (`gumbel=True`) is drawn in training mode only; eval is deterministic.
- Padding: the real tokens are moved to the front (in order) before blocking, and back afterwards, so
  blocks hold real tokens by rank and padding anywhere changes nothing; block summaries average the
  real tokens only and blocks without any take no part in the balancing. Each slot of a sorted block
  mixes only the real keys at that slot, renormalised: K'_it = sum_j S_ij m_jt K_jt / sum_j S_ij m_jt.
  Without padding (n a multiple of block_size) that is S K with S's rows rescaled to sum to one, which
  keeps the applied matrix a distribution over tokens.
- Causal (the paper's causal Sinkhorn balancing): block i may only sort to blocks j < i, all of whose
  tokens precede all of block i's; its summary is the mean of the queries up to and including its first
  token (known to every query of the block); and the column normalisation is a cumulative
  log-sum-exp down the rows, so row i is balanced against rows 0..i only. A full column sum would carry
  later blocks (future tokens) into earlier rows; with the cumulative one no output depends on a later
  token. Within its own block a query sees the keys up to itself; block 0 has nothing to sort to.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.checks import check_bool, check_int, check_number

from .base import Attention
from .functional import merge_heads
from .registry import register_attention

NEG = -1e4  # log-space "zero" for blocks that may not be paired: exp underflows to 0, gradients stay finite


def sinkhorn_balance(logits: Tensor, support: Tensor, iters: int, causal: bool) -> Tensor:
    """Sinkhorn normalisation in log space. logits: (..., N, N) fp32; support: bool, broadcastable, where
    pairing is allowed. Each round normalises the rows, then the columns (causal: each row against the
    rows up to it, a cumulative log-sum-exp). Returns S = exp(log S), exactly 0 off the support."""
    log_s = logits.masked_fill(~support, NEG)
    for _ in range(iters):
        log_s = (log_s - log_s.logsumexp(dim=-1, keepdim=True)).masked_fill(~support, NEG)
        col = log_s.logcumsumexp(dim=-2) if causal else log_s.logsumexp(dim=-2, keepdim=True)
        log_s = (log_s - col).masked_fill(~support, NEG)
    return log_s.exp() * support


@register_attention("sinkhorn")
class SinkhornAttention(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True
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

    # ------------------------------------------------------------------ pieces

    def _layout(self, n: int) -> Tuple[int, int]:
        b = min(self.block_size, n)
        return b, -(-n // b)

    def _blocks(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]):
        """Real tokens first (by rank), padded to whole blocks: q, k, v (B, h, nb, b, e), valid (B, nb, b),
        and the order used (None without a mask)."""
        B, h, n, e = q.shape
        order = None
        if mask is not None:
            order = torch.sort((~mask).to(torch.uint8), dim=-1, stable=True).indices  # real tokens first, in order
            idx = order[:, None, :, None].expand(B, h, n, e)
            q, k, v = q.gather(2, idx), k.gather(2, idx), v.gather(2, idx)
            valid = torch.arange(n, device=q.device) < mask.sum(-1, keepdim=True)  # (B, n)
        else:
            valid = torch.ones(B, n, dtype=torch.bool, device=q.device)
        b, nb = self._layout(n)
        pad = nb * b - n
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            valid = F.pad(valid, (0, pad), value=False)
        shape = (B, h, nb, b, e)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape), valid.view(B, nb, b), order

    def _sorting_logits(self, qb: Tensor, kb: Tensor, valid: Tensor, causal: bool) -> Tuple[Tensor, Tensor]:
        """Block-pair scores R (B, h, nb, nb) in fp32 and where pairing is allowed (B, 1, nb, nb)."""
        m = valid[:, None, :, :, None].to(torch.float32)  # (B, 1, nb, b, 1)
        qf, kf = qb.float() * m, kb.float() * m
        count = m.sum(-2)  # (B, 1, nb, 1)
        sk = kf.sum(-2) / count.clamp_min(1)  # (B, h, nb, e): mean of a block's real keys
        if causal:  # mean of the queries up to each block's first token
            cq = qf.flatten(2, 3).cumsum(2)[:, :, :: qb.shape[3]]  # (B, h, nb, e)
            cn = m.flatten(2, 3).cumsum(2)[:, :, :: qb.shape[3]]
            sq = cq / cn.clamp_min(1)
        else:
            sq = qf.sum(-2) / count.clamp_min(1)
        logits = (sq @ sk.transpose(-2, -1)) * self.scale  # (B, h, nb, nb)
        used = valid.any(-1)  # (B, nb) blocks with a real token
        support = used[:, None, :, None] & used[:, None, None, :]
        if causal:
            nb = used.shape[1]
            support = support & torch.ones(nb, nb, dtype=torch.bool, device=used.device).tril_(-1)
        return logits, support

    def sorting_matrix(self, x: Tensor, mask: Optional[Tensor] = None, causal: Optional[bool] = None) -> Tensor:
        """The (B, h, nb, nb) soft permutation S a forward call on x uses (blocks of the real tokens by rank)."""
        causal = self.resolve_causal(causal)
        self.check_input(x, mask)
        q, k, v = self.project_qkv(x)
        qb, kb, _, valid, _ = self._blocks(q, k, v, mask)
        return self._sort(qb, kb, valid, causal)

    def _sort(self, qb: Tensor, kb: Tensor, valid: Tensor, causal: bool) -> Tensor:
        with torch.autocast(qb.device.type, enabled=False):
            logits, support = self._sorting_logits(qb, kb, valid, causal)
            if self.gumbel and self.training:
                u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
                logits = logits - (-u.log()).log()
            return sinkhorn_balance(logits / self.temperature, support, self.sinkhorn_iters, causal)

    # ------------------------------------------------------------------ forward

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        q, k, v = self.project_qkv(x)  # (B, h, n, e)
        B, h, n, e = q.shape
        qb, kb, vb, valid, order = self._blocks(q, k, v, mask)
        nb, b = qb.shape[2], qb.shape[3]
        S = self._sort(qb, kb, valid, causal)  # (B, h, nb, nb)
        # sorted blocks: every slot mixes the real keys / values at that slot, renormalised (the last
        # column, the real-token indicator, gives the normaliser from the same matmul)
        m = valid[:, None, :, :, None].to(kb.dtype).expand(B, h, nb, b, 1)
        kvm = torch.cat([kb * m, vb * m, m], dim=-1)  # (B, h, nb, b, 2e+1)
        mixed = (S.to(kvm.dtype) @ kvm.flatten(3)).view(B, h, nb, b, 2 * e + 1)
        den = mixed[..., 2 * e :]  # (B, h, nb, b, 1)
        slot_ok = den > 0
        mixed = mixed[..., : 2 * e] / torch.where(slot_ok, den, torch.ones_like(den))
        keys = torch.cat([kb, mixed[..., :e]], dim=3)  # (B, h, nb, 2b, e): own block, then sorted block
        vals = torch.cat([vb, mixed[..., e:]], dim=3)
        s = (qb @ keys.transpose(-2, -1)).float() * self.scale  # (B, h, nb, b, 2b)
        own = valid[:, None, :, None, :].expand(B, 1, nb, b, b)
        if causal:
            own = own & torch.ones(b, b, dtype=torch.bool, device=x.device).tril_()
        allowed = torch.cat([own.expand(B, h, nb, b, b), slot_ok[..., 0][..., None, :].expand(B, h, nb, b, b)], dim=-1)
        # a padding query attends to itself only (finite, and causal wherever it sits)
        itself = torch.eye(b, 2 * b, dtype=torch.bool, device=x.device)
        real_q = valid[:, None, :, :, None]  # (B, 1, nb, b, 1)
        allowed = allowed & real_q | itself & ~real_q
        p = s.masked_fill_(~allowed, torch.finfo(s.dtype).min).softmax(dim=-1)
        y = (p.to(vals.dtype) @ vals).view(B, h, nb * b, e)[:, :, :n]
        w = None
        if need_weights:
            w = self._dense_weights(p, S, valid, den, slot_ok, n)
        if order is not None:  # back to the original positions
            inv = torch.argsort(order, dim=-1)
            y = y.gather(2, inv[:, None, :, None].expand(B, h, n, e))
            if w is not None:
                w = w.gather(2, inv[:, None, :, None].expand(B, h, n, n)).gather(3, inv[:, None, None, :].expand(B, h, n, n))
        return self.out(merge_heads(y)), w

    @staticmethod
    def _dense_weights(p: Tensor, S: Tensor, valid: Tensor, den: Tensor, slot_ok: Tensor, n: int) -> Tensor:
        """The (B, h, n, n) matrix applied, in the blocked (real-first) order: own-block weights on the
        block diagonal, a sorted slot's weight spread over the keys it mixes (O(n^2), for inspection)."""
        B, h, nb, b, _ = p.shape
        p = p.float()
        own, srt = p[..., :b], p[..., b:]  # (B, h, nb, b, b)
        share = S.float()[..., None] * valid[:, None, None, :, :]  # (B, h, nb_i, nb_j, b_t): S_ij m_jt
        share = share / torch.where(slot_ok, den, torch.ones_like(den)).float()[..., 0][:, :, :, None, :]
        w = torch.einsum("bhiqt,bhijt->bhijqt", srt, share)  # (B, h, nb_i, nb_j, b_q, b_t)
        w.diagonal(dim1=2, dim2=3).add_(own.permute(0, 1, 3, 4, 2))  # block i's own keys
        return w.permute(0, 1, 2, 4, 3, 5).reshape(B, h, nb * b, nb * b)[:, :, :n, :n]

    # ------------------------------------------------------------------ cost model

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        b, nb = self._layout(seq_len)
        h, e = self.heads, self.head_dim
        sort_net = 2 * batch * h * nb * nb * e  # block-pair scores
        mix = 2 * batch * h * nb * nb * b * (2 * e + 1)  # S @ [K | V | real]
        attend = 2 * 2 * batch * h * nb * b * (2 * b) * e  # each query over its block and the sorted block
        return sort_net + mix + attend

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", block_size={self.block_size}, sinkhorn_iters={self.sinkhorn_iters}, "
                f"temperature={self.temperature}, gumbel={self.gumbel}")
