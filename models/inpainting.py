"""Image inpainting networks: a U-Net-style CNN and a transformer over patches with the pluggable attention.

    net = UNetInpainter(base=32, levels=3)                                                     # or:
    net = TransformerInpainter(image_size=32, patch_size=4, dim=192, depth=6, heads=4, attention="nystromformer")
    pred = net(masked_image, mask)     # (B, c, H, W), (B, 1, H, W) with 1 = hole -> (B, c, H, W)

Both see the masked image and the mask (as an extra input channel) and predict the whole image; the
LightningModule takes the loss on the hole (plus an optional small weight outside it) and composites
`known * (1 - mask) + pred * mask` for the metrics. Inputs are in the data's normalised space.

Axis letters: B batch, c channels, H/W height/width, p patch, n patches, d width.
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


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions with GroupNorm and GELU: (B, cin, H, W) -> (B, cout, H, W)."""
    groups = min(8, cout)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.GELU())


class UNetInpainter(nn.Module):
    """Encoder-decoder with skip connections (Ronneberger et al. 2015): `levels` stride-2 downsamplings, each
    doubling the width from `base`, then transposed-convolution upsampling joined to the skips."""

    def __init__(self, base: int, levels: int, channels: int = 3):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.levels = levels
        widths = [base * 2 ** i for i in range(levels + 1)]  # e.g. 32, 64, 128, 256
        self.inc = _conv_block(channels + 1, widths[0])
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(widths[i], widths[i], 2, stride=2), _conv_block(widths[i], widths[i + 1]))
                                  for i in range(levels))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(levels)))
        self.dec = nn.ModuleList(_conv_block(2 * widths[i], widths[i]) for i in reversed(range(levels)))
        self.outc = nn.Conv2d(widths[0], channels, 1)

    def forward(self, masked_image: Tensor, mask: Tensor) -> Tensor:
        h, w = masked_image.shape[-2:]
        if h % 2 ** self.levels or w % 2 ** self.levels:
            raise ValueError(f"image size {h}x{w} must be divisible by 2^levels = {2 ** self.levels}")
        x = self.inc(torch.cat([masked_image, mask], dim=1))  # (B, base, H, W)
        skips = [x]
        for down in self.down:
            x = down(x)  # (B, 2w, H/2, W/2)
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))  # (B, w, 2H', 2W')
        return self.outc(x)  # (B, c, H, W)


class TransformerInpainter(AttentionMapsMixin, nn.Module):
    """Patches of the masked image with the mask as a 4th channel -> linear embedding + learned positions ->
    `depth` pre-norm blocks with the chosen attention -> a linear layer back to each patch's pixels."""

    def __init__(self, image_size: int, patch_size: int, dim: int, depth: int, heads: int, channels: int = 3,
                 mlp_ratio: float = 2.0, attention: AttentionSpec = "softmax",
                 attention_options: Optional[Dict[str, Any]] = None, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size, self.channels = image_size, patch_size, channels
        self.grid = image_size // patch_size
        self.seq_len = self.grid * self.grid
        self.embed = nn.Linear((channels + 1) * patch_size * patch_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, self.seq_len, dim))
        options = sized_attention_options(attention, attention_options, self.seq_len)
        self.blocks = build_blocks(dim, depth, heads, attention, mlp_ratio, dropout, drop_path, options)
        self.norm = nn.LayerNorm(dim)
        self.to_pixels = nn.Linear(dim, channels * patch_size * patch_size)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.apply(init_weights)

    def patchify(self, x: Tensor) -> Tensor:
        """(B, c, H, W) -> (B, n, c*p*p)."""
        B, c, H, W = x.shape
        p, g = self.patch_size, self.grid
        x = x.reshape(B, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5)  # (B, g, g, c, p, p)
        return x.reshape(B, g * g, c * p * p)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, n, c*p*p) -> (B, c, H, W)."""
        B = x.shape[0]
        p, g, c = self.patch_size, self.grid, self.channels
        x = x.reshape(B, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, c, g, p, g, p)
        return x.reshape(B, c, g * p, g * p)

    def _tokens(self, masked_image: Tensor, mask: Tensor) -> Tensor:
        if masked_image.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(masked_image.shape[-2:])}")
        return self.embed(self.patchify(torch.cat([masked_image, mask], dim=1))) + self.pos  # (B, n, d)

    def forward(self, masked_image: Tensor, mask: Tensor) -> Tensor:
        h = self.norm(run_blocks(self.blocks, self._tokens(masked_image, mask)))  # (B, n, d)
        return self.unpatchify(self.to_pixels(h))  # (B, c, H, W)

    @torch.no_grad()
    def attention_maps(self, masked_image: Tensor, mask: Tensor) -> List[Tensor]:
        """Each block's (B, h, n, n) attention matrix over patches."""
        _, maps = run_blocks(self.blocks, self._tokens(masked_image, mask), return_weights=True)
        return maps
