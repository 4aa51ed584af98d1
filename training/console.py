"""What a run prints (docs/training.md, "The console"): Lightning's messages that tell a user of train.py nothing
(its adverts, the accelerator lines, how it reads a limit of 1.0, checkpoint-loading chatter) are dropped at their
loggers, and a message repeated within a run is shown once; `--verbose` shows everything. A wait of more than a
few seconds in the runner (reading, tokenising, encoding data) says what it waits for and, at the end, how long
it took.

    with quiet_lightning(verbose=False), announce_if_slow("preparing the data"):
        ...
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from typing import Iterator, List

# the loggers Lightning's informational messages go through (rank_zero_info and the checkpoint connector's own)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "lightning.pytorch.trainer.connectors.checkpoint_connector")
NOISE = re.compile("|".join([
    r"Tip: ",  # the litlogger / litmodels adverts
    r"^(GPU|TPU|HPU|IPU) available: ",  # the accelerators found; the summary line names the device used
    r"was configured so ",  # Trainer(limit_train_batches=1.0) was configured so 100% of the batches ...
    r"^Loading `\w+_dataloader` to estimate number of stepping batches",
    r"`weights_only` was not set",
    r"^Restoring states from the checkpoint path at .*best-",  # the test of the best checkpoint (named at the end)
    r"^Loaded model weights from the checkpoint at .*best-",
    r"^`Trainer.fit` stopped: `max_(steps|epochs)=",  # the summary line gives the steps
    r"^You are using a CUDA device .* Tensor Cores",  # --precision says what matmuls use
    r"^LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES",
]))


class QuietLightning(logging.Filter):
    """Drops NOISE and any message already shown during this run."""

    def __init__(self):
        super().__init__()
        self.shown: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if NOISE.search(message) or message in self.shown:
            return False
        self.shown.add(message)
        return True


@contextlib.contextmanager
def quiet_lightning(verbose: bool = False) -> Iterator[None]:
    """Within the block, Lightning's loggers drop NOISE and repeats (unless `verbose`); restored after it."""
    if verbose:
        yield
        return
    f = QuietLightning()
    loggers: List[logging.Logger] = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    for logger in loggers:
        logger.addFilter(f)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(f)


@contextlib.contextmanager
def announce_if_slow(what: str, after_s: float = 3.0, every_s: float = 30.0, stream=None,
                     terminal_only: bool = False) -> Iterator[None]:
    """If the block takes more than `after_s` seconds, say `what` it is doing then (and every `every_s` seconds),
    and how long it took at its end; a quick block prints nothing. `terminal_only`: say nothing when the stream
    is not a terminal (a pipe, a log file, a test)."""
    out = stream or sys.stderr
    if terminal_only and not (hasattr(out, "isatty") and out.isatty()):
        yield
        return
    start = time.perf_counter()
    done = threading.Event()
    said = threading.Event()

    def tell() -> None:
        wait = after_s
        while not done.wait(wait):
            print(f"train.py: {what} ({time.perf_counter() - start:.0f} s so far)", file=out, flush=True)
            said.set()
            wait = every_s

    thread = threading.Thread(target=tell, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if said.is_set():
            print(f"train.py: {what}: done in {time.perf_counter() - start:.1f} s", file=out, flush=True)
