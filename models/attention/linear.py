"""`linear`: Katharopoulos et al. 2020, "Transformers are RNNs". Feature map phi(x) = elu(x) + 1;
out_i = phi(q_i) . sum_j phi(k_j) v_j^T / phi(q_i) . sum_j phi(k_j). Non-causal O(n e^2) per head;
causal through chunked prefix sums (see functional.kernel_attention). The kernel runs in fp32
even under autocast: its sums over n lose too much in bf16/fp16.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from utils.checks import check_int

from .base import Attention
from .functional import (
    elu_features,
    kernel_attention,
    kernel_attention_flops,
    kernel_attention_step,
    kernel_weights,
    merge_heads,
)
from .registry import register_attention


@register_attention("linear")
class LinearAttention(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True
    supports_decoding = True
    decoding_state = "constant"  # sum_j phi(k_j) [v_j, 1]: (B, h, e, e + 1) whatever the length
    example_options = {"chunk": 8}
    bad_options = ({"chunk": 0},)

    def __init__(self, dim: int, heads: int = 8, *, chunk: int = 64, causal: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.chunk = check_int("chunk", chunk)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        q, k, v = self.project_qkv(x)  # (B, h, n, e)
        with torch.autocast(x.device.type, enabled=False):
            qf, kf = elu_features(q, k, mask)
            y = kernel_attention(qf, kf, v.float(), causal=causal, chunk=self.chunk, eps=1e-30)
            w = kernel_weights(qf, kf, causal, eps=1e-30) if need_weights else None
        return self.out(merge_heads(y.to(v.dtype))), w

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        q, k, v = self.project_qkv(x)
        with torch.autocast(x.device.type, enabled=False):
            qf, kf = elu_features(q, k, None)
            y, state["kv"] = kernel_attention_step(qf, kf, v.float(), state.get("kv"), eps=1e-30)
        return self.out(merge_heads(y.to(v.dtype))), state

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        e = self.head_dim
        return kernel_attention_flops(batch, self.heads, seq_len, e, e, causal, self.chunk)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", chunk={self.chunk}"
