"""LRA Retrieval (Tay et al., ICLR 2021): pairs of ACL Anthology Network papers, label 1 when one cites the
other; two byte-level documents of up to 4,000 bytes each (lra_benchmarks/matching/configs: max_length 4000).

    dm = RetrievalDataModule(data_dir="~/lra_release/tsv_data")
    dm.prepare_data(); dm.setup("fit")   # input_ids, mask (B, 2, L <= 4000), labels (B,), index (B,)

Sources: "local" reads the release's new_aan_pairs.{train,eval,test}.tsv (aan_pairs.py); nothing else can give
the real task, since its text can be neither redistributed nor regenerated. "synthetic" is a small generated
pair task with the same shapes (lra_retrieval_synthetic.py). "auto" takes a local copy under `data_dir` and
otherwise stops with one sentence naming the files and where they come from: never synthetic data silently.

Splits are the release's: train, eval (validation), test. Tokens: byte + 1 (LRA's byte encoder; 0 is padding,
vocabulary 257), each document cut at `max_len` bytes. Caches: <cache_dir>/lra-retrieval/<key>/{train,val,
test}.pt (bytes, offsets, labels), key = settings_key(reader VERSION, the files' path/size/mtime, max_len),
read back memory-mapped; a split is checked (five fields a line, 0/1 labels, both classes to train on)
before its cache is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from utils.checks import check_int, check_int_list

from .aan_pairs import AAN_FILES, AAN_ORIGIN, pairs_ok, read_pairs
from .common import DataUnavailableError, SourcedDataModule, load_cached, make_folder, settings_key, write_cache
from .lra_retrieval_synthetic import synthetic_pairs
from .pair_batches import PairCollate, PairSequences

VERSION = 1  # of the reader and the cache layout: bump when either changes
SPLITS = ("train", "val", "test")
# where a copy may sit under data_dir: the release's own path, and dataset_setup.sh's lra_data/aan
FOLDERS = ("", "tsv_data", "lra_release/tsv_data", "lra_release/lra_release/tsv_data", "aan")


class RetrievalDataModule(SourcedDataModule):
    """LRA Retrieval: two byte documents per example, 2 classes; see the module docstring."""

    name = "LRA Retrieval (AAN)"
    local_hint = (f"{', '.join(AAN_FILES.values())} in <data-dir> or its tsv_data/ or lra_release/tsv_data/; "
                  f"{AAN_ORIGIN}")
    sources = ("auto", "local", "synthetic")
    num_classes = 2
    pad_id = 0
    vocab_size = 257  # padding 0, bytes 1 .. 256

    def __init__(self, data_source: str = "auto", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, max_len: int = 4000,
                 synthetic_sizes: Sequence[int] = (2000, 500, 500)):
        super().__init__(data_source=data_source, data_dir=data_dir, cache_dir=cache_dir, batch_size=batch_size,
                         num_workers=num_workers, seed=seed)
        self.max_len = self.seq_len = check_int("max_len", max_len)
        sizes = check_int_list("synthetic_sizes", synthetic_sizes)
        if len(sizes) != 3:
            raise ValueError(f"synthetic_sizes must be three positive integers (train, validation, test), "
                             f"got {synthetic_sizes!r}")
        self.synthetic_sizes = sizes
        self.train_set = self.val_set = self.test_set = None
        self.save_hyperparameters(ignore=["data_dir", "cache_dir", "num_workers"])

    # -- source discovery
    def find_local(self, data_dir: Path) -> Optional[Path]:
        for sub in FOLDERS:
            folder = data_dir / sub if sub else data_dir
            present = {name: (folder / name).is_file() for name in AAN_FILES.values()}
            if all(present.values()):
                return folder
            if any(present.values()):  # a partial copy: name what is missing rather than "no copy found"
                missing = " and ".join(name for name, ok in present.items() if not ok)
                raise DataUnavailableError(f"{folder} lacks {missing} beside the other LRA retrieval files: "
                                           f"{AAN_ORIGIN}")
        return None

    # -- caches
    @property
    def cache_path(self) -> Path:
        root = self.local_root.resolve()
        files = [(name, (root / name).stat().st_size, (root / name).stat().st_mtime_ns) for name in AAN_FILES.values()]
        key = settings_key(version=VERSION, root=str(root), files=files, max_len=self.max_len)
        return self.cache_dir / "lra-retrieval" / key

    def _read_split(self, split: str) -> Dict[str, torch.Tensor]:
        path = self.local_root / AAN_FILES[split]
        packed = read_pairs(path, self.max_len)
        if split == "train" and len(packed["labels"].unique()) < 2:
            raise DataUnavailableError(f"{path} holds pairs of label {int(packed['labels'][0])} only: training "
                                       f"needs both classes")
        return packed

    # -- lightning hooks
    def prepare_data(self) -> None:
        """Read each split not cached yet, check it and cache it (one split in memory at a time)."""
        if self.resolve_source() == "synthetic":
            return
        cache = self.cache_path
        for split in SPLITS:
            path = cache / f"{split}.pt"
            if not path.is_file():
                packed = self._read_split(split)
                make_folder(cache)
                write_cache(path, lambda tmp, packed=packed: torch.save(packed, tmp))

    def _load(self) -> Dict[str, Dict[str, torch.Tensor]]:
        if self.resolve_source() == "synthetic":
            return {split: synthetic_pairs(n, self.max_len, self.seed, split)
                    for split, n in zip(SPLITS, self.synthetic_sizes)}
        self.prepare_data()  # a no-op once cached; prepare_data runs on one process per node, so be safe alone
        out = {}
        for split in SPLITS:
            path = self.cache_path / f"{split}.pt"
            packed = load_cached(path, pairs_ok, mmap=True)
            if packed is None:  # damaged, and removed by load_cached: built again, once
                self.prepare_data()
                packed = load_cached(path, pairs_ok, mmap=True)
                if packed is None:
                    raise DataUnavailableError(f"the cache file {path} cannot be read back even after rebuilding "
                                               f"it: check the disk, or choose another --cache-dir")
            out[split] = packed
        return out

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        packed = self._load()
        self.train_set, self.val_set, self.test_set = (
            PairSequences(packed[s]["bytes"], packed[s]["offsets"], packed[s]["labels"]) for s in SPLITS)
        self.hparams["source_used"] = self.source_used

    # -- loaders
    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self.train_loader(self.train_set, PairCollate(self.pad_id))

    def val_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self.eval_loader(self.val_set, PairCollate(self.pad_id))

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self.eval_loader(self.test_set, PairCollate(self.pad_id))
