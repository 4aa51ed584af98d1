"""One point of the sweep's decoding mode (--mode decode): what generating a token costs after a context of L
positions (the point's seq_len), through the incremental-decoding interface (`Attention.step`):

    python profile.py --mode decode --attentions softmax,linear,retention --seq-lens 256,1024,4096

On a fresh causal module in eval() under no_grad: one `step` over L random positions (the prefill, timed once
after one untimed warm-up prefill), the state's bytes right after it (`state_bytes`: the KV cache or recurrent
state a context of L costs), the allocator peak of one single-token step, then single-token steps timed as the
sweep times any call (warm-up, --runs runs, each on its own). The steps follow one another from that state, so
each one sees one position more than the last: token i is timed at context L + 1 + warmup + i. A mechanism that
declares no decoding (supports_decoding False) is a point with status "unsupported" and the reason.
"""
from __future__ import annotations

from typing import Optional, Type

import torch

from models.attention import Attention

from .budget import Budget
from .memory import measure_peak_memory
from .sweep_config import DTYPES, SweepConfig, decode_steps, target_seconds


def no_decoding_reason(cls: Type[Attention]) -> Optional[str]:
    """Why `cls` cannot be swept in the decoding mode (Attention.step's refusal), or None."""
    return cls.decoding_refusal()


def measure_decode(point: dict, cfg: SweepConfig, attn: Attention, budget: Budget) -> None:
    """Prefill, state size, one step's peak memory and the per-token step time of one point into `point`
    (its "decode" entry, "memory" and "time"), stage by stage under `budget`."""
    dev = next(attn.parameters()).device
    dtype = DTYPES[cfg.dtype]
    L, steps = point["seq_len"], decode_steps(cfg)
    threads = cfg.threads if dev.type == "cpu" else None
    x = torch.randn(cfg.batch, L, cfg.dim, device=dev).to(dtype)  # the context
    tokens = torch.randn(cfg.batch, steps, cfg.dim, device=dev).to(dtype)  # one new position per step
    held = {"state": None, "next": 0}

    def prefill():
        held["state"] = None  # the previous prefill's state goes before the next one is built
        held["state"] = attn.step(x, None)[1]

    def step():
        i = held["next"]
        held["next"] = i + 1
        held["state"] = attn.step(tokens[:, i : i + 1], held["state"])[1]

    with torch.no_grad():
        with budget.in_stage("prefill"):
            prefill_stats = budget.timed(prefill, warmup=min(cfg.warmup, 1), runs=1, device=dev, threads=threads)
        state_bytes = int(attn.state_bytes(held["state"]))
        point["decode"] = {
            "decoding_state": attn.decoding_state,
            "state_bytes": state_bytes,  # after the prefill: exactly L positions seen
            "prefill": prefill_stats.to_dict(),
            "steps": steps,
        }
        with budget.in_stage("peak-memory measurement", shielded=True):
            point["memory"] = measure_peak_memory(step, attn, dev).to_dict()
        with budget.in_stage("timing"):
            point["time"] = budget.timed(step, warmup=cfg.warmup, runs=cfg.runs, device=dev, threads=threads,
                                         target_seconds=target_seconds(cfg)).to_dict()
        point["decode"]["state_bytes_after_steps"] = int(attn.state_bytes(held["state"]))  # L + steps positions
