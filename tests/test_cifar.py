"""CIFAR-10 DataModule: the three local layouts, the hub path, the decoded cache, augmentation, real data."""
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datamodules.cifar_readers as readers
from datamodules.cifar import CIFAR10_MEAN, CIFAR10_STATS_TOL, CIFAR10_STD, CIFAR10DataModule
from datamodules.cifar_readers import CIFAR10_CLASSES, CIFAR10_MD5, ChecksumError
from datamodules.common import DataUnavailableError
from datamodules.image_augment import BatchTransform, channel_stats, hflip, random_crop


# ------------------------------------------------------------------ fixtures written by the tests
def _rand_images(n, seed, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_pickle_batches(root: Path, per_batch=4, seed=0):
    """The official cifar-10-batches-py format: pickled dicts, b"data" (N, 3072) uint8 in CHW order, b"labels"."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    content = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        hwc = _rand_images(per_batch, rng.integers(1 << 30))
        labels = rng.integers(0, 10, per_batch).tolist()
        data = hwc.transpose(0, 3, 1, 2).reshape(per_batch, 3072)
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, f)
        content[name] = (hwc, labels)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": per_batch,
                     b"num_vis": 3072}, f)
    return d, content


def write_image_folder(root: Path, classes=("cat", "dog", "ant"), per_class=(3, 2), size=32, ext="png"):
    """<root>/{train,test}/<class>/NNNN.png; returns {split: [(class, array), ...]} in loader order."""
    out = {}
    for split, n in zip(("train", "test"), per_class):
        out[split] = []
        for c in sorted(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = _rand_images(1, hash((split, c, i)) % (1 << 30), size)[0]
                Image.fromarray(arr).save(root / split / c / f"{i:04d}.{ext}")
                out[split].append((c, arr))
    return out


def make_dm(tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("batch_size", 4)
    kw.setdefault("val_size", 2)
    return CIFAR10DataModule(**kw)


# ------------------------------------------------------------------ pickle batches
def test_pickle_batches_load_in_the_official_layout(tmp_path):
    _, content = write_pickle_batches(tmp_path / "data")
    dm = make_dm(tmp_path, data_source="auto", data_dir=str(tmp_path / "data"))
    dm.prepare_data()
    dm.setup()
    assert dm.source_used == "local" and dm.local_format == "pickle"
    x, y, classes = dm.load_split("train")
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and classes == list(CIFAR10_CLASSES)
    hwc, labels = content["data_batch_3"]
    assert torch.equal(x[8:12], torch.from_numpy(hwc).permute(0, 3, 1, 2)) and y[8:12].tolist() == labels
    tx, ty, _ = dm.load_split("test")
    assert torch.equal(tx, torch.from_numpy(content["test_batch"][0]).permute(0, 3, 1, 2))
    assert len(dm.train_set) == 18 and len(dm.val_set) == 2 and len(dm.test_set) == 4
    assert dm.num_classes == 10 and dm.image_size == 32 and dm.channels == 3


def test_checksummed_file_with_wrong_content_is_a_clear_error(tmp_path):
    d, _ = write_pickle_batches(tmp_path / "data")
    # verify_checksums=True checks every officially named file: the hand-made batches are not the official ones
    dm = make_dm(tmp_path, data_source="local", data_dir=str(tmp_path / "data"), verify_checksums=True)
    with pytest.raises(ChecksumError, match=r"checksum mismatch .*batches\.meta.*5ff9c542aee3614f3951f8cda6e48888"):
        dm.prepare_data()
    (d / "batches.meta").unlink()
    with pytest.raises(ChecksumError, match=r"data_batch_1.*c99cafc152244af753f735de768cd75f"):
        dm.prepare_data()
    # "auto" (the default) checks the files whose size claims an official full batch (10,000 images)
    (d / "test_batch").write_bytes(b"\0" * readers.OFFICIAL_BATCH_MIN_BYTES)
    dm = make_dm(tmp_path, data_source="local", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "c2"))
    with pytest.raises(ChecksumError, match=r"test_batch.*40351d587109b95175f43aff81a1287e"):
        dm.prepare_data()


def test_md5_table_holds_the_reference_figures():
    assert CIFAR10_MD5["data_batch_1"] == "c99cafc152244af753f735de768cd75f"
    assert CIFAR10_MD5["test_batch"] == "40351d587109b95175f43aff81a1287e"
    assert readers.md5sum(Path(__file__)) == hashlib.md5(Path(__file__).read_bytes()).hexdigest()


# ------------------------------------------------------------------ image folders and tar.gz
def test_image_folder_is_a_local_source_with_sorted_folder_classes(tmp_path):
    content = write_image_folder(tmp_path / "imgs" / "MyData")  # found one folder down
    dm = make_dm(tmp_path, data_source="auto", data_dir=str(tmp_path / "imgs"), val_size=1)
    dm.setup()
    assert dm.source_used == "local" and dm.local_format == "folder"
    assert dm.classes == ["ant", "cat", "dog"] and dm.num_classes == 3
    x, y, _ = dm.load_split("train")
    assert x.shape == (9, 3, 32, 32)
    for i, (c, arr) in enumerate(content["train"]):  # PNG is lossless: exact pixels
        assert torch.equal(x[i], torch.from_numpy(arr).permute(2, 0, 1)) and dm.classes[y[i]] == c
    assert len(dm.test_set) == 6


def test_image_folder_at_another_resolution_and_resize(tmp_path):
    write_image_folder(tmp_path / "d", size=20)
    dm = make_dm(tmp_path, data_source="local", data_dir=str(tmp_path / "d"), val_size=1)
    dm.setup()
    assert dm.image_size == 20
    dm = make_dm(tmp_path, data_source="local", data_dir=str(tmp_path / "d"), val_size=1, image_size=16)
    dm.setup()
    assert dm.image_size == 16 and next(iter(dm.val_dataloader()))[0].shape[-2:] == (16, 16)


def test_tar_gz_is_decoded_once_and_the_cache_reused(tmp_path, monkeypatch):
    content = write_image_folder(tmp_path / "src" / "CIFAR-10-images")
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        with tarfile.open(data / f"{split}.tar.gz", "w:gz") as tf:
            tf.add(tmp_path / "src" / "CIFAR-10-images" / split, arcname=f"CIFAR-10-images/{split}")
    dm = make_dm(tmp_path, data_source="local", data_dir=str(data), val_size=1)
    dm.prepare_data()
    assert dm.local_format == "tar"
    cache = dm.cache_path
    assert sorted(p.name for p in cache.iterdir()) == ["test.pt", "train.pt"]
    x1, y1, _ = dm.load_split("train")
    assert torch.equal(x1[0], torch.from_numpy(content["train"][0][1]).permute(2, 0, 1))

    def no_tar(*a, **k):
        raise AssertionError("the tar.gz was opened again")

    monkeypatch.setattr(readers.tarfile, "open", no_tar)
    dm2 = make_dm(tmp_path, data_source="local", data_dir=str(data), val_size=1)
    dm2.prepare_data()
    dm2.setup()
    x2, y2, _ = dm2.load_split("train")
    assert dm2.cache_path == cache and torch.equal(x1, x2) and torch.equal(y1, y2)


# ------------------------------------------------------------------ hub
class FakeSplit(list):
    def __init__(self, rows):
        super().__init__(rows)
        self.column_names = ["img", "label"]

    def __getitem__(self, k):
        if k == "label":
            return [r["label"] for r in self]
        return list.__getitem__(self, k)


def test_hub_path_decodes_pil_images(tmp_path, monkeypatch):
    import datasets

    arrays = _rand_images(8, 5)
    calls = []

    def fake_load(name, *a, **k):
        calls.append(name)
        def mk(sl):
            return FakeSplit([{"img": Image.fromarray(a), "label": i % 10} for i, a in enumerate(arrays[sl])])

        return {"train": mk(slice(0, 6)), "test": mk(slice(6, 8))}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    dm = make_dm(tmp_path, data_source="hub")
    dm.prepare_data()
    dm.setup()
    assert calls == ["uoft-cs/cifar10"] and dm.source_used == "hub"
    x, y, _ = dm.load_split("train")
    assert torch.equal(x, torch.from_numpy(arrays[:6]).permute(0, 3, 1, 2)) and y.tolist() == list(range(6))
    make_dm(tmp_path, data_source="hub").prepare_data()  # cached: no second download
    assert calls == ["uoft-cs/cifar10"]


def test_hub_failure_under_auto_names_three_ways_and_never_goes_synthetic(hub_down, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()  # a folder that exists but holds no copy: the hub is next
    dm = make_dm(tmp_path, data_source="auto", data_dir=str(tmp_path / "empty"))
    with pytest.raises(DataUnavailableError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert "--data-dir" in msg and "download" in msg and "--data-source synthetic" in msg and "ConnectionError" in msg
    assert dm.source_used != "synthetic"


# ------------------------------------------------------------------ synthetic, augmentation, normalisation
def test_synthetic_is_deterministic_and_class_dependent(tmp_path):
    kw = dict(data_source="synthetic", synthetic_sizes=(400, 100), val_size=100, batch_size=32)
    a, b = make_dm(tmp_path, seed=3, **kw), make_dm(tmp_path, seed=3, **kw)
    a.setup(), b.setup()
    xa, ya, _ = a.load_split("train")
    xb, yb, _ = b.load_split("train")
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and a.source_used == "synthetic"
    class_means = torch.stack([xa[ya == c].float().mean((0, 2, 3)) for c in range(10)])
    assert torch.cdist(class_means, class_means).add(torch.eye(10) * 1e3).min() > 5  # classes differ
    ba, bb = next(iter(a.train_dataloader())), next(iter(b.train_dataloader()))
    assert torch.equal(ba[0], bb[0]) and torch.equal(ba[1], bb[1])  # same seed, same augmented batch
    assert ba[0].shape == (32, 3, 32, 32) and ba[0].dtype == torch.float32


def test_crop_and_flip():
    x = torch.rand(16, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    for mode in ("reflect", "zeros"):
        c = random_crop(x, 2, mode, g)
        assert c.shape == x.shape
    # every crop is a shifted window of the zero-padded image
    c = random_crop(x, 2, "zeros", torch.Generator().manual_seed(1))
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        assert any(torch.equal(c[i], xp[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))
    f = hflip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(f[i], x[i].flip(-1)) for i in range(16)]
    kept = [torch.equal(f[i], x[i]) for i in range(16)]
    assert all(a or b for a, b in zip(flipped, kept)) and any(flipped) and any(kept)
    assert torch.equal(hflip(x, torch.Generator().manual_seed(0)), f)  # deterministic with a seed


def test_normalisation_gives_zero_mean_unit_std_and_strong_augment_runs(tmp_path):
    dm = make_dm(tmp_path, data_source="synthetic", synthetic_sizes=(300, 50), val_size=50, batch_size=300,
                 augment="strong")
    dm.setup()
    x, _, _ = dm.load_split("train")
    z = BatchTransform(dm.mean, dm.std, "none")(x, train=False)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    loader = dm.train_dataloader()
    xb, yb = next(iter(loader))
    assert xb.shape == (250, 3, 32, 32) and torch.isfinite(xb).all() and yb.shape == (250,)
    assert not torch.allclose(xb, next(iter(loader))[0])  # fresh randomness each epoch
    assert torch.equal(xb, next(iter(dm.train_dataloader()))[0])  # and the same epoch 0 for the same seed


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="augment"):
        CIFAR10DataModule(augment="heavy")
    with pytest.raises(ValueError, match="padding_mode"):
        CIFAR10DataModule(padding_mode="wrap")
    with pytest.raises(DataUnavailableError, match="cifar-10-batches-py"):
        make_dm(tmp_path, data_source="local", data_dir=str(tmp_path)).prepare_data()


# ------------------------------------------------------------------ real data (../shared/data)
# The shared copy is JPEG at quality ~75: decoding is lossy, the mean moves by < 1e-3 and the std drops by
# about 0.002 (JPEG smooths). The tolerance 0.01 (CIFAR10_STATS_TOL) covers that and the train/test difference.
def test_real_cifar10_test_split(shared_data, tmp_path):
    dm = CIFAR10DataModule(data_source="auto", data_dir=str(shared_data / "cifar10-jpg"), cache_dir=str(tmp_path))
    x, y, classes = dm.load_split("test")
    assert dm.source_used == "local" and dm.local_format == "tar"
    assert classes == list(CIFAR10_CLASSES)
    assert x.shape == (10_000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
    mean, std = channel_stats(x)
    assert np.allclose(mean, CIFAR10_MEAN, atol=CIFAR10_STATS_TOL)
    assert np.allclose(std, CIFAR10_STD, atol=CIFAR10_STATS_TOL)


@pytest.mark.slow
def test_real_cifar10_full_train_split(shared_data, tmp_path):
    dm = CIFAR10DataModule(data_source="local", data_dir=str(shared_data / "cifar10-jpg"), cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup()
    x, y, _ = dm.load_split("train")
    assert x.shape == (50_000, 3, 32, 32)
    assert torch.bincount(y, minlength=10).tolist() == [5000] * 10
    assert np.allclose(dm.mean, CIFAR10_MEAN, atol=0.002) and np.allclose(dm.std, CIFAR10_STD, atol=0.005)
    assert len(dm.train_set) == 45_000 and len(dm.val_set) == 5_000 and len(dm.test_set) == 10_000
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (128, 3, 32, 32) and abs(xb.mean().item()) < 0.3


def test_worker_processes_give_the_same_batches_for_the_same_seed(tmp_path):
    kw = dict(data_source="synthetic", synthetic_sizes=(64, 16), val_size=16, batch_size=16, num_workers=2, seed=5)
    a, b = make_dm(tmp_path, **kw), make_dm(tmp_path, **kw)
    ea = [x for x, _ in a.train_dataloader()]
    eb = [x for x, _ in b.train_dataloader()]
    assert len(ea) == 3 and all(torch.equal(x, y) for x, y in zip(ea, eb))
    assert not torch.equal(ea[0], ea[1])
