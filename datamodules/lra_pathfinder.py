"""LRA Pathfinder (32 x 32 = 1,024 pixel tokens) and Path-X (128 x 128 = 16,384), 2 classes: are the two discs
on the same dashed path? Linsley et al., NeurIPS 2018; Tay et al., ICLR 2021 (the "hard" set, contour length 14).

    dm = PathfinderDataModule(resolution=32)          # or 128 for Path-X; 64 and 256 as LRA released them
    dm.prepare_data(); dm.setup("fit")   # batches: input_ids (B, resolution^2) = grey value + 1, mask, labels, index

Sources: "local" reads the release's pathfinder{resolution}/curv_contour_length_14/ (pathfinder_release.py),
decoded once into a uint8 cache read memory-mapped, <cache_dir>/lra-pathfinder/<key>/{pixels,labels}.npy with
key = settings_key(reader VERSION, folder, resolution, the metadata files' names/sizes/mtimes); "generated"
makes each image when a batch asks for it (pathfinder_generator.py: a pure function of data_seed, split and
index, so nothing is stored), `generated_sizes` of them per split, LRA's 160,000 / 20,000 / 20,000 by default;
"synthetic" is the generator's first `synthetic_sizes` images per split, made once at setup and held in memory
(same resolution, so the model's length is the real one). "auto" takes a local copy under `data_dir`, else
generates.

Splits of a local copy: LRA takes the first 80 % / next 10 % / last 10 % of the TFDS-built set (whose order
TFDS shuffles by key hash); here the images the metadata lists, empty files left out as LRA's pipeline does,
are split 80 / 10 / 10 by a permutation drawn from `data_seed` (seeded_split), as the PyTorch ports do with
their own random split. Data (which images, which split) depends on data_seed alone, not on `seed`, which
orders the training batches, so runs with different seeds see the same data.

Tokens: grey value + 1 (0 is padding, never used: every image fills its resolution^2 tokens), row-major as LRA
flattens them; vocabulary 257. No augmentation, no normalisation.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from utils.checks import check_bool, check_choice, check_int, check_int_list

from . import pathfinder_generator as generator
from .common import DataUnavailableError, SourcedDataModule, make_folder, seeded_split, settings_key, write_cache
from .pathfinder_release import READER_VERSION, decode_into, find_release, read_metadata, release_hint
from .text_batches import PadCollate

log = logging.getLogger(__name__)

RESOLUTIONS = (32, 64, 128, 256)  # LRA's releases; 32 is Pathfinder, 128 Path-X
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # LRA's [:80%], [80%:90%], [90%:]
PIXEL_VOCAB = 257  # padding 0, grey values 1 .. 256


class PixelSequences(Dataset):
    """Images flattened to uint8 (N, L) (an array or a memory map) + labels; items are LRA tokens (grey + 1)."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, indices: Optional[np.ndarray] = None):
        self.pixels, self.labels = pixels, labels
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, positions: List[int]) -> List[dict]:
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        ids = torch.from_numpy(np.asarray(self.pixels[rows], dtype=np.int64)) + 1  # one read for the batch
        return [{"input_ids": ids[k], "label": int(self.labels[r]), "index": int(p)}
                for k, (r, p) in enumerate(zip(rows, positions))]


class GeneratedPathfinder(Dataset):
    """`size` images of `split`, each made when asked for (a batch at once through __getitems__)."""

    def __init__(self, split: str, size: int, data_seed: int, resolution: int, antialias: bool = True):
        self.split, self.size, self.data_seed = split, size, data_seed
        self.resolution, self.antialias = resolution, antialias

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, positions: List[int]) -> List[dict]:
        idx = np.asarray(positions, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.size):
            raise IndexError(f"index out of range for {self.size} generated {self.split} images")
        made = generator.generate(idx, self.split, self.data_seed, self.resolution, self.antialias)
        ids = torch.from_numpy(made.images.reshape(len(idx), -1).astype(np.int64)) + 1
        return [{"input_ids": ids[k], "label": int(made.labels[k]), "index": int(p)} for k, p in enumerate(idx)]


class PathfinderDataModule(SourcedDataModule):
    """LRA Pathfinder / Path-X as pixel sequences, 2 classes; see the module docstring."""

    name = "LRA Pathfinder"
    sources = ("auto", "generated", "local", "synthetic")
    num_classes = 2
    pad_id = 0
    vocab_size = PIXEL_VOCAB

    def __init__(self, data_source: str = "auto", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 batch_size: int = 256, num_workers: int = 0, seed: int = 0, resolution: int = 32, data_seed: int = 0,
                 generated_sizes: Sequence[int] = (160_000, 20_000, 20_000),
                 synthetic_sizes: Sequence[int] = (256, 64, 64), antialias: bool = True):
        super().__init__(data_source=data_source, data_dir=data_dir, cache_dir=cache_dir, batch_size=batch_size,
                         num_workers=num_workers, seed=seed)
        self.resolution = check_choice("resolution", resolution, RESOLUTIONS)
        self.seq_len = self.resolution * self.resolution
        self.data_seed = check_int("data_seed", data_seed, low=0)
        self.generated_sizes = _three_sizes("generated_sizes", generated_sizes)
        self.synthetic_sizes = _three_sizes("synthetic_sizes", synthetic_sizes)
        self.antialias = check_bool("antialias", antialias)
        self.local_hint = release_hint(self.resolution)
        self.left_out = 0  # local copy: empty image files left out (as LRA leaves them out)
        self.train_set = self.val_set = self.test_set = None
        self.save_hyperparameters(ignore=["data_dir", "cache_dir", "num_workers"])

    # -- source discovery
    def find_local(self, data_dir: Path) -> Optional[Path]:
        return find_release(data_dir, self.resolution)

    # -- the local copy's cache
    @property
    def cache_path(self) -> Path:
        root = self.local_root.resolve()
        files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted((root / "metadata").glob("*.npy"))]
        key = settings_key(version=READER_VERSION, root=str(root), resolution=self.resolution, files=files)
        return self.cache_dir / "lra-pathfinder" / key

    def _cached(self) -> Optional[tuple]:
        """(pixels memory map, labels) from the cache when both files load and agree, else None (removed).
        Labels are -1 for the images left out."""
        pixels_path, labels_path = self.cache_path / "pixels.npy", self.cache_path / "labels.npy"
        if not (pixels_path.is_file() and labels_path.is_file()):
            return None
        try:
            pixels = np.load(pixels_path, mmap_mode="r")
            labels = np.load(labels_path)
            if pixels.dtype == np.uint8 and pixels.shape == (len(labels), self.seq_len) and (labels >= 0).any():
                return pixels, labels
        except (OSError, ValueError, EOFError):
            pass
        log.warning("the cache in %s is damaged: rebuilding it", self.cache_path)
        pixels_path.unlink(missing_ok=True)
        labels_path.unlink(missing_ok=True)
        return None

    def _build_cache(self) -> None:
        """Decode every listed image straight into the cache file (a memory map: Path-X's 200,000 images take
        3.3 GB), then write the labels, -1 for the empty files left out."""
        folder, cache = self.local_root, self.cache_path
        paths, labels = read_metadata(folder)
        log.info("decoding %d Pathfinder images from %s into %s, once", len(paths), folder, cache)
        make_folder(cache)
        present = np.ones(len(paths), bool)

        def decode(tmp: str) -> None:
            pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), self.seq_len))
            present[:] = decode_into(folder, paths, self.resolution, pixels)
            pixels.flush()
            del pixels

        write_cache(cache / "pixels.npy", decode)
        labels = np.where(present, labels, -1)
        left_out = int((~present).sum())
        if left_out:
            log.warning("%d of %d Pathfinder image files in %s are empty and left out, as LRA leaves them out",
                        left_out, len(paths), folder)
        if len(np.unique(labels[present])) < 2:
            raise DataUnavailableError(f"the images listed in {folder / 'metadata'} all have label "
                                       f"{int(labels[present][0]) if present.any() else '-'}: training needs both "
                                       f"classes")
        write_cache(cache / "labels.npy", lambda tmp: _save(tmp, labels))

    # -- lightning hooks
    def prepare_data(self) -> None:
        """Decode a local copy once into its cache; generated and synthetic images need nothing stored."""
        if self.resolve_source() == "local" and self._cached() is None:
            self._build_cache()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        source = self.resolve_source()
        if source == "generated":
            self.train_set, self.val_set, self.test_set = (
                GeneratedPathfinder(split, n, self.data_seed, self.resolution, self.antialias)
                for split, n in zip(SPLITS, self.generated_sizes))
        elif source == "synthetic":
            sets = []
            for split, n in zip(SPLITS, self.synthetic_sizes):
                made = generator.generate(np.arange(n), split, self.data_seed, self.resolution, self.antialias)
                sets.append(PixelSequences(made.images.reshape(n, -1), made.labels))
            self.train_set, self.val_set, self.test_set = sets
        else:
            cached = self._cached()
            if cached is None:  # prepare_data runs on one process per node: be safe alone
                self._build_cache()
                cached = self._cached()
                if cached is None:
                    raise DataUnavailableError(f"the cache in {self.cache_path} cannot be read back even after "
                                               f"rebuilding it: check the disk, or choose another --cache-dir")
            pixels, labels = cached
            kept = np.nonzero(labels >= 0)[0]
            self.left_out = len(labels) - len(kept)
            parts = seeded_split(len(kept), list(SPLIT_FRACTIONS), self.data_seed)
            self.train_set, self.val_set, self.test_set = (PixelSequences(pixels, labels, kept[p.numpy()])
                                                           for p in parts)
        self.hparams["source_used"] = self.source_used

    # -- loaders
    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self.train_loader(self.train_set, PadCollate(self.pad_id))

    def val_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self.eval_loader(self.val_set, PadCollate(self.pad_id))

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self.eval_loader(self.test_set, PadCollate(self.pad_id))


def _save(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as fh:  # a file, not a name: np.save would append .npy to the temporary name
        np.save(fh, array)


def _three_sizes(name: str, sizes) -> tuple:
    out = check_int_list(name, sizes)
    if len(out) != 3:
        raise ValueError(f"{name} must be three positive integers (train, validation, test), got {sizes!r}")
    return out
