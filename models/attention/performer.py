"""`performer`: Choromanski et al. 2021, FAVOR+ (positive orthogonal random features).

softmax(q.k / sqrt(e)) ~ phi(q) . phi(k) with phi(x) = exp(w_r . x - |x|^2 / 2) over m random
rows w_r, x = q / e^(1/4). The rows are blocks of orthogonal Gaussian directions with chi-distributed
norms. Numerical stabilisation: per-row constants cancel between numerator and denominator, so each
query's features are shifted by their own maximum (the |q|^2 term cancels entirely) and all keys by
one shared maximum over real keys (the |k|^2 term does not cancel and is kept). Features and the
kernel are computed in fp32, so bf16/fp16 autocast stays finite.

Non-causal: O(n m e) per head. On one CPU thread in row tiles (favor_attention): each tile's features are
made, shifted, exponentiated and used while in cache, so no (n, m) feature matrix is written to memory
(n = 10,000, 8 heads, 256 features: 0.49 -> 0.67 of the matmul's FLOP/s, benchmarks/results/
kernel_throughput_1thread*.md). With several threads the whole-sequence form instead: the tiles' ~600 small
operations each synchronise the threads, and on a machine whose cores other processes also use each waits for
a descheduled thread (2 threads at load 8: 0.36 -> 0.07, kernel_throughput*.md). Same matmuls, same FLOPs,
equal up to float rounding. Causal: chunked prefix sums (functional.kernel_attention), no custom extension. `redraw_interval`: in training mode, draw new features every that many forward calls
(None = keep the first draw); `redraw_projection()` draws on demand.

Note (causal): the shared key shift is taken over the whole sequence. It cancels exactly in the
maths, so future keys change earlier outputs only at float-rounding level.

Decoding: the constant state sum_j phi(k_j)^T [v_j, 1] (B, h, m, e + 1) with the key shift it was made
with, the running maximum over the keys seen (B, h, 1, 1): when a new key raises it, the sum is rescaled by
exp(old - new), as favor_attention does over tiles, so a step computes the causal forward's sums up to
rounding. A state belongs to one draw of the features: stepping it after a redraw is refused.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from utils.checks import check_bool, check_int

from .base import Attention
from .functional import kernel_attention, kernel_attention_flops, kernel_attention_step, kernel_weights, merge_heads
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
    qf = _query_features(q @ wt)  # (B, h, n, m)
    kw = _key_logits(k @ wt, _key_norms(k), mask)  # (B, h, n, m)
    shift = kw.detach().amax(dim=(-2, -1), keepdim=True)
    kf = kw.sub_(_finite_or_zero(shift)).exp_()
    return qf, kf


def _query_features(qw: Tensor) -> Tensor:
    """exp(w.x - max_r w_r.x), in place: each query's own shift cancels exactly between numerator and
    denominator, and so does its |x|^2 / 2 term (constants: no gradient)."""
    return qw.sub_(qw.detach().amax(dim=-1, keepdim=True)).exp_()


def _key_norms(k: Tensor) -> Tensor:
    """|x|^2 / 2 with x = k / e^(1/4): (B, h, n, 1)."""
    return k.pow(2).sum(dim=-1, keepdim=True) * (0.5 / math.sqrt(k.shape[-1]))


def _key_logits(kw: Tensor, norms: Tensor, mask: Optional[Tensor]) -> Tensor:
    """w.x - |x|^2 / 2, in place on kw = k @ w^T; padding keys -> -inf, so their features are exactly 0 (and
    no inf * 0 in backward). kw: (B, h, r, m), norms: (B, h, r, 1), mask: (B, r) or None."""
    kw.sub_(norms)
    if mask is not None:
        kw.masked_fill_(~mask[:, None, :, None], float("-inf"))
    return kw


def _finite_or_zero(shift: Tensor) -> Tensor:
    """A key shift of -inf (an element with no real key) becomes 0, so its all-zero features stay 0, not NaN."""
    return torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))


# rows of a feature tile in favor_attention: B * h * rows * m fp32 values near 2 MiB (a core's L2 on the Xeon
# this was tuned on), so each tile's shift and exp work in cache and the (n, m) features never reach memory
TILE_VALUES = 1 << 19


def favor_attention(q: Tensor, k: Tensor, v: Tensor, w: Tensor, mask: Optional[Tensor] = None, rows: Optional[int] = None) -> Tensor:
    """Non-causal FAVOR+ in row tiles, fused: the same matmuls as favor_features + kernel_attention (so
    the same FLOPs and, up to float rounding, the same result) without an (n, m) feature matrix in memory.
    q, k, v: (B, h, n, e), any strides; w: (m, e) scaled by e^-1/4; mask: (B, n) padding mask. Returns the
    heads merged, (B, n, h * e), in fp32.

    Keys first: each tile's features kf = exp(logits - s) go straight into sum_j kf_j^T [v_j, 1]. The shift s
    is the running maximum over the keys seen so far, and the sum is rescaled by exp(s_old - s_new) when it
    grows, so the result equals one shift by the maximum over all real keys (favor_features) up to rounding.
    Then queries: each tile's features (shifted by their own row maximum) times that (m, e+1) sum. Whole-
    sequence work (key norms, the ones column) is done once, outside the tiles: fewer, larger operations."""
    B, h, n, e = q.shape
    m = w.shape[0]
    rows = rows or max(1, TILE_VALUES // (B * h * m))
    q, k, v = q.float(), k.float(), v.float()
    wt = w.float().t()  # (e, m)
    norms = _key_norms(k)  # (B, h, n, 1)
    v1 = torch.cat([v, v.new_ones(B, h, n, 1)], dim=-1)  # (B, h, n, e+1): the normaliser rides along
    kv: Optional[Tensor] = None  # (B, h, m, e+1): sum_j kf_j^T [v_j, 1]
    top = shift = None  # (B, h, 1, 1): the running maximum, and it made finite
    for a in range(0, n, rows):
        b = min(a + rows, n)
        kw = _key_logits(k[:, :, a:b] @ wt, norms[:, :, a:b], None if mask is None else mask[:, a:b])  # (B, h, r, m)
        tile_top = kw.detach().amax(dim=(-2, -1), keepdim=True)
        top = tile_top if top is None else torch.maximum(top, tile_top)
        new = _finite_or_zero(top)
        part = kw.sub_(new).exp_().transpose(-2, -1) @ v1[:, :, a:b]  # (B, h, m, e+1)
        kv = part if kv is None else torch.addcmul(part, kv, (shift - new).exp_())  # the shift never falls: factor <= 1
        shift = new
    out = []
    for a in range(0, n, rows):
        o = _query_features(q[:, :, a : a + rows] @ wt) @ kv  # (B, h, r, e+1)
        out.append((o[..., :e] / o[..., e:].clamp_min(1e-30)).transpose(1, 2))  # (B, r, h, e)
    return torch.cat(out, dim=1).reshape(B, n, h * e)


@register_attention("performer")
class PerformerAttention(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True
    supports_decoding = True
    decoding_state = "constant"  # sum_j phi(k_j)^T [v_j, 1]: (B, h, m, e + 1), and its key shift (B, h, 1, 1)
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
        self._draws = 0  # redraws so far: a decoding state records the draw it was made with

    def _draw(self, device=None) -> Tensor:
        w = gaussian_orthogonal_features(self.features, self.head_dim, self.ortho, device=device)
        return w * self.head_dim**-0.25

    @torch.no_grad()
    def redraw_projection(self) -> None:
        self.projection.copy_(self._draw(self.projection.device))
        self._draws += 1

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        if self.training and self.redraw_interval is not None:
            if self._calls and self._calls % self.redraw_interval == 0:
                self.redraw_projection()
            self._calls += 1
        q, k, v = self.project_qkv(x)  # (B, h, n, e)
        w = None
        tiles = not causal and q.device.type == "cpu" and torch.get_num_threads() == 1
        with torch.autocast(x.device.type, enabled=False):
            if not tiles or need_weights:
                qf, kf = favor_features(q, k, self.projection, mask)  # (B, h, n, m)
                if need_weights:
                    w = kernel_weights(qf, kf, causal, eps=1e-30)
            if tiles:
                y = favor_attention(q, k, v, self.projection, mask)  # (B, n, d), no (n, m) features in memory
            else:
                y = merge_heads(kernel_attention(qf, kf, v.float(), causal=causal, chunk=self.chunk, eps=1e-30))
        return self.out(y.to(v.dtype)), w

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        if state.setdefault("draw", self._draws) != self._draws:
            raise ValueError(f"state was made with the random features of draw {state['draw']}, but they have been "
                             f"redrawn since (draw {self._draws}); start a new state (state=None) after a redraw")
        q, k, v = self.project_qkv(x)  # (B, h, t, e)
        with torch.autocast(x.device.type, enabled=False):
            q, k, wt = q.float(), k.float(), self.projection.float().t()  # wt: (e, m)
            qf = _query_features(q @ wt)  # (B, h, t, m)
            kw = _key_logits(k @ wt, _key_norms(k), None)  # (B, h, t, m)
            shift = kw.detach().amax(dim=(-2, -1), keepdim=True)  # (B, h, 1, 1)
            kv = state.get("kv")
            if kv is not None:  # the running maximum: the old sum rescaled to the new shift (a factor <= 1)
                shift = torch.maximum(shift, state["shift"])
                kv = kv * (state["shift"] - shift).exp()
            kf = kw.sub_(shift).exp_()
            y, state["kv"] = kernel_attention_step(qf, kf, v.float(), kv, eps=1e-30)
            state["shift"] = shift
        return self.out(merge_heads(y).to(v.dtype)), state

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
