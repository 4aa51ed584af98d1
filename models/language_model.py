"""Causal language model around the pluggable attention (WikiText by default), with sampling.

    net = LanguageModel(vocab_size=33278, seq_len=256, dim=256, depth=4, heads=4, attention="linear")
    logits = net(input_ids)                     # (B, n) int64 -> (B, n, vocab) next-token logits
    ids = net.generate(prompt_ids, max_new_tokens=50, temperature=0.8, top_k=40)   # (B, n0 + 50)
    logits, states = net.step(prompt_ids)       # incremental decoding: then net.step(next_ids, states)

Token embedding + learned positions, `depth` causal pre-norm blocks, a final LayerNorm and an output
layer that shares the embedding matrix (tied weights, Press & Wolf 2017). Mechanisms that cannot be
causal (Linformer, Nystromformer) fail at construction with a sentence naming the ones that can.

Generation decodes incrementally when every block's attention declares `supports_decoding`: the prompt is
prefilled with one `step` per block, then each new token is one step over the blocks' caches / states, with
learned positions continuing from the cache. Once the context outgrows `seq_len` it is cropped to the last
`seq_len` tokens, which shifts every token's position, so from then on each token recomputes its cropped
window (as without a cache): the tokens and logits are those of recomputation. `use_cache=False` recomputes
throughout (for comparisons and benchmarks/bench_generation.py).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from models.encoder import AttentionSpec, TransformerEncoder, init_weights, sized_attention_options
from utils.checks import check_bool

State = List[Dict[str, Any]]  # one attention state per block


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

    @property
    def supports_decoding(self) -> bool:
        """Every block's attention decodes incrementally (`step`)."""
        return all(block.attn.supports_decoding for block in self.blocks)

    def _decode(self, input_ids: Tensor, states: Optional[State]) -> Tuple[Tensor, State]:
        """(B, t) ids after the positions `states` have seen -> (B, t, d) normalised features and the new states."""
        if not self.supports_decoding:
            names = sorted({block.attn.name for block in self.blocks if not block.attn.supports_decoding})
            raise ValueError(f"attention {', '.join(names)} has no incremental decoding; use generate(use_cache=False)")
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, t) tensor with t >= 1, got {got}")
        if states is not None and (not isinstance(states, list) or len(states) != len(self.blocks)):
            raise ValueError(f"states must be None or the list of {len(self.blocks)} block states an earlier step returned")
        pos, t = (0 if states is None else states[0]["pos"]), input_ids.shape[1]
        if pos + t > self.max_len:
            raise ValueError(f"positions {pos} .. {pos + t - 1} exceed the position table of max_len={self.max_len}; "
                             f"crop the context (generate does) and start a new state")
        h = self.drop(self.embed(input_ids) + self.pos[:, pos : pos + t])  # (B, t, d): positions continue from the cache
        new: State = []
        for block, state in zip(self.blocks, states or [None] * len(self.blocks)):
            h, state = block.step(h, state)
            new.append(state)
        return self.norm(h), new

    def step(self, input_ids: Tensor, states: Optional[State] = None) -> Tuple[Tensor, State]:
        """Incremental decoding: (B, t) ids that follow the positions `states` have seen (None: a new sequence)
        -> their next-token logits (B, t, V), equal to forward(all ids so far)[:, -t:] up to rounding, and the
        blocks' new states. At most max_len positions in all (the learned position table)."""
        h, states = self._decode(input_ids, states)
        return F.linear(h, self.embed.weight), states

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, use_cache: bool = True,
                 return_logits: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Sample `max_new_tokens` tokens after `input_ids` (B, n0); the context is cropped to the last
        `seq_len` tokens. temperature 0 is greedy decoding; top_k keeps the k most likely tokens.
        use_cache: decode incrementally where every block's attention can (see the module docstring), else
        recompute the context for every token. return_logits: also return the (B, max_new_tokens, V) next-token
        logits each token was drawn from."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, n) with n >= 1, got shape {tuple(input_ids.shape)}")
        cache = check_bool("use_cache", use_cache) and self.supports_decoding
        return_logits = check_bool("return_logits", return_logits)
        was_training = self.training
        self.eval()
        ids, states, drawn = input_ids, None, []
        for _ in range(max_new_tokens):
            if cache and ids.shape[1] <= self.seq_len:  # prefill the prompt, then one token per step
                h, states = self._decode(ids if states is None else ids[:, -1:], states)
            else:  # the cropped window: every position shifted, so no cache can serve it
                states = None
                h = self.encode(ids[:, -self.seq_len :], causal=True)  # (B, n, d)
            logits = F.linear(h[:, -1], self.embed.weight)  # (B, V), next-token logits
            if return_logits:
                drawn.append(logits.float())
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
        if not return_logits:
            return ids
        V = self.embed.weight.shape[0]
        return ids, torch.stack(drawn, dim=1) if drawn else ids.new_zeros(ids.shape[0], 0, V, dtype=torch.float32)

def nn_init_embedding(model: TransformerEncoder) -> None:
    """The tied embedding doubles as the output layer: GPT-2's normal(0.02) keeps the first logits small."""
    torch.nn.init.normal_(model.embed.weight, std=0.02)
