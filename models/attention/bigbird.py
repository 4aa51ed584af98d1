"""`bigbird` (Zaheer et al. 2020, the ITC form): block-sparse attention on blocks of `block` positions. Query
block a sees key blocks a - 1, a, a + 1 (the window), `random_blocks` = r key blocks drawn at random per
query block, and the first `global_blocks` = g blocks, whose tokens also attend to every key (global). The
paper's code makes the first and the last block global; here they are the first g, so position 0 (a CLS
token) is always global.

Allowed pairs: |a - b| <= 1 or b < g or a < g or b in R[a], for query block a = i // block, key block
b = j // block. R is drawn once per sequence length from `seed` (torch.Generator seeded with seed and the
block count): the same length gives the same blocks on every call, in every process and on every device;
a query block's r blocks are distinct and outside its window and the global blocks (fewer where fewer are
left). All heads share them. Positions are ranks among the real tokens: with a padding mask each batch
element's real tokens are attended alone (its blocks drawn for its real length), so padding anywhere
changes nothing.
Not causal: random blocks and global tokens see the future.

Blocked (blocked.py): the window is the band, the global keys are read once by every query, the random
blocks are gathered per query block, the global rows are dense. O(n (3 + r + g) block e + g block n e) per head.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from utils.checks import check_int

from .base import Attention
from .blocked import BlockPattern, attend, band_reach, pattern_cache
from .functional import merge_heads
from .registry import register_attention


@pattern_cache(maxsize=64)
def random_blocks(blocks: int, global_blocks: int, r: int, seed: int) -> Optional[Tensor]:
    """(blocks, slots) key blocks per query block, -1 for an empty slot; None when no query block has a
    candidate. Candidates: outside the window (|a - b| > 1), not global; global query blocks draw none.
    slots = min(r, the most candidates any query block has)."""
    a = torch.arange(blocks)[:, None]
    b = torch.arange(blocks)[None, :]
    cand = ((a - b).abs() > 1) & (b >= global_blocks) & (a >= global_blocks)
    slots = min(r, int(cand.sum(-1).max())) if blocks else 0
    if slots == 0:
        return None
    gen = torch.Generator().manual_seed((seed * 1_000_003 + blocks) % 2**63)
    u = torch.rand(blocks, blocks, generator=gen).masked_fill_(~cand, 2.0)
    pick = u.argsort(-1)[:, :slots]  # the candidates in a random order, then the others
    return torch.where(u.gather(-1, pick) < 2.0, pick, torch.full_like(pick, -1))


@pattern_cache(maxsize=16)
def bigbird_pattern(n: int, block: int, r: int, global_blocks: int, seed: int) -> BlockPattern:
    W = min(block, n)
    nb = -(-n // W)
    before, after = band_reach(nb, False)
    g = min(global_blocks, nb)
    R = random_blocks(nb, g, r, seed)

    def rule(i: Tensor, j: Tensor) -> Tensor:
        a, b = i // W, j // W
        allowed = ((a - b).abs() <= 1) | (b < g) | (a < g)
        if R is not None:
            allowed = allowed | (R[a] == b[..., None]).any(-1)
        return allowed

    glob = torch.arange(min(g * W, n)) if g else None
    return BlockPattern(n, W, before, after, rule, shared=glob, gathered=R, global_rows=glob)


@register_attention("bigbird")
class BigBirdAttention(Attention):
    supports_mask = True
    supports_causal = False
    not_causal_reason = "its random blocks and global tokens attend to keys after the query"
    padding_anywhere = True  # positions are ranks among the real tokens
    has_weights = True
    example_options = {"block": 2, "random_blocks": 2, "global_blocks": 1}
    bad_options = ({"block": 0}, {"random_blocks": -1}, {"global_blocks": -1}, {"seed": -1})

    def __init__(self, dim: int, heads: int = 8, *, block: int = 64, random_blocks: int = 3, global_blocks: int = 2,
                 seed: int = 0, causal: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.block = check_int("block", block)
        self.random_blocks = check_int("random_blocks", random_blocks, low=0)
        self.global_blocks = check_int("global_blocks", global_blocks, low=0)
        self.seed = check_int("seed", seed, low=0)

    def pattern(self, n: int) -> BlockPattern:
        return bigbird_pattern(n, self.block, self.random_blocks, self.global_blocks, self.seed)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        y, w = attend(self, x, self.pattern, mask, causal, need_weights, ranks=True)  # (B, h, n, e)
        return self.out(merge_heads(y)), w

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        return self.pattern(seq_len).flops(batch, self.heads, self.head_dim)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", block={self.block}, random_blocks={self.random_blocks}, "
                f"global_blocks={self.global_blocks}, seed={self.seed}")
