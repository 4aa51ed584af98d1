"""`local`: sliding-window attention. Query i attends to keys j with |i - j| <= window
(causal: i - window <= j <= i); with dilation delta, to j = i + delta * t, |t| <= window.

Blocked implementation, O(n w) time and memory, never an n x n matrix: the sequence is cut into
blocks of W = window positions; each query block attends to its own block and its neighbours
(previous and next; causal: previous only), i.e. 3W (2W) keys, and a band mask trims that to the
exact window. Dilation regroups positions by residue mod delta, each group an ordinary window.
The (B, h, n, n) weights returned on request are the same band-masked softmax written densely
(O(n^2), for inspection). The kernel is blocked.py's, shared with `hybrid`, `longformer`, `bigbird` and `sparse`.
Decoding: a query sees at most window * dilation positions back, so the state is a rolling cache of the
last window * dilation keys and values (blocked.window_step), O(window e) per head whatever the length.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from utils.checks import check_int

from .base import Attention
from .blocked import attend, rule_attention, window_flops, window_pattern, window_rule, window_step
from .functional import merge_heads
from .registry import register_attention


@register_attention("local")
class LocalAttention(Attention):
    supports_mask = True
    supports_causal = True
    padding_anywhere = False  # windows are defined on positions: padding must sit at the ends
    has_weights = True
    supports_decoding = True
    decoding_state = "window"  # the last window * dilation keys and values: (B, h, w * dilation, e) each
    example_options = {"window": 3}
    bad_options = ({"window": 0}, {"dilation": 0})

    def __init__(self, dim: int, heads: int = 8, *, window: int = 64, dilation: int = 1, causal: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.window, self.dilation = check_int("window", window), check_int("dilation", dilation)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        pattern = lambda n: window_pattern(n, self.window, self.dilation, causal)  # noqa: E731
        y, w = attend(self, x, pattern, mask, causal, need_weights, ranks=False)  # (B, h, n, e)
        return self.out(merge_heads(y)), w

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        q, k, v = self.project_qkv(x)  # (B, h, t, e)
        keys, values, kpos = window_step(state, k, v, self.window * self.dilation)
        qpos = torch.arange(state["pos"], state["pos"] + x.shape[1], device=x.device)
        y = rule_attention(q, keys, values, qpos, kpos, window_rule(self.window, self.dilation), self.scale)
        return self.out(merge_heads(y)), state

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        return window_flops(batch, self.heads, seq_len, self.head_dim, self.window, causal, self.dilation)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", window={self.window}, dilation={self.dilation}"
