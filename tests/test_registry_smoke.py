import pytest
import torch

from models.attention import build_attention, list_attentions


def test_registry_lists_exact_mechanisms():
    assert {"softmax", "naive", "torch_mha"} <= set(list_attentions())


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="known: .*naive.*softmax"):
        build_attention("nope", 32, 4)


@pytest.mark.parametrize("name", ["softmax", "torch_mha"])
def test_exact_agree_with_naive(name):
    torch.manual_seed(0)
    ref = build_attention("naive", 32, 4)
    other = build_attention(name, 32, 4)
    other.load_projection_weights(ref.get_projection_weights())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(other(x), ref(x), atol=1e-5, rtol=0)
