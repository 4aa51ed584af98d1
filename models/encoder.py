"""A small pre-norm transformer encoder built on the attention registry, shared by the task models
(ViT, text classifier, language model) and by `profile.py --breakdown encoder`.

    enc = TransformerEncoder(vocab_size=1000, dim=256, depth=4, heads=4, attention="performer",
                             num_classes=2, max_len=512, attention_options={"features": 128})
    logits = enc(tokens, mask)             # tokens: (B, n) int64, mask: (B, n) bool -> (B, num_classes)
    h = enc.encode(tokens, mask)           # (B, n, dim), before pooling

Axis letters in shape comments: B batch, n sequence length, d model width, c input channels.

Module names are stable, so per-component tools (profiling/breakdown.py) can select them:
`embed`, `blocks.<i>.norm1`, `blocks.<i>.attn`, `blocks.<i>.norm2`, `blocks.<i>.mlp`, `norm`, `head`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

from models.attention import Attention, build_attention
from models.attention import attention_options as attention_options_of
from models.attention.functional import default, exists

AttentionSpec = Union[str, Type[Attention]]


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample with probability `p` in training,
    scaling the kept ones by 1 / (1 - p) so the expectation is unchanged."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {p!r}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # (B, 1, 1): one draw per sample
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Sequential):
    """Linear -> GELU -> (dropout) -> Linear -> (dropout): (B, n, d) -> (B, n, d)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    `attention` is a registered name ("softmax", "performer", ...) or an Attention subclass;
    `attention_options` go to its constructor (e.g. {"features": 128}, {"max_seq_len": 1024}).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        attention: AttentionSpec = "softmax",
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        attention_options: Optional[Dict[str, Any]] = None,
        causal: bool = False,
    ):
        super().__init__()
        options = dict(attention_options or {})
        if causal:
            options["causal"] = True
        self.norm1 = nn.LayerNorm(dim)
        self.attn = build_attention(attention, dim, heads, **options)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, causal: Optional[bool] = None,
                return_weights: bool = False):
        """
        Args:
            x: (batch, seq, dim) input.
            mask: optional (batch, seq) bool, True for real tokens.
            causal: attend only to earlier positions; None uses the attention's construction value.
            return_weights: also return the attention's (batch, heads, seq, seq) matrix (mechanisms
                that declare `has_weights`).
        Returns:
            (batch, seq, dim), or ((batch, seq, dim), weights) with `return_weights`.
        """
        a = self.attn(self.norm1(x), mask=mask, causal=causal, return_weights=return_weights)
        a, weights = a if return_weights else (a, None)
        x = x + self.drop_path(a)  # (B, n, d)
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # (B, n, d)
        return (x, weights) if return_weights else x

    def step(self, x: Tensor, state: Optional[Dict[str, Any]] = None) -> Tuple[Tensor, Dict[str, Any]]:
        """Causal incremental decoding (attentions that declare `supports_decoding`): (B, t, d) new positions
        and the attention's state after the earlier ones -> their (B, t, d) outputs, equal to the causal
        forward's last t, and the new state (see Attention.step)."""
        a, state = self.attn.step(self.norm1(x), state)
        x = x + self.drop_path(a)  # (B, t, d)
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # (B, t, d)
        return x, state


def build_blocks(dim: int, depth: int, heads: int, attention: AttentionSpec = "softmax", mlp_ratio: float = 4.0,
                 dropout: float = 0.0, drop_path: float = 0.0, attention_options: Optional[Dict[str, Any]] = None,
                 causal: bool = False) -> nn.ModuleList:
    """`depth` pre-norm blocks; stochastic depth grows linearly from 0 to `drop_path` (deeper blocks drop more)."""
    rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path] * depth
    return nn.ModuleList(
        TransformerBlock(dim, heads, attention, mlp_ratio, dropout, rate, attention_options, causal) for rate in rates
    )


def run_blocks(blocks: nn.ModuleList, h: Tensor, mask: Optional[Tensor] = None, causal: Optional[bool] = None,
               return_weights: bool = False):
    """Apply `blocks` in turn: (B, n, d) -> (B, n, d), plus the per-block weights with `return_weights`."""
    maps: List[Tensor] = []
    for block in blocks:
        if return_weights:
            h, w = block(h, mask, causal, return_weights=True)  # (B, n, d), (B, h, n, n)
            maps.append(w)
        else:
            h = block(h, mask, causal)  # (B, n, d)
    return (h, maps) if return_weights else h


def sized_attention_options(attention: AttentionSpec, options: Optional[Dict[str, Any]], seq_len: int) -> Dict[str, Any]:
    """The options with `max_seq_len` set to `seq_len` for fixed-length mechanisms (Linformer) that were
    not given one, so a task's sequence length decides the projection size rather than a default."""
    options = dict(options or {})
    name = attention if isinstance(attention, str) else attention.name
    if "max_seq_len" in attention_options_of(name) and "max_seq_len" not in options:
        options["max_seq_len"] = seq_len
    return options


def init_weights(m: nn.Module) -> None:
    """The ViT / GPT-2 initialisation: truncated-normal(0.02) linear weights, zero biases, unit LayerNorms
    (use with `model.apply(init_weights)`; attention parameters other than nn.Linear keep their own)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class AttentionMapsMixin:
    """For a network whose attention blocks are `self.blocks`: it can show attention maps when every block's
    mechanism can return the matrix it applies (`attention_maps(...)` is the network's own: its inputs differ)."""

    @property
    def has_attention_maps(self) -> bool:
        return all(block.attn.has_weights for block in self.blocks)


class TransformerEncoder(AttentionMapsMixin, nn.Module):
    """Embedding (token ids, or a linear projection of features) + learned positions -> `depth`
    pre-norm blocks -> final LayerNorm -> mean pool over real tokens -> linear head.

    Args:
        vocab_size: number of token ids; None means inputs are (B, n, in_dim) features.
        dim, depth, heads: width, number of blocks, attention heads.
        attention: registered name or Attention subclass, used in every block.
        num_classes: outputs of the head; None (or 0) leaves the head out (forward returns pooled features).
        max_len: longest sequence (size of the learned position table).
        in_dim: feature width when vocab_size is None (defaults to dim).
    """

    def __init__(
        self,
        vocab_size: Optional[int],
        dim: int,
        depth: int,
        heads: int,
        attention: AttentionSpec = "softmax",
        num_classes: Optional[int] = None,
        max_len: int = 512,
        *,
        in_dim: Optional[int] = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        attention_options: Optional[Dict[str, Any]] = None,
        causal: bool = False,
    ):
        super().__init__()
        self.vocab_size, self.dim, self.max_len = vocab_size, dim, max_len
        self.embed = nn.Embedding(vocab_size, dim) if exists(vocab_size) else nn.Linear(default(in_dim, dim), dim)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = build_blocks(dim, depth, heads, attention, mlp_ratio, dropout, drop_path, attention_options, causal)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def encode(self, x: Tensor, mask: Optional[Tensor] = None, causal: Optional[bool] = None,
               return_weights: bool = False):
        """
        Args:
            x: (batch, seq) token ids, or (batch, seq, in_dim) features when vocab_size is None.
            mask: optional (batch, seq) bool, True for real tokens.
            causal: passed to every block's attention.
            return_weights: also return each block's (batch, heads, seq, seq) attention matrix.
        Returns:
            (batch, seq, dim) normalised token features (and the list of matrices with `return_weights`).
        """
        n = x.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len={self.max_len} of the position table")
        h = self.drop(self.embed(x) + self.pos[:, :n])  # (B, n, d)
        out = run_blocks(self.blocks, h, mask, causal, return_weights)
        h, maps = out if return_weights else (out, None)
        h = self.norm(h)
        return (h, maps) if return_weights else h

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, causal: Optional[bool] = None) -> Tensor:
        """
        Args:
            x: (batch, seq) token ids, or (batch, seq, in_dim) features when vocab_size is None.
            mask: optional (batch, seq) bool, True for real tokens; padding is left out of the pool.
            causal: passed to every block's attention.
        Returns:
            (batch, num_classes) logits (or (batch, dim) pooled features without a head).
        """
        h = self.encode(x, mask, causal)  # (B, n, d)
        if mask is None:
            pooled = h.mean(dim=1)  # (B, d)
        else:
            w = mask.unsqueeze(-1).to(h.dtype)  # (B, n, 1)
            pooled = (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)  # (B, d)
        return self.head(pooled)

    def components(self) -> Dict[str, List[nn.Module]]:
        """The model's parts by role (for per-component profiling and parameter tables)."""
        return {
            "embeddings": [self.embed],
            "attention": [b.attn for b in self.blocks],
            "mlp": [b.mlp for b in self.blocks],
            "norm": [m for b in self.blocks for m in (b.norm1, b.norm2)] + [self.norm],
            "head": [self.head],
        }

