"""Image inpainting on top of any image DataModule of this package (CIFAR-10 by default).

Batches are `(masked_image, mask, target)`:
    target        float32 (B, C, H, W): the wrapped module's normalised image (augmented in training)
    mask          float32 (B, 1, H, W) with 1 = HOLE (missing pixel), 0 = known pixel
    masked_image  target * (1 - mask): the hole is filled with 0, i.e. the data set's mean colour after
                  normalisation; outside the hole it equals target exactly
Mask kinds (`mask`): "center" (a centred square), "boxes" (random rectangles), "strokes" (random-walk brush
strokes: chains of thick line segments, stamped as discs with torch ops). `hole_fraction` is the target fraction
of masked pixels: boxes and strokes are drawn until the hole reaches it (the last box is drawn row by row, the
last stroke disc by disc, so the overshoot is at most one row / one disc); "center" uses the square closest to it.
Training masks are drawn fresh for every batch (from the batch's own generator, datamodules/resumable.py); validation and test masks are FIXED: each sample's mask is
seeded by (seed, split, sample index), so the same sample gets the same mask every epoch and every pass.

Source selection, caching, splits and augmentation are the wrapped module's (`source_used`, `image_size`, ...).
"""
from __future__ import annotations

import math
from typing import Optional

import lightning as L
import torch

from utils.checks import check_choice, check_fraction, check_int

from .cifar import CIFAR10DataModule, stack_items
from .common import DataUnavailableError
from .resumable import BatchKey, ResumableTraining

MASK_KINDS = ("center", "boxes", "strokes")


def center_mask(h: int, w: int, fraction: float) -> torch.Tensor:
    side_h = min(h, round(math.sqrt(fraction) * h))
    side_w = min(w, round(math.sqrt(fraction) * w))
    m = torch.zeros(h, w, dtype=torch.bool)
    top, left = (h - side_h) // 2, (w - side_w) // 2
    m[top : top + side_h, left : left + side_w] = True
    return m


def _uniform(g, lo, hi):
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g, lo, hi):
    """An int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g).item())


def boxes_mask(h: int, w: int, fraction: float, g: torch.Generator) -> torch.Tensor:
    """Random rectangles (each up to about a third of the target area) until `fraction` of the pixels is covered."""
    m = torch.zeros(h, w, dtype=torch.bool)
    target = round(fraction * h * w)
    covered = 0
    for _ in range(200):
        if covered >= target:
            break
        area = _uniform(g, 0.15, 0.4) * fraction * h * w
        aspect = math.exp(_uniform(g, math.log(0.5), math.log(2.0)))
        bh = max(1, min(h, round(math.sqrt(area / aspect))))
        bw = max(1, min(w, round(math.sqrt(area * aspect))))
        top, left = _randint(g, 0, h - bh), _randint(g, 0, w - bw)
        new = m.clone()
        new[top : top + bh, left : left + bw] = True
        n_new = int(new.sum())
        if n_new <= target:
            m, covered = new, n_new
            continue
        for r in range(top, top + bh):  # the last box: row by row, stopping where the target is reached
            m[r, left : left + bw] = True
            covered = int(m.sum())
            if covered >= target:
                break
    return m


def strokes_mask(h: int, w: int, fraction: float, g: torch.Generator) -> torch.Tensor:
    """Random walks of thick line segments (brush strokes): whole segments drawn as capsules while they fit under
    the target, the last one stamped disc by disc until the target is met."""
    m = torch.zeros(h, w, dtype=torch.bool)
    target = round(fraction * h * w)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    size = min(h, w)
    covered = 0
    for _ in range(50):  # strokes
        if covered >= target:
            break
        radius = _uniform(g, 0.04, 0.09) * size + 0.5
        y, x = _uniform(g, 0, h - 1), _uniform(g, 0, w - 1)
        angle = _uniform(g, 0, 2 * math.pi)
        for _ in range(_randint(g, 2, 6)):  # segments of this stroke
            angle += _uniform(g, -math.pi / 2, math.pi / 2)
            length = _uniform(g, 0.15, 0.4) * size
            y1 = min(max(y + math.sin(angle) * length, 0.0), h - 1.0)
            x1 = min(max(x + math.cos(angle) * length, 0.0), w - 1.0)
            # the whole segment as a capsule (distance to the segment <= radius) in one go ...
            vy, vx = y1 - y, x1 - x
            t = (((yy - y) * vy + (xx - x) * vx) / max(vy * vy + vx * vx, 1e-9)).clamp(0, 1)
            new = m | ((yy - y - t * vy) ** 2 + (xx - x - t * vx) ** 2 <= radius * radius)
            n_new = int(new.sum())
            if n_new <= target:
                m, covered, y, x = new, n_new, y1, x1
                continue
            # ... except the last one, stamped disc by disc until the target is reached
            steps = max(1, math.ceil(math.hypot(vy, vx) / max(0.5, radius / 2)))
            for k in range(1, steps + 1):
                cy, cx = y + vy * k / steps, x + vx * k / steps
                m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius
                covered = int(m.sum())
                if covered >= target:
                    return m
            y, x = y1, x1
    return m


def make_mask(kind: str, h: int, w: int, fraction: float, g: torch.Generator) -> torch.Tensor:
    if kind == "center":
        return center_mask(h, w, fraction)
    if kind == "boxes":
        return boxes_mask(h, w, fraction, g)
    return strokes_mask(h, w, fraction, g)


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
