"""`last.ckpt` that is always the newest resumable state, a graceful stop on SIGINT / SIGTERM, and the
TensorBoard files cut back to a checkpoint when a run resumes from it (docs/training.md, "Resuming").

    trainer = L.Trainer(callbacks=[ModelCheckpoint(monitor="val/acc", mode="max"), LastCheckpoint()])

Saved after every mid-epoch validation, at each epoch's start, at --max-steps, at the end, before a NaN
step and on a signal: the states Lightning's loops resume from exactly."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any, Dict, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from .finite_loss import NonFiniteLossError

LAST = "last.ckpt"
EVENTS_KEY = "tensorboard_event_sizes"  # in the checkpoint dict: {file name: bytes} of the run's event files
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(RuntimeError):
    """The run stopped on a signal at a step boundary; the message names the step and the checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[str]):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = (f"the state after it is saved in {checkpoint}; resume with --ckpt-path last (or that file)"
                 if checkpoint else "no checkpoint could be saved")
        super().__init__(f"training stopped by {signal.Signals(signum).name} after step {step}; {where}")


def event_files(log_dir: Path) -> Dict[str, int]:
    return {p.name: p.stat().st_size for p in Path(log_dir).glob("events.out.tfevents.*") if p.is_file()}


def truncate_events(log_dir: Path, checkpoint: Dict[str, Any]) -> int:
    """Cut the run's TensorBoard event files back to what they held when `checkpoint` was saved (files
    written since are removed). Returns the number of bytes dropped. A checkpoint without the record
    (written by another tool) changes nothing."""
    sizes = checkpoint.get(EVENTS_KEY)
    if not isinstance(sizes, dict):
        return 0
    dropped = 0
    for name, size in event_files(log_dir).items():
        keep = int(sizes.get(name, 0))
        if size > keep:
            path = Path(log_dir) / name
            if keep == 0:
                path.unlink()
            else:
                os.truncate(path, keep)  # records are appended whole, and the sizes were taken after a flush
            dropped += size - keep
    return dropped


class LastCheckpoint(Checkpoint):
    """See the module docstring. `dirpath`: where last.ckpt goes (default: the run's `checkpoints/` folder,
    where ModelCheckpoint puts its files too)."""

    def __init__(self, dirpath: Optional[os.PathLike | str] = None, handle_signals: bool = True):
        super().__init__()
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.handle_signals = handle_signals
        self.last_model_path = ""
        self._saved_step: Optional[int] = None
        self._stop_signal: Optional[int] = None
        self._previous_handlers: Dict[int, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            root = trainer.log_dir or trainer.default_root_dir
            self.dirpath = Path(trainer.strategy.broadcast(os.path.join(root, "checkpoints")))

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    # ---------------------------------------------------------------- saving
    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(str(self.path))
        self.last_model_path = str(self.path)
        self._saved_step = trainer.global_step

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: Dict[str, Any]) -> None:
        # every checkpoint (best-k ones too) says how far the TensorBoard files had got
        logger = trainer.logger
        experiment = getattr(logger, "experiment", None) if logger is not None and trainer.is_global_zero else None
        if experiment is not None and hasattr(experiment, "flush"):
            experiment.flush()
            checkpoint[EVENTS_KEY] = event_files(Path(logger.log_dir))

    def _fitting(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and not trainer.fast_dev_run and trainer.state.fn == "fit"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not in the validation at an epoch's last batch: Lightning would repeat the epoch's end from that
        # state, so the end of an epoch is saved at the next epoch's start, after everything it logged
        if self._fitting(trainer) and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.save(trainer)
            self._stop_if_asked(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer) and trainer.global_step > 0 and self._saved_step != trainer.global_step:
            self.save(trainer)
            self._stop_if_asked(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run and self._saved_step != trainer.global_step:
            self.save(trainer)
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # FiniteLossGuard raises before the backward pass: the weights are still the last good step's
        self._restore_handlers()
        # one process only: under DDP the others are not in this hook, and saving waits for them all
        if isinstance(exception, NonFiniteLossError) and not trainer.fast_dev_run and trainer.world_size == 1:
            if all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()):
                self.save(trainer)
                exception.checkpoint = self.last_model_path
            exception.refresh_message()

    # ---------------------------------------------------------------- signals
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_step = trainer.global_step  # a resumed run starts from a saved state: no need to save it again
        if (self.handle_signals and trainer.world_size == 1
                and threading.current_thread() is threading.main_thread()):
            for signum in STOP_SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._ask_to_stop)

    def _ask_to_stop(self, signum: int, frame) -> None:
        # the stop happens at the end of the current training batch: a step is never cut in half
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now, as Ctrl+C does
        self._stop_signal = signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        # at --max-steps, save before Lightning closes the epoch: it counts a cut epoch as done, so a run
        # continued with a larger --max-steps from the train-end state would skip the rest of that epoch
        # (and, at --max-epochs 1, train nothing)
        at_max_steps = 0 < trainer.max_steps <= trainer.global_step
        if (self._stop_signal is not None or at_max_steps) and self._saved_step != trainer.global_step:
            self.save(trainer)
        self._stop_if_asked(trainer)

    def _stop_if_asked(self, trainer: L.Trainer) -> None:
        if self._stop_signal is not None:
            signum, self._stop_signal = self._stop_signal, None
            raise TrainingInterrupted(signum, trainer.global_step, self.last_model_path or None)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
