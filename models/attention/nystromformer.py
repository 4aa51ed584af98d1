"""`nystromformer`: Xiong et al. 2021. With m landmarks Q~, K~ (segment means of Q and K):

    softmax(Q K^T) V  ~  softmax(Q K~^T) . pinv(softmax(Q~ K~^T)) . (softmax(Q~ K^T) V)
                          (n, m)            (m, m)                    (m, e)

evaluated right to left, the two (n, m) kernels fused into scaled_dot_product_attention (never
materialised) and no (n, m) x (m, m) product formed: O(n m e + m^3) time, O(n e + m^2) memory per head.
pinv is the paper's iterative Moore-Penrose approximation (`pinv_iterations` steps; initial scale
per matrix, so batch elements stay independent) or, with pinv="exact", torch.linalg.pinv with the
whole attention evaluated in fp64 (a reference mode for checks: the (m, m) kernel is often
ill-conditioned and fp32 rounding in it is amplified by the pseudo-inverse).

Landmarks and padding: segment j holds the real tokens whose rank r among the real tokens satisfies
floor(r m / L) = j (L = number of real tokens). With no padding and m | n these are the paper's
contiguous equal segments; otherwise segments differ in size by at most one token, so any length
works without padding the sequence to a multiple of m, and outputs of real tokens are unchanged by
padding anywhere. With L <= m every real token is its own landmark (empty landmarks are masked out)
and the result is exact softmax attention up to the pseudo-inverse's accuracy.
`conv_kernel`: optional depthwise convolution of V over the sequence added to the output (the
paper's skip connection, kernel 33 in its code); it mixes neighbouring positions, so with it padding
must sit at the ends of a sequence (left or right), not in the middle. Not causal.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.checks import check_choice, check_int

from .base import Attention
from .functional import key_padding_mask, masked_softmax, merge_heads
from .registry import register_attention

PINV = ("iterative", "exact")


def iterative_pinv(a: Tensor, iterations: int, rhs: Optional[Tensor] = None) -> Tensor:
    """Moore-Penrose pseudo-inverse of each (m, m) matrix in `a` (Razavi et al. 2014 iteration),
    or, given `rhs` (.., m, e), pinv(a) @ rhs with the last iteration applied to rhs directly
    (three (m, m) x (m, e) products instead of three (m, m) x (m, m) ones; same result)."""
    absa = a.abs()
    col = absa.sum(dim=-2).amax(dim=-1)  # max column sum, per matrix
    row = absa.sum(dim=-1).amax(dim=-1)  # max row sum, per matrix
    z = a.transpose(-2, -1) / (col * row)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for i in range(iterations):
        az = a @ z
        if rhs is not None and i == iterations - 1:
            # z_next @ rhs = 0.25 z (13 rhs - az (15 rhs - az (7 rhs - az rhs)))
            t = 7 * rhs - az @ rhs
            t = 15 * rhs - az @ t
            t = 13 * rhs - az @ t
            return 0.25 * (z @ t)
        t = 7 * eye - az
        t = 15 * eye - az @ t
        t = 13 * eye - az @ t
        z = 0.25 * (z @ t)
    return z if rhs is None else z @ rhs


def segment_landmarks(q: Tensor, k: Tensor, m: int, mask: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Segment means of q and k: (B, h, m, e) each, and the (B, m) mask of non-empty landmarks."""
    B, h, n, e = q.shape
    if mask is None and n % m == 0:
        return q.view(B, h, m, n // m, e).mean(dim=3), k.view(B, h, m, n // m, e).mean(dim=3), None
    real = mask if mask is not None else torch.ones(B, n, dtype=torch.bool, device=q.device)
    rank = real.long().cumsum(dim=-1)  # (B, n), 1-based among real tokens
    L = rank[:, -1:].clamp_min(1)
    seg = torch.where(real, ((rank - 1) * m) // L, m)  # padding -> spare segment m
    idx = seg[:, None, :, None].expand(B, h, n, e)
    ql = q.new_zeros(B, h, m + 1, e).scatter_add_(2, idx, q)[:, :, :m]
    kl = k.new_zeros(B, h, m + 1, e).scatter_add_(2, idx, k)[:, :, :m]
    counts = q.new_zeros(B, m + 1).scatter_add_(1, seg, q.new_ones(B, n))[:, :m]  # (B, m)
    scale = (1.0 / counts.clamp_min(1))[:, None, :, None]
    return ql * scale, kl * scale, counts > 0


@register_attention("nystromformer")
class NystromAttention(Attention):
    supports_mask = True
    supports_causal = False
    has_weights = True
    weights_are_distributions = False  # k1 pinv(k2) k3 has negative entries; rows sum to ~1
    not_causal_reason = "each landmark averages a segment that includes future positions"
    example_options = {"landmarks": 4}
    bad_options = ({"landmarks": 0}, {"pinv_iterations": 0}, {"pinv": "bogus"}, {"conv_kernel": 4},
                   {"conv_kernel": True})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        landmarks: int = 64,
        pinv_iterations: int = 6,
        pinv: str = "iterative",
        conv_kernel: Optional[int] = None,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        landmarks, pinv_iterations = check_int("landmarks", landmarks), check_int("pinv_iterations", pinv_iterations)
        pinv = check_choice("pinv", pinv, PINV)
        if conv_kernel is not None:
            conv_kernel = check_int("conv_kernel", conv_kernel)
            if conv_kernel % 2 == 0:
                raise ValueError(f"conv_kernel must be odd so the output keeps its length, got {conv_kernel}")
        self.landmarks, self.pinv_iterations, self.pinv, self.conv_kernel = landmarks, pinv_iterations, pinv, conv_kernel
        self.conv = None
        self.padding_anywhere = conv_kernel is None  # the conv skip mixes neighbouring positions
        if conv_kernel is not None:
            self.conv = nn.Conv2d(heads, heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0), groups=heads, bias=False)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        q, k, v = self.project_qkv(x)  # (B, h, n, e)
        dtype = v.dtype
        if self.pinv == "exact":
            q, k, v = q.double(), k.double(), v.double()
        ql, kl, lmask = segment_landmarks(q, k, self.landmarks, mask)  # (B, h, m, e), (B, m)
        lm = None if lmask is None else lmask[:, None, None, :]  # (B, 1, 1, m)
        k2 = masked_softmax((ql @ kl.transpose(-2, -1)) * self.scale, lm)  # (B, h, m, m)
        if lmask is not None:  # empty landmarks: identity rows, so pinv acts on the real block only
            eye = torch.eye(self.landmarks, dtype=k2.dtype, device=k2.device)
            k2 = torch.where(lmask[:, None, :, None], k2, eye)
        kpm = key_padding_mask(mask)
        if need_weights:  # explicit kernels, O(n^2): inspection only
            z = torch.linalg.pinv(k2) if self.pinv == "exact" else iterative_pinv(k2, self.pinv_iterations)
            k1 = masked_softmax((q @ kl.transpose(-2, -1)) * self.scale, lm)  # (B, h, n, m)
            k3 = masked_softmax((ql @ k.transpose(-2, -1)) * self.scale, kpm)  # (B, h, m, n)
            w = (k1 @ z) @ k3  # (B, h, n, n)
            y = w @ v
            w = w.to(dtype)
        else:
            # right to left, the two (n, m) kernels fused into SDPA and never materialised:
            # softmax(Q~ K^T) V: (m, e); pinv (.): (m, e); softmax(Q K~^T) (.): (n, e)
            t = F.scaled_dot_product_attention(ql, k, v, attn_mask=kpm)  # (B, h, m, e)
            t = torch.linalg.pinv(k2) @ t if self.pinv == "exact" else iterative_pinv(k2, self.pinv_iterations, rhs=t)
            if lm is not None:  # an element with no real token: allow all (zeroed below)
                lm = lm | ~lm.any(dim=-1, keepdim=True)
            y = F.scaled_dot_product_attention(q, kl, t, attn_mask=lm)  # (B, h, n, e)
            w = None
        y = y.to(dtype)
        if lmask is not None:
            y = y * lmask.any(dim=-1)[:, None, None, None]  # all-padding element -> 0, as the explicit path
        if self.conv is not None:
            v = v.to(dtype)
            y = y + self.conv(v if mask is None else v * mask[:, None, :, None])
        return self.out(merge_heads(y)), w

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        n, m, d, h = seq_len, self.landmarks, self.dim, self.heads
        fl = 2 * batch * (n * m * d + m * m * d + m * n * d)  # the three similarity matrices
        fl += 2 * batch * (m * n * d + m * m * d + n * m * d)  # k3 V, pinv (k3 V), k1 (...)
        if self.pinv == "iterative":  # 4 (m, m) products per step, the last step applied to (m, e)
            fl += 2 * batch * h * ((4 * self.pinv_iterations - 3) * m**3 + 3 * m * m * (d // h))
        if self.conv is not None:
            fl += 2 * batch * n * d * self.conv_kernel
        return fl

    def extra_repr(self) -> str:
        return super().extra_repr() + f", landmarks={self.landmarks}, pinv={self.pinv!r}, pinv_iterations={self.pinv_iterations}, conv_kernel={self.conv_kernel}"
