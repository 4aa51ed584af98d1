"""`performer`: Choromanski et al. 2021, FAVOR+ (positive orthogonal random features).

softmax(q.k / sqrt(e)) ~ phi(q) . phi(k) with phi(x) = exp(w_r . x - |x|^2 / 2) over m random
rows w_r, x = q / e^(1/4). The rows are blocks of orthogonal Gaussian directions with chi-distributed
norms. Numerical stabilisation: per-row constants cancel between numerator and denominator, so each
query's features are shifted by their own maximum (the |q|^2 term cancels entirely) and all keys by
one shared maximum over real keys (the |k|^2 term does not cancel and is kept). Features and the
kernel are computed in fp32, so bf16/fp16 autocast stays finite.

Non-causal: O(n m e) per head. Causal: chunked prefix sums (functional.kernel_attention), no custom
extension. `redraw_interval`: in training mode, draw new features every that many forward calls
(None = keep the first draw); `redraw_projection()` draws on demand.

Note (causal): the shared key shift is taken over the whole sequence. It cancels exactly in the
maths, so future keys change earlier outputs only at float-rounding level.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from utils.checks import check_bool, check_int

from .base import Attention
from .functional import kernel_attention, kernel_attention_flops, kernel_weights, merge_heads
from .registry import register_attention


def gaussian_orthogonal_features(m: int, e: int, ortho: bool = True, device=None, generator=None) -> Tensor:
    """(m, e) random feature directions: stacked e x e orthogonal blocks (QR of Gaussians) with rows
    rescaled to chi_e-distributed norms, so each row is marginally N(0, I) (FAVOR+); plain Gaussian
    rows when ortho is False."""
    if not ortho:
        return torch.randn(m, e, device=device, generator=generator)
    blocks = []
    for _ in range(math.ceil(m / e)):
        g = torch.randn(e, e, device=device, generator=generator)
        qmat, _ = torch.linalg.qr(g)
        blocks.append(qmat.T)
    w = torch.cat(blocks)[:m]  # (m, e), orthonormal rows within each block
    norms = torch.randn(m, e, device=device, generator=generator).norm(dim=1, keepdim=True)
    return w * norms


def favor_features(q: Tensor, k: Tensor, w: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Positive random features in fp32. q, k: (B, h, n, e); w: (m, e) already scaled by e^-1/4.
    Returns phi(q), phi(k): (B, h, n, m), up to per-row / global constants that cancel."""
    q, k = q.float(), k.float()
    wt = w.float().t()  # (e, m)
    qw = q @ wt  # (B, h, n, m)
    # the shifts cancel exactly between numerator and denominator: constants, no gradient
    qf = qw.sub_(qw.detach().amax(dim=-1, keepdim=True)).exp_()
    kw = k @ wt  # (B, h, n, m)
    e = k.shape[-1]
    kw = kw - k.pow(2).sum(dim=-1, keepdim=True) * (0.5 / math.sqrt(e))  # - |x|^2 / 2, x = k / e^(1/4)
    if mask is not None:  # padding keys -> -inf -> feature exactly 0 (and no inf * 0 in backward)
        kw = kw.masked_fill(~mask[:, None, :, None], float("-inf"))
    shift = kw.detach().amax(dim=(-2, -1), keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))  # element with no real key
    kf = kw.sub_(shift).exp_()
    return qf, kf


@register_attention("performer")
class PerformerAttention(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True
    example_options = {"features": 32, "chunk": 8}
    bad_options = ({"features": 0}, {"chunk": 0}, {"redraw_interval": 0}, {"redraw_interval": 2.5})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        features: int = 256,
        ortho: bool = True,
        redraw_interval: Optional[int] = None,
        chunk: int = 64,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        features, chunk, ortho = check_int("features", features), check_int("chunk", chunk), check_bool("ortho", ortho)
        if redraw_interval is not None:
            redraw_interval = check_int("redraw_interval", redraw_interval)
        self.features, self.ortho, self.redraw_interval, self.chunk = features, ortho, redraw_interval, chunk
        self.register_buffer("projection", self._draw())  # (m, e), includes the e^-1/4 data scaling
        self._calls = 0

    def _draw(self, device=None) -> Tensor:
        w = gaussian_orthogonal_features(self.features, self.head_dim, self.ortho, device=device)
        return w * self.head_dim**-0.25

    @torch.no_grad()
    def redraw_projection(self) -> None:
        self.projection.copy_(self._draw(self.projection.device))

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        if self.training and self.redraw_interval is not None:
            if self._calls and self._calls % self.redraw_interval == 0:
                self.redraw_projection()
            self._calls += 1
        q, k, v = self.project_qkv(x)  # (B, h, n, e)
        with torch.autocast(x.device.type, enabled=False):
            qf, kf = favor_features(q, k, self.projection, mask)  # (B, h, n, m)
            y = kernel_attention(qf, kf, v.float(), causal=causal, chunk=self.chunk, eps=1e-30)
            w = kernel_weights(qf, kf, causal, eps=1e-30) if need_weights else None
        return self.out(merge_heads(y.to(v.dtype))), w

    def _feature_map_flops(self, seq_len: int, batch: int) -> int:
        return 2 * 2 * batch * self.heads * seq_len * self.head_dim * self.features  # q and k onto the m directions

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        h, e, m = self.heads, self.head_dim, self.features
        return self._feature_map_flops(seq_len, batch) + kernel_attention_flops(batch, h, seq_len, m, e, causal, self.chunk)

    def backward_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        # the random directions are a buffer: the feature-map matmul backpropagates to q and k only
        return super().backward_flops(seq_len, batch, causal) - self._feature_map_flops(seq_len, batch)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", features={self.features}, ortho={self.ortho}, redraw_interval={self.redraw_interval}"
