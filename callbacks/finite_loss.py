"""Stop training at the first NaN / inf loss, naming the step and the last good checkpoint."""
from __future__ import annotations

from typing import Optional

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    """The training loss stopped being finite; the message names the step and the checkpoint to go back to
    (LastCheckpoint fills `checkpoint` in with the state saved just before that step, when it can)."""

    def __init__(self, value: float, step: int, epoch: int, checkpoint: Optional[str]):
        self.value, self.step, self.epoch, self.checkpoint = value, step, epoch, checkpoint
        super().__init__(self.describe())

    def describe(self) -> str:
        where = (f"the last good checkpoint is {self.checkpoint} (resume from it with --ckpt-path, e.g. with a lower --lr)"
                 if self.checkpoint else "no checkpoint had been saved yet")
        return f"training stopped: the loss became {self.value} at step {self.step} (epoch {self.epoch}); {where}"

    def refresh_message(self) -> None:
        self.args = (self.describe(),)


class FiniteLossGuard(L.Callback):
    """Checks every training batch's loss before its backward pass (one device-to-host read per batch), so
    the weights are still those of the last good step when it stops. The step named is the one whose loss
    it was (`global_step` while that batch ran, the x of its `train/loss_step` point in TensorBoard)."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if loss is None or bool(torch.isfinite(loss.detach()).all()):
            return
        ckpt = None
        for cb in trainer.checkpoint_callbacks:
            ckpt = getattr(cb, "last_model_path", None) or ckpt
        raise NonFiniteLossError(float(loss.detach().float().cpu()), trainer.global_step, trainer.current_epoch, ckpt or None)
