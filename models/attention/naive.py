"""`naive`: the from-scratch reference. Separate Q, K, V projections, explicit QK^T / sqrt(e),
masked softmax, then times V. Materialises the (B, h, n, n) matrix: O(n^2 d) time, O(n^2) memory.
Used to check the fused path and to draw attention maps.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .base import Attention
from .functional import attention_mask, exact_attention_flops, masked_softmax, merge_heads, split_heads
from .registry import register_attention


@register_attention("naive")
class NaiveAttention(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True
    exact = True

    def _build_projections(self, bias: bool) -> None:
        self.to_q = nn.Linear(self.dim, self.dim, bias=bias)
        self.to_k = nn.Linear(self.dim, self.dim, bias=bias)
        self.to_v = nn.Linear(self.dim, self.dim, bias=bias)
        self.out = nn.Linear(self.dim, self.dim, bias=bias)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        q = split_heads(self.to_q(x), self.heads)  # (B, h, n, e)
        k = split_heads(self.to_k(x), self.heads)
        v = split_heads(self.to_v(x), self.heads)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, n, n)
        attn = masked_softmax(scores, attention_mask(mask, causal, x.shape[1], x.device))
        y = attn @ v  # (B, h, n, e)
        return self.out(merge_heads(y)), (attn if need_weights else None)

    def get_projection_weights(self) -> Dict[str, Optional[Tensor]]:
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

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        return exact_attention_flops(batch, seq_len, self.dim, causal)
