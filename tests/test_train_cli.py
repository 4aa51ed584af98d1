"""train.py end to end on synthetic data (CPU, tiny sizes): every task x a table of attention mechanisms built
from the registries, YAML + flags precedence (bad input: test_train_bad_input.py), a disk that fills and
memory that runs out mid-run (exit 1, one line, the last good checkpoint kept and named), the NaN guard
(exit 1 naming the step and the last good checkpoint), and what a run leaves behind (results.json, the
summary line, hparams.yaml).

Runs are called in-process (`training.runner.run` / `main`), which saves the ~5 s of imports a `python train.py`
subprocess costs.
"""
import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import smoke_flags

from callbacks import NonFiniteLossError
from models.attention import get_attention, list_attentions
from training.cli import main
from training.runner import run
from training.tasks import get_task, list_tasks

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train.py"

BUDGET = ["--batch-size", "8", "--limit-train-batches", "2", "--limit-val-batches", "2", "--limit-test-batches", "2",
          "--max-epochs", "1", "--accelerator", "cpu", "--data-source", "synthetic", "--no-progress-bar"]


def args(model, attention=None, logdir=None, *extra):
    out = ["--model", model, *(["--attention", attention] if attention else []), *smoke_flags(model), *BUDGET]
    if logdir is not None:
        out += ["--logdir", str(logdir)]
    return out + list(extra)


pytestmark = pytest.mark.usefixtures("training_isolated")  # caches in tmp, process state restored (conftest)

# --------------------------------------------------------------------------------------------- the table
def full_matrix():
    """Every (task, mechanism) pair that can work: all mechanisms on the non-causal tasks, the causal-capable
    ones on the causal tasks (wikitext), and each task without attention once. Built from the registries: a
    new mechanism or task is covered without editing this (35 fast dev runs, ~10 s)."""
    rows = []
    for t in list_tasks():
        task = get_task(t)
        if not task.uses_attention:
            rows.append((t, None))
            continue
        rows += [(t, a) for a in list_attentions() if get_attention(a).supports_causal or not task.causal]
    return rows


TABLE = full_matrix()


def test_table_covers_every_mechanism_and_task():
    assert {a for _, a in TABLE if a} == set(list_attentions())
    assert {m for m, _ in TABLE} == set(list_tasks())
    assert all(get_task(t).smoke for t in list_tasks())  # every task says how to make its network tiny
    for model, attention in TABLE:
        task = get_task(model)
        if attention is None:
            assert not task.uses_attention
            continue
        cls = get_attention(attention)
        assert cls.supports_causal or not task.causal  # linformer / nystromformer never on the language model
        if cls.supports_causal and not task.causal:
            assert ("wikitext", attention) in TABLE  # causal-capable ones also run causally
    for name in ("linformer", "nystromformer"):
        assert not get_attention(name).supports_causal
        assert [m for m, a in TABLE if a == name] and all(m != "wikitext" for m, a in TABLE if a == name)


@pytest.mark.parametrize("model,attention", TABLE, ids=[f"{m}-{a or 'none'}" for m, a in TABLE])
def test_fast_dev_run(model, attention, tmp_path):
    logdir = tmp_path / "logs"
    r = run(args(model, attention, logdir, "--fast-dev-run"))
    assert r["model"] == model and r["attention"] == (attention or "none") and r["data_source"] == "synthetic"
    assert r["steps"] == 1 and r["log_dir"] is None and r["parameters"] > 0
    monitor = get_task(model).monitor[0].split("/", 1)[1]
    assert f"test/{monitor}" in r["test"] and all(math.isfinite(v) for v in r["test"].values())
    assert not logdir.exists()  # fast_dev_run writes nothing


# --------------------------------------------------------------------------------------------- YAML + flags
def read_hparams(run_dir: Path) -> dict:
    return yaml.full_load((Path(run_dir) / "hparams.yaml").read_text())  # full_load: the file holds python tuples


def test_config_file_with_flags_overriding_it(tmp_path):
    cfg_file = tmp_path / "experiment.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "model": "wikitext", "attention": "performer", "attention_options": {"features": 16, "chunk": 8},
        "dim": 64, "heads": 4, "lr": 0.0123, "seq_len": 32, "dropout": 0.3, "max_epochs": 5,
    }))
    logdir = tmp_path / "logs"
    r = run(["--config", str(cfg_file), "--dim", "32", "--heads", "2", "--depth", "1", "--max-epochs", "1",
             "--attention-opt", "features=24", "--logdir", str(logdir), *BUDGET, "--no-test"])
    assert r["run"] == "wikitext-performer-synthetic"
    assert r["attention_options"] == {"features": 24, "chunk": 8}  # flag over file, per option
    saved = read_hparams(r["log_dir"])["config"]
    assert saved["dim"] == 32 and saved["heads"] == 2 and saved["depth"] == 1  # flags win
    assert saved["lr"] == 0.0123 and saved["dropout"] == 0.3 and saved["seq_len"] == 32  # the file's, over the recipe
    assert saved["max_epochs"] == 1 and r["epochs"] == 1
    assert saved["weight_decay"] == get_task("wikitext").recipe()["weight_decay"]  # untouched: the recipe's
    results = json.loads((Path(r["log_dir"]) / "results.json").read_text())
    assert results["attention_options"] == {"features": 24, "chunk": 8}
    # the checkpoint carries the same config
    ckpt = torch.load(Path(r["log_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["config"]["dim"] == 32
    assert ckpt["hyper_parameters"]["config"]["attention_options"] == {"features": 24, "chunk": 8}


# --------------------------------------------------------------------------------------------- NaN loss
NAN_FROM_STEP = 3


@pytest.fixture
def nan_from_step_3(monkeypatch):
    """The language model's training loss turns NaN from global step 3 on (steps 0-2 are fine); with two
    batches an epoch, epoch 0 (steps 0, 1) ends with a checkpoint and the NaN comes at step 3 of epoch 1."""
    from models.tasks.language_model import LanguageModelModule

    compute = LanguageModelModule.compute

    def nan_compute(self, batch):
        loss, update, n = compute(self, batch)
        if self.training and self.global_step >= NAN_FROM_STEP:
            loss = loss * float("nan")
        return loss, update, n

    monkeypatch.setattr(LanguageModelModule, "compute", nan_compute)


def nan_argv(logdir):
    return args("wikitext", "softmax", logdir, "--max-epochs", "3")


def test_nan_loss_stops_naming_step_and_checkpoint(nan_from_step_3, tmp_path):
    logdir = tmp_path / "logs"
    with pytest.raises(NonFiniteLossError) as info:
        run(nan_argv(logdir))
    e = info.value
    assert e.step == NAN_FROM_STEP and e.epoch == 1 and e.value != e.value  # NaN
    last = logdir / "wikitext-softmax-synthetic" / "version_0" / "checkpoints" / "last.ckpt"
    assert e.checkpoint == str(last) and last.is_file()
    msg = str(e)
    assert f"at step {NAN_FROM_STEP} (epoch 1)" in msg and str(last) in msg and "--ckpt-path" in msg
    # the checkpoint named is a good one: the state right before the NaN step (the loss is checked before its
    # backward pass), finite weights
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == NAN_FROM_STEP
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not list(logdir.rglob("results.json"))  # no result for a failed run, and it is marked failed
    failed = json.loads((last.parent.parent / "failed.json").read_text())
    assert failed["step"] == NAN_FROM_STEP and failed["error"].startswith("NonFiniteLossError: training stopped")


def test_nan_loss_exit_code_1(nan_from_step_3, tmp_path, capsys):
    code = main(nan_argv(tmp_path / "logs"))
    err = capsys.readouterr().err
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("train.py: training stopped: the loss became nan at step 3 (epoch 1)") and "last.ckpt" in line
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------- what a run leaves
def test_results_summary_and_hparams(tmp_path, capsys):
    logdir = tmp_path / "logs"
    code = main(args("imdb", "performer", logdir, "--attention-opt", "features=16"))
    out = capsys.readouterr().out
    assert code == 0
    run_dir = logdir / "imdb-performer-synthetic" / "version_0"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run"] == "imdb-performer-synthetic" and results["log_dir"] == str(run_dir)
    assert results["attention"] == "performer" and results["attention_options"] == {"features": 16}
    assert results["data_source"] == "synthetic" and results["monitor"] == "val/acc"
    assert results["steps"] == 2 and results["epochs"] == 1 and results["world_size"] == 1 and results["device"] == "cpu"
    assert set(results["test"]) == {"test/loss", "test/acc", "test/f1"}
    assert 0.0 <= results["best_val"] <= 1.0 and Path(results["best_checkpoint"]).is_file()
    assert Path(results["best_checkpoint"]).parent == run_dir / "checkpoints"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and list(run_dir.glob("events.out.tfevents.*"))
    # the summary line, last on stdout
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"imdb-performer-synthetic: test/acc {results['test']['test/acc']:.4f} | best val/acc ")
    assert "2 steps in" in summary and summary.endswith(f"on cpu | {run_dir}")
    config = read_hparams(run_dir)["config"]
    assert config["attention"] == "performer" and config["attention_options"] == {"features": 16}
    assert config["source_used"] == "synthetic" and config["model"] == "imdb"


# --------------------------------------------------------------------------------------------- failures mid-run
def test_a_disk_that_fills_mid_run_ends_in_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """The third checkpoint write fails with ENOSPC: exit 1, one line naming the step, the cause and the last
    good checkpoint, which is still there and loads; the run is marked failed."""
    import errno

    import lightning as L

    save, calls = L.Trainer.save_checkpoint, []

    def filling(self, filepath, *args, **kwargs):
        calls.append(filepath)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))
        return save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", filling)
    logdir = tmp_path / "logs"
    code = main(args("wikitext", "softmax", logdir, "--max-epochs", "3"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    last = logdir / "wikitext-softmax-synthetic" / "version_0" / "checkpoints" / "last.ckpt"
    assert re.fullmatch(rf"train.py: training stopped at step \d+: the disk is full \(.*\); the last good checkpoint "
                        rf"is {re.escape(str(last))} \(resume with --ckpt-path last\)", line), line
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] > 0
    assert json.loads((last.parent.parent / "failed.json").read_text())["error"].startswith("RunFailed: training stopped")


def test_memory_running_out_mid_run_ends_in_one_line(tmp_path, capsys, monkeypatch):
    from models.tasks.language_model import LanguageModelModule

    compute = LanguageModelModule.compute

    def exhausted(self, batch):
        if self.training and self.global_step >= 3:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
        return compute(self, batch)

    monkeypatch.setattr(LanguageModelModule, "compute", exhausted)
    code = main(args("wikitext", "softmax", tmp_path / "logs", "--max-epochs", "3"))
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in err
    assert line.startswith("train.py: training stopped at step 3: out of memory (RuntimeError: ") and "last.ckpt" in line
