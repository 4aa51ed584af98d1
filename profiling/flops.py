"""FLOPs three ways: the mechanism's analytic formula, a count by torch.utils.flop_counter.FlopCounterMode, and
ptflops' MACs (a cross-check of the projections: MACs not FLOPs, blind to fused SDPA). The counter misses the
fused CPU SDPA kernel and charges causal SDPA in full, so every SDPA kernel (and MHA's fused fast path) gets a
formula here. These are model FLOPs: a fused backward's recomputation is not charged, element-wise work is not
counted anywhere (the convention of the analytic formulas in models/attention)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

FLOP_TOLERANCE = 0.02  # a counted figure further than this from the analytic one is flagged

aten = torch.ops.aten


def visible_pairs(s_q: int, s_k: int, causal: bool) -> int:
    """(query, key) pairs attention computes; causal: query i sees keys 0..i (top-left aligned)."""
    if not causal:
        return s_q * s_k
    if s_q <= s_k:
        return s_q * (s_q + 1) // 2
    return s_k * (s_k + 1) // 2 + (s_q - s_k) * s_k


def _sdpa_formula(op, backward: bool):
    """2 * 2 * B * h * pairs * e forward (QK^T and AV over the visible pairs), bound to the op's own argument
    names; backward = 2x forward."""
    names = [a.name for a in op._schema.arguments]

    def formula(*args, out_shape=None, **kwargs) -> int:
        bound = dict(zip(names, args))
        bound.update(kwargs)
        q, k, v = bound["query"], bound["key"], bound["value"]
        *batch, h, s_q, e = q
        s_k, e_v = k[-2], v[-1]
        b = 1
        for dim in batch:
            b *= dim
        pairs = visible_pairs(s_q, s_k, bool(bound.get("is_causal", False)))
        fwd = 2 * b * h * pairs * (e + e_v)  # QK^T and AV
        return 2 * fwd if backward else fwd

    return formula


def _sdpa_mapping() -> Dict:
    mapping = {}
    for fwd_name, bwd_name in (
        ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward"),
        ("_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward"),
        ("_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward"),
        ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward"),
    ):
        for name, backward in ((fwd_name, False), (bwd_name, True)):
            packet = getattr(aten, name, None)
            if packet is None:
                continue
            # FlopCounterMode looks ops up by packet; the argument names come from the default overload
            mapping[packet] = _sdpa_formula(packet.default, backward)
    return mapping


def _native_mha_formula(*args, out_shape=None, **kwargs) -> int:
    """nn.MultiheadAttention's inference fast path, one fused op: QKV projection, attention over all
    pairs (a causal mask arrives as a mask, so all pairs are charged), output projection."""
    names = [a.name for a in aten._native_multi_head_attention.default._schema.arguments]
    bound = dict(zip(names, args))
    bound.update(kwargs)
    B, n_q, d = bound["query"]
    n_k = bound["key"][1]
    qkv = 2 * B * d * d * (n_q + 2 * n_k)
    attn = 2 * 2 * B * n_q * n_k * d
    out = 2 * B * n_q * d * d
    return qkv + attn + out


SDPA_FORMULAS = _sdpa_mapping()
SDPA_FORMULAS[aten._native_multi_head_attention] = _native_mha_formula


class FlopTally:
    """The counter above, opened and closed around live work that is not one Python call (a training
    step spread over Lightning hooks): `start()`, `so_far()` at any point (e.g. just before backward, for
    the forward's share), `stop()` -> total. The work runs for real; the counter only watches the
    dispatched ops, at a dispatch cost of a few microseconds per op."""

    def __init__(self):
        self._mode: Optional[FlopCounterMode] = None

    @property
    def active(self) -> bool:
        return self._mode is not None

    def start(self) -> None:
        if self._mode is not None:
            raise RuntimeError("FlopTally.start() while already counting")
        self._mode = FlopCounterMode(display=False, custom_mapping=SDPA_FORMULAS)
        self._mode.__enter__()

    def so_far(self) -> int:
        return self._mode.get_total_flops() if self._mode is not None else 0

    def stop(self) -> int:
        if self._mode is None:
            return 0
        mode, self._mode = self._mode, None
        total = mode.get_total_flops()
        mode.__exit__(None, None, None)
        return total

    def __enter__(self) -> "FlopTally":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def counted_flops(fn: Callable[[], Tensor], backward: bool = False) -> int:
    """FLOPs of `fn()` (and of backpropagating from its output when `backward`), as counted by
    FlopCounterMode with the SDPA formulas above."""
    tally = FlopTally()
    with tally:
        out = fn()
        if backward:
            out.float().sum().backward()  # a sum's backward has no matmul: adds no FLOPs
        total = tally.so_far()
    return total


class _Call(nn.Module):
    """A throwaway holder for ptflops: it calls model(x), so the inputs travel as one tuple and are passed
    on as positional arguments; and it registers forward hooks on the children of the model it is given and
    never removes them, so they land on this holder's child (another holder), not on the caller's model."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module

    def forward(self, inputs):
        return self.inner(*inputs) if not isinstance(self.inner, _Call) else self.inner(inputs)


def ptflops_macs(module: nn.Module, make_input: Callable[[], Any]) -> Optional[int]:
    """MACs by ptflops' aten backend (a cross-check; None when ptflops is not installed). `make_input`
    returns one tensor or a tuple of positional inputs. The module is left as it was (no hooks)."""
    try:
        from ptflops import get_model_complexity_info
    except ImportError:
        return None
    x = make_input()
    x = x if isinstance(x, tuple) else (x,)
    module = _Call(_Call(module))  # ptflops' hooks go on the inner holder
    shape, constructor = tuple(x[0].shape[1:]), (lambda _: x)
    macs, _ = get_model_complexity_info(
        module,
        shape,
        input_constructor=constructor,
        as_strings=False,
        print_per_layer_stat=False,
        backend="aten",
        verbose=False,
    )
    return int(macs) if macs is not None else None


@dataclass
class FlopReport:
    analytic_flops: int
    counted_flops: int
    ptflops_macs: Optional[int]
    counted_over_analytic: float
    flagged: bool  # counted differs from analytic by more than FLOP_TOLERANCE
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def flop_report(analytic: int, counted: int, macs: Optional[int] = None, tolerance: float = FLOP_TOLERANCE) -> FlopReport:
    ratio = counted / analytic if analytic else float("nan")
    flagged = not (abs(ratio - 1.0) <= tolerance)
    note = f"counted FLOPs are {ratio:.3f}x the analytic figure (tolerance {tolerance:.0%})" if flagged else ""
    return FlopReport(analytic, counted, macs, ratio, flagged, note)
