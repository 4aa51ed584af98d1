"""The interface every attention mechanism implements.

    attn = build_attention("performer", dim=512, heads=8, features=256)
    y = attn(x, mask=None, causal=False)              # x: (B, n, d) -> y: (B, n, d)
    y, w = attn(x, mask, return_weights=True)          # w: (B, h, n, n), where `has_weights`

`mask` is a boolean (B, n) padding mask, True for real tokens. Outputs at padding positions are
finite but meaningless. Capabilities are class attributes, read by tests, the sweep and the CLI:

    supports_mask    padding mask respected (outputs of real tokens ignore padding tokens)
    supports_causal  causal attention available (construction or forward flag)
    always_causal    causal by nature (a recurrence over positions: retention, gla, deltanet): it runs
                     causally also when asked for non-causal attention, so in an encoder each position
                     sees itself and the earlier ones only (a unidirectional encoder, as the LRA papers
                     of these models use them); implies supports_causal
    padding_anywhere real outputs are unchanged by padding anywhere in the sequence, not only at
                     its ends (False for position-defined windows)
    has_weights      can return the (B, h, n, n) attention matrix it applies (explicitly or
                     implicitly; for inspection, costs O(n^2))
    weights_are_distributions  those matrices are row-stochastic (non-negative, rows sum to 1);
                     False where the approximation's matrix is not (Nystrom)
    exact            computes exact softmax attention (up to float rounding)
    max_seq_len      instance property: longest sequence accepted, None for unbounded
    supports_decoding  `step` decodes incrementally: new positions in, their causal outputs and the
                     new cache/state out (see "Incremental decoding" below)
    decoding_state   how that state grows with the positions seen: "kv-cache" (linearly), "window"
                     (up to a fixed number of positions), "constant" (a fixed size); None without decoding

Two more declarations serve the registry-wide tests, so a new mechanism needs no test edits:

    example_options  small settings of its own options (dim, heads, causal, dropout, bias aside) that
                     run fast at a few hundred positions: what the tests build, and a quick start
    bad_options      values of its options that it refuses (one option each), beyond the type errors
                     the tests derive from the defaults (a float, bool or string where an int belongs)

Incremental decoding (causal generation without recomputing the prefix):

    state = None
    y1, state = attn.step(x[:, :5], state)    # the first five positions
    y2, state = attn.step(x[:, 5:6], state)   # one more; equals attn(x[:, :6], causal=True)[:, 5:]
    attn.state_bytes(state)                   # the memory the cache/state holds

`step` is causal whatever the construction flag says and takes no padding mask. A state is a dict of
tensors (plus the int "pos", the positions seen); it belongs to one module and one batch.

`flops(seq_len, batch)` is the analytic count of matmul FLOPs (2 per multiply-add) of the
mechanism as implemented, projections included; element-wise work (softmax, exp, normalisation)
is not counted, matching what `torch.utils.flop_counter` counts.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

from utils.checks import check_bool, check_int, check_probability

from .functional import split_heads

# name -> class, filled by registry.register_attention. It lives here, below the registry, so that the
# "cannot be causal" sentence can name the alternatives without this module importing the registry.
REGISTERED: Dict[str, Type["Attention"]] = {}


def causal_alternatives() -> str:
    """The registered mechanisms that declare supports_causal, for error messages."""
    names = sorted(name for name, cls in REGISTERED.items() if cls.supports_causal)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


class Attention(nn.Module):
    """Multi-head self-attention on (batch, seq, dim). Subclasses implement `_attend`."""

    name: ClassVar[str] = ""  # set by @register_attention
    supports_mask: ClassVar[bool] = True
    supports_causal: ClassVar[bool] = False
    always_causal: ClassVar[bool] = False  # True: non-causal requests run the causal recurrence too
    padding_anywhere: bool = True  # a class default; a mechanism may set it per instance
    has_weights: ClassVar[bool] = False
    weights_are_distributions: ClassVar[bool] = True
    exact: ClassVar[bool] = False
    supports_decoding: ClassVar[bool] = False
    decoding_state: ClassVar[Optional[str]] = None  # "kv-cache", "window" or "constant"
    not_causal_reason: ClassVar[str] = "its approximation mixes every position with every other"
    not_decoding_reason: ClassVar[str] = ""  # why a causal mechanism has no `step`, for the error message
    example_options: ClassVar[Dict[str, Any]] = {}
    bad_options: ClassVar[Tuple[Dict[str, Any], ...]] = ()

    def __init__(self, dim: int, heads: int = 8, *, causal: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        dim, heads = check_int("dim", dim), check_int("heads", heads)
        if dim % heads:
            raise ValueError(f"heads must divide dim, got dim={dim} and heads={heads}")
        dropout = check_probability("dropout", dropout)
        if check_bool("causal", causal) and not self.supports_causal:
            raise self.not_causal_error()
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.causal = causal
        self.scale = self.head_dim**-0.5
        self._build_projections(check_bool("bias", bias))
        self.out_drop = nn.Dropout(dropout)

    # ------------------------------------------------------------------ projections

    def _build_projections(self, bias: bool) -> None:
        """Default layout: one merged QKV projection and an output projection."""
        self.qkv = nn.Linear(self.dim, 3 * self.dim, bias=bias)
        self.out = nn.Linear(self.dim, self.dim, bias=bias)

    def project_qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(B, n, d) -> q, k, v each (B, h, n, e)"""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)

    def get_projection_weights(self) -> Dict[str, Optional[Tensor]]:
        """Q, K, V and output projection weights as separate (d, d) matrices and (d,) biases."""
        d = self.dim
        w, b = self.qkv.weight, self.qkv.bias
        out = {"q_w": w[:d], "k_w": w[d : 2 * d], "v_w": w[2 * d :], "o_w": self.out.weight, "o_b": self.out.bias}
        out.update(q_b=None, k_b=None, v_b=None) if b is None else out.update(q_b=b[:d], k_b=b[d : 2 * d], v_b=b[2 * d :])
        return {k: (v.detach().clone() if v is not None else None) for k, v in out.items()}

    @torch.no_grad()
    def load_projection_weights(self, w: Dict[str, Optional[Tensor]]) -> None:
        """Inverse of `get_projection_weights` (lets exact mechanisms share weights in tests)."""
        self.qkv.weight.copy_(torch.cat([w["q_w"], w["k_w"], w["v_w"]]))
        if self.qkv.bias is not None:
            self.qkv.bias.copy_(torch.cat([w["q_b"], w["k_b"], w["v_b"]]))
        self.out.weight.copy_(w["o_w"])
        if self.out.bias is not None:
            self.out.bias.copy_(w["o_b"])

    # ------------------------------------------------------------------ interface

    @property
    def max_seq_len(self) -> Optional[int]:
        return None

    def forward(
        self,
        x: Tensor,
        mask: Optional[Tensor] = None,
        causal: Optional[bool] = None,
        return_weights: bool = False,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """
        Args:
            x: (batch, seq, dim) input.
            mask: optional (batch, seq) bool, True for real tokens, False for padding.
            causal: attend only to positions <= i; None uses the value given at construction.
            return_weights: also return the (batch, heads, seq, seq) attention matrix.
        Returns:
            (batch, seq, dim) output, or (output, weights) with `return_weights`.
        """
        causal = self.resolve_causal(causal)
        self.check_input(x, mask, check_bool("return_weights", return_weights))
        out, weights = self._attend(x, mask, causal, return_weights)
        out = self.out_drop(out)
        return (out, weights) if return_weights else out

    def _attend(self, x: Tensor, mask: Optional[Tensor], causal: bool, need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        raise NotImplementedError

    def not_causal_error(self) -> ValueError:
        return ValueError(
            f"attention '{self.name}' cannot be causal: {self.not_causal_reason}; "
            f"use one of {causal_alternatives()} for causal models"
        )

    def resolve_causal(self, causal: Optional[bool]) -> bool:
        """A per-call `causal` (None: the construction value), refused when the mechanism cannot be causal."""
        if causal is None:
            return self.causal
        if check_bool("causal", causal) and not self.supports_causal:
            raise self.not_causal_error()
        return causal

    def check_length(self, n: int) -> None:
        limit = self.max_seq_len
        if limit is not None and n > limit:
            raise ValueError(
                f"sequence length {n} exceeds the maximum {limit} of attention '{self.name}' "
                f"(set max_seq_len when building it)"
            )

    def check_input(self, x: Tensor, mask: Optional[Tensor], return_weights: bool = False) -> None:
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a torch.Tensor of shape (batch, seq, {self.dim}), got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (batch, seq, {self.dim}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one sequence, got batch = 0")
        if x.shape[1] == 0:
            raise ValueError("x must hold at least one position, got seq = 0")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        param = next(self.parameters(), None)
        if param is not None:
            # caught here, the mismatch names x; inside the projection it is an anonymous "mat1 and mat2" error
            if x.device != param.device:
                raise ValueError(f"x must be on the device of the attention's parameters ({param.device}), got {x.device}")
            device = x.device.type
            autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
            if x.dtype != param.dtype and not autocast:
                raise ValueError(
                    f"x must have the dtype of the attention's parameters ({param.dtype}), got {x.dtype}; "
                    f"convert one of them with .to(dtype) or run under torch.autocast"
                )
        self.check_length(x.shape[1])
        if mask is not None:
            if not self.supports_mask:
                raise ValueError(f"attention '{self.name}' does not support a padding mask; pass mask=None")
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"mask must be a torch.bool tensor (True = real token), got {got}")
            if tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"mask must have shape (batch, seq) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
            if mask.device != x.device:
                raise ValueError(f"mask must be on the same device as x ({x.device}), got {mask.device}")
        if return_weights and not self.has_weights:
            raise ValueError(f"attention '{self.name}' cannot return attention weights (has_weights is False)")

    # ------------------------------------------------------------------ incremental decoding

    def step(self, x: Tensor, state: Optional[Dict[str, Any]] = None) -> Tuple[Tensor, Dict[str, Any]]:
        """Causal outputs for new positions given the state of all earlier ones.

        Args:
            x: (batch, t, dim), the t >= 1 positions that follow those `state` has seen.
            state: what an earlier `step` returned, or None to start a sequence.
        Returns:
            (batch, t, dim) outputs, equal to forward(all positions so far, causal=True)[:, -t:] up to
            rounding, and the new state (the old one may be reused in place; do not step it twice).
        """
        if not self.supports_decoding:
            raise ValueError(self.decoding_refusal())
        self.check_input(x, None)
        if state is None:
            state = {"pos": 0}
        elif not isinstance(state, dict) or not isinstance(state.get("pos"), int):
            raise ValueError(f"state must be None or the dict an earlier step returned, got {type(state).__name__}")
        elif state.get("batch", x.shape[0]) != x.shape[0]:
            raise ValueError(f"x has batch {x.shape[0]} but the state was built for batch {state['batch']}")
        self.check_length(state["pos"] + x.shape[1])
        y, state = self._step(x, state)
        state["pos"] += x.shape[1]
        state["batch"] = x.shape[0]
        return self.out_drop(y), state

    @classmethod
    def decoding_refusal(cls) -> Optional[str]:
        """The sentence `step` raises for a mechanism without incremental decoding (None when it has it)."""
        if cls.supports_decoding:
            return None
        why = cls.not_decoding_reason or ("" if cls.supports_causal else f"it cannot be causal ({cls.not_causal_reason})")
        return f"attention '{cls.name}' has no incremental decoding (supports_decoding is False)" + (f": {why}" if why else "")

    def _step(self, x: Tensor, state: Dict[str, Any]) -> Tuple[Tensor, Dict[str, Any]]:
        """(B, t, d) new positions and the state after state["pos"] positions -> (B, t, d) outputs
        (before dropout) and the updated state; `step` advances "pos" afterwards."""
        raise NotImplementedError

    @staticmethod
    def state_bytes(state: Optional[Dict[str, Any]]) -> int:
        """Bytes held by the tensors of a decoding state (its cache or recurrent state)."""
        if not state:
            return 0
        return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, Tensor))

    # ------------------------------------------------------------------ cost model

    def flops(self, seq_len: int, batch: int = 1, causal: Optional[bool] = None, backward: bool = False) -> int:
        """Analytic matmul FLOPs (2 per multiply-add), projections included: the forward pass, plus
        the backward pass (input and parameter gradients) when `backward`. Refuses what forward refuses
        (a causal count for a non-causal mechanism, a length beyond max_seq_len): no figure for a run that
        cannot happen."""
        seq_len, batch = check_int("seq_len", seq_len), check_int("batch", batch)
        causal, backward = self.resolve_causal(causal), check_bool("backward", backward)
        self.check_length(seq_len)
        fwd = self.projection_flops(seq_len, batch) + self.attention_flops(seq_len, batch, causal)
        return fwd + self.backward_flops(seq_len, batch, causal) if backward else fwd

    def backward_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        """Each matmul's backward is two matmuls of its size (one per operand gradient), so 2x the
        forward. A mechanism with a constant operand (no gradient) overrides this."""
        return 2 * (self.projection_flops(seq_len, batch) + self.attention_flops(seq_len, batch, causal))

    def projection_flops(self, seq_len: int, batch: int = 1) -> int:
        return 2 * batch * seq_len * self.dim * self.dim * 4  # Q, K, V and output

    def attention_flops(self, seq_len: int, batch: int, causal: bool) -> int:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, causal={self.causal}"
