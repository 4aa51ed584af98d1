"""LRA Text: IMDB bytes with LRA's ids (0 = padding, byte + 1), max_len truncation, IMDB's splits and cache,
the resumable training loader, the synthetic source; the real copy when ../shared/data has it."""
from pathlib import Path

import pytest
import torch

from datamodules.common import DataUnavailableError
from datamodules.imdb import IMDBDataModule
from datamodules.imdb_readers import read_aclimdb
from datamodules.lra_text import BYTE_VOCAB, LRATextDataModule
from datamodules.resumable import EpochBatches

LONG = "A long review. " * 20  # 300 bytes: cut at max_len
# (split, polarity, id, rating, text)
REVIEWS = [
    ("train", "pos", 0, 9, "Great film.<br /><br />Loved it."),
    ("train", "pos", 1, 8, "Caf\u00e9 scenes, na\u00efve and lovely \u2014 10/10."),  # 2- and 3-byte UTF-8
    ("train", "pos", 2, 10, LONG),
    ("train", "neg", 0, 1, "Awful."),
    ("train", "neg", 1, 2, "Bad, bad, bad."),
    ("train", "neg", 2, 3, "Dull plot."),
    ("test", "pos", 0, 10, "Superb."),
    ("test", "neg", 0, 1, "Terrible " * 40),
]


def write_acl(root: Path) -> Path:
    for split, pol, rid, rating, text in REVIEWS:
        d = root / "aclImdb" / split / pol
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{rid}_{rating}.txt").write_text(text, encoding="utf-8")
    return root


def make(tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return LRATextDataModule(**kw)


def check_batch(batch, max_len):
    ids, mask = batch["input_ids"], batch["mask"]
    assert set(batch) == {"input_ids", "mask", "labels", "index"}
    assert ids.dtype == torch.long and mask.dtype == torch.bool and batch["labels"].dtype == torch.long
    assert ids.dim() == 2 and ids.shape == mask.shape and ids.shape[1] <= max_len
    assert torch.equal(mask, ids != 0)
    assert int(ids[mask].min()) >= 1 and int(ids.max()) <= 256
    assert set(batch["labels"].tolist()) <= {0, 1}


def test_local_reviews_are_their_bytes_plus_one_cut_at_max_len(tmp_path):
    data = write_acl(tmp_path / "data")
    dm = make(tmp_path, data_source="local", data_dir=str(data), max_len=64, val_fraction=0.34, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.vocab_size, dm.num_classes, dm.pad_id, dm.seq_len, dm.source_used) == (BYTE_VOCAB, 2, 0, 64, "local")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4, 2, 2)  # validation from training
    raw = read_aclimdb(data / "aclImdb")
    for ds, split in ((dm.test_set, "test"), (dm.train_set, "train"), (dm.val_set, "train")):
        for i in range(len(ds)):
            item = ds[i]
            j = int(ds.index[i])
            expected = raw[split]["text"][j].encode("utf-8")[:64]
            assert bytes((item["input_ids"] - 1).tolist()) == expected
            assert item["label"] == raw[split]["label"][j]
    lengths = torch.cat([dm.train_set.lengths, dm.val_set.lengths, dm.test_set.lengths])
    assert int(lengths.max()) == 64  # the long reviews are cut
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            check_batch(batch, 64)


def test_ids_are_imdb_byte_ids_shifted_by_two_and_the_cache_is_shared(tmp_path, monkeypatch):
    data = write_acl(tmp_path / "data")
    imdb = IMDBDataModule(data_source="local", data_dir=str(data), cache_dir=str(tmp_path / "cache"),
                          tokenizer="byte", lowercase=False, max_len=64, val_fraction=0.34)
    imdb.setup()
    assert imdb.vocab_size == 259
    monkeypatch.setattr("datamodules.imdb.read_aclimdb", lambda root: pytest.fail("the IMDB cache was not reused"))
    dm = make(tmp_path, data_source="local", data_dir=str(data), max_len=64, val_fraction=0.34)
    dm.setup()
    for a, b in ((dm.train_set, imdb.train_set), (dm.test_set, imdb.test_set)):
        assert len(a) == len(b)
        for i in range(len(a)):
            assert torch.equal(a[i]["input_ids"], b[i]["input_ids"] - 2)


def test_synthetic_covers_every_byte_id_and_is_deterministic(tmp_path):
    kw = dict(data_source="synthetic", max_len=48, synthetic_sizes=(60, 20), batch_size=16, seed=3)
    a, b = make(tmp_path, **kw), make(tmp_path, **kw)
    for dm in (a, b):
        dm.prepare_data()
        dm.setup()
    assert a.vocab_size == BYTE_VOCAB and a.seq_len == 48 and a.source_used == "synthetic"
    ids = a.train_set.ids
    assert int(ids.min()) >= 1 and int(ids.max()) == 256  # the whole 1 .. 256 range is used, no id above
    ea, eb = list(a.train_dataloader()), list(b.train_dataloader())
    assert len(ea) == 4 and all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(ea, eb))
    for batch in ea + list(a.test_dataloader()):
        check_batch(batch, 48)


def test_training_loader_resumes_mid_epoch(tmp_path):
    kw = dict(data_source="synthetic", max_len=32, synthetic_sizes=(50, 10), batch_size=8, seed=1)
    full = make(tmp_path, **kw)
    full.setup()
    loader = full.train_dataloader()
    assert isinstance(loader.sampler, EpochBatches)
    batches = list(loader)
    resumed = make(tmp_path, **kw)
    resumed.load_state_dict({"position": {"epoch": 0, "done": 2}})
    resumed.setup()
    rest = list(resumed.train_dataloader())
    assert len(rest) == len(batches) - 2
    assert all(torch.equal(x["index"], y["index"]) for x, y in zip(rest, batches[2:]))


def test_bad_arguments_and_missing_data(tmp_path):
    with pytest.raises(ValueError, match="max_len"):
        LRATextDataModule(max_len=0)
    with pytest.raises(ValueError, match="val_fraction"):
        LRATextDataModule(val_fraction=1.5)
    with pytest.raises(ValueError, match="data_source"):
        LRATextDataModule(data_source="generated")  # IMDB has no generator of its own
    with pytest.raises(DataUnavailableError, match="aclImdb"):
        make(tmp_path, data_source="local", data_dir=str(tmp_path)).prepare_data()


# ---------------------------------------------------------------------------------------------- real data
def test_real_imdb_bytes(shared_data, tmp_path):
    dm = make(tmp_path, data_source="auto", data_dir=str(shared_data / "imdb"), batch_size=32)
    dm.prepare_data()
    dm.setup()
    assert dm.source_used == "local" and dm.seq_len == 4096 and dm.vocab_size == 257
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (22500, 2500, 25000)
    assert int(dm.test_set.lengths.max()) == 4096 and int(dm.test_set.ids.min()) >= 1
    raw = read_aclimdb(shared_data / "imdb" / "aclImdb.tar.gz")
    for i in (0, 12500, 24999):
        assert bytes((dm.test_set[i]["input_ids"] - 1).tolist()) == raw["test"]["text"][i].encode("utf-8")[:4096]
    for loader in (dm.train_dataloader(), dm.test_dataloader()):
        check_batch(next(iter(loader)), 4096)
