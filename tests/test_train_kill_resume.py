"""A run killed mid-epoch (a real SIGKILL of the training process) and resumed with `--ckpt-path last` logs
exactly what an uninterrupted run logs: every training loss, validation metric and learning rate, bit for
bit (CPU, float32; compared as the float32 values TensorBoard stores, tolerance 0), and no step twice in its
TensorBoard files. A run that stopped at --max-steps and is continued with a larger --max-steps starts from
its final step and sees the batches an uninterrupted run would have seen.

The set-up makes the interruption fall where it matters: 6 batches an epoch, validation every 2 steps (so
last.ckpt is written at steps 2 and 4 inside the epoch and at the epoch's end), dropout on (the resumed
losses depend on the restored RNG state) and the kill at step 5, one step after the newest checkpoint and
in the middle of epoch 0. The child flushes TensorBoard before it waits, so the events logged after the
checkpoint are on disk when it dies and the resumed run must cut them. The child announces that it reached step 5 by writing a file and then waits, so
the kill never races the training (the subprocess time-outs are hang guards, not timing assertions).
"""
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from training.runner import run

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 600

ARGS = ["--model", "wikitext", "--attention", "softmax", "--seq-len", "16", "--dim", "32", "--depth", "1",
        "--heads", "2", "--dropout", "0.1", "--batch-size", "4", "--limit-train-batches", "6",
        "--limit-val-batches", "2", "--val-check-interval", "2", "--max-epochs", "2", "--log-every-n-steps", "1",
        "--data-source", "synthetic", "--accelerator", "cpu", "--no-progress-bar", "--no-test",
        "--no-efficiency-callbacks"]
KILL_AT_STEP = 5

pytestmark = pytest.mark.usefixtures("training_isolated")  # caches in tmp, process state restored (conftest)

# the child: train.py's runner with one extra callback that stops at a step and waits to be killed
CHILD = """
import sys, time
from pathlib import Path
import lightning as L
sys.path.insert(0, {root!r})
from training.runner import run

class WaitAt(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == {step}:
            trainer.logger.experiment.flush()  # what was logged after the checkpoint is on disk: the resume must cut it
            Path({marker!r}).write_text("reached")
            time.sleep({wait})

run({argv!r}, extra_callbacks=[WaitAt()])
"""


def events(run_dir: Path):
    """Every scalar event in the run's TensorBoard files, duplicates included: {tag: [(step, value), ...]}."""
    out = defaultdict(list)
    for f in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                if v.HasField("simple_value") or v.metadata.plugin_data.plugin_name == "scalars":
                    value = v.simple_value if v.HasField("simple_value") else float(torch.tensor(
                        list(v.tensor.float_val) or [float("nan")])[0])
                    out[v.tag].append((event.step, value))
    return out


def kill_mid_epoch(logdir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "reached"
    code = CHILD.format(root=str(ROOT), step=KILL_AT_STEP, marker=str(marker), wait=HANG_GUARD_S,
                        argv=[*ARGS, "--logdir", str(logdir)])
    p = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=dict(os.environ))
    deadline = time.monotonic() + HANG_GUARD_S
    while not marker.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), p.stderr.read().decode()[-3000:] if p.poll() is not None else "the child hung"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=HANG_GUARD_S)
    assert p.returncode == -signal.SIGKILL


def test_killed_mid_epoch_and_resumed_logs_what_an_uninterrupted_run_logs(tmp_path):
    a = run([*ARGS, "--logdir", str(tmp_path / "a")])
    want = events(Path(a["log_dir"]))

    logdir = tmp_path / "b"
    kill_mid_epoch(logdir, tmp_path)
    run_dir = logdir / "wikitext-softmax-synthetic" / "version_0"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4 and last["epoch"] == 0  # the newest state: inside the epoch, before the kill
    killed = events(run_dir)
    # logged before the kill: losses of steps 0-3 (step 4's is written after the batch-end hooks) and the
    # learning rate of step 4, which came after the checkpoint and is logged again by the resumed run
    assert max(s for s, _ in killed["train/loss_step"]) == 3 and max(s for s, _ in killed["lr-AdamW/pg1"]) == 4

    b = run([*ARGS, "--logdir", str(logdir), "--ckpt-path", "last"])
    assert b["log_dir"] == str(run_dir) and b["steps"] == 12 and b["epochs"] == 2
    got = events(run_dir)
    for tag, points in got.items():
        steps = [s for s, _ in points]
        # Lightning itself logs `epoch` with every log call, so an uninterrupted run has it twice at some steps
        assert tag == "epoch" or len(steps) == len(set(steps)), f"{tag} holds a step twice: {sorted(steps)}"
    assert set(got) == set(want) and {"train/loss_step", "val/loss", "val/ppl", "lr-AdamW/pg1"} <= set(got)
    for tag in sorted(want):
        assert sorted(got[tag]) == sorted(want[tag]), tag  # every point and value, bit for bit (float32)
    assert len(got["train/loss_step"]) == 12 and all(math.isfinite(v) for _, v in got["train/loss_step"])


class Batches(L.Callback):
    """(global step, a fingerprint of the batch) of every training step."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.global_step, batch[0].sum().item(), batch[0][:, 0].tolist()))


def test_a_finished_run_continued_starts_from_its_final_step(tmp_path):
    i = ARGS.index("--max-epochs")
    budget = [*ARGS[:i], "--max-epochs", "3", *ARGS[i + 2:]]
    whole = Batches()
    run([*budget, "--max-steps", "9", "--logdir", str(tmp_path / "a")], extra_callbacks=[whole])
    first, second = Batches(), Batches()
    r1 = run([*budget, "--max-steps", "4", "--logdir", str(tmp_path / "b")], extra_callbacks=[first])
    r2 = run([*budget, "--max-steps", "9", "--logdir", str(tmp_path / "b"), "--ckpt-path", "last"],
             extra_callbacks=[second])
    assert r1["steps"] == 4 and r2["steps"] == 9 and r2["log_dir"] == r1["log_dir"]
    assert [s for s, *_ in second.seen] == [4, 5, 6, 7, 8]  # from the final step on, none repeated
    # the data goes on where it stopped (mid-epoch: 6 batches an epoch), as in the uninterrupted run
    assert first.seen + second.seen == whole.seen


def test_without_the_saved_position_the_continued_run_repeats_data(tmp_path, monkeypatch):
    """The control: the position in the DataModule's state is what makes the continuation exact."""
    from datamodules.resumable import ResumableTraining

    i = ARGS.index("--max-epochs")
    budget = [*ARGS[:i], "--max-epochs", "3", *ARGS[i + 2:]]
    whole, first, second = Batches(), Batches(), Batches()
    run([*budget, "--max-steps", "9", "--logdir", str(tmp_path / "a")], extra_callbacks=[whole])
    run([*budget, "--max-steps", "4", "--logdir", str(tmp_path / "b")], extra_callbacks=[first])
    monkeypatch.setattr(ResumableTraining, "load_state_dict", lambda self, state: None)
    run([*budget, "--max-steps", "9", "--logdir", str(tmp_path / "b"), "--ckpt-path", "last"], extra_callbacks=[second])
    assert first.seen + second.seen != whole.seen


class LearningRates(L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.seen.append((trainer.global_step, groups[0]["lr"], groups[1]["lr"], groups[0]["weight_decay"]))


def test_a_run_resumed_with_another_lr_uses_it(tmp_path):
    """After a NaN the message says to resume with a lower --lr: the restored optimiser must not keep the old
    peak. The schedule goes on where it stood, scaled to the new peak (warm-up + cosine is a multiplier)."""
    i = ARGS.index("--max-epochs")
    budget = [*ARGS[:i], "--max-epochs", "1", *ARGS[i + 2:], "--warmup", "0", "--logdir", str(tmp_path)]
    first, second = LearningRates(), LearningRates()
    run([*budget, "--max-steps", "3", "--lr", "1e-3"], extra_callbacks=[first])
    run([*budget, "--max-steps", "6", "--lr", "1e-4", "--weight-decay", "0.2", "--ckpt-path", "last"],
        extra_callbacks=[second])
    step, lr0, lr1, wd = second.seen[0]
    # the cosine over 6 steps (the new budget) at step 3, times the new peak; both groups; the new decay
    expected = 1e-4 * 0.5 * (1 + math.cos(math.pi * 3 / 6))
    assert step == 3 and lr0 == pytest.approx(expected, rel=1e-12) and lr1 == lr0 and wd == 0.2
    assert first.seen[0][1] == pytest.approx(1e-3, rel=1e-12)
