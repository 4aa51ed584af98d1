"""Shared pieces of the attention block, so that a mechanism's file holds only its own maths: head
split/merge, mask helpers, masked softmax, the exact-attention FLOP count (softmax, naive, torch_mha),
and kernelised (feature-map) attention (linear, performer, hybrid). Blocked sparse attention (sliding
windows for local and hybrid; longformer, bigbird, sparse) lives in blocked.py. Argument checks are
utils.checks (standard library only), so this package needs torch alone.

Axis letters used in shape comments:
    B batch, n sequence length, d model dim, h heads, e head dim (d / h),
    m features / landmarks / projected length, c chunks, C chunk length.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.checks import check_int

# --------------------------------------------------------------------------- small helpers


def exists(x) -> bool:
    return x is not None


def default(x, d):
    return x if x is not None else d


# --------------------------------------------------------------------------- heads


def check_kv_heads(kv_heads: Optional[int], heads: int) -> int:
    """The K/V head count of grouped-query attention: `heads` when None (plain multi-head attention), else a
    positive int dividing `heads` (1 = multi-query)."""
    kv = heads if kv_heads is None else check_int("kv_heads", kv_heads)
    if heads % kv:
        raise ValueError(f"kv_heads must divide heads ({heads}), got {kv}")
    return kv


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, n, h*e) -> (B, h, n, e)"""
    B, n, d = x.shape
    return x.view(B, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, h, n, e) -> (B, n, h*e)"""
    B, h, n, e = x.shape
    return x.transpose(1, 2).reshape(B, n, h * e)


# --------------------------------------------------------------------------- decoding caches


def append_cache(state: dict, key: str, new: Tensor, dim: int = 2) -> Tensor:
    """Append new positions to one entry of a decoding state (in place) and return it: state[key]
    becomes torch.cat([state[key], new], dim), or `new` itself when the entry is absent (the first
    call, e.g. a prefill). The KV cache of every mechanism that keeps its keys and values (B, h, n, e)
    grows through here. The concatenation copies the whole entry, so a step costs O(n) memory traffic
    on top of its attention, as in a plain KV cache."""
    state[key] = torch.cat([state[key], new], dim) if key in state else new
    return state[key]


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


def kernel_attention_step(qf: Tensor, kf: Tensor, v: Tensor, kv: Optional[Tensor], eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """Causal `kernel_attention` for t new positions after a prefix summarised by its recurrent state
    kv = sum_j kf_j^T [v_j, 1] (B, h, m, e+1; None before the first position): the constant-size state
    of incremental decoding. Returns the (B, h, t, e) outputs and the state after the t positions."""
    t, e = qf.shape[-2], v.shape[-1]
    v1 = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # (B, h, t, e+1)
    a = qf @ kf.transpose(-2, -1)  # (B, h, t, t)
    out = a.masked_fill_(~torch.ones(t, t, dtype=torch.bool, device=a.device).tril_(), 0.0) @ v1
    step_kv = kf.transpose(-2, -1) @ v1  # (B, h, m, e+1)
    if kv is not None:
        out = out + qf @ kv
        step_kv = step_kv + kv
    num, den = out[..., :e], out[..., e:]
    return (num / den.clamp_min(eps) if eps > 0 else num / den), step_kv


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
