"""Resuming and generating from checkpoints.

Resume exactness: an uninterrupted 2-epoch run (A) and a run stopped after epoch 1 then resumed with
`--ckpt-path last` (B) see the same training losses in epoch 2, to a relative tolerance of 1e-6 (float32
rounding would show as ~1e-7 relative; in practice they are bit-identical: same batches, same dropout masks,
same optimiser and schedule state). The model has dropout 0.1, so the losses depend on the global RNG
state: without the RNG states the checkpoint carries (TaskModule.on_save_checkpoint / on_train_start) the
resumed losses differ, which `test_resume_without_rng_restore_differs` confirms, so the exactness test
really tests that. Both legs of B use --max-epochs 2 (the cosine schedule's length depends on it); the first
leg is stopped at the end of epoch 1 by a callback (`trainer.should_stop`), as an interruption would.

Generation: `python train.py --model wikitext --ckpt-path last --generate PROMPT` prints the prompt and exactly
--max-new-tokens tokens; LanguageModel.generate's contract (length, greedy = argmax, top_k=1 = greedy).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import isolated_training_state

from models.language_model import LanguageModel
from training.runner import run

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-6  # relative; atol 0

LM = ["--model", "wikitext", "--attention", "softmax", "--seq-len", "32", "--dim", "32", "--depth", "1", "--heads", "2",
      "--dropout", "0.1", "--batch-size", "8", "--limit-train-batches", "4", "--limit-val-batches", "2",
      "--max-epochs", "2", "--data-source", "synthetic", "--accelerator", "cpu", "--no-progress-bar", "--no-test"]


pytestmark = pytest.mark.usefixtures("training_isolated")  # caches in tmp, process state restored (conftest)


class LossRecorder(L.Callback):
    """(epoch, loss) of every training step."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append((trainer.current_epoch, float(outputs["loss"].detach())))

    def epoch(self, e):
        return torch.tensor([loss for ep, loss in self.losses if ep == e], dtype=torch.float64)


class StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Run A: two epochs in one go; its per-step losses."""
    with isolated_training_state(tmp_path_factory):
        rec = LossRecorder()
        run([*LM, "--logdir", str(tmp_path_factory.mktemp("run_a"))], extra_callbacks=[rec])
    assert [e for e, _ in rec.losses] == [0] * 4 + [1] * 4
    return rec


def first_leg(logdir):
    rec = LossRecorder()
    r = run([*LM, "--logdir", str(logdir)], extra_callbacks=[rec, StopAfterFirstEpoch()])
    assert [e for e, _ in rec.losses] == [0] * 4 and r["epochs"] == 1
    return rec, r


def test_resume_continues_exactly(uninterrupted, tmp_path):
    logdir = tmp_path / "logs"
    rec1, r1 = first_leg(logdir)
    assert torch.equal(rec1.epoch(0), uninterrupted.epoch(0))  # same start
    rec2 = LossRecorder()
    r2 = run([*LM, "--logdir", str(logdir), "--ckpt-path", "last"], extra_callbacks=[rec2])
    assert [e for e, _ in rec2.losses] == [1] * 4  # only epoch 2 ran, from the checkpoint
    assert torch.allclose(rec2.epoch(1), uninterrupted.epoch(1), rtol=RTOL, atol=0), (rec2.losses, uninterrupted.losses)
    # the same version folder continued (TensorBoard, checkpoints, results.json)
    assert r2["log_dir"] == r1["log_dir"] and Path(r2["log_dir"]).name == "version_0"
    assert [p.name for p in (logdir / "wikitext-softmax-synthetic").iterdir()] == ["version_0"]
    assert r2["steps"] == 8 and r2["epochs"] == 2
    last = torch.load(Path(r2["log_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 8
    # the efficiency summary covers the whole run: the first leg's batches came back with the checkpoint
    eff = json.loads((Path(r2["log_dir"]) / "efficiency.json").read_text())
    assert eff["train_batches_measured"] == 8 and eff["steps"] == 8


def test_resume_without_rng_restore_differs(uninterrupted, tmp_path, monkeypatch):
    """The control: dropout makes the resumed losses depend on the restored RNG state."""
    from models.tasks.base import TaskModule

    logdir = tmp_path / "logs"
    first_leg(logdir)
    monkeypatch.setattr(TaskModule, "on_train_start", lambda self: None)
    rec2 = LossRecorder()
    run([*LM, "--logdir", str(logdir), "--ckpt-path", "last"], extra_callbacks=[rec2])
    assert not torch.allclose(rec2.epoch(1), uninterrupted.epoch(1), rtol=RTOL, atol=0)


# --------------------------------------------------------------------------------------------- generation
WORD = re.compile(r"w\d+|<unk>")


def test_generate_from_the_command_line(tmp_path):
    logdir = tmp_path / "logs"
    run([*LM, "--logdir", str(logdir)])
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "--model", "wikitext", "--logdir", str(logdir),
                        "--ckpt-path", "last", "--generate", "w1 w2", "--max-new-tokens", "7"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=180, env=dict(os.environ))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    out = p.stdout[:-1] if p.stdout.endswith("\n") else p.stdout  # print's own newline
    assert out.startswith("w1 w2 "), out
    body = out[len("w1 w2 "):]
    # a generated <eos> is printed as a line break, every other token as a word
    words = body.split()
    assert len(words) + body.count("\n") == 7, repr(out)
    assert all(WORD.fullmatch(w) for w in words), words


@pytest.fixture
def tiny_lm():
    torch.manual_seed(0)
    net = LanguageModel(vocab_size=23, seq_len=8, dim=16, depth=1, heads=2, dropout=0.1)
    with torch.no_grad():  # sharper logits than the small initialisation, so ties and near-ties are unlikely
        net.embed.weight.normal_(0, 1.0)
    return net.train()  # generate must switch to eval itself (dropout off) and back


def greedy_reference(net, ids, n):
    net.eval()
    with torch.no_grad():
        for _ in range(n):
            nxt = net(ids[:, -net.seq_len:])[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    return ids


def test_generate_length_and_prompt(tiny_lm):
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    g = torch.Generator().manual_seed(0)
    out = tiny_lm.generate(prompt, 12, temperature=1.0, top_k=None, generator=g)  # 15 > seq_len 8: context cropped
    assert out.shape == (2, 15) and out.dtype == torch.long
    assert torch.equal(out[:, :3], prompt) and out.min() >= 0 and out.max() < 23
    assert tiny_lm.training  # mode restored
    assert torch.equal(tiny_lm.generate(prompt, 0), prompt)
    # sampling with a seeded generator is reproducible
    again = tiny_lm.generate(prompt, 12, temperature=1.0, top_k=None, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_generate_temperature_zero_is_greedy(tiny_lm):
    prompt = torch.tensor([[1, 2, 3], [7, 8, 9]])
    a = tiny_lm.generate(prompt, 10, temperature=0)
    b = tiny_lm.generate(prompt, 10, temperature=0, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a, b)
    assert torch.equal(a, greedy_reference(tiny_lm, prompt, 10))


def test_generate_top_k_1_is_greedy(tiny_lm):
    prompt = torch.tensor([[1, 2, 3], [7, 8, 9]])
    greedy = tiny_lm.generate(prompt, 10, temperature=0)
    for seed in range(3):
        sampled = tiny_lm.generate(prompt, 10, temperature=0.8, top_k=1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(sampled, greedy)
    # and plain sampling is not greedy here (the test can tell them apart)
    hot = tiny_lm.generate(prompt, 10, temperature=5.0, top_k=None, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(hot, greedy)
