from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so tolerances are checked on fixed data."""
    torch.manual_seed(0)
    yield


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data (real WikiText-2, IMDB, CIFAR-10 copies) when present; skip otherwise."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def hub_down(monkeypatch):
    """The hub as it is without network: `datasets.load_dataset` raises (offline flags cleared, so
    the code really tries it)."""
    import datasets

    def no_network(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
