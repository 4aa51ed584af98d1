"""The sweep's env.json: the machine, the software, the command and the conventions every point was measured by
(threads, dtype, mode, memory methods, FLOP conventions), so that a results folder explains itself."""
from __future__ import annotations

import os
import platform
import sys
from datetime import datetime
from typing import List, Optional

import torch

from .flops import FLOP_TOLERANCE
from .machine import cpu_model, git_commit, load_average
from .memory import CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD
from .sweep_config import DTYPES, SweepConfig

FLOP_CONVENTIONS = {
    "analytic": "attn.flops(seq_len, batch, causal, backward): matmul FLOPs (2 per multiply-add), projections "
    "included, element-wise work (softmax, exp, normalisation) not counted; fwd+bwd adds the backward "
    "(input and parameter gradients, 2x the forward per matmul unless the mechanism says otherwise)",
    "counted": "torch.utils.flop_counter.FlopCounterMode over one real call (plus its backward in fwd+bwd), with "
    "formulas for the fused SDPA kernels (profiling/flops.py); model FLOPs, recomputation not charged",
    "ptflops": "ptflops aten backend, MACs not FLOPs (1 MAC ~ 2 FLOPs), forward only, blind to fused SDPA "
    "kernels: a cross-check of the projections; null in fwd+bwd mode",
    "flagged": f"counted differs from analytic by more than {FLOP_TOLERANCE:.0%}",
    "achieved_gflops": "analytic FLOPs / median time",
}


MODE_NOTES = {
    "fwd": "forward only, under torch.no_grad(), module in eval()",
    "fwd+bwd": "module in train(); each call: grads set to None, forward, out.float().sum().backward() "
    "(the input requires grad, so input gradients are computed as in a mid-network layer)",
    "decode": "incremental decoding (Attention.step), causal, under torch.no_grad(), module in eval(): seq_len is the "
    "context L, prefilled by one step call (timed once after one warm-up prefill: prefill_ms); state_bytes is the "
    "cache/state after it; then single-token steps follow one another from that state: one for the peak memory, "
    "then the warm-up and timed ones (the time per token; each step sees one position more than the last). "
    "No FLOPs in this mode. Mechanisms without decoding are unsupported points with the reason",
}


def now() -> str:
    """Local time with its offset, to the second (env.json's start_time and end_time)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def environment(cfg: SweepConfig, command: Optional[List[str]] = None) -> dict:
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "load_average_at_start": load_average(),
        "threads": cfg.threads,
        "threads_note": "torch.set_num_threads for every CPU point (flop count, memory and timing); not used on CUDA",
        "dtype": cfg.dtype,
        "dtype_note": f"module parameters and the input are both cast to {cfg.dtype} ({DTYPES[cfg.dtype]})",
        "mode": cfg.mode,
        "mode_note": MODE_NOTES[cfg.mode],
        "git_commit": git_commit(),
        "command": command if command is not None else list(sys.argv),
        "memory_methods": {"cpu": CPU_MEMORY_METHOD, "cuda": CUDA_MEMORY_METHOD},
        "flop_conventions": FLOP_CONVENTIONS,
        "config": cfg.to_dict(),
    }

