"""CIFAR-10 (and any image-folder data set) as a DataModule: uint8 tensor caches, torch-only augmentation.

Sources (see common.py): "local" reads the official pickle batches, an image folder or train/test .tar.gz
files under `data_dir` (cifar_readers.py); "hub" `datasets.load_dataset("uoft-cs/cifar10")`; "synthetic"
class-dependent stripe patterns, deterministic by seed (`synthetic_split`).

Every real source is decoded ONCE into a uint8 cache (N, 3, H, W) + int64 labels, one file per split, under
`cache_dir/cifar10/<settings_key>/{train,test}.pt`, reused on later runs (a file that no longer loads or checks
is decoded again); a tar.gz is never opened again once its cache exists. Everything is checked (class folders,
image sizes, val_size) before anything is written.

Augmentation (image_augment.py: "standard", "strong", "none") runs per batch in the collate function, each
training batch from its own generator (seed, epoch, position: datamodules/resumable.py), so runs with the same
seed see the same batches whatever the number of workers, and a resumed run the ones it would have seen.
Normalisation uses per-channel statistics of all training images; for the full CIFAR-10 training set they are
checked against the known values within `CIFAR10_STATS_TOL`.

Batches: (images float32 (B, 3, H, W) normalised, labels int64 (B,)), plus the samples' index with return_index.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from utils.checks import check_bool, check_choice, check_int

from .cifar_readers import (
    CIFAR10_CLASSES,
    folder_fingerprint,
    hw,
    pil_to_tensor,
    read_folder_split,
    read_pickle_split,
    read_tar_split,
    stack_images,
)
from .common import (
    DataUnavailableError,
    SourcedDataModule,
    load_cached,
    make_folder,
    seeded_split,
    settings_key,
    write_cache,
)
from .image_augment import AUGMENTS, PADDING_MODES, BatchTransform, channel_stats
from .resumable import BatchKey

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# JPEG (quality ~75) copies shift the statistics by up to a few 1e-3; 0.01 leaves room and still catches a
# wrong channel order, a wrong scale or a per-image std.
CIFAR10_STATS_TOL = 0.01

SPLITS = ("train", "test")


def synthetic_split(n: int, seed: int, image_size: int, num_classes: int = 10):
    """Class-dependent patterns: each class has a base colour and a stripe orientation/frequency, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    cg = torch.Generator().manual_seed(12345)  # the class patterns are the same for every split and seed
    colours = torch.rand(num_classes, 3, generator=cg) * 0.6 + 0.2
    angles = torch.arange(num_classes) * math.pi / num_classes
    freqs = 2 * math.pi * (1 + torch.arange(num_classes) % 3) / image_size * 2
    yy, xx = torch.meshgrid(torch.arange(image_size, dtype=torch.float32),
                            torch.arange(image_size, dtype=torch.float32), indexing="ij")
    phase = torch.rand(n, generator=g) * 2 * math.pi
    a, f = angles[labels].view(n, 1, 1), freqs[labels].view(n, 1, 1)
    stripes = torch.sin(f * (xx * torch.cos(a) + yy * torch.sin(a)) + phase.view(n, 1, 1))
    img = colours[labels].view(n, 3, 1, 1) + 0.2 * stripes.unsqueeze(1)
    img = img + 0.08 * torch.randn(n, 3, image_size, image_size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels


def cached_split_ok(blob) -> bool:
    """Whether a split cache file holds what load_splits wrote: uint8 (N, C, H, W) images, N int64 labels
    within the classes."""
    try:
        images, labels, classes = blob["images"], blob["labels"], blob["classes"]
        return (images.dtype == torch.uint8 and images.dim() == 4 and len(images) > 0
                and labels.dtype == torch.int64 and labels.shape == (len(images),)
                and 0 <= int(labels.min()) and int(labels.max()) < len(classes))
    except (KeyError, TypeError, AttributeError, RuntimeError):
        return False


# --------------------------------------------------------------------------------------------- datasets
class ImageTensorDataset(Dataset):
    """uint8 images + labels; items are (image uint8 (3, H, W), label, index) so collates can seed by index."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: Optional[torch.Tensor] = None):
        self.images, self.labels = images, labels
        self.indices = indices if indices is not None else torch.arange(len(images))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        j = int(self.indices[i])
        return self.images[j], int(self.labels[j]), int(i)


def stack_items(items):
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([it[1] for it in items], dtype=torch.int64)
    index = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return images, labels, index


class ClassificationCollate:
    """(images, labels), or (images, labels, index) with `return_index`: the samples' positions in the data set.
    A training batch is augmented with its own generator (datamodules/resumable.py: seeded by the seed, the
    epoch and the batch's position), so it is the same in any worker and after a resume."""

    def __init__(self, transform: BatchTransform, train: bool, seed: int, return_index: bool = False):
        self.transform, self.train, self.seed, self.return_index = transform, train, seed, return_index

    def __call__(self, items, key: Optional[BatchKey] = None):
        images, labels, index = stack_items(items)
        images = self.transform(images, self.train, key.generator(self.seed, "augment") if self.train else None)
        return (images, labels, index) if self.return_index else (images, labels)


# ----------------------------------------------------------------------------------------------- module
class CIFAR10DataModule(SourcedDataModule):
    name = "CIFAR-10"
    local_hint = ("cifar-10-batches-py/ (the official python batches), an image folder <root>/{train,test}/<class>/*.jpg|png, "
                  "or train.tar.gz + test.tar.gz holding such folders")

    def __init__(self, data_source: str = "auto", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 batch_size: int = 128, num_workers: int = 0, seed: int = 0, val_size: int = 5000,
                 image_size: Optional[int] = None, augment: str = "standard", crop_padding: int = 4,
                 padding_mode: str = "reflect", verify_checksums="auto", hub_name: str = "uoft-cs/cifar10",
                 synthetic_sizes: Tuple[int, int] = (10_000, 2_000), check_stats: bool = True,
                 return_index: bool = False):
        """`return_index=True`: batches are (images, labels, index), index = the samples' positions in their
        split's data set (for checks such as which samples each process saw)."""
        super().__init__(data_source=data_source, data_dir=data_dir, cache_dir=cache_dir, batch_size=batch_size,
                         num_workers=num_workers, seed=seed)
        check_choice("augment", augment, AUGMENTS)
        check_choice("padding_mode", padding_mode, PADDING_MODES)
        if not (isinstance(verify_checksums, bool) or verify_checksums == "auto"):  # 1 == True: test the type
            raise ValueError(f"verify_checksums must be True, False or 'auto', got {verify_checksums!r}")
        val_size = check_int("val_size", val_size, low=0)
        if image_size is not None:
            image_size = check_int("image_size", image_size)
        crop_padding = check_int("crop_padding", crop_padding, low=0)
        if image_size is not None:
            self.check_crop_padding(crop_padding, padding_mode, image_size, ValueError)
        if (not isinstance(synthetic_sizes, (tuple, list)) or len(synthetic_sizes) != 2
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in synthetic_sizes)):
            raise ValueError(f"synthetic_sizes must be two positive integers (train, test), got {synthetic_sizes!r}")
        if data_source == "synthetic" and val_size >= synthetic_sizes[0]:
            raise ValueError(f"val_size must be below the {synthetic_sizes[0]} synthetic training images "
                             f"(synthetic_sizes[0]) to leave some for training, got {val_size!r}")
        if not isinstance(hub_name, str) or not hub_name:
            raise ValueError(f"hub_name must be a data set name on the hub such as 'uoft-cs/cifar10', got {hub_name!r}")
        self.save_hyperparameters()
        self.val_size, self.augment = val_size, augment
        self.crop_padding, self.padding_mode = crop_padding, padding_mode
        self.verify_checksums, self.hub_name = verify_checksums, hub_name
        self.synthetic_sizes, self.check_stats = tuple(synthetic_sizes), check_bool("check_stats", check_stats)
        self.return_index = check_bool("return_index", return_index)
        self.requested_image_size = image_size
        self.image_size = image_size if image_size is not None else 32
        self.channels = 3
        self.num_classes = 10
        self.classes: List[str] = list(CIFAR10_CLASSES)
        self.mean: Optional[Tuple[float, ...]] = None
        self.std: Optional[Tuple[float, ...]] = None
        self.local_format: Optional[str] = None  # "pickle" | "folder" | "tar"
        self.train_set = self.val_set = self.test_set = None
        self._splits: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def check_crop_padding(crop_padding: int, padding_mode: str, image_size: int, error=DataUnavailableError) -> None:
        """Reflect padding must be smaller than the image, or every training batch fails inside F.pad."""
        if padding_mode == "reflect" and crop_padding >= image_size:
            raise error(f"crop_padding must be below the image size {image_size} with padding_mode 'reflect', "
                        f"got {crop_padding}")

    def check_val_size(self, n_train: int, where) -> None:
        if self.val_size >= n_train:
            raise DataUnavailableError(f"val_size {self.val_size} leaves no training images out of the {n_train} of "
                                       f"{where}: lower val_size")

    # -- finding a local copy
    def find_local(self, data_dir: Path) -> Optional[Path]:
        if not data_dir.is_dir():
            return None
        candidates = [data_dir] + sorted(p for p in data_dir.iterdir() if p.is_dir())
        for root in candidates:
            for r in (root, root / "cifar-10-batches-py"):
                if (r / "data_batch_1").is_file() and (r / "test_batch").is_file():
                    self.local_format = "pickle"
                    return r
        for root in candidates:
            if all((root / f"{s}.tar.gz").is_file() for s in SPLITS):
                self.local_format = "tar"
                return root
        for root in candidates:
            if all((root / s).is_dir() and any(p.is_dir() for p in (root / s).iterdir()) for s in SPLITS):
                self.local_format = "folder"
                return root
        return None

    # -- caching
    def cache_key(self) -> str:
        source = self.resolve_source()
        settings = dict(source=source, image_size=self.requested_image_size)
        if source == "local":
            settings.update(format=self.local_format, root=str(self.local_root.resolve()))
            if self.local_format == "tar":
                settings["tars"] = [(p.stat().st_size, int(p.stat().st_mtime)) for p in
                                    (self.local_root / f"{s}.tar.gz" for s in SPLITS)]
            elif self.local_format == "folder":
                settings["folders"] = [folder_fingerprint(self.local_root / s) for s in SPLITS]
            else:
                settings["batches"] = [(p.name, p.stat().st_size, int(p.stat().st_mtime))
                                       for p in sorted(self.local_root.iterdir()) if p.is_file()]
        elif source == "hub":
            settings["hub_name"] = self.hub_name
        return settings_key(**settings)

    @property
    def cache_path(self) -> Path:
        if getattr(self, "_cache_key", None) is None:  # computed once per module: a folder's fingerprint walks it
            self._cache_key = self.cache_key()
        return self.cache_dir / "cifar10" / self._cache_key

    def _decode_split(self, split: str, classes: Optional[Sequence[str]] = None):
        """Decode one split; `classes` (the training split's) fixes the labels of an image-folder test split."""
        source = self.resolve_source()
        size = self.requested_image_size
        if source == "hub":
            return self._decode_hub(split, size)
        if self.local_format == "pickle":
            return read_pickle_split(self.local_root, split, size, self.verify_checksums)
        if self.local_format == "tar":
            return read_tar_split(self.local_root / f"{split}.tar.gz", classes, size)
        return read_folder_split(self.local_root / split, classes, size)

    def _decode_hub(self, split: str, size):
        if not hasattr(self, "_hub_ds"):
            import datasets  # lazily: only a hub download needs it, and it takes about 1 s to import

            self._hub_ds = self.hub_load(lambda: datasets.load_dataset(self.hub_name))
        ds = self._hub_ds[split]
        img_col = "img" if "img" in ds.column_names else "image"
        feat = getattr(ds, "features", {}).get("label") if hasattr(ds, "features") else None
        classes = list(getattr(feat, "names", None) or CIFAR10_CLASSES)
        images = stack_images([pil_to_tensor(row[img_col], size) for row in ds], f"{self.hub_name}[{split}]")
        labels = torch.tensor(list(ds["label"]), dtype=torch.int64)
        return images, labels, classes

    def load_split(self, split: str) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
        """uint8 images (N, 3, H, W), int64 labels, class names for "train" or "test"; decoded once into the
        cache, read back from it afterwards (synthetic data is generated, not cached)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.load_splits([split])[split]

    def load_splits(self, splits: Sequence[str] = SPLITS) -> Dict[str, Tuple[torch.Tensor, torch.Tensor, List[str]]]:
        """Several splits at once. The splits not cached yet are all decoded and checked against each other
        (a test class folder the training split lacks, different image sizes) BEFORE any is written, and each
        is written to a temporary file renamed into place: a failed run leaves no cache file behind."""
        if self.resolve_source() == "synthetic":
            out = {}
            for split in splits:
                n = self.synthetic_sizes[0 if split == "train" else 1]
                images, labels = synthetic_split(n, self.seed * 2 + (split == "test"), self.image_size)
                out[split] = (images, labels, list(CIFAR10_CLASSES))
            return out
        out, missing = {}, []
        for split in splits:
            blob = load_cached(self.cache_path / f"{split}.pt", cached_split_ok)  # a damaged file: decoded again
            if blob is not None:
                out[split] = (blob["images"], blob["labels"], list(blob["classes"]))
            else:
                missing.append(split)
        if not missing:
            return out
        train_classes = out["train"][2] if "train" in out else self._cached_classes("train")
        decoded = {}
        for split in SPLITS:  # train first: its classes label the test split
            if split in missing:
                decoded[split] = self._decode_split(split, train_classes if split == "test" else None)
                if split == "train":
                    train_classes = decoded[split][2]
        if len(decoded) == 2 and tuple(decoded["train"][0].shape[1:]) != tuple(decoded["test"][0].shape[1:]):
            tr, te = decoded["train"][0], decoded["test"][0]
            raise DataUnavailableError(f"the test images of {self.local_root or self.hub_name} are {hw(te)} but the "
                                       f"training images are {hw(tr)}: pass image_size to resize both")
        if "train" in decoded:  # refused before anything is written
            self.check_val_size(len(decoded["train"][0]), self.local_root or self.hub_name)
            self.check_crop_padding(self.crop_padding, self.padding_mode, min(decoded["train"][0].shape[-2:]))
        make_folder(self.cache_path)
        for split, (images, labels, classes) in decoded.items():
            blob = {"images": images, "labels": labels, "classes": list(classes)}
            write_cache(self.cache_path / f"{split}.pt", lambda tmp, blob=blob: torch.save(blob, tmp))
        out.update(decoded)
        return out

    def _cached_classes(self, split: str) -> Optional[List[str]]:
        blob = load_cached(self.cache_path / f"{split}.pt", cached_split_ok, mmap=True)
        return None if blob is None else list(blob["classes"])

    def compute_stats(self, train_images: torch.Tensor, classes: Sequence[str]):
        mean, std = channel_stats(train_images)
        is_full_cifar = (len(train_images) == 50_000 and list(classes) == list(CIFAR10_CLASSES)
                         and tuple(train_images.shape[1:]) == (3, 32, 32))
        if self.check_stats and is_full_cifar:
            for got, known, what in ((mean, CIFAR10_MEAN, "mean"), (std, CIFAR10_STD, "std")):
                if max(abs(a - b) for a, b in zip(got, known)) > CIFAR10_STATS_TOL:
                    raise DataUnavailableError(
                        f"CIFAR-10 training {what} {tuple(round(v, 4) for v in got)} differs from the known {known} "
                        f"by more than {CIFAR10_STATS_TOL}: the decoded data is wrong (channel order, scaling or "
                        f"content)")
        return mean, std

    # -- Lightning hooks
    def prepare_data(self):
        self.resolve_source()
        if self.source_used != "synthetic" and not all((self.cache_path / f"{s}.pt").is_file() for s in SPLITS):
            self.load_splits(SPLITS)

    def setup(self, stage: Optional[str] = None):
        if self.train_set is not None:
            return
        splits = self.load_splits(SPLITS)
        train_x, train_y, classes = splits["train"]
        test_x, test_y, test_classes = splits["test"]
        if list(test_classes) != list(classes):
            extra = [c for c in test_classes if c not in classes] or [c for c in classes if c not in test_classes]
            raise DataUnavailableError(f"the test split's classes {test_classes} differ from the training split's "
                                       f"{classes} (e.g. {extra[:1]}): labels would not match")
        if tuple(test_x.shape[1:]) != tuple(train_x.shape[1:]):
            raise DataUnavailableError(f"test images {tuple(test_x.shape[1:])} and training images "
                                       f"{tuple(train_x.shape[1:])} differ in size: pass image_size")
        where = "the synthetic training split" if self.source_used == "synthetic" else self.local_root or self.hub_name
        self.check_val_size(len(train_x), where)
        self.check_crop_padding(self.crop_padding, self.padding_mode, min(train_x.shape[-2:]))
        self.classes, self.num_classes = list(classes), len(classes)
        self.image_size, self.channels = int(train_x.shape[-1]), int(train_x.shape[1])
        self.mean, self.std = self.compute_stats(train_x, classes)
        val_idx, train_idx = seeded_split(len(train_x), [self.val_size, len(train_x) - self.val_size], self.seed)
        train_idx, val_idx = train_idx.sort().values, val_idx.sort().values
        self.train_set = ImageTensorDataset(train_x, train_y, train_idx)
        self.val_set = ImageTensorDataset(train_x, train_y, val_idx)
        self.test_set = ImageTensorDataset(test_x, test_y)
        self.transform = BatchTransform(self.mean, self.std, self.augment, self.crop_padding, self.padding_mode)
        self.hparams["source_used"] = self.source_used

    def _collate(self, train: bool) -> ClassificationCollate:
        return ClassificationCollate(self.transform, train, self.seed, self.return_index)

    def train_dataloader(self):
        self.setup("fit")
        return self.train_loader(self.train_set, self._collate(True))

    def val_dataloader(self):
        self.setup("fit")
        return self.eval_loader(self.val_set, self._collate(False))

    def test_dataloader(self):
        self.setup("test")
        return self.eval_loader(self.test_set, self._collate(False))
