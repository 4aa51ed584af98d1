"""`synthesizer`: Tay et al. 2021, "Synthesizer: Rethinking Self-Attention". The attention weights are
synthesized, not computed from query-key dot products: y = softmax(S) (x W_v), then the output projection.

    kind="dense"   S_i = W2 relu(W1 x_i + b1) + b2: row i from token i alone. W1 (d, d) is one linear map
                   whose output is split into heads (e per head), then each head maps its e values to
                   max_len scores with its own (e, max_len) W2: d^2 + d max_len weights, the paper's count.
    kind="random"  S = R, a learned (max_len, max_len) matrix per head, the same for every input;
                   fixed=True keeps the initial draw (a buffer, never trained).
    factorized     dense: two heads' maps to a and b values (a b >= max_len, a = ceil(sqrt(max_len))),
                   S_ij = B_i[j // a] A_i[j % a] (A tiled b times, B repeated a times, multiplied);
                   random: R = R1 R2^T with R1, R2 (max_len, rank) per head.

A sequence of n tokens uses the first n rows / columns. A fixed maximum length like Linformer's:
`max_seq_len` (set from the task's length by training, like Linformer's). Padding: row and column
indices are the ranks of the tokens among the real ones (as Linformer picks its columns) and padding
keys get no weight, so real outputs are the unpadded outputs whatever the padding's position.
Causal: scores with j > i are masked before the softmax. That is sound for both kinds: a random row
depends on no token, and a dense row i on token i alone, so no future token can reach output i.
There are no query or key projections: only V and the output projection.
Decoding: row i of the scores needs token i alone (dense) or nothing (random), so a step computes the new
rows against the columns so far and keeps a cache of the values: a KV cache without keys, (B, h, n, e).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.checks import check_bool, check_choice, check_int

from .base import Attention
from .functional import append_cache, attention_mask, masked_softmax, merge_heads, split_heads
from .registry import register_attention

KINDS = ("dense", "random")


def _uniform(shape, fan_in: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


@register_attention("synthesizer")
class SynthesizerAttention(Attention):
    supports_mask = True
    supports_causal = True
    has_weights = True
    supports_decoding = True
    decoding_state = "kv-cache"  # every position's values, (B, h, n, e): the synthesized rows need no keys
    example_options = {"max_seq_len": 256}
    bad_options = ({"kind": "bogus"}, {"max_seq_len": 0}, {"rank": 0})

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        *,
        kind: str = "dense",
        factorized: bool = False,
        rank: int = 8,
        fixed: bool = False,
        max_seq_len: int = 4096,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        kind = check_choice("kind", kind, KINDS)
        factorized, fixed = check_bool("factorized", factorized), check_bool("fixed", fixed)
        rank, L = check_int("rank", rank), check_int("max_seq_len", max_seq_len)
        if fixed and kind != "random":
            raise ValueError(f"fixed=True applies to kind='random' only (a dense synthesizer's weights depend on the input), got kind={kind!r}")
        self.kind, self.factorized, self.rank, self.fixed, self._max_len = kind, factorized, rank, fixed, L
        h, e = heads, self.head_dim
        if kind == "dense":
            self.hidden = nn.Linear(dim, dim, bias=bias)  # W1, b1; its output split into heads
            if factorized:
                self.a = math.ceil(math.sqrt(L))
                self.b = math.ceil(L / self.a)
                self.w_a, self.w_b = _uniform((h, e, self.a), e), _uniform((h, e, self.b), e)
                self.b_a = _uniform((h, self.a), e) if bias else None
                self.b_b = _uniform((h, self.b), e) if bias else None
            else:
                self.w2 = _uniform((h, e, L), e)
                self.b2 = _uniform((h, L), e) if bias else None
        else:
            # unit-variance scores: R ~ N(0, 1), and R1 R2^T with N(0, rank^-1/2) factors
            shapes = {"r1": (h, L, rank), "r2": (h, L, rank)} if factorized else {"r": (h, L, L)}
            std = rank**-0.25 if factorized else 1.0
            for name, shape in shapes.items():
                t = torch.randn(shape) * std
                if fixed:
                    self.register_buffer(name, t)
                else:
                    setattr(self, name, nn.Parameter(t))

    # ------------------------------------------------------------------ projections: V and output only

    def _build_projections(self, bias: bool) -> None:
        self.value = nn.Linear(self.dim, self.dim, bias=bias)
        self.out = nn.Linear(self.dim, self.dim, bias=bias)

    def get_projection_weights(self) -> Dict[str, Optional[Tensor]]:
        """V and output weights; a synthesizer has no query or key, so theirs are empty (0, d) matrices."""
        v, o = self.value, self.out
        empty_w, empty_b = v.weight.new_zeros(0, self.dim), None if v.bias is None else v.bias.new_zeros(0)
        w = {"q_w": empty_w, "k_w": empty_w, "v_w": v.weight, "o_w": o.weight,
             "q_b": empty_b, "k_b": empty_b, "v_b": v.bias, "o_b": o.bias}
        return {k: (t.detach().clone() if t is not None else None) for k, t in w.items()}

    @torch.no_grad()
    def load_projection_weights(self, w: Dict[str, Optional[Tensor]]) -> None:
        """V and output weights; query and key weights, which a synthesizer lacks, must be empty."""
        if any(w.get(k) is not None and w[k].numel() for k in ("q_w", "k_w")):
            raise ValueError("attention 'synthesizer' has no query or key projection, so q_w and k_w must be empty or None")
        self.value.weight.copy_(w["v_w"])
        self.out.weight.copy_(w["o_w"])
        if self.value.bias is not None:
            self.value.bias.copy_(w["v_b"])
        if self.out.bias is not None:
            self.out.bias.copy_(w["o_b"])

    @property
    def max_seq_len(self) -> Optional[int]:
        return self._max_len

    # ------------------------------------------------------------------ the synthesized scores

    def _dense_scores(self, x: Tensor, n: int) -> Tensor:
        """(B, h, n, n): row i from token i alone; column j is the score of key rank j."""
        hid = split_heads(F.relu(self.hidden(x)), self.heads)  # (B, h, n, e)
        if not self.factorized:
            s = hid @ self.w2[..., :n]  # (B, h, n, n)
            return s if self.b2 is None else s + self.b2[:, None, :n]
        a = min(self.a, n)  # columns j < n use A[j % a] and B[j // a] only
        nb = -(-n // self.a)
        sa = hid @ self.w_a[..., :a]  # (B, h, n, a)
        sb = hid @ self.w_b[..., :nb]  # (B, h, n, nb)
        if self.b_a is not None:
            sa, sb = sa + self.b_a[:, None, :a], sb + self.b_b[:, None, :nb]
        return (sb[..., :, None] * sa[..., None, :]).flatten(-2)[..., :n]  # S_ij = B_i[j // a] A_i[j % a]

    def _random_scores(self, n: int, first: int = 0) -> Tensor:
        """(h, n - first, n): rows first .. n - 1, the same for every input."""
        if not self.factorized:
            return self.r[:, first:n, :n]
        return self.r1[:, first:n] @ self.r2[:, :n].transpose(-2, -1)

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        B, n, _ = x.shape
        v = split_heads(self.value(x), self.heads)  # (B, h, n, e)
        s = self._dense_scores(x, n) if self.kind == "dense" else self._random_scores(n)[None]  # (B|1, h, n, n)
        if mask is not None:  # rows and columns by rank among the real tokens
            rank = (mask.cumsum(dim=-1) - 1).clamp_min(0)  # (B, n)
            if self.kind == "dense":
                s = s.gather(-1, rank[:, None, None, :].expand(B, self.heads, n, n))
            else:
                s = s[0][:, rank[:, :, None], rank[:, None, :]].transpose(0, 1)  # (B, h, n, n)
        with torch.autocast(x.device.type, enabled=False):
            w = masked_softmax(s.float(), attention_mask(mask, causal, n, x.device))  # (B|1, h, n, n)
        y = w.to(v.dtype) @ v  # (B, h, n, e)
        weights = w.expand(B, -1, -1, -1) if need_weights else None
        return self.out(merge_heads(y)), weights

    def _step(self, x: Tensor, state: dict) -> Tuple[Tensor, dict]:
        pos, t = state["pos"], x.shape[1]
        n = pos + t
        v = split_heads(self.value(x), self.heads)  # (B, h, t, e)
        v = append_cache(state, "v", v)  # (B, h, n, e)
        s = self._dense_scores(x, n) if self.kind == "dense" else self._random_scores(n, pos)[None]  # (B|1, h, t, n)
        allowed = torch.ones(t, n, dtype=torch.bool, device=x.device).tril_(pos)  # row r is position pos + r
        with torch.autocast(x.device.type, enabled=False):
            w = masked_softmax(s.float(), allowed)
        return self.out(merge_heads(w.to(v.dtype) @ v)), state

    # ------------------------------------------------------------------ cost model

    def projection_flops(self, seq_len: int, batch: int = 1) -> int:
        return 2 * batch * seq_len * self.dim * self.dim * 2  # V and output

    def _score_flops(self, n: int, batch: int) -> int:
        """FLOPs of the synthesized scores (the dense MLP, or R1 R2^T once per call, not per element)."""
        h, e, d = self.heads, self.head_dim, self.dim
        if self.kind == "random":
            return 2 * h * n * n * self.rank if self.factorized else 0
        mlp = 2 * batch * n * d * d  # W1
        cols = min(self.a, n) + -(-n // self.a) if self.factorized else n
        return mlp + 2 * batch * h * n * e * cols

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        # every score is computed (causality masks them), so the weights-by-values product is n x n
        return self._score_flops(seq_len, batch) + 2 * batch * seq_len * seq_len * self.dim

    def backward_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        full = super().backward_flops(seq_len, batch, causal)
        if not self.fixed:
            return full
        # fixed R: R1 R2^T has no backward, and the weights-by-values product backpropagates to V only
        return full - 2 * self._score_flops(seq_len, batch) - 2 * batch * seq_len * seq_len * self.dim

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", kind={self.kind!r}, factorized={self.factorized}, rank={self.rank}, "
                f"fixed={self.fixed}, max_seq_len={self._max_len}")
