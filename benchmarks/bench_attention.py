"""
Our attention mechanisms side by side with the best public implementation of the same mechanism,
same configuration, same process: time and peak memory ratios, plus a memory-scaling check.

The committed results (benchmarks/results/attention_vs_reference.{md,json}, an AMD EPYC run that
docs/results.md quotes) come from:

$ python benchmarks/bench_attention.py

Later runs are kept beside it under their own names (attention_vs_reference_<what>-<date>-<cpu>.{md,json}),
among them the first with the LRA-zoo pairs (issue 15).

i.e. CPU, fp32, dim 512, 8 heads (head dim 64), batch 1, n = 4096, forward only under
torch.no_grad() with models in eval(), torch threads = os.cpu_count(), 3 warm-up runs then 10 timed
runs per implementation, ours and the reference interleaved run by run. Other examples:

$ python benchmarks/bench_attention.py --quick                    # smoke test: n=256, 2 runs
$ python benchmarks/bench_attention.py --seq-len 8192 --threads 1 --out /tmp/bench
$ make bench ARGS="--runs 20"

Pairs (ours vs reference):
    softmax        vs a minimal Linear(d, 3d) -> F.scaled_dot_product_attention -> Linear(d, d) module
    softmax        vs nn.MultiheadAttention(batch_first=True), need_weights=False
    torch_mha      vs nn.MultiheadAttention(batch_first=True), need_weights=False
    linformer      vs linformer.LinformerSelfAttention        (lucidrains, pip linformer)
    performer      vs performer_pytorch.SelfAttention         (lucidrains, pip performer-pytorch)
    nystromformer  vs nystrom_attention.NystromAttention      (lucidrains, pip nystrom-attention)
    reformer       vs reformer_pytorch.LSHSelfAttention       (lucidrains, pip reformer-pytorch)
    sinkhorn       vs sinkhorn_transformer.SinkhornSelfAttention (lucidrains, pip sinkhorn-transformer)
    longformer (no global token) and local
                   vs local_attention.LocalAttention          (lucidrains, pip local-attention), in our layout
    longformer     vs transformers' LongformerSelfAttention  (Hugging Face, pip transformers) + an output Linear
    bigbird        vs transformers' BigBirdBlockSparseAttention (Hugging Face) + an output Linear
A mechanism not registered yet (see list_attentions()) or a reference package not installed gives a
"skipped" row instead of an error. Where both sides compute the same function (the exact pairs, the window
and Longformer pairs) ours' weights are copied into the reference and the outputs compared.

Timing: profiling.time_interleaved (time.perf_counter around each forward call, gc off while timing),
medians with the interquartile range, the ratio of medians and the ratio of minima. Peak memory:
profiling.peak_allocated_bytes (the PyTorch CPU allocator's own accounting, read through the profiler) of
one forward call, apart from the timed ones; inputs and parameters are not included.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import math
import os
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import build_attention, list_attentions
from profiling import peak_allocated_bytes, time_interleaved
from profiling.harness import command_line, finish, int_arg, machine, timing_summary, write_results
from profiling.machine import cpu_times, load_average, memory_available, steal_fraction
from profiling.report import loglog_slope
from utils.checks import check_int_list

MIB = 2**20
DEFAULT_OUT = Path(__file__).resolve().parent / "results"  # independent of the working directory
RESULTS = "attention_vs_reference"  # OUT/attention_vs_reference.{md,json}
SCALING_LENS = (1024, 2048, 4096, 8192, 16384)
QUICK_SCALING_LENS = (256, 512)
SCALING_MECHANISMS = ("softmax", "naive", "local", "linear", "performer", "linformer", "nystromformer")
SCALING_CONTRAST = {"softmax", "naive"}  # shown for contrast, no target
SLOPE_TARGET = 1.15


# --------------------------------------------------------------------------- references


class MinimalSDPA(nn.Module):
    """The shortest reasonable fused-attention block: one QKV Linear, split heads, SDPA, merge, Linear."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, n, d = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, n, e)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, n, d))


class MHAWrapper(nn.Module):
    """nn.MultiheadAttention called as self-attention returning only the output."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class ReferenceMissing(Exception):
    pass


def _import(module: str):
    """Import a reference package quietly (they emit deprecation warnings on import)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as exc:
        raise ReferenceMissing(f"reference package '{module}' not installed ({exc})") from None


def _pkg_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def ref_minimal_sdpa(cfg):
    return MinimalSDPA(cfg["dim"], cfg["heads"])


def ref_mha(cfg):
    return MHAWrapper(cfg["dim"], cfg["heads"])


def ref_linformer(cfg):
    mod = _import("linformer")
    return mod.LinformerSelfAttention(
        dim=cfg["dim"], seq_len=cfg["seq_len"], heads=cfg["heads"], k=256, one_kv_head=False, share_kv=False
    )


def ref_performer(cfg):
    mod = _import("performer_pytorch")
    # SelfAttention(dim, causal, heads, dim_head, local_heads, local_window_size, nb_features,
    # feature_redraw_interval, generalized_attention, kernel_fn, dropout, no_projection, qkv_bias,
    # attn_out_bias). Redraws only happen through the Performer model's ProjectionUpdater, in training
    # mode; this module alone never redraws.
    return mod.SelfAttention(
        dim=cfg["dim"], heads=cfg["heads"], dim_head=cfg["dim"] // cfg["heads"], nb_features=256,
        causal=False, local_heads=0, generalized_attention=False, no_projection=False,
    )


def ref_nystrom(cfg):
    mod = _import("nystrom_attention")
    return mod.NystromAttention(
        dim=cfg["dim"], dim_head=cfg["dim"] // cfg["heads"], heads=cfg["heads"], num_landmarks=256,
        pinv_iterations=6, residual=False,
    )


class LocalWindowRef(nn.Module):
    """local_attention.LocalAttention (the attention step only: q, k, v in, no projections) between our
    projection layout: Linear(d, 3d) -> heads -> LocalAttention -> merge -> Linear(d, d), so that our weights can
    be copied in. exact_windowsize=True: each query sees the keys within `window` positions either side, our
    window; no rotary embedding."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        mod = _import("local_attention")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn = mod.LocalAttention(window_size=window, causal=False, look_backward=1, look_forward=1,
                                       exact_windowsize=True, use_rotary_pos_emb=False, autopad=True)

    def forward(self, x):
        B, n, d = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, n, e)
        y = self.attn(q, k, v)  # (B, h, n, e)
        return self.proj(y.transpose(1, 2).reshape(B, n, d))


class HFLongformerRef(nn.Module):
    """transformers' LongformerSelfAttention (query/key/value and the separate global projections, no output
    projection: that sits in LongformerSelfOutput with a LayerNorm and the residual) plus an output Linear, called
    as LongformerModel calls it: attention_window = 2 x our radius, the first `global_tokens` positions global."""

    def __init__(self, dim: int, heads: int, window: int, global_tokens: int):
        super().__init__()
        mod = _import("transformers.models.longformer.modeling_longformer")
        cfg = _import("transformers").LongformerConfig(hidden_size=dim, num_attention_heads=heads, attention_window=[2 * window],
                                                       attention_probs_dropout_prob=0.0)
        self.attn = mod.LongformerSelfAttention(cfg, layer_id=0)
        self.proj = nn.Linear(dim, dim)
        self.global_tokens = global_tokens

    def forward(self, x):
        mask = x.new_zeros(x.shape[:2])  # LongformerModel's convention: 0 local, > 0 global, < 0 padding
        mask[:, : self.global_tokens] = 10000.0
        is_global = mask > 0
        y = self.attn(x, attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=is_global,
                      is_global_attn=bool(is_global.any()))[0]
        return self.proj(y)


class HFBigBirdRef(nn.Module):
    """transformers' BigBirdBlockSparseAttention (query/key/value, no output projection: that sits in
    BigBirdSelfOutput) plus an output Linear, with the masks BigBirdModel makes for an unpadded batch."""

    def __init__(self, dim: int, heads: int, block: int, random_blocks: int, seq_len: int):
        super().__init__()
        tf, mod = _import("transformers"), _import("transformers.models.big_bird.modeling_big_bird")
        self.model_cls = mod.BigBirdModel
        cfg = tf.BigBirdConfig(hidden_size=dim, num_attention_heads=heads, attention_type="block_sparse", block_size=block,
                               num_random_blocks=random_blocks, use_bias=True, max_position_embeddings=max(4096, seq_len),
                               attention_probs_dropout_prob=0.0)
        self.attn = mod.BigBirdBlockSparseAttention(cfg, seed=0)
        self.proj = nn.Linear(dim, dim)
        self.block = block

    def forward(self, x):
        blocked, band, from_mask, to_mask = self.model_cls.create_masks_for_block_sparse_attn(
            x.new_ones(x.shape[:2]), self.block)
        y = self.attn(x, band_mask=band, from_mask=from_mask, to_mask=to_mask, from_blocked_mask=blocked,
                      to_blocked_mask=blocked)[0]
        return self.proj(y)


REFORMER = dict(bucket_size=64, n_hashes=8)
SINKHORN = dict(bucket_size=64, sinkhorn_iter=8, temperature=0.75)
WINDOW = 64  # radius: keys within 64 positions either side (Longformer's attention_window = 128)
BIGBIRD = dict(block=64, random_blocks=3)


def ref_reformer(cfg):
    mod = _import("reformer_pytorch")
    # attend_across_buckets=False: a query sees only keys of its own bucket in its chunk and the previous one,
    # as ours does; allow_duplicate_attention=True counts a pair met in several rounds that many times (ours:
    # dedup=False). n_buckets = n / bucket_size, chosen by the reference from the length.
    return mod.LSHSelfAttention(dim=cfg["dim"], heads=cfg["heads"], bucket_size=REFORMER["bucket_size"], n_hashes=REFORMER["n_hashes"],
                                causal=False, attend_across_buckets=False, allow_duplicate_attention=True)


def ref_sinkhorn(cfg):
    mod = _import("sinkhorn_transformer")
    # non_permutative=False: Sinkhorn balancing of the block scores (the default, True, takes a top-k instead)
    return mod.SinkhornSelfAttention(dim=cfg["dim"], bucket_size=SINKHORN["bucket_size"], max_seq_len=cfg["seq_len"],
                                     heads=cfg["heads"], causal=False, non_permutative=False,
                                     sinkhorn_iter=SINKHORN["sinkhorn_iter"], n_sortcut=0,
                                     temperature=SINKHORN["temperature"], n_top_buckets=1)


def ref_local_window(cfg):
    return LocalWindowRef(cfg["dim"], cfg["heads"], WINDOW)


def ref_hf_longformer(cfg):
    return HFLongformerRef(cfg["dim"], cfg["heads"], WINDOW, global_tokens=1)


def ref_hf_bigbird(cfg):
    return HFBigBirdRef(cfg["dim"], cfg["heads"], BIGBIRD["block"], BIGBIRD["random_blocks"], cfg["seq_len"])


def _share_exact_weights(ours, ref) -> bool:
    """Give an exact reference the same projection weights as ours, so outputs can be compared."""
    if not hasattr(ours, "get_projection_weights"):
        return False
    w = ours.get_projection_weights()
    if any(w[k] is None for k in ("q_b", "k_b", "v_b", "o_b")):
        return False
    with torch.no_grad():
        if isinstance(ref, HFLongformerRef):  # the global projections get the same weights: ours has one set
            for name, key in (("query", "q"), ("key", "k"), ("value", "v")):
                for layer in (getattr(ref.attn, name), getattr(ref.attn, name + "_global")):
                    layer.weight.copy_(w[f"{key}_w"])
                    layer.bias.copy_(w[f"{key}_b"])
            ref.proj.weight.copy_(w["o_w"])
            ref.proj.bias.copy_(w["o_b"])
            return True
        if isinstance(ref, (MinimalSDPA, LocalWindowRef)):
            ref.qkv.weight.copy_(torch.cat([w["q_w"], w["k_w"], w["v_w"]]))
            ref.qkv.bias.copy_(torch.cat([w["q_b"], w["k_b"], w["v_b"]]))
            ref.proj.weight.copy_(w["o_w"])
            ref.proj.bias.copy_(w["o_b"])
            return True
        if isinstance(ref, MHAWrapper):
            m = ref.mha
            m.in_proj_weight.copy_(torch.cat([w["q_w"], w["k_w"], w["v_w"]]))
            m.in_proj_bias.copy_(torch.cat([w["q_b"], w["k_b"], w["v_b"]]))
            m.out_proj.weight.copy_(w["o_w"])
            m.out_proj.bias.copy_(w["o_b"])
            return True
    return False


def reference_checks() -> List[str]:
    """Small, fast checks of reference behaviours that differ from ours (run live, tiny sizes)."""
    remarks = []
    with torch.no_grad():
        try:
            mod = _import("nystrom_attention")
            torch.manual_seed(0)
            m = mod.NystromAttention(dim=64, dim_head=16, heads=4, num_landmarks=32, pinv_iterations=6, residual=False).eval()
            x = torch.randn(2, 40, 64)  # 40 % 32 != 0: the reference zero-pads the front
            d = (m(x) - m(x, mask=torch.ones(2, 40, dtype=torch.bool))).abs().max().item()
            remarks.append(
                f"nystrom-attention {_pkg_version('nystrom-attention')}: when n is not a multiple of num_landmarks and no mask "
                f"is given, the zero rows it pads in front are attended to as real keys (n=40, 32 landmarks: output differs "
                f"from the same call with an all-True mask by up to {d:.3g}). Not triggered at n=4096, 256 landmarks."
            )
            x2 = torch.randn(2, 64, 64)
            x2[1] *= 10
            d = (m(x2)[0] - m(x2[:1])[0]).abs().max().item()
            remarks.append(
                f"nystrom-attention: the Moore-Penrose iteration is initialised with a max over the whole batch and all "
                f"heads, so one sequence's output depends on the other sequences in its batch (up to {d:.3g} abs. "
                f"difference here when batched with a 10x-scaled sequence). Irrelevant at batch 1."
            )
        except ReferenceMissing:
            pass
        try:
            mod = _import("performer_pytorch")
            torch.manual_seed(0)
            p = mod.SelfAttention(dim=64, heads=4, dim_head=16, nb_features=32, causal=False).eval()
            x = torch.randn(1, 20, 64)
            mask = torch.ones(1, 20, dtype=torch.bool)
            mask[:, 12:] = False
            d = (p(x, mask=mask)[:, :12] - p(x[:, :12])).abs().max().item()
            remarks.append(
                f"performer-pytorch {_pkg_version('performer-pytorch')}: a padding mask zeroes padded values but not the "
                f"padded keys' features, so padding still enters the normaliser (padded+mask vs truncated input: up to "
                f"{d:.3g} abs. difference). Its SelfAttention ignores feature_redraw_interval (only the Performer model "
                f"redraws, in training). Unmasked benchmark calls are unaffected."
            )
        except ReferenceMissing:
            pass
        try:
            mod = _import("linformer")
            torch.manual_seed(0)
            lin = mod.LinformerSelfAttention(dim=64, seq_len=20, heads=4, k=8).eval()
            x = torch.randn(1, 20, 64)
            mask = torch.ones(1, 20, dtype=torch.bool)
            mask[:, 12:] = False
            same = bool((lin(x, mask=mask) - lin(x)).abs().max().item() == 0)
            if same:
                remarks.append(
                    f"linformer {_pkg_version('linformer')}: forward(x, **kwargs) silently ignores a mask= argument "
                    f"(no padding support). Unmasked benchmark calls are unaffected."
                )
        except ReferenceMissing:
            pass
        for module, label, build in (("reformer_pytorch", "reformer-pytorch", ref_reformer), ("sinkhorn_transformer", "sinkhorn-transformer", ref_sinkhorn)):
            try:
                _import(module)
                torch.manual_seed(0)
                ref = build(dict(dim=64, heads=4, seq_len=256)).eval()
                x = torch.randn(1, 256, 64)
                d = (ref(x) - ref(x)).abs().max().item()
                remarks.append(f"{label} {_pkg_version(label)}: two eval-mode calls on the same input differ by up to {d:.3g} "
                               f"({'new random rotations at every call' if module == 'reformer_pytorch' else 'Gumbel noise at every call, eval included'}), "
                               f"so its outputs cannot be compared with ours; ours is deterministic in eval mode.")
            except ReferenceMissing:
                pass
        try:
            _import("transformers")
            ref = HFBigBirdRef(64, 4, 16, 3, 512).eval()
            rand = ref.attn._bigbird_block_rand_mask(512, 512, 16, 16, 3, last_idx=1024)
            remarks.append(f"transformers {_pkg_version('transformers')} BigBird: in eval mode the random blocks are "
                           f"{'all block 0' if not rand.any() else 'drawn'} (its _bigbird_block_rand_mask returns zeros "
                           f"when not training), so at inference its 'random' attention re-reads the first (global) block.")
        except ReferenceMissing:
            pass
    return remarks


def pair_specs(cfg) -> List[Dict]:
    n = cfg["seq_len"]
    return [
        dict(ours="softmax", opts={}, ref="minimal SDPA module (in this script)", build_ref=ref_minimal_sdpa,
             ref_version=f"torch {torch.__version__}", exact=True, target_time=1.05, target_mem=None,
             notes="Same computation, weights shared; checks our wrapper adds no overhead."),
        dict(ours="softmax", opts={}, ref="nn.MultiheadAttention(batch_first=True)", build_ref=ref_mha,
             ref_version=f"torch {torch.__version__}", exact=True, target_time=None, target_mem=None,
             notes="need_weights=False; weights shared."),
        dict(ours="torch_mha", opts={}, ref="nn.MultiheadAttention(batch_first=True)", build_ref=ref_mha,
             ref_version=f"torch {torch.__version__}", exact=True, target_time=None, target_mem=None,
             notes="Ours wraps nn.MultiheadAttention; need_weights=False; weights shared."),
        dict(ours="linformer", opts=dict(k=256, max_seq_len=n, sharing="headwise"),
             ref=f"linformer.LinformerSelfAttention(seq_len={n}, k=256, one_kv_head=False, share_kv=False)",
             build_ref=ref_linformer, ref_version=f"linformer {_pkg_version('linformer')}", exact=False,
             target_time=0.8, target_mem=1.0,
             notes="Reference: q/k/v Linear without bias (to_out with bias); separate E and F, each shared across heads."),
        dict(ours="performer", opts=dict(features=256, redraw_interval=None),
             ref="performer_pytorch.SelfAttention(nb_features=256, causal=False, local_heads=0)",
             build_ref=ref_performer, ref_version=f"performer-pytorch {_pkg_version('performer-pytorch')}",
             exact=False, target_time=0.8, target_mem=1.0,
             notes="Reference: q/k/v Linear without bias; SelfAttention alone never redraws its features "
                   "(its feature_redraw_interval only acts through the Performer model, in training)."),
        dict(ours="nystromformer", opts=dict(landmarks=256, pinv_iterations=6, conv_kernel=None),
             ref="nystrom_attention.NystromAttention(num_landmarks=256, pinv_iterations=6, residual=False)",
             build_ref=ref_nystrom, ref_version=f"nystrom-attention {_pkg_version('nystrom-attention')}",
             exact=False, target_time=0.8, target_mem=1.0,
             notes="Reference: qkv Linear without bias; no depthwise-conv residual on either side."),
        dict(ours="reformer", opts=dict(hash_rounds=REFORMER["n_hashes"], buckets=max(1, n // REFORMER["bucket_size"]),
                                        bucket_size=REFORMER["bucket_size"], dedup=False),
             ref=f"reformer_pytorch.LSHSelfAttention(bucket_size={REFORMER['bucket_size']}, n_hashes={REFORMER['n_hashes']}, "
                 f"attend_across_buckets=False, allow_duplicate_attention=True)",
             build_ref=ref_reformer, ref_version=f"reformer-pytorch {_pkg_version('reformer-pytorch')}", exact=False,
             target_time=0.8, target_mem=1.0,
             notes=f"Same hyper-parameters: shared QK, {REFORMER['n_hashes']} hash rounds, n / {REFORMER['bucket_size']} "
                   f"buckets, chunks of {REFORMER['bucket_size']} looking one chunk back, duplicates counted. Outputs not "
                   f"compared: the reference draws new random rotations at every call. Reference: q/k and v Linear without bias."),
        dict(ours="sinkhorn", opts=dict(block_size=SINKHORN["bucket_size"], sinkhorn_iters=SINKHORN["sinkhorn_iter"],
                                        temperature=SINKHORN["temperature"], gumbel=False),
             ref=f"sinkhorn_transformer.SinkhornSelfAttention(bucket_size={SINKHORN['bucket_size']}, "
                 f"sinkhorn_iter={SINKHORN['sinkhorn_iter']}, temperature={SINKHORN['temperature']}, non_permutative=False, "
                 f"n_top_buckets=1)",
             build_ref=ref_sinkhorn, ref_version=f"sinkhorn-transformer {_pkg_version('sinkhorn-transformer')}",
             exact=False, target_time=0.8, target_mem=1.0,
             notes=f"Same hyper-parameters: blocks of {SINKHORN['bucket_size']}, {SINKHORN['sinkhorn_iter']} Sinkhorn rounds, "
                   f"temperature {SINKHORN['temperature']}, each query block over its own and one sorted block. Outputs not "
                   "compared: the reference adds Gumbel noise at every call (eval too) and scores blocks through relu and "
                   "a log. Reference: q and kv Linear without bias."),
        dict(ours="longformer", opts=dict(window=WINDOW, dilation=1, global_tokens=0),
             ref=f"local_attention.LocalAttention(window_size={WINDOW}, look_backward=1, look_forward=1, exact_windowsize=True) "
                 f"in our projection layout",
             build_ref=ref_local_window, ref_version=f"local-attention {_pkg_version('local-attention')}", exact=True,
             target_time=0.8, target_mem=1.0,
             notes=f"Longformer's window part alone (no global token): keys within {WINDOW} positions either side, the same "
                   f"function on both sides; weights copied in."),
        dict(ours="local", opts=dict(window=WINDOW),
             ref=f"local_attention.LocalAttention(window_size={WINDOW}, look_backward=1, look_forward=1, exact_windowsize=True) "
                 f"in our projection layout",
             build_ref=ref_local_window, ref_version=f"local-attention {_pkg_version('local-attention')}", exact=True,
             target_time=0.8, target_mem=1.0,
             notes=f"Keys within {WINDOW} positions either side, the same function on both sides; weights copied in."),
        dict(ours="longformer", opts=dict(window=WINDOW, dilation=1, global_tokens=1),
             ref=f"transformers LongformerSelfAttention(attention_window={2 * WINDOW}) + Linear, position 0 global",
             build_ref=ref_hf_longformer, ref_version=f"transformers {_pkg_version('transformers')}", exact=True,
             target_time=0.8, target_mem=1.0,
             notes=f"Window of {WINDOW} either side and one global token (position 0), the same function on both sides: "
                   "ours' Q/K/V weights copied into the reference's local and global projections alike."),
        dict(ours="bigbird", opts=dict(block=BIGBIRD["block"], random_blocks=BIGBIRD["random_blocks"], global_blocks=2),
             ref=f"transformers BigBirdBlockSparseAttention(block_size={BIGBIRD['block']}, "
                 f"num_random_blocks={BIGBIRD['random_blocks']}) + Linear",
             build_ref=ref_hf_bigbird, ref_version=f"transformers {_pkg_version('transformers')}", exact=False,
             target_time=0.8, target_mem=1.0, min_len=(5 + 2 * BIGBIRD["random_blocks"]) * BIGBIRD["block"] + 1,
             notes=f"Same hyper-parameters: blocks of {BIGBIRD['block']}, a window of 3 blocks, {BIGBIRD['random_blocks']} "
                   "random blocks per query block, 2 global blocks (ours: the first two; the reference: the first and the "
                   "last), so each query block reads the same number of keys. Outputs not compared: the global blocks "
                   "differ, and in eval mode the reference's random blocks are all block 0 (it draws them in training "
                   "only); the work is the same."),
    ]


def scaling_options(name: str, max_n: int) -> Dict:
    return {
        "linformer": dict(k=256, max_seq_len=max_n, sharing="headwise"),
        "performer": dict(features=256, redraw_interval=None),
        "nystromformer": dict(landmarks=256, pinv_iterations=6, conv_kernel=None),
    }.get(name, {})


# --------------------------------------------------------------------------- output


def _fmt(x, digits=1, suffix=""):
    if x is None:
        return "n/a"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return "n/a"
    return f"{x:.{digits}f}{suffix}"


def _ms(x):
    if x is None:
        return "n/a"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def _target_str(row) -> str:
    parts = []
    if row.get("target_time") is not None:
        parts.append(f"time <= {row['target_time']:g}")
    if row.get("target_mem") is not None:
        parts.append(f"mem <= {row['target_mem']:g}")
    return ", ".join(parts) if parts else "report"


def _met_str(met) -> str:
    return {True: "yes", False: "**NO**", None: "-"}[met]


def render_markdown(report: Dict) -> str:
    m, c = report["machine"], report["config"]
    L = [
        "# Our attention vs reference implementations",
        "",
        f"- command: `{m['command']}`",
        f"- date: {m['started_utc']}{'' if report['complete'] else '  (run in progress / incomplete)'}",
        f"- CPU: {m['cpu_model']}; {m['logical_cpus']} logical CPUs ({m['physical_cores'] or '?'} physical cores); "
        f"torch threads used: {m['torch_threads']}",
        f"- system load average (1, 5, 15 min) at start {m.get('load_avg_start')}, at end {m.get('load_avg_end', 'n/a')} "
        f"(this run itself adds about its thread count; other processes competing for the CPUs add noise, which interleaving spreads over both sides)",
        f"- torch {m['torch_version']}, Python {m['python_version']}, {m['platform']}",
        f"- config: CPU, fp32, dim {c['dim']}, {c['heads']} heads (head dim {c['dim'] // c['heads']}), batch {c['batch']}, "
        f"n = {c['seq_len']}, forward only under torch.no_grad(), eval(); "
        f"{c['warmup']} warm-up + {c['runs']} timed runs each, ours and reference interleaved run by run",
        f"- references: {', '.join(report['reference_versions'])}",
        "",
        "Times: median of the timed runs (IQR in brackets); *time ratio* = ours median / ref median, "
        "*min ratio* = ours min / ref min (the two agreeing means noise is small). "
        "Peak MiB: peak bytes allocated by the PyTorch CPU allocator during one forward call (profiler, "
        "separate call from the timed ones), inputs and parameters excluded; oneDNN/BLAS scratch outside "
        "the PyTorch allocator is not seen. Ratios < 1 mean ours is faster / smaller.",
        "",
        "| mechanism | reference | ours ms (median) | ref ms (median) | time ratio | min ratio | ours peak MiB | ref peak MiB | memory ratio | target | met? |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["pairs"]:
        mech = r["ours"] + (f" ({', '.join(f'{k}={v}' for k, v in r['opts'].items())})" if r["opts"] else "")
        if r["status"] != "ok":
            L.append(f"| {mech} | {r['ref']} | {r['status']} | | | | | | | {_target_str(r)} | - |")
            continue
        o, f_ = r["ours_time"], r["ref_time"]
        L.append(
            f"| {mech} | {r['ref']} | {_ms(o['median_ms'])} [{_ms(o['iqr_ms'])}] | {_ms(f_['median_ms'])} [{_ms(f_['iqr_ms'])}] "
            f"| {_fmt(r['time_ratio'], 3)} | {_fmt(r['time_ratio_min'], 3)} | {_fmt(r['ours_peak_mib'])} | "
            f"{_fmt(r['ref_peak_mib'])} | {_fmt(r['mem_ratio'], 3)} | {_target_str(r)} | {_met_str(r['met'])} |"
        )
    notes = [r for r in report["pairs"] if r.get("notes") or r.get("check")]
    if notes:
        L += ["", "Notes per row:", ""]
        for r in notes:
            extra = []
            if r.get("params_ours") is not None:
                extra.append(f"parameters ours {r['params_ours']:,} / ref {r['params_ref']:,}")
            if r.get("check"):
                extra.append(r["check"])
            if r.get("cpu_util") is not None:
                extra.append(f"CPU use while timed {r['cpu_util']:.2f} of {m['torch_threads']} threads"
                             f"{' (other processes competing: noisy)' if r['cpu_util'] < 0.85 else ''}")
            if r.get("cpu_steal") is not None and r["cpu_steal"] > 0.02:
                extra.append(f"hypervisor steal {100 * r['cpu_steal']:.0f}% of CPU time (noisy)")
            L.append(f"- {r['ours']} vs {r['ref']}: {r.get('notes', '')} {'; '.join(extra)}".rstrip())
    s = report.get("scaling")
    if s:
        lens = s["lens"]
        L += [
            "",
            f"## Memory scaling (peak MiB of one forward call, batch {c['batch']}, dim {c['dim']}, {c['heads']} heads)",
            "",
            f"Slope: least-squares fit of log(peak bytes) on log(n) over the lengths measured. "
            f"Target slope <= {SLOPE_TARGET} for the sub-quadratic mechanisms; softmax and naive are shown for contrast.",
            "",
            "| mechanism | options | " + " | ".join(f"n={n}" for n in lens) + " | slope | target | met? |",
            "|---|---|" + "---|" * len(lens) + "---|---|---|",
        ]
        for r in s["rows"]:
            opts = ", ".join(f"{k}={v}" for k, v in r["opts"].items()) or "defaults"
            if r["status"] != "ok":
                L.append(f"| {r['name']} | {opts} | {r['status']} |" + " |" * (len(lens) + 2))
                continue
            cells = []
            for n in lens:
                v = r["peak_mib"].get(str(n))
                cells.append(_fmt(v) if isinstance(v, (int, float)) else (v or "n/a"))
            target = "contrast" if r["name"] in SCALING_CONTRAST else f"<= {SLOPE_TARGET}"
            L.append(f"| {r['name']} | {opts} | " + " | ".join(cells) + f" | {_fmt(r['slope'], 3)} | {target} | {_met_str(r['met'])} |")
    if report.get("remarks"):
        L += ["", "## Remarks", ""] + [f"- {x}" for x in report["remarks"]]
    return "\n".join(L) + "\n"


def write_report(report: Dict, out: Path) -> None:
    write_results(out / RESULTS, report, render_markdown(report))


# --------------------------------------------------------------------------- running


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def run_pair(spec: Dict, cfg: Dict, log) -> Dict:
    row = dict(ours=spec["ours"], opts=spec["opts"], ref=spec["ref"], ref_version=spec["ref_version"],
               target_time=spec["target_time"], target_mem=spec["target_mem"], notes=spec["notes"], met=None)
    if spec["ours"] not in list_attentions():
        row["status"] = f"skipped: '{spec['ours']}' not registered yet"
        return row
    B, n, d, h = cfg["batch"], cfg["seq_len"], cfg["dim"], cfg["heads"]
    if spec.get("min_len") and n < spec["min_len"]:
        row["status"] = f"skipped: the reference needs n >= {spec['min_len']}"
        return row
    try:
        torch.manual_seed(0)
        ours = build_attention(spec["ours"], d, h, **spec["opts"]).eval()
        torch.manual_seed(0)
        ref = spec["build_ref"](cfg).eval()
    except ReferenceMissing as exc:
        row["status"] = f"skipped: {exc}"
        return row
    except Exception as exc:  # a configuration one side rejects: report, keep going
        row["status"] = f"error building: {type(exc).__name__}: {exc}"
        return row
    row["params_ours"], row["params_ref"] = _n_params(ours), _n_params(ref)
    torch.manual_seed(1)
    x = torch.randn(B, n, d)

    def f_ours():
        with torch.no_grad():
            return ours(x)

    def f_ref():
        with torch.no_grad():
            return ref(x)

    try:
        y_ours, y_ref = f_ours(), f_ref()
        if tuple(y_ours.shape) != tuple(y_ref.shape):
            raise RuntimeError(f"output shapes differ: ours {tuple(y_ours.shape)}, ref {tuple(y_ref.shape)}")
        if spec["exact"] and _share_exact_weights(ours, ref):
            y_ours, y_ref = f_ours(), f_ref()
            diff = (y_ours - y_ref).abs().max().item()
            row["max_abs_diff"] = diff
            row["check"] = f"same weights: max |ours - ref| = {diff:.2e}"
        del y_ours, y_ref
        row["load_avg_before"], stat0 = load_average(), cpu_times()
        (t_ours, t_ref), cpu_s = time_interleaved([f_ours, f_ref], warmup=cfg["warmup"], runs=cfg["runs"])
        row["load_avg_after"], row["cpu_steal"] = load_average(), steal_fraction(stat0, cpu_times())
        row["ours_time"], row["ref_time"] = timing_summary(t_ours), timing_summary(t_ref)
        wall_s = (sum(t_ours.times_ms) + sum(t_ref.times_ms)) / 1e3
        row["cpu_util"] = sum(cpu_s) / (wall_s * torch.get_num_threads())
        row["time_ratio"] = t_ours.median_ms / t_ref.median_ms
        row["time_ratio_min"] = t_ours.min_ms / t_ref.min_ms
        row["ours_peak_bytes"] = peak_allocated_bytes(f_ours, "cpu")
        row["ref_peak_bytes"] = peak_allocated_bytes(f_ref, "cpu")
    except Exception as exc:
        row["status"] = f"error: {type(exc).__name__}: {exc}"
        return row
    row["ours_peak_mib"] = row["ours_peak_bytes"] / MIB
    row["ref_peak_mib"] = row["ref_peak_bytes"] / MIB
    row["mem_ratio"] = row["ours_peak_bytes"] / row["ref_peak_bytes"] if row["ref_peak_bytes"] else None
    checks = []
    if spec["target_time"] is not None:
        checks.append(row["time_ratio"] <= spec["target_time"])
    if spec["target_mem"] is not None:
        checks.append(row["mem_ratio"] is not None and row["mem_ratio"] <= spec["target_mem"])
    row["met"] = all(checks) if checks else None
    row["status"] = "ok"
    return row


def run_scaling(name: str, lens: Sequence[int], cfg: Dict, log) -> Dict:
    opts = scaling_options(name, max(lens))
    row = dict(name=name, opts=opts, peak_mib={}, met=None)
    if name not in list_attentions():
        row["status"] = f"skipped: '{name}' not registered yet"
        return row
    B, d, h = cfg["batch"], cfg["dim"], cfg["heads"]
    try:
        torch.manual_seed(0)
        model = build_attention(name, d, h, **opts).eval()
    except Exception as exc:
        row["status"] = f"error building: {type(exc).__name__}: {exc}"
        return row
    measured_n, measured_b = [], []
    avail = memory_available()
    for n in lens:
        if len(measured_n) >= 1 and avail is not None:
            # extrapolate from the last two points (quadratic if only one) and skip what cannot fit
            if len(measured_n) >= 2:
                s = max(1.0, loglog_slope(measured_n[-2:], measured_b[-2:]) or 2.0)
            else:
                s = 2.0
            predicted = measured_b[-1] * (n / measured_n[-1]) ** s
            if predicted > 0.6 * avail:
                row["peak_mib"][str(n)] = f"skipped (~{predicted / 2**30:.0f} GiB predicted)"
                log(f"    {name} n={n}: skipped, ~{predicted / 2**30:.1f} GiB predicted > 60% of available memory")
                continue
        torch.manual_seed(1)
        x = torch.randn(B, n, d)

        def fwd():
            with torch.no_grad():
                return model(x)  # noqa: B023, F821 - called only in this iteration, before `del x` frees the input

        try:
            t0 = time.perf_counter()
            fwd()  # warm-up: lazily built buffers are not counted as per-call memory
            b = peak_allocated_bytes(fwd, "cpu")
        except Exception as exc:
            row["peak_mib"][str(n)] = f"error: {type(exc).__name__}"
            log(f"    {name} n={n}: {type(exc).__name__}: {exc}")
            continue
        finally:
            del x
        measured_n.append(n)
        measured_b.append(b)
        row["peak_mib"][str(n)] = b / MIB
        log(f"    {name} n={n}: peak {b / MIB:.1f} MiB ({time.perf_counter() - t0:.1f} s)")
    row["slope"] = loglog_slope(measured_n, measured_b)
    row["slope_range"] = [measured_n[0], measured_n[-1]] if measured_n else None
    if row["slope"] is not None and name not in SCALING_CONTRAST:
        row["met"] = row["slope"] <= SLOPE_TARGET and len(measured_n) == len(lens)
    row["status"] = "ok" if measured_n else "error: nothing measured"
    return row


def _lens(text: str) -> List[int]:
    try:
        vals = check_int_list("--scaling-lens", [int(v) for v in text.split(",") if v.strip()])
    except ValueError:
        vals = ()
    if len(set(vals)) < 2:
        raise argparse.ArgumentTypeError(f"--scaling-lens must be at least two positive integers separated by commas, got {text!r}")
    return sorted(set(vals))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_attention.py",
        description="Benchmark our attention mechanisms against public reference implementations (CPU, fp32, forward).",
    )
    p.add_argument("--seq-len", type=int_arg("--seq-len"), default=None, help="sequence length n (default 4096; --quick: 256)")
    p.add_argument("--dim", type=int_arg("--dim"), default=512, help="model dim (default 512)")
    p.add_argument("--heads", type=int_arg("--heads"), default=8, help="heads (default 8)")
    p.add_argument("--batch", type=int_arg("--batch"), default=1, help="batch size (default 1)")
    p.add_argument("--runs", type=int_arg("--runs"), default=None, help="timed runs per implementation (default 10; --quick: 2)")
    p.add_argument("--warmup", type=int_arg("--warmup", 0), default=None, help="warm-up runs (default 3; --quick: 1)")
    p.add_argument("--threads", type=int_arg("--threads"), default=None, help="torch CPU threads (default os.cpu_count())")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default benchmarks/results)")
    p.add_argument("--scaling-lens", type=_lens, default=None,
                   help="comma-separated lengths for the memory-scaling table (default 1024,...,16384; --quick: 256,512)")
    p.add_argument("--no-scaling", action="store_true", help="skip the memory-scaling table")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test config: n=256, 2 runs, 1 warm-up")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dim % args.heads:
        parser.error(f"--dim ({args.dim}) must be divisible by --heads ({args.heads})")
    seq_len = args.seq_len or (256 if args.quick else 4096)
    runs = args.runs or (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    threads = args.threads or os.cpu_count() or 1
    lens = args.scaling_lens or (QUICK_SCALING_LENS if args.quick else SCALING_LENS)

    torch.set_num_threads(threads)
    command = command_line("bench_attention.py", argv)
    cfg = dict(seq_len=seq_len, dim=args.dim, heads=args.heads, batch=args.batch, runs=runs, warmup=warmup,
               dtype="float32", device="cpu", quick=args.quick)
    specs = pair_specs(cfg)
    report = dict(
        machine=machine(torch.get_num_threads(), command, mkldnn=torch.backends.mkldnn.is_available()),
        config=cfg,
        reference_versions=sorted({s["ref_version"] for s in specs}),
        registered=list_attentions(),
        pairs=[],
        scaling=None if args.no_scaling else dict(lens=list(lens), rows=[]),
        remarks=[
            "Ours are built with their default bias=True; the lucidrains references have bias-free q/k/v projections "
            "(their output projection has a bias), a negligible difference in work (one bias add per projection).",
        ],
        complete=False,
    )
    out = args.out

    def log(msg):
        print(msg, flush=True)

    m = report["machine"]
    log(f"bench_attention: {m['cpu_model']}, {m['logical_cpus']} CPUs, torch {m['torch_version']}, "
        f"{m['torch_threads']} threads; n={seq_len} dim={args.dim} heads={args.heads} batch={args.batch} "
        f"runs={runs} warmup={warmup}")
    log(f"registered mechanisms: {', '.join(report['registered'])}")
    write_report(report, out)
    for spec in specs:
        log(f"[pair] {spec['ours']} vs {spec['ref']}")
        t0 = time.perf_counter()
        row = run_pair(spec, cfg, log)
        report["pairs"].append(row)
        write_report(report, out)
        if row["status"] == "ok":
            log(f"    ours {row['ours_time']['median_ms']:.2f} ms, ref {row['ref_time']['median_ms']:.2f} ms, "
                f"time ratio {row['time_ratio']:.3f} (min {row['time_ratio_min']:.3f}); "
                f"peak {row['ours_peak_mib']:.1f} vs {row['ref_peak_mib']:.1f} MiB, ratio {row['mem_ratio']:.3f}; "
                f"target {_target_str(row)}: {_met_str(row['met'])}; CPU use {row['cpu_util']:.2f}  "
                f"({time.perf_counter() - t0:.1f} s)")
        else:
            log(f"    {row['status']}")
        gc.collect()
    if not args.no_scaling:
        for name in SCALING_MECHANISMS:
            log(f"[scaling] {name} at n = {', '.join(map(str, lens))}")
            row = run_scaling(name, lens, cfg, log)
            report["scaling"]["rows"].append(row)
            write_report(report, out)
            if row["status"] != "ok":
                log(f"    {row['status']}")
            else:
                log(f"    slope {_fmt(row['slope'], 3)}" + ("" if row["met"] is None else f", target <= {SLOPE_TARGET}: {_met_str(row['met'])}"))
            gc.collect()
    try:
        report["remarks"] += reference_checks()
    except Exception as exc:  # the checks are informative only
        report["remarks"].append(f"reference checks failed: {type(exc).__name__}: {exc}")
    report["complete"] = True
    finish(report["machine"])
    write_report(report, out)
    log(f"wrote {out / (RESULTS + '.md')} and {out / (RESULTS + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
