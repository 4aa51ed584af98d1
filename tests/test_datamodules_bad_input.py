"""Bad input to the DataModules: one clear error naming the path or value, and nothing left in the cache.

Every fixture is written here in tmp_path in the official layout (tiny), every module gets its own
cache_dir, and after each failure the cache must hold no file at all: caches are written to a temporary
file or folder and renamed into place only once everything was read and checked, so the next run starts
clean (checked by fixing the data and running again where it matters).
"""
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules import (CIFAR10DataModule, DataUnavailableError, IMDBDataModule, InpaintingDataModule,
                         WikiTextDataModule)

sys.path.insert(0, str(Path(__file__).parent))
from test_cifar import write_image_folder, write_pickle_batches  # noqa: E402
from test_imdb import write_fixture as write_aclimdb  # noqa: E402
from test_wikitext import write_files as write_wikitext  # noqa: E402


def cache_files(cache: Path):
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def one_sentence(msg: str):
    assert "\n" not in msg and "Traceback" not in msg, msg


def raises_clean(exc, fn, cache: Path, *must_contain):
    with pytest.raises(exc) as e:
        fn()
    msg = str(e.value)
    one_sentence(msg)
    for part in must_contain:
        assert str(part) in msg, f"{part!r} not in {msg!r}"
    assert cache_files(cache) == [], f"the failed run left {cache_files(cache)} in the cache"
    return msg


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


MODULES = {
    "imdb": lambda **kw: IMDBDataModule(tokenizer="byte", max_len=16, **kw),
    "wikitext": lambda **kw: WikiTextDataModule(**kw),
    "cifar": lambda **kw: CIFAR10DataModule(val_size=1, **kw),
}


# ------------------------------------------------------------------ missing / empty data folder
@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_missing_or_empty_data_folder_names_it_and_the_layout(tmp_path, name, folder):
    data = tmp_path / "data"
    if folder == "empty":
        data.mkdir()
    cache = tmp_path / "cache"
    dm = MODULES[name](data_source="local", data_dir=str(data), cache_dir=str(cache))
    expected = {"imdb": "aclImdb", "wikitext": "wiki.train.tokens", "cifar": "cifar-10-batches-py"}[name]
    raises_clean(DataUnavailableError, dm.prepare_data, cache, data, expected)
    raises_clean(DataUnavailableError, dm.setup, cache, data)


def test_imdb_folder_without_reviews(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "data" / "aclImdb" / split / "pos").mkdir(parents=True)
    cache = tmp_path / "cache"
    dm = IMDBDataModule(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(cache), tokenizer="byte")
    raises_clean(DataUnavailableError, dm.prepare_data, cache, "no reviews", tmp_path / "data" / "aclImdb")


# ------------------------------------------------------------------ truncated / corrupt archives and files
def test_truncated_imdb_tarball_names_the_file(tmp_path):
    src = write_aclimdb(tmp_path / "src")
    for i in range(40):  # some bulk, so half the archive holds complete members and a cut one
        (src / "train" / "pos" / f"{100 + i}_8.txt").write_text(f"review {i} " * 50)
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "aclImdb_v1.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="aclImdb")
    full = (data / "aclImdb_v1.tar.gz").read_bytes()
    truncate(data / "aclImdb_v1.tar.gz")
    cache = tmp_path / "cache"
    kw = dict(data_source="local", data_dir=str(data), cache_dir=str(cache), tokenizer="bpe", vocab_size=60, max_len=16)
    msg = raises_clean(DataUnavailableError, IMDBDataModule(**kw).prepare_data, cache,
                       data / "aclImdb_v1.tar.gz", "truncated or corrupt")
    assert "download" in msg
    # cut to a few bytes the file is not even a tar.gz: still found by its official name, still named as corrupt
    (data / "aclImdb_v1.tar.gz").write_bytes(full[:10])
    raises_clean(DataUnavailableError, IMDBDataModule(**kw).prepare_data, cache,
                 data / "aclImdb_v1.tar.gz", "truncated or corrupt")
    # the next run with the whole file starts clean
    (data / "aclImdb_v1.tar.gz").write_bytes(full)
    dm = IMDBDataModule(**kw)
    dm.prepare_data()
    dm.setup()
    assert len(dm.test_set) == 4 and dm.tokens_path.is_file()


def _cifar_tars(tmp_path) -> Path:
    write_image_folder(tmp_path / "src", per_class=(6, 2))
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        with tarfile.open(data / f"{split}.tar.gz", "w:gz") as tf:
            tf.add(tmp_path / "src" / split, arcname=f"CIFAR-10-images/{split}")
    return data


def test_truncated_cifar_tarball_names_the_file(tmp_path):
    data = _cifar_tars(tmp_path)
    full = (data / "train.tar.gz").read_bytes()
    truncate(data / "train.tar.gz")
    cache = tmp_path / "cache"
    kw = dict(data_source="local", data_dir=str(data), cache_dir=str(cache), val_size=1)
    raises_clean(DataUnavailableError, CIFAR10DataModule(**kw).prepare_data, cache, data / "train.tar.gz",
                 "truncated or corrupt")
    raises_clean(DataUnavailableError, CIFAR10DataModule(**kw).setup, cache, data / "train.tar.gz")
    (data / "train.tar.gz").write_bytes(full)
    dm = CIFAR10DataModule(**kw)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 18 and sorted(p.name for p in dm.cache_path.iterdir()) == ["test.pt", "train.pt"]


@pytest.mark.parametrize("garbage", [b"\x80\x04\x95garbage-not-a-pickle" * 10, b"", pickle.dumps([1, 2, 3]),
                                     pickle.dumps({b"labels": [0]})])
def test_corrupt_cifar_pickle_batch_names_the_file(tmp_path, garbage):
    d, _ = write_pickle_batches(tmp_path / "data")
    (d / "data_batch_3").write_bytes(garbage)
    cache = tmp_path / "cache"
    dm = CIFAR10DataModule(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(cache), val_size=1)
    raises_clean(DataUnavailableError, dm.prepare_data, cache, d / "data_batch_3", "corrupt")


def test_unreadable_image_names_the_file(tmp_path):
    write_image_folder(tmp_path / "data")
    bad = tmp_path / "data" / "train" / "cat" / "0001.png"
    bad.write_bytes(b"not a png")
    cache = tmp_path / "cache"
    dm = CIFAR10DataModule(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(cache), val_size=1)
    raises_clean(DataUnavailableError, dm.prepare_data, cache, bad, "not a readable image")


# ------------------------------------------------------------------ image folders: sizes, classes
def test_image_folder_with_mixed_sizes_names_a_file_and_the_sizes(tmp_path):
    write_image_folder(tmp_path / "data")
    odd = tmp_path / "data" / "train" / "dog" / "0001.png"
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(odd)
    cache = tmp_path / "cache"
    kw = dict(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(cache), val_size=1)
    raises_clean(DataUnavailableError, CIFAR10DataModule(**kw).prepare_data, cache, odd, "20x24", "32x32", "image_size")
    dm = CIFAR10DataModule(image_size=16, **kw)  # the way forward the message names
    dm.setup()
    assert dm.image_size == 16


def test_test_split_class_folder_unknown_to_train_is_named(tmp_path):
    write_image_folder(tmp_path / "data")
    (tmp_path / "data" / "test" / "zebra").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "data" / "test" / "zebra" / "0000.png")
    cache = tmp_path / "cache"
    kw = dict(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(cache), val_size=1)
    # neither split is cached: the training split is not written when the test split fails
    raises_clean(DataUnavailableError, CIFAR10DataModule(**kw).prepare_data, cache, "'zebra'", tmp_path / "data" / "test")
    raises_clean(DataUnavailableError, CIFAR10DataModule(**kw).setup, cache, "'zebra'")


# ------------------------------------------------------------------ WikiText files
def test_wikitext_non_utf8_or_empty_train_file_is_named(tmp_path):
    data = write_wikitext(tmp_path / "data")
    cache = tmp_path / "cache"
    kw = dict(data_source="local", data_dir=str(data), cache_dir=str(cache))
    (data / "wiki.valid.tokens").write_bytes(b"\xff\xfe bad \x80 bytes\n")
    raises_clean(DataUnavailableError, WikiTextDataModule(**kw).prepare_data, cache, data / "wiki.valid.tokens", "UTF-8")
    write_wikitext(data)
    (data / "wiki.train.tokens").write_text("")
    raises_clean(DataUnavailableError, WikiTextDataModule(**kw).prepare_data, cache, data / "wiki.train.tokens", "no text")


# ------------------------------------------------------------------ invalid arguments
BAD_ARGS = [
    (IMDBDataModule, dict(max_len=0), "max_len"),
    (IMDBDataModule, dict(max_len=True), "max_len"),
    (IMDBDataModule, dict(batch_size=0), "batch_size"),
    (IMDBDataModule, dict(tokenizer="chars"), "tokenizer"),
    (IMDBDataModule, dict(vocab_size=3), "vocab_size"),
    (IMDBDataModule, dict(val_fraction=-0.1), "val_fraction"),
    (IMDBDataModule, dict(synthetic_sizes=(0, 10)), "synthetic_sizes"),
    (IMDBDataModule, dict(data_source="web"), "data_source"),
    (WikiTextDataModule, dict(seq_len=0), "seq_len"),
    (WikiTextDataModule, dict(seq_len=-5), "seq_len"),
    (WikiTextDataModule, dict(batch_size=0), "batch_size"),
    (WikiTextDataModule, dict(tokenizer="char"), "tokenizer"),
    (WikiTextDataModule, dict(bpe_vocab_size=10), "bpe_vocab_size"),
    (WikiTextDataModule, dict(num_workers=-1), "num_workers"),
    (CIFAR10DataModule, dict(batch_size=0), "batch_size"),
    (CIFAR10DataModule, dict(image_size=0), "image_size"),
    (CIFAR10DataModule, dict(crop_padding=-1), "crop_padding"),
    (CIFAR10DataModule, dict(val_size=-1), "val_size"),
    (CIFAR10DataModule, dict(augment="heavy"), "augment"),
    (CIFAR10DataModule, dict(synthetic_sizes=(10,)), "synthetic_sizes"),
    (InpaintingDataModule, dict(hole_fraction=0.0), "hole_fraction"),
    (InpaintingDataModule, dict(hole_fraction=1.0), "hole_fraction"),
    (InpaintingDataModule, dict(hole_fraction=-0.2), "hole_fraction"),
    (InpaintingDataModule, dict(hole_fraction="0.5"), "hole_fraction"),
    (InpaintingDataModule, dict(mask="blob"), "mask"),
    (InpaintingDataModule, dict(batch_size=0), "batch_size"),
]


@pytest.mark.parametrize("cls,kwargs,arg", BAD_ARGS, ids=[f"{c.__name__}-{list(k.items())[0]}" for c, k, _ in BAD_ARGS])
def test_invalid_argument_is_a_value_error_naming_argument_and_value(tmp_path, cls, kwargs, arg):
    with pytest.raises(ValueError) as e:
        cls(cache_dir=str(tmp_path / "cache"), **kwargs)
    msg = str(e.value)
    one_sentence(msg)
    assert arg in msg and repr(list(kwargs.values())[0]) in msg
    assert cache_files(tmp_path / "cache") == []


def test_synthetic_imdb_task_needs_room_for_key_and_query():
    dm = IMDBDataModule(data_source="synthetic", tokenizer="byte", max_len=1, synthetic_sizes=(10, 4))
    with pytest.raises(ValueError, match="max_len"):
        dm.setup()
