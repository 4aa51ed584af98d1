"""What train.py prints: Lightning's adverts and routine notes filtered at their loggers, a repeated message shown
once, c10's allocator note held back from the profiled steps without losing anything else written then, a
progress bar over the run's budget without v_num, a line during slow waits, and `--verbose` for everything."""
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from callbacks.efficiency import ALLOCATOR_NOTE, _HoldNativeNote
from training.console import LIGHTNING_LOGGERS, announce_if_slow, quiet_lightning

ROOT = Path(__file__).resolve().parents[1]


def test_quiet_lightning_drops_noise_and_repeats_and_verbose_keeps_all():
    logger = logging.getLogger(LIGHTNING_LOGGERS[0])
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    messages = ["GPU available: False, used: False", "💡 Tip: For seamless cloud logging ...",
                "`Trainer(limit_train_batches=1.0)` was configured so 100% of the batches per epoch will be used..",
                "WikiText-2 [synthetic, word]: vocabulary 63", "WikiText-2 [synthetic, word]: vocabulary 63",
                "Restoring states from the checkpoint path at /runs/version_0/checkpoints/last.ckpt"]
    try:
        with quiet_lightning(verbose=False):
            for m in messages:
                logger.info(m)
        assert seen == [messages[3], messages[5]]  # the data line once; a resume's checkpoint is still named
        seen.clear()
        with quiet_lightning(verbose=True):
            for m in messages:
                logger.info(m)
        assert seen == messages
        seen.clear()
        logger.info(messages[0])  # outside the block: Lightning's own behaviour again
        assert seen == messages[:1]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_allocator_note_is_held_back_and_the_rest_written(capfd):
    hold = _HoldNativeNote()
    hold.start()
    os.write(2, f"[W CPUAllocator.cpp:245] {ALLOCATOR_NOTE}, profiler results will not include ...\n".encode())
    os.write(2, b"a real warning\n")
    print("a Python warning", file=sys.stderr)
    hold.stop()
    err = capfd.readouterr().err
    assert ALLOCATOR_NOTE not in err
    assert "a real warning\n" in err and "a Python warning\n" in err


def test_announce_if_slow_speaks_only_for_slow_blocks(capsys):
    with announce_if_slow("quick", after_s=30):
        pass
    assert capsys.readouterr().err == ""
    with announce_if_slow("encoding the data", after_s=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("train.py: encoding the data (") and err[-1].startswith("train.py: encoding the data: done in ")
    with announce_if_slow("importing", after_s=0.05, terminal_only=True):  # pytest's capture is not a terminal
        time.sleep(0.3)
    assert capsys.readouterr().err == ""


def test_a_run_prints_its_lines_once_and_no_noise(tmp_path):
    """A subprocess, as a user runs it: the console as a whole."""
    steps = 24
    cmd = [sys.executable, str(ROOT / "train.py"), "--model", "wikitext", "--attention", "linear", "--dim", "16",
           "--depth", "1", "--heads", "2", "--seq-len", "16", "--batch-size", "8", "--max-steps", str(steps),
           "--val-check-interval", "12", "--limit-val-batches", "2", "--limit-test-batches", "2",
           "--data-source", "synthetic", "--accelerator", "cpu", "--logdir", str(tmp_path / "logs"),
           "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    text = p.stdout + p.stderr
    for noise in ("Tip:", "GPU available", "TPU available", "was configured so", "weights_only", "CPUAllocator",
                  "Loading `train_dataloader`", "v_num", "LeafSpec"):
        assert noise not in text, noise
    assert text.count("WikiText-2 [synthetic, word]") == 1  # setup runs three times (prepare, fit, test)
    assert text.count("wikitext-linear-synthetic: test/ppl") == 1
    assert f"{steps}/{steps}" in p.stdout  # the bar counts the budget, not the epoch's 313 batches
    assert "Epoch 0/19" not in p.stdout  # the recipe's 20 epochs are not what ends this run
