"""Variable-length token sequences as training items, for any text classification data set: stored flat
(ids + offsets), padded per batch to its longest sequence (`collate`: input_ids, mask with True = real token,
labels, index), and optionally grouped by length (`BucketBatchSampler`) to cut padding.
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional

import torch
from torch.utils.data import Dataset, Sampler

from .resumable import even_batches


class TokenSequences(Dataset):
    """Variable-length token sequences stored flat (ids + offsets) with a label each; items are dicts of tensors."""

    def __init__(self, ids: torch.Tensor, offsets: torch.Tensor, labels: torch.Tensor,
                 index: Optional[torch.Tensor] = None):
        self.ids, self.offsets, self.labels = ids, offsets, labels
        self.index = index if index is not None else torch.arange(len(labels))
        all_lengths = offsets[1:] - offsets[:-1]
        self.lengths = all_lengths[self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        j = int(self.index[i])
        a, b = int(self.offsets[j]), int(self.offsets[j + 1])
        return {"input_ids": self.ids[a:b].long(), "label": int(self.labels[j]), "index": int(i)}


def collate(batch: List[dict], pad_id: int = 0) -> dict:
    """Pad to the longest sequence in the batch: input_ids (B, L) long, mask (B, L) bool, labels (B,),
    index (B,) long: the samples' positions in their split's data set."""
    lengths = [len(b["input_ids"]) for b in batch]
    L = max(max(lengths), 1)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.bool)
    for i, (b, n) in enumerate(zip(batch, lengths)):
        ids[i, :n] = b["input_ids"]
        mask[i, :n] = True
    out = {"input_ids": ids, "mask": mask, "labels": torch.tensor([b["label"] for b in batch], dtype=torch.long)}
    if all("index" in b for b in batch):
        out["index"] = torch.tensor([b["index"] for b in batch], dtype=torch.long)
    return out


class PadCollate:
    """`collate` with a fixed pad id, picklable for worker processes."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch, key=None):  # key: a training batch's BatchKey; nothing here is random
        return collate(batch, self.pad_id)


class BucketBatchSampler(Sampler[List[int]]):
    """Batches of similar lengths. With shuffle: a seeded permutation is cut into pools of
    `batch_size * pool_batches`, each pool sorted by length and cut into batches, and the batches
    are shuffled (new order each epoch: seed + epoch). Without shuffle: sorted by length throughout.
    `num_replicas`/`rank` shard the batches for multi-process runs: each process keeps every
    num_replicas-th batch. Every process must get the same number of batches, so when the count is not a
    multiple of num_replicas the largest batches are split in two until it is: the processes' samples stay
    disjoint and together cover the epoch (no sample dropped, none repeated). Only with fewer samples than
    processes are batches repeated."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 pool_batches: int = 50, drop_last: bool = False, num_replicas: int = 1, rank: int = 0):
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.pool_batches, self.drop_last = pool_batches, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> List[List[int]]:
        return self.batches(self.epoch)

    def batches(self, epoch: int) -> List[List[int]]:
        """Epoch `epoch`'s batches on this process."""
        n, bs = len(self.lengths), self.batch_size
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(n, generator=g)
            pool = bs * self.pool_batches
            batches = []
            for s in range(0, n, pool):
                chunk = perm[s : s + pool]
                chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
                batches.extend(chunk[i : i + bs].tolist() for i in range(0, len(chunk), bs))
            if self.drop_last:
                batches = [b for b in batches if len(b) == bs]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        else:
            order = torch.argsort(self.lengths, stable=True)
            batches = [order[i : i + bs].tolist() for i in range(0, n, bs)]
            if self.drop_last:
                batches = [b for b in batches if len(b) == bs]
        if self.num_replicas > 1:
            batches = even_batches(batches, self.num_replicas)
            batches = batches[self.rank :: self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[List[int]]:
        batches = self._batches()
        if self.shuffle:
            self.epoch += 1  # a fresh order next epoch even when nobody calls set_epoch
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches()) if (self.drop_last or self.num_replicas > 1) else math.ceil(len(self.lengths) / self.batch_size)
