"""Long Range Arena classifiers around the pluggable attention (Tay et al. 2021; docs/lra.md).

    net = LRAClassifier(vocab_size=18, num_classes=10, seq_len=2000, dim=64, depth=2, heads=2, pool="mean")
    logits = net(input_ids, mask)               # (B, n) int64, (B, n) bool -> (B, num_classes)
    pair = LRAPairClassifier(vocab_size=257, num_classes=2, seq_len=4000, dim=64, depth=2, heads=2)
    logits = pair(input_ids, mask)              # (B, 2, n), (B, 2, n): two documents -> (B, num_classes)

Token and learned position embeddings, `depth` pre-norm blocks with any registered mechanism, a final
LayerNorm, CLS or mean pooling (as LRA's configurations do per task) and an MLP head (Linear, ReLU,
Linear). The pair model encodes both documents with one encoder and classifies [u, v, u*v, u-v].

Axis letters: B batch, n tokens, d width, h heads.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from models.encoder import (
    AttentionMapsMixin,
    AttentionSpec,
    build_blocks,
    init_weights,
    run_blocks,
    sized_attention_options,
)
from utils.checks import check_choice, check_int

POOLS = ("cls", "mean")


class LRAClassifier(AttentionMapsMixin, nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, seq_len: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 2.0, pool: str = "mean", attention: AttentionSpec = "softmax",
                 attention_options: Optional[Dict[str, Any]] = None, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.pool = check_choice("pool", pool, POOLS)
        self.seq_len = check_int("seq_len", seq_len)
        self.tokens = self.seq_len + (pool == "cls")  # what the attention sees: a CLS token goes in front
        self.embed = nn.Embedding(check_int("vocab_size", vocab_size, low=2), dim, padding_idx=0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, dim))
        self.drop = nn.Dropout(dropout)
        options = sized_attention_options(attention, attention_options, self.tokens)
        self.blocks = build_blocks(dim, depth, heads, attention, mlp_ratio, dropout, drop_path, options)
        self.norm = nn.LayerNorm(dim)
        self.head = self.make_head(dim, int(dim * mlp_ratio), check_int("num_classes", num_classes, low=2))
        nn.init.trunc_normal_(self.pos, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def make_head(self, dim: int, hidden: int, num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def _tokens(self, input_ids: Tensor, mask: Optional[Tensor]):
        if input_ids.shape[-1] > self.seq_len:
            raise ValueError(f"input_ids has {input_ids.shape[-1]} tokens, more than seq_len={self.seq_len} "
                             f"this network was built for")
        if mask is None:
            mask = input_ids != 0  # id 0 is padding
        h = self.embed(input_ids)  # (B, n, d)
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)  # (B, 1 + n, d)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return self.drop(h + self.pos[:, : h.shape[1]]), mask

    def encode(self, input_ids: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """(B, n) ids and (B, n) bool mask (True = real token) -> (B, d) pooled features."""
        h, mask = self._tokens(input_ids, mask)
        h = self.norm(run_blocks(self.blocks, h, mask))  # (B, n', d)
        if self.pool == "cls":
            return h[:, 0]
        w = mask.unsqueeze(-1).to(h.dtype)  # (B, n', 1): the mean over real tokens only
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)

    def forward(self, input_ids: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self.head(self.encode(input_ids, mask))  # (B, num_classes)

    @torch.no_grad()
    def attention_maps(self, input_ids: Tensor, mask: Optional[Tensor] = None) -> List[Tensor]:
        """Each block's (B, h, n', n') attention matrix (n' = n + 1 with a CLS token)."""
        if input_ids.dim() == 3:  # a pair: the first document's maps
            input_ids, mask = input_ids[:, 0], (mask[:, 0] if mask is not None else None)
        h, mask = self._tokens(input_ids, mask)
        _, maps = run_blocks(self.blocks, h, mask, return_weights=True)
        return maps


class LRAPairClassifier(LRAClassifier):
    """Two documents (LRA's Retrieval): one shared encoder, then the head on [u, v, u * v, u - v]."""

    def make_head(self, dim: int, hidden: int, num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, input_ids: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """input_ids, mask: (B, 2, n) -> (B, num_classes)."""
        if input_ids.dim() != 3 or input_ids.shape[1] != 2:
            raise ValueError(f"input_ids must be (batch, 2, n): two documents, got shape {tuple(input_ids.shape)}")
        b = input_ids.shape[0]
        both = self.encode(input_ids.flatten(0, 1), mask.flatten(0, 1) if mask is not None else None)  # (2B, d)
        u, v = both.view(b, 2, -1).unbind(1)  # (B, d) each
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))
