"""Incremental decoding, for every registered mechanism that declares `supports_decoding`.

The reference is the mechanism's own full causal forward pass over all positions so far (itself proven
against exact attention or the paper's definition in tests/test_attention.py and the mechanism's own
tests): stepping through a sequence in pieces of varying size must give the same outputs, within 1e-5
relative in fp32. The state's declared growth ("kv-cache", "window", "constant") is checked by its size.
"""
from __future__ import annotations

import pytest
import torch

from models.attention import build_attention, get_attention, list_attentions

B, N, DIM, HEADS = 2, 23, 32, 4
DECODERS = [n for n in list_attentions() if get_attention(n).supports_decoding]
STATES = ("kv-cache", "window", "constant")


def make(name, seed=0):
    torch.manual_seed(seed)
    return build_attention(name, DIM, HEADS, **{**get_attention(name).example_options, "causal": True}).eval()


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def run_steps(attn, x, pieces):
    state, outs, start = None, [], 0
    for size in pieces:
        y, state = attn.step(x[:, start : start + size], state)
        outs.append(y)
        start += size
    assert start == x.shape[1]
    return torch.cat(outs, dim=1), state


def test_every_causal_mechanism_is_listed_or_refuses_clearly():
    for name in list_attentions():
        cls = get_attention(name)
        if cls.supports_decoding:
            assert cls.supports_causal, f"{name} decodes but declares no causal attention"
            assert cls.decoding_state in STATES, f"{name}: decoding_state must be one of {STATES}"
        else:
            assert cls.decoding_state is None
            attn = build_attention(name, DIM, HEADS, **cls.example_options)
            with pytest.raises(ValueError, match="no incremental decoding"):
                attn.step(torch.randn(1, 3, DIM))


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("pieces", [[1] * N, [5, 1, 7, 1, 1, 8], [N]], ids=["tokens", "mixed", "whole"])
def test_steps_equal_full_causal_forward(name, pieces):
    attn = make(name)
    x = torch.randn(B, N, DIM)
    with torch.no_grad():
        full = attn(x, causal=True)
        stepped, state = run_steps(attn, x, pieces)
    assert state["pos"] == N
    assert rel_err(stepped, full) < 1e-5  # fp32 rounding: the same sums in another order


@pytest.mark.parametrize("name", DECODERS)
def test_state_size_follows_declaration(name):
    attn = make(name)
    x = torch.randn(1, 3 * N, DIM)
    with torch.no_grad():
        sizes = []
        state = None
        for i in range(3 * N):
            _, state = attn.step(x[:, i : i + 1], state)
            sizes.append(attn.state_bytes(state))
    assert sizes[0] > 0
    kind = get_attention(name).decoding_state
    if kind == "constant":
        assert len(set(sizes)) == 1, sizes
    elif kind == "window":
        assert sizes[-1] == sizes[-2] and max(sizes) == sizes[-1], sizes
    else:  # kv-cache: the same number of bytes per position
        assert sizes[-1] == sizes[0] * 3 * N, sizes


@pytest.mark.parametrize("name", DECODERS)
def test_step_bad_input_is_one_sentence(name):
    attn = make(name)
    with pytest.raises(ValueError, match="shape"):
        attn.step(torch.randn(B, 2, DIM + 1))
    _, state = attn.step(torch.randn(B, 2, DIM))
    with pytest.raises(ValueError, match="batch"):
        attn.step(torch.randn(B + 1, 1, DIM), state)
    with pytest.raises(ValueError, match="state"):
        attn.step(torch.randn(B, 1, DIM), state={"k": 1})
