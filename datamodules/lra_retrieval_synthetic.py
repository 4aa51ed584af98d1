"""A stand-in for LRA Retrieval with its shapes, for tests and smoke runs (the AAN text cannot be generated):
pairs of byte documents whose label needs both of them.

Each document is lowercase-letter noise with one key digit ('0' .. '7') at a random place; label 1 when the
two documents carry the same key, 0 when not. Whatever the label, each document's key is uniform, so no
single document tells the label: a model has to compare the two, as retrieval does. Labels are exactly
balanced; everything is drawn from (seed, split), so a split is the same every time.
"""
from __future__ import annotations

from typing import Dict

import torch

from .resumable import seeded

VERSION = 1  # bump when the generator changes, so nothing made by an older one is taken for it
KEYS = torch.tensor(list(b"01234567"), dtype=torch.uint8)
NOISE = (ord("a"), ord("z") + 1)


def synthetic_pairs(n: int, max_len: int, seed: int, split: str) -> Dict[str, torch.Tensor]:
    """n pairs in read_pairs' layout (aan_pairs.py): documents of max_len // 4 .. max_len bytes."""
    g = seeded(seed, "lra-retrieval-synthetic", VERSION, split)
    labels = torch.cat([torch.ones(n // 2, dtype=torch.int64), torch.zeros(n - n // 2, dtype=torch.int64)])
    labels = labels[torch.randperm(n, generator=g)]
    k = len(KEYS)
    key1 = torch.randint(0, k, (n,), generator=g)
    key2 = torch.where(labels == 1, key1, (key1 + torch.randint(1, k, (n,), generator=g)) % k)  # another key
    lengths = torch.randint(max(1, max_len // 4), max_len + 1, (n, 2), generator=g)  # (n, 2): both documents
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.flatten().cumsum(0)])
    data = torch.randint(*NOISE, (int(offsets[-1]),), generator=g).to(torch.uint8)
    where = offsets[:-1] + (torch.rand(2 * n, generator=g) * lengths.flatten()).long()  # one place per document
    data[where] = KEYS[torch.stack([key1, key2], 1).flatten()]
    return {"bytes": data, "offsets": offsets, "labels": labels}
