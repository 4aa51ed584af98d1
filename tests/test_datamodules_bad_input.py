"""Bad input to the DataModules: one clear error naming the path or value, and nothing left in the cache.

Every fixture is written here in tmp_path in the official layout (tiny), every module gets its own
cache_dir, and after each failure the cache must hold no file at all: caches are written to a temporary
file or folder and renamed into place only once everything was read and checked, so the next run starts
clean (checked by fixing the data and running again where it matters). The data folder is never changed.
A damaged cache file (truncated, or holding something else) is rebuilt from the data, not trusted.
"""
import logging
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import (
    CIFAR10DataModule,
    DataUnavailableError,
    IMDBDataModule,
    InpaintingDataModule,
    WikiTextDataModule,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_cifar import write_image_folder, write_pickle_batches  # noqa: E402
from test_imdb import write_fixture as write_aclimdb  # noqa: E402
from test_wikitext import write_files as write_wikitext  # noqa: E402


def cache_files(cache: Path):
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def snapshot(folder: Path):
    """Every path under `folder` with its size and mtime: a data folder must come out of a run unchanged."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {"": (False, folder.stat().st_size, folder.stat().st_mtime_ns)}
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def refused(exc, fn, data: Path, cache: Path, *must_contain):
    """`fn` raises `exc` with one sentence holding `must_contain`, the data folder is unchanged and the cache
    folder was not even created (the checks run before anything is written)."""
    before = snapshot(data)
    with pytest.raises(exc) as e:
        fn()
    msg = str(e.value)
    one_sentence(msg)
    for part in must_contain:
        assert str(part) in msg, f"{part!r} not in {msg!r}"
    assert snapshot(data) == before, "the failed run changed the data folder"
    assert not cache.exists() or not any(cache.rglob("*")), f"the failed run left {sorted(cache.rglob('*'))}"
    return msg


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
    # wrong types: a float, a bool, NaN, None or a string where an int or a flag belongs
    (WikiTextDataModule, dict(seq_len=2.0), "seq_len"),
    (WikiTextDataModule, dict(raw="yes"), "raw"),
    (WikiTextDataModule, dict(return_index="no"), "return_index"),
    (WikiTextDataModule, dict(seed=-1), "seed"),
    (WikiTextDataModule, dict(seed="0"), "seed"),
    (WikiTextDataModule, dict(seed=1.5), "seed"),
    (CIFAR10DataModule, dict(seed=2**64), "seed"),
    (WikiTextDataModule, dict(data_source=None), "data_source"),
    (WikiTextDataModule, dict(data_dir=3), "data_dir"),
    (WikiTextDataModule, dict(batch_size=float("nan")), "batch_size"),
    (IMDBDataModule, dict(vocab_size=float("nan")), "vocab_size"),
    (IMDBDataModule, dict(tokenizer="byte", vocab_size=-3), "vocab_size"),
    (IMDBDataModule, dict(val_fraction=float("nan")), "val_fraction"),
    (IMDBDataModule, dict(lowercase="no"), "lowercase"),
    (IMDBDataModule, dict(add_cls="no"), "add_cls"),
    (IMDBDataModule, dict(bucket_by_length="no"), "bucket_by_length"),
    (IMDBDataModule, dict(add_cls=True, max_len=1), "max_len"),
    (IMDBDataModule, dict(data_source="synthetic", tokenizer="byte", val_fraction=0.01, synthetic_sizes=(10, 4)),
     "val_fraction"),
    (CIFAR10DataModule, dict(verify_checksums=1), "verify_checksums"),
    (CIFAR10DataModule, dict(image_size=32.0), "image_size"),
    (CIFAR10DataModule, dict(check_stats="no"), "check_stats"),
    (CIFAR10DataModule, dict(hub_name=3), "hub_name"),
    (CIFAR10DataModule, dict(image_size=8, crop_padding=8), "crop_padding"),
    (CIFAR10DataModule, dict(data_source="synthetic", synthetic_sizes=(10, 5), val_size=10), "val_size"),
    (CIFAR10DataModule, dict(num_workers=1.5), "num_workers"),
    (InpaintingDataModule, dict(hole_fraction=float("nan")), "hole_fraction"),
    (InpaintingDataModule, dict(mask=None), "mask"),
    (InpaintingDataModule, dict(datamodule=3), "datamodule"),
    (InpaintingDataModule, dict(seed="x"), "seed"),
]


@pytest.mark.parametrize("cls,kwargs,arg", BAD_ARGS,
                         ids=[f"{c.__name__}-{'-'.join(f'{k}={v!r}' for k, v in kw.items())}" for c, kw, _ in BAD_ARGS])
def test_invalid_argument_is_a_value_error_naming_argument_and_value(tmp_path, cls, kwargs, arg):
    kw = dict(kwargs) if "datamodule" in kwargs else dict(kwargs, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError) as e:
        cls(**kw)
    msg = str(e.value)
    one_sentence(msg)
    assert arg in msg and repr(kwargs[arg]) in msg
    assert cache_files(tmp_path / "cache") == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_cache_dir_that_is_a_file_is_named(tmp_path, name):
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(ValueError, match="cache_dir") as e:
        MODULES[name](data_source="synthetic", cache_dir=str(tmp_path / "cache"))
    one_sentence(str(e.value))
    assert str(tmp_path / "cache") in str(e.value) and "is a file" in str(e.value)


# ------------------------------------------------------------------ a data_dir that is missing or a file
@pytest.fixture
def hub_forbidden(monkeypatch):
    """A test under "auto" fails if the hub is tried: a mistyped --data-dir once cost 40 s of retries."""
    import datasets

    def no_hub(*a, **k):
        raise AssertionError("the hub was tried")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.mark.parametrize("name", sorted(MODULES) + ["inpainting"])
@pytest.mark.parametrize("what", ["missing", "file"])
def test_auto_with_a_wrong_data_dir_names_it_at_once_and_never_tries_the_hub(tmp_path, hub_forbidden, name, what):
    data = tmp_path / "data"
    if what == "file":
        data.write_text("not a folder")
    cache = tmp_path / "cache"
    make = MODULES.get(name, lambda **kw: InpaintingDataModule(val_size=1, **kw))
    dm = make(data_source="auto", data_dir=str(data), cache_dir=str(cache))
    refused(DataUnavailableError, dm.prepare_data, data, cache, data,
            "does not exist" if what == "missing" else "is a file")
    assert dm.source_used is None


def test_synthetic_imdb_task_needs_room_for_key_and_query():
    with pytest.raises(ValueError, match="max_len"):  # at construction: the sizes are known then
        IMDBDataModule(data_source="synthetic", tokenizer="byte", max_len=1, synthetic_sizes=(10, 4))


# ------------------------------------------------------------------ splits that are empty or too short
@pytest.mark.parametrize("split", ["train", "valid", "test"])
@pytest.mark.parametrize("content", ["", " \n \n"], ids=["empty", "blank-lines"])
def test_wikitext_split_without_text_is_named_not_trained_without_it(tmp_path, split, content):
    """An empty wiki.valid.tokens used to train with exit 0 and no validation at all."""
    data = write_wikitext(tmp_path / "data")
    (data / f"wiki.{split}.tokens").write_text(content)
    cache = tmp_path / "cache"
    dm = WikiTextDataModule(data_source="local", data_dir=str(data), cache_dir=str(cache), seq_len=4)
    refused(DataUnavailableError, dm.setup, data, cache, data / f"wiki.{split}.tokens", "no text")


def test_wikitext_split_shorter_than_one_block_names_file_and_seq_len(tmp_path):
    data = write_wikitext(tmp_path / "data")  # valid: 14 word tokens
    cache = tmp_path / "cache"
    kw = dict(data_source="local", data_dir=str(data), cache_dir=str(cache))
    refused(DataUnavailableError, WikiTextDataModule(seq_len=20, **kw).prepare_data, data, cache,
            data / "wiki.valid.tokens", "14", "seq_len + 1 = 21")
    # a cache entry built with a short seq_len is refused too when a longer one is asked
    WikiTextDataModule(seq_len=4, **kw).setup()
    before = cache_files(cache)
    with pytest.raises(DataUnavailableError, match="seq_len") as e:
        WikiTextDataModule(seq_len=20, **kw).setup()
    one_sentence(str(e.value))
    assert cache_files(cache) == before


def test_synthetic_wikitext_too_short_for_seq_len_is_named(tmp_path):
    cache = tmp_path / "cache"
    dm = WikiTextDataModule(data_source="synthetic", synthetic_tokens=100, seq_len=64, cache_dir=str(cache))
    refused(DataUnavailableError, dm.setup, tmp_path / "no-data", cache, "synthetic", "seq_len + 1 = 65")


@pytest.mark.parametrize("where", ["train/neg", "test/pos", "test/*"])
def test_imdb_split_or_class_without_reviews_is_named(tmp_path, where):
    acl = write_aclimdb(tmp_path / "data")
    split, polarity = where.split("/")
    for pol in (("neg", "pos") if polarity == "*" else (polarity,)):
        for p in (acl / split / pol).iterdir():
            p.unlink()
    cache = tmp_path / "cache"
    dm = IMDBDataModule(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(cache), tokenizer="byte")
    shown = f"no reviews in its {split} split" if polarity == "*" else f"no {where} reviews"
    refused(DataUnavailableError, dm.setup, tmp_path / "data", cache, acl, shown)


def test_imdb_val_fraction_giving_no_validation_review_is_named(tmp_path):
    write_aclimdb(tmp_path / "data")  # 8 training reviews: 0.05 of them rounds to none
    cache = tmp_path / "cache"
    dm = IMDBDataModule(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(cache), tokenizer="byte",
                        val_fraction=0.05)
    refused(DataUnavailableError, dm.prepare_data, tmp_path / "data", cache, "val_fraction 0.05", "8 reviews")


@pytest.mark.parametrize("layout", ["folder", "tar"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_empty_class_folder_is_named(tmp_path, layout, split):
    """An empty class folder used to drop the class silently (or leave it without a test image)."""
    src = tmp_path / ("data" if layout == "folder" else "src")
    write_image_folder(src)
    (src / split / "eel").mkdir()
    data = tmp_path / "data"
    if layout == "tar":
        data.mkdir()
        for s in ("train", "test"):
            with tarfile.open(data / f"{s}.tar.gz", "w:gz") as tf:
                tf.add(src / s, arcname=f"CIFAR-10-images/{s}")
    cache = tmp_path / "cache"
    dm = CIFAR10DataModule(data_source="local", data_dir=str(data), cache_dir=str(cache), val_size=1)
    refused(DataUnavailableError, dm.setup, data, cache, "eel", "holds no images")


def test_cifar_missing_or_empty_pickle_batch_is_named(tmp_path):
    d, _ = write_pickle_batches(tmp_path / "data")
    cache = tmp_path / "cache"
    kw = dict(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(cache), val_size=1)
    (d / "data_batch_4").unlink()
    refused(DataUnavailableError, CIFAR10DataModule(**kw).prepare_data, tmp_path / "data", cache,
            d / "data_batch_4", "missing")
    with open(d / "data_batch_4", "wb") as f:
        pickle.dump({b"labels": [], b"data": np.zeros((0, 3072), np.uint8)}, f)
    refused(DataUnavailableError, CIFAR10DataModule(**kw).prepare_data, tmp_path / "data", cache,
            d / "data_batch_4", "(0, 3072)")


def test_cifar_val_size_taking_every_training_image_is_named(tmp_path):
    write_image_folder(tmp_path / "data")  # 3 classes x 3 training images
    cache = tmp_path / "cache"
    dm = CIFAR10DataModule(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(cache), val_size=9)
    refused(DataUnavailableError, dm.setup, tmp_path / "data", cache, "val_size 9", "9")


def test_cifar_reflect_padding_as_large_as_the_images_is_named(tmp_path):
    write_image_folder(tmp_path / "data", size=8)
    cache = tmp_path / "cache"
    dm = CIFAR10DataModule(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(cache), val_size=1,
                           crop_padding=8)
    refused(DataUnavailableError, dm.setup, tmp_path / "data", cache, "crop_padding", "8")


def test_inpainting_hole_smaller_than_a_pixel_is_named(tmp_path):
    dm = InpaintingDataModule(hole_fraction=1e-4, data_source="synthetic", synthetic_sizes=(8, 4), val_size=2,
                              cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataUnavailableError, match="hole_fraction 0.0001") as e:
        dm.setup()
    one_sentence(str(e.value))


# ------------------------------------------------------------------ damaged caches rebuilt; failed writes leave nothing
def _damage(path: Path, how: str):
    if how == "truncated":
        truncate(path)
    else:  # a file that loads but holds something else
        torch.save({"not": "the cache"}, path)


@pytest.mark.parametrize("how", ["truncated", "other-content"])
def test_damaged_wikitext_cache_is_rebuilt(tmp_path, how, caplog):
    data = write_wikitext(tmp_path / "data")
    kw = dict(data_source="local", data_dir=str(data), cache_dir=str(tmp_path / "cache"), seq_len=4)
    first = WikiTextDataModule(**kw)
    first.setup()
    want = first.train_set.stream.clone()
    _damage(first.cache_path / "train.pt", how)
    with caplog.at_level(logging.WARNING):
        again = WikiTextDataModule(**kw)
        again.setup()
    assert torch.equal(again.train_set.stream, want) and "rebuilding" in caplog.text
    assert torch.equal(torch.load(first.cache_path / "train.pt", weights_only=True), want)


@pytest.mark.parametrize("how", ["truncated", "other-content"])
def test_damaged_imdb_cache_is_rebuilt(tmp_path, how):
    write_aclimdb(tmp_path / "data")
    kw = dict(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"),
              tokenizer="bpe", vocab_size=60, max_len=16, val_fraction=0.25)
    first = IMDBDataModule(**kw)
    first.setup()
    _damage(first.tokens_path, how)
    first.tokenizer_path.write_text("{ cut short")
    again = IMDBDataModule(**kw)
    again.setup()
    assert torch.equal(again.train_set.ids, first.train_set.ids) and again.tokenizer is not None


@pytest.mark.parametrize("how", ["truncated", "other-content"])
def test_damaged_cifar_cache_is_rebuilt(tmp_path, how):
    write_image_folder(tmp_path / "data")
    kw = dict(data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), val_size=1)
    first = CIFAR10DataModule(**kw)
    first.setup()
    _damage(first.cache_path / "test.pt", how)
    again = CIFAR10DataModule(**kw)
    again.setup()
    assert torch.equal(again.test_set.images, first.test_set.images)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_full_disk_while_caching_is_one_sentence_and_leaves_no_file(tmp_path, monkeypatch, name):
    make_data = {"imdb": lambda d: write_aclimdb(d), "wikitext": write_wikitext, "cifar": write_image_folder}[name]
    make_data(tmp_path / "data")
    cache = tmp_path / "cache"

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    kw = dict(seq_len=4) if name == "wikitext" else {}
    dm = MODULES[name](data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(cache), **kw)
    before = snapshot(tmp_path / "data")
    msg = raises_clean(DataUnavailableError, dm.prepare_data, cache, "No space left on device", "--cache-dir")
    assert str(cache) in msg and snapshot(tmp_path / "data") == before
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name], "a temporary file or folder was left behind"
