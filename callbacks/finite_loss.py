"""Stop training at the first NaN / inf loss, naming the step and the last good checkpoint."""
from __future__ import annotations

from typing import Optional

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    """The training loss stopped being finite; the message names the step and the checkpoint to go back to."""

    def __init__(self, value: float, step: int, epoch: int, checkpoint: Optional[str]):
        self.value, self.step, self.epoch, self.checkpoint = value, step, epoch, checkpoint
        where = (f"the last good checkpoint is {checkpoint} (resume from it with --ckpt-path, e.g. with a lower --lr)"
                 if checkpoint else "no checkpoint had been saved yet")
        super().__init__(f"training stopped: the loss became {value} at step {step} (epoch {epoch}); {where}")


class FiniteLossGuard(L.Callback):
    """Checks every training step's loss (one device-to-host read per step). The step named is the one whose
    loss it was (`global_step` while that batch ran, the x of its `train/loss_step` point in TensorBoard), not
    the count after its optimiser step."""

    def __init__(self):
        self._step: Optional[int] = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or bool(torch.isfinite(loss.detach()).all()):
            return
        ckpt = None
        for cb in trainer.checkpoint_callbacks:
            ckpt = getattr(cb, "last_model_path", None) or getattr(cb, "best_model_path", None) or ckpt
        step = self._step if self._step is not None else trainer.global_step
        raise NonFiniteLossError(float(loss.detach().float().cpu()), step, trainer.current_epoch, ckpt or None)
