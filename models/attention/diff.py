"""`diff`: Ye et al. 2024, "Differential Transformer" (arXiv 2410.05258). Each head subtracts two softmax maps,

    head = (softmax(Q1 K1^T / sqrt(e/2)) - lambda softmax(Q2 K2^T / sqrt(e/2))) V
    out  = W_O concat_heads((1 - lambda_init) RMSNorm(head))

so that attention noise common to both maps cancels. Head layout as in the paper (and its code): each of the
h heads of width e = d / h has two query/key halves of width e/2 (channels [0, e/2) and [e/2, e) of the
head's slice of the merged QKV projection) and values of width e: the parameter count of `softmax`.
lambda is learned through the paper's re-parameterisation, shared by the heads of the layer:

    lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init,  vectors in R^(e/2)
    lambda_init = 0.8 - 0.6 exp(-0.3 (depth - 1))      (or the fixed `lambda_init` option)

RMSNorm over each head's output (eps 1e-5, the paper's) carries no gain: a per-channel gain before W_O
is absorbed by W_O, and without it the map each head applies stays a matrix (see below).
Built on SDPA: CPU SDPA's fused kernel needs equal query and value widths, so (as the paper's
flash-attention version does) each map is applied to the two e/2 halves of V in separate calls, four SDPA
calls in all: 8 B pairs d attention FLOPs (QK^T counted once per V half), O(n d) memory, no n x n tensor.
Time O(n^2 d); causal through SDPA's is_causal, a padding mask merged with causality into one mask.
Returned weights (B, h, n, n): the matrix each head applies to V, the difference map with its rows scaled
by the head's RMS normalisation and (1 - lambda_init), (1 - lambda_init) D_i / rms((D V)_i); not a
distribution (negative entries; rows sum to neither 1 nor a constant).
Decoding: a KV cache of K1, K2 (e/2 each) and V (e) per head, 2 e numbers per head and position like softmax.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.checks import check_int, check_number

from .base import Attention
from .functional import (
    append_cache,
    attention_mask,
    exact_attention_flops,
    key_padding_mask,
    masked_softmax,
    merge_heads,
)
from .registry import register_attention

RMS_EPS = 1e-5


def lambda_init_for(depth: int) -> float:
    """The paper's schedule over layer depth (1-based): 0.2 at depth 1, towards 0.8 deep in the network."""
    return 0.8 - 0.6 * math.exp(-0.3 * (depth - 1))


@register_attention("diff")
class DiffAttention(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True  # the difference map, each row rescaled by the head's normalisation (tests/test_diff.py)
    weights_are_distributions = False  # a difference of two distributions, rescaled per row
    supports_decoding = True
    decoding_state = "kv-cache"  # K1, K2 (B, h, n, e/2) and V (B, h, n, e)
    bad_options = ({"depth": 0}, {"lambda_init": 1.0}, {"lambda_init": "0.5"})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        depth: int = 1,
        lambda_init: Optional[float] = None,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        if self.head_dim % 2:
            raise ValueError(f"heads must leave an even head width for diff's two query/key halves, "
                             f"got dim={dim} and heads={heads} (width {self.head_dim})")
        self.depth = check_int("depth", depth)
        self.lambda_init = (lambda_init_for(self.depth) if lambda_init is None
                            else check_number("lambda_init", lambda_init, 0, 1, high_open=True))
        self.half = self.head_dim // 2
        self.scale = self.half**-0.5
        # the paper's initialisation: N(0, 0.1^2) entries
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(0.1 * torch.randn(self.half)) for _ in range(4))

    def lam(self) -> Tensor:
        """The re-parameterised lambda (0-dim); element-wise products summed: no matmul to count."""
        return (torch.exp((self.lambda_q1 * self.lambda_k1).sum()) - torch.exp((self.lambda_q2 * self.lambda_k2).sum())
                + self.lambda_init)

    def _project(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(B, n, d) -> q1, q2, k1, k2 (B, h, n, e/2) and v (B, h, n, e), views of one merged projection."""
        B, n, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = q.view(B, n, self.heads, 2, self.half), k.view(B, n, self.heads, 2, self.half)
        q1, q2, k1, k2 = (t[:, :, :, i].transpose(1, 2) for t in (q, k) for i in (0, 1))
        return q1, q2, k1, k2, v.view(B, n, self.heads, self.head_dim).transpose(1, 2)

    def _normalise(self, y: Tensor) -> Tensor:
        """(B, h, n, e) difference outputs -> (1 - lambda_init) RMSNorm per head, in fp32, back to y's dtype."""
        yf = y.float()
        return ((1 - self.lambda_init) * yf * torch.rsqrt(yf.square().mean(-1, keepdim=True) + RMS_EPS)).to(y.dtype)

    def _maps_times_v(self, q1, q2, k1, k2, v, **sdpa) -> Tuple[Tensor, Tensor]:
        """softmax(Q1 K1^T) V and softmax(Q2 K2^T) V (B, h, t, e), each map applied to the two e/2 halves of V."""
        va, vb = v[..., : self.half], v[..., self.half :]
        y1 = torch.cat([F.scaled_dot_product_attention(q1, k1, va, **sdpa), F.scaled_dot_product_attention(q1, k1, vb, **sdpa)], -1)
        y2 = torch.cat([F.scaled_dot_product_attention(q2, k2, va, **sdpa), F.scaled_dot_product_attention(q2, k2, vb, **sdpa)], -1)
        return y1, y2

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        n = x.shape[1]
        q1, q2, k1, k2, v = self._project(x)
        lam = self.lam()
        if need_weights:  # explicit path: the (B, h, n, n) maps
            allowed = attention_mask(mask, causal, n, x.device)
            a1 = masked_softmax((q1 @ k1.transpose(-2, -1)) * self.scale, allowed)
            a2 = masked_softmax((q2 @ k2.transpose(-2, -1)) * self.scale, allowed)
            d = a1 - lam.to(a1.dtype) * a2  # (B, h, n, n) the difference map
            y = d @ v  # (B, h, n, e)
            yf = y.float()
            row = (1 - self.lambda_init) * torch.rsqrt(yf.square().mean(-1, keepdim=True) + RMS_EPS)  # (B, h, n, 1)
            w = d * row.to(d.dtype)  # the matrix applied: out_head = w @ V
            return self.out(merge_heads(self._normalise(y))), w
        if mask is None:
            sdpa = {"is_causal": causal}
        else:
            sdpa = {"attn_mask": attention_mask(mask, True, n, x.device) if causal else key_padding_mask(mask)}
        y1, y2 = self._maps_times_v(q1, q2, k1, k2, v, **sdpa)
        return self.out(merge_heads(self._normalise(y1 - lam.to(y1.dtype) * y2))), None

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        q1, q2, k1, k2, v = self._project(x)  # (B, h, t, e/2) x4, (B, h, t, e)
        for key, new in (("k1", k1), ("k2", k2), ("v", v)):
            append_cache(state, key, new.contiguous())
        t, n = q1.shape[2], state["v"].shape[2]
        # query i (absolute position n - t + i) sees keys 0 .. n - t + i; SDPA's is_causal aligns top-left
        allowed = None if t == 1 else torch.ones(t, n, dtype=torch.bool, device=x.device).tril_(n - t)
        y1, y2 = self._maps_times_v(q1, q2, state["k1"], state["k2"], state["v"], attn_mask=allowed)
        return self.out(merge_heads(self._normalise(y1 - self.lam().to(y1.dtype) * y2))), state

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        # four SDPA calls of width e/2 (QK^T and AV each): twice exact attention's 4 B pairs d
        return 2 * exact_attention_flops(batch, seq_len, self.dim, causal)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lambda_init={self.lambda_init:.4g}"
