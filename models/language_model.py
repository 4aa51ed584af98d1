"""Causal language model around the pluggable attention (WikiText by default), with sampling.

    net = LanguageModel(vocab_size=33278, seq_len=256, dim=256, depth=4, heads=4, attention="linear")
    logits = net(input_ids)                     # (B, n) int64 -> (B, n, vocab) next-token logits
    ids = net.generate(prompt_ids, max_new_tokens=50, temperature=0.8, top_k=40)   # (B, n0 + 50)

Token embedding + learned positions, `depth` causal pre-norm blocks, a final LayerNorm and an output
layer that shares the embedding matrix (tied weights, Press & Wolf 2017). Mechanisms that cannot be
causal (Linformer, Nystromformer) fail at construction with a sentence naming the ones that can.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from models.encoder import AttentionSpec, TransformerEncoder, init_weights, sized_attention_options


class LanguageModel(TransformerEncoder):
    def __init__(self, vocab_size: int, seq_len: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, attention: AttentionSpec = "softmax",
                 attention_options: Optional[Dict[str, Any]] = None, dropout: float = 0.0, drop_path: float = 0.0):
        options = sized_attention_options(attention, attention_options, seq_len)
        super().__init__(vocab_size, dim, depth, heads, attention, None, seq_len, mlp_ratio=mlp_ratio,
                         dropout=dropout, drop_path=drop_path, attention_options=options, causal=True)
        self.seq_len = seq_len
        self.apply(init_weights)
        nn_init_embedding(self)

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids: (B, n) -> next-token logits (B, n, vocab) through the tied embedding."""
        h = self.encode(input_ids, causal=True)  # (B, n, d)
        return F.linear(h, self.embed.weight)  # (B, n, V)

    @torch.no_grad()
    def attention_maps(self, input_ids: Tensor) -> List[Tensor]:
        """Each block's causal (B, h, n, n) attention matrix."""
        _, maps = self.encode(input_ids, causal=True, return_weights=True)
        return maps

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """Sample `max_new_tokens` tokens after `input_ids` (B, n0); the context is cropped to the last
        `seq_len` tokens. temperature 0 is greedy decoding; top_k keeps the k most likely tokens."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, n) with n >= 1, got shape {tuple(input_ids.shape)}")
        was_training = self.training
        self.eval()
        ids = input_ids
        for _ in range(max_new_tokens):
            logits = self(ids[:, -self.seq_len:])[:, -1]  # (B, V), next-token logits
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits.float() / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            ids = torch.cat([ids, nxt], dim=1)
        self.train(was_training)
        return ids


def nn_init_embedding(model: TransformerEncoder) -> None:
    """The tied embedding doubles as the output layer: GPT-2's normal(0.02) keeps the first logits small."""
    torch.nn.init.normal_(model.embed.weight, std=0.02)
