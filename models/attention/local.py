"""`local`: sliding-window attention. Query i attends to keys j with |i - j| <= window
(causal: i - window <= j <= i); with dilation delta, to j = i + delta * t, |t| <= window.

Blocked implementation, O(n w) time and memory, never an n x n matrix: the sequence is cut into
blocks of W = window positions; each query block attends to its own block and its neighbours
(previous and next; causal: previous only), i.e. 3W (2W) keys, and a band mask trims that to the
exact window. Dilation regroups positions by residue mod delta, each group an ordinary window.
The (B, h, n, n) weights returned on request are the same band-masked softmax written densely
(O(n^2), for inspection).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Attention
from .functional import check_int, masked_softmax, merge_heads
from .registry import register_attention


def _windows(t: Tensor, nb: int, causal: bool) -> Tensor:
    """(B, H, nb, W, *) blocks -> (B, H, nb, look*W, *): previous, own (and next) block per block."""
    pad = [0, 0] * (t.dim() - 3) + [1, 0 if causal else 1]
    tp = F.pad(t, pad)  # zero block before (and after)
    look = 2 if causal else 3
    return torch.cat([tp[:, :, i : i + nb] for i in range(look)], dim=3)


def _window_core(q: Tensor, k: Tensor, v: Tensor, window: int, kmask: Optional[Tensor], causal: bool, scale: float) -> Tensor:
    """q, k, v: (B, H, n, e); kmask: (B, 1|H, n) bool or None. Undilated window attention."""
    B, H, n, e = q.shape
    W = max(1, min(window, n))
    pad = (-n) % W
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        if kmask is None:
            kmask = torch.ones(B, 1, n, dtype=torch.bool, device=q.device)
        kmask = F.pad(kmask, (0, pad), value=False)
    nb = (n + pad) // W
    qb = q.view(B, H, nb, W, e)
    kw = _windows(k.view(B, H, nb, W, e), nb, causal)  # (B, H, nb, look*W, e)
    vw = _windows(v.view(B, H, nb, W, e), nb, causal)
    scores = (qb @ kw.transpose(-2, -1)) * scale  # (B, H, nb, W, look*W)

    look = 2 if causal else 3
    r = torch.arange(W, device=q.device)[:, None]
    c = torch.arange(look * W, device=q.device)[None, :]
    rel = c - W - r  # key position - query position
    allowed = (rel >= -window) & (rel <= (0 if causal else window))  # (W, look*W)
    # keys outside the sequence: the zero block before the first (and after the last) block
    blk = torch.arange(nb, device=q.device)[:, None]
    kpos = (blk - 1) * W + c  # (nb, look*W)
    inside = (kpos >= 0) & (kpos < nb * W)
    allowed = allowed & inside[:, None, :]  # (nb, W, look*W)
    if kmask is not None:
        kvalid = _windows(kmask.view(B, kmask.shape[1], nb, W), nb, causal)  # (B, 1|H, nb, look*W)
        allowed = allowed & kvalid[:, :, :, None, :]  # (B, 1|H, nb, W, look*W)
    attn = masked_softmax(scores, allowed)
    y = attn @ vw  # (B, H, nb, W, e)
    return y.view(B, H, nb * W, e)[:, :, :n]


def sliding_window_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, mask: Optional[Tensor] = None, causal: bool = False, dilation: int = 1, scale: Optional[float] = None
) -> Tensor:
    """q, k, v: (B, h, n, e); mask: (B, n) bool padding mask. Returns (B, h, n, e)."""
    B, h, n, e = q.shape
    scale = e**-0.5 if scale is None else scale
    if dilation == 1:
        return _window_core(q, k, v, window, None if mask is None else mask[:, None, :], causal, scale)
    pad = (-n) % dilation
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        mask = torch.ones(B, n, dtype=torch.bool, device=q.device) if mask is None else mask
        mask = F.pad(mask, (0, pad), value=False)
    L = (n + pad) // dilation

    def group(t: Tensor) -> Tensor:  # (B, h, L*delta, e) -> (B, h*delta, L, e), same residue together
        return t.view(B, h, L, dilation, e).transpose(2, 3).reshape(B, h * dilation, L, e)

    kmask = None
    if mask is not None:
        kmask = mask.view(B, 1, L, dilation).transpose(2, 3).expand(B, h, dilation, L).reshape(B, h * dilation, L)
    y = _window_core(group(q), group(k), group(v), window, kmask, causal, scale)  # (B, h*delta, L, e)
    y = y.view(B, h, dilation, L, e).transpose(2, 3).reshape(B, h, L * dilation, e)
    return y[:, :, :n]


def window_band(n: int, window: int, causal: bool, dilation: int, device) -> Tensor:
    """(n, n) bool: the keys each query may see under the (dilated) window."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    rel = j - i
    band = (rel % dilation == 0) & (rel >= -window * dilation) & (rel <= (0 if causal else window * dilation))
    return band


def dense_window_weights(q: Tensor, k: Tensor, window: int, mask: Optional[Tensor], causal: bool, dilation: int, scale: float) -> Tensor:
    """The (B, h, n, n) matrix `sliding_window_attention` applies, written densely (O(n^2))."""
    n = q.shape[2]
    allowed = window_band(n, window, causal, dilation, q.device)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    return masked_softmax((q @ k.transpose(-2, -1)) * scale, allowed)


def window_flops(batch: int, heads: int, n: int, e: int, window: int, causal: bool, dilation: int = 1) -> int:
    """Matmul FLOPs of the blocked implementation (computed band included, so up to 1.5x the
    2w+1 keys a query needs; causal: 2W keys for w+1)."""
    L = -(-n // dilation)
    W = max(1, min(window, L))
    padded = -(-L // W) * W
    look = 2 if causal else 3
    return 2 * 2 * batch * heads * dilation * padded * look * W * e


@register_attention("local")
class LocalAttention(Attention):
    supports_mask = True
    supports_causal = True
    padding_anywhere = False  # windows are defined on positions: padding must sit at the ends
    has_weights = True

    def __init__(self, dim: int, heads: int = 8, *, window: int = 64, dilation: int = 1, causal: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.window, self.dilation = check_int("window", window), check_int("dilation", dilation)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        q, k, v = self.project_qkv(x)  # (B, h, n, e)
        y = sliding_window_attention(q, k, v, self.window, mask, causal, self.dilation, self.scale)
        w = dense_window_weights(q, k, self.window, mask, causal, self.dilation, self.scale) if need_weights else None
        return self.out(merge_heads(y)), w

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        return window_flops(batch, self.heads, seq_len, self.head_dim, self.window, causal, self.dilation)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", window={self.window}, dilation={self.dilation}"
