"""Causal language modelling: token cross-entropy, perplexity, and text samples logged while training."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from models.tasks.base import TaskModule


class Perplexity(Metric):
    """exp(total token NLL / tokens), summed over the epoch (and across processes)."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll_sum: Tensor, tokens: Tensor) -> None:
        self.nll += nll_sum.double()
        self.tokens += tokens

    def compute(self) -> Tensor:
        return torch.exp(self.nll / self.tokens.clamp_min(1))


class LanguageModelModule(TaskModule):
    """Batches (input_ids (B, n), targets (B, n)[, index]). After each validation epoch a sample continuing
    `config["sample_prompt"]` is logged as text (`val/sample`), through `codec` (the data's tokenizer: anything
    with `encode(text) -> ids`, `decode(ids) -> text` and `eos_id`; without one, no sample)."""

    monitor, monitor_mode = "val/ppl", "min"

    def __init__(self, net, config=None, codec: Optional[Any] = None):
        super().__init__(net, config)
        self.codec = codec

    def make_metrics(self) -> MetricCollection:
        return MetricCollection({"ppl": Perplexity(), "bits_per_token": BitsPerToken()})

    def map_inputs(self, batch: Any) -> Tuple:
        return (batch[0][:1],)

    def batch_counts(self, batch: Any) -> Dict[str, int]:
        return {"samples": int(batch[0].shape[0]), "tokens": int(batch[0].numel())}

    def compute(self, batch: Any) -> Tuple[Tensor, Dict[str, Any], int]:
        ids, targets = batch[0], batch[1]
        logits = self.net(ids)  # (B, n, V)
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
        tokens = targets.numel()
        loss = nll / tokens
        return loss, {"nll_sum": nll.detach(), "tokens": torch.tensor(tokens, device=nll.device)}, ids.shape[0]

    def log_media(self) -> None:
        super().log_media()
        text = self.sample_text()
        if text is not None:
            self.log_text("val/sample", text)

    def sample_text(self) -> Optional[str]:
        codec = self.codec
        if codec is None or not self.trainer.is_global_zero:
            return None
        cfg = self.hparams.config
        prompt = cfg.get("sample_prompt") or "The"
        ids = torch.tensor([codec.encode(prompt) or [codec.eos_id]], device=self.device)
        g = torch.Generator(device=self.device).manual_seed(0)  # its own generator: training draws are untouched
        out = self.net.generate(ids, int(cfg.get("sample_tokens", 40)), temperature=float(cfg.get("temperature", 0.8)),
                                top_k=cfg.get("top_k", 40), generator=g)
        return f"**{prompt}** {codec.decode(out[0, ids.shape[1]:].tolist())}"


class BitsPerToken(Perplexity):
    def compute(self) -> Tensor:
        return self.nll / self.tokens.clamp_min(1) / torch.log(torch.tensor(2.0, dtype=torch.float64))
