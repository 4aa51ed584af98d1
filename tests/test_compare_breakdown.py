"""--compare-builtin and --breakdown on tiny configurations: built-ins agree with the from-scratch
attention, files are written, and the component breakdown is consistent with the analytic FLOPs."""
from argparse import Namespace

import pytest
import torch
from torch import nn

from models.encoder import TransformerBlock, TransformerEncoder
from profiling.breakdown import MODELS, breakdown, encoder_target, resolve_components, run_breakdown
from profiling.compare import BUILTINS, REFERENCE, run_compare_builtin


def test_compare_builtin_agrees_with_naive(tmp_path):
    args = Namespace(devices=["cpu"], threads=1, runs=2, warmup=1, dtype="fp32", compare_configs=[(2, 16, 32, 4), (1, 24, 48, 6)])
    rows = run_compare_builtin(args, tmp_path)
    assert len(rows) == 2 * (1 + len(BUILTINS))
    for r in rows:
        assert r["cosine_vs_naive"] > 0.99999, r
        assert r["max_abs_diff_vs_naive"] < 1e-5, r
        assert r["median_ms"] > 0 and r["speedup_vs_naive"] > 0
    assert {r["attention"] for r in rows} == {REFERENCE, *BUILTINS}
    assert (tmp_path / "compare_builtin.csv").read_text().count("\n") == len(rows) + 1
    md = (tmp_path / "compare_builtin.md").read_text()
    assert "torch " + torch.__version__ in md and "threads: 1" in md


def _tiny_encoder(attention="softmax", depth=2):
    model = TransformerEncoder(50, dim=32, depth=depth, heads=4, attention=attention, num_classes=3, max_len=64)
    return model, (lambda n: (torch.randint(0, 50, (2, n)),))


def test_breakdown_flop_shares_and_attention_flops():
    model, make_input = _tiny_encoder()
    seq_lens = [16, 32]
    rows = breakdown(model, make_input, model.components(), seq_lens, runs=2, warmup=1, threads=1)
    for n in seq_lens:
        at = {r["component"]: r for r in rows if r["seq_len"] == n}
        assert set(at) == {"embeddings", "attention", "mlp", "norm", "head", "other"}
        assert sum(r["flop_share"] for r in at.values()) == pytest.approx(1.0, abs=1e-6)
        assert sum(r["time_share"] for r in at.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= r["time_share"] <= 1.0 for r in at.values())
        analytic = sum(b.attn.flops(n, batch=2, causal=False) for b in model.blocks)
        assert at["attention"]["flops"] == analytic  # exact: projections + QK^T + AV
        mlp = 2 * 2 * (2 * 2 * n * 32 * 128)  # depth 2 x two Linears x 2 * B * n * d * 4d
        assert at["mlp"]["flops"] == mlp
        assert at["other"]["flops"] == 0  # every matmul sits inside a component


def test_breakdown_with_a_classifier_function():
    model, make_input = _tiny_encoder(depth=1)

    def classify(name, module):
        return "attention" if name.endswith(".attn") else ("rest" if isinstance(module, (nn.Linear, nn.LayerNorm, nn.Embedding)) else None)

    comps = resolve_components(model, classify)
    assert [p for p, _ in comps["attention"]] == ["blocks.0.attn"]  # the attention's own Linears stay inside it
    rows = breakdown(model, make_input, classify, [8], runs=1, warmup=0, threads=1)
    assert sum(r["flop_share"] for r in rows) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="nest"):
        resolve_components(model, {"a": [model.blocks[0]], "b": [model.blocks[0].mlp]})


def test_run_breakdown_writes_files(tmp_path, capsys):
    args = Namespace(breakdown="encoder", dim=32, heads=4, attentions=["softmax"], seq_lens=[16, 32], runs=1, warmup=0, threads=1)
    assert MODELS == {"encoder": encoder_target}
    rows = run_breakdown(args, tmp_path)
    assert {r["seq_len"] for r in rows} == {16, 32}
    for name in ("breakdown.csv", "breakdown.md", "breakdown.png", "breakdown.pdf"):
        assert (tmp_path / name).stat().st_size > 0, name
    with pytest.raises(ValueError, match="available: encoder"):
        run_breakdown(Namespace(breakdown="resnet"), tmp_path)


def test_encoder_block_shapes_mask_and_causal():
    block = TransformerBlock(32, 4, attention="softmax", drop_path=0.1)
    x = torch.randn(2, 10, 32)
    assert block(x).shape == (2, 10, 32)
    enc = TransformerEncoder(None, dim=32, depth=2, heads=4, attention="naive", num_classes=5, max_len=16, in_dim=7).eval()
    feats = torch.randn(2, 10, 7)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    out = enc(feats, mask)
    assert out.shape == (2, 5)
    padded = feats.clone()
    padded[1, 6:] = 100.0  # padding content must not change a padded sample's logits
    assert torch.allclose(enc(padded, mask), out, atol=1e-5)
    with pytest.raises(ValueError, match="cannot be causal"):
        TransformerBlock(32, 4, attention="linformer", causal=True, attention_options={"max_seq_len": 16, "k": 8})
