"""8-bit greyscale as LRA's Image task makes it: `tf.cast(tf.image.rgb_to_grayscale(image), tf.int32)` on
uint8 CIFAR-10 images (long-range-arena, lra_benchmarks/image/input_pipeline.py).

TensorFlow's rgb_to_grayscale scales uint8 to float32 [0, 1] (x * (1/255)), takes the ITU-R 601 luma
0.2989 R + 0.5870 G + 0.1140 B in float32, and converts back to uint8 by multiplying by 255.5 and casting,
which truncates: grey = trunc(255.5 * (0.2989 R + 0.5870 G + 0.1140 B) / 255). The same float32 steps are
taken here. Exact arithmetic gives one less on 237 of the 2^24 colours (float32 rounds them up across a
boundary), and the float32 summation order alone moves 30 colours: TensorFlow's kernels may differ from this
by one on a few dozen colours.
"""
from __future__ import annotations

import torch

LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)  # R, G, B: TensorFlow's rgb_to_grayscale
_CHUNK = 4096  # images converted at a time: float32 copies of 50,000 images would take 600 MB


def rgb_to_grey(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, H, W), as tf.image.rgb_to_grayscale computes it."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    scale = torch.tensor(1 / 255, dtype=torch.float32)
    w = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32)
    out = torch.empty((images.shape[0], *images.shape[2:]), dtype=torch.uint8)
    for i in range(0, len(images), _CHUNK):
        x = images[i : i + _CHUNK].to(torch.float32) * scale  # (n, 3, H, W) in [0, 1]
        grey = x[:, 0] * w[0] + x[:, 1] * w[1] + x[:, 2] * w[2]
        out[i : i + _CHUNK] = (grey * 255.5).to(torch.uint8)  # float -> uint8 truncates; at most 255.47
    return out
