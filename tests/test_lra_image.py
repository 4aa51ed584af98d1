"""LRA Image: tf.image.rgb_to_grayscale's greyscale (float32, truncated) checked against exact arithmetic on
every colour, row-major pixel tokens = grey + 1, CIFAR-10's readers under it (pickle batches written here),
determinism on synthetic images; on the real copy (../shared/data), the grey values against an independent
decoding and the mean against the one the published channel means give."""
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.cifar import CIFAR10_MEAN, synthetic_split
from datamodules.cifar_readers import CIFAR10_CLASSES
from datamodules.common import DataUnavailableError
from datamodules.greyscale import LUMA_WEIGHTS, rgb_to_grey
from datamodules.lra_image import PIXEL_VOCAB, LRAImageDataModule
from datamodules.resumable import EpochBatches

# mean grey value of the shared copy's 50,000 training images (JPEG, quality ~75), computed independently
# from the decoded arrays with exact integer arithmetic by benchmarks/bench_lra_data_stats.py
SHARED_COPY_TRAIN_GREY_MEAN = 122.43188


def exact_grey(rgb: np.ndarray) -> np.ndarray:
    """trunc(255.5 * (0.2989 R + 0.5870 G + 0.1140 B) / 255) in integers; rgb (..., 3) uint8 -> (...) int64."""
    r, g, b = (rgb[..., c].astype(np.int64) for c in range(3))
    return (511 * (2989 * r + 5870 * g + 1140 * b)) // (2 * 10000 * 255)


def published_mean_grey() -> float:
    """The mean grey value the published CIFAR-10 channel means imply: the luma is linear, and truncation
    takes half a level on average."""
    return 255.5 * sum(w * m for w, m in zip(LUMA_WEIGHTS, CIFAR10_MEAN)) - 0.5


def write_pickle_batches(root: Path, per_batch=3, seed=0):
    """cifar-10-batches-py: b"data" (N, 3072) uint8 in CHW order; returns {name: (HWC images, labels)}."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    content = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        hwc = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(d / name, "wb") as f:
            pickle.dump({b"labels": labels, b"data": hwc.transpose(0, 3, 1, 2).reshape(per_batch, 3072)}, f)
        content[name] = (hwc, labels)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f)
    return d, content


def make(tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return LRAImageDataModule(**kw)


def check_batch(batch, batch_size):
    ids, mask = batch["input_ids"], batch["mask"]
    assert set(batch) == {"input_ids", "mask", "labels", "index"}
    assert ids.dtype == torch.long and ids.shape == (batch_size, 1024) and mask.all()
    assert int(ids.min()) >= 1 and int(ids.max()) <= 256
    assert batch["labels"].dtype == torch.long and set(batch["labels"].tolist()) <= set(range(10))


# ------------------------------------------------------------------------------------------- greyscale
def test_greyscale_is_tensorflows_float32_truncation_on_every_colour():
    v = torch.arange(256, dtype=torch.uint8)
    rgb = torch.stack(torch.meshgrid(v, v, v, indexing="ij"), -1).view(-1, 3)  # all 2^24 colours
    images = rgb.T.reshape(3, -1, 32, 32).permute(1, 0, 2, 3).contiguous()  # (16384, 3, 32, 32)
    ours = rgb_to_grey(images).reshape(-1).long().numpy()
    exact = exact_grey(rgb.numpy())
    diff = ours - exact
    # float32 rounds 237 colours up across a level boundary; no other difference
    assert set(np.unique(diff).tolist()) == {0, 1} and int((diff != 0).sum()) == 237
    # primaries, black, white, and greys kept as they are
    def grey(r, g, b):
        return int(rgb_to_grey(torch.tensor([r, g, b], dtype=torch.uint8).view(1, 3, 1, 1)))

    assert [grey(0, 0, 0), grey(255, 255, 255), grey(255, 0, 0), grey(0, 255, 0), grey(0, 0, 255)] == [0, 255, 76, 149, 29]
    assert all(grey(x, x, x) == x for x in range(256))


def test_bad_images_for_greyscale_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        rgb_to_grey(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="N, 3, H, W"):
        rgb_to_grey(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))


# ------------------------------------------------------------------------------------------ the module
def test_pickle_batches_become_row_major_grey_tokens(tmp_path):
    root, content = write_pickle_batches(tmp_path / "data")
    dm = make(tmp_path, data_source="local", data_dir=str(root.parent), val_size=3, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.vocab_size, dm.num_classes, dm.pad_id, dm.seq_len, dm.source_used) == (PIXEL_VOCAB, 10, 0, 1024, "local")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 3, 3)
    hwc, labels = content["test_batch"]
    for i in range(3):
        item = dm.test_set[i]
        expected = exact_grey(hwc[i]).reshape(-1) + 1  # row-major: pixel (r, c) at r * 32 + c
        assert np.abs(item["input_ids"].numpy() - expected).max() <= 1  # off by one only on the 237 colours
        assert item["label"] == labels[i] and item["index"] == i
    train = np.concatenate([content[f"data_batch_{k}"][0] for k in range(1, 6)])
    j = int(dm.train_set.indices[0])
    assert np.abs(dm.train_set[0]["input_ids"].numpy() - (exact_grey(train[j]).reshape(-1) + 1)).max() <= 1
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        check_batch(batch, len(batch["labels"]))


def test_one_bright_pixel_lands_at_row_times_32_plus_column(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for c, (r, col) in (("a", (0, 5)), ("b", (7, 31))):
            (root / split / c).mkdir(parents=True)
            arr = np.zeros((32, 32, 3), dtype=np.uint8)
            arr[r, col] = 255
            for k in range(2):
                Image.fromarray(arr).save(root / split / c / f"{k}.png")
    dm = make(tmp_path, data_source="local", data_dir=str(root), val_size=1, batch_size=2)
    dm.setup()
    assert dm.num_classes == 2
    for item in (dm.test_set[i] for i in range(len(dm.test_set))):
        r, col = (0, 5) if item["label"] == 0 else (7, 31)
        ids = item["input_ids"]
        assert ids[r * 32 + col] == 256 and int((ids != 1).sum()) == 1  # white = 255 + 1, black = 0 + 1


def test_images_other_than_32_by_32_are_refused(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(root / split / "a" / f"{k}.png")
    dm = make(tmp_path, data_source="local", data_dir=str(root), val_size=1)
    with pytest.raises(DataUnavailableError, match="32 x 32"):
        dm.setup()


def test_synthetic_is_deterministic_and_the_grey_of_cifars_synthetic_images(tmp_path):
    kw = dict(data_source="synthetic", synthetic_sizes=(120, 40), val_size=20, batch_size=32, seed=4)
    a, b, c = make(tmp_path, **kw), make(tmp_path, **kw), make(tmp_path, **{**kw, "seed": 5})
    for dm in (a, b, c):
        dm.prepare_data()
        dm.setup()
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (100, 20, 40)
    images, labels = synthetic_split(120, 4 * 2, 32)  # CIFAR10DataModule's synthetic training split
    assert torch.equal(a.train_set.pixels, rgb_to_grey(images).flatten(1)) and torch.equal(a.train_set.labels, labels)
    ea, eb, ec = list(a.train_dataloader()), list(b.train_dataloader()), list(c.train_dataloader())
    assert len(ea) == 4 and all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(ea, eb))
    assert not torch.equal(ea[0]["input_ids"], ec[0]["input_ids"])
    assert isinstance(a.train_dataloader().sampler, EpochBatches)
    for batch in ea[:-1]:
        check_batch(batch, 32)
    # the image's grey values shifted by one, nothing else: no augmentation, no normalisation
    item = a.train_set[0]
    assert torch.equal(item["input_ids"], a.train_set.pixels[int(a.train_set.indices[0])].long() + 1)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="val_size"):
        LRAImageDataModule(val_size=-1)
    with pytest.raises(ValueError, match="batch_size"):
        LRAImageDataModule(batch_size=0)
    with pytest.raises(ValueError, match="synthetic_sizes"):
        LRAImageDataModule(synthetic_sizes=(10,))


# ---------------------------------------------------------------------------------------------- real data
def _independent_grey(tar_path: Path, limit=None):
    """{(class, file name): exact grey (32, 32)} decoded with PIL straight from the tar.gz."""
    out = {}
    with tarfile.open(tar_path) as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".jpg"):
                parts = Path(m.name).parts
                with Image.open(io.BytesIO(tf.extractfile(m).read())) as im:
                    out[(parts[-2], parts[-1])] = exact_grey(np.asarray(im.convert("RGB")))
                if limit is not None and len(out) >= limit:
                    break
    return out


def test_real_test_split_grey_values(shared_data, tmp_path):
    dm = make(tmp_path, data_dir=str(shared_data / "cifar10-jpg"))
    rgb, labels, classes = dm.load_split("test")  # CIFAR10DataModule's reader: sorted by class, then file
    ours = rgb_to_grey(rgb).long().numpy()
    independent = _independent_grey(shared_data / "cifar10-jpg" / "test.tar.gz")
    keys = sorted(independent, key=lambda k: (classes.index(k[0]), k[1]))
    exact = np.stack([independent[k] for k in keys])
    diff = ours - exact
    assert set(np.unique(diff).tolist()) <= {0, 1} and (diff != 0).mean() < 1e-4
    assert abs(ours.mean() - published_mean_grey()) < 1.5  # the test split's mean is not the training one's


@pytest.mark.slow
def test_real_training_split_mean_grey(shared_data, tmp_path):
    dm = make(tmp_path, data_source="local", data_dir=str(shared_data / "cifar10-jpg"))
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (45_000, 5_000, 10_000)
    pixels = dm.train_set.pixels  # all 50,000 training images (validation included)
    mean = pixels.double().mean().item()
    assert abs(mean - SHARED_COPY_TRAIN_GREY_MEAN) < 1e-3
    assert abs(mean - published_mean_grey()) < 0.35  # JPEG and 4-digit published means
    independent = _independent_grey(shared_data / "cifar10-jpg" / "train.tar.gz")
    exact_mean = np.mean([g.mean() for g in independent.values()])
    assert abs(mean - exact_mean) < 1e-3
    check_batch(next(iter(dm.train_dataloader())), 256)
