"""The training progress bar over the run's whole budget: Lightning's rich bar, counting optimiser steps up to
max_steps (or the epochs' steps when the epochs are the limit) rather than one epoch's batches, with the
metrics a user watches and without Lightning's `v_num` (the run folder is printed at the end)."""
from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class BudgetProgressBar(RichProgressBar):
    """`Epoch 2  ━━━━╸   1,200/5,000 ...`: steps taken of the budget; the epoch, and its limit only when the
    epochs are what ends the run."""

    @property
    def total_train_batches(self):
        total = self.trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch}"
        if self.trainer.max_steps == -1 and self.trainer.max_epochs not in (None, -1):
            text += f"/{self.trainer.max_epochs - 1}"
        return f"{text:{len(self.validation_description)}}"  # as Lightning's: no flicker against "Validation"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:  # one bar for the run
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(trainer.current_epoch))
            self.refresh()
            return
        super().on_train_epoch_start(trainer, pl_module)
        self._update(self.train_progress_bar_id, trainer.global_step)  # a resumed run starts where it stopped

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
