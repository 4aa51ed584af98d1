"""LRA Text (Tay et al., ICLR 2021): IMDB sentiment (2 classes) read byte by byte, reviews cut at `max_len` bytes.

    dm = LRATextDataModule(data_dir="~/data/imdb", max_len=4096)
    dm.prepare_data(); dm.setup("fit")   # batches: input_ids (B, L <= 4096), mask, labels, index

The IMDB DataModule (imdb.py) with its byte tokenizer does the reading (local folder or tarball, the hub,
its synthetic task), the caches and the seeded validation split (`val_fraction` of the official training
reviews; LRA itself validates on the test set); the test split is IMDB's 25,000 test reviews. Only the ids
change: IMDB's byte tokenizer keeps [PAD] [UNK] [CLS] = 0 1 2 and gives byte + 3 (vocabulary 259); LRA's
(tfds ByteTextEncoder) and the LRA contract give byte + 1 with 0 = padding (vocabulary 257), so the ids are
shifted down by 2 once in setup. The cache is IMDB's own, shared with IMDB runs using tokenizer="byte".

Length: the paper says 4K bytes, the released config (text_classification/configs/base_tc_config.py)
max_length 1,000, the PyTorch reproductions 4,096 (Skyformer: 4,000 bytes padded to 4,096; Nystromformer's
script 1,000 + 24). Default 4,096, the length the reproductions build their models for. IMDB's reader turns
the reviews' `<br />` into spaces (LRA's tfds copy keeps them): a review is a few bytes shorter here.
benchmarks/results/lra_data_stats.md has how many reviews exceed each length.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .imdb import IMDBDataModule
from .imdb_tokenizers import BYTE_OFFSET, ByteTokenizer
from .text_batches import TokenSequences

BYTE_VOCAB = 257  # padding 0, bytes 1 .. 256
ID_SHIFT = BYTE_OFFSET - 1  # IMDB's byte id (byte + 3) minus this is LRA's (byte + 1)


class LRATextDataModule(IMDBDataModule):
    """IMDB at the byte level with LRA's ids (0 = padding, byte + 1); see the module docstring."""

    name = "IMDB"

    def __init__(self, data_source: str = "auto", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, max_len: int = 4096,
                 val_fraction: float = 0.1, bucket_by_length: bool = False,
                 synthetic_sizes: Sequence[int] = (2000, 500)):
        super().__init__(data_source=data_source, data_dir=data_dir, cache_dir=cache_dir, tokenizer="byte",
                         vocab_size=BYTE_VOCAB, lowercase=False, max_len=max_len, add_cls=False,
                         val_fraction=val_fraction, bucket_by_length=bucket_by_length, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, synthetic_sizes=synthetic_sizes)
        self.vocab_size = BYTE_VOCAB

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        # IMDB's synthetic task draws its ids from BYTE_OFFSET to IMDB's vocabulary size: with that size
        # restored, every source gives ids 3 .. 258 and shifts the same way
        self.vocab_size = ByteTokenizer.vocab_size
        super().setup(stage)
        tr, va, te = self.train_set, self.val_set, self.test_set
        train_ids, test_ids = tr.ids - ID_SHIFT, te.ids - ID_SHIFT  # train and validation share one tensor
        self.train_set = TokenSequences(train_ids, tr.offsets, tr.labels, tr.index)
        self.val_set = TokenSequences(train_ids, va.offsets, va.labels, va.index)
        self.test_set = TokenSequences(test_ids, te.offsets, te.labels, te.index)
        self.vocab_size = BYTE_VOCAB
