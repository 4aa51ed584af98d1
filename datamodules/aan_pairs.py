"""LRA Retrieval's pairs from the release's `new_aan_pairs.{train,eval,test}.tsv` (lra_release/tsv_data/ in
lra_release.gz of google-research/long-range-arena): one pair a line, five tab-separated fields
label, id1, id2, text1, text2, no header, no quoting (lra_benchmarks/matching/input_pipeline.py reads them
with make_csv_dataset(field_delim='\\t', use_quote_delim=False, header=False); label is a float 0/1).

The texts are taken byte for byte as written in the file, as LRA's byte encoder sees them, and each is cut
to `max_len` bytes while reading, so only what a model can see is kept: a pair is two byte strings, stored
flat (uint8) with offsets [start1, start2, end2] per pair.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import torch

from .common import DataUnavailableError

AAN_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
AAN_ORIGIN = ("they come from the LRA release (lra_release/tsv_data/ in lra_release.gz of "
              "google-research/long-range-arena); the AAN text cannot be generated")


def read_pairs(path: Path, max_len: int) -> Dict[str, torch.Tensor]:
    """{"bytes": uint8 (total,), "offsets": int64 (2N + 1,), "labels": int64 (N,)}; document k of pair i is
    bytes[offsets[2i + k] : offsets[2i + k + 1]]. A line that is not five fields with a 0/1 label, or a file
    without pairs, is a DataUnavailableError naming the file and the line."""
    data, lengths, labels = bytearray(), [], []  # a bytearray grows in place: no list of 300,000 strings
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                fields = line.split(b"\t")
                if len(fields) != 5:
                    raise DataUnavailableError(
                        f"{path} line {n} has {len(fields)} tab-separated fields; an LRA retrieval pair has 5 "
                        f"(label, id1, id2, text1, text2)")
                labels.append(_label(fields[0], path, n))
                for text in fields[3:]:
                    data += text[:max_len]
                    lengths.append(min(len(text), max_len))
    except OSError as e:
        raise DataUnavailableError(f"{path} cannot be read ({type(e).__name__}: {e.strerror or e})") from e
    if not labels:
        raise DataUnavailableError(f"{path} holds no pairs: expected lines of label, id1, id2, text1, text2")
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    flat = torch.frombuffer(data, dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)  # shares `data`
    return {"bytes": flat, "offsets": torch.from_numpy(offsets), "labels": torch.tensor(labels, dtype=torch.int64)}


def _label(field: bytes, path: Path, n: int) -> int:
    try:
        value = float(field)
    except ValueError:
        value = None
    if value not in (0.0, 1.0):
        raise DataUnavailableError(f"{path} line {n} has the label {field[:20]!r}; expected 0 or 1")
    return int(value)


def pairs_ok(packed) -> bool:
    """Whether a cached split holds what read_pairs returns: consistent offsets, bytes and 0/1 labels."""
    try:
        data, offsets, labels = packed["bytes"], packed["offsets"], packed["labels"]
        return (data.dtype == torch.uint8 and offsets.dtype == torch.int64 and labels.dtype == torch.int64
                and len(labels) > 0 and len(offsets) == 2 * len(labels) + 1 and int(offsets[0]) == 0
                and int(offsets[-1]) == len(data) and bool((offsets[1:] >= offsets[:-1]).all())
                and bool(((labels == 0) | (labels == 1)).all()))
    except (KeyError, TypeError, AttributeError, RuntimeError):
        return False
