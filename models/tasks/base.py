"""What every task's LightningModule shares: the network handed in, the run's config saved as
hyperparameters, one `model_step` for train / val / test with torchmetrics per stage, AdamW with warm-up
and cosine decay, attention-map images, and what exact resumption needs in a checkpoint (the global RNG
states, the training metrics' running sums)."""
from __future__ import annotations

import math
import random
from typing import Any, Dict, List, Optional, Tuple

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

STAGES = ("train", "val", "test")


class TaskModule(L.LightningModule):
    monitor: str = "val/loss"  # the metric that picks the best checkpoint
    monitor_mode: str = "min"

    def __init__(self, net: nn.Module, config: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.net = net
        config = dict(config or {})
        self.save_hyperparameters({"config": config})
        self.lr = float(config.get("lr", 1e-3))
        self.weight_decay = float(config.get("weight_decay", 0.05))
        self.warmup = float(config.get("warmup", 0.05))  # fraction of the optimiser steps (< 1) or a step count
        self.min_lr_ratio = float(config.get("min_lr_ratio", 0.0))
        self.betas = tuple(config.get("betas", (0.9, 0.999)))
        # keyed "train_", ... : ModuleDict keys may not shadow nn.Module attributes such as `train`
        self.metrics = nn.ModuleDict({f"{stage}_": self.make_metrics().clone(prefix=f"{stage}/") for stage in STAGES})
        # the training metrics' running states travel in checkpoints: a run resumed mid-epoch reports the
        # epoch's metrics over all its batches, not only those after the resume
        self.metrics["train_"].persistent(True)
        self.train_loss = MeanMetric()  # train/loss_epoch, for the same reason (Lightning's own means are not saved)
        self.train_loss.persistent(True)
        self._map_batch: Optional[Any] = None
        self._pending_rng: Optional[Dict[str, Any]] = None

    # ---------------------------------------------------------------- to implement per task
    def make_metrics(self) -> MetricCollection:
        raise NotImplementedError

    def compute(self, batch: Any) -> Tuple[Tensor, Dict[str, Any], int]:
        """batch -> (loss, metric update arguments as a dict of tensors, number of samples)."""
        raise NotImplementedError

    def map_inputs(self, batch: Any) -> Tuple:
        """The network inputs of one sample of a batch (for attention maps and the ptflops cross-check)."""
        raise NotImplementedError

    def batch_counts(self, batch: Any) -> Dict[str, int]:
        """How much work a batch is, for the throughput the efficiency callbacks log: {"samples": n} plus
        "tokens" (text: positions processed, padding included) or "patches" (images through a transformer)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared step
    def forward(self, *inputs):
        return self.net(*inputs)

    def model_step(self, batch: Any, stage: str) -> Tensor:
        loss, update, n = self.compute(batch)
        self.metrics[f"{stage}_"].update(**update)
        if stage == "train":
            self.train_loss.update(loss.detach(), n)
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        else:
            self.log(f"{stage}/loss", loss.detach(), on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self.model_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0 and self._map_batch is None:
            self._map_batch = batch  # the fixed batch whose attention maps are logged each epoch
        return self.model_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self.model_step(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> None:
        values = self.metrics[f"{stage}_"].compute()
        self.log_dict(values, prog_bar=stage != "train", sync_dist=False)  # torchmetrics already synced states
        self.metrics[f"{stage}_"].reset()

    def on_train_epoch_end(self):
        self.log("train/loss_epoch", self.train_loss.compute(), sync_dist=False)  # torchmetrics synced it
        self.train_loss.reset()
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self):
        self._log_epoch_metrics("val")
        if not self.trainer.sanity_checking:
            self.log_media()

    def on_test_epoch_end(self):
        self._log_epoch_metrics("test")

    # ---------------------------------------------------------------- media
    def log_media(self) -> None:
        """Images / text for TensorBoard at the end of each validation epoch (rank 0 only)."""
        if self._map_batch is not None and getattr(self.net, "has_attention_maps", False):
            maps = self.net.attention_maps(*self.map_inputs(self._map_batch))
            attention = (self.hparams.get("config") or {}).get("attention") or "attention"
            title = f"{attention}: the first validation input, step {self.global_step}"
            self.log_image("val/attention_maps", attention_figure(maps, title=title))

    def tensorboard(self):
        """The TensorBoard SummaryWriter on rank 0, None elsewhere or without a TensorBoard logger."""
        if self.trainer is None or not self.trainer.is_global_zero:
            return None
        for logger in self.trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_image"):
                return exp
        return None

    def log_image(self, tag: str, image: Tensor) -> None:
        """image: (C, H, W) in [0, 1]."""
        tb = self.tensorboard()
        if tb is not None:
            tb.add_image(tag, image.detach().float().clamp(0, 1).cpu(), self.global_step)

    def log_text(self, tag: str, text: str) -> None:
        tb = self.tensorboard()
        if tb is not None:
            tb.add_text(tag, text, self.global_step)

    # ---------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            # biases, norm weights, position tables and special tokens are not decayed
            (no_decay if p.dim() < 2 or name.endswith(("pos", "cls_token")) else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup * total) if self.warmup < 1 else int(self.warmup)
        schedule = SCHEDULES[self.hparams.config.get("lr_schedule", "cosine")]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(warmup, total, self.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------- exact resumption
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # plain tensors and numbers, so checkpoints load with torch.load(weights_only=True)
            "numpy": numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self._pending_rng = checkpoint.get("rng_states")
        # checkpoints written before the training metrics were saved load with fresh (empty) ones
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            for key, value in self.state_dict().items():
                if key.startswith(("metrics.train_.", "train_loss.")) and key not in state:
                    state[key] = value

    def on_train_start(self) -> None:
        # restored here, after the sanity check, so nothing between restore and the first batch draws from them
        if self._pending_rng:
            s = self._pending_rng
            torch.set_rng_state(s["torch"])
            if s.get("cuda") and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(s["cuda"])
            np.random.set_state(numpy_state_from_plain(s["numpy"]))
            random.setstate(s["python"])
            self._pending_rng = None
        self._apply_config_to_restored_optimizer()

    def _apply_config_to_restored_optimizer(self) -> None:
        """A resumed run restores the optimiser and scheduler as they were, peak learning rate and weight
        decay included; a run resumed with another --lr or --weight-decay (after a NaN, say) means the new one."""
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler  # configure_optimizers' LambdaLR
            if list(sched.base_lrs) != [self.lr] * len(sched.base_lrs):
                sched.base_lrs = [self.lr] * len(sched.base_lrs)
                lrs = [base * f(sched.last_epoch) for base, f in zip(sched.base_lrs, sched.lr_lambdas)]
                for group, lr in zip(sched.optimizer.param_groups, lrs):  # the schedule where it stands
                    group["lr"] = lr
                sched._last_lr = lrs
        for optimizer in self.trainer.optimizers:
            optimizer.param_groups[0]["weight_decay"] = self.weight_decay  # the decayed group comes first


def numpy_state_to_plain(state) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def numpy_state_from_plain(state) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


def warmup_linear(warmup: int, total: int, min_ratio: float = 0.0):
    """LR multiplier: linear from 1/warmup to 1 over `warmup` steps, then linear to `min_ratio` at `total` (the
    PyTorch LRA reproductions' schedule)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1 - (1 - min_ratio) * progress
    return f


def warmup_rsqrt(warmup: int, total: int, min_ratio: float = 0.0):
    """LR multiplier of the LRA paper's text tasks ("constant * linear_warmup * rsqrt_decay"): linear warm-up,
    then 1 / sqrt(step), both scaled by 1 / sqrt(warmup) as theirs are, so `lr` means what their configs mean
    (their 0.05 peaks at 0.05 / sqrt(warmup)). `total` and `min_ratio` do not apply."""
    def f(step: int) -> float:
        return min(1.0, (step + 1) / max(1, warmup)) / math.sqrt(max(step + 1, warmup, 1))
    return f


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0):
    """LR multiplier: linear from 1/warmup to 1 over `warmup` steps, then cosine to `min_ratio` at `total`."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


SCHEDULES = {"cosine": warmup_cosine, "linear": warmup_linear, "rsqrt": warmup_rsqrt}


def attention_scale(arrays) -> Tuple[str, float, float, str]:
    """One colour scale for a figure of attention matrices (numpy arrays): (colour map, vmin, vmax, colour-bar
    label). Weights that are distributions start at 0 (viridis, 0 to the largest weight); where any weight is
    negative (diff's difference of two maps, Nystrom's approximation) a diverging map centred on 0 (-m to m, m the
    largest magnitude), said in the label."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    finite = [a[np.isfinite(a)] for a in arrays]
    lo = min((float(a.min()) for a in finite if a.size), default=0.0)
    hi = max((float(np.abs(a).max()) for a in finite if a.size), default=0.0) or 1.0
    if lo < 0:
        return "RdBu_r", -hi, hi, "attention weight (signed, 0 = white)"
    return "viridis", 0.0, hi, "attention weight"


def attention_figure(maps: List[Tensor], sample: int = 0, max_heads: int = 8, max_layers: int = 6,
                     title: Optional[str] = None, panel_in: float = 2.2, dpi: int = 100) -> Tensor:
    """One sample's attention matrices as a labelled figure, returned as a (3, H, W) float image in [0, 1]: a
    panel per (layer, head), up to max_layers x max_heads, titled "layer i, head j", rows the query positions
    and columns the key positions, every panel on one colour scale (attention_scale) with one colour bar, so
    that brightness compares across layers and heads. matplotlib is imported here, with the Agg backend: only
    runs that log images need it."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    tiles = [w[sample, :max_heads].detach().float().cpu().numpy() for w in maps[:max_layers]]  # (h, n, n) each
    layers, heads = len(tiles), max(t.shape[0] for t in tiles)
    cmap, vmin, vmax, label = attention_scale(tiles)
    fig, axes = plt.subplots(layers, heads, figsize=(panel_in * heads + 1.2, panel_in * layers + 0.6 + (0.3 if title else 0)),
                             squeeze=False, dpi=dpi, constrained_layout=True)
    im = None
    for i, t in enumerate(tiles):
        for j in range(heads):
            ax = axes[i][j]
            if j >= t.shape[0]:
                ax.axis("off")
                continue
            im = ax.imshow(t[j], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(f"layer {i + 1}, head {j + 1}", fontsize=9)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("query position", fontsize=8)
            if i == layers - 1:
                ax.set_xlabel("key position", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8, label=label)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255.0  # (3, H, W)
