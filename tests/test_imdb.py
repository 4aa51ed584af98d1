"""IMDB DataModule: official layout (folder and tarball), hub path, synthetic data, caches, splits, batches."""
import collections
import tarfile
from pathlib import Path

import pytest
import torch

from datamodules.common import DataUnavailableError
from datamodules.imdb import IMDBDataModule
from datamodules.imdb_readers import read_aclimdb
from datamodules.text_batches import BucketBatchSampler

# (split, polarity, id, rating, text)
REVIEWS = [
    ("train", "pos", 0, 9, "A wonderful film.<br /><br />Great acting, great story."),
    ("train", "pos", 1, 8, "Loved it, loved every minute."),
    ("train", "pos", 2, 10, "Best movie of the year, truly great."),
    ("train", "pos", 3, 7, "Good fun, a great cast."),
    ("train", "neg", 0, 1, "Awful.<br />Terrible plot and bad acting."),
    ("train", "neg", 1, 2, "Boring, bad, a waste of time."),
    ("train", "neg", 2, 3, "Not good at all, terrible pacing."),
    ("train", "neg", 3, 4, "Bad script; awful ending."),
    ("test", "pos", 0, 10, "Great great great."),
    ("test", "pos", 1, 8, "A lovely, great film."),
    ("test", "neg", 0, 1, "Bad and boring."),
    ("test", "neg", 1, 2, "Terrible, awful film."),
]


def write_fixture(root: Path) -> Path:
    """A handful of reviews in the official aclImdb layout (plus files the reader must ignore)."""
    acl = root / "aclImdb"
    for split, pol, rid, rating, text in REVIEWS:
        d = acl / split / pol
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{rid}_{rating}.txt").write_text(text, encoding="utf-8")
    (acl / "train" / "unsup").mkdir(parents=True)
    (acl / "train" / "unsup" / "0_0.txt").write_text("unlabelled, must be ignored")
    (acl / "README").write_text("readme")
    (acl / "imdb.vocab").write_text("the\nand\n")
    return acl


@pytest.fixture
def acl_folder(tmp_path):
    return write_fixture(tmp_path / "data")


@pytest.fixture
def acl_tarball(tmp_path):
    src = write_fixture(tmp_path / "src")
    out = tmp_path / "tar"
    out.mkdir()
    with tarfile.open(out / "aclImdb_v1.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="aclImdb")
    return out


def _all_batches(loader):
    return list(loader)


def check_batch(batch, pad_id, max_len, batch_size=None):
    ids, mask, labels = batch["input_ids"], batch["mask"], batch["labels"]
    assert ids.dtype == torch.long and mask.dtype == torch.bool and labels.dtype == torch.long
    assert ids.shape == mask.shape and ids.dim() == 2 and ids.shape[0] == labels.shape[0]
    assert ids.shape[1] <= max_len
    if batch_size is not None:
        assert ids.shape[0] <= batch_size
    assert (ids[~mask] == pad_id).all()
    assert (ids[mask] != pad_id).all()
    # real tokens first, padding after; the longest sequence fills the batch width
    n = mask.sum(1)
    assert torch.equal(mask, torch.arange(ids.shape[1])[None, :] < n[:, None])
    assert n.max() == ids.shape[1]
    assert set(labels.tolist()) <= {0, 1}


# ---------------------------------------------------------------------------------------------- local fixture
def test_reader_parses_folder_and_tarball_the_same(acl_folder, acl_tarball):
    a = read_aclimdb(acl_folder)
    b = read_aclimdb(acl_tarball / "aclImdb_v1.tar.gz")
    assert a == b
    assert len(a["train"]["text"]) == 8 and len(a["test"]["text"]) == 4  # unsup and README ignored
    tr = a["train"]
    for text, label, rating in zip(tr["text"], tr["label"], tr["rating"]):
        assert "<br" not in text
        assert label == (1 if rating >= 7 else 0)
    i = tr["text"].index("A wonderful film.  Great acting, great story.")
    assert tr["label"][i] == 1 and tr["rating"][i] == 9
    assert sorted(tr["rating"]) == [1, 2, 3, 4, 7, 8, 9, 10]


@pytest.mark.parametrize("where", ["folder", "parent", "tarball"])
def test_local_source_from_folder_and_tarball(where, acl_folder, acl_tarball, tmp_path):
    data_dir = {"folder": acl_folder, "parent": acl_folder.parent, "tarball": acl_tarball}[where]
    dm = IMDBDataModule(data_source="local", data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"),
                        tokenizer="bpe", vocab_size=120, max_len=16, batch_size=3, val_fraction=0.25)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.source_used == "local" and dm.hparams["source_used"] == "local"
    assert dm.local_root.name == ("aclImdb_v1.tar.gz" if where == "tarball" else "aclImdb")
    assert dm.num_classes == 2 and dm.pad_id == 0 and dm.seq_len == 16
    assert len(dm.train_set) == 6 and len(dm.val_set) == 2 and len(dm.test_set) == 4
    assert 3 < dm.vocab_size <= 120
    assert dm.tokenizer.token_to_id("[PAD]") == 0 and dm.tokenizer.token_to_id("[CLS]") is not None
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            check_batch(batch, dm.pad_id, 16, 3)
    labels = torch.cat([b["labels"] for b in dm.test_dataloader()])
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    # the BPE vocabulary comes from the training split: a test-only word is unknown or split up
    assert dm.tokenizer.decode(dm.tokenizer.encode("great film").ids) == "great film"


def test_local_missing_names_the_layout(tmp_path):
    with pytest.raises(DataUnavailableError, match="aclImdb"):
        IMDBDataModule(data_source="local", data_dir=str(tmp_path)).prepare_data()


def test_byte_tokenizer_is_bytes_plus_offset(acl_folder, tmp_path):
    dm = IMDBDataModule(data_source="local", data_dir=str(acl_folder), cache_dir=str(tmp_path / "c"),
                        tokenizer="byte", max_len=10, batch_size=4, val_fraction=0.0)
    dm.prepare_data()
    dm.setup()
    assert dm.vocab_size == 259 and not (dm.cache_path / "tokenizer.json").exists()
    texts = read_aclimdb(acl_folder)["test"]["text"]
    got = [dm.test_set[i]["input_ids"].tolist() for i in range(len(dm.test_set))]
    assert got == [[c + 3 for c in t.encode()[:10]] for t in texts]


def test_add_cls_prepends_cls_within_max_len(acl_folder, tmp_path):
    dm = IMDBDataModule(data_source="local", data_dir=str(acl_folder), cache_dir=str(tmp_path / "c"),
                        tokenizer="byte", max_len=8, add_cls=True, batch_size=4)
    dm.prepare_data()
    dm.setup()
    item = dm.test_set[0]["input_ids"]
    assert item[0] == 2 and len(item) == 8


def test_tokenizer_and_tokens_cached_and_reused(acl_folder, tmp_path):
    kw = dict(data_source="local", data_dir=str(acl_folder), cache_dir=str(tmp_path / "cache"),
              tokenizer="bpe", vocab_size=100, max_len=32)
    dm = IMDBDataModule(**kw)
    dm.prepare_data()
    dm.setup()
    tok_file, tokens_file = dm.tokenizer_path, dm.tokens_path
    assert tok_file.is_file() and tokens_file.is_file()
    assert tok_file.parent.parent == tmp_path / "cache" / "imdb"
    stamps = (tok_file.stat().st_mtime_ns, tokens_file.stat().st_mtime_ns)
    dm2 = IMDBDataModule(**kw)
    dm2.prepare_data()
    dm2.setup()
    assert dm2.tokenizer_path == tok_file
    assert (tok_file.stat().st_mtime_ns, tokens_file.stat().st_mtime_ns) == stamps
    assert torch.equal(dm2.test_set.ids, dm.test_set.ids)
    # a new max_len re-tokenizes with the same tokenizer; other settings get their own tokenizer
    dm3 = IMDBDataModule(**{**kw, "max_len": 8})
    dm3.prepare_data()
    assert dm3.tokenizer_path == tok_file and tok_file.stat().st_mtime_ns == stamps[0]
    assert dm3.tokens_path != tokens_file
    assert IMDBDataModule(**{**kw, "vocab_size": 90}).cache_key() != dm.cache_key()
    assert IMDBDataModule(**{**kw, "lowercase": False}).cache_key() != dm.cache_key()
    assert IMDBDataModule(**{**kw, "tokenizer": "byte"}).cache_key() != dm.cache_key()


# ---------------------------------------------------------------------------------------------- hub
def _fake_hub():
    from datasets import Dataset, DatasetDict

    tr = [r for r in REVIEWS if r[0] == "train"]
    te = [r for r in REVIEWS if r[0] == "test"]
    def mk(rows):
        return Dataset.from_dict({"text": [r[4] for r in rows], "label": [int(r[1] == "pos") for r in rows]})

    return DatasetDict(train=mk(tr), test=mk(te))


def test_hub_source(monkeypatch, tmp_path):
    import datasets

    calls = []

    def fake_load(name, *a, **k):
        calls.append(name)
        return _fake_hub()

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    dm = IMDBDataModule(data_source="hub", cache_dir=str(tmp_path), tokenizer="bpe", vocab_size=100,
                        max_len=20, batch_size=4, val_fraction=0.25)
    dm.prepare_data()
    dm.setup()
    assert calls == ["stanfordnlp/imdb"] and dm.source_used == "hub"
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (6, 2, 4)
    for b in dm.train_dataloader():
        check_batch(b, 0, 20, 4)


def test_auto_uses_hub_when_no_local_copy(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: _fake_hub())
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "empty").mkdir()  # a folder that exists but holds no copy: the hub is next
    dm = IMDBDataModule(data_source="auto", data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c"),
                        tokenizer="byte")
    dm.prepare_data()
    assert dm.source_used == "hub"


def test_failing_hub_gives_three_ways_forward_never_synthetic(hub_down, monkeypatch, tmp_path):
    dm = IMDBDataModule(data_source="auto", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataUnavailableError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert "--data-dir" in msg and "download" in msg and "--data-source synthetic" in msg and "no network" in msg
    assert dm.train_set is None and dm.source_used != "synthetic"
    with pytest.raises(DataUnavailableError):
        dm.setup()


# ---------------------------------------------------------------------------------------------- synthetic
def test_synthetic_batches_masks_and_determinism(tmp_path):
    kw = dict(data_source="synthetic", cache_dir=str(tmp_path), tokenizer="byte", max_len=64, batch_size=16,
              synthetic_sizes=(200, 50), seed=3)
    dm = IMDBDataModule(**kw)
    dm.prepare_data()
    dm.setup()
    assert dm.source_used == "synthetic" and dm.vocab_size == 259
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (180, 20, 50)
    assert not list(tmp_path.iterdir())  # nothing cached for synthetic data
    batches = list(dm.val_dataloader())
    for b in batches:
        check_batch(b, dm.pad_id, 64, 16)
        assert b["input_ids"].max() < dm.vocab_size
    dm2 = IMDBDataModule(**kw)
    dm2.setup()
    for a, b in zip(batches, dm2.val_dataloader()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    dm3 = IMDBDataModule(**{**kw, "seed": 4})
    dm3.setup()
    assert not torch.equal(dm3.test_set.ids, dm.test_set.ids)
    # the signal: a key token early and a query token late (see test_synthetic_task_is_long_range_matching)
    labels = torch.cat([b["labels"] for b in dm.test_dataloader()])
    assert labels.sum() == len(labels) // 2
    keys, queries, _ = dm.synthetic_pairs()
    for i in range(len(dm.test_set)):
        item = dm.test_set[i]
        ids = item["input_ids"]
        key = ids[torch.isin(ids, keys)]
        query = ids[torch.isin(ids, queries)]
        assert len(key) == len(query) == 1
        assert (query.item() - len(keys) == key.item()) == (item["label"] == 1)


def test_synthetic_task_is_long_range_matching_not_bag_of_words():
    """Label = whether the key token (first quarter) and the query token (last quarter) form a pair; every
    token's frequency is independent of the label, so a bag-of-words classifier is at chance."""
    dm = IMDBDataModule(data_source="synthetic", tokenizer="byte", max_len=128, synthetic_sizes=(4000, 2000),
                        val_fraction=0.0, seed=1)
    dm.setup()
    keys, queries, noise_lo = dm.synthetic_pairs()
    k = len(keys)

    def features(ds):
        counts, rule = [], []
        for i in range(len(ds)):
            ids = ds[i]["input_ids"]
            n = len(ids)
            (kp,), (qp,) = torch.isin(ids, keys).nonzero(as_tuple=True), torch.isin(ids, queries).nonzero(as_tuple=True)
            assert kp < max(1, n // 4) and qp >= n - max(1, n // 4)  # far apart: first and last quarter
            rule.append(int(ids[qp] - k == ids[kp]))
            counts.append(torch.bincount(ids, minlength=dm.vocab_size))
        return torch.stack(counts).float(), torch.tensor(rule)

    tr_x, tr_rule = features(dm.train_set)
    te_x, te_rule = features(dm.test_set)
    tr_y, te_y = (ds.labels[ds.index].long() for ds in (dm.train_set, dm.test_set))
    assert torch.equal(tr_rule, tr_y) and torch.equal(te_rule, te_y)  # the exact rule recovers every label
    assert tr_y.sum() == len(tr_y) // 2 and te_y.sum() == len(te_y) // 2  # balanced
    # multinomial naive Bayes on token counts (the best bag-of-words model for independent tokens): chance level
    logp = [torch.log((tr_x[tr_y == c].sum(0) + 1) / (tr_x[tr_y == c].sum() + dm.vocab_size)) for c in (0, 1)]
    pred = (te_x @ (logp[1] - logp[0]) > 0).long()
    assert 0.4 < (pred == te_y).float().mean().item() < 0.6
    # and the key/query tokens' rates are the same in both classes
    for t in torch.cat([keys, queries]).tolist():
        rates = [(tr_x[tr_y == c, t] > 0).float().mean().item() for c in (0, 1)]
        assert abs(rates[0] - rates[1]) < 0.05


def test_synthetic_bpe_uses_vocab_size(tmp_path):
    dm = IMDBDataModule(data_source="synthetic", cache_dir=str(tmp_path), vocab_size=500, max_len=32,
                        synthetic_sizes=(40, 10), batch_size=8)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    check_batch(b, 0, 32, 8)
    assert dm.vocab_size == 500 and b["input_ids"].max() < 500


# ---------------------------------------------------------------------------------------------- splits, buckets
def test_seeded_val_split(tmp_path):
    kw = dict(data_source="synthetic", tokenizer="byte", max_len=16, synthetic_sizes=(100, 10), val_fraction=0.2)
    a, b, c = (IMDBDataModule(seed=s, **kw) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_set.index, b.val_set.index) and torch.equal(a.train_set.index, b.train_set.index)
    assert len(a.val_set) == 20 and len(a.train_set) == 80
    assert not set(a.val_set.index.tolist()) & set(a.train_set.index.tolist())
    assert sorted(a.val_set.index.tolist() + a.train_set.index.tolist()) == list(range(100))
    assert not torch.equal(a.val_set.index, c.val_set.index)


def test_bucketing_groups_similar_lengths(tmp_path):
    kw = dict(data_source="synthetic", tokenizer="byte", max_len=256, synthetic_sizes=(1000, 100), batch_size=16)
    plain = IMDBDataModule(**kw)
    bucket = IMDBDataModule(bucket_by_length=True, **kw)
    plain.setup()
    bucket.setup()

    def spread(loader):
        out = []
        for batch in loader:
            n = batch["mask"].sum(1)
            out.append((n.max() - n.min()).item())
        return sum(out) / len(out)

    seen = []
    for batch in bucket.train_dataloader():
        check_batch(batch, 0, 256, 16)
        seen += batch["labels"].tolist()
    assert len(seen) == len(bucket.train_set)
    assert spread(bucket.train_dataloader()) < 0.25 * spread(plain.train_dataloader())
    assert spread(bucket.val_dataloader()) < 0.25 * spread(plain.val_dataloader())
    # every index exactly once per epoch; shuffled differently from one epoch to the next, seeded
    s = BucketBatchSampler(bucket.train_set.lengths, 16, shuffle=True, seed=0)
    e0, e1 = list(s), list(s)
    assert sorted(i for b in e0 for i in b) == list(range(len(bucket.train_set)))
    assert e0 != e1 and len(s) == len(e0)
    assert list(BucketBatchSampler(bucket.train_set.lengths, 16, shuffle=True, seed=0)) == e0
    # sharded over two processes: disjoint halves of the batches
    r0 = list(BucketBatchSampler(bucket.train_set.lengths, 16, True, 0, num_replicas=2, rank=0))
    r1 = list(BucketBatchSampler(bucket.train_set.lengths, 16, True, 0, num_replicas=2, rank=1))
    assert len(r0) == len(r1) and not {i for b in r0 for i in b} & {i for b in r1 for i in b}


def test_bad_arguments():
    with pytest.raises(ValueError, match="tokenizer"):
        IMDBDataModule(tokenizer="chars")
    with pytest.raises(ValueError, match="max_len"):
        IMDBDataModule(max_len=0)
    with pytest.raises(ValueError, match="val_fraction"):
        IMDBDataModule(val_fraction=1.0)


# ---------------------------------------------------------------------------------------------- real data
def test_real_tarball_counts_and_ratings(shared_data):
    tarball = shared_data / "imdb" / "aclImdb.tar.gz"
    raw = read_aclimdb(tarball)
    for split in ("train", "test"):
        d = raw[split]
        assert len(d["text"]) == 25000
        assert collections.Counter(d["label"]) == {0: 12500, 1: 12500}
        for label in (0, 1):
            ids = sorted(i for i, lab in zip(d["id"], d["label"]) if lab == label)
            assert ids == list(range(12500))
        assert not any("<br" in t for t in d["text"][:2000])
    hist = collections.Counter(raw["train"]["rating"])
    assert hist == {1: 5100, 2: 2284, 3: 2420, 4: 2696, 7: 2496, 8: 3009, 9: 2263, 10: 4732}
    assert all((r >= 7) == (lab == 1) for r, lab in zip(raw["train"]["rating"], raw["train"]["label"]))


def test_real_data_byte_tokens(shared_data, tmp_path):
    dm = IMDBDataModule(data_source="auto", data_dir=str(shared_data / "imdb"), cache_dir=str(tmp_path),
                        tokenizer="byte", max_len=512, batch_size=32, bucket_by_length=True)
    dm.prepare_data()
    dm.setup()
    assert dm.source_used == "local" and dm.local_root.name == "aclImdb.tar.gz"
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (22500, 2500, 25000)
    assert int(dm.train_set.labels.sum()) == 12500
    assert dm.test_set.lengths.max() == 512 and dm.test_set.lengths.min() > 10
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        check_batch(next(iter(loader)), 0, 512, 32)


@pytest.mark.slow
def test_real_data_full_bpe(shared_data, tmp_path):
    dm = IMDBDataModule(data_source="local", data_dir=str(shared_data / "imdb"), cache_dir=str(tmp_path),
                        tokenizer="bpe", vocab_size=16000, max_len=512, batch_size=32)
    dm.prepare_data()
    dm.setup()
    assert dm.vocab_size == 16000
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (22500, 2500, 25000)
    # reviews are longer than 512 BPE tokens only sometimes; most are shorter
    lengths = dm.test_set.lengths.float()
    assert 150 < lengths.mean() < 400 and lengths.max() == 512
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        check_batch(next(iter(loader)), 0, 512, 32)
    assert dm.tokenizer.decode(dm.tokenizer.encode("this movie was great").ids) == "this movie was great"
