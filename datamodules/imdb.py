"""IMDB movie-review sentiment (Maas et al., ACL 2011): 25,000 train + 25,000 test reviews, 2 classes.

Usage:
    from datamodules.imdb import IMDBDataModule

    dm = IMDBDataModule(data_dir="~/data", tokenizer="bpe", vocab_size=16000, max_len=512, batch_size=32)
    dm.prepare_data()            # find/download, train the tokenizer (train split only), tokenize: all cached
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    # batch["input_ids"] (B, L) long, batch["mask"] (B, L) bool (True = real token), batch["labels"] (B,) long
    # model: EncoderClassifier(vocab_size=dm.vocab_size, num_classes=dm.num_classes, max_len=dm.seq_len, ...)

Sources (`data_source`, see common.py): "local" reads the official aclImdb folder or tarball under `data_dir`
(imdb_readers.py); "hub" loads `stanfordnlp/imdb` through `datasets` (ratings are not in that copy: they read
-1); "synthetic" generates a long-range matching task (a key token early, a query token late; label = whether
they form a pair) that attention can learn and a bag of words cannot (deterministic by seed).

Tokenizers (`tokenizer`, imdb_tokenizers.py): "bpe" trained on the official train split only (never on test
text), `vocab_size` entries, lowercased by default; "byte" LRA-style byte level, vocabulary 259.

Caches under `<cache_dir>/imdb/<key>/` where key = settings_key(source, data identity, tokenizer,
vocab size, lowercase): `tokenizer.json` (bpe) and `tokens-L<max_len>[-cls].pt` (flat token ids +
offsets + labels + ratings for both splits). A second prepare/setup with the same settings reuses both.

Splits: validation is `val_fraction` of the official train split, drawn with `seeded_split(seed)`
(0 for none; a fraction too small to give one review is refused); test is the official test split.
A local copy must hold reviews of both classes in both splits: an empty or one-sided split is refused
with a sentence naming it, before anything is cached. A cached file that no longer loads is rebuilt.
Batches are padded dynamically to the longest sequence in the batch (at most `max_len`);
`bucket_by_length=True` groups similar lengths into batches to cut padding (text_batches.py); its loaders
then shard themselves across processes (`shards_itself`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from utils.checks import check_bool, check_choice, check_fraction, check_int

from .common import (
    DataUnavailableError,
    SourcedDataModule,
    load_cached,
    make_folder,
    seeded_split,
    settings_key,
    write_cache,
)
from .imdb_readers import TARBALL_NAMES, clean_review, read_aclimdb, tarball_has_aclimdb
from .imdb_tokenizers import BYTE_OFFSET, CLS_ID, PAD_ID, SPECIALS, ByteTokenizer, bpe_encode, train_bpe
from .text_batches import BucketBatchSampler, PadCollate, TokenSequences

TOKENIZERS = ("bpe", "byte")
HUB_NAME = "stanfordnlp/imdb"


class IMDBDataModule(SourcedDataModule):
    """IMDB sentiment (2 classes), BPE or byte-level tokens, dynamic padding; see the module docstring."""

    name = "IMDB"
    local_hint = ("the official aclImdb folder (<data-dir>/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt) "
                  "or aclImdb_v1.tar.gz in <data-dir>")
    num_classes = 2
    pad_id = PAD_ID

    def __init__(self, data_source: str = "auto", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 tokenizer: str = "bpe", vocab_size: int = 16000, lowercase: Optional[bool] = None,
                 max_len: int = 512, add_cls: bool = False, val_fraction: float = 0.1,
                 bucket_by_length: bool = False, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 synthetic_sizes: Sequence[int] = (2000, 500)):
        super().__init__(data_source=data_source, data_dir=data_dir, cache_dir=cache_dir,
                         batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_choice("tokenizer", tokenizer, TOKENIZERS)
        # checked whatever the tokenizer: the byte tokenizer ignores it, but a nonsense value is still a mistake
        vocab_size = check_int("vocab_size", vocab_size, low=len(SPECIALS) + 2)
        max_len = check_int("max_len", max_len)
        if check_bool("add_cls", add_cls) and max_len < 2:
            raise ValueError(f"max_len must be at least 2 with add_cls (the [CLS] token and one of the review), "
                             f"got {max_len!r}")
        val_fraction = check_fraction("val_fraction", val_fraction)
        if (not isinstance(synthetic_sizes, (tuple, list)) or len(synthetic_sizes) != 2
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in synthetic_sizes)):
            raise ValueError(f"synthetic_sizes must be two positive integers (train, test), got {synthetic_sizes!r}")
        self.tokenizer_kind = tokenizer
        self.lowercase = (tokenizer == "bpe") if lowercase is None else check_bool("lowercase", lowercase)
        self.max_len, self.seq_len, self.add_cls = max_len, max_len, add_cls
        self.val_fraction, self.bucket_by_length = val_fraction, check_bool("bucket_by_length", bucket_by_length)
        self.synthetic_sizes = tuple(int(s) for s in synthetic_sizes)
        # the BPE vocabulary may come out smaller than asked on tiny corpora: updated after training
        self.requested_vocab_size = vocab_size
        self.vocab_size = ByteTokenizer.vocab_size if tokenizer == "byte" else vocab_size
        self.tokenizer = None
        self.train_set = self.val_set = self.test_set = None
        if data_source == "synthetic":
            self.synthetic_pairs()  # its size requirements are known now: a ValueError here, not in setup
            self.split_sizes(self.synthetic_sizes[0], "the synthetic training split (synthetic_sizes[0])", ValueError)
        self.save_hyperparameters(ignore=["data_dir", "cache_dir", "num_workers"])

    # -- source discovery
    def find_local(self, data_dir: Path) -> Optional[Path]:
        for root in (data_dir / "aclImdb", data_dir, data_dir / "imdb" / "aclImdb"):
            if (root / "train" / "pos").is_dir() and (root / "test" / "pos").is_dir():
                return root
        for folder in (data_dir, data_dir / "imdb"):
            for name in TARBALL_NAMES:
                # an official name that cannot be read (None) is taken too: reading it names it as corrupt
                if (folder / name).is_file() and tarball_has_aclimdb(folder / name) is not False:
                    return folder / name
        for folder in (data_dir, data_dir / "imdb"):
            if folder.is_dir():
                for p in sorted(folder.glob("*.tar.gz")):
                    if p.name not in TARBALL_NAMES and tarball_has_aclimdb(p):
                        return p
        return None

    # -- caches
    def _data_identity(self) -> dict:
        if self.source_used == "local":
            p = self.local_root.resolve()
            st = p.stat()
            return {"path": str(p), "size": st.st_size if p.is_file() else None, "mtime_ns": st.st_mtime_ns}
        return {"hub": HUB_NAME}

    def cache_key(self) -> str:
        return settings_key(source=self.source_used, data=self._data_identity(), tokenizer=self.tokenizer_kind,
                            vocab_size=self.requested_vocab_size if self.tokenizer_kind == "bpe" else None,
                            lowercase=self.lowercase)

    @property
    def cache_path(self) -> Path:
        return self.cache_dir / "imdb" / self.cache_key()

    @property
    def tokenizer_path(self) -> Path:
        return self.cache_path / "tokenizer.json"

    @property
    def tokens_path(self) -> Path:
        return self.cache_path / f"tokens-L{self.max_len}{'-cls' if self.add_cls else ''}.pt"

    def split_sizes(self, n_train: int, where: str, error=DataUnavailableError):
        """(validation, training) review counts from the official training split's n_train reviews; a
        val_fraction that gives no validation review (or leaves no training review) is refused."""
        n_val = int(round(self.val_fraction * n_train))
        if self.val_fraction > 0 and n_val == 0:
            raise error(f"val_fraction {self.val_fraction} of the {n_train} reviews of {where} gives no validation "
                        f"review: raise it to at least {1 / n_train:.3g} or use a larger copy")
        if n_train - n_val < 1:
            raise error(f"val_fraction {self.val_fraction} of the {n_train} reviews of {where} leaves no training "
                        f"review: lower it or use a larger copy")
        return n_val, n_train - n_val

    # -- raw data
    def _check_raw(self, raw: Dict[str, Dict[str, list]], where: str) -> None:
        """Both classes in both splits: an empty split would train or test on nothing, a one-sided one on a
        single class."""
        for split in ("train", "test"):
            if not raw[split]["label"]:
                raise DataUnavailableError(f"{where} holds no reviews in its {split} split: expected "
                                           f"{split}/{{pos,neg}}/<id>_<rating>.txt files")
            for label, polarity in ((0, "neg"), (1, "pos")):
                if label not in raw[split]["label"]:
                    raise DataUnavailableError(f"{where} holds no {split}/{polarity} reviews: every split of IMDB "
                                               f"needs reviews of both classes ({split}/{polarity}/<id>_<rating>.txt)")
        self.split_sizes(len(raw["train"]["label"]), where)

    def _read_raw(self) -> Dict[str, Dict[str, list]]:
        if self.source_used == "local":
            raw = read_aclimdb(self.local_root)
            self._check_raw(raw, str(self.local_root))
            return raw

        def load():
            import datasets  # lazily: only a hub download needs it, and it takes about 1 s to import
            return datasets.load_dataset(HUB_NAME)

        ds = self.hub_load(load)
        raw = {}
        for split in ("train", "test"):
            d = ds[split]
            texts = [clean_review(t) for t in d["text"]]
            raw[split] = {"text": texts, "label": [int(x) for x in d["label"]], "rating": [-1] * len(texts),
                          "id": list(range(len(texts)))}
        self._check_raw(raw, f"the hub copy {HUB_NAME}")
        return raw

    def _load_tokenizer(self):
        """The tokenizer, or None when the cached BPE file is missing or no longer loads (it is then removed)."""
        if self.tokenizer_kind == "byte":
            return ByteTokenizer(self.lowercase)
        if not self.tokenizer_path.is_file():
            return None
        try:
            return Tokenizer.from_file(str(self.tokenizer_path))
        except Exception:  # noqa: BLE001 - the tokenizers library raises its own exception type
            self.tokenizer_path.unlink(missing_ok=True)
            return None

    @staticmethod
    def _packed_ok(packed) -> bool:
        """Whether a tokens file holds what prepare_data wrote: both splits, offsets matching ids and labels."""
        try:
            return all(len(packed[s]["offsets"]) == len(packed[s]["labels"]) + 1 == len(packed[s]["ratings"]) + 1
                       and int(packed[s]["offsets"][-1]) == len(packed[s]["ids"]) for s in ("train", "test")
                       ) and int(packed["vocab_size"]) > 0
        except (KeyError, TypeError, IndexError):
            return False

    def _encode(self, tok, texts: Sequence[str]) -> List[np.ndarray]:
        return tok.encode_batch(texts) if isinstance(tok, ByteTokenizer) else bpe_encode(tok, texts)

    def _pack(self, seqs: List[np.ndarray], d: Dict[str, list]) -> dict:
        keep = self.max_len - (1 if self.add_cls else 0)
        seqs = [s[:keep] for s in seqs]
        if self.add_cls:
            seqs = [np.concatenate([np.array([CLS_ID], dtype=np.int32), s]) for s in seqs]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int32)
        dtype = torch.int16 if max(self.vocab_size, self.requested_vocab_size) <= 32767 else torch.int32
        return {"ids": torch.from_numpy(flat.astype(np.int32)).to(dtype), "offsets": torch.from_numpy(offsets),
                "labels": torch.tensor(d["label"], dtype=torch.int8), "ratings": torch.tensor(d["rating"], dtype=torch.int8)}

    # -- lightning hooks
    def prepare_data(self) -> None:
        """Find or download the reviews, train the tokenizer (bpe), tokenize both splits: all cached."""
        source = self.resolve_source()
        if source == "synthetic" or self.tokens_path.is_file():
            return
        raw = self._read_raw()  # checked (both classes, a validation split) before anything is written
        make_folder(self.cache_path)
        tok = self._load_tokenizer()
        if tok is None:
            tok = train_bpe(raw["train"]["text"], self.requested_vocab_size, self.lowercase)  # train split only
            write_cache(self.tokenizer_path, lambda tmp: tok.save(str(tmp)))
        packed = {split: self._pack(self._encode(tok, raw[split]["text"]), raw[split]) for split in ("train", "test")}
        packed["vocab_size"] = tok.get_vocab_size() if self.tokenizer_kind == "bpe" else ByteTokenizer.vocab_size
        write_cache(self.tokens_path, lambda tmp: torch.save(packed, tmp))

    def _synthetic(self) -> dict:
        """A long-range matching task that needs attention, not a bag of words (deterministic by seed).

        Token ids from BYTE_OFFSET on: K "key" tokens, their K partner "query" tokens, the rest noise.
        Each review is noise with ONE key token somewhere in its first quarter and ONE query token in
        its last quarter; label 1 when the query is the key's partner, 0 when it is the partner of
        another key. Keys and queries are uniform whatever the label, so every token's count is
        independent of the label: only relating the two far-apart positions solves it. Labels are
        exactly balanced (half of each split, shuffled). See `synthetic_pairs` for the rule."""
        keys, queries, noise_lo = self.synthetic_pairs()
        k = len(keys)
        g = torch.Generator().manual_seed(self.seed)
        V, start = self.vocab_size, (1 if self.add_cls else 0)
        out = {}
        for split, n in zip(("train", "test"), self.synthetic_sizes):
            labels = torch.cat([torch.ones(n // 2, dtype=torch.long), torch.zeros(n - n // 2, dtype=torch.long)])
            labels = labels[torch.randperm(n, generator=g)]
            min_len = min(self.max_len, max(start + 2, self.max_len // 4))
            lengths = torch.randint(min_len, self.max_len + 1, (n,), generator=g)
            key_ids = torch.randint(0, k, (n,), generator=g)
            other = (key_ids + torch.randint(1, k, (n,), generator=g)) % k  # a different pair
            query_ids = torch.where(labels == 1, key_ids, other)
            seqs = []
            for i, length in enumerate(lengths.tolist()):
                s = torch.randint(noise_lo, V, (length,), generator=g)
                body = length - start  # positions start .. length-1
                quarter = max(1, body // 4)
                kpos = start + int(torch.randint(0, quarter, (1,), generator=g))
                qpos = length - 1 - int(torch.randint(0, quarter, (1,), generator=g))
                s[kpos], s[qpos] = keys[key_ids[i]], queries[query_ids[i]]
                if self.add_cls:
                    s[0] = CLS_ID
                seqs.append(s.numpy().astype(np.int32))
            out[split] = self._pack(seqs, {"label": labels.tolist(), "rating": [-1] * n})
        out["vocab_size"] = V
        return out

    def synthetic_pairs(self):
        """(key ids, their partner query ids, first noise id) of the synthetic task: query = key + K."""
        V = self.vocab_size
        k = min(8, (V - BYTE_OFFSET - 1) // 3)
        if k < 2:
            raise ValueError(f"the synthetic IMDB task needs vocab_size >= {BYTE_OFFSET + 7} (two key/query pairs "
                             f"and noise tokens), got {V}")
        if self.max_len < 2 + (1 if self.add_cls else 0):
            raise ValueError(f"the synthetic IMDB task needs max_len >= {2 + (1 if self.add_cls else 0)} (a key and "
                             f"a query token), got {self.max_len}")
        keys = torch.arange(BYTE_OFFSET, BYTE_OFFSET + k)
        return keys, keys + k, BYTE_OFFSET + 2 * k

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        source = self.resolve_source()
        if source == "synthetic":
            packed = self._synthetic()
        else:
            self.prepare_data()  # a no-op once cached; prepare_data runs on one process per node, so be safe alone
            packed, tok = load_cached(self.tokens_path, self._packed_ok), self._load_tokenizer()
            if packed is None or (self.tokenizer_kind == "bpe" and tok is None):  # damaged: built again, once
                self.tokens_path.unlink(missing_ok=True)
                self.prepare_data()
                packed, tok = load_cached(self.tokens_path, self._packed_ok), self._load_tokenizer()
                if packed is None or tok is None:
                    raise DataUnavailableError(f"the cache files in {self.cache_path} cannot be read back even after "
                                               f"rebuilding them: check the disk, or choose another --cache-dir")
            if self.tokenizer_kind == "bpe":
                self.tokenizer = tok
        self.vocab_size = int(packed["vocab_size"])
        tr, te = packed["train"], packed["test"]
        where = ("the synthetic training split (synthetic_sizes[0])" if source == "synthetic"
                 else str(self.local_root or HUB_NAME))
        n_val, n_train = self.split_sizes(len(tr["labels"]), where)
        val_idx, train_idx = seeded_split(len(tr["labels"]), [n_val, n_train], seed=self.seed)
        self.train_set = TokenSequences(tr["ids"], tr["offsets"], tr["labels"], train_idx)
        self.val_set = TokenSequences(tr["ids"], tr["offsets"], tr["labels"], val_idx)
        self.test_set = TokenSequences(te["ids"], te["offsets"], te["labels"])
        self.test_ratings = te["ratings"]
        self.hparams["source_used"] = source

    # -- loaders
    @property
    def shards_itself(self) -> bool:
        """With bucket_by_length every loader shards itself (BucketBatchSampler, EpochBatches): a
        DistributedSampler injected by Lightning would break the buckets apart."""
        return self.bucket_by_length

    def _loader(self, ds: TokenSequences, shuffle: bool) -> DataLoader:
        collate_fn = PadCollate(self.pad_id)
        if shuffle and self.bucket_by_length:  # one process's share of the buckets: EpochBatches shards them
            buckets = BucketBatchSampler(ds.lengths, self.batch_size, shuffle=True, seed=self.seed)
            return self.resumable_loader(ds, buckets.batches, collate_fn, **self.loader_kwargs())
        if shuffle:
            return self.train_loader(ds, collate_fn)
        if not self.bucket_by_length:
            return self.eval_loader(ds, collate_fn)
        trainer = getattr(self, "trainer", None)
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = BucketBatchSampler(ds.lengths, self.batch_size, shuffle=False, seed=self.seed,
                                     num_replicas=replicas, rank=rank)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate_fn, **self.loader_kwargs())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
