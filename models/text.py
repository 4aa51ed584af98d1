"""Text classifier around the pluggable attention (IMDB sentiment by default).

    net = TextClassifier(vocab_size=16000, num_classes=2, dim=128, depth=2, heads=4, max_len=512, attention="performer")
    logits = net(input_ids, mask)               # (B, n) int64, (B, n) bool -> (B, num_classes)

Token embedding + learned positions, `depth` pre-norm blocks with the padding mask passed to every
attention layer, a final LayerNorm, a mean over the real tokens only, and a linear head: this is
models/encoder.TransformerEncoder named for the task (its sizes are the recipe's: training/tasks.py).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from models.encoder import AttentionSpec, TransformerEncoder, init_weights, sized_attention_options


class TextClassifier(TransformerEncoder):
    def __init__(self, vocab_size: int, num_classes: int, dim: int, depth: int, heads: int, max_len: int,
                 mlp_ratio: float = 2.0, attention: AttentionSpec = "softmax",
                 attention_options: Optional[Dict[str, Any]] = None, dropout: float = 0.0, drop_path: float = 0.0):
        options = sized_attention_options(attention, attention_options, max_len)
        super().__init__(vocab_size, dim, depth, heads, attention, num_classes, max_len, mlp_ratio=mlp_ratio,
                         dropout=dropout, drop_path=drop_path, attention_options=options)
        self.seq_len = max_len
        self.apply(init_weights)

    @torch.no_grad()
    def attention_maps(self, input_ids: Tensor, mask: Optional[Tensor] = None) -> List[Tensor]:
        """Each block's (B, h, n, n) attention matrix."""
        _, maps = self.encode(input_ids, mask, return_weights=True)
        return maps
