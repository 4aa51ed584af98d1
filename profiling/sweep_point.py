"""One point of the sweep (attention x device x seq_len at the run's batch, width, dtype, mode): a fresh module
on its device, then FLOPs (analytic, counted, ptflops MACs), peak memory and time, under the per-point budget
(in the decoding mode: prefill, state size, one step's peak memory and the time per token, sweep_decode.py).
`run_point` never raises for the point's own failure: it is the point's status (ok, oom, timeout, unsupported,
error) with a one-line reason."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Optional

import torch

from models.attention import build_attention, get_attention

from .budget import Budget
from .errors import is_oom, one_line
from .flops import counted_flops, flop_report, ptflops_macs
from .machine import device_name
from .memory import free_memory, measure_peak_memory
from .results import point_key
from .sweep_config import DTYPES, SweepConfig, decode_steps, resolved_options, run_causal, target_seconds
from .sweep_decode import measure_decode, no_decoding_reason
from .timing import Clock, TimeBudgetExceeded


@dataclass
class PointSpec:
    attention: str
    device: str
    seq_len: int

    def key(self, cfg: SweepConfig) -> str:
        return point_key(self.attention, self.device, self.seq_len, cfg.batch, cfg.dim, cfg.heads, cfg.dtype, cfg.mode, run_causal(cfg))


class Unsupported(Exception):
    """The mechanism declares it cannot run this point (causal, decoding, too long, refused at construction)."""


def _base_point(spec: PointSpec, cfg: SweepConfig, options: dict) -> dict:
    return {
        "key": spec.key(cfg),
        "attention": spec.attention,
        "device": spec.device,
        "device_name": device_name(spec.device),
        "seq_len": spec.seq_len,
        "batch": cfg.batch,
        "dim": cfg.dim,
        "heads": cfg.heads,
        "dtype": cfg.dtype,
        "mode": cfg.mode,
        "causal": run_causal(cfg),
        "options": options,
        "status": None,
        "reason": None,
        "time": None,
        "memory": None,
        "flops": None,
        "achieved_gflops": None,
        "decode": None,  # the decoding mode's figures (sweep_decode.measure_decode)
        "elapsed_s": None,
    }


def _build(spec: PointSpec, cfg: SweepConfig, options: dict):
    """The module, on its device and dtype, in train() for fwd+bwd; Unsupported when it cannot run the point."""
    cls = get_attention(spec.attention)
    if cfg.mode == "decode" and not cls.supports_decoding:
        raise Unsupported(no_decoding_reason(cls))
    if cfg.causal and not cls.supports_causal:
        raise Unsupported(f"attention '{spec.attention}' cannot be causal: {cls.not_causal_reason}")
    torch.manual_seed(0)
    try:
        attn = build_attention(spec.attention, cfg.dim, cfg.heads, causal=run_causal(cfg), **options)
    except ValueError as e:
        raise Unsupported(str(e).splitlines()[0]) from None
    limit, extra = attn.max_seq_len, decode_steps(cfg)
    if limit is not None and spec.seq_len + extra > limit:
        hint = f"; raise it with --opt {spec.attention}.max_seq_len=N" if "max_seq_len" in options else ""
        length = f"context {spec.seq_len} plus {extra} decoding steps" if extra else f"sequence length {spec.seq_len}"
        raise Unsupported(f"{length} exceeds max_seq_len={limit} of attention '{spec.attention}'{hint}")
    return attn.to(device=torch.device(spec.device), dtype=DTYPES[cfg.dtype]).train(cfg.mode == "fwd+bwd")


def _measure(point: dict, spec: PointSpec, cfg: SweepConfig, attn, x, budget: Budget) -> None:
    """FLOPs, memory and time of one point into `point`, stage by stage under `budget`."""
    dev = x.device
    backward = cfg.mode == "fwd+bwd"
    if backward:

        def forward():  # with autograd, for counted_flops(backward=True)
            return attn(x)

        def call():
            attn.zero_grad(set_to_none=True)
            x.grad = None
            out = attn(x)
            out.float().sum().backward()
            return out

    else:

        def forward():
            with torch.no_grad():
                return attn(x)

        call = forward

    with budget.in_stage("FLOP counting"):
        analytic = int(attn.flops(spec.seq_len, cfg.batch, cfg.causal, backward=backward))
        counted = int(counted_flops(forward, backward=backward))
        if backward:
            attn.zero_grad(set_to_none=True)
            x.grad = None
    macs = None
    if not backward:
        # on a copy: ptflops leaves forward hooks on the modules it counts (they would be timed).
        # Shielded: ptflops catches every exception itself (and prints it), a budget one included.
        with budget.in_stage("ptflops MAC count", shielded=True), torch.no_grad():
            try:
                macs = ptflops_macs(copy.deepcopy(attn), lambda: x)
            except Exception:  # noqa: BLE001 - a cross-check only: its failure does not fail the point
                macs = None
    with budget.in_stage("FLOP report"):
        report = flop_report(analytic, counted, macs)
        if backward:
            report.note = "; ".join(filter(None, [report.note, "ptflops not run: it counts the forward pass only"]))
        point["flops"] = report.to_dict()
    with budget.in_stage("peak-memory measurement", shielded=True):
        point["memory"] = measure_peak_memory(call, attn, dev).to_dict()
    with budget.in_stage("timing"):
        stats = budget.timed(call, warmup=cfg.warmup, runs=cfg.runs, device=dev, threads=cfg.threads if dev.type == "cpu" else None,
                             target_seconds=target_seconds(cfg))
        point["time"] = stats.to_dict()
    if stats.median_ms > 0:
        point["achieved_gflops"] = analytic / (stats.median_ms / 1e3) / 1e9


def run_point(spec: PointSpec, cfg: SweepConfig, clock: Optional[Clock] = None) -> dict:
    """Build, count, measure one point. `clock`: the budget's (None: the real clock, with the interval timer)."""
    options = resolved_options(spec.attention, cfg)
    point = _base_point(spec, cfg, options)
    now = clock or time.perf_counter
    t0 = now()
    dev = torch.device(spec.device)
    prev_threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(cfg.threads)
    attn = x = None
    try:
        attn = _build(spec, cfg, options)
        if cfg.mode == "decode":
            with Budget(cfg.max_seconds, clock) as budget:
                measure_decode(point, cfg, attn, budget)
        else:
            x = torch.randn(cfg.batch, spec.seq_len, cfg.dim, device=dev).to(DTYPES[cfg.dtype]).requires_grad_(cfg.mode == "fwd+bwd")
            with Budget(cfg.max_seconds, clock) as budget:
                _measure(point, spec, cfg, attn, x, budget)
        point["status"] = "ok"
    except Unsupported as e:
        point.update(status="unsupported", reason=str(e))
    except TimeBudgetExceeded as e:
        point.update(status="timeout", reason=str(e))
    except Exception as e:  # noqa: BLE001 - the sweep records every failure and goes on
        if is_oom(e):
            point.update(status="oom", reason=f"out of memory: {one_line(e)}")
        else:
            point.update(status="error", reason=one_line(e))
    finally:
        del attn, x
        if dev.type == "cpu":
            torch.set_num_threads(prev_threads)
        free_memory()
    if point["status"] != "ok":  # partial measurements of an unfinished point are not results
        point.update(time=None, achieved_gflops=None)
    point["elapsed_s"] = round(now() - t0, 3)
    return point
