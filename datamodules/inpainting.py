"""Image inpainting on top of any image DataModule of this package (CIFAR-10 by default).

Batches are `(masked_image, mask, target)`:
    target        float32 (B, C, H, W): the wrapped module's normalised image (augmented in training)
    mask          float32 (B, 1, H, W) with 1 = HOLE (missing pixel), 0 = known pixel
    masked_image  target * (1 - mask): the hole is filled with 0, i.e. the data set's mean colour after
                  normalisation; outside the hole it equals target exactly
Mask kinds (`mask`: "center", "boxes", "strokes") and `hole_fraction` are drawn by inpainting_masks.py.
Training masks are drawn fresh for every batch (from the batch's own generator, datamodules/resumable.py);
validation and test masks are FIXED: each sample's mask is seeded by (seed, split, sample index), so the same
sample gets the same mask every epoch and every pass.

Source selection, caching, splits and augmentation are the wrapped module's (`source_used`, `image_size`, ...).
"""
from __future__ import annotations

from typing import Optional

import lightning as L
import torch

from utils.checks import check_choice, check_fraction, check_int

from .cifar import CIFAR10DataModule, stack_items
from .common import DataUnavailableError
from .inpainting_masks import MASK_KINDS, make_mask
from .resumable import BatchKey, ResumableTraining


class InpaintingCollate:
    """Training batches draw augmentation and masks from the batch's own generator (seed, epoch, position:
    datamodules/resumable.py); evaluation masks are fixed per sample."""
    SPLIT_SALT = {"train": 0, "val": 1, "test": 2}

    def __init__(self, transform, split: str, kind: str, fraction: float, seed: int):
        self.transform, self.split, self.kind, self.fraction, self.seed = transform, split, kind, fraction, seed

    def fixed_generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.SPLIT_SALT[self.split]) * 10_000_019 + index)

    def __call__(self, items, key: Optional[BatchKey] = None):
        images, _, index = stack_items(items)
        train = self.split == "train"
        g = key.generator(self.seed, "inpainting") if train else None
        target = self.transform(images, train, g)
        h, w = target.shape[-2:]
        masks = [make_mask(self.kind, h, w, self.fraction, g if train else self.fixed_generator(int(i)))
                 for i in index]
        mask = torch.stack(masks).unsqueeze(1).to(target.dtype)
        return target * (1 - mask), mask, target


class InpaintingDataModule(ResumableTraining, L.LightningDataModule):
    def __init__(self, datamodule: Optional[L.LightningDataModule] = None, mask: str = "center",
                 hole_fraction: float = 0.25, seed: Optional[int] = None, **cifar_kwargs):
        """`datamodule`: an image DataModule of this package (CIFAR10DataModule or one like it: uint8
        `train_set`/`val_set`/`test_set` of (image, label, index), a `transform(images, train, generator)`);
        when None a CIFAR10DataModule is built from `cifar_kwargs` (data_source, data_dir, batch_size, ...)."""
        super().__init__()
        check_choice("mask", mask, MASK_KINDS)
        hole_fraction = check_fraction("hole_fraction", hole_fraction, low_open=True)
        if seed is not None:
            seed = check_int("seed", seed, low=0, high=2**32 - 1)
        if datamodule is not None and not isinstance(datamodule, L.LightningDataModule):
            raise ValueError(f"datamodule must be an image LightningDataModule such as CIFAR10DataModule, "
                             f"got {datamodule!r}")
        if datamodule is None:
            if seed is not None:
                cifar_kwargs.setdefault("seed", seed)
            datamodule = CIFAR10DataModule(**cifar_kwargs)
        elif cifar_kwargs:
            raise ValueError(f"pass {sorted(cifar_kwargs)} to the wrapped datamodule, not to InpaintingDataModule")
        self.datamodule = datamodule
        self.mask_kind, self.hole_fraction = mask, hole_fraction
        self.seed = seed if seed is not None else getattr(datamodule, "seed", 0)
        self.save_hyperparameters(ignore=["datamodule"])

    # -- delegated properties
    shards_itself = property(lambda self: False)  # evaluation loaders: the wrapped module's eval_loader, unsharded
    source_used = property(lambda self: self.datamodule.source_used)
    image_size = property(lambda self: self.datamodule.image_size)
    channels = property(lambda self: self.datamodule.channels)
    mean = property(lambda self: self.datamodule.mean)
    std = property(lambda self: self.datamodule.std)
    classes = property(lambda self: self.datamodule.classes)
    num_classes = property(lambda self: self.datamodule.num_classes)
    batch_size = property(lambda self: self.datamodule.batch_size)

    def resolve_source(self) -> str:
        return self.datamodule.resolve_source()

    def prepare_data(self):
        self.datamodule.prepare_data()

    def setup(self, stage: Optional[str] = None):
        self.datamodule.setup(stage)
        sets = [getattr(self.datamodule, f"{split}_set", None) for split in ("train", "val", "test")]
        image = next((d[0][0] for d in sets if d is not None and len(d)), None)
        h, w = image.shape[-2:] if image is not None else (1, 1)
        if image is not None and round(self.hole_fraction * h * w) < 1:  # every mask empty: nothing to inpaint
            raise DataUnavailableError(f"hole_fraction {self.hole_fraction} of a {h}x{w} image is less than one pixel: "
                                       f"raise it to at least {1 / (h * w):.2g}")
        self.hparams["source_used"] = self.source_used

    def _loader(self, split: str):
        self.setup("fit" if split != "test" else "test")
        dm = self.datamodule
        dataset = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}[split]
        collate = InpaintingCollate(dm.transform, split, self.mask_kind, self.hole_fraction, self.seed)
        if split == "train":  # this module's position goes into checkpoints (ResumableTraining)
            return self.shuffled_loader(dataset, dm.batch_size, self.seed, collate, **dm.loader_kwargs())
        return dm.eval_loader(dataset, collate)

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
