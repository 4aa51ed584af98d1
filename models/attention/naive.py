"""`naive`: the from-scratch reference. Separate Q, K, V projections, explicit QK^T / sqrt(e),
masked softmax, then times V. Materialises the (B, h, n, n) matrix: O(n^2 d) time, O(n^2) memory.
Used to check the fused path and to draw attention maps.

`kv_heads` (default heads) gives grouped-query attention, 1 multi-query: K and V are projected to
kv_heads heads (d -> kv_heads e) and repeated explicitly, query head i reading K/V head
i // (heads / kv_heads), the layout of `softmax`'s kv_heads. Decoding keeps a KV cache of those
kv_heads heads (B, kv_heads, n, e), heads / kv_heads times smaller than the full one.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .base import Attention
from .functional import (
    append_cache,
    attention_mask,
    check_kv_heads,
    exact_attention_flops,
    masked_softmax,
    merge_heads,
    split_heads,
)
from .registry import register_attention


@register_attention("naive")
class NaiveAttention(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True
    exact = True
    supports_decoding = True
    decoding_state = "kv-cache"  # every position's keys and values: (B, kv_heads, n, e) each
    bad_options = ({"kv_heads": 3}, {"kv_heads": 0}, {"kv_heads": 2.0})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        kv_heads: Optional[int] = None,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        self._kv_heads_option = kv_heads  # read by _build_projections, which Attention.__init__ calls
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)

    def _build_projections(self, bias: bool) -> None:
        kv = check_kv_heads(self._kv_heads_option, self.heads)
        self.kv_heads = kv
        self.to_q = nn.Linear(self.dim, self.dim, bias=bias)
        self.to_k = nn.Linear(self.dim, kv * self.head_dim, bias=bias)
        self.to_v = nn.Linear(self.dim, kv * self.head_dim, bias=bias)
        self.out = nn.Linear(self.dim, self.dim, bias=bias)

    def _kv(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, n, d) -> k, v (B, kv_heads, n, e)"""
        return split_heads(self.to_k(x), self.kv_heads), split_heads(self.to_v(x), self.kv_heads)

    def _repeat(self, t: Tensor) -> Tensor:
        """(B, kv_heads, n, e) -> (B, h, n, e): each K/V head serves heads / kv_heads consecutive query heads"""
        return t if self.kv_heads == self.heads else t.repeat_interleave(self.heads // self.kv_heads, dim=1)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        q = split_heads(self.to_q(x), self.heads)  # (B, h, n, e)
        k, v = (self._repeat(t) for t in self._kv(x))  # (B, h, n, e)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, n, n)
        attn = masked_softmax(scores, attention_mask(mask, causal, x.shape[1], x.device))
        y = attn @ v  # (B, h, n, e)
        return self.out(merge_heads(y)), (attn if need_weights else None)

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        q = split_heads(self.to_q(x), self.heads)  # (B, h, t, e)
        k, v = self._kv(x)  # (B, kv, t, e)
        k, v = append_cache(state, "k", k), append_cache(state, "v", v)  # (B, kv, n, e): the cache holds kv_heads heads only
        t, n = q.shape[2], k.shape[2]
        scores = (q @ self._repeat(k).transpose(-2, -1)) * self.scale  # (B, h, t, n)
        # query i (absolute position n - t + i) sees keys 0 .. n - t + i
        attn = masked_softmax(scores, torch.ones(t, n, dtype=torch.bool, device=x.device).tril_(n - t))
        return self.out(merge_heads(attn @ self._repeat(v))), state

    def get_projection_weights(self) -> Dict[str, Optional[Tensor]]:
        """q_w (d, d), k_w and v_w (kv_heads e, d): (d, d) unless kv_heads < heads; biases to match."""
        out = {}
        for key, lin in (("q", self.to_q), ("k", self.to_k), ("v", self.to_v), ("o", self.out)):
            out[f"{key}_w"] = lin.weight.detach().clone()
            out[f"{key}_b"] = lin.bias.detach().clone() if lin.bias is not None else None
        return out

    @torch.no_grad()
    def load_projection_weights(self, w: Dict[str, Optional[Tensor]]) -> None:
        for key, lin in (("q", self.to_q), ("k", self.to_k), ("v", self.to_v), ("o", self.out)):
            lin.weight.copy_(w[f"{key}_w"])
            if lin.bias is not None:
                lin.bias.copy_(w[f"{key}_b"])

    def projection_flops(self, seq_len: int, batch: int = 1) -> int:
        return 2 * batch * seq_len * self.dim * (2 * self.dim + 2 * self.kv_heads * self.head_dim)  # Q, O; K, V

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        return exact_attention_flops(batch, seq_len, self.dim, causal)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", kv_heads={self.kv_heads}" if self.kv_heads != self.heads else "")
