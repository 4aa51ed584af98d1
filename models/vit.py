"""Vision Transformer around the pluggable attention (Dosovitskiy et al. 2021).

    net = ViT(image_size=32, patch_size=4, num_classes=10, dim=192, depth=6, heads=3, attention="linformer")
    logits = net(images)                        # images: (B, c, H, W) -> (B, num_classes)
    maps = net.attention_maps(images)           # [(B, h, n, n)] per block, where the mechanism has them

Convolutional patch embedding (a c -> d convolution with kernel = stride = patch), a learned CLS token
and learned position embeddings, `depth` pre-norm blocks (models/encoder.py), a final LayerNorm and a
linear head on the CLS token. Sequence length n = (H / p) * (W / p) + 1: 65 tokens for CIFAR-10 at patch 4,
197 for ImageNet-size images at patch 16.

Axis letters: B batch, c channels, H/W image height/width, p patch, n tokens, d width, h heads.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from models.encoder import (
    AttentionMapsMixin,
    AttentionSpec,
    build_blocks,
    init_weights,
    run_blocks,
    sized_attention_options,
)


class ViT(AttentionMapsMixin, nn.Module):
    def __init__(self, image_size: int, patch_size: int, num_classes: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 2.0, in_channels: int = 3, attention: AttentionSpec = "softmax",
                 attention_options: Optional[Dict[str, Any]] = None, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self.seq_len = self.grid * self.grid + 1  # patches + CLS
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, self.seq_len, dim))
        self.drop = nn.Dropout(dropout)
        options = sized_attention_options(attention, attention_options, self.seq_len)
        self.blocks = build_blocks(dim, depth, heads, attention, mlp_ratio, dropout, drop_path, options)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def embed(self, images: Tensor) -> Tensor:
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, c, H, W) -> (B, d, H/p, W/p) -> (B, n-1, d)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, d)
        return self.drop(torch.cat([cls, x], dim=1) + self.pos)  # (B, n, d)

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, c, H, W) -> logits (B, num_classes)."""
        h = self.norm(run_blocks(self.blocks, self.embed(images)))  # (B, n, d)
        return self.head(h[:, 0])  # CLS token -> (B, num_classes)

    @torch.no_grad()
    def attention_maps(self, images: Tensor) -> List[Tensor]:
        """Each block's (B, h, n, n) attention matrix (token 0 is CLS)."""
        _, maps = run_blocks(self.blocks, self.embed(images), return_weights=True)
        return maps

