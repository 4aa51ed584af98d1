"""`sparse` (Child et al. 2019, "Generating long sequences with sparse transformers"): the two factorised
patterns, merged in every head (the paper's "merged" variant: each head attends to the union A(1) u A(2)).
With stride l and `summary` = c:

    pattern="fixed"    A(1) = {j : j // l = i // l} (the query's own block of l positions),
                       A(2) = {j : j mod l >= l - c} (the last c positions of every block, its summary)
    pattern="strided"  A(1) = {j : |i - j| < l} (causal: i - l < j <= i, the previous l positions),
                       A(2) = {j : (i - j) mod l = 0} (every l-th position)

Causal (the paper's setting) adds j <= i; without it the patterns read both ways. Positions are ranks
among the real tokens: with a padding mask each batch element's real tokens are attended alone, so padding
anywhere changes nothing.

Blocked (blocked.py), block by block, never an n x n matrix: blocks of l positions; fixed: the own block
plus the summary positions read once by every query, O(n (l + c n / l) e) per head; strided: the
neighbouring blocks plus, for row r of each block, the keys t l + r of every block (one (l, n/l, n/l)
product in residue order), O(n (3l + n / l) e). With l ~ sqrt(n) both are O(n sqrt(n) e).
Decoding (causal, no padding): a KV cache of every position, since the strided pattern reaches back
to every l-th one and the fixed pattern to every summary; each new token is multiplied only by the keys its
pattern reaches (blocked.rule_attention): its block and the summaries (fixed), the last l positions and every
l-th one (strided), O(l + n / l) per token.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from utils.checks import check_choice, check_int

from .base import Attention
from .blocked import BlockPattern, Rule, attend, band_reach, pattern_cache, rule_attention
from .functional import append_cache, merge_heads
from .registry import register_attention

PATTERNS = ("fixed", "strided")


def sparse_rule(pattern: str, l: int, c: int) -> Rule:  # noqa: E741 (the paper's name)
    """A(1) u A(2) of the pattern, as allowed(i, j) (causality is added by the kernel)."""
    if pattern == "fixed":

        def rule(i: Tensor, j: Tensor) -> Tensor:
            return (j // l == i // l) | (j % l >= l - c)

        return rule

    def rule(i: Tensor, j: Tensor) -> Tensor:
        return ((i - j).abs() < l) | ((i - j) % l == 0)

    return rule


@pattern_cache(maxsize=16)
def sparse_pattern(n: int, pattern: str, stride: int, summary: int, causal: bool) -> BlockPattern:
    l = stride  # noqa: E741 (the paper's name)
    W = min(l, n)
    rule = sparse_rule(pattern, l, summary)
    if pattern == "fixed":
        pos = torch.arange(n)
        shared = pos[pos % l >= l - summary]
        return BlockPattern(n, W, 0, 0, rule, shared=shared if len(shared) else None)

    before, after = band_reach(-(-n // W), causal)
    return BlockPattern(n, W, before, after, rule, strided=W == l and n > l)


@register_attention("sparse")
class SparseAttention(Attention):
    supports_mask = True
    supports_causal = True
    padding_anywhere = True  # positions are ranks among the real tokens
    has_weights = True
    supports_decoding = True
    decoding_state = "kv-cache"  # every position's keys and values; a step reads only those its pattern reaches
    example_options = {"stride": 4, "summary": 1}
    bad_options = ({"pattern": "axial"}, {"stride": 0}, {"summary": 0}, {"summary": 65})

    def __init__(self, dim: int, heads: int = 8, *, pattern: str = "fixed", stride: int = 64, summary: int = 8,
                 causal: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.pattern_name = check_choice("pattern", pattern, PATTERNS)
        self.stride = check_int("stride", stride)
        self.summary = check_int("summary", summary)
        if self.pattern_name == "fixed" and self.summary > self.stride:
            raise ValueError(f"summary must be at most stride = {self.stride} (the last positions of each block) for "
                             f"the fixed pattern, got {summary!r}")

    def pattern(self, n: int, causal: bool) -> BlockPattern:
        return sparse_pattern(n, self.pattern_name, self.stride, self.summary, causal)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        pattern = lambda n: self.pattern(n, causal)  # noqa: E731
        y, w = attend(self, x, pattern, mask, causal, need_weights, ranks=True)  # (B, h, n, e)
        return self.out(merge_heads(y)), w

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        q, k, v = self.project_qkv(x)  # (B, h, t, e)
        k, v = append_cache(state, "k", k), append_cache(state, "v", v)  # (B, h, n, e)
        n = k.shape[2]
        kpos = torch.arange(n, device=x.device)
        rule = sparse_rule(self.pattern_name, self.stride, self.summary)
        y = rule_attention(q, k, v, kpos[n - x.shape[1] :], kpos, rule, self.scale)
        return self.out(merge_heads(y)), state

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        return self.pattern(seq_len, causal).flops(batch, self.heads, self.head_dim)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", pattern={self.pattern_name!r}, stride={self.stride}, summary={self.summary}")
