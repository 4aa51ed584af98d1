import contextlib
import importlib.util
import os
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


@contextlib.contextmanager
def isolated_training_state(tmp_path_factory):
    """For tests that train: data caches in a temporary folder, and the process-wide state a run sets (the
    seed variables of seed_everything, deterministic algorithms) put back afterwards, so later tests see
    what they would have seen."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTENTION_SUITE_CACHE", str(tmp_path_factory.getbasetemp() / "attention-suite-cache"))
        seed_vars = {var: os.environ.get(var) for var in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
        deterministic = torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            for var, value in seed_vars.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value


@pytest.fixture
def training_isolated(tmp_path_factory):
    """isolated_training_state around one test (use with pytest.mark.usefixtures)."""
    with isolated_training_state(tmp_path_factory):
        yield


def load_script(path: Path):
    """A benchmark script (not a package module) imported by path, for smoke tests of its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def smoke_flags(model: str) -> list:
    """train.py flags for the task's tiny network, from its registry entry (`Task.smoke`): a new task needs no
    entry in any test table."""
    from training.tasks import get_task

    return [x for key, value in get_task(model).smoke.items() for x in (f"--{key.replace('_', '-')}", str(value))]
