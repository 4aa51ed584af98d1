"""`hybrid`: heads split between dilated local windows and global linear attention, the "hybrid" of
the efficient-ViT study.

Design: of h heads, `local_heads` (default h // 2) run sliding-window attention (see local.py)
with radius `window`; they are divided into contiguous groups, one per entry of `dilations`, so
e.g. dilations (1, 2) gives half the local heads a dense window and half a window that skips every
other token (2x the reach for the same cost). The remaining h - local_heads heads run global
linear attention (elu + 1 features, see linear.py). Local heads model fine, nearby structure
exactly; global heads carry long-range context at linear cost.

Complexity per layer: O(n (2 window + 1) e) per local head plus O(n e^2) per global head, i.e.
linear in n in time and memory. Causal and padding masks are supported by both parts.
Decoding: the local heads keep a rolling cache of the last window * max(dilations) keys and values
(blocked.window_step), the global heads linear attention's constant (e, e + 1) sum: a bounded state.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from utils.checks import check_int, check_int_list

from .base import Attention
from .blocked import (
    dense_window_weights,
    rule_attention,
    sliding_window_attention,
    window_flops,
    window_rule,
    window_step,
)
from .functional import (
    elu_features,
    kernel_attention,
    kernel_attention_flops,
    kernel_attention_step,
    kernel_weights,
    merge_heads,
)
from .registry import register_attention


@register_attention("hybrid")
class HybridAttention(Attention):
    supports_mask = True
    supports_causal = True
    padding_anywhere = False  # windows are defined on positions: padding must sit at the ends
    has_weights = True
    supports_decoding = True
    # local heads: the last window * max(dilations) keys and values; global heads: (e, e + 1) each. Bounded
    decoding_state = "window"
    example_options = {"window": 3, "chunk": 8}
    bad_options = ({"local_heads": -1}, {"local_heads": 1000}, {"local_heads": 1.0}, {"window": 0}, {"dilations": ()},
                   {"dilations": (1, 0)}, {"dilations": 2}, {"dilations": "12"})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        local_heads: Optional[int] = None,
        window: int = 64,
        dilations: Optional[Sequence[int]] = None,
        chunk: int = 64,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        local_heads = heads // 2 if local_heads is None else check_int("local_heads", local_heads, low=0)
        if local_heads > heads:
            raise ValueError(f"local_heads must be an integer in [0, heads={heads}], got {local_heads!r}")
        window, chunk = check_int("window", window), check_int("chunk", chunk)
        # default: a dense and a dilated window, or the dense one alone when there is a single local head
        dilations = (1, 2)[: max(1, local_heads)] if dilations is None else check_int_list("dilations", dilations)
        if local_heads and len(dilations) > local_heads:
            raise ValueError(f"dilations {dilations} needs at least {len(dilations)} local heads, got local_heads={local_heads}")
        self.local_heads, self.window, self.dilations, self.chunk = local_heads, window, dilations, chunk
        # contiguous head groups: (start, stop, dilation)
        self.groups: List[Tuple[int, int, int]] = []
        if local_heads:
            base, extra = divmod(local_heads, len(dilations))
            start = 0
            for i, dil in enumerate(dilations):
                stop = start + base + (1 if i < extra else 0)
                self.groups.append((start, stop, dil))
                start = stop

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        q, k, v = self.project_qkv(x)  # (B, h, n, e)
        ys, ws = [], []
        for a, b, dil in self.groups:  # local heads
            ys.append(sliding_window_attention(q[:, a:b], k[:, a:b], v[:, a:b], self.window, mask, causal, dil, self.scale))
            if need_weights:
                ws.append(dense_window_weights(q[:, a:b], k[:, a:b], self.window, mask, causal, dil, self.scale))
        g = self.local_heads
        if g < self.heads:  # global linear heads
            with torch.autocast(x.device.type, enabled=False):
                qf, kf = elu_features(q[:, g:], k[:, g:], mask)
                ys.append(kernel_attention(qf, kf, v[:, g:].float(), causal=causal, chunk=self.chunk, eps=1e-30).to(v.dtype))
                if need_weights:
                    ws.append(kernel_weights(qf, kf, causal, eps=1e-30))
        y = torch.cat(ys, dim=1)  # (B, h, n, e)
        w = torch.cat([t.to(y.dtype) for t in ws], dim=1) if need_weights else None
        return self.out(merge_heads(y)), w

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        q, k, v = self.project_qkv(x)  # (B, h, t, e)
        g, ys = self.local_heads, []
        if self.groups:
            reach = self.window * max(dil for _, _, dil in self.groups)
            keys, values, kpos = window_step(state, k[:, :g], v[:, :g], reach)
            qpos = torch.arange(state["pos"], state["pos"] + x.shape[1], device=x.device)
            for a, b, dil in self.groups:
                ys.append(rule_attention(q[:, a:b], keys[:, a:b], values[:, a:b], qpos, kpos, window_rule(self.window, dil),
                                         self.scale))
        if g < self.heads:
            with torch.autocast(x.device.type, enabled=False):
                qf, kf = elu_features(q[:, g:], k[:, g:], None)
                y, state["kv"] = kernel_attention_step(qf, kf, v[:, g:].float(), state.get("kv"), eps=1e-30)
                ys.append(y.to(v.dtype))
        return self.out(merge_heads(torch.cat(ys, dim=1))), state

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        e = self.head_dim
        fl = sum(window_flops(batch, b - a, seq_len, e, self.window, causal, dil) for a, b, dil in self.groups)
        if self.local_heads < self.heads:
            fl += kernel_attention_flops(batch, self.heads - self.local_heads, seq_len, e, e, causal, self.chunk)
        return fl

    def extra_repr(self) -> str:
        return super().extra_repr() + f", local_heads={self.local_heads}, window={self.window}, dilations={self.dilations}"
