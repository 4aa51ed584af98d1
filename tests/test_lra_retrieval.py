"""LRA Retrieval: the release's TSV layout (fixture files written here), byte + 1 ids cut at max_len, (B, 2, L)
batches, the caches, the one-sentence errors for missing or malformed files, the synthetic pair task, the
resumable training loader."""
from pathlib import Path

import pytest
import torch

from datamodules.aan_pairs import AAN_FILES, read_pairs
from datamodules.common import DataUnavailableError
from datamodules.lra_retrieval import RetrievalDataModule
from datamodules.lra_retrieval_synthetic import KEYS
from datamodules.resumable import EpochBatches

LONG = "x" * 90
# (label, id1, id2, text1, text2) per split; the release writes the label as a float
PAIRS = {
    "train": [("1", "P01-1001", "P02-1002", "We cite the parser of Smith.", "A parser for English."),
              ("0", "P01-1003", "P02-1004", "Graph kernels.", "Speech tagging with HMMs."),
              ("1.0", "P01-1005", "P02-1006", "b'Bytes as a Python literal \\n stay as written'", LONG),
              ("0.0", "P01-1007", "P02-1008", "Na\u00efve Bayes \u2014 revisited.", "Caf\u00e9 corpus.")],
    "val": [("1", "E1", "E2", "Evaluation text one.", "Evaluation text two."),
            ("0", "E3", "E4", "Unrelated.", "Other.")],
    "test": [("0", "T1", "T2", "Test text.", "Another test text."),
             ("1", "T3", "T4", LONG, "Short.")],
}


def write_tsv(folder: Path, pairs=PAIRS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in pairs.items():
        lines = ["\t".join(row) for row in rows]
        (folder / AAN_FILES[split]).write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return folder


def make(tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return RetrievalDataModule(**kw)


def check_batch(batch, max_len):
    ids, mask = batch["input_ids"], batch["mask"]
    assert set(batch) == {"input_ids", "mask", "labels", "index"}
    assert ids.dtype == torch.long and mask.dtype == torch.bool and batch["labels"].dtype == torch.long
    assert ids.dim() == 3 and ids.shape[1] == 2 and ids.shape == mask.shape and ids.shape[2] <= max_len
    assert ids.shape[0] == batch["labels"].shape[0] == batch["index"].shape[0]
    assert torch.equal(mask, ids != 0) and int(ids.max()) <= 256
    # real tokens first in each document, padding after
    n = mask.sum(-1, keepdim=True)
    assert torch.equal(mask, torch.arange(ids.shape[2]) < n)


def doc(ids: torch.Tensor) -> bytes:
    return bytes((ids[ids != 0] - 1).tolist())


# ------------------------------------------------------------------------------------------ local files
@pytest.mark.parametrize("layout", ["", "lra_release/tsv_data", "lra_release/lra_release/tsv_data"])
def test_local_pairs_are_their_bytes_plus_one_cut_at_max_len(tmp_path, layout):
    write_tsv(tmp_path / "data" / layout)
    dm = make(tmp_path, data_source="local", data_dir=str(tmp_path / "data"), max_len=40, batch_size=3)
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.vocab_size, dm.num_classes, dm.pad_id, dm.seq_len, dm.source_used) == (257, 2, 0, 40, "local")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4, 2, 2)  # the release's three files
    for ds, split in ((dm.train_set, "train"), (dm.val_set, "val"), (dm.test_set, "test")):
        for i, (label, _, _, t1, t2) in enumerate(PAIRS[split]):
            item = ds[i]
            assert item["label"] == int(float(label)) and item["index"] == i
            d1, d2 = item["input_ids"]
            assert bytes((d1 - 1).tolist()) == t1.encode("utf-8")[:40]  # verbatim, b'...' literals included
            assert bytes((d2 - 1).tolist()) == t2.encode("utf-8")[:40]
    assert int(dm.train_set.lengths.max()) == 40
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            check_batch(batch, 40)
    batch = next(iter(dm.test_dataloader()))
    assert doc(batch["input_ids"][1, 0]) == LONG.encode()[:40] and doc(batch["input_ids"][1, 1]) == b"Short."


def test_cache_is_reused_and_a_damaged_one_rebuilt(tmp_path, monkeypatch):
    data = write_tsv(tmp_path / "data")
    first = make(tmp_path, data_dir=str(data), max_len=16)
    first.setup()
    cached = sorted(p.name for p in first.cache_path.iterdir())
    assert cached == ["test.pt", "train.pt", "val.pt"]
    monkeypatch.setattr("datamodules.lra_retrieval.read_pairs", lambda *a: pytest.fail("the cache was not reused"))
    second = make(tmp_path, data_dir=str(data), max_len=16)
    second.setup()
    assert torch.equal(second.train_set.data, first.train_set.data)
    monkeypatch.undo()
    val = first.val_set.data.clone()  # read memory-mapped: the file is about to be damaged in place
    (first.cache_path / "val.pt").write_bytes(b"truncated")
    third = make(tmp_path, data_dir=str(data), max_len=16)
    third.setup()
    assert torch.equal(third.val_set.data, val)
    other = make(tmp_path, data_dir=str(data), max_len=8)  # another length: another cache entry
    assert other.resolve_source() == "local" and other.cache_path != first.cache_path


# ------------------------------------------------------------------------------------------ missing data
def test_missing_files_are_one_sentence_naming_them_and_their_origin(tmp_path):
    for kw in (dict(), dict(data_dir=str(tmp_path)), dict(data_source="local", data_dir=str(tmp_path))):
        with pytest.raises(DataUnavailableError) as e:
            make(tmp_path, **kw).prepare_data()
        msg = str(e.value)
        assert all(name in msg for name in AAN_FILES.values())
        assert "lra_release/tsv_data/" in msg and "google-research/long-range-arena" in msg
        assert "cannot be generated" in msg
    (tmp_path / AAN_FILES["train"]).write_text("1\ta\tb\tc\td\n")
    with pytest.raises(DataUnavailableError, match=r"lacks new_aan_pairs\.eval\.tsv and new_aan_pairs\.test\.tsv"):
        make(tmp_path, data_dir=str(tmp_path)).prepare_data()


@pytest.mark.parametrize("line, match", [
    ("1\tid1\tid2\tonly four", r"line 2 has 4 tab-separated fields"),
    ("1\tid1\tid2\ta\tb\tc", r"line 2 has 6 tab-separated fields"),
    ("2\tid1\tid2\ta\tb", r"line 2 has the label b'2'"),
    ("yes\tid1\tid2\ta\tb", r"line 2 has the label b'yes'"),
])
def test_malformed_lines_name_the_file_and_line_and_nothing_is_cached(tmp_path, line, match):
    data = write_tsv(tmp_path / "data")
    good = (data / AAN_FILES["train"]).read_text().splitlines()
    (data / AAN_FILES["train"]).write_text("\n".join([good[0], line] + good[1:]) + "\n")
    dm = make(tmp_path, data_dir=str(data))
    with pytest.raises(DataUnavailableError, match=match) as e:
        dm.prepare_data()
    assert AAN_FILES["train"] in str(e.value)
    assert not list((tmp_path / "cache").rglob("*.pt"))


def test_empty_file_and_one_class_training_split_are_refused(tmp_path):
    data = write_tsv(tmp_path / "data")
    (data / AAN_FILES["test"]).write_text("")
    with pytest.raises(DataUnavailableError, match="holds no pairs"):
        make(tmp_path, data_dir=str(data)).setup()
    write_tsv(data, {"train": [r for r in PAIRS["train"] if float(r[0]) == 1], "test": PAIRS["test"]})
    with pytest.raises(DataUnavailableError, match="label 1 only"):
        make(tmp_path, data_dir=str(data)).setup()


def test_reader_keeps_the_bytes_verbatim(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"1\ta\tb\t\xff\xfe raw bytes\tsecond\r\n0\tc\td\t\tempty first\n")
    packed = read_pairs(path, max_len=5)
    assert packed["labels"].tolist() == [1, 0]
    o, data = packed["offsets"].tolist(), bytes(packed["bytes"].tolist())
    assert [data[o[k]:o[k + 1]] for k in range(4)] == [b"\xff\xfe ra", b"secon", b"", b"empty"]


# ------------------------------------------------------------------------------------- synthetic, loaders
def test_synthetic_label_needs_both_documents_and_is_deterministic(tmp_path):
    kw = dict(data_source="synthetic", max_len=32, synthetic_sizes=(200, 40, 40), batch_size=16, seed=2)
    a, b = make(tmp_path, **kw), make(tmp_path, **kw)
    for dm in (a, b):
        dm.prepare_data()
        dm.setup()
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (200, 40, 40) and a.source_used == "synthetic"
    assert int(a.train_set.labels.sum()) == 100  # balanced
    keys = set((KEYS.long() + 1).tolist())
    found = []
    for i in range(len(a.train_set)):
        item = a.train_set[i]
        k = [[t for t in d.tolist() if t in keys] for d in item["input_ids"]]
        assert len(k[0]) == 1 and len(k[1]) == 1  # one key per document
        assert item["label"] == int(k[0] == k[1])
        found.append((k[0][0], item["label"]))
    # each document's key alone says nothing: both labels see every key
    assert {key for key, label in found if label == 0} == {key for key, label in found if label == 1} == keys
    ea, eb = list(a.train_dataloader()), list(b.train_dataloader())
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(ea, eb))
    for batch in ea:
        check_batch(batch, 32)


def test_synthetic_seed_and_split_change_the_data(tmp_path):
    kw = dict(data_source="synthetic", max_len=32, synthetic_sizes=(20, 20, 20))
    a, b = make(tmp_path, seed=0, **kw), make(tmp_path, seed=1, **kw)
    a.setup()
    b.setup()
    assert not torch.equal(a.train_set.data[:64], b.train_set.data[:64])
    assert not torch.equal(a.train_set.data[:64], a.val_set.data[:64])


def test_training_loader_resumes_mid_epoch(tmp_path):
    kw = dict(data_source="synthetic", max_len=16, synthetic_sizes=(50, 10, 10), batch_size=8, seed=1)
    full = make(tmp_path, **kw)
    full.setup()
    loader = full.train_dataloader()
    assert isinstance(loader.sampler, EpochBatches)
    batches = list(loader)
    resumed = make(tmp_path, **kw)
    resumed.load_state_dict({"position": {"epoch": 0, "done": 3}})
    rest = list(resumed.train_dataloader())
    assert len(rest) == len(batches) - 3
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(rest, batches[3:]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_len"):
        RetrievalDataModule(max_len=0)
    with pytest.raises(ValueError, match="synthetic_sizes"):
        RetrievalDataModule(synthetic_sizes=(10, 10))
    with pytest.raises(ValueError, match="synthetic_sizes"):
        RetrievalDataModule(synthetic_sizes=(10, 0, 10))
    with pytest.raises(ValueError, match="data_source"):
        RetrievalDataModule(data_source="hub")  # the text cannot be downloaded either
