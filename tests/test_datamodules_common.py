"""Source selection and seeded splits shared by every DataModule."""
from pathlib import Path

import pytest
import torch

from datamodules.common import DataUnavailableError, SourcedDataModule, seeded_split


class Toy(SourcedDataModule):
    name = "Toy"
    local_hint = "a folder holding toy.txt"

    def __init__(self, hub=False, **kw):
        super().__init__(**kw)
        self._hub = hub

    def find_local(self, data_dir: Path):
        return data_dir if (data_dir / "toy.txt").is_file() else None

    def hub_available(self):
        return self._hub


def test_seeded_split_is_disjoint_complete_and_repeatable():
    a = seeded_split(100, [0.8, 0.2], seed=3)
    b = seeded_split(100, [0.8, 0.2], seed=3)
    c = seeded_split(100, [0.8, 0.2], seed=4)
    assert [len(t) for t in a] == [80, 20]
    assert sorted(torch.cat(a).tolist()) == list(range(100))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])
    assert [len(t) for t in seeded_split(10, [3, 2], seed=0)] == [3, 2]
    with pytest.raises(ValueError):
        seeded_split(10, [8, 5], seed=0)


def test_auto_prefers_local_then_hub(tmp_path):
    (tmp_path / "toy.txt").write_text("x")
    dm = Toy(data_source="auto", data_dir=str(tmp_path), hub=True)
    assert dm.resolve_source() == "local" and dm.local_root == tmp_path
    (tmp_path / "other").mkdir()
    assert Toy(data_source="auto", data_dir=str(tmp_path / "other"), hub=True).resolve_source() == "hub"


@pytest.mark.parametrize("source", ["auto", "local"])
def test_a_data_dir_that_is_missing_or_a_file_is_named_at_once_never_the_hub(tmp_path, source):
    """A mistyped --data-dir must not turn into a hub download (tens of seconds of retries) under "auto"."""
    (tmp_path / "file").write_text("x")
    for path, words in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "file", "is a file")):
        dm = Toy(data_source=source, data_dir=str(path), hub=True)
        with pytest.raises(DataUnavailableError, match=words) as e:
            dm.resolve_source()
        assert str(path) in str(e.value) and "toy.txt" in str(e.value) and dm.source_used is None


def test_auto_without_any_source_names_three_ways_and_never_goes_synthetic(tmp_path):
    dm = Toy(data_source="auto", data_dir=str(tmp_path), hub=False)
    with pytest.raises(DataUnavailableError) as e:
        dm.resolve_source()
    msg = str(e.value)
    assert "--data-dir" in msg and "download" in msg and "--data-source synthetic" in msg
    assert dm.source_used is None


def test_local_missing_says_what_layout_is_expected(tmp_path):
    with pytest.raises(DataUnavailableError, match="toy.txt"):
        Toy(data_source="local", data_dir=str(tmp_path)).resolve_source()
    with pytest.raises(DataUnavailableError, match="does not exist"):
        Toy(data_source="local", data_dir=str(tmp_path / "nowhere")).resolve_source()
    with pytest.raises(DataUnavailableError, match="needs a data_dir"):
        Toy(data_source="local").resolve_source()


def test_bad_arguments():
    with pytest.raises(ValueError, match="data_source"):
        Toy(data_source="web")
    with pytest.raises(ValueError, match="batch_size"):
        Toy(batch_size=0)
    assert Toy(data_source="synthetic").resolve_source() == "synthetic"


class Generated(Toy):
    """A data set with a generator of its own and no hub (as LRA's ListOps and Pathfinder)."""
    sources = ("auto", "generated", "local", "synthetic")


def test_auto_prefers_local_then_the_generator(tmp_path):
    assert Generated(data_source="auto", hub=True).resolve_source() == "generated"  # never the hub
    assert Generated(data_source="auto", data_dir=str(tmp_path)).resolve_source() == "generated"  # no copy here
    (tmp_path / "toy.txt").write_text("x")
    assert Generated(data_source="auto", data_dir=str(tmp_path)).resolve_source() == "local"
    assert Generated(data_source="generated", data_dir=str(tmp_path)).resolve_source() == "generated"


def test_a_source_the_data_set_does_not_offer_is_refused():
    with pytest.raises(ValueError, match=r"data_source must be one of auto, generated, local, synthetic, got 'hub'"):
        Generated(data_source="hub")
    with pytest.raises(ValueError, match=r"data_source must be one of auto, hub, local, synthetic, got 'generated'"):
        Toy(data_source="generated")


def test_a_local_only_data_set_does_not_suggest_the_hub(tmp_path):
    class LocalOnly(Toy):
        sources = ("auto", "local", "synthetic")

    with pytest.raises(DataUnavailableError) as info:
        LocalOnly(data_source="auto").resolve_source()
    assert "hub" not in str(info.value) and "--data-dir" in str(info.value)
