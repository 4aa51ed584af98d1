"""FLOPs three ways: the mechanism's analytic formula, a counted figure, and ptflops' MACs.

Counted: torch.utils.flop_counter.FlopCounterMode over one real call. Its registry misses the fused
CPU SDPA kernel (it counts zero) and charges causal SDPA as if it were full, so every SDPA kernel
(CPU flash, CUDA flash / efficient / cuDNN, forward and backward) gets a formula here, bound to the
op's own argument names: 2 * 2 * B * h * pairs * e forward, where pairs is Lq * Lk or, with
is_causal, the visible (query, key) pairs; backward = 2x forward. nn.MultiheadAttention's fused
inference op (_native_multi_head_attention) gets a formula too. These are *model* FLOPs (the MFU
convention): recomputation inside a fused backward (flash recomputes QK^T) is not charged, so a
forward + backward count equals 3x the forward count of the same matmuls. Element-wise work is
not counted anywhere, matching the analytic formulas in models/attention.

ptflops (backend "aten") reports MACs, not FLOPs (1 MAC ~ 2 FLOPs), counts bias additions as MACs,
and sees no fused SDPA kernel: a cross-check for the projections, labelled as such.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional

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


def counted_flops(fn: Callable[[], Tensor], backward: bool = False) -> int:
    """FLOPs of `fn()` (and of backpropagating from its output when `backward`), as counted by
    FlopCounterMode with the SDPA formulas above."""
    with FlopCounterMode(display=False, custom_mapping=SDPA_FORMULAS) as counter:
        out = fn()
        if backward:
            out.float().sum().backward()  # a sum's backward has no matmul: adds no FLOPs
    return counter.get_total_flops()


def ptflops_macs(module: nn.Module, make_input: Callable[[], Tensor]) -> Optional[int]:
    """MACs by ptflops' aten backend (a cross-check; None when ptflops is not installed)."""
    try:
        from ptflops import get_model_complexity_info
    except ImportError:
        return None
    x = make_input()
    macs, _ = get_model_complexity_info(
        module,
        tuple(x.shape[1:]),
        input_constructor=lambda _: {"x": x},
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
