"""Inpainting: loss on the hole (plus `outside_weight` x the loss outside it), PSNR and SSIM of the composite
(known pixels kept, the hole from the network) on [0, 1] images, and masked / predicted / target grids."""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from models.tasks.base import TaskModule

LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


class InpaintingModule(TaskModule):
    """Batches (masked_image, mask (1 = hole), target) in the data's normalised space; the data's per-channel
    `mean` and `std` map them back to [0, 1] for the metrics and images."""

    monitor, monitor_mode = "val/psnr", "max"

    def __init__(self, net, config=None, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
        super().__init__(net, config)
        cfg = self.hparams.config
        self.loss_name = cfg.get("loss", "l1")
        if self.loss_name not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss_name!r}")
        self.outside_weight = float(cfg.get("outside_weight", 0.1))
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have one value per channel, got {len(mean)} and {len(std)}")
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1), persistent=False)

    def make_metrics(self) -> MetricCollection:
        return MetricCollection({"psnr": PeakSignalNoiseRatio(data_range=1.0),
                                 "ssim": StructuralSimilarityIndexMeasure(data_range=1.0)})

    def map_inputs(self, batch: Any) -> Tuple:
        return (batch[0][:1], batch[1][:1])

    def batch_counts(self, batch: Any) -> Dict[str, int]:
        n = int(batch[0].shape[0])
        patches = getattr(self.net, "seq_len", None)  # the transformer inpainter; the U-Net has no tokens
        return {"samples": n, "patches": n * patches} if patches else {"samples": n}

    def to_unit(self, x: Tensor) -> Tensor:
        """Normalised -> [0, 1] pixels."""
        return (x.float() * self.std + self.mean).clamp(0, 1)

    def compute(self, batch: Any) -> Tuple[Tensor, Dict[str, Any], int]:
        masked, mask, target = batch[0], batch[1], batch[2]
        pred = self.net(masked, mask).float()  # (B, c, H, W)
        per_pixel = LOSSES[self.loss_name](pred, target, reduction="none").mean(dim=1, keepdim=True)  # (B, 1, H, W)
        hole = (per_pixel * mask).sum() / mask.sum().clamp_min(1)
        outside = (per_pixel * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1)
        loss = hole + self.outside_weight * outside
        composite = masked * (1 - mask) + pred.detach() * mask
        return loss, {"preds": self.to_unit(composite), "target": self.to_unit(target)}, target.shape[0]

    def log_media(self) -> None:
        super().log_media()
        if self._map_batch is None or self.tensorboard() is None:
            return
        masked, mask, target = (t[:8] for t in self._map_batch[:3])
        with torch.no_grad():
            pred = self.net(masked, mask).float()
        composite = masked * (1 - mask) + pred * mask
        shown_masked = self.to_unit(masked) * (1 - mask) + mask * torch.tensor([1.0, 0.0, 1.0], device=mask.device).view(1, 3, 1, 1)[:, : masked.shape[1]]
        rows = [shown_masked, self.to_unit(composite), self.to_unit(target)]  # masked (hole in magenta) / predicted / target
        self.log_image("val/inpainting", image_rows(rows))


def image_rows(rows, pad: int = 2) -> Tensor:
    """A list of (B, c, H, W) batches in [0, 1] -> one (c, H', W') image, a row per batch."""
    B, c, H, W = rows[0].shape
    out = torch.ones(c, len(rows) * (H + pad) + pad, B * (W + pad) + pad)
    for i, row in enumerate(rows):
        for j in range(B):
            top, left = pad + i * (H + pad), pad + j * (W + pad)
            out[:, top : top + H, left : left + W] = row[j].detach().cpu()
    return out
