"""Files written atomically: a temporary file beside the target, flushed to disk, renamed into place. A
reader never sees half a file, and a write that fails (a full disk) leaves no temporary file behind."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path`. OSError propagates
    (the caller words it for its users); the temporary file is removed either way."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:  # to disk before the rename, so a crash cannot leave an empty file
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: PathLike, text: str, make_parents: bool = True) -> None:
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            fh.write(text)

    atomic_write(path, write)


def write_json(path: PathLike, obj: Any, make_parents: bool = True) -> None:
    """JSON (indented, anything unknown as its str) written atomically; makes the folder by default."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n", make_parents)
