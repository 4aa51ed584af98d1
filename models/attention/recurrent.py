"""Shared pieces of the linear-recurrent mechanisms (retention, gla, deltanet): cutting the sequence into
chunks, passing a decayed state from chunk to chunk, and inverting a unit lower-triangular matrix with
matmuls. Each mechanism's file holds its own recurrence; these are the jobs they share.

The recurrences run in fp32 (their sums over n lose too much in bf16/fp16). A padding position is an
identity step (no decay, no write), so padding anywhere leaves the real outputs unchanged.

Axis letters as in functional.py, plus f the value head dim.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.checks import check_int

from .functional import merge_heads


def check_pow2_chunk(chunk) -> int:
    """A chunk length for the mechanisms whose chunk is split in halves (gla, deltanet)."""
    chunk = check_int("chunk", chunk)
    if chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two (its halves are processed level by level), got {chunk!r}")
    return chunk


def pow2_chunk(chunk: int, n: int) -> int:
    """The chunk actually used for n positions: `chunk`, or the smallest power of two >= n when that is less."""
    return min(chunk, 1 << (n - 1).bit_length())


def to_chunks(t: Tensor, C: int) -> Tensor:
    """(B, h, n, ...) -> (B, h, c, C, ...), zero-padded at the end to a multiple of C (zero keys and zero
    log-decays: the padded positions are identity steps)."""
    n = t.shape[2]
    pad = (-n) % C
    if pad:
        t = F.pad(t, (0, 0) * (t.dim() - 3) + (0, pad))
    return t.unflatten(2, (-1, C))


def from_chunks(t: Tensor, n: int) -> Tensor:
    """(B, h, c, C, ...) -> (B, h, n, ...), the padding dropped."""
    return t.flatten(2, 3)[:, :, :n]


def tril(C: int, device, diagonal: int = 0) -> Tensor:
    """(C, C) bool, True where key j may reach query i: j <= i + diagonal."""
    return torch.ones(C, C, dtype=torch.bool, device=device).tril_(diagonal)


def decayed_state_passing(
    qg: Tensor, kg: Tensor, v: Tensor, decay: Tensor, state: Optional[Tensor], need_state: bool
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The part of a gated recurrence S_t = diag(a_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t that crosses chunks.

    qg: (B, h, c, C, e) queries times their decay since the chunk's start (prod of a over its positions up
        to the query, inclusive); kg: (B, h, c, C, e) keys times their decay up to the chunk's end (exclusive
        of the key's own step); v: (B, h, c, C, f); decay: (B, h, c, e) or (B, h, c, 1) the decay over the
        whole chunk; state: (B, h, e, f) before chunk 0, or None (zero).
    Every factor is a product of gates in [0, 1], so nothing overflows however long the chunk.
    Returns the outputs' share from earlier chunks and the initial state, (B, h, c, C, f) (None when there is
    none: one chunk, no state), and the state after the last chunk (None unless need_state).
    The chunk-to-chunk step is element-wise; its matmuls are the per-chunk k^T v and q S, counted in
    `state_passing_flops` for the forward pass (state None, need_state False).
    """
    c = qg.shape[2]
    last = c if need_state else c - 1  # chunks whose k^T v is needed
    kv = kg[:, :, :last].transpose(-2, -1) @ v[:, :, :last] if last else None  # (B, h, last, e, f)
    entering, s = [], state
    for i in range(c):
        entering.append(s)
        if i < last:
            s = kv[:, :, i] if s is None else decay[:, :, i, :, None] * s + kv[:, :, i]
    first = 0 if state is not None else 1  # chunk 0 starts from a zero state: nothing to add
    out = None
    if first < c:
        out = qg[:, :, first:] @ torch.stack(entering[first:], dim=2)  # (B, h, c - first, C, f)
        out = F.pad(out, (0, 0, 0, 0, first, 0))
    return out, (s if need_state else None)


def state_passing_flops(B: int, h: int, c: int, C: int, e: int, f: int) -> int:
    """Matmul FLOPs of `decayed_state_passing` in a forward pass: k^T v for chunks 0..c-2, q S for 1..c-1."""
    return 2 * 2 * B * h * (c - 1) * C * e * f


def _diagonal_blocks(a: Tensor, m: int) -> Tensor:
    """(..., P, P) -> (..., P / m, m, m): the diagonal blocks of size m."""
    P = a.shape[-1]
    blocks = a.unflatten(-2, (P // m, m)).unflatten(-1, (P // m, m))  # (..., P/m, m, P/m, m)
    return blocks.diagonal(dim1=-4, dim2=-2).movedim(-1, -3)


def unit_lower_inverse(a: Tensor) -> Tensor:
    """(I + a)^-1 for a strictly lower-triangular (..., P, P), P a power of two.

    Block by block from the diagonal outwards, all with matmuls (so the FLOP counter sees them):
    [[X, 0], [Y, Z]]^-1 = [[X^-1, 0], [-Z^-1 Y X^-1, Z^-1]], doubling the block size each level; the 2 x 2
    blocks start it ([[1, 0], [y, 1]]^-1 = [[1, 0], [-y, 1]]). The same arithmetic as forward substitution
    in another order (the blocked triangular inversion of the chunked delta rule's kernels).
    """
    P = a.shape[-1]
    eye = torch.eye(P, dtype=a.dtype, device=a.device)
    if P <= 2:
        return eye - a  # (I + a)^-1 = I - a when a @ a = 0
    inv = torch.eye(2, dtype=a.dtype, device=a.device) - _diagonal_blocks(a, 2)  # (..., P/2, 2, 2)
    s = 2
    while s < P:
        y = _diagonal_blocks(a, 2 * s)[..., s:, :s]  # (..., P/2s, s, s)
        xi, zi = inv[..., 0::2, :, :], inv[..., 1::2, :, :]
        low = -((zi @ y) @ xi)
        inv = torch.cat([torch.cat([xi, torch.zeros_like(xi)], dim=-1), torch.cat([low, zi], dim=-1)], dim=-2)
        s *= 2
    return inv.squeeze(-3)


def unit_lower_inverse_flops(P: int) -> int:
    """Matmul FLOPs of `unit_lower_inverse` on one (P, P) matrix: levels s = 2, 4, ..., P/2, each P/2s pairs
    of two s x s x s products, sum 2 P s^2 = 2 P (P^2 - 4) / 3."""
    return 2 * P * (P * P - 4) // 3 if P > 2 else 0


def gated_group_norm(o: Tensor, gate: Tensor, norm: nn.GroupNorm) -> Tensor:
    """The output of retention and GLA: swish(gate) * GroupNorm over heads (each head normalised on its own).
    o: (B, h, n, e) fp32; gate: (B, n, h*e) x W_G (+ b), in the projections' dtype, which the result takes.
    The norm runs in fp32 whatever the module's dtype."""
    y = merge_heads(o)  # (B, n, d); GroupNorm wants the channels on axis 1
    w, b = norm.weight.float(), norm.bias.float()
    y = F.group_norm(y.flatten(0, 1), norm.num_groups, w, b, norm.eps).view_as(y)
    return y.to(gate.dtype) * F.silu(gate)
