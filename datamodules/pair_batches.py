"""Pairs of byte documents as training items (LRA Retrieval): stored flat (uint8 bytes + offsets, see
aan_pairs.py), given out as token ids byte + 1, and padded per batch to the longest document in it:
input_ids (B, 2, L) long, mask (B, 2, L) bool (True = real token), labels (B,), index (B,).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch.utils.data import Dataset


class PairSequences(Dataset):
    """Document pairs with a label each; items are {"input_ids": (ids1, ids2), "label", "index"}."""

    def __init__(self, data: torch.Tensor, offsets: torch.Tensor, labels: torch.Tensor,
                 index: Optional[torch.Tensor] = None):
        self.data, self.offsets, self.labels = data, offsets, labels
        self.index = index if index is not None else torch.arange(len(labels))
        self.lengths = (offsets[1:] - offsets[:-1]).view(-1, 2)[self.index]  # (N, 2): the documents' lengths

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        j = int(self.index[i])
        a, b, c = (int(x) for x in self.offsets[2 * j : 2 * j + 3])
        return {"input_ids": (self.data[a:b].long() + 1, self.data[b:c].long() + 1),  # byte + 1: 0 is padding
                "label": int(self.labels[j]), "index": int(i)}


class PairCollate:
    """Both documents of every pair padded to the longest document of the batch (at least one position)."""

    def __init__(self, pad_id: int = 0):
        self.pad_id = pad_id

    def __call__(self, batch: List[dict], key=None) -> dict:  # key: a training batch's BatchKey; nothing is random
        L = max([1] + [len(doc) for item in batch for doc in item["input_ids"]])
        ids = torch.full((len(batch), 2, L), self.pad_id, dtype=torch.long)
        for i, item in enumerate(batch):
            for k, doc in enumerate(item["input_ids"]):
                ids[i, k, : len(doc)] = doc
        return {"input_ids": ids, "mask": ids != self.pad_id,  # real ids are >= 1
                "labels": torch.tensor([item["label"] for item in batch], dtype=torch.long),
                "index": torch.tensor([item["index"] for item in batch], dtype=torch.long)}
