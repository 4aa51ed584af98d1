"""`cosformer`: Qin et al. 2022, "cosFormer: Rethinking Softmax in Attention" (arXiv 2202.08791).
ReLU features re-weighted by the distance of the two positions:

    s(i, j) = relu(q_i) . relu(k_j) cos(pi/2 (i - j) / M),   out_i = sum_j s(i, j) v_j / sum_j s(i, j)

Ptolemy's identity cos(a - b) = cos a cos b + sin a sin b splits the re-weighting into two feature sets,
phi(x_i) = [relu(x_i) cos(pi i / 2M), relu(x_i) sin(pi i / 2M)] (width 2e), so s(i, j) = phi(q_i) . phi(k_j)
and the kernelised forms of functional.kernel_attention apply: non-causal O(n e^2) per head, causal through
chunked prefix sums, decoding with the constant (B, h, 2e, e+1) state of kernel_attention_step.

M is the `max_seq_len` option, fixed at construction, for both modes: the paper sets M to the sequence
length, which would make a causal position's output depend on how long the sequence will become. With M
fixed, the full causal forward and token-by-token stepping compute the same function, and sequences are
refused beyond M (where i - j could reach M and the weight 0). The training and sweep wiring sets
max_seq_len to the task's sequence length, which is the paper's choice for fixed-length inputs; with a
much larger M the re-weighting fades (cos ~ 1) and cosformer tends to ReLU linear attention.
Positions are ranks among the real tokens (as in linformer), so padding anywhere leaves the real outputs
unchanged; padding keys get zero features. Angles stay in [0, pi/2), so the features are non-negative.
A query whose ReLU features are all zero (every channel negative) has s(i, j) = 0 for every key: the ratio
is 0/0 and, as in the paper's code (a clamped denominator), its output is 0 and its weights row is 0 (likewise
a causal query whose visible keys all have zero features).
The kernel runs in fp32 even under autocast (its sums over n lose too much in bf16/fp16).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.checks import check_int

from .base import Attention
from .functional import kernel_attention, kernel_attention_flops, kernel_attention_step, kernel_weights, merge_heads
from .registry import register_attention


@register_attention("cosformer")
class CosformerAttention(Attention):
    supports_mask = True
    supports_causal = True
    # Rows are distributions, or zero for a query with all-negative projections (probability 2^-e per query and
    # head) or, causally, a prefix of such keys: the 0/0 returned as 0.
    has_weights = True
    supports_decoding = True
    decoding_state = "constant"  # sum_j phi(k_j) [v_j, 1]: (B, h, 2e, e + 1) whatever the length
    example_options = {"chunk": 8, "max_seq_len": 256}
    bad_options = ({"chunk": 0}, {"max_seq_len": 0})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        max_seq_len: int = 4096,
        chunk: int = 64,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self._max_len = check_int("max_seq_len", max_seq_len)
        self.chunk = check_int("chunk", chunk)

    @property
    def max_seq_len(self) -> Optional[int]:
        return self._max_len

    def features(self, x: Tensor, pos: Tensor) -> Tensor:
        """(B, h, n, e) queries or keys and their positions (n,) or (B, n) -> (B, h, n, 2e) fp32 features
        [relu(x) cos(pi pos / 2M), relu(x) sin(pi pos / 2M)]."""
        angle = (pos.float() * (math.pi / (2 * self._max_len)))[..., None]  # (n, 1) or (B, n, 1)
        if angle.dim() == 3:
            angle = angle[:, None]  # (B, 1, n, 1)
        r = F.relu(x.float())
        return torch.cat([r * torch.cos(angle), r * torch.sin(angle)], dim=-1)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        q, k, v = self.project_qkv(x)  # (B, h, n, e)
        if mask is None:
            pos = torch.arange(x.shape[1], device=x.device)  # (n,)
        else:
            pos = (mask.cumsum(dim=-1) - 1).clamp_min(0)  # (B, n) rank among the real tokens
        with torch.autocast(x.device.type, enabled=False):
            qf, kf = self.features(q, pos), self.features(k, pos)  # (B, h, n, 2e)
            if mask is not None:
                kf = kf * mask[:, None, :, None]  # padding keys: zero features
            y = kernel_attention(qf, kf, v.float(), causal=causal, chunk=self.chunk, eps=1e-30)
            w = kernel_weights(qf, kf, causal, eps=1e-30) if need_weights else None
        return self.out(merge_heads(y.to(v.dtype))), w

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        q, k, v = self.project_qkv(x)  # (B, h, t, e)
        pos = torch.arange(state["pos"], state["pos"] + x.shape[1], device=x.device)  # absolute positions
        with torch.autocast(x.device.type, enabled=False):
            y, state["kv"] = kernel_attention_step(self.features(q, pos), self.features(k, pos), v.float(), state.get("kv"), eps=1e-30)
        return self.out(merge_heads(y.to(v.dtype))), state

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        e = self.head_dim
        return kernel_attention_flops(batch, self.heads, seq_len, 2 * e, e, causal, self.chunk)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", max_seq_len={self._max_len}, chunk={self.chunk}"
