"""Each mechanism's analytic FLOP formula against an independent count (profiling.counted_flops:
torch.utils.flop_counter plus formulas for the fused SDPA / MHA kernels it misses).
Tolerance: exact equality (both are integer counts of the same matmuls). The one expected gap is
`naive` under causality: it computes the full n x n product and masks it, while the analytic figure
charges the n(n+1)/2 visible pairs; the sweep flags that gap rather than hiding it.
"""
import pytest
import torch

from models.attention import build_attention, get_attention, list_attentions
from profiling import counted_flops, flop_report


def build(name, **kw):
    """The mechanism with its declared `example_options` (small sizes, declared beside its maths)."""
    torch.manual_seed(0)
    return build_attention(name, 64, 4, **{**get_attention(name).example_options, **kw})


# 250 is a multiple of no chunk, window or landmark count in the example options: the padding paths run too
@pytest.mark.parametrize("name", list_attentions())
@pytest.mark.parametrize("n", [100, 250])
def test_forward_flops_match_counter(name, n):
    attn = build(name)
    assert counted_flops(lambda: attn(torch.randn(2, n, 64))) == attn.flops(n, batch=2)


@pytest.mark.parametrize("name", list_attentions())
def test_inference_mode_flops_match_counter(name):
    """Under no_grad/eval nn.MultiheadAttention takes a fused fast path; it is counted too."""
    attn = build(name).eval()
    with torch.no_grad():
        assert counted_flops(lambda: attn(torch.randn(2, 100, 64))) == attn.flops(100, batch=2)


@pytest.mark.parametrize("name", list_attentions())
def test_forward_backward_flops_match_counter(name):
    attn = build(name)
    x = torch.randn(2, 100, 64, requires_grad=True)
    assert counted_flops(lambda: attn(x), backward=True) == attn.flops(100, batch=2, backward=True)


@pytest.mark.parametrize("name", list_attentions())
def test_causal_flops_match_counter(name):
    try:
        attn = build(name, causal=True)
    except ValueError:
        pytest.skip(f"{name} is not causal")
    counted, analytic = counted_flops(lambda: attn(torch.randn(2, 128, 64))), attn.flops(128, batch=2)
    if name == "naive":  # computes the full product, then masks: flagged, never hidden
        report = flop_report(analytic, counted)
        assert report.flagged and counted > analytic
    else:
        assert counted == analytic


@pytest.mark.parametrize("name", list_attentions())
def test_causal_flops_formula(name):
    attn = build(name)
    if not attn.supports_causal:
        pytest.skip(f"{name} is not causal")
    n, B = 128, 2
    full, causal = attn.flops(n, B, causal=False), attn.flops(n, B, causal=True)
    assert causal > 0
    if attn.exact:  # only the n(n+1)/2 visible pairs are charged
        proj = attn.projection_flops(n, B)
        assert causal - proj == 4 * B * 64 * n * (n + 1) // 2
        assert full - proj == 4 * B * 64 * n * n


def test_flop_report_flags_beyond_tolerance():
    assert not flop_report(1000, 1019).flagged
    assert flop_report(1000, 1021).flagged
    assert flop_report(1000, 979).flagged
    assert flop_report(1000, 0).flagged
