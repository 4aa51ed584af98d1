"""What every DataModule here shares: where the data comes from, where caches go, seeded splits.

Source selection (`data_source`):
    "local"      a copy on disk in the data set's official layout under `data_dir`
    "hub"        download through the `datasets` library (needs network)
    "synthetic"  generated data with the same shapes and fields, for tests and smoke runs
    "auto"       local when a copy is found under `data_dir`, else the hub; when neither works it
                 stops with one message naming the three ways forward. It never falls back to
                 synthetic data silently.
The source actually used is kept in `source_used` (and `hparams`) so runs can record it.

A `data_dir` that was given but does not exist, or is a file, stops at once with a sentence saying so
(under "auto" too: a mistyped path must not turn into a hub download).

Caches (tokenizers, tokenized arrays, decoded images) live under `cache_dir`, default
$ATTENTION_SUITE_CACHE or ~/.cache/attention-suite, keyed by the data and the settings. Every cache file is
written to a temporary name and renamed into place (`write_cache`, over utils.io.atomic_write), and read back
through `load_cached`, which drops a file that no longer loads or checks (truncated on disk, copied half-way)
so it is rebuilt.

Bad arguments are a ValueError at construction naming the argument and the value (utils.checks); what is
found wrong with the data itself (a missing or empty split, a split too short for the settings) is a
DataUnavailableError naming the file or folder and what is expected, raised before any cache is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

import lightning as L
import torch
from torch.utils.data import DataLoader

from utils.checks import check_choice, check_int
from utils.io import atomic_write

from .resumable import ResumableTraining

log = logging.getLogger(__name__)

DATA_SOURCES = ("auto", "generated", "hub", "local", "synthetic")


class DataUnavailableError(RuntimeError):
    """No source could provide usable data: the message names what was tried or found wrong and the ways
    forward."""


# -------------------------------------------------------------------------------------------- arguments
def check_folder_arg(name: str, value) -> Optional[Path]:
    """A folder argument as a Path (None or "" for none). Only its type is checked here, and that an existing
    path is a folder; whether it holds the data is the source resolution's business."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path to a folder, got {value!r}")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(value)!r} is a file; expected a folder")
    return path


# ------------------------------------------------------------------------------------------ cache files
def make_folder(path: Path) -> Path:
    """mkdir -p, with a failure (permissions, a file in the way) as one sentence naming the folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataUnavailableError(f"cannot create the cache folder {path} ({type(e).__name__}: {e.strerror or e}); "
                                   f"choose another --cache-dir") from e
    return path


def cache_write_error(path: Path, e: OSError) -> DataUnavailableError:
    return DataUnavailableError(f"cannot write the cache file {path} ({type(e).__name__}: {e.strerror or e}): free "
                                f"some space or choose another --cache-dir")


def write_cache(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path` that then replaces it (utils.io.atomic_write): never a
    half-written cache file, none left behind when writing fails, and a failure (a full disk) is one sentence
    naming the file."""
    try:
        atomic_write(path, write)
    except OSError as e:
        raise cache_write_error(path, e) from e


def load_cached(path: Path, check: Callable[[Any], bool] = lambda obj: True, mmap: bool = False):
    """A torch cache file's content, or None when it is missing, does not load, or fails `check`; a bad file
    is removed, so the caller rebuilds it instead of training on (or crashing over) a damaged cache."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, weights_only=True, mmap=mmap)
        if check(obj):
            return obj
        why = "its content does not match what was written"
    except Exception as e:  # noqa: BLE001 - a damaged zip/pickle raises RuntimeError, EOFError, UnpicklingError...
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    log.warning("cache file %s is damaged (%s): rebuilding it", path, why)
    path.unlink(missing_ok=True)
    return None


def default_cache_dir() -> Path:
    return Path(os.environ.get("ATTENTION_SUITE_CACHE", Path.home() / ".cache" / "attention-suite"))


def settings_key(**settings) -> str:
    """A short stable hash of the settings a cache entry depends on."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def seeded_split(n: int, fractions_or_sizes: Sequence[float], seed: int) -> Tuple[torch.Tensor, ...]:
    """Disjoint index tensors covering range(n), drawn with a seeded generator (same seed, same split).
    Sizes may be given as counts (ints) or fractions (floats summing to at most 1; the last part
    takes the rest when they sum to 1)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    if all(isinstance(f, int) for f in fractions_or_sizes):
        sizes = list(fractions_or_sizes)
    else:
        sizes = [int(round(f * n)) for f in fractions_or_sizes]
        if abs(sum(fractions_or_sizes) - 1.0) < 1e-9:
            sizes[-1] = n - sum(sizes[:-1])
    if sum(sizes) > n or any(s < 0 for s in sizes):
        raise ValueError(f"split sizes {sizes} do not fit {n} items")
    out, start = [], 0
    for s in sizes:
        out.append(perm[start : start + s])
        start += s
    return tuple(out)


class SourcedDataModule(ResumableTraining, L.LightningDataModule):
    """Base class: validates `data_source`, resolves it once, records what was used.

    Subclasses implement:
        name                     a short data set name for messages ("IMDB")
        find_local(data_dir)     -> Optional[Path]: the local copy's root if one is there
        hub_available()          -> bool: whether a hub download can be attempted (cheap check)
        local_hint               one line: the expected local layout
        sources                  the data sources it offers (a subset of DATA_SOURCES): "hub" for a download
                                 through `datasets`, "generated" for a generator of its own (LRA's ListOps,
                                 Pathfinder); "auto" tries local, then generated, then the hub
    and use `self.source_used` / `self.local_root` in prepare_data / setup. One whose loaders all shard
    themselves across processes says so with `shards_itself`.
    """

    name = "data"
    local_hint = ""
    sources = ("auto", "hub", "local", "synthetic")

    def __init__(self, data_source: str = "auto", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 batch_size: int = 64, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.data_source = check_choice("data_source", data_source, self.sources)
        self.batch_size = check_int("batch_size", batch_size)
        self.num_workers = check_int("num_workers", num_workers, low=0)
        self.seed = check_int("seed", seed, low=0, high=2**32 - 1)  # the range Lightning's seed_everything takes
        # data_dir is checked when the source is resolved: a DataModule that never reads it does not care
        if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
            raise ValueError(f"data_dir must be a path to a folder, got {data_dir!r}")
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self.cache_dir = check_folder_arg("cache_dir", cache_dir) or default_cache_dir()
        self.local_root: Optional[Path] = None
        self.source_used: Optional[str] = None

    # -- to implement
    def find_local(self, data_dir: Path) -> Optional[Path]:
        raise NotImplementedError

    def hub_available(self) -> bool:
        try:
            import datasets  # noqa: F401 - optional at run time, and slow: imported only to ask
        except ImportError:
            return False
        return os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("1", "true", "True") and os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True")

    # -- shared
    def resolve_source(self) -> str:
        """Decide (once) which source to use; raise DataUnavailableError with the ways forward."""
        if self.source_used is not None:
            return self.source_used
        if self.data_source == "synthetic":
            self.source_used = "synthetic"
            return self.source_used
        if self.data_source in ("local", "auto") and self.data_dir is not None:
            # a path given but wrong is a mistake to report, under "auto" too, not a reason to try the hub
            if not self.data_dir.exists():
                raise DataUnavailableError(f"data_dir {self.data_dir} does not exist; expected a folder with "
                                           f"{self.name} ({self.local_hint})")
            self.local_root = self.find_local(self.data_dir)
            if self.local_root is not None:
                self.source_used = "local"
                return self.source_used
            if not self.data_dir.is_dir():
                raise DataUnavailableError(f"data_dir {self.data_dir} is a file; expected a folder with "
                                           f"{self.name} ({self.local_hint})")
        if self.data_source == "local":
            if self.data_dir is None:
                raise DataUnavailableError(f"data_source='local' needs a data_dir holding {self.name}; expected {self.local_hint}")
            raise DataUnavailableError(
                f"no local copy of {self.name} found in {self.data_dir}; expected {self.local_hint}"
            )
        if self.data_source == "generated" or (self.data_source == "auto" and "generated" in self.sources):
            self.source_used = "generated"
            return self.source_used
        if self.data_source == "hub" or (self.data_source == "auto" and "hub" in self.sources and self.hub_available()):
            self.source_used = "hub"
            return self.source_used
        raise self.unavailable("no local copy was found" + (" and the hub cannot be reached" if "hub" in self.sources else ""))

    def unavailable(self, what: str) -> DataUnavailableError:
        where = f" in {self.data_dir}" if self.data_dir is not None else ""
        hub = "allow the download (network access for the `datasets` hub), " if "hub" in self.sources else ""
        return DataUnavailableError(
            f"{self.name} is not available: {what}{where}. Ways forward: point --data-dir at a local copy "
            f"({self.local_hint}), {hub}or choose --data-source synthetic."
        )

    def hub_load(self, loader: Callable[[], object]):
        """Run a hub download; a failure becomes the one clear DataUnavailableError."""
        try:
            return loader()
        except Exception as e:  # noqa: BLE001 - network, missing config, offline mode: all the same to a user
            raise self.unavailable(f"the hub download failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e

    @property
    def shards_itself(self) -> bool:
        """True when ALL of this module's loaders (train, val, test) shard themselves across processes, so the
        Trainer must not inject its DistributedSampler (the runner sets use_distributed_sampler=not
        dm.shards_itself). False here: the evaluation loaders rely on Lightning's sampler. The training loader
        shards itself either way (an EpochBatches, which Lightning leaves alone as a DistributedSampler)."""
        return False

    def loader_kwargs(self) -> dict:
        """What every loader of the module shares. Evaluation loaders keep their order; the training
        loader is `self.resumable_loader(...)` (datamodules/resumable.py), which also puts its position in
        the module's state_dict, so checkpoints carry it. Each loader has a generator of its own, so making
        an iterator (which draws the workers' base seed) never touches the global RNG that dropout uses."""
        return dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                    pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(self.seed))

    def eval_loader(self, dataset, collate_fn=None) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=collate_fn, **self.loader_kwargs())

    def train_loader(self, dataset, make_batch) -> DataLoader:
        """Batches of `batch_size` in a new order each epoch (seed, epoch), `make_batch(items, key)` making each."""
        return self.shuffled_loader(dataset, self.batch_size, self.seed, make_batch, **self.loader_kwargs())
