"""Where CIFAR-10 images come from on disk, decoded to uint8 tensors (N, 3, H, W) + int64 labels:
the official python pickle batches (with MD5 checks), an image folder `<root>/{train,test}/<class>/*.png`
(also ImageNet-100-style folders, resized with `image_size`), and train/test .tar.gz files holding such
folders, streamed member by member, never extracted. Anything found wrong is one DataUnavailableError
naming the file and what is expected.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from PIL import Image

from .common import DataUnavailableError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

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
    with Image.open(io.BytesIO(data)) as im:
        return pil_to_tensor(im, image_size)


def pil_to_tensor(im, image_size: Optional[int]) -> torch.Tensor:
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


def hw(t: torch.Tensor) -> str:
    return f"{t.shape[-2]}x{t.shape[-1]}"


def stack_images(images: List[torch.Tensor], where: str, names: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Stack equally sized images; otherwise one DataUnavailableError naming an odd image and both sizes."""
    first = tuple(images[0].shape)
    for i, t in enumerate(images):
        if tuple(t.shape) != first:
            name = (lambda k: names[k]) if names is not None else (lambda k: f"{where}[{k}]")
            raise DataUnavailableError(
                f"{name(i)} is {hw(t)} (height x width) but {name(0)} is {hw(images[0])}: the images in {where} "
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


# ----------------------------------------------------------------------------- image folders and tar.gz
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


def folder_fingerprint(folder: Path) -> Tuple[int, int, int]:
    """(files, total bytes, newest mtime) of the class folders' images: cheap, and changes when they change."""
    n = size = newest = 0
    for d in sorted(x for x in folder.iterdir() if x.is_dir()):
        for e in os.scandir(d):
            if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTS:
                st = e.stat()
                n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return n, size, newest


# ------------------------------------------------------------------------------ official pickle batches
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
