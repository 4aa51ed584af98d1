"""`softmax`: exact multi-head attention through F.scaled_dot_product_attention (fused kernels:
flash / memory-efficient on GPU, the flash-style kernel on CPU), merged QKV projection.

A padding mask and causality are merged into one boolean mask before SDPA is called; SDPA never
sees both a mask and is_causal=True. Time O(n^2 d), memory O(n d) with the fused kernels.

Grouped-query attention (Ainslie et al. 2023; Shazeer 2019 for kv_heads = 1, multi-query): `kv_heads`
key/value heads, each shared by heads / kv_heads consecutive query heads (query head i reads K/V head
i // (heads / kv_heads), repeat-interleave order). The merged projection is then d -> d + 2 kv_heads e,
so parameters, projection FLOPs and the decoding KV cache shrink by heads / kv_heads on the K/V side;
the attention FLOPs do not (every query head still meets every key). SDPA's `enable_gqa=True` reads the
shared heads without copying them (measured on this CPU, n = 1024, 8 query / 2 K/V heads, one thread:
as fast as expanding K/V first, within the noise of a shared machine). kv_heads = heads (the default)
is the plain layout, parameter for parameter and bit for bit.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Attention
from .functional import (
    append_cache,
    attention_mask,
    check_kv_heads,
    exact_attention_flops,
    key_padding_mask,
    masked_softmax,
    merge_heads,
    split_heads,
)
from .registry import register_attention


@register_attention("softmax")
class SoftmaxAttention(Attention):
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
        self.kv_heads, self.kv_dim = kv, kv * self.head_dim
        self.qkv = nn.Linear(self.dim, self.dim + 2 * self.kv_dim, bias=bias)
        self.out = nn.Linear(self.dim, self.dim, bias=bias)

    def project_qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(B, n, d) -> q (B, h, n, e), k and v (B, kv_heads, n, e)"""
        q, k, v = self.qkv(x).split([self.dim, self.kv_dim, self.kv_dim], dim=-1)
        return split_heads(q, self.heads), split_heads(k, self.kv_heads), split_heads(v, self.kv_heads)

    def get_projection_weights(self) -> Dict[str, Optional[Tensor]]:
        """q_w (d, d), k_w and v_w (kv_heads e, d): (d, d) unless kv_heads < heads; biases to match."""
        sizes = [self.dim, self.kv_dim, self.kv_dim]
        w, b = self.qkv.weight.detach().split(sizes), self.qkv.bias
        bs = (None, None, None) if b is None else b.detach().split(sizes)
        out = {"q_w": w[0], "k_w": w[1], "v_w": w[2], "q_b": bs[0], "k_b": bs[1], "v_b": bs[2],
               "o_w": self.out.weight.detach(), "o_b": self.out.bias.detach() if self.out.bias is not None else None}
        return {k: (v.clone() if v is not None else None) for k, v in out.items()}

    @property
    def _gqa(self) -> bool:
        return self.kv_heads != self.heads

    def _expand_kv(self, t: Tensor) -> Tensor:
        """(B, kv_heads, n, e) -> (B, h, n, e), for the explicit weights path"""
        return t.repeat_interleave(self.heads // self.kv_heads, dim=1) if self._gqa else t

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        q, k, v = self.project_qkv(x)  # (B, h, n, e), (B, kv, n, e) twice
        if need_weights:  # explicit path: the fused kernel does not expose its probabilities
            k, v = self._expand_kv(k), self._expand_kv(v)
            allowed = attention_mask(mask, causal, x.shape[1], x.device)
            attn = masked_softmax((q @ k.transpose(-2, -1)) * self.scale, allowed)  # (B, h, n, n)
            return self.out(merge_heads(attn @ v)), attn
        gqa = {"enable_gqa": True} if self._gqa else {}  # the default layout calls SDPA exactly as before
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa)
        elif causal:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(mask, True, x.shape[1], x.device), **gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_mask(mask), **gqa)
        return self.out(merge_heads(y)), None  # (B, n, d)

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        q, k, v = self.project_qkv(x)  # (B, h, t, e), (B, kv, t, e) twice
        k, v = append_cache(state, "k", k), append_cache(state, "v", v)  # the cache holds kv_heads heads: heads / kv_heads times smaller
        t, n = q.shape[2], k.shape[2]
        # query i (absolute position n - t + i) sees keys 0 .. n - t + i; SDPA's is_causal aligns top-left
        allowed = None if t == 1 else torch.ones(t, n, dtype=torch.bool, device=x.device).tril_(n - t)
        gqa = {"enable_gqa": True} if self._gqa else {}
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, **gqa)
        return self.out(merge_heads(y)), state

    def projection_flops(self, seq_len: int, batch: int = 1) -> int:
        return 2 * batch * seq_len * self.dim * (2 * self.dim + 2 * self.kv_dim)  # Q and output, K and V

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        return exact_attention_flops(batch, seq_len, self.dim, causal)  # every query head meets every key

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", kv_heads={self.kv_heads}" if self._gqa else "")
