"""LRA ListOps (Tay et al., ICLR 2021): nested MIN / MAX / MED / SM expressions over digits, 10 classes (the
value), up to 2,000 tokens.

    dm = ListOpsDataModule(data_source="generated")     # or data_dir="~/lra_release/listops-1000"
    dm.prepare_data(); dm.setup("fit")   # batches: input_ids (B, L <= 2000), mask, labels, index

Sources: "local" reads the release's basic_{train,val,test}.tsv (listops_format.py); "generated" draws the
same task with our own generator (listops_generator.py: the release's settings, 96,000 / 2,000 / 2,000
expressions of 501..1,999 tokens, from `data_seed`), about 11 s on one core once, then cached
(benchmarks/results/listops_generation.md); "auto" takes a local copy under `data_dir`, else generates.
"synthetic" is a small generated set of short expressions (21..99 tokens) for tests and smoke runs, drawn in
memory.

Tokens: a fixed vocabulary of 16 (listops_format.py: 0 padding, the four operators, ']', the digits);
parentheses in the release's text are dropped, as LRA's input pipeline drops them. An expression is never cut
(half an expression has no value): with `seq_len` below an expression's length, a local file's longer
expressions are dropped (counted in `dropped`), and the generator draws only expressions of at most seq_len
tokens, so the split sizes stay as asked. The generated data depend on `data_seed` alone, not on `seed`
(which orders the training batches), so runs with different seeds train on the same data, as on the
release's files.

Caches: <cache_dir>/lra-listops/<source>-<key>/{train,val,test}.pt (tokens uint8, offsets, labels), read back
memory-mapped; key = settings_key(reader or generator VERSION, the files' path/size/mtime or the generator's
seed, sizes and tree settings).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from utils.checks import check_int, check_int_list

from . import listops_generator as generator
from .common import DataUnavailableError, SourcedDataModule, load_cached, make_folder, settings_key, write_cache
from .listops_format import FILES, ORIGIN, PAD_ID, VOCAB_SIZE, read_tsv, split_ok
from .text_batches import PadCollate, TokenSequences

log = logging.getLogger(__name__)

READER_VERSION = 1  # of the local reader and the cache layout: bump when either changes
SPLITS = ("train", "val", "test")
# where a copy may sit under data_dir: the folder itself, the release's listops-1000/, and the release's path
FOLDERS = ("", "listops-1000", "lra_release/listops-1000", "lra_release/lra_release/listops-1000")
RELEASE = generator.TreeSettings()  # 501..1,999 tokens, depth 10, up to 10 arguments
SYNTHETIC = generator.TreeSettings(min_length=20, max_length=100)


class ListOpsDataModule(SourcedDataModule):
    """LRA ListOps: one expression per example, 10 classes; see the module docstring."""

    name = "LRA ListOps"
    local_hint = (f"{', '.join(FILES.values())} in <data-dir> or its listops-1000/ or lra_release/listops-1000/; "
                  f"they come from {ORIGIN}")
    sources = ("auto", "generated", "local", "synthetic")
    num_classes = 10
    pad_id = PAD_ID
    vocab_size = VOCAB_SIZE

    def __init__(self, data_source: str = "auto", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, seq_len: int = 2000, data_seed: int = 0,
                 generated_sizes: Sequence[int] = (96000, 2000, 2000),
                 synthetic_sizes: Sequence[int] = (2000, 200, 200)):
        super().__init__(data_source=data_source, data_dir=data_dir, cache_dir=cache_dir, batch_size=batch_size,
                         num_workers=num_workers, seed=seed)
        self.seq_len = check_int("seq_len", seq_len)
        self.data_seed = check_int("data_seed", data_seed, low=0)
        self.generated_sizes = _three_sizes("generated_sizes", generated_sizes)
        self.synthetic_sizes = _three_sizes("synthetic_sizes", synthetic_sizes)
        if self.data_source in ("generated", "synthetic"):
            self.tree_settings()  # a seq_len too short for any expression is refused now, not at setup
        self.dropped: Dict[str, int] = {}  # per split: expressions longer than seq_len left out (local files)
        self.train_set = self.val_set = self.test_set = None
        self.save_hyperparameters(ignore=["data_dir", "cache_dir", "num_workers"])

    # -- source discovery
    def find_local(self, data_dir: Path) -> Optional[Path]:
        for sub in FOLDERS:
            folder = data_dir / sub if sub else data_dir
            present = {name: (folder / name).is_file() for name in FILES.values()}
            if all(present.values()):
                return folder
            if any(present.values()):  # a partial copy: name what is missing rather than "no copy found"
                missing = " and ".join(name for name, ok in present.items() if not ok)
                raise DataUnavailableError(f"{folder} lacks {missing} beside the other LRA ListOps files; they "
                                           f"come from {ORIGIN}")
        return None

    def tree_settings(self) -> generator.TreeSettings:
        """The generator's settings for the source: the release's (or the synthetic set's), with the longest
        expression drawn capped at seq_len tokens."""
        base = SYNTHETIC if self.data_source == "synthetic" else RELEASE
        longest = min(base.max_length, self.seq_len + 1)  # max_length is exclusive
        if longest < base.min_length + 2:
            raise ValueError(f"seq_len must be at least {base.min_length + 1} for the {self.data_source} ListOps "
                             f"expressions ({base.min_length + 1}..{base.max_length - 1} tokens), got {self.seq_len}")
        return generator.TreeSettings(base.min_length, longest, base.max_depth, base.max_args)

    # -- caches
    @property
    def cache_path(self) -> Path:
        if self.source_used == "local":
            root = self.local_root.resolve()
            files = [(name, (root / name).stat().st_size, (root / name).stat().st_mtime_ns) for name in FILES.values()]
            key = settings_key(version=READER_VERSION, root=str(root), files=files)
        else:
            key = settings_key(version=generator.VERSION, layout=READER_VERSION, seed=self.data_seed,
                               sizes=self.generated_sizes, trees=self.tree_settings())
        return self.cache_dir / "lra-listops" / f"{self.source_used}-{key}"

    def _build(self) -> Dict[str, Dict[str, torch.Tensor]]:
        if self.source_used == "local":
            return {split: read_tsv(self.local_root / FILES[split]) for split in SPLITS}
        sizes = self.generated_sizes
        log.info("generating LRA ListOps (%s expressions, data_seed %d) into %s; about 11 s on one core, once", "/".join(map(str, sizes)), self.data_seed, self.cache_path)
        made = generator.generate_splits(self.data_seed, sizes, self.tree_settings())
        return {split: {key: made[split][key] for key in ("tokens", "offsets", "labels")} for split in SPLITS}

    # -- lightning hooks
    def prepare_data(self) -> None:
        """Read or generate the splits once and cache them."""
        if self.resolve_source() == "synthetic":
            return
        cache = self.cache_path
        if all((cache / f"{split}.pt").is_file() for split in SPLITS):
            return
        packed = self._build()
        make_folder(cache)
        for split in SPLITS:
            write_cache(cache / f"{split}.pt", lambda tmp, p=packed[split]: torch.save(p, tmp))

    def _load(self) -> Dict[str, Dict[str, torch.Tensor]]:
        if self.resolve_source() == "synthetic":
            made = generator.generate_splits(self.data_seed, self.synthetic_sizes, self.tree_settings())
            return {split: made[split] for split in SPLITS}
        self.prepare_data()  # a no-op once cached; prepare_data runs on one process per node, so be safe alone
        out = {}
        for split in SPLITS:
            path = self.cache_path / f"{split}.pt"
            packed = load_cached(path, split_ok, mmap=True)
            if packed is None:  # damaged, and removed by load_cached: built again, once
                self.prepare_data()
                packed = load_cached(path, split_ok, mmap=True)
                if packed is None:
                    raise DataUnavailableError(f"the cache file {path} cannot be read back even after rebuilding "
                                               f"it: check the disk, or choose another --cache-dir")
            out[split] = packed
        return out

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        packed = self._load()
        sets = []
        for split in SPLITS:
            p = packed[split]
            lengths = p["offsets"][1:] - p["offsets"][:-1]
            fits = lengths <= self.seq_len
            self.dropped[split] = int((~fits).sum())
            if self.dropped[split]:
                where = self.local_root / FILES[split] if self.local_root is not None else split
                if not fits.any():
                    raise DataUnavailableError(f"every expression in {where} is longer than seq_len {self.seq_len} "
                                               f"tokens (the shortest has {int(lengths.min())}): raise seq_len")
                log.warning("%s: %d of %d expressions are longer than seq_len %d tokens and are left out (an "
                            "expression is never cut)", where, self.dropped[split], len(fits), self.seq_len)
            index = torch.nonzero(fits).flatten() if self.dropped[split] else None
            sets.append(TokenSequences(p["tokens"], p["offsets"], p["labels"], index))
        self.train_set, self.val_set, self.test_set = sets
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


def _three_sizes(name: str, sizes) -> tuple:
    out = check_int_list(name, sizes)
    if len(out) != 3:
        raise ValueError(f"{name} must be three positive integers (train, validation, test), got {sizes!r}")
    return out
