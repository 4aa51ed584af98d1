"""Each mechanism's analytic FLOP formula against an independent count: torch.utils.flop_counter.

The counter sees every matmul/bmm/addmm/convolution. It does not count the fused CPU SDPA kernel
(it counts zero), so the test supplies that op's formula, 2 * 2 * B * h * Lq * Lk * e, the same one
the counter uses for the CUDA kernels. Non-causal only: the counter charges causal attention as if
it were full, while the analytic formula counts the visible n(n+1)/2 pairs (checked separately).
Tolerance: exact equality (both are integer counts of the same matmuls).
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.attention import build_attention, list_attentions

aten = torch.ops.aten

SMALL = {
    "linformer": dict(k=24, max_seq_len=512),
    "performer": dict(features=48),
    "nystromformer": dict(landmarks=16),
    "local": dict(window=16),
    "hybrid": dict(window=16),
}


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_val=None, **kwargs):
    B, h, Lq, e = query_shape  # the counter passes shapes
    Lk = key_shape[-2]
    return 2 * 2 * B * h * Lq * Lk * e


def counted_flops(module, x):
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        module(x)  # grad mode: nn.MultiheadAttention takes its composite (countable) path
    return counter.get_total_flops()


@pytest.mark.parametrize("name", list_attentions())
@pytest.mark.parametrize("n", [100, 256])
def test_analytic_flops_match_counter(name, n):
    torch.manual_seed(0)
    attn = build_attention(name, 64, 4, **SMALL.get(name, {}))
    assert counted_flops(attn, torch.randn(2, n, 64)) == attn.flops(n, batch=2)


@pytest.mark.parametrize("name", list_attentions())
def test_causal_flops_formula(name):
    attn = build_attention(name, 64, 4, **SMALL.get(name, {}))
    if not attn.supports_causal:
        pytest.skip(f"{name} is not causal")
    n, B = 128, 2
    full, causal = attn.flops(n, B, causal=False), attn.flops(n, B, causal=True)
    assert causal > 0
    if attn.exact:  # only the n(n+1)/2 visible pairs are charged
        proj = attn.projection_flops(n, B)
        assert causal - proj == 4 * B * 64 * n * (n + 1) // 2
        assert full - proj == 4 * B * 64 * n * n
