"""CIFAR-10 (and any image-folder data set) as uint8 tensor caches with torch-only augmentation.

Sources (see `SourcedDataModule`):
    local      one of three layouts under `data_dir` (searched there and one folder down):
                 * `cifar-10-batches-py/` - the official python pickle batches (data_batch_1..5, test_batch,
                   batches.meta); MD5s are verified (see `verify_checksums`)
                 * an image folder `<root>/{train,test}/<class>/*.jpg|png` (class = folder name, sorted); this
                   also serves ImageNet-100-style folders at other resolutions (give `image_size` when the
                   images differ in size: shorter side resized, then centre-cropped)
                 * `train.tar.gz` + `test.tar.gz` holding such folders (e.g. `CIFAR-10-images/train/<class>/`)
    hub        `datasets.load_dataset("uoft-cs/cifar10")` (columns "img", "label")
    synthetic  random images with class-dependent patterns, deterministic by seed

Every real source is decoded ONCE into a uint8 tensor cache (N, 3, H, W) + int64 labels, one file per split,
under `cache_dir/cifar10/<settings_key>/{train,test}.pt`, and reused on later runs (a cache file that no longer
loads or checks is decoded again). A copy with a missing or empty batch, or an empty class folder, is refused
with a sentence naming it, before anything is cached. A tar.gz is streamed
straight into that cache (its members are never written out as 60,000 small files): the decoded cache is the
one-time extraction, and the tar is not opened again once the cache exists.

Augmentation runs PER BATCH in the DataLoader's collate function, vectorised torch ops on the whole batch
(`BatchTransform`). Each training batch has its own random generator, seeded by `seed`, the epoch and the
batch's position in it (datamodules/resumable.py): runs with the same seed see the same augmented batches
whatever the number of workers, and a run resumed mid-epoch sees the ones it would have seen.
    "standard"  random crop with padding (`crop_padding`, default 4, `padding_mode` "reflect" or "zeros")
                + horizontal flip
    "strong"    random-resized-crop-like scale/aspect jitter (affine_grid/grid_sample) + flip + colour jitter
                (brightness, contrast, saturation) + random erasing (erased area set to 0 after normalisation)
    "none"      normalisation only
Normalisation uses per-channel mean/std computed from the training cache (all training images, before the
validation split); for the full CIFAR-10 training set they are checked against the known values
(0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616) within `CIFAR10_STATS_TOL`.

Batches: (images float32 (B, 3, H, W) normalised, labels int64 (B,)).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from utils.checks import check_bool, check_choice, check_int

from .common import (DataUnavailableError, SourcedDataModule, load_cached, make_folder, seeded_split, settings_key,
                     write_cache)
from .resumable import BatchKey

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# JPEG (quality ~75) copies shift the statistics by up to a few 1e-3; 0.01 leaves room and still catches a
# wrong channel order, a wrong scale or a per-image std.
CIFAR10_STATS_TOL = 0.01

# Official MD5s of the python batches (the torchvision reference list).
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
# An official batch holds 10,000 images of 3,072 bytes: a file at least this large claims to be one.
OFFICIAL_BATCH_MIN_BYTES = 10_000 * 3072

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "test")
AUGMENTS = ("none", "standard", "strong")
# what a truncated or damaged .tar.gz raises while it is streamed
TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


class ChecksumError(DataUnavailableError):
    """A file named like an official CIFAR-10 batch does not have the official content."""


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- decoding
def decode_image(data: bytes, image_size: Optional[int]) -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 (3, H, W); with image_size: shorter side resized, then centre-cropped."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return pil_to_tensor(im, image_size)


def pil_to_tensor(im, image_size: Optional[int]) -> torch.Tensor:
    from PIL import Image

    im = im.convert("RGB")
    if image_size is not None and im.size != (image_size, image_size):
        w, h = im.size
        s = image_size / min(w, h)
        nw, nh = max(image_size, round(w * s)), max(image_size, round(h * s))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
    t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return t.view(im.size[1], im.size[0], 3).permute(2, 0, 1).contiguous()


def _hw(t: torch.Tensor) -> str:
    return f"{t.shape[-2]}x{t.shape[-1]}"


def stack_images(images: List[torch.Tensor], where: str, names: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Stack equally sized images; otherwise one DataUnavailableError naming an odd image and both sizes."""
    first = tuple(images[0].shape)
    for i, t in enumerate(images):
        if tuple(t.shape) != first:
            name = (lambda k: names[k]) if names is not None else (lambda k: f"{where}[{k}]")
            raise DataUnavailableError(
                f"{name(i)} is {_hw(t)} (height x width) but {name(0)} is {_hw(images[0])}: the images in {where} "
                f"differ in size, pass image_size to resize them all to one size")
    return torch.stack(images)


def _labelled(items: List[Tuple[str, str, bytes]], classes: Optional[Sequence[str]], image_size, where):
    """items: (class name, file name, bytes) -> images, labels, classes (sorted folder names; `classes`, the
    training split's, when given: a class folder not among them is an error)."""
    if not items:
        raise DataUnavailableError(f"no images ({', '.join(IMAGE_EXTS)}) found in {where}")
    classes = list(classes) if classes is not None else sorted({c for c, _, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for c, _, _ in items} - set(index))
    if unknown:
        raise DataUnavailableError(
            f"{where} has the class folder {unknown[0]!r}{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''} "
            f"that the training split does not have (its classes: {', '.join(classes)})")
    items = sorted(items, key=lambda it: (index[it[0]], it[1]))
    names = [f"{where}/{c}/{n}" for c, n, _ in items]
    images = []
    for name, (_, _, data) in zip(names, items):
        try:
            images.append(decode_image(data, image_size))
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a damaged file
            raise DataUnavailableError(f"{name} is not a readable image ({type(e).__name__}: {e})") from e
    images = stack_images(images, where, names)
    labels = torch.tensor([index[c] for c, _, _ in items], dtype=torch.int64)
    return images, labels, classes


def empty_class_error(folder, split_dir) -> DataUnavailableError:
    """An empty class folder would silently drop a class (or leave it without a single test image)."""
    return DataUnavailableError(f"the class folder {folder} holds no images ({', '.join(IMAGE_EXTS)}): every class "
                                f"folder of {split_dir} needs at least one; remove it or fill it")


def read_folder_split(split_dir: Path, classes, image_size):
    items = []
    for d in sorted(x for x in split_dir.iterdir() if x.is_dir()):
        files = [p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_EXTS]
        if not files and not d.name.startswith("."):
            raise empty_class_error(d, split_dir)
        items.extend((d.name, p.name, p.read_bytes()) for p in files)
    return _labelled(items, classes, image_size, str(split_dir))


def read_tar_split(tar_path: Path, classes, image_size):
    """Stream `<anything>/<class>/<file>.jpg` members of a tar.gz straight into tensors."""
    items, dirs, split_roots, filled = [], set(), set(), set()
    try:
        with tarfile.open(tar_path, "r:*") as tf:
            for m in tf:
                if m.isdir():
                    dirs.add(Path(m.name))
                if not m.isfile() or Path(m.name).suffix.lower() not in IMAGE_EXTS:
                    continue
                parts = Path(m.name).parts
                if len(parts) < 2 or any(p.startswith(".") for p in parts):
                    continue
                items.append((parts[-2], parts[-1], tf.extractfile(m).read()))
                filled.add(Path(m.name).parent)
                split_roots.add(Path(m.name).parent.parent)
    except TAR_ERRORS as e:
        raise corrupt_archive(tar_path, e) from e
    # a class folder is a folder beside the ones holding images; one without any is empty
    empty = sorted(d for d in dirs - filled if d.parent in split_roots and not d.name.startswith("."))
    if empty:
        raise empty_class_error(f"{empty[0]} in {tar_path}", f"{empty[0].parent} in {tar_path}")
    return _labelled(items, classes, image_size, str(tar_path))


def corrupt_archive(path: Path, e: BaseException) -> DataUnavailableError:
    return DataUnavailableError(f"{path} is truncated or corrupt and cannot be read to the end "
                                f"({type(e).__name__}: {e}): download it again")


def _load_pickle(path: Path) -> dict:
    """One pickled dict of the official python batches; a damaged file is one clear error naming it."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        if not isinstance(d, dict):
            raise TypeError(f"a {type(d).__name__}, not a dict")
        return d
    except Exception as e:  # noqa: BLE001 - unpickling garbage raises almost anything
        raise DataUnavailableError(f"{path} is corrupt: it is not a pickled CIFAR-10 batch "
                                   f"({type(e).__name__}: {str(e)[:120]}); download cifar-10-python.tar.gz again") from e


def read_pickle_split(root: Path, split: str, image_size, verify: str):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    meta_path = root / "batches.meta"
    if meta_path.is_file():
        check_md5(meta_path, verify, is_meta=True)
        meta = _load_pickle(meta_path)
        if b"label_names" not in meta:
            raise DataUnavailableError(f"{meta_path} is corrupt: it has no b'label_names' entry")
        classes = [c.decode() if isinstance(c, bytes) else c for c in meta[b"label_names"]]
    else:
        classes = list(CIFAR10_CLASSES)
    datas, labels = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise DataUnavailableError(f"{path} is missing: the official cifar-10-batches-py holds {', '.join(names)}")
        check_md5(path, verify)
        d = _load_pickle(path)
        if b"data" not in d or b"labels" not in d:
            raise DataUnavailableError(f"{path} is corrupt: it lacks the b'data' or b'labels' entry of a CIFAR-10 batch")
        data = torch.as_tensor(d[b"data"]).to(torch.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(d[b"labels"]) != data.shape[0] or data.shape[0] == 0:
            raise DataUnavailableError(f"{path} is corrupt: b'data' should be (N, 3072) uint8 with N labels, N >= 1, "
                                       f"got {tuple(data.shape)} and {len(d[b'labels'])} labels")
        datas.append(data.view(-1, 3, 32, 32))
        labels.append(torch.as_tensor(list(d[b"labels"]), dtype=torch.int64))
    images, labels = torch.cat(datas), torch.cat(labels)
    if image_size is not None and image_size != 32:
        images = F.interpolate(images.float(), size=(image_size, image_size), mode="bicubic",
                               align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return images, labels, classes


def check_md5(path: Path, verify, is_meta: bool = False) -> None:
    """verify=True: check every file with an official name; "auto": only the batches whose size says they
    claim to be official full batches (>= 10,000 images), so hand-made small batches in the same format load;
    False: never."""
    expected = CIFAR10_MD5.get(path.name)
    if expected is None or verify is False:
        return
    if verify == "auto" and (is_meta or path.stat().st_size < OFFICIAL_BATCH_MIN_BYTES):
        return
    got = md5sum(path)
    if got != expected:
        raise ChecksumError(
            f"checksum mismatch for {path}: MD5 {got}, the official CIFAR-10 {path.name} has {expected}. "
            f"The file is corrupt or not the official one: download cifar-10-python.tar.gz again "
            f"(or pass verify_checksums=False for a hand-made file in the same format).")


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


def folder_fingerprint(folder: Path) -> Tuple[int, int, int]:
    """(files, total bytes, newest mtime) of the class folders' images: cheap, and changes when they change."""
    n = size = newest = 0
    for d in sorted(x for x in folder.iterdir() if x.is_dir()):
        for e in os.scandir(d):
            if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTS:
                st = e.stat()
                n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return n, size, newest


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


class BatchTransform:
    """uint8 (B, C, H, W) -> augmented, normalised float32 batch; all ops vectorised over the batch."""

    def __init__(self, mean, std, augment: str = "standard", crop_padding: int = 4, padding_mode: str = "reflect"):
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if padding_mode not in ("reflect", "zeros"):
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


# --------------------------------------------------------------------------------------------- module
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
        check_choice("padding_mode", padding_mode, ("reflect", "zeros"))
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
            import datasets

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
            raise DataUnavailableError(f"the test images of {self.local_root or self.hub_name} are {_hw(te)} but the "
                                       f"training images are {_hw(tr)}: pass image_size to resize both")
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
