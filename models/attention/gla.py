"""`gla`: Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training".
A data-dependent forget gate per key dimension:

    alpha_t = sigmoid(x_t W_a1 W_a2 + b_a)^(1 / tau)     (low rank: W_a1 d x `gate_rank`, tau = `gate_temperature`)
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t   (recurrent form: decoding)

q = x W_Q / sqrt(e), k = x W_K, v = x W_V (key dim = head dim; the paper halves it). Output as in the paper:
swish(x W_r + b_r) * LayerNorm per head (GroupNorm over heads), then W_O.

Training runs the chunkwise form: across chunks of `chunk` positions the decayed state; inside a chunk the
pairs (i, j <= i) split level by level into the two halves of blocks of 2, 4, ..., chunk positions, each
pair's gate product exp(B_i - B_j) (B the cumulative log gate) factored at the boundary r between the halves
as exp(B_i - B_r) exp(B_r - B_j), both <= 1: numerically safe at any gate strength and all matmuls (the
paper's secondary chunking taken down to single positions); the diagonal i = j is element-wise. `chunk` is
a power of two. O(n C e) time, O(n e + (n / C) e^2) memory per head; decoding state (B, h, e, e).

Causal by nature (always_causal): asked for non-causal attention it runs the same recurrence. A padding
position is an identity step (alpha = 1, no write), so padding anywhere leaves the real outputs unchanged.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.checks import check_int, check_number

from .base import Attention
from .recurrent import (
    check_pow2_chunk,
    decayed_state_passing,
    from_chunks,
    gated_group_norm,
    pow2_chunk,
    state_passing_flops,
    to_chunks,
)
from .registry import register_attention


def gla_chunks(
    q: Tensor, k: Tensor, v: Tensor, log_alpha: Tensor, chunk: int, state: Optional[Tensor] = None, need_state: bool = False
) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunkwise gated linear attention. q, k, log_alpha: (B, h, n, e), v: (B, h, n, f), fp32; log_alpha <= 0
    (0 at padding); chunk a power of two; state: (B, h, e, f) before position 0 or None.
    Returns (B, h, n, f) outputs and the state after the last position (None unless need_state)."""
    n = q.shape[2]
    C = pow2_chunk(chunk, n)
    qc, kc, vc, b = (to_chunks(t, C) for t in (q, k, v, log_alpha))  # (B, h, c, C, .)
    b = b.cumsum(dim=3)  # log gate product from the chunk's start through each position (<= 0)
    out = (qc * kc).sum(-1, keepdim=True) * vc  # i = j: no gate between a key and its own query
    L = 1
    while L < C:  # queries in the right half of each block of 2L against keys in its left half
        qs, ks, vs, bs = (t.unflatten(3, (C // (2 * L), 2, L)) for t in (qc, kc, vc, b))  # (B, h, c, C/2L, 2, L, .)
        edge = bs[..., 0, L - 1 :, :]  # (B, h, c, C/2L, 1, e) at the left half's last position
        qt = qs[..., 1, :, :] * (bs[..., 1, :, :] - edge).exp()
        kt = ks[..., 0, :, :] * (edge - bs[..., 0, :, :]).exp()
        out.unflatten(3, (C // (2 * L), 2, L))[..., 1, :, :] += (qt @ kt.transpose(-2, -1)) @ vs[..., 0, :, :]
        L *= 2
    end = b[:, :, :, -1:]  # (B, h, c, 1, e) over the whole chunk
    inter, state = decayed_state_passing(qc * b.exp(), kc * (end - b).exp(), vc, end[:, :, :, 0].exp(), state, need_state)
    if inter is not None:
        out = out + inter
    return from_chunks(out, n), state


def gla_flops(B: int, h: int, n: int, e: int, f: int, chunk: int) -> int:
    """Matmul FLOPs of `gla_chunks` in a forward pass: level L of a chunk has C / 2L pairs of halves, each
    2 L^2 (e + f), so C L (e + f); summed over L = 1, ..., C/2: C (C - 1) (e + f); plus the state."""
    C = pow2_chunk(chunk, n)
    c = -(-n // C)
    return B * h * c * C * (C - 1) * (e + f) + state_passing_flops(B, h, c, C, e, f)


@register_attention("gla")
class GatedLinearAttention(Attention):
    supports_mask = True
    supports_causal = True
    always_causal = True
    has_weights = False  # the gates make the implicit matrix per key dimension; LayerNorm and gate follow
    supports_decoding = True
    decoding_state = "constant"  # S: (B, h, e, e)
    example_options = {"chunk": 8, "gate_rank": 4}
    bad_options = ({"chunk": 0}, {"chunk": 12}, {"gate_rank": 0}, {"gate_temperature": 0.0})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        chunk: int = 64,
        gate_rank: int = 16,
        gate_temperature: float = 16.0,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.chunk = check_pow2_chunk(chunk)
        self.gate_rank = check_int("gate_rank", gate_rank)
        self.gate_temperature = check_number("gate_temperature", gate_temperature, low=0, low_open=True)
        # alpha's low-rank projection keeps its bias b_a whatever `bias` says: it sets the gates' resting value
        self.alpha_down = nn.Linear(dim, self.gate_rank, bias=False)
        self.alpha_up = nn.Linear(self.gate_rank, dim, bias=True)
        self.gate = nn.Linear(dim, dim, bias=bias)  # W_r, the output gate
        self.norm = nn.GroupNorm(heads, dim)

    def _qkv_gates(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """q / sqrt(e), k, v and log alpha = logsigmoid(.) / tau, fp32 (B, h, n, e)."""
        q, k, v = self.project_qkv(x)
        z = self.alpha_up(self.alpha_down(x))  # (B, n, d)
        log_alpha = F.logsigmoid(z.float()).view(*z.shape[:2], self.heads, self.head_dim).transpose(1, 2)
        return q.float() * self.scale, k.float(), v.float(), log_alpha / self.gate_temperature

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        with torch.autocast(x.device.type, enabled=False):
            q, k, v, log_alpha = self._qkv_gates(x)
            if mask is not None:  # padding: alpha = 1 and no write, an identity step
                m = mask[:, None, :, None]
                k, log_alpha = k * m, log_alpha * m
            o, _ = gla_chunks(q, k, v, log_alpha, self.chunk)
        return self.out(gated_group_norm(o, self.gate(x), self.norm)), None

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        with torch.autocast(x.device.type, enabled=False):
            q, k, v, log_alpha = self._qkv_gates(x)
            s = state.get("S")
            if x.shape[1] == 1:  # the recurrent form: S_t = diag(alpha_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t
                kv = k.transpose(-2, -1) @ v  # (B, h, e, e)
                s = kv if s is None else log_alpha.exp().transpose(-2, -1) * s + kv
                o = q @ s
            else:
                o, s = gla_chunks(q, k, v, log_alpha, self.chunk, s, need_state=True)
        state["S"] = s
        return self.out(gated_group_norm(o, self.gate(x), self.norm)), state

    def projection_flops(self, seq_len: int, batch: int = 1) -> int:
        d, r = self.dim, self.gate_rank
        return 2 * batch * seq_len * (5 * d * d + 2 * d * r)  # Q, K, V, output gate, output; alpha's two factors

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        e = self.head_dim
        return gla_flops(batch, self.heads, seq_len, e, e, self.chunk)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", chunk={self.chunk}, gate_rank={self.gate_rank}, tau={self.gate_temperature:g}"
