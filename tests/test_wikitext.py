"""WikiTextDataModule: real WikiText-2 figures, local/hub/synthetic sources, blocks, cache."""
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from datamodules.common import DataUnavailableError
from datamodules.wikitext import WikiTextDataModule

# A few lines in the files' own form: blank lines are " ", text lines have leading/trailing spaces.
TRAIN = [" ", " = Valkyria Chronicles III = ", " ", " The game began development in 2010 . ",
         " It met with <unk> praise , and the game began again . ", " "]
VALID = [" ", " = Tower Building = ", " The building began in 1906 . ", " "]
TEST = [" ", " = Robert Boulter = ", " Robert Boulter is an English actor . ", " "]
SPLITS = {"train": TRAIN, "valid": VALID, "test": TEST}


def expected_words(lines):
    return [w for line in lines for w in line.split() + ["<eos>"]]


def write_files(folder: Path, ext="tokens", splits=SPLITS):
    folder.mkdir(parents=True, exist_ok=True)
    for s, lines in splits.items():
        (folder / f"wiki.{s}.{ext}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return folder


def stream(dm, split):
    return torch.load(dm.cache_path / f"{split}.pt", weights_only=True)


def ready(dm, stage=None):
    dm.prepare_data()
    dm.setup(stage)
    return dm


# ---------------------------------------------------------------- real WikiText-2 (skips without it)
@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
    root = shared_data / "wikitext-2"
    if not (root / "wiki.train.tokens").is_file():
        pytest.skip(f"no WikiText-2 copy in {root}")
    return ready(WikiTextDataModule(data_source="local", data_dir=str(root), seq_len=256,
                                    cache_dir=str(tmp_path_factory.mktemp("wt_cache"))))


def test_real_wikitext2_official_counts_and_vocabulary(real):
    assert real.source_used == "local"
    # the official figures: words plus one end-of-line token per line
    assert real.tokens_per_split == {"train": 2_088_628, "valid": 217_646, "test": 245_569}
    assert [len(stream(real, s)) for s in ("train", "valid", "test")] == [2_088_628, 217_646, 245_569]
    # the classic WikiText-2 vocabulary (train words incl. the files' <unk>, plus <eos>): 33,278, as the data gives
    assert real.vocab_size == 33_278
    assert real.pad_id is None
    # the tokenized files' rare words are already <unk>: valid/test have no other out-of-vocabulary words,
    # so the only <unk> ids are the files' own
    unk = real.vocab.unk_id
    for s in ("valid", "test"):
        text = (real.local_root / f"wiki.{s}.tokens").read_text(encoding="utf-8")
        assert int((stream(real, s) == unk).sum()) == text.split().count("<unk>")


def test_real_first_block_decodes_to_the_file_start(real):
    first = (real.local_root / "wiki.train.tokens").open(encoding="utf-8").read(2000)
    assert first.startswith(" \n = Valkyria Chronicles III = \n")
    x, y = real.train_set[0]
    assert x.shape == y.shape == (256,) and x.dtype == y.dtype == torch.long
    text = real.decode(x)
    assert text.startswith("\n= Valkyria Chronicles III =\n")
    assert text.split() == first.split()[:len(text.split())]
    assert real.encode(" = Valkyria Chronicles III = \n") == x[1:7].tolist()


def test_real_blocks_are_contiguous_and_drop_only_the_remainder(real):
    s, L = stream(real, "train").long(), real.seq_len
    n = len(real.train_set)
    assert n == (len(s) - 1) // L
    for i in (0, 1, n // 2, n - 2):
        x0, y0 = real.train_set[i]
        x1, _ = real.train_set[i + 1]
        assert y0[-1] == x1[0]
        assert torch.equal(x0, s[i * L:(i + 1) * L]) and torch.equal(y0, s[i * L + 1:(i + 1) * L + 1])
    assert torch.equal(real.train_set[n - 1][1][-1], s[n * L])


def test_real_data_dir_may_be_the_parent_folder(shared_data):
    dm = WikiTextDataModule(data_source="local", data_dir=str(shared_data))
    assert dm.resolve_source() == "local" and dm.local_root == shared_data / "wikitext-2"


@pytest.mark.slow
def test_real_bpe_round_trip(real, tmp_path):
    dm = ready(WikiTextDataModule(tokenizer="bpe", bpe_vocab_size=8192, data_source="local",
                                  data_dir=str(real.local_root), cache_dir=str(tmp_path)))
    assert dm.vocab_size == 8192
    text = (real.local_root / "wiki.valid.tokens").read_text(encoding="utf-8")
    ids = dm.encode(text)
    assert ids == stream(dm, "valid").tolist()
    lines = text.split("\n")[:-1]
    assert dm.decode(ids) == "".join((line if line.strip() else "") + "\n" for line in lines)


# ---------------------------------------------------------------- local copies
def test_local_files_give_the_word_streams(tmp_path):
    write_files(tmp_path / "wt")
    dm = ready(WikiTextDataModule(data_source="local", data_dir=str(tmp_path / "wt"),
                                  cache_dir=str(tmp_path / "cache"), seq_len=4, batch_size=2))
    assert dm.source_used == "local" and dm.local_root == tmp_path / "wt"
    itos = dm.vocab.itos
    assert itos[:2] == ["<eos>", "<unk>"]
    counts = Counter(expected_words(TRAIN))
    rest = itos[2:]
    assert sorted(rest) == sorted(w for w in counts if w not in ("<eos>", "<unk>"))
    assert rest == sorted(rest, key=lambda w: (-counts[w], w))  # by falling frequency, ties in code-point order
    for s, lines in SPLITS.items():
        want = [w if w in dm.vocab.stoi else "<unk>" for w in expected_words(lines)]
        assert [itos[i] for i in stream(dm, s).tolist()] == want
        assert dm.tokens_per_split[s] == len(want)
    # out-of-vocabulary words of valid/test become <unk>
    assert "Tower" not in dm.vocab.stoi and dm.encode("Tower began") == [dm.vocab.unk_id, dm.vocab.stoi["began"]]
    assert dm.decode(dm.encode(" The game began . \n It")) == "The game began .\nIt"
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 4) and torch.equal(x[0], stream(dm, "valid")[:4].long())


def test_local_subfolder_and_raw_file_names(tmp_path):
    write_files(tmp_path / "wikitext-2-raw", ext="raw")
    dm = WikiTextDataModule(raw=True, data_source="local", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"),
                            seq_len=4)
    assert dm.resolve_source() == "local" and dm.local_root == tmp_path / "wikitext-2-raw"
    ready(dm)
    assert dm.tokens_per_split["train"] == len(expected_words(TRAIN))
    # the raw files are not the tokenized variant's
    with pytest.raises(DataUnavailableError, match=r"wiki\.train\.tokens"):
        WikiTextDataModule(data_source="local", data_dir=str(tmp_path)).resolve_source()


def test_local_missing_file_names_the_expected_layout(tmp_path):
    write_files(tmp_path, splits={"train": TRAIN, "valid": VALID})  # no test file
    with pytest.raises(DataUnavailableError) as e:
        WikiTextDataModule(data_source="local", data_dir=str(tmp_path)).prepare_data()
    assert "wiki.train.tokens" in str(e.value) and "wiki.test.tokens" in str(e.value)


# ---------------------------------------------------------------- hub (load_dataset monkeypatched)
def hub_dict(splits=SPLITS):
    from datasets import Dataset, DatasetDict

    # as the hub has them: one row per file line, with its "\n"; the whitespace-only lines are ""
    def rows(lines):
        return [line + "\n" if line.strip() else "" for line in lines]
    return DatasetDict({hs: Dataset.from_dict({"text": rows(splits[s])})
                        for s, hs in (("train", "train"), ("valid", "validation"), ("test", "test"))})


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_hub_rows_give_the_same_streams_as_the_files(tmp_path, monkeypatch, tokenizer):
    import datasets

    calls = []

    def fake_load(path, name=None, **kw):
        calls.append((path, name))
        return hub_dict()

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    kw = dict(tokenizer=tokenizer, bpe_vocab_size=300, cache_dir=str(tmp_path / "cache"), seq_len=4)
    hub = ready(WikiTextDataModule(data_source="hub", **kw))
    local = ready(WikiTextDataModule(data_source="local", data_dir=str(write_files(tmp_path / "wt")), **kw))
    assert hub.source_used == "hub" and calls == [("Salesforce/wikitext", "wikitext-2-v1")]
    assert hub.cache_path != local.cache_path
    for s in ("train", "valid", "test"):
        assert torch.equal(stream(hub, s), stream(local, s))
    assert hub.decode(stream(hub, "train")) == local.decode(stream(local, "train"))


def test_hub_configs(tmp_path, monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kw: calls.append(name) or hub_dict())
    for name, raw in (("wikitext-2", True), ("wikitext-103", False), ("wikitext-103", True)):
        WikiTextDataModule(name=name, raw=raw, data_source="hub", cache_dir=str(tmp_path), seq_len=4).prepare_data()
    assert calls == ["wikitext-2-raw-v1", "wikitext-103-v1", "wikitext-103-raw-v1"]


def test_auto_with_failing_hub_and_no_local_copy_is_unavailable_never_synthetic(hub_down, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()  # a folder that exists but holds no copy: the hub is next
    dm = WikiTextDataModule(data_source="auto", data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataUnavailableError) as e:
        dm.prepare_data()
    assert "ConnectionError" in str(e.value) and "--data-source synthetic" in str(e.value)
    assert dm.source_used != "synthetic" and not list((tmp_path / "c").rglob("*.pt"))


# ---------------------------------------------------------------- synthetic
def test_synthetic_shapes_determinism_and_learnability(tmp_path):
    def make(seed, sub):
        return ready(WikiTextDataModule(data_source="synthetic", seed=seed, seq_len=32, batch_size=8,
                                        cache_dir=str(tmp_path / sub)))
    a, b, c = make(1, "a"), make(1, "b"), make(2, "c")
    assert a.source_used == "synthetic" and a.vocab_size <= 64 + 2
    assert 40_000 <= a.tokens_per_split["train"] < 40_100 and a.tokens_per_split["valid"] >= 4_000
    for s in ("train", "valid", "test"):
        assert torch.equal(stream(a, s), stream(b, s))
    assert not torch.equal(stream(a, "train")[:1000], stream(c, "train")[:1000])
    x, y = next(iter(a.train_dataloader()))
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.long and int(x.max()) < a.vocab_size
    # same seed, same shuffled order; the shuffle covers every block once. The shuffling generator advances
    # with each pass, as across epochs, so b first takes the pass a took above.
    next(iter(b.train_dataloader()))
    order = torch.cat([bx[:, 0] for bx, _ in a.train_dataloader()])
    again = torch.cat([bx[:, 0] for bx, _ in b.train_dataloader()])
    assert torch.equal(order, again) and len(order) == len(a.train_set)
    # a Markov chain: the next word is far more predictable than uniform (conditional entropy in nats)
    s = stream(a, "train").tolist()
    pairs, firsts = Counter(zip(s, s[1:])), Counter(s[:-1])
    h = -sum(n * math.log(n / firsts[p[0]]) for p, n in pairs.items()) / (len(s) - 1)
    assert h < 0.5 * math.log(a.vocab_size)
    assert a.encode(a.decode(x[0])) == x[0].tolist()


def test_cache_is_reused_not_rewritten(tmp_path, monkeypatch):
    kw = dict(data_source="synthetic", seed=3, cache_dir=str(tmp_path))
    first = ready(WikiTextDataModule(**kw))
    files = sorted(first.cache_path.iterdir())
    assert {f.name for f in files} == {"vocab.json", "meta.json", "train.pt", "valid.pt", "test.pt"}
    mtimes = [f.stat().st_mtime_ns for f in files]

    def no_rebuild(self):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(WikiTextDataModule, "_read_split_lines", no_rebuild)
    second = ready(WikiTextDataModule(**kw))
    assert second.cache_path == first.cache_path
    assert [f.stat().st_mtime_ns for f in sorted(second.cache_path.iterdir())] == mtimes
    assert torch.equal(stream(second, "train"), stream(first, "train")) and second.vocab_size == first.vocab_size
    assert len(list((tmp_path / "wikitext").iterdir())) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        WikiTextDataModule(name="wikitext-3")
    with pytest.raises(ValueError, match="tokenizer"):
        WikiTextDataModule(tokenizer="char")
    with pytest.raises(ValueError, match="seq_len"):
        WikiTextDataModule(seq_len=0)
    with pytest.raises(RuntimeError, match="setup"):
        _ = WikiTextDataModule(data_source="synthetic").vocab_size


def test_synthetic_stream_has_repeated_segments_that_looking_back_predicts(tmp_path):
    """About a quarter of the synthetic lines copy one of the three lines before them. An induction rule (the
    last 4 tokens occurred in the previous 64: predict what followed them) beats the best bigram guess there,
    which only a model that attends to its context can exploit."""
    from datamodules.wikitext import markov_lines

    lines = markov_lines(20_000, 64, seed=5)
    copies = sum(lines[i] in lines[max(0, i - 3):i] for i in range(1, len(lines)))
    assert 0.18 < copies / len(lines) < 0.32
    dm = ready(WikiTextDataModule(data_source="synthetic", seed=5, synthetic_tokens=10_000, seq_len=32,
                                  cache_dir=str(tmp_path)))
    s = stream(dm, "train").tolist()
    bigram = Counter(zip(s, s[1:]))
    best = {}
    for (a, b), n in bigram.items():
        if n > best.get(a, (None, 0))[1]:
            best[a] = (b, n)
    fired = induction = guess = 0
    for t in range(67, len(s) - 1):
        ctx = s[t - 3:t + 1]
        for u in range(t - 1, t - 64, -1):
            if s[u - 3:u + 1] == ctx:
                fired += 1
                induction += s[u + 1] == s[t + 1]
                guess += best[s[t]][0] == s[t + 1]
                break
    assert fired > 0.15 * len(s)
    assert induction / fired > guess / fired + 0.15
