"""Shared pieces of the attention block, so that a mechanism's file holds only its own maths: head
split/merge, mask helpers, masked softmax, the exact-attention FLOP count (softmax, naive, torch_mha),
kernelised (feature-map) attention (linear, performer, hybrid) and sliding-window attention (local,
hybrid). Argument checks are utils.checks (standard library only), so this package needs torch alone.

Axis letters used in shape comments:
    B batch, n sequence length, d model dim, h heads, e head dim (d / h),
    m features / landmarks / projected length, c chunks, C chunk length, W window block length.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------- small helpers


def exists(x) -> bool:
    return x is not None


def default(x, d):
    return x if x is not None else d


# --------------------------------------------------------------------------- heads


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, n, h*e) -> (B, h, n, e)"""
    B, n, d = x.shape
    return x.view(B, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, h, n, e) -> (B, n, h*e)"""
    B, h, n, e = x.shape
    return x.transpose(1, 2).reshape(B, n, h * e)


# --------------------------------------------------------------------------- masks


def key_padding_mask(mask: Optional[Tensor]) -> Optional[Tensor]:
    """Padding mask (B, n), True = real token -> key mask (B, 1, 1, n) safe for softmax.

    A batch element without any real token would give a fully masked softmax row (NaN); for such an
    element every key is allowed instead, so its (meaningless) outputs stay finite. Rows with at
    least one real key are unchanged.
    """
    if mask is None:
        return None
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask[:, None, None, :]


def attention_mask(mask: Optional[Tensor], causal: bool, n: int, device) -> Optional[Tensor]:
    """Merge a padding mask (B, n) and causality into one boolean mask broadcastable to
    (B, h, n, n) (True = may attend). Rows that would be fully masked (e.g. a padding query under
    left padding with causal attention) are allowed to attend to themselves so they stay finite;
    rows of real queries never change. Returns None when there is nothing to mask.
    """
    if mask is None and not causal:
        return None
    if not causal:
        return key_padding_mask(mask)
    allowed = torch.ones(n, n, dtype=torch.bool, device=device).tril_()  # (n, n)
    if mask is None:
        return allowed
    allowed = allowed & mask[:, None, None, :]  # (B, 1, n, n)
    empty = ~allowed.any(dim=-1, keepdim=True)  # (B, 1, n, 1)
    eye = torch.eye(n, dtype=torch.bool, device=device)
    return allowed | (empty & eye)


def masked_softmax(scores: Tensor, allowed: Optional[Tensor]) -> Tensor:
    """Softmax over the last axis where `allowed` (broadcastable bool) is True. Fully masked rows
    give zeros instead of NaN."""
    if allowed is None:
        return scores.softmax(dim=-1)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    attn = scores.softmax(dim=-1)
    return attn * allowed  # zero rows that had no allowed key at all


# --------------------------------------------------------------------------- exact attention


def exact_attention_flops(batch: int, seq_len: int, dim: int, causal: bool) -> int:
    """QK^T and AV: 2 * 2 * B * n^2 * d; under causality only the n(n+1)/2 visible pairs count."""
    pairs = seq_len * (seq_len + 1) // 2 if causal else seq_len * seq_len
    return 4 * batch * pairs * dim


# --------------------------------------------------------------------------- kernelised attention


def elu_features(q: Tensor, k: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """phi(q), phi(k) in fp32; padding keys get zero features. (B, h, n, e) each."""
    qf = F.elu(q.float()) + 1.0
    kf = F.elu(k.float()) + 1.0
    if mask is not None:
        kf = kf * mask[:, None, :, None]
    return qf, kf


def kernel_attention(
    qf: Tensor,
    kf: Tensor,
    v: Tensor,
    causal: bool = False,
    chunk: int = 64,
    eps: float = 1e-6,
) -> Tensor:
    """Attention with a positive feature map: out_i = sum_j (qf_i . kf_j) v_j / sum_j (qf_i . kf_j).

    qf, kf: (B, h, n, m) non-negative features (padding keys already zeroed); v: (B, h, n, e).
    The normaliser rides along as an extra all-ones column of v, so numerator and denominator come
    out of the same matmuls. Non-causal: O(n m e) time, O(n (m + e) + m e) memory.
    Causal: chunked prefix sums, O(n C (m + e) + n m e) time and O(n C + (n / C) m e) memory, with
    no (n, m, e) tensor and no custom kernel: inside a chunk of C positions a masked C x C product,
    across chunks a running sum of kf^T v.
    A row whose denominator is zero (every key masked) returns zeros.
    """
    B, h, n, m = qf.shape
    e = v.shape[-1]
    v1 = torch.cat([v, v.new_ones(B, h, n, 1)], dim=-1)  # (B, h, n, e+1)
    if not causal:
        kv = kf.transpose(-2, -1) @ v1  # (B, h, m, e+1)
        out = qf @ kv  # (B, h, n, e+1)
    else:
        C = min(chunk, n)
        pad = (-n) % C
        if pad:
            qf = F.pad(qf, (0, 0, 0, pad))
            kf = F.pad(kf, (0, 0, 0, pad))
            v1 = F.pad(v1, (0, 0, 0, pad))
        c = (n + pad) // C
        qc = qf.view(B, h, c, C, m)
        kc = kf.view(B, h, c, C, m)
        vc = v1.view(B, h, c, C, e + 1)
        # within each chunk: lower-triangular (inclusive) C x C interactions
        a = qc @ kc.transpose(-2, -1)  # (B, h, c, C, C)
        a = a.masked_fill_(~torch.ones(C, C, dtype=torch.bool, device=a.device).tril_(), 0.0)
        out = a @ vc  # (B, h, c, C, e+1)
        if c > 1:
            # across chunks: state of all strictly earlier chunks
            kv = kc.transpose(-2, -1) @ vc  # (B, h, c, m, e+1)
            state = kv.cumsum(dim=2)
            state = torch.cat([torch.zeros_like(state[:, :, :1]), state[:, :, :-1]], dim=2)
            out = out + qc @ state  # (B, h, c, C, e+1)
        out = out.view(B, h, c * C, e + 1)[:, :, :n]
    num, den = out[..., :e], out[..., e:]
    return num / den.clamp_min(eps) if eps > 0 else num / den


def kernel_attention_flops(B: int, h: int, n: int, m: int, e: int, causal: bool, chunk: int = 64) -> int:
    """Matmul FLOPs (2 per multiply-add) of `kernel_attention` as implemented."""
    e1 = e + 1
    if not causal:
        return 2 * B * h * (m * n * e1 + n * m * e1)
    C = min(chunk, n)
    c = -(-n // C)
    fl = 2 * B * h * c * (C * C * m + C * C * e1)  # intra-chunk
    if c > 1:
        fl += 2 * B * h * c * (m * C * e1 + C * m * e1)  # chunk states + queries against them
    return fl


def kernel_weights(qf: Tensor, kf: Tensor, causal: bool, eps: float = 1e-6) -> Tensor:
    """The (B, h, n, n) attention matrix a kernelised mechanism applies implicitly (O(n^2): for
    inspection and plots only)."""
    a = qf @ kf.transpose(-2, -1)  # (B, h, n, n)
    if causal:
        n = a.shape[-1]
        a = a.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=a.device).tril_(), 0.0)
    return a / a.sum(dim=-1, keepdim=True).clamp_min(eps)


# --------------------------------------------------------------------------- sliding windows


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
