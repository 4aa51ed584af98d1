"""The LRA networks (models/lra.py): output shapes, CLS and mean pooling, invariance to padding (outputs
of a padded batch equal the unpadded ones to 1e-5, fp32, eval mode), the pair model's shared encoder and
[u, v, u*v, u-v] head, Linformer sized to the tokens the attention sees, and the refusals."""
import pytest
import torch

from models.lra import LRAClassifier, LRAPairClassifier

SMALL = dict(vocab_size=20, num_classes=10, seq_len=32, dim=32, depth=2, heads=2)


def ids(b, n, vocab=20, seed=0):
    return torch.randint(1, vocab, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_shapes_and_padding_invariance(pool):
    torch.manual_seed(0)
    net = LRAClassifier(**SMALL, pool=pool).eval()
    x = ids(3, 20)
    y = net(x, torch.ones_like(x, dtype=torch.bool))
    assert y.shape == (3, 10) and torch.isfinite(y).all()
    padded = torch.cat([x, torch.zeros(3, 12, dtype=torch.long)], dim=1)  # id 0 = padding, up to seq_len
    mask = padded != 0
    torch.testing.assert_close(net(padded, mask), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(net(padded), y, atol=1e-5, rtol=1e-5)  # the mask defaults to ids != 0


def test_cls_token_goes_in_front():
    net = LRAClassifier(**SMALL, pool="cls").eval()
    assert net.tokens == 33 and net.pos.shape[1] == 33
    maps = net.attention_maps(ids(2, 8))
    assert len(maps) == 2 and maps[0].shape == (2, 2, 9, 9)


def test_linformer_is_sized_to_the_tokens_the_attention_sees():
    net = LRAClassifier(**SMALL, pool="cls", attention="linformer", attention_options={"k": 8})
    assert all(block.attn.max_seq_len == 33 for block in net.blocks)
    assert net(ids(2, 32)).shape == (2, 10)


def test_pair_model_shares_one_encoder():
    torch.manual_seed(0)
    net = LRAPairClassifier(**{**SMALL, "num_classes": 2}, pool="mean").eval()
    a, b = ids(4, 16, seed=1), ids(4, 16, seed=2)
    x = torch.stack([a, b], dim=1)  # (B, 2, n)
    y = net(x, x != 0)
    assert y.shape == (4, 2)
    u, v = net.encode(a), net.encode(b)
    torch.testing.assert_close(y, net.head(torch.cat([u, v, u * v, u - v], dim=-1)), atol=1e-6, rtol=1e-5)
    assert net.head[0].in_features == 4 * 32


@pytest.mark.parametrize("call, message", [
    (lambda: LRAClassifier(**SMALL, pool="max"), r"pool must be one of cls, mean, got 'max'"),
    (lambda: LRAClassifier(**{**SMALL, "num_classes": 1}), r"num_classes must be an integer >= 2, got 1"),
    (lambda: LRAClassifier(**SMALL)(ids(1, 33)), r"input_ids has 33 tokens, more than seq_len=32"),
    (lambda: LRAPairClassifier(**SMALL)(ids(2, 8)), r"input_ids must be \(batch, 2, n\)"),
])
def test_refusals(call, message):
    with pytest.raises(ValueError, match=message):
        call()
