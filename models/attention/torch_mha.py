"""`torch_mha`: PyTorch's built-in nn.MultiheadAttention behind the common interface, the baseline
the custom mechanisms are compared with. Padding mask -> key_padding_mask; causality (and causality
merged with padding) -> a boolean attn_mask. O(n^2 d) time.
Decoding: nn.MultiheadAttention has no cache, but its weights are plain tensors: a step applies its input
projection (in_proj_weight, in_proj_bias) to the new tokens, attends over a KV cache with SDPA, and applies
its out_proj, which is what nn.MultiheadAttention computes (no bias_k / add_zero_attn here, dropout 0).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Attention
from .functional import append_cache, attention_mask, exact_attention_flops, key_padding_mask, merge_heads, split_heads
from .registry import register_attention


@register_attention("torch_mha")
class TorchMHA(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True
    exact = True
    supports_decoding = True
    decoding_state = "kv-cache"  # every position's keys and values: (B, h, n, e) each

    def _build_projections(self, bias: bool) -> None:
        self.mha = nn.MultiheadAttention(self.dim, self.heads, bias=bias, batch_first=True)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        B, n, _ = x.shape
        kpm, attn_mask = None, None  # nn.MultiheadAttention masks are True where attention is NOT allowed
        if causal:
            allowed = attention_mask(mask, True, n, x.device)  # (n, n) or (B, 1, n, n)
            attn_mask = ~allowed if allowed.dim() == 2 else (~allowed).expand(B, self.heads, n, n).reshape(B * self.heads, n, n)
        elif mask is not None:
            kpm = ~key_padding_mask(mask)[:, 0, 0, :]  # (B, n)
        y, w = self.mha(
            x, x, x,
            key_padding_mask=kpm,
            attn_mask=attn_mask,
            need_weights=need_weights,
            average_attn_weights=False,
            is_causal=causal and attn_mask is not None and mask is None,
        )
        return y, w

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        m = self.mha
        q, k, v = (split_heads(t, self.heads) for t in F.linear(x, m.in_proj_weight, m.in_proj_bias).chunk(3, dim=-1))
        k, v = append_cache(state, "k", k), append_cache(state, "v", v)  # (B, h, n, e)
        t, n = q.shape[2], k.shape[2]
        allowed = None if t == 1 else torch.ones(t, n, dtype=torch.bool, device=x.device).tril_(n - t)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, h, t, e)
        return m.out_proj(merge_heads(y)), state

    def get_projection_weights(self) -> Dict[str, Optional[Tensor]]:
        d, m = self.dim, self.mha
        w, b = m.in_proj_weight.detach(), m.in_proj_bias
        out = {"q_w": w[:d], "k_w": w[d : 2 * d], "v_w": w[2 * d :], "o_w": m.out_proj.weight.detach(), "o_b": m.out_proj.bias}
        if b is None:
            out.update(q_b=None, k_b=None, v_b=None)
        else:
            b = b.detach()
            out.update(q_b=b[:d], k_b=b[d : 2 * d], v_b=b[2 * d :])
        return {k: (v.detach().clone() if v is not None else None) for k, v in out.items()}

    @torch.no_grad()
    def load_projection_weights(self, w: Dict[str, Optional[Tensor]]) -> None:
        m = self.mha
        m.in_proj_weight.copy_(torch.cat([w["q_w"], w["k_w"], w["v_w"]]))
        if m.in_proj_bias is not None:
            m.in_proj_bias.copy_(torch.cat([w["q_b"], w["k_b"], w["v_b"]]))
        m.out_proj.weight.copy_(w["o_w"])
        if m.out_proj.bias is not None:
            m.out_proj.bias.copy_(w["o_b"])

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        return exact_attention_flops(batch, seq_len, self.dim, causal)
