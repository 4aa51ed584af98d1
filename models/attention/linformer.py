"""`linformer`: Wang et al. 2020. Keys and values are projected along the sequence to k rows by
learned (k, n) matrices E and F: softmax(Q (E K)^T / sqrt(e)) (F V). O(n k d) time and memory.

Any length up to `max_seq_len` (E and F hold that many columns; a shorter sequence uses the first
n). Padding: column j of E/F is chosen by the rank of token j among the real tokens, and padding
columns are zero, so real outputs do not depend on where padding sits or how much there is.
Sharing (the paper's options within one layer): "headwise" one E and one F for all heads (default),
"kv" E = F, "none" a pair per head. Not causal: every projected key mixes future positions.

With E shared across heads the sequence projection commutes with the key/value projections:
E (x W_k^T + 1 b_k^T) = (E x) W_k^T + (E 1) b_k^T. So x is projected along the sequence first and
W_k, W_v act on k rows instead of n: 4 n d^2 + 4 k d^2 + 8 n k d FLOPs instead of 8 n d^2 + 8 n k d,
with identical outputs and no (n, d) key or value tensor. Per-head E ("none") uses the plain order.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.checks import check_choice, check_int

from .base import Attention
from .functional import merge_heads, split_heads
from .registry import register_attention

SHARING = ("headwise", "kv", "none")


@register_attention("linformer")
class LinformerAttention(Attention):
    supports_mask = True
    supports_causal = False
    has_weights = False  # its effective token-to-token matrix (softmax(Q(EK)^T) F) is not a distribution
    not_causal_reason = "each projected key mixes all positions, future ones included"
    example_options = {"k": 8, "max_seq_len": 256}
    bad_options = ({"k": 0}, {"max_seq_len": -1}, {"sharing": "bogus"})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        k: int = 256,
        max_seq_len: int = 4096,
        sharing: str = "headwise",
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        k, max_seq_len = check_int("k", k), check_int("max_seq_len", max_seq_len)
        sharing = check_choice("sharing", sharing, SHARING)
        self.k, self._max_len, self.sharing = k, max_seq_len, sharing
        shape = (heads, k, max_seq_len) if sharing == "none" else (k, max_seq_len)
        bound = 1.0 / math.sqrt(k)
        self.proj_k = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))  # E
        self.proj_v = self.proj_k if sharing == "kv" else nn.Parameter(torch.empty(shape).uniform_(-bound, bound))  # F

    @property
    def max_seq_len(self) -> Optional[int]:
        return self._max_len

    def _projection(self, p: Tensor, n: int, mask: Optional[Tensor]) -> Tensor:
        """(k, N) or (h, k, N) -> broadcastable against (B, h, n, e) from the left: (.., k, n)."""
        if mask is None:
            return p[..., :n]  # (k, n) or (h, k, n)
        rank = (mask.cumsum(dim=-1) - 1).clamp_min(0)  # (B, n) position among real tokens
        g = p[..., rank]  # (k, B, n) or (h, k, B, n)
        if p.dim() == 2:
            return (g.permute(1, 0, 2) * mask[:, None, :])[:, None]  # (B, 1, k, n)
        return g.permute(2, 0, 1, 3) * mask[:, None, None, :]  # (B, h, k, n)

    def _shared_projection(self, p: Tensor, n: int, mask: Optional[Tensor], dtype) -> Tensor:
        """A head-shared projection as (k, n), or (B, k, n) under a padding mask."""
        E = self._projection(p, n, mask).to(dtype)
        return E if mask is None else E[:, 0]

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        n, d = x.shape[1], self.dim
        w, b = self.qkv.weight, self.qkv.bias
        bq, bk, bv = (None, None, None) if b is None else (b[:d], b[d : 2 * d], b[2 * d :])
        q = split_heads(F.linear(x, w[:d], bq), self.heads)  # (B, h, n, e)
        if self.sharing == "none":
            k = split_heads(F.linear(x, w[d : 2 * d], bk), self.heads)
            v = split_heads(F.linear(x, w[2 * d :], bv), self.heads)
            kp = self._projection(self.proj_k, n, mask).to(k.dtype) @ k  # (B, h, k, e)
            vp = self._projection(self.proj_v, n, mask).to(v.dtype) @ v
        else:
            E = self._shared_projection(self.proj_k, n, mask, x.dtype)  # (k, n) or (B, k, n)
            Fm = E if self.sharing == "kv" else self._shared_projection(self.proj_v, n, mask, x.dtype)
            ex = E @ x  # (B, k, d): the sequence projection applied to x first
            fx = ex if self.sharing == "kv" else Fm @ x
            kp = F.linear(ex, w[d : 2 * d])  # (B, k, d)
            vp = F.linear(fx, w[2 * d :])
            if b is not None:  # E (1 b^T) = (E 1) b^T
                kp = kp + E.sum(dim=-1, keepdim=True) * bk
                vp = vp + Fm.sum(dim=-1, keepdim=True) * bv
            kp, vp = split_heads(kp, self.heads), split_heads(vp, self.heads)  # (B, h, k, e)
        y = F.scaled_dot_product_attention(q, kp, vp)  # (B, h, n, e)
        return self.out(merge_heads(y)), None

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        # Q (EK)^T and A (FV): 2 * 2 * B * n * k * d; E K and F V: 2 * 2 * B * k * n * d
        return 8 * batch * seq_len * self.k * self.dim

    def projection_flops(self, seq_len: int, batch: int = 1) -> int:
        if self.sharing == "none":
            return super().projection_flops(seq_len, batch)
        n, k, d = seq_len, self.k, self.dim
        return 2 * batch * (2 * n * d * d + 2 * k * d * d)  # Q and output on n rows, K and V on k rows

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={self.k}, max_seq_len={self._max_len}, sharing={self.sharing!r}"
