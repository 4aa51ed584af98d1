"""`linformer`: Wang et al. 2020. Keys and values are projected along the sequence to k rows by
learned (k, n) matrices E and F: softmax(Q (E K)^T / sqrt(e)) (F V). O(n k d) time and memory.

Any length up to `max_seq_len` (E and F hold that many columns; a shorter sequence uses the first
n). Padding: column j of E/F is chosen by the rank of token j among the real tokens, and padding
columns are zero, so real outputs do not depend on where padding sits or how much there is.
Sharing (the paper's options within one layer): "headwise" one E and one F for all heads (default),
"kv" E = F, "none" a pair per head. Not causal: every projected key mixes future positions.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Attention, _check_positive_int
from .functional import merge_heads
from .registry import register_attention

SHARING = ("headwise", "kv", "none")


@register_attention("linformer")
class LinformerAttention(Attention):
    supports_mask = True
    supports_causal = False
    has_weights = False  # its effective token-to-token matrix (softmax(Q(EK)^T) F) is not a distribution
    not_causal_reason = "each projected key mixes all positions, future ones included"

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
        _check_positive_int("k", k)
        _check_positive_int("max_seq_len", max_seq_len)
        if sharing not in SHARING:
            raise ValueError(f"sharing must be one of {', '.join(SHARING)}, got {sharing!r}")
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

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        n = x.shape[1]
        q, k, v = self.project_qkv(x)  # (B, h, n, e)
        E = self._projection(self.proj_k, n, mask).to(k.dtype)
        Fp = E if self.sharing == "kv" else self._projection(self.proj_v, n, mask).to(v.dtype)
        kp = E @ k  # (B, h, k, e)
        vp = Fp @ v  # (B, h, k, e)
        y = F.scaled_dot_product_attention(q, kp, vp)  # (B, h, n, e)
        return self.out(merge_heads(y)), None

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        # E K and F V: 2 * 2 * B * k * n * d; Q (EK)^T and A (FV): 2 * 2 * B * n * k * d
        return 8 * batch * seq_len * self.k * self.dim

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={self.k}, max_seq_len={self._max_len}, sharing={self.sharing!r}"
