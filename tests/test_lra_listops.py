"""LRA ListOps: the fixed vocabulary and the release's text (parentheses, TSV layout), the generator's labels
against an independent evaluator, its length / depth / argument distributions against a plain recursive
sampler of the release's description, determinism from the seed, disjoint splits (by a hash of their own),
and the DataModule's sources, caches, seq_len rule, errors and resumable training loader."""
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script

from datamodules.common import DataUnavailableError
from datamodules.listops_format import FILES, OPERATORS, TOKENS, VOCAB_SIZE, encode, read_tsv, render, write_tsv
from datamodules.listops_generator import (
    TreeSettings,
    draw_chunk,
    evaluate,
    expression_hash,
    generate_split,
    generate_splits,
)
from datamodules.lra_listops import ListOpsDataModule
from datamodules.resumable import EpochBatches

EXAMPLE = "[MAX 2 9 [MIN 4 7 ] 0 ]"
EXAMPLE_IDS = [2, 8, 15, 1, 10, 13, 5, 6, 5]
# the release's text of EXAMPLE: its generator nests (((([MAX, 2), 9), (([MIN, 4), 7), ])), 0), ]) and writes
# every pair as '( a b )'
EXAMPLE_RELEASE = "( ( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )"
SMALL = TreeSettings(min_length=10, max_length=80, max_depth=6, max_args=5)


def expressions(packed):
    """(token id list, label) per example of a generate_split / read_tsv dict."""
    o, t = packed["offsets"].tolist(), packed["tokens"]
    return [(t[o[i]:o[i + 1]].tolist(), int(packed["labels"][i])) for i in range(len(o) - 1)]


def release_text(ids):
    """The release's to_string written independently: the expression as nested tuples, then each pair in
    parentheses."""
    words = [TOKENS[i] for i in ids]

    def parse(pos):  # -> (tree, next position)
        if words[pos] not in OPERATORS:
            return words[pos], pos + 1
        t, pos = words[pos], pos + 1
        while words[pos] != "]":
            arg, pos = parse(pos)
            t = (t, arg)
        return (t, "]"), pos + 1

    def text(t):
        return t if isinstance(t, str) else f"( {text(t[0])} {text(t[1])} )"

    tree, end = parse(0)
    assert end == len(words)
    return text(tree)


def structure(ids):
    """(nesting depth, list of argument counts) read from the tokens with a stack."""
    depth, deepest, counts, stack = 0, 0, [], []
    for i in ids:
        if 1 <= i <= 4:
            if stack:
                stack[-1] += 1
            stack.append(0)
            depth += 1
            deepest = max(deepest, depth)
        elif i == 5:
            counts.append(stack.pop())
            depth -= 1
        elif stack:
            stack[-1] += 1
    return deepest, counts


# ---------------------------------------------------------------------------------- vocabulary and text
def test_fixed_vocabulary():
    assert VOCAB_SIZE == 16
    assert TOKENS == ("<pad>", "[MIN", "[MAX", "[MED", "[SM", "]") + tuple("0123456789")
    assert list(encode(EXAMPLE.encode())) == EXAMPLE_IDS
    assert render(EXAMPLE_IDS) == EXAMPLE


def test_the_release_text_with_parentheses_reads_and_writes_the_same_ids():
    assert list(encode(EXAMPLE_RELEASE.encode())) == EXAMPLE_IDS
    assert render(EXAMPLE_IDS, parens=True) == EXAMPLE_RELEASE == release_text(EXAMPLE_IDS)
    for ids, _ in expressions(generate_split(3, "train", 200, SMALL)):
        assert render(ids, parens=True) == release_text(ids)
        assert list(encode(render(ids, parens=True).encode())) == ids == list(encode(render(ids).encode()))


@pytest.mark.parametrize("text, match", [
    ("[MAX 12 3 ]", r"not one of .*'12'"),
    ("[FIRST 1 2 ]", r"characters b'FRT'"),
    ("[MAX 1 2 ]x", r"characters b'x'"),
    ("[MAXX 1 2 ]", r"read as '\[MAXX'"),
    ("[MAX 1 2]", r"read as '2\]'"),
    ("( )", "an empty expression"),
])
def test_encode_refuses_what_is_not_a_token(text, match):
    with pytest.raises(ValueError, match=match):
        encode(text.encode())


# ------------------------------------------------------------------------------------------- evaluator
def test_evaluator_follows_the_release_definitions():
    assert evaluate(EXAMPLE) == 9 == evaluate(EXAMPLE_RELEASE)
    assert evaluate("[MED 1 2 ]") == 1 and evaluate("[MED 3 4 5 6 ]") == 4 and evaluate("[MED 9 0 5 ]") == 5
    assert evaluate("[SM 9 9 4 ]") == 2 and evaluate("[MIN 3 [MAX 0 1 ] ]") == 1
    rng = random.Random(0)
    for _ in range(500):  # the release's MED and SM: int(np.median(args)), np.sum(args) % 10
        args = [rng.randrange(10) for _ in range(rng.randint(2, 10))]
        text = " ".join(map(str, args)) + " ]"
        assert evaluate("[MED " + text) == int(np.median(args))
        assert evaluate("[SM " + text) == np.sum(args) % 10
    for bad in ("[MAX 1 2", "[MAX ]", "1 2", "[MAX 1 2 ] ]", "[AVG 1 ]"):
        with pytest.raises((ValueError, IndexError)):
            evaluate(bad)


def test_every_generated_label_is_the_evaluators_value():
    release = draw_chunk(0, "test", 0)  # 1,000 expressions of the release's lengths
    ends = np.cumsum(release["lengths"])
    for i, end in enumerate(ends):
        ids = release["tokens"][end - release["lengths"][i]:end]
        assert evaluate(render(ids)) == release["labels"][i]
    for split in generate_splits(1, (2000, 200, 200), TreeSettings(min_length=20, max_length=100)).values():
        for ids, label in expressions(split):
            assert evaluate(render(ids)) == label
    for ids, label in expressions(generate_split(2, "val", 100, SMALL))[:100]:
        assert evaluate(render(ids, parens=True)) == label


# ---------------------------------------------------------------------------------------- distributions
def test_release_settings_lengths_depths_and_arguments():
    part = draw_chunk(0, "train", 0)
    lengths, depths = part["lengths"], part["depths"]
    assert lengths.min() > 500 and lengths.max() < 2000  # the release's exclusive bounds
    ends = np.cumsum(lengths)
    for i, end in enumerate(ends):
        ids = part["tokens"][end - lengths[i]:end].tolist()
        deepest, counts = structure(ids)
        assert deepest == depths[i] <= 9  # max_depth 10 levels: operators nest at most 9 deep
        assert min(counts) >= 2 and max(counts) <= 10
    labels = np.bincount(part["labels"], minlength=10)
    assert labels.min() > 30  # every class occurs (MIN and MAX over long lists make 0 and 9 the commonest)


def reference_sample(rng: random.Random, cfg: TreeSettings, depth: int = 1):
    """One tree as the release's description has it, drawn recursively with no shortcut."""
    if depth < cfg.max_depth and rng.random() <= 0.25:
        k = rng.randint(2, cfg.max_args)
        args = [reference_sample(rng, cfg, depth + 1) for _ in range(k)]
        return [1 + rng.randrange(4)] + [t for a in args for t in a] + [5]
    return [6 + rng.randrange(10)]


def chi2_two_samples(a, b, bins):
    ha, hb = np.histogram(a, bins)[0].astype(float), np.histogram(b, bins)[0].astype(float)
    keep = (ha + hb) > 0
    ha, hb = ha[keep], hb[keep]
    na, nb = ha.sum(), hb.sum()
    stat = (((ha / na - hb / nb) ** 2) / ((ha + hb) / (na * nb))).sum()
    return stat, keep.sum() - 1


def test_distribution_matches_a_plain_recursive_sampler():
    n = 4000
    rng = random.Random(7)
    ref = []
    while len(ref) < n:
        t = reference_sample(rng, SMALL)
        if SMALL.min_length < len(t) < SMALL.max_length:
            ref.append(t)
    ours = [ids for ids, _ in expressions(generate_split(7, "train", n, SMALL))]
    checks = {
        "length": (lambda t: len(t), np.arange(SMALL.min_length, SMALL.max_length + 5, 5)),
        "label": (lambda t: evaluate(render(t)), np.arange(11)),
        "depth": (lambda t: structure(t)[0], np.arange(1, SMALL.max_depth + 1)),
        "root argument count": (lambda t: structure(t)[1][-1], np.arange(2, SMALL.max_args + 2)),
        "root operator": (lambda t: t[0], np.arange(1, 6)),
    }
    for name, (f, bins) in checks.items():
        stat, df = chi2_two_samples([f(t) for t in ref], [f(t) for t in ours], bins)
        assert stat < df + 6 * np.sqrt(2 * df), f"{name}: chi2 {stat:.1f} on {df} degrees of freedom"


# ---------------------------------------------------------------------------------- seeds and splits
def test_same_seed_same_data_and_prefixes_do_not_depend_on_the_size():
    a = generate_split(5, "train", 1500, SMALL)
    b = generate_split(5, "train", 1500, SMALL)
    short = generate_split(5, "train", 700, SMALL)
    assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["labels"], b["labels"])
    assert expressions(short) == expressions(a)[:700]
    other = generate_split(6, "train", 700, SMALL)
    val = generate_split(5, "val", 700, SMALL)
    assert expressions(other) != expressions(short) and expressions(val) != expressions(short)


def own_hash(ids):
    return hashlib.sha256(bytes(ids)).hexdigest()


@pytest.mark.parametrize("cfg, sizes", [
    (TreeSettings(min_length=20, max_length=100), (3000, 500, 500)),
    # few possible expressions ([OP d d ] and [OP d d d ]: 4,400): duplicates are common and must be redrawn
    (TreeSettings(min_length=3, max_length=6, max_depth=2, max_args=3), (1500, 500, 500)),
])
def test_splits_are_disjoint_and_free_of_duplicates(cfg, sizes):
    splits = generate_splits(0, sizes, cfg)
    seen = {}
    for name, n in zip(("train", "val", "test"), sizes):
        hashes = [own_hash(ids) for ids, _ in expressions(splits[name])]
        assert len(hashes) == n == len(set(hashes)), f"{name} holds duplicates"
        assert splits[name]["hashes"] == [expression_hash(torch.tensor(ids)) for ids, _ in expressions(splits[name])]
        for other, theirs in seen.items():
            assert not set(hashes) & theirs, f"{name} shares expressions with {other}"
        seen[name] = set(hashes)


# ---------------------------------------------------------------------------------------- DataModule
def make(tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return ListOpsDataModule(**kw)


def write_release(folder: Path, rows) -> Path:
    """The release's files: header, '( ... )'-text, tab, label, \\r\\n endings."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in FILES.items():
        write_tsv(folder / name, [ids for ids, _ in rows[split]], [label for _, label in rows[split]])
    return folder


FIXTURE = {
    "train": [(EXAMPLE_IDS, 9), (list(encode(b"[SM 9 9 4 ]")), 2), (list(encode(b"[MED 3 4 5 6 ]")), 4)],
    "val": [(list(encode(b"[MIN 3 [MAX 0 1 ] ]")), 1)],
    "test": [(list(encode(b"[MAX 1 2 ]")), 2), (EXAMPLE_IDS, 9)],
}


def check_batch(batch, seq_len):
    ids, mask = batch["input_ids"], batch["mask"]
    assert set(batch) == {"input_ids", "mask", "labels", "index"}
    assert ids.dtype == torch.long and mask.dtype == torch.bool and batch["labels"].dtype == torch.long
    assert ids.dim() == 2 and ids.shape == mask.shape and ids.shape[1] <= seq_len
    assert torch.equal(mask, ids != 0) and int(ids.max()) < VOCAB_SIZE
    assert torch.equal(mask, torch.arange(ids.shape[1]) < mask.sum(-1, keepdim=True))  # padding after
    for row, n, label in zip(ids, mask.sum(-1), batch["labels"]):
        assert evaluate(render(row[:n].tolist())) == int(label)


@pytest.mark.parametrize("layout", ["", "listops-1000", "lra_release/listops-1000"])
def test_local_release_files(tmp_path, layout):
    write_release(tmp_path / "data" / layout, FIXTURE)
    text = (tmp_path / "data" / layout / "basic_train.tsv").read_bytes()
    assert text.startswith(b"Source\tTarget\r\n" + EXAMPLE_RELEASE.encode() + b"\t9\r\n")
    for source in ("local", "auto"):
        dm = make(tmp_path, data_source=source, data_dir=str(tmp_path / "data"), batch_size=2)
        dm.prepare_data()
        dm.setup("fit")
        assert (dm.vocab_size, dm.num_classes, dm.pad_id, dm.seq_len, dm.source_used) == (16, 10, 0, 2000, "local")
        for ds, split in ((dm.train_set, "train"), (dm.val_set, "val"), (dm.test_set, "test")):
            assert [(ds[i]["input_ids"].tolist(), ds[i]["label"]) for i in range(len(ds))] == FIXTURE[split]
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            for batch in loader:
                check_batch(batch, 2000)


def test_local_expressions_longer_than_seq_len_are_left_out_never_cut(tmp_path):
    data = write_release(tmp_path / "data", FIXTURE)
    dm = make(tmp_path, data_dir=str(data), seq_len=7)
    dm.setup()
    assert [dm.train_set[i]["label"] for i in range(len(dm.train_set))] == [2, 4]  # 9 tokens: left out
    assert dm.dropped == {"train": 1, "val": 0, "test": 1} and len(dm.test_set) == 1
    assert dm.test_set[0]["index"] == 0 and dm.test_set[0]["input_ids"].tolist() == FIXTURE["test"][0][0]
    with pytest.raises(DataUnavailableError, match=r"every expression in .*basic_val\.tsv is longer than seq_len 6"):
        make(tmp_path, data_dir=str(data), seq_len=6).setup()


def test_missing_partial_and_malformed_files(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"basic_train\.tsv.*listops-1000.*--data-source generated"):
        make(tmp_path, data_source="local", data_dir=str(tmp_path)).prepare_data()
    (tmp_path / "basic_train.tsv").write_text("Source\tTarget\n")
    with pytest.raises(DataUnavailableError, match=r"lacks basic_val\.tsv and basic_test\.tsv"):
        make(tmp_path, data_dir=str(tmp_path)).prepare_data()
    data = write_release(tmp_path / "data", FIXTURE)
    good = (data / "basic_val.tsv").read_bytes()
    for text, match in [(b"[MAX 1 2 ]\t3\n", "begins with"),
                        (b"Source\tTarget\n[MAX 1 2 ]\t3\n[MAX 1 12 ]\t3\n", r"line 3 has a token .*'12'"),
                        (b"Source\tTarget\n[MAX 1 2 ]\t10\n", r"line 2 does not end in a tab and a label 0-9"),
                        (b"Source\tTarget\n[MAX 1 2 ]\n", r"line 2 does not end in a tab"),
                        (b"Source\tTarget\r\n", "holds no expressions")]:
        (data / "basic_val.tsv").write_bytes(text)
        with pytest.raises(DataUnavailableError, match=match) as e:
            make(tmp_path, data_dir=str(data)).prepare_data()
        assert "basic_val.tsv" in str(e.value)
        assert not list((tmp_path / "cache").rglob("*.pt"))  # nothing half-made is cached
    (data / "basic_val.tsv").write_bytes(good)
    assert read_tsv(data / "basic_val.tsv")["labels"].tolist() == [1]


def test_generated_is_cached_and_depends_on_data_seed_only(tmp_path, monkeypatch):
    kw = dict(data_source="generated", generated_sizes=(300, 50, 50), batch_size=16)
    first = make(tmp_path, seed=0, **kw)
    first.prepare_data()
    first.setup()
    assert first.source_used == "generated" and (len(first.train_set), len(first.val_set), len(first.test_set)) == (300, 50, 50)
    assert sorted(p.name for p in first.cache_path.iterdir()) == ["test.pt", "train.pt", "val.pt"]
    lengths = torch.cat([first.train_set.lengths, first.val_set.lengths, first.test_set.lengths])
    assert int(lengths.min()) > 500 and int(lengths.max()) < 2000
    monkeypatch.setattr("datamodules.lra_listops.generator.generate_splits",
                        lambda *a, **k: pytest.fail("the cache was not reused"))
    second = make(tmp_path, seed=1, **kw)  # another training seed: the same data, from the cache
    second.setup()
    assert torch.equal(second.train_set.ids, first.train_set.ids)
    monkeypatch.undo()
    tokens = first.test_set.ids.clone()  # memory-mapped: the file is about to be damaged in place
    (first.cache_path / "test.pt").write_bytes(b"truncated")
    third = make(tmp_path, **kw)
    third.setup()
    assert torch.equal(third.test_set.ids, tokens)
    other = make(tmp_path, data_seed=1, **kw)
    other.setup()
    assert other.cache_path != first.cache_path and not torch.equal(other.train_set.ids[:500], tokens[:500])
    for batch in first.val_dataloader():
        check_batch(batch, 2000)


def test_generated_respects_seq_len_and_auto_generates_without_a_copy(tmp_path):
    dm = make(tmp_path, data_dir=str(tmp_path), generated_sizes=(100, 20, 20), seq_len=700)
    dm.setup()
    assert dm.source_used == "generated" and dm.seq_len == 700
    assert int(dm.train_set.lengths.max()) <= 700 and len(dm.train_set) == 100 and dm.dropped["train"] == 0
    with pytest.raises(ValueError, match="seq_len must be at least 501"):
        make(tmp_path, data_source="generated", seq_len=500)
    with pytest.raises(ValueError, match="seq_len must be at least 21"):
        make(tmp_path, data_source="synthetic", seq_len=20)


def test_synthetic_is_small_deterministic_and_batches_check(tmp_path):
    kw = dict(data_source="synthetic", synthetic_sizes=(300, 40, 40), batch_size=32, seed=3)
    a, b = make(tmp_path, **kw), make(tmp_path, **kw)
    for dm in (a, b):
        dm.prepare_data()
        dm.setup()
    assert a.source_used == "synthetic" and (len(a.train_set), len(a.val_set), len(a.test_set)) == (300, 40, 40)
    assert 20 < int(a.train_set.lengths.min()) and int(a.train_set.lengths.max()) < 100
    assert not list((tmp_path / "cache").rglob("*.pt"))  # drawn in memory
    ea, eb = list(a.train_dataloader()), list(b.train_dataloader())
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(ea, eb))
    for batch in ea + list(a.test_dataloader()):
        check_batch(batch, 2000)
    c = make(tmp_path, **{**kw, "data_seed": 1})
    c.setup()
    assert not torch.equal(c.train_set.ids[:200], a.train_set.ids[:200])


def test_training_loader_resumes_mid_epoch(tmp_path):
    kw = dict(data_source="synthetic", synthetic_sizes=(50, 10, 10), batch_size=8, seed=1)
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
    for kw, name in [(dict(seq_len=0), "seq_len"), (dict(data_seed=-1), "data_seed"),
                     (dict(generated_sizes=(10, 10)), "generated_sizes"), (dict(synthetic_sizes=(10, 0, 10)), "synthetic_sizes"),
                     (dict(data_source="hub"), "data_source")]:
        with pytest.raises(ValueError, match=name):
            ListOpsDataModule(**kw)
    with pytest.raises(ValueError, match="max_length"):
        TreeSettings(min_length=10, max_length=11)
    with pytest.raises(ValueError, match="min_length must be below 5, the longest expression of depth 2"):
        TreeSettings(min_length=100, max_length=200, max_depth=2, max_args=3)
    with pytest.raises(ValueError, match="needs 500 distinct expressions, but only 400 were found"):
        generate_split(0, "train", 500, TreeSettings(min_length=3, max_length=5, max_depth=2, max_args=2))


@pytest.mark.slow
def test_full_generated_set_every_label_and_disjoint(tmp_path):
    """The release's sizes: 96,000 / 2,000 / 2,000, each label checked by the evaluator (a minute or two)."""
    dm = make(tmp_path, data_source="generated")
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (96000, 2000, 2000)
    seen = set()
    for ds in (dm.train_set, dm.val_set, dm.test_set):
        for i in range(len(ds)):
            item = ds[i]
            ids = item["input_ids"].tolist()
            assert evaluate(render(ids)) == item["label"]
            h = own_hash(ids)
            assert h not in seen
            seen.add(h)


def test_generation_benchmark_runs_small(tmp_path):
    bench = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_listops_generation.py")
    threads = torch.get_num_threads()
    try:
        rc = bench.main(["--repeats", "1", "--reference", "50", "--sizes", "300", "40", "40",
                         "--out", str(tmp_path / "gen")])
    finally:
        torch.set_num_threads(threads)  # main() sets the thread count process-wide
    assert rc == 0
    data = json.loads((tmp_path / "gen.json").read_text())
    assert data["labels_checked"] == {"checked": 80, "wrong": 0}
    assert set(data["overlaps"].values()) == {0} and data["datamodule"]["same_as_generate_splits"]
    assert data["splits"]["train"]["n"] == 300 and data["machine"]["cpu_model"]
    assert "## Against the paper" in (tmp_path / "gen.md").read_text()


def test_baselines_benchmark_runs_small(tmp_path):
    """The baselines script on a small generated set: its majority-class accuracy equals one computed here from
    the labels alone, and the outermost-operator rule sends MIN to 0 and MAX to 9 (what those operators of many
    digits mostly give)."""
    bench = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_listops_baselines.py")
    rc = bench.main(["--sizes", "300,60,60", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "base")])
    assert rc == 0
    data = json.loads((tmp_path / "base.json").read_text())
    dm = ListOpsDataModule(data_source="generated", cache_dir=str(tmp_path / "cache"), generated_sizes=(300, 60, 60))
    dm.prepare_data()
    dm.setup("fit")
    train = np.array([int(dm.train_set[i]["label"]) for i in range(len(dm.train_set))])
    val = np.array([int(dm.val_set[i]["label"]) for i in range(len(dm.val_set))])
    majority = np.bincount(train, minlength=10).argmax()
    assert data["result"]["majority_label"] == majority
    assert data["result"]["val"]["majority class"]["accuracy"] == pytest.approx(np.mean(val == majority))
    assert data["result"]["rule"]["[MIN"] == 0 and data["result"]["rule"]["[MAX"] == 9
    assert "outermost-operator rule" in (tmp_path / "base.md").read_text()
