"""Generation with incremental decoding equals generation by recomputation.

For every registered causal mechanism that declares `supports_decoding`, a tiny language model (fp32, eval mode)
generates from a short prompt for enough new tokens that the context crosses `seq_len` (where generate starts
cropping and recomputes the cropped window). The reference is the same model's recomputation (use_cache=False),
which runs the full causal forward for every token: greedy tokens must be identical, the next-token logits at
every step equal within 1e-4 (fp32: the same sums in another order, through two blocks), and sampling with a
fixed generator must draw the same tokens. The cache must actually be used: one attention step per block for the
prompt and one per token until the crop, and no forward call before it.
"""
from __future__ import annotations

import pytest
import torch

from models.attention import get_attention, list_attentions
from models.attention.softmax import SoftmaxAttention
from models.language_model import LanguageModel

VOCAB, SEQ_LEN, DIM, DEPTH, HEADS = 61, 16, 32, 2, 4
PROMPT, NEW = 5, 20  # 25 > SEQ_LEN: the last 9 tokens are drawn from a cropped context
DECODERS = [n for n in list_attentions() if get_attention(n).supports_causal and get_attention(n).supports_decoding]


def tiny_lm(name, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    options = dict(get_attention(name).example_options) if isinstance(name, str) else {}
    net = LanguageModel(VOCAB, SEQ_LEN, DIM, DEPTH, HEADS, attention=name, attention_options=options).eval()
    torch.nn.init.normal_(net.embed.weight, std=1.0)  # logits far apart: no near-ties for rounding to flip
    return net


def prompt(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(1))


def count_calls(net: LanguageModel):
    calls = {"step": 0, "forward": 0}
    for block in net.blocks:
        attn, step, forward = block.attn, block.attn.step, block.attn.forward

        def counted_step(*args, _step=step, **kw):
            calls["step"] += 1
            return _step(*args, **kw)

        def counted_forward(*args, _forward=forward, **kw):
            calls["forward"] += 1
            return _forward(*args, **kw)

        attn.step, attn.forward = counted_step, counted_forward
    return calls


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_with_cache_equals_recomputation(name):
    net, ids = tiny_lm(name), prompt()
    plain, plain_logits = net.generate(ids, NEW, temperature=0.0, use_cache=False, return_logits=True)
    calls = count_calls(net)
    cached, cached_logits = net.generate(ids, NEW, temperature=0.0, return_logits=True)
    assert torch.equal(cached, plain)
    assert cached_logits.shape == (2, NEW, VOCAB)
    assert (cached_logits - plain_logits).abs().max().item() < 1e-4  # fp32 rounding, logits of size ~10
    uncropped = SEQ_LEN - PROMPT + 1  # tokens drawn before the context outgrows seq_len: prefill + steps
    assert calls["step"] == DEPTH * uncropped
    assert calls["forward"] == DEPTH * (NEW - uncropped)  # recomputed cropped windows only


@pytest.mark.parametrize("name", DECODERS)
def test_sampling_with_cache_draws_the_same_tokens(name):
    net, ids = tiny_lm(name), prompt()
    runs = [net.generate(ids, NEW, temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(7), use_cache=c)
            for c in (True, False)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("name", ["softmax", "local", "performer"])
def test_step_in_pieces_equals_forward_logits(name):
    net = tiny_lm(name)
    ids = torch.randint(0, VOCAB, (2, SEQ_LEN), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = net(ids)
        a, states = net.step(ids[:, :7])
        b, states = net.step(ids[:, 7:8], states)
        c, states = net.step(ids[:, 8:], states)
        with pytest.raises(ValueError, match="max_len=16"):
            net.step(ids[:, :1], states)
    stepped = torch.cat([a, b, c], dim=1)
    assert (stepped - full).abs().max().item() < 1e-4  # fp32 rounding
    assert states[0]["pos"] == SEQ_LEN


class NoDecoding(SoftmaxAttention):
    """Causal softmax that declares no incremental decoding (every registered causal mechanism decodes)."""

    supports_decoding = False
    decoding_state = None
    not_decoding_reason = "declared so for this test"


def test_mechanism_without_decoding_recomputes():
    net = tiny_lm(NoDecoding)
    assert not net.supports_decoding
    ids = prompt(1)
    assert torch.equal(net.generate(ids, 4, temperature=0.0), net.generate(ids, 4, temperature=0.0, use_cache=False))
    with pytest.raises(ValueError, match="no incremental decoding"):
        net.step(ids)
    with pytest.raises(ValueError, match="declared so for this test"):
        net.blocks[0].attn.step(torch.randn(1, 2, DIM))


def test_bad_use_cache_is_one_sentence():
    with pytest.raises(ValueError, match="use_cache"):
        tiny_lm("softmax").generate(prompt(1), 2, use_cache="yes")
