"""`longformer` (Beltagy et al. 2020): a sliding window of radius `window` (optionally dilated: keys
j = i + dilation * t, |t| <= window) plus `global_tokens` = g global tokens, the first g positions (covers a
CLS token at position 0), which attend to every key and are attended by every query.

Allowed pairs: window(i, j) or j < g or i < g. Positions are ranks among the real tokens: with a padding
mask each batch element's real tokens are attended alone, so the global tokens are the first g real ones
and padding anywhere changes nothing.
Causal: the window looks back only (i - window * dilation <= j <= i), every later query sees the global
tokens, and a global query i < g sees its whole past, which lies inside the global prefix: the pattern
masked by j <= i, nothing from the future.

Blocked (blocked.py): window blocks of W = window positions per residue group, the g global keys read once
by every query, the g global rows as dense rows. O(n (3w + g) e + g n e) per head.
Decoding (causal, no padding): a query sees the g global keys and at most window * dilation positions back, so
the state holds the first g positions' keys and values and a rolling cache of the last window * dilation
(blocked.window_step): O((g + w) e) per head whatever the length.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from utils.checks import check_int

from .base import Attention
from .blocked import BlockPattern, attend, band_reach, pattern_cache, rule_attention, window_step
from .functional import merge_heads
from .registry import register_attention


def longformer_rule(window: int, dilation: int, g: int):
    """Allowed pairs: the (dilated) window, or a global key j < g, or a global query i < g."""

    def rule(i: Tensor, j: Tensor) -> Tensor:
        rel = j - i
        return ((rel % dilation == 0) & (rel.abs() <= window * dilation)) | (j < g) | (i < g)

    return rule


@pattern_cache(maxsize=16)
def longformer_pattern(n: int, window: int, dilation: int, global_tokens: int, causal: bool) -> BlockPattern:
    L = -(-n // dilation)
    W = max(1, min(window, L))
    before, after = band_reach(-(-L // W), causal)
    g = min(global_tokens, n)
    rule = longformer_rule(window, dilation, g)
    shared = torch.arange(g) if g else None
    # causal: a global query's past is inside the global prefix, which the shared keys already give it
    rows = torch.arange(g) if g and not causal else None
    return BlockPattern(n, W, before, after, rule, dilation=dilation, shared=shared, global_rows=rows)


@register_attention("longformer")
class LongformerAttention(Attention):
    supports_mask = True
    supports_causal = True
    padding_anywhere = True  # positions are ranks among the real tokens
    has_weights = True
    supports_decoding = True
    decoding_state = "window"  # the g global keys and values plus the last window * dilation: (B, h, g + w d, e) each
    example_options = {"window": 3, "global_tokens": 2}
    bad_options = ({"window": 0}, {"dilation": 0}, {"global_tokens": -1})

    def __init__(self, dim: int, heads: int = 8, *, window: int = 64, dilation: int = 1, global_tokens: int = 1,
                 causal: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.window, self.dilation = check_int("window", window), check_int("dilation", dilation)
        self.global_tokens = check_int("global_tokens", global_tokens, low=0)

    def pattern(self, n: int, causal: bool) -> BlockPattern:
        return longformer_pattern(n, self.window, self.dilation, self.global_tokens, causal)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        pattern = lambda n: self.pattern(n, causal)  # noqa: E731
        y, w = attend(self, x, pattern, mask, causal, need_weights, ranks=True)  # (B, h, n, e)
        return self.out(merge_heads(y)), w

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        q, k, v = self.project_qkv(x)  # (B, h, t, e)
        g = self.global_tokens
        keys, values, kpos = window_step(state, k, v, self.window * self.dilation, keep=g)
        qpos = torch.arange(state["pos"], state["pos"] + x.shape[1], device=x.device)
        y = rule_attention(q, keys, values, qpos, kpos, longformer_rule(self.window, self.dilation, g), self.scale)
        return self.out(merge_heads(y)), state

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        return self.pattern(seq_len, causal).flops(batch, self.heads, self.head_dim)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", window={self.window}, dilation={self.dilation}, global_tokens={self.global_tokens}"
