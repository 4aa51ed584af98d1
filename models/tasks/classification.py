"""Classification: ViT on images (top-1 / top-5 accuracy) and the text classifier (accuracy, F1)."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from models.tasks.base import TaskModule


class ClassificationModule(TaskModule):
    """Cross-entropy with optional label smoothing (`config["label_smoothing"]`) over `num_classes` classes
    (the data's). Subclasses say how a batch splits into network inputs and labels."""

    monitor, monitor_mode = "val/acc", "max"

    def __init__(self, net, config=None, num_classes: int = 2):
        self.num_classes = int(num_classes)  # before the base class builds the metrics, which need it
        super().__init__(net, config)

    def make_metrics(self) -> MetricCollection:
        return MetricCollection({"acc": MulticlassAccuracy(self.num_classes, average="micro")})

    def split(self, batch: Any) -> Tuple[Tuple, Tensor]:
        raise NotImplementedError

    def map_inputs(self, batch: Any) -> Tuple:
        inputs, _ = self.split(batch)
        return tuple(x[:1] for x in inputs)

    def compute(self, batch: Any) -> Tuple[Tensor, Dict[str, Any], int]:
        inputs, labels = self.split(batch)
        logits = self.net(*inputs)  # (B, classes)
        smoothing = float(self.hparams.config.get("label_smoothing", 0.0)) if self.training else 0.0
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        return loss, {"preds": logits.detach(), "target": labels}, labels.shape[0]


class ImageClassificationModule(ClassificationModule):
    """Batches (images (B, c, H, W), labels (B,)[, index]); top-1 and top-5 accuracy."""

    def make_metrics(self) -> MetricCollection:
        k = min(5, self.num_classes)
        return MetricCollection({"acc": MulticlassAccuracy(self.num_classes, average="micro"),
                                 f"top{k}_acc": MulticlassAccuracy(self.num_classes, top_k=k, average="micro")})

    def split(self, batch):
        return (batch[0],), batch[1]

    def batch_counts(self, batch) -> Dict[str, int]:
        n = int(batch[1].shape[0])
        grid = getattr(self.net, "grid", None)  # a ViT: grid x grid patches per image
        return {"samples": n, "patches": n * grid * grid} if grid else {"samples": n}


class TextClassificationModule(ClassificationModule):
    """Batches {input_ids (B, n), mask (B, n) bool, labels (B,)}; accuracy and macro F1."""

    def make_metrics(self) -> MetricCollection:
        return MetricCollection({"acc": MulticlassAccuracy(self.num_classes, average="micro"),
                                 "f1": MulticlassF1Score(self.num_classes, average="macro")})

    def split(self, batch):
        return (batch["input_ids"], batch["mask"]), batch["labels"]

    def batch_counts(self, batch) -> Dict[str, int]:
        ids = batch["input_ids"]
        return {"samples": int(ids.shape[0]), "tokens": int(ids.numel())}
