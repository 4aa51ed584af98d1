"""What every DataModule here shares: where the data comes from, where caches go, seeded splits.

Source selection (`data_source`):
    "local"      a copy on disk in the data set's official layout under `data_dir`
    "hub"        download through the `datasets` library (needs network)
    "synthetic"  generated data with the same shapes and fields, for tests and smoke runs
    "auto"       local when a copy is found under `data_dir`, else the hub; when neither works it
                 stops with one message naming the three ways forward. It never falls back to
                 synthetic data silently.
The source actually used is kept in `source_used` (and `hparams`) so runs can record it.

Caches (tokenizers, tokenized arrays, decoded images) live under `cache_dir`, default
$ATTENTION_SUITE_CACHE or ~/.cache/attention-suite, keyed by the data and the settings.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import lightning as L
import torch

DATA_SOURCES = ("auto", "hub", "local", "synthetic")


class DataUnavailableError(RuntimeError):
    """No source could provide the data: the message says what was tried and the ways forward."""


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


class SourcedDataModule(L.LightningDataModule):
    """Base class: validates `data_source`, resolves it once, records what was used.

    Subclasses implement:
        name                     a short data set name for messages ("IMDB")
        find_local(data_dir)     -> Optional[Path]: the local copy's root if one is there
        hub_available()          -> bool: whether a hub download can be attempted (cheap check)
        local_hint               one line: the expected local layout
    and use `self.source_used` / `self.local_root` in prepare_data / setup.
    """

    name = "data"
    local_hint = ""

    def __init__(self, data_source: str = "auto", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 batch_size: int = 64, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if data_source not in DATA_SOURCES:
            raise ValueError(f"data_source must be one of {', '.join(DATA_SOURCES)}, got {data_source!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        self.data_source = data_source
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.local_root: Optional[Path] = None
        self.source_used: Optional[str] = None
        self._train_gen = torch.Generator().manual_seed(seed + 1)  # shuffling; saved in checkpoints (state_dict)

    # -- to implement
    def find_local(self, data_dir: Path) -> Optional[Path]:
        raise NotImplementedError

    def hub_available(self) -> bool:
        try:
            import datasets  # noqa: F401
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
            self.local_root = self.find_local(self.data_dir)
            if self.local_root is not None:
                self.source_used = "local"
                return self.source_used
        if self.data_source == "local":
            if self.data_dir is None:
                raise DataUnavailableError(f"data_source='local' needs a data_dir holding {self.name}; expected {self.local_hint}")
            if not self.data_dir.exists():
                raise DataUnavailableError(f"data_dir {self.data_dir} does not exist; expected a folder holding {self.local_hint}")
            raise DataUnavailableError(
                f"no local copy of {self.name} found in {self.data_dir}; expected {self.local_hint}"
            )
        if self.data_source == "hub" or (self.data_source == "auto" and self.hub_available()):
            self.source_used = "hub"
            return self.source_used
        raise self.unavailable("no local copy was found and the hub cannot be reached")

    def unavailable(self, what: str) -> DataUnavailableError:
        where = f" in {self.data_dir}" if self.data_dir is not None else ""
        return DataUnavailableError(
            f"{self.name} is not available: {what}{where}. Ways forward: point --data-dir at a local copy "
            f"({self.local_hint}), allow the download (network access for the `datasets` hub), "
            f"or choose --data-source synthetic."
        )

    def hub_load(self, loader: Callable[[], object]):
        """Run a hub download; a failure becomes the one clear DataUnavailableError."""
        try:
            return loader()
        except Exception as e:  # noqa: BLE001 - network, missing config, offline mode: all the same to a user
            raise self.unavailable(f"the hub download failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e

    def loader_kwargs(self, shuffle: bool) -> dict:
        """The training loader draws from `_train_gen`, whose state checkpoints carry (so a resumed run
        sees the batches an uninterrupted one would); evaluation loaders get a fresh generator of their
        own and never touch it, nor the global RNG."""
        generator = self._train_gen if shuffle else torch.Generator().manual_seed(self.seed + 2)
        return dict(batch_size=self.batch_size, num_workers=self.num_workers, shuffle=shuffle, generator=generator,
                    persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def state_dict(self) -> dict:
        """Every torch.Generator of the module (shuffling, augmentation), saved in Lightning checkpoints."""
        return generator_states(self)

    def load_state_dict(self, state_dict: dict) -> None:
        load_generator_states(self, state_dict)


def generator_states(obj) -> dict:
    return {name: g.get_state() for name, g in vars(obj).items() if isinstance(g, torch.Generator)}


def load_generator_states(obj, states: dict) -> None:
    for name, state in states.items():
        g = getattr(obj, name, None)
        if isinstance(g, torch.Generator):
            g.set_state(state)
