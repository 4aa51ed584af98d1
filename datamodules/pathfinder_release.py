"""LRA's Pathfinder release on disk: `pathfinder{32,64,128,256}/curv_contour_length_14/` holding
`metadata/<batch>.npy` and `imgs/<batch>/sample_<i>.png`, as lra_release.gz unpacks it.

A metadata file is text despite its name: a line per image, space-separated, `imgs/<batch> sample_<i>.png <i>
<label> ...` (lra_benchmarks/data/pathfinder.py reads fields 0 and 1 as the image's folder and name and field 3
as its label). A file that is a real numpy array of such rows (drewlinsley/pathfinder's np.save) is read too.
Files are taken in the order of their batch number, rows in file order. An image file of zero bytes is left out,
as LRA's input pipeline filters empty images; a missing, unreadable or wrongly sized one stops the reading with
one sentence naming it. Pixels are the PNG's 8-bit grey values (PIL's "L"), row-major.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from .common import DataUnavailableError

log = logging.getLogger(__name__)

READER_VERSION = 1  # of the reader and the cache layout: bump when either changes
DIFFICULTY = "curv_contour_length_14"  # LRA's "hard" set, the only one its Pathfinder and Path-X use
ORIGIN = "the Long Range Arena release (lra_release.gz from github.com/google-research/long-range-arena)"


def release_hint(resolution: int) -> str:
    return (f"pathfinder{resolution}/{DIFFICULTY}/{{metadata/<batch>.npy, imgs/<batch>/sample_<i>.png}} in "
            f"<data-dir>, its lra_release/ or lra_release/lra_release/; from {ORIGIN}")


def find_release(data_dir: Path, resolution: int) -> Optional[Path]:
    """The DIFFICULTY folder of `resolution` under data_dir (which may also be that folder or the
    pathfinder{resolution} one), or None."""
    top = f"pathfinder{resolution}"
    for folder in (data_dir / DIFFICULTY, data_dir / top / DIFFICULTY, data_dir / "lra_release" / top / DIFFICULTY,
                   data_dir / "lra_release" / "lra_release" / top / DIFFICULTY, data_dir):
        if (folder / "metadata").is_dir() and (folder.name == DIFFICULTY or folder == data_dir):
            return folder
    return None


def _batch_number(path: Path) -> Tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 62, path.stem)


def _rows(path: Path) -> List[List[str]]:
    raw = path.read_bytes()
    if raw.startswith(b"\x93NUMPY"):
        try:
            table = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as e:
            raise DataUnavailableError(f"{path} is a numpy file that cannot be read ({e}); expected rows of "
                                       f"'imgs/<batch> sample_<i>.png <i> <label> ...'") from e
        return [[str(x) for x in row] for row in np.atleast_2d(table)]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataUnavailableError(f"{path} is neither text nor a numpy file; expected lines of "
                                   f"'imgs/<batch> sample_<i>.png <i> <label> ...'") from e
    return [line.split() for line in text.splitlines() if line.strip()]


def read_metadata(folder: Path) -> Tuple[List[str], np.ndarray]:
    """The image paths (relative to `folder`) and labels listed by folder/metadata/*.npy."""
    files = sorted((folder / "metadata").glob("*.npy"), key=_batch_number)
    if not files:
        raise DataUnavailableError(f"{folder / 'metadata'} holds no <batch>.npy files; expected LRA's Pathfinder "
                                   f"metadata ({ORIGIN})")
    paths, labels = [], []
    for f in files:
        for n, row in enumerate(_rows(f), 1):
            if len(row) < 4 or row[3] not in ("0", "1"):
                raise DataUnavailableError(f"{f} line {n} reads {' '.join(row)[:120]!r}; expected "
                                           f"'imgs/<batch> sample_<i>.png <i> <label 0 or 1> ...'")
            paths.append(f"{row[0]}/{row[1]}")
            labels.append(int(row[3]))
    if not paths:
        raise DataUnavailableError(f"the metadata files in {folder / 'metadata'} list no images")
    return paths, np.asarray(labels, np.int64)


def decode_into(folder: Path, paths: List[str], side: int, out: np.ndarray) -> np.ndarray:
    """Decode the images into out (len(paths), side * side) uint8, in order; returns whether each image was
    there (False: an empty file, left out as LRA leaves it out)."""
    present = np.ones(len(paths), bool)
    for i, rel in enumerate(paths):
        path = folder / rel
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataUnavailableError(f"{path}, listed in {folder / 'metadata'}, cannot be read "
                                       f"({type(e).__name__}: {e.strerror or e})") from e
        if not raw:
            present[i] = False
            continue
        try:
            with Image.open(io.BytesIO(raw)) as im:
                grey = np.asarray(im.convert("L"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataUnavailableError(f"{path} is not a readable image ({type(e).__name__}: {e})") from e
        if grey.shape != (side, side):
            raise DataUnavailableError(f"{path} is {grey.shape[1]} x {grey.shape[0]}; pathfinder{side} images are "
                                       f"{side} x {side}")
        out[i] = grey.reshape(-1)
        if (i + 1) % 20000 == 0:
            log.info("decoded %d of %d Pathfinder images", i + 1, len(paths))
    return present
