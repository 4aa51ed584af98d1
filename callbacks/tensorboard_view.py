"""What a run looks like in TensorBoard beyond the scalars Lightning writes (docs/training.md, "TensorBoard"):

- `TensorBoardView`, a callback: validation's scalars go at the step its images, text and efficiency scalars
  use (the optimiser steps taken, as in the checkpoint names), and a Custom Scalars layout puts the training
  curves first and the efficiency scalars last;
- `log_run_summary`: the run's settings and final figures in the HParams tab, one row per run, with the same
  columns for every task and mechanism so that `tensorboard --logdir lightning_logs` compares them in one table
  (TensorBoardView writes it at the end of the test, into the test's own event file).

    trainer = L.Trainer(callbacks=[TensorBoardView(config=cfg)])
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.utils.tensorboard.summary import hparams

from .efficiency import EFFICIENCY_FILE

# The HParams table's columns, the same for every run (a run without a value leaves its cell empty).
# TensorBoard takes the columns from one run's experiment summary, so each run declares them all.
HPARAM_STRINGS = ("model", "attention", "attention_options", "recipe", "data_source", "metric", "lr_schedule",
                  "precision")
HPARAM_NUMBERS = ("dim", "depth", "heads", "mlp_ratio", "tokens", "parameters", "batch_size", "lr", "weight_decay",
                  "warmup", "steps", "seed")
SUMMARY = "hparams/"  # the scalar tags the table's metric columns read (one point each, at the run's last step)
HPARAM_METRICS = ("test_metric", "best_val_metric", "latency_ms_p50", "peak_mem_mib", "step_alloc_peak_mib",
                  "samples_per_s")


def custom_scalars_layout() -> Dict[str, Dict[str, List]]:
    """The Custom Scalars tab: the curves a user watches first, then validation, then what each step cost."""
    return {
        "1 training": {"loss (train step, validation)": ["Multiline", [r"train/loss_step", r"val/loss"]],
                       "learning rate (per parameter group)": ["Multiline", [r"lr-.*"]]},
        "2 validation": {"metrics": ["Multiline", [r"val/(?!loss).*"]]},
        "3 efficiency": {"step latency (ms)": ["Multiline", [r"efficiency/train_latency_ms$",
                                                             r"efficiency/val_latency_ms_p50"]],
                         "throughput (per s)": ["Multiline", [r"efficiency/train_.*_per_s$"]],
                         "peak memory (MiB)": ["Multiline", [r"efficiency/.*peak_mem_mib.*"]]},
    }


def _writer(trainer: L.Trainer):
    """The rank-0 TensorBoard SummaryWriter of the run, None without one."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        exp = getattr(logger, "experiment", None)
        if hasattr(exp, "add_custom_scalars"):
            return exp
    return None


class TensorBoardView(Callback):
    """Validation's scalars at the step of its images and text, the Custom Scalars layout, and a training-log
    interval that gives curves: unless `fixed`, the interval becomes min(the one asked, max(1, steps // points)),
    steps being the run's whole budget (Trainer.estimated_stepping_batches), so a 30-step run logs every step
    and a 20,000-step run every 20 (the recipes' 20, or 10 for the LRA tasks).

    Lightning logs a validation run inside the training loop at the index of the last training batch (9 after
    10 steps), while `self.global_step`, which the images, the text and the checkpoint names use, is already 10:
    logging the metric `step` (Lightning's documented override of the logging step) puts the scalars at 10 too."""

    def __init__(self, fixed: bool = False, points: int = 50, config: Optional[Dict[str, Any]] = None,
                 tokens: Optional[int] = None, tested: bool = True):
        """`config` (the run config): write the HParams row (log_run_summary) at the end of the test, or of the
        fit when no test follows (`tested` False), into the event file open then; `tokens`: what the attention
        sees, for the row."""
        self.fixed, self.points = fixed, points
        self.config, self.tokens, self.tested = config, tokens, tested

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.fixed and trainer.log_every_n_steps:
            trainer.log_every_n_steps = log_interval(trainer.log_every_n_steps, trainer.estimated_stepping_batches,
                                                     self.points)
        writer = _writer(trainer)
        if writer is not None:
            writer.add_custom_scalars(custom_scalars_layout())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            pl_module.log("step", float(trainer.global_step), on_step=False, on_epoch=True, sync_dist=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.tested:
            self._summarise(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.tested:
            self._summarise(trainer, pl_module)

    def _summarise(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The row from what the trainer holds: the test's metrics, the best checkpoint's score, efficiency.json."""
        writer = _writer(trainer)
        if writer is None or self.config is None:
            return
        cb = trainer.checkpoint_callback
        best = getattr(cb, "best_model_score", None)
        net = getattr(pl_module, "net", pl_module)
        results = {"monitor": getattr(cb, "monitor", None), "best_val": float(best) if best is not None else None,
                   "test": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
                   "parameters": sum(p.numel() for p in net.parameters()), "steps": trainer.global_step}
        path = Path(writer.get_logdir()) / EFFICIENCY_FILE
        efficiency = json.loads(path.read_text()) if path.is_file() else None
        log_run_summary(writer, self.config, results, efficiency, self.tokens)


def log_interval(asked: int, steps: float, points: int = 50) -> int:
    """Every `asked` steps, or more often when the run has fewer than `asked * points` steps (at least 1)."""
    if not math.isfinite(steps):
        return asked
    return max(1, min(asked, int(steps) // points))


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def run_hparams(cfg: Dict[str, Any], results: Dict[str, Any], tokens: Optional[int]) -> Dict[str, Any]:
    """The HParams row of a run: its task, mechanism and options, recipe, data source, sizes and budget."""
    opts = cfg.get("attention_options") or {}
    row: Dict[str, Any] = {
        "model": cfg["model"], "attention": cfg["attention"],
        "attention_options": ", ".join(f"{k}={v}" for k, v in sorted(opts.items())) or "-",
        "recipe": cfg.get("recipe") or "default", "data_source": cfg.get("source_used", cfg.get("data_source")),
        "metric": results.get("monitor"), "lr_schedule": cfg.get("lr_schedule"), "precision": str(cfg.get("precision")),
        "tokens": tokens, "parameters": results.get("parameters"), "steps": results.get("steps"),
    }
    for key in HPARAM_NUMBERS:
        row.setdefault(key, cfg.get(key))
    out = {k: (str(row[k]) if row.get(k) is not None else "-") for k in HPARAM_STRINGS}
    out.update({k: _number(row.get(k)) for k in HPARAM_NUMBERS})
    return out


def run_metrics(results: Dict[str, Any], efficiency: Optional[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """The HParams metric columns: the monitored metric on the test set and its best validation value, and the
    efficiency summary (latency p50 of a training step, peak memory, throughput; efficiency.json)."""
    monitor = results.get("monitor") or ""
    test = (results.get("test") or {}).get("test/" + monitor.split("/", 1)[-1])
    eff = efficiency or {}
    values = {"test_metric": test, "best_val_metric": results.get("best_val"),
              "latency_ms_p50": eff.get("latency_ms_p50"), "peak_mem_mib": eff.get("peak_mem_mib"),
              "step_alloc_peak_mib": eff.get("step_alloc_peak_mib"), "samples_per_s": eff.get("samples_per_s")}
    return {SUMMARY + k: _number(values[k]) for k in HPARAM_METRICS}


def log_run_summary(writer, cfg: Dict[str, Any], results: Dict[str, Any], efficiency: Optional[Dict[str, Any]],
                    tokens: Optional[int] = None) -> None:
    """Write the run's HParams row and its metric values (scalars `hparams/...` at the run's last step).
    Every run declares every column, so whichever run TensorBoard reads the table's layout from, all fit."""
    step = int(results.get("steps") or 0)
    row = run_hparams(cfg, results, tokens)
    metrics = run_metrics(results, efficiency)
    for tag, value in metrics.items():
        if value is not None:
            writer.add_scalar(tag, value, step)
    layout = {**{k: "" for k in HPARAM_STRINGS}, **{k: 0.0 for k in HPARAM_NUMBERS}}  # names and types only
    experiment, _, _ = hparams(layout, {tag: 0.0 for tag in metrics})
    _, start, end = hparams({k: v for k, v in row.items() if v is not None}, {tag: 0.0 for tag in metrics})
    file_writer = writer._get_file_writer()
    for summary in (experiment, start, end):
        file_writer.add_summary(summary, step)
    writer.flush()
