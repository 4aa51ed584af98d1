"""LRA Image (Tay et al., ICLR 2021): CIFAR-10 as sequences of 1,024 greyscale pixel tokens, 10 classes.

    dm = LRAImageDataModule(data_dir="~/data/cifar10")
    dm.prepare_data(); dm.setup("fit")   # batches: input_ids (B, 1024) = grey value + 1, mask, labels, index

CIFAR10DataModule (cifar.py) does the reading (the official pickle batches, an image folder, train/test
.tar.gz, the hub, its synthetic stripe images), the uint8 RGB cache, its check of the channel statistics and
the seeded validation split (`val_size` of the 50,000 training images; LRA takes the last 10 %, also 5,000).
Each image then becomes LRA's 8-bit greyscale (greyscale.py: tf.image.rgb_to_grayscale, truncated), flattened
row by row; token = grey value + 1, so 0 stays padding (never needed: every image fills its 1,024 tokens).
No augmentation and no normalisation, as in LRA. Images must be 32 x 32.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from .cifar import CIFAR10DataModule
from .common import DataUnavailableError
from .greyscale import rgb_to_grey
from .text_batches import PadCollate

IMAGE_SIDE = 32
PIXEL_VOCAB = 257  # padding 0, grey values 1 .. 256


class GreyTokens(Dataset):
    """Greyscale images flattened to uint8 (N, L) + labels; items are LRA tokens (grey value + 1)."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, indices: Optional[torch.Tensor] = None):
        self.pixels, self.labels = pixels, labels
        self.indices = indices if indices is not None else torch.arange(len(pixels))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        return {"input_ids": self.pixels[j].long() + 1, "label": int(self.labels[j]), "index": int(i)}


class LRAImageDataModule(CIFAR10DataModule):
    """CIFAR-10 as LRA's greyscale pixel sequences; see the module docstring."""

    pad_id = 0

    def __init__(self, data_source: str = "auto", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 batch_size: int = 256, num_workers: int = 0, seed: int = 0, val_size: int = 5000,
                 verify_checksums="auto", hub_name: str = "uoft-cs/cifar10",
                 synthetic_sizes: Tuple[int, int] = (10_000, 2_000)):
        super().__init__(data_source=data_source, data_dir=data_dir, cache_dir=cache_dir, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, val_size=val_size, image_size=None, augment="none",
                         crop_padding=0, verify_checksums=verify_checksums, hub_name=hub_name,
                         synthetic_sizes=synthetic_sizes)
        self.seq_len = IMAGE_SIDE * IMAGE_SIDE
        self.vocab_size = PIXEL_VOCAB

    def setup(self, stage: Optional[str] = None) -> None:
        if isinstance(self.train_set, GreyTokens):
            return
        super().setup(stage)  # RGB uint8 images, checked and split
        tr, va, te = self.train_set, self.val_set, self.test_set
        if tuple(tr.images.shape[-2:]) != (IMAGE_SIDE, IMAGE_SIDE):
            where = self.local_root or self.hub_name
            raise DataUnavailableError(f"LRA Image needs 32 x 32 images (1,024 pixel tokens) but {where} holds "
                                       f"{tr.images.shape[-2]} x {tr.images.shape[-1]} images: use CIFAR-10")
        train_pixels = rgb_to_grey(tr.images).flatten(1)  # (N, 1024) row-major: pixel (r, c) at r * 32 + c
        test_pixels = rgb_to_grey(te.images).flatten(1)
        self.train_set = GreyTokens(train_pixels, tr.labels, tr.indices)
        self.val_set = GreyTokens(train_pixels, va.labels, va.indices)
        self.test_set = GreyTokens(test_pixels, te.labels, te.indices)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self.train_loader(self.train_set, PadCollate(self.pad_id))

    def val_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self.eval_loader(self.val_set, PadCollate(self.pad_id))

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self.eval_loader(self.test_set, PadCollate(self.pad_id))
