"""The IMDB reviews (Maas et al., ACL 2011) in the official aclImdb layout, from a folder
(`{train,test}/{pos,neg}/<id>_<rating>.txt`) or from the official .tar.gz, streamed member by member and
never extracted; `train/unsup` and the other files are ignored. Reviews come back in a fixed order (neg
before pos, then by id) whatever the archive or file-system order.
"""
from __future__ import annotations

import re
import tarfile
import zlib
from pathlib import Path
from typing import Dict, Optional

from .common import DataUnavailableError

TARBALL_NAMES = ("aclImdb_v1.tar.gz", "aclImdb.tar.gz")

_REVIEW_RE = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
_BR_RE = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_review(text: str) -> str:
    """Replace the `<br />` line breaks of the raw reviews by spaces."""
    return _BR_RE.sub(" ", text).strip()


def _empty_split() -> Dict[str, list]:
    return {"text": [], "label": [], "rating": [], "id": []}


def _add_review(out: Dict[str, Dict[str, list]], rel_path: str, raw: bytes) -> None:
    m = _REVIEW_RE.search(rel_path)
    if m is None:  # README, imdb.vocab, train/unsup/..., *.feat
        return
    split, polarity, rid, rating = m.groups()
    d = out[split]
    d["text"].append(clean_review(raw.decode("utf-8", errors="replace")))
    d["label"].append(1 if polarity == "pos" else 0)
    d["rating"].append(int(rating))
    d["id"].append(int(rid))


def _sorted(out: Dict[str, Dict[str, list]]) -> Dict[str, Dict[str, list]]:
    """A fixed order whatever the archive/file-system order: neg before pos, then by id."""
    for split, d in out.items():
        order = sorted(range(len(d["id"])), key=lambda i: (d["label"][i], d["id"][i]))
        out[split] = {k: [v[i] for i in order] for k, v in d.items()}
    return out


def read_aclimdb(root: Path) -> Dict[str, Dict[str, list]]:
    """Read the official layout from a folder (holding train/ and test/) or from a .tar.gz, streamed.

    Returns {"train": {...}, "test": {...}}, each with lists text, label (pos=1, neg=0), rating, id."""
    root = Path(root)
    out = {"train": _empty_split(), "test": _empty_split()}
    if root.is_file():
        try:
            with tarfile.open(root, "r:*") as tf:
                for member in tf:  # streaming: one pass over the gzip stream, nothing written to disk
                    if member.isfile() and member.name.endswith(".txt"):
                        f = tf.extractfile(member)
                        if f is not None:
                            _add_review(out, member.name, f.read())
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataUnavailableError(f"{root} is truncated or corrupt and cannot be read to the end "
                                       f"({type(e).__name__}: {e}): download aclImdb_v1.tar.gz again") from e
    else:
        for split in ("train", "test"):
            for polarity in ("neg", "pos"):
                folder = root / split / polarity
                if folder.is_dir():
                    for p in folder.iterdir():
                        if p.suffix == ".txt":
                            _add_review(out, f"{split}/{polarity}/{p.name}", p.read_bytes())
    return _sorted(out)


def tarball_has_aclimdb(path: Path) -> Optional[bool]:
    """True/False: whether the first members look like aclImdb; None: the file cannot be read as a tar.gz."""
    try:
        with tarfile.open(path, "r:*") as tf:
            for _, member in zip(range(50), tf):
                if "aclImdb/" in member.name or member.name.rstrip("/") == "aclImdb" or _REVIEW_RE.search(member.name):
                    return True
    except (tarfile.TarError, EOFError, zlib.error, OSError):
        return None
    return False
