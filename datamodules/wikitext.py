"""WikiText-2 / WikiText-103 language modelling (Merity et al., 2016) as a Lightning DataModule.

Usage:
    from datamodules.wikitext import WikiTextDataModule

    dm = WikiTextDataModule(name="wikitext-2", data_source="auto", data_dir="~/data/wikitext-2",
                            tokenizer="word", seq_len=256, batch_size=32)
    dm.prepare_data()           # reads/downloads the text, builds the vocabulary, caches int32 streams
    dm.setup("fit")             # loads the cached streams, cuts them into blocks
    dm.vocab_size, dm.tokens_per_split, dm.source_used
    x, y = next(iter(dm.train_dataloader()))   # (batch, seq_len) LongTensors, y = x shifted by one
    print(dm.decode(x[0]))

Variants: `name` "wikitext-2" | "wikitext-103"; `raw=False` reads the tokenized files
(`wiki.{train,valid,test}.tokens`, rare words already replaced by `<unk>`), `raw=True` the raw ones
(`wiki.{train,valid,test}.raw`).

Sources (see common.py): a local folder holding the three official files, either directly
(`<data_dir>/wiki.train.tokens`) or in a subfolder named like the official zips
(`<data_dir>/wikitext-2/wiki.train.tokens`, `<data_dir>/wikitext-2-raw/wiki.train.raw`); the hub
(`datasets.load_dataset("Salesforce/wikitext", "wikitext-2-v1")` and the -raw-/-103- configs); or
synthetic text drawn from a small seeded Markov chain with repeated segments (about a quarter of
the lines copy one of the three lines before them: learnable, by attention beyond a bigram model;
deterministic by `seed`).

Lines and tokenizers ("word", "bpe"): wikitext_tokens.py.

Blocks: each split's stream is cut into contiguous blocks of `seq_len + 1` tokens taken every
`seq_len` tokens (one token of overlap), so that every token after the first is a target exactly
once; item i = (input_ids = block[:-1], targets = block[1:]). The trailing remainder that does
not fill a block is dropped. All blocks are full, so no padding is needed and `pad_id` is None.
The training blocks are shuffled by a generator seeded with `seed`; valid/test keep stream order.

Cache: `<cache_dir>/wikitext/<key>/` with `vocab.json` (word) or `tokenizer.json` (bpe), the
streams `{train,valid,test}.pt` (int32) and `meta.json` (written last: a complete entry). The key
hashes the variant, the tokenizer settings and the source (a local copy's path, sizes, mtimes;
the hub config; the synthetic settings), so a second run reuses the entry. The entry is written as a
temporary folder renamed into place whole (not file by file with utils.io.atomic_write: its files belong
together, and a process that loses the race to another finishing the same entry keeps the winner's). An
entry that no longer reads back (a stream truncated or of the wrong length, unreadable JSON) is removed and
built again.

Refused with a sentence naming the file: a split that holds no text (an empty wiki.valid.tokens
would otherwise train without validation) and a split shorter than one block of seq_len + 1 tokens.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, default_collate

from utils.checks import check_bool, check_choice, check_int

from .common import DataUnavailableError, SourcedDataModule, cache_write_error, load_cached, make_folder, settings_key
from .wikitext_tokens import BPEVocab, WordVocab, normalize_line, read_lines, split_text

log = logging.getLogger(__name__)

NAMES = ("wikitext-2", "wikitext-103")
TOKENIZERS = ("word", "bpe")
SPLITS = ("train", "valid", "test")
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
HUB_PATH = "Salesforce/wikitext"
CACHE_FORMAT = 1


class LMBlocks(Dataset):
    """Contiguous next-token blocks over one token stream: block i = stream[i*L : i*L + L + 1].
    Items are (input_ids, targets), or (input_ids, targets, i) with `return_index`."""

    def __init__(self, stream: torch.Tensor, seq_len: int, return_index: bool = False):
        self.stream, self.seq_len, self.return_index = stream, seq_len, return_index
        self.n = max(0, (len(stream) - 1) // seq_len)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        block = self.stream[i * self.seq_len : (i + 1) * self.seq_len + 1].long()
        return (block[:-1], block[1:], i) if self.return_index else (block[:-1], block[1:])


def stack_blocks(items, key=None):
    """A training batch of LMBlocks items (nothing random in it, so the BatchKey is not needed)."""
    return default_collate(items)


SYNTHETIC_GENERATOR = "markov+copies-1"  # part of the cache key: bump when markov_lines changes


def markov_lines(n_tokens: int, vocab: int, seed: int, branching: int = 3, copy_prob: float = 0.25,
                 copy_window: int = 3) -> List[str]:
    """Lines of words "w0".."w{vocab-1}" from a seeded Markov chain whose states each lead to
    `branching` successors with fixed, unequal probabilities (so the next word is well predictable);
    about `n_tokens` tokens counting one end-of-line per line.

    Repeated segments: with probability `copy_prob` a line is instead an exact copy of one of the
    `copy_window` lines before it (the chain resumes where it stopped). Once a copy has begun, its
    words are fully predictable from the context, which only a model that looks back (attention)
    can use: a bigram model cannot."""
    g = torch.Generator().manual_seed(seed)
    succ = torch.stack([torch.randperm(vocab, generator=g)[:branching] for _ in range(vocab)])
    probs = torch.rand(vocab, branching, generator=g) + 0.2
    probs = (probs ** 3) / (probs ** 3).sum(1, keepdim=True)
    succ, cum = succ.tolist(), probs.cumsum(1).tolist()
    n_lines = n_tokens // 4 + 1  # enough draws: lines are at least 4 words + 1 end-of-line long
    lengths = torch.randint(4, 17, (n_lines,), generator=g).tolist()
    draws = iter(torch.rand(n_tokens + 16, generator=g).tolist())
    lines, total = [], 0
    state = int(torch.randint(vocab, (1,), generator=g))
    cg = torch.Generator().manual_seed(seed + 7919)  # the copies' own draws: the chain's stay as they were
    for length in lengths:
        if total >= n_tokens:
            break
        if lines and torch.rand((), generator=cg).item() < copy_prob:
            back = int(torch.randint(1, min(copy_window, len(lines)) + 1, (), generator=cg))
            lines.append(lines[-back])
            total += len(lines[-1].split()) + 1
            continue
        words = []
        for _ in range(length):
            words.append(f"w{state}")
            u, row = next(draws), cum[state]
            state = succ[state][next((k for k, c in enumerate(row) if u < c), branching - 1)]
        lines.append(" " + " ".join(words) + " ")
        total += length + 1
    return lines


class WikiTextDataModule(SourcedDataModule):
    """WikiText-2/-103 next-token blocks; see the module docstring."""

    def __init__(self, name: str = "wikitext-2", raw: bool = False, tokenizer: str = "word",
                 bpe_vocab_size: int = 8192, seq_len: int = 256,
                 synthetic_tokens: int = 40_000, synthetic_vocab: int = 64,
                 data_source: str = "auto", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, return_index: bool = False):
        """`return_index=True`: batches are (input_ids, targets, index), index = the blocks' positions in
        their split (for checks such as which blocks each process saw)."""
        super().__init__(data_source=data_source, data_dir=data_dir, cache_dir=cache_dir,
                         batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_choice("name", name, NAMES)
        check_choice("tokenizer", tokenizer, TOKENIZERS)
        seq_len, bpe_vocab_size = check_int("seq_len", seq_len), check_int("bpe_vocab_size", bpe_vocab_size, low=257)
        synthetic_tokens = check_int("synthetic_tokens", synthetic_tokens, low=10)
        synthetic_vocab = check_int("synthetic_vocab", synthetic_vocab, low=4)
        self.save_hyperparameters()
        self.variant, self.raw, self.tokenizer = name, check_bool("raw", raw), tokenizer
        self.bpe_vocab_size, self.seq_len = bpe_vocab_size, seq_len
        self.synthetic_tokens, self.synthetic_vocab = synthetic_tokens, synthetic_vocab
        self.return_index = check_bool("return_index", return_index)
        self.ext = "raw" if self.raw else "tokens"
        self.hub_config = f"{name}{'-raw' if self.raw else ''}-v1"
        # for the base class's messages
        self.name = f"WikiText-{name.split('-')[1]}{' (raw)' if self.raw else ''}"
        self.local_hint = (f"the files wiki.train.{self.ext}, wiki.valid.{self.ext}, wiki.test.{self.ext} "
                           f"in the folder or in a {self.folder_names()[0]}/ subfolder")
        self.pad_id: Optional[int] = None  # blocks are always full: nothing to pad
        self.tokens_per_split: Dict[str, int] = {}
        self.cache_path: Optional[Path] = None
        self._vocab = None
        self.train_set = self.val_set = self.test_set = None

    # -- sources
    def folder_names(self) -> List[str]:
        return [f"{self.variant}-raw", self.variant] if self.raw else [self.variant]

    def find_local(self, data_dir: Path) -> Optional[Path]:
        for root in [data_dir] + [data_dir / n for n in self.folder_names()]:
            if all((root / f"wiki.{s}.{self.ext}").is_file() for s in SPLITS):
                return root
        return None

    def _source_identity(self) -> dict:
        if self.source_used == "local":
            files = [self.local_root / f"wiki.{s}.{self.ext}" for s in SPLITS]
            return {"root": str(self.local_root.resolve()),
                    "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]}
        if self.source_used == "hub":
            return {"hub": HUB_PATH, "config": self.hub_config}
        return {"synthetic_tokens": self.synthetic_tokens, "synthetic_vocab": self.synthetic_vocab, "seed": self.seed,
                "generator": SYNTHETIC_GENERATOR}

    def _read_split_lines(self) -> Dict[str, List[str]]:
        if self.source_used == "local":
            out = {s: read_lines(self.local_root / f"wiki.{s}.{self.ext}") for s in SPLITS}
            for s in SPLITS:  # an empty valid/test file would train without validation, or test nothing
                if not any(out[s]):
                    raise DataUnavailableError(f"{self.split_where(s)} holds no text: it is empty or truncated, and "
                                               f"every split of {self.name} needs some")
            return out
        if self.source_used == "hub":
            import datasets  # lazily: only a hub download needs it, and it takes about 1 s to import

            ds = self.hub_load(lambda: datasets.load_dataset(HUB_PATH, self.hub_config))
            try:
                out = {s: [normalize_line(t) for t in ds[HUB_SPLITS[s]]["text"]] for s in SPLITS}
            except (KeyError, TypeError) as e:
                raise self.unavailable(f"the hub copy lacks a split or its text column ({e})") from e
            for s in SPLITS:
                if not any(out[s]):
                    raise self.unavailable(f"{self.split_where(s)} holds no text")
            return out
        sizes = {"train": self.synthetic_tokens, "valid": max(10, self.synthetic_tokens // 10),
                 "test": max(10, self.synthetic_tokens // 10)}
        lines = markov_lines(sum(sizes.values()), self.synthetic_vocab, self.seed)
        out, start = {}, 0
        for s in SPLITS:  # consecutive stretches of one chain run, cut at line ends
            stop, count = start, 0
            while stop < len(lines) and (count < sizes[s] or s == "test"):
                count += len(lines[stop].split()) + 1
                stop += 1
            out[s], start = lines[start:stop], stop
        return out

    def split_where(self, split: str) -> str:
        """Where a split comes from, for messages: its file, the hub split, or the synthetic split."""
        if self.source_used == "local":
            return str(self.local_root / f"wiki.{split}.{self.ext}")
        if self.source_used == "hub":
            return f"the {HUB_SPLITS[split]} split of {HUB_PATH} ({self.hub_config})"
        return f"the synthetic {split} split"

    def check_blocks(self, counts: Dict[str, int]) -> None:
        """Every split must fill at least one block of seq_len + 1 tokens: a shorter one gives no batch at all,
        and the run would train, validate or test on nothing without saying so."""
        for s in SPLITS:
            if (counts[s] - 1) // self.seq_len < 1:
                raise DataUnavailableError(
                    f"{self.split_where(s)} gives {counts[s]:,} {self.tokenizer} tokens, fewer than one block of "
                    f"seq_len + 1 = {self.seq_len + 1:,}: lower seq_len (at most {max(counts[s] - 1, 0):,} here) "
                    f"or use a larger copy")

    # -- cache
    def _cache_key(self) -> str:
        return settings_key(format=CACHE_FORMAT, variant=self.variant, raw=self.raw, tokenizer=self.tokenizer,
                            bpe_vocab_size=self.bpe_vocab_size if self.tokenizer == "bpe" else None,
                            source=self.source_used, identity=self._source_identity())

    def _cache_folder(self) -> Path:
        self.resolve_source()
        return self.cache_dir / "wikitext" / self._cache_key()

    def prepare_data(self):
        """Read or download the text, build the vocabulary, write the cache entry (once)."""
        folder = self._cache_folder()
        if (folder / "meta.json").is_file():
            return
        lines = self._read_split_lines()
        vocab = (WordVocab.build(lines["train"]) if self.tokenizer == "word"
                 else BPEVocab.build(lines["train"], self.bpe_vocab_size))
        streams = {s: torch.tensor(vocab.encode_lines(lines[s]), dtype=torch.int32) for s in SPLITS}
        counts = {s: len(ids) for s, ids in streams.items()}
        self.check_blocks(counts)  # before anything is written: a refused run leaves no cache behind
        make_folder(folder.parent)
        tmp = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=folder.parent))
            vocab.save(tmp)
            for s in SPLITS:
                torch.save(streams[s], tmp / f"{s}.pt")
            meta = {"variant": self.variant, "raw": self.raw, "tokenizer": self.tokenizer, "source": self.source_used,
                    "vocab_size": len(vocab), "tokens_per_split": counts, "lines_per_split": {s: len(lines[s]) for s in SPLITS}}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                os.replace(tmp, folder)
            except OSError:  # another process finished the same entry first
                if not (folder / "meta.json").is_file():
                    raise
        except OSError as e:
            raise cache_write_error(folder, e) from e
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _read_entry(self, folder: Path, splits: Sequence[str]):
        """(meta, vocabulary, {split: stream}) of a cache entry, or None when a part is missing or damaged
        (the damaged stream file is removed by load_cached)."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
            counts = {s: int(meta["tokens_per_split"][s]) for s in SPLITS}
            vocab = WordVocab.load(folder) if self.tokenizer == "word" else BPEVocab.load(folder)
        except Exception as e:  # noqa: BLE001 - missing file, bad JSON, a tokenizer file cut short: all rebuilt
            log.warning("cache entry %s is damaged (%s: %s): rebuilding it", folder, type(e).__name__, e)
            return None
        streams = {}
        for s in splits:
            streams[s] = load_cached(folder / f"{s}.pt", lambda t, n=counts[s]: (
                isinstance(t, torch.Tensor) and t.dtype == torch.int32 and t.dim() == 1 and len(t) == n))
            if streams[s] is None:
                return None
        return meta, vocab, streams

    def setup(self, stage: Optional[str] = None):
        folder = self._cache_folder()
        if not (folder / "meta.json").is_file():
            self.prepare_data()
        splits = [s for s, stages in (("train", (None, "fit")), ("valid", (None, "fit", "validate")),
                                      ("test", (None, "test"))) if stage in stages]
        entry = self._read_entry(folder, splits)
        if entry is None:  # damaged: built again from the data, once
            shutil.rmtree(folder, ignore_errors=True)
            self.prepare_data()
            entry = self._read_entry(folder, splits)
            if entry is None:
                raise DataUnavailableError(f"the cache entry {folder} cannot be read back even after rebuilding it: "
                                           f"check the disk, or choose another --cache-dir")
        meta, vocab, streams = entry
        self.cache_path = folder
        if self._vocab is None:
            self._vocab = vocab
        self.tokens_per_split = dict(meta["tokens_per_split"])
        self.check_blocks(self.tokens_per_split)  # an entry built for a shorter seq_len
        self.hparams["source_used"] = self.source_used

        def load(split):
            return LMBlocks(streams[split], self.seq_len, self.return_index)

        if "train" in streams:
            self.train_set = load("train")
        if "valid" in streams:
            self.val_set = load("valid")
        if "test" in streams:
            self.test_set = load("test")
        msg = (f"{self.name} [{self.source_used}, {self.tokenizer}]: vocabulary {self.vocab_size:,}; tokens "
               + ", ".join(f"{s} {n:,}" for s, n in self.tokens_per_split.items())
               + f"; blocks of {self.seq_len} + 1")
        log.info(msg)
        rank_zero_info(msg)

    # -- vocabulary
    @property
    def vocab(self):
        if self._vocab is None:
            raise RuntimeError("call setup() first: the vocabulary is built in prepare_data and loaded in setup")
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def eos_id(self) -> int:
        return self.vocab.eos_id

    def encode(self, text: str) -> List[int]:
        """Ids of `text` tokenized as the files are: each complete line followed by `<eos>`; an
        unterminated last piece (a prompt) gets no `<eos>`."""
        lines, tail = split_text(text)
        ids = self.vocab.encode_lines(lines)
        if tail is not None:
            ids.extend(self.vocab.encode_piece(tail))
        return ids

    def decode(self, ids) -> str:
        """Text of a sequence of ids (list or tensor); `<eos>` becomes a line break."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        eos, out, piece = self.eos_id, [], []
        for i in ids:
            if i == eos:
                out.append(self.vocab.decode_piece(piece) + "\n")
                piece = []
            else:
                piece.append(int(i))
        if piece:
            out.append(self.vocab.decode_piece(piece))
        return "".join(out)

    # -- loaders
    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() with the matching stage first")
        return self.train_loader(dataset, stack_blocks) if shuffle else self.eval_loader(dataset)

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, shuffle=False)
