"""`retention`: Sun et al. 2023, "Retentive Network" (RetNet), multi-scale retention. Per head h a fixed
decay gamma_h = 1 - 2^(-5 - h) (the paper's schedule; `decay` overrides it):

    S_n = gamma S_{n-1} + k_n^T v_n,   o_n = q_n S_n          (recurrent form: decoding)
    O = (Q K^T * D) V,  D_nm = gamma^(n - m) for m <= n, else 0   (parallel form: n <= chunk)

and the chunkwise form in between (training at length n > chunk): the parallel form inside each chunk of
`chunk` positions, the decayed state across chunks. q = x W_Q / sqrt(e) (the paper's first score
normalisation), k = x W_K, and with `rotary` the paper's Theta: q_n, k_m rotated by n theta, m theta
(theta_i = 10000^(-2i/e) on interleaved pairs, as RoPE; no xPos scaling, the decay plays that part).
Output: swish(x W_G) * GroupNorm_h(heads) then W_O, as in the paper; its two further score
normalisations (D's rows and the retention scores divided by their sums) are left out, GroupNorm
being invariant to them up to its eps.

Causal by nature (always_causal): asked for non-causal attention it runs the same recurrence, a
unidirectional encoder. A padding position is an identity step (no decay, no write, no rotation step),
so padding anywhere leaves the real outputs unchanged. O(n C e + n e^2) time, O(n C + (n / C) e^2)
memory per head; decoding state (B, h, e, e) whatever the length.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from utils.checks import check_bool, check_int

from .base import Attention
from .recurrent import decayed_state_passing, from_chunks, gated_group_norm, state_passing_flops, to_chunks, tril
from .registry import register_attention


def retention_chunks(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk: int, state: Optional[Tensor] = None, need_state: bool = False
) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunkwise retention. q, k: (B, h, n, e), v: (B, h, n, f), fp32; log_decay: (B or 1, h, n, 1) the log
    decay of each step (log gamma, 0 at padding); state: (B, h, e, f) before position 0 or None.
    Returns (B, h, n, f) outputs and the state after the last position (None unless need_state)."""
    n = q.shape[2]
    C = min(chunk, n)
    qc, kc, vc, b = (to_chunks(t, C) for t in (q, k, v, log_decay))  # (B, h, c, C, .)
    b = b.cumsum(dim=3)  # log decay from the chunk's start through each position (<= 0)
    # inside a chunk: D_ij = exp(b_i - b_j) = gamma^(i - j) (real steps between), masked before exp (no overflow)
    d = (b - b.transpose(-2, -1)).masked_fill(~tril(C, q.device), float("-inf")).exp()  # (B, h, c, C, C)
    out = ((qc @ kc.transpose(-2, -1)) * d) @ vc  # (B, h, c, C, f)
    end = b[:, :, :, -1:]  # (B, h, c, 1, 1) log decay over the whole chunk
    inter, state = decayed_state_passing(qc * b.exp(), kc * (end - b).exp(), vc, end[:, :, :, 0].exp(), state, need_state)
    if inter is not None:
        out = out + inter
    return from_chunks(out, n), state


def retention_flops(B: int, h: int, n: int, e: int, chunk: int) -> int:
    """Matmul FLOPs of `retention_chunks` in a forward pass: Q K^T and (. * D) V per chunk, plus the state."""
    C = min(chunk, n)
    c = -(-n // C)
    return 2 * B * h * c * (C * C * e + C * C * e) + state_passing_flops(B, h, c, C, e, e)


def rotate(x: Tensor, pos: Tensor) -> Tensor:
    """x (B, h, n, e) rotated by pos * theta on interleaved pairs; pos (B or 1, n) positions. The angles are
    taken in float64, so long sequences keep fp32 accuracy."""
    e = x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, e, 2, dtype=torch.float64, device=x.device) / e)  # (e/2,)
    angle = pos.to(torch.float64)[:, None, :, None] * theta  # (B, 1, n, e/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


@register_attention("retention")
class Retention(Attention):
    supports_mask = True
    supports_causal = True
    always_causal = True
    has_weights = False  # GroupNorm and the gate stand between (Q K^T * D) and the output
    supports_decoding = True
    decoding_state = "constant"  # S: (B, h, e, e)
    example_options = {"chunk": 8}
    bad_options = ({"chunk": 0}, {"decay": 1.0}, {"decay": (0.9, 0.8)}, {"decay": "0.9"})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        chunk: int = 64,
        decay: Union[None, float, Sequence[float]] = None,
        rotary: bool = True,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.chunk = check_int("chunk", chunk)
        self.rotary = check_bool("rotary", rotary)
        if self.rotary and self.head_dim % 2:
            raise ValueError(f"rotary needs an even head dim (rotation acts on pairs), got head dim {self.head_dim}; pass rotary=False")
        self.log_gammas = self._log_gammas(decay, heads)  # a tuple, not a buffer: module.to(bf16) must not round it
        self.gate = nn.Linear(dim, dim, bias=bias)
        self.norm = nn.GroupNorm(heads, dim)

    @staticmethod
    def _log_gammas(decay, heads: int) -> Tuple[float, ...]:
        """log gamma per head, taken in float64 (1 - 2^-30 is 1 in fp32, its log is not 0)."""
        def ok(g):
            return isinstance(g, numbers.Real) and not isinstance(g, bool) and 0 < g < 1

        if decay is None:
            return tuple(math.log1p(-(2.0 ** (-5 - i))) for i in range(heads))
        if ok(decay):
            return (math.log(decay),) * heads
        if isinstance(decay, (list, tuple)) and len(decay) == heads and all(ok(g) for g in decay):
            return tuple(math.log(g) for g in decay)
        raise ValueError(f"decay must be None (the paper's 1 - 2^(-5 - head)), a number in (0, 1) or {heads} numbers "
                         f"in (0, 1), one per head, got {decay!r}")

    def log_gamma(self, device) -> Tensor:
        """(1, h, 1, 1) fp32 log gamma per head."""
        return torch.tensor(self.log_gammas, dtype=torch.float32, device=device)[None, :, None, None]

    def _qkv(self, x: Tensor, pos: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """q / sqrt(e), k, v in fp32 (B, h, n, e), rotated to the positions pos (B or 1, n)."""
        q, k, v = self.project_qkv(x)
        q, k, v = q.float() * self.scale, k.float(), v.float()
        if self.rotary:
            q, k = rotate(q, pos), rotate(k, pos)
        return q, k, v

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """(B, h, n, e) fp32 retention -> swish(x W_G) * GroupNorm(o), then W_O."""
        return self.out(gated_group_norm(o, self.gate(x), self.norm))

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        B, n, _ = x.shape
        if mask is None:
            pos = torch.arange(n, device=x.device)[None]  # (1, n)
            log_decay = self.log_gamma(x.device).expand(1, -1, n, 1)  # (1, h, n, 1)
        else:
            pos = mask.cumsum(dim=1) - 1  # real positions only: padding steps do not advance
            log_decay = self.log_gamma(x.device) * mask[:, None, :, None]  # (B, h, n, 1)
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = self._qkv(x, pos)
            if mask is not None:
                k = k * mask[:, None, :, None]  # padding writes nothing
            o, _ = retention_chunks(q, k, v, log_decay, self.chunk)
        return self._output(o, x), None

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        t = x.shape[1]
        pos = state["pos"] + torch.arange(t, device=x.device)[None]
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = self._qkv(x, pos)
            s = state.get("S")
            if t == 1:  # the recurrent form: S_n = gamma S_{n-1} + k_n^T v_n, o_n = q_n S_n
                kv = k.transpose(-2, -1) @ v  # (B, h, e, e)
                s = kv if s is None else self.log_gamma(x.device).exp() * s + kv
                o = q @ s
            else:
                log_decay = self.log_gamma(x.device).expand(1, -1, t, 1)
                o, s = retention_chunks(q, k, v, log_decay, self.chunk, s, need_state=True)
        state["S"] = s
        return self._output(o, x), state

    def projection_flops(self, seq_len: int, batch: int = 1) -> int:
        return 2 * batch * seq_len * self.dim * self.dim * 5  # Q, K, V, gate and output

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        return retention_flops(batch, self.heads, seq_len, self.head_dim, self.chunk)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", chunk={self.chunk}, rotary={self.rotary}"
