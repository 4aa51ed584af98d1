"""Incremental decoding of the windowed, sparse, synthesized and random-feature mechanisms in the settings the
registry-wide tests (tests/test_decoding.py, example options only) do not reach: dilated windows, several global
tokens, head groups with different dilations, both sparse patterns, every synthesizer kind, prefills longer than
one chunk of blocked.DECODE_ROWS, reformer's rounds (with and without duplicate counting, one bucket, one round), sinkhorn's causal balancing over many
blocks,
the bounded size of window caches, and the random draws (performer's features, reformer's rotations) a state
belongs to.

The reference is each mechanism's own full causal forward pass (proven against the paper's definition, token by
token, in tests/test_attention.py and the mechanism tests): stepping in pieces must equal it within 1e-5 relative
in fp32 (the same sums in another order).
"""
from __future__ import annotations

import pytest
import torch

from models.attention import build_attention
from models.attention.blocked import DECODE_ROWS

DIM, HEADS = 48, 6

CASES = {
    "local-dilated": ("local", {"window": 5, "dilation": 2}),
    "longformer-dilated-globals": ("longformer", {"window": 4, "dilation": 3, "global_tokens": 3}),
    "hybrid-groups": ("hybrid", {"window": 3, "local_heads": 4, "dilations": (1, 3), "chunk": 16}),
    "hybrid-all-local": ("hybrid", {"window": 4, "local_heads": 6, "dilations": (2,)}),
    "hybrid-all-global": ("hybrid", {"local_heads": 0, "chunk": 16}),
    "sparse-fixed": ("sparse", {"pattern": "fixed", "stride": 8, "summary": 2}),
    "sparse-strided": ("sparse", {"pattern": "strided", "stride": 8}),
    "synthesizer-dense-factorized": ("synthesizer", {"kind": "dense", "factorized": True, "max_seq_len": 700}),
    "synthesizer-random": ("synthesizer", {"kind": "random", "max_seq_len": 700}),
    "synthesizer-random-factorized": ("synthesizer", {"kind": "random", "factorized": True, "max_seq_len": 700}),
    "performer-plain-gaussian": ("performer", {"features": 24, "ortho": False, "chunk": 16}),
    "torch_mha": ("torch_mha", {}),
    "torch_mha-no-bias": ("torch_mha", {"bias": False}),
    "reformer-rounds": ("reformer", {"hash_rounds": 4, "buckets": 6, "bucket_size": 8}),
    "reformer-no-dedup": ("reformer", {"hash_rounds": 3, "buckets": 4, "bucket_size": 16, "dedup": False}),
    "reformer-one-bucket": ("reformer", {"hash_rounds": 2, "buckets": 1, "bucket_size": 8}),
    "reformer-one-round": ("reformer", {"hash_rounds": 1, "buckets": 8, "bucket_size": 4}),
    "sinkhorn-blocks": ("sinkhorn", {"block_size": 8, "sinkhorn_iters": 8, "temperature": 0.5}),
    "sinkhorn-no-balancing": ("sinkhorn", {"block_size": 16, "sinkhorn_iters": 0}),
}


@pytest.mark.parametrize("name, options", [CASES["sinkhorn-blocks"], CASES["reformer-rounds"]])
def test_token_by_token_from_the_start(name, options):
    # no prefill by the forward pass: every position through the incremental path, past several blocks
    attn = make(name, options)
    x = torch.randn(2, 60, DIM)
    with torch.no_grad():
        full = attn(x, causal=True)
        stepped, _ = run_steps(attn, x, [1] * 60)
    assert rel_err(stepped, full) < 1e-5  # fp32 rounding


def make(name, options, seed=0):
    torch.manual_seed(seed)
    return build_attention(name, DIM, HEADS, causal=True, **options).eval()


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def run_steps(attn, x, pieces):
    state, outs, start = None, [], 0
    for size in pieces:
        y, state = attn.step(x[:, start : start + size], state)
        outs.append(y)
        start += size
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("case", list(CASES))
def test_long_prefill_then_tokens_equal_full_forward(case):
    name, options = CASES[case]
    attn = make(name, options)
    n = DECODE_ROWS + 90  # the prefill spans two query chunks
    x = torch.randn(2, n, DIM)
    with torch.no_grad():
        full = attn(x, causal=True)
        stepped, state = run_steps(attn, x, [DECODE_ROWS + 37, 1, 1, 20, 1] + [1] * 30)
    assert state["pos"] == n
    assert rel_err(stepped, full) < 1e-5  # fp32: the same sums in another order


@pytest.mark.parametrize("case", ["local-dilated", "longformer-dilated-globals", "hybrid-groups"])
def test_window_cache_holds_what_the_pattern_reaches(case):
    name, options = CASES[case]
    attn = make(name, options)
    dil = max(options.get("dilations", (options.get("dilation", 1),)))
    reach = options["window"] * dil
    keep = options.get("global_tokens", 0)
    with torch.no_grad():
        _, state = attn.step(torch.randn(1, 100, DIM))
        for _ in range(5):
            _, state = attn.step(torch.randn(1, 1, DIM), state)
    local = options.get("local_heads", HEADS)
    assert state["k"].shape == (1, local, reach, DIM // HEADS)  # the last window * dilation positions
    if keep:
        assert state["gk"].shape == (1, HEADS, keep, DIM // HEADS)  # the global tokens


def test_performer_running_key_shift_matches_the_global_one():
    # later keys far larger than the first ones: the state's shift rises and its sum is rescaled
    attn = make("performer", {"features": 32, "chunk": 8})
    x = torch.randn(1, 40, DIM)
    x[:, 20:] *= 3.0
    with torch.no_grad():
        full = attn(x, causal=True)
        stepped, state = run_steps(attn, x, [1] * 40)
    assert rel_err(stepped, full) < 1e-5  # fp32 rounding
    assert state["shift"].shape == (1, HEADS, 1, 1)


@pytest.mark.parametrize("name, options, redraw", [("performer", {"features": 16}, "redraw_projection"),
                                                   ("reformer", {"buckets": 4}, "redraw_rotations")])
def test_state_refused_after_a_redraw(name, options, redraw):
    attn = make(name, options)
    with torch.no_grad():
        _, state = attn.step(torch.randn(1, 4, DIM))
        getattr(attn, redraw)()
        with pytest.raises(ValueError, match="redrawn"):
            attn.step(torch.randn(1, 1, DIM), state)
        attn.step(torch.randn(1, 1, DIM))  # a new state is fine


def test_synthesizer_step_respects_max_seq_len():
    attn = make("synthesizer", {"max_seq_len": 8})
    with torch.no_grad():
        _, state = attn.step(torch.randn(1, 8, DIM))
        with pytest.raises(ValueError, match="exceeds the maximum 8"):
            attn.step(torch.randn(1, 1, DIM), state)
