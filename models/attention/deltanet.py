"""`deltanet`: the delta rule as a linear transformer (Schlag et al. 2021, "Linear Transformers Are Secretly
Fast Weight Programmers"), trained in parallel over the sequence as in Yang et al. 2024, "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length":

    S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,   o_t = S_t q_t     (recurrent form: decoding)

with q, k L2-normalised (x W_Q, x W_K per head), v = x W_V and beta_t = sigmoid(x_t W_beta + b) one per head.
Written here in row form, M = S^T (e x f): M_t = M_{t-1} + k_t^T u_t with u_t = beta_t (v_t - k_t M_{t-1}).

Training runs the chunked form (the WY/UT representation): inside a chunk of C positions after state M_0,
    U = T (beta V - beta K M_0),  T = (I + A)^-1,  A_ti = beta_t k_t . k_i (i < t)
    O = Q M_0 + (Q K^T, i <= t) U,   M_C = M_0 + K^T U
the triangular inverse by blocks with matmuls (recurrent.unit_lower_inverse), T beta V and T beta K for all
chunks at once, and only U's M_0 term, O's Q M_0 term and the state update chunk after chunk. `chunk` is a
power of two. O(n C (e + f) + n e f) time, O(n C + (n / C) e f) memory per head; decoding state (B, h, e, e).

Minimal layer: no short convolutions, SiLU feature map or output norm (the paper's DeltaNet block adds
them); the output is W_O of the heads. Causal by nature (always_causal): asked for non-causal attention it
runs the same recurrence. A padding position is an identity step (beta = 0), so padding anywhere holds.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Attention
from .functional import merge_heads
from .recurrent import (
    check_pow2_chunk,
    from_chunks,
    pow2_chunk,
    to_chunks,
    tril,
    unit_lower_inverse,
    unit_lower_inverse_flops,
)
from .registry import register_attention


def delta_chunks(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, chunk: int, state: Optional[Tensor] = None, need_state: bool = False
) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunked delta rule. q, k: (B, h, n, e) L2-normalised, v: (B, h, n, f), beta: (B, h, n) in [0, 1] (0 at
    padding), fp32; chunk a power of two; state M: (B, h, e, f) before position 0 or None (zero).
    Returns (B, h, n, f) outputs and the state after the last position (None unless need_state)."""
    n = q.shape[2]
    C = pow2_chunk(chunk, n)
    qc, kc, vc, bc = (to_chunks(t, C) for t in (q, k, v, beta[..., None]))  # (B, h, c, C, .)
    kb, vb = kc * bc, vc * bc
    a = (kb @ kc.transpose(-2, -1)).masked_fill(~tril(C, q.device, -1), 0.0)  # (B, h, c, C, C) strictly lower
    t = unit_lower_inverse(a)
    w, u = t @ kb, t @ vb  # U = u - w M_0 per chunk
    qk = (qc @ kc.transpose(-2, -1)).masked_fill(~tril(C, q.device), 0.0)  # (B, h, c, C, C) keys i <= t
    c = qc.shape[2]
    last = c if need_state else c - 1  # chunks whose state update is needed
    us, entering, m = [], [], state
    for i in range(c):
        entering.append(m)
        ui = u[:, :, i] if m is None else u[:, :, i] - w[:, :, i] @ m  # (B, h, C, f)
        us.append(ui)
        if i < last:
            upd = kc[:, :, i].transpose(-2, -1) @ ui  # (B, h, e, f)
            m = upd if m is None else m + upd
    out = qk @ torch.stack(us, dim=2)  # (B, h, c, C, f)
    first = 0 if state is not None else 1  # chunk 0 starts from a zero state
    if first < c:
        out = out + F.pad(qc[:, :, first:] @ torch.stack(entering[first:], dim=2), (0, 0, 0, 0, first, 0))
    return from_chunks(out, n), (m if need_state else None)


def delta_flops(B: int, h: int, n: int, e: int, f: int, chunk: int) -> int:
    """Matmul FLOPs of `delta_chunks` in a forward pass: per chunk A, T beta K, Q K^T (C^2 e each), T beta V
    and (Q K^T) U (C^2 f each) and the inverse; per chunk after the first W M_0 and Q M_0, per chunk before
    the last K^T U (C e f each)."""
    C = pow2_chunk(chunk, n)
    c = -(-n // C)
    per_chunk = 2 * C * C * (3 * e + 2 * f) + unit_lower_inverse_flops(C)
    return B * h * (c * per_chunk + 3 * (c - 1) * 2 * C * e * f)


@register_attention("deltanet")
class DeltaNet(Attention):
    supports_mask = True
    supports_causal = True
    always_causal = True
    has_weights = False  # the applied matrix (Q K^T) T diag(beta) mixes keys and values through the state
    supports_decoding = True
    decoding_state = "constant"  # M: (B, h, e, e)
    example_options = {"chunk": 8}
    bad_options = ({"chunk": 0}, {"chunk": 12})

    def __init__(self, dim: int, heads: int = 8, *, chunk: int = 64, causal: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.chunk = check_pow2_chunk(chunk)
        self.beta = nn.Linear(dim, heads, bias=True)  # W_beta, b: the writing strength per head

    def _qkv_beta(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """L2-normalised q, k, plain v (B, h, n, e) and beta (B, h, n), fp32."""
        q, k, v = self.project_qkv(x)
        beta = torch.sigmoid(self.beta(x).float()).transpose(1, 2)
        return F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1), v.float(), beta

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        with torch.autocast(x.device.type, enabled=False):
            q, k, v, beta = self._qkv_beta(x)
            if mask is not None:  # padding: beta = 0, an identity step
                beta = beta * mask[:, None, :]
                k = k * mask[:, None, :, None]
            o, _ = delta_chunks(q, k, v, beta, self.chunk)
        return self.out(merge_heads(o.to(self.out.weight.dtype))), None

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        with torch.autocast(x.device.type, enabled=False):
            q, k, v, beta = self._qkv_beta(x)
            m = state.get("M")
            if x.shape[1] == 1:  # the recurrent form: M_t = M_{t-1} + beta_t k_t^T (v_t - k_t M_{t-1}), o_t = q_t M_t
                u = v if m is None else v - k @ m  # (B, h, 1, e)
                upd = k.transpose(-2, -1) @ (beta[..., None] * u)
                m = upd if m is None else m + upd
                o = q @ m
            else:
                o, m = delta_chunks(q, k, v, beta, self.chunk, m, need_state=True)
        state["M"] = m
        return self.out(merge_heads(o.to(self.out.weight.dtype))), state

    def projection_flops(self, seq_len: int, batch: int = 1) -> int:
        return 2 * batch * seq_len * self.dim * (4 * self.dim + self.heads)  # Q, K, V, output and beta

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        e = self.head_dim
        return delta_flops(batch, self.heads, seq_len, e, e, self.chunk)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", chunk={self.chunk}"
