"""`softmax`: exact multi-head attention through F.scaled_dot_product_attention (fused kernels:
flash / memory-efficient on GPU, the flash-style kernel on CPU), merged QKV projection.

A padding mask and causality are merged into one boolean mask before SDPA is called; SDPA never
sees both a mask and is_causal=True. Time O(n^2 d), memory O(n d) with the fused kernels.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Attention
from .functional import attention_mask, exact_attention_flops, key_padding_mask, masked_softmax, merge_heads
from .registry import register_attention


@register_attention("softmax")
class SoftmaxAttention(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True
    exact = True
    supports_decoding = True
    decoding_state = "kv-cache"  # every position's keys and values: (B, h, n, e) each

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        q, k, v = self.project_qkv(x)  # (B, h, n, e)
        if need_weights:  # explicit path: the fused kernel does not expose its probabilities
            allowed = attention_mask(mask, causal, x.shape[1], x.device)
            attn = masked_softmax((q @ k.transpose(-2, -1)) * self.scale, allowed)  # (B, h, n, n)
            return self.out(merge_heads(attn @ v)), attn
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        elif causal:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(mask, True, x.shape[1], x.device))
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_mask(mask))
        return self.out(merge_heads(y)), None  # (B, n, d)

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        q, k, v = self.project_qkv(x)  # (B, h, t, e)
        k, v = (torch.cat([state[s], new], dim=2) if s in state else new for s, new in (("k", k), ("v", v)))
        state["k"], state["v"] = k, v
        t, n = q.shape[2], k.shape[2]
        # query i (absolute position n - t + i) sees keys 0 .. n - t + i; SDPA's is_causal aligns top-left
        allowed = None if t == 1 else torch.ones(t, n, dtype=torch.bool, device=x.device).tril_(n - t)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out(merge_heads(y)), state

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        return exact_attention_flops(batch, seq_len, self.dim, causal)
