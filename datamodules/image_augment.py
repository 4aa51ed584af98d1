"""Image augmentation per batch with torch ops alone (no torchvision): uint8 (B, C, H, W) in, normalised
float32 out, every op vectorised over the batch and drawing from the generator it is handed, so a batch's
augmentation depends only on that generator (datamodules/resumable.py seeds one per training batch).
Used by CIFAR-10 and the inpainting DataModule:
    "standard"  random crop with padding ("reflect" or "zeros") + horizontal flip
    "strong"    random-resized-crop-like scale/aspect jitter + flip + colour jitter + random erasing
    "none"      normalisation only
`channel_stats` gives the per-channel mean/std that the normalisation uses.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "standard", "strong")
PADDING_MODES = ("reflect", "zeros")


class BatchTransform:
    """uint8 (B, C, H, W) -> augmented, normalised float32 batch; all ops vectorised over the batch."""

    def __init__(self, mean, std, augment: str = "standard", crop_padding: int = 4, padding_mode: str = "reflect"):
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be 'reflect' or 'zeros', got {padding_mode!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment, self.crop_padding, self.padding_mode = augment, crop_padding, padding_mode

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def __call__(self, images: torch.Tensor, train: bool, g: Optional[torch.Generator] = None) -> torch.Tensor:
        x = images.float().div_(255.0)
        if train and self.augment == "standard":
            x = hflip(random_crop(x, self.crop_padding, self.padding_mode, g), g)
        elif train and self.augment == "strong":
            x = hflip(random_resized_crop(x, g), g)
            x = color_jitter(x, g)
        x = self.normalize(x)
        if train and self.augment == "strong":
            x = random_erasing(x, g)
        return x


def random_crop(x: torch.Tensor, padding: int, padding_mode: str, g) -> torch.Tensor:
    """Pad by `padding` and crop back to (H, W) at a random offset per sample."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    mode = "reflect" if padding_mode == "reflect" else "constant"
    xp = F.pad(x, (padding,) * 4, mode=mode)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    return xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def hflip(x: torch.Tensor, g, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_resized_crop(x: torch.Tensor, g, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop a random area fraction in `scale` with aspect ratio in `ratio`, resized back to (H, W)."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=g)
    logr = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = logr.exp()
    sw, sh = (area * r).sqrt().clamp(max=1.0), (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - sw)
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - sh)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, cx, sh, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, g, brightness=0.4, contrast=0.4, saturation=0.4) -> torch.Tensor:
    b = x.shape[0]

    def factor(s):
        return torch.empty(b, 1, 1, 1).uniform_(1 - s, 1 + s, generator=g)

    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    x = (x * factor(brightness)).clamp(0, 1)
    gray_mean = (x * w).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - gray_mean) * factor(contrast) + gray_mean).clamp(0, 1)
    gray = (x * w).sum(1, keepdim=True)
    return ((x - gray) * factor(saturation) + gray).clamp(0, 1)


def random_erasing(x: torch.Tensor, g, p=0.25, scale=(0.02, 0.33), ratio=(0.3, 3.3)) -> torch.Tensor:
    """Zero (= the data mean after normalisation) one random rectangle in a fraction p of the samples."""
    b, _, h, w = x.shape
    apply = torch.rand(b, generator=g) < p
    area = torch.empty(b).uniform_(*scale, generator=g) * h * w
    r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g).exp()
    eh = (area / r).sqrt().round().clamp(1, h).long()
    ew = (area * r).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=g) * (h - eh + 1)).floor().long()
    x0 = (torch.rand(b, generator=g) * (w - ew + 1)).floor().long()
    yy, xx = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    box = ((yy >= y0.view(b, 1, 1)) & (yy < (y0 + eh).view(b, 1, 1))
           & (xx >= x0.view(b, 1, 1)) & (xx < (x0 + ew).view(b, 1, 1)) & apply.view(b, 1, 1))
    return x.masked_fill(box.unsqueeze(1), 0.0)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean/std over every pixel of uint8 (N, C, H, W) images, scaled to [0, 1]."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].to(torch.float64).div_(255.0)
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    n = images.numel() / c
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
