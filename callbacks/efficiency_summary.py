"""EfficiencyMonitor's figures from its records: the TensorBoard scalars of a batch and of an epoch, the measured
half of efficiency.json, and the console table. Pure functions of the records (no Lightning here). Per-batch tags
are `efficiency/train_` + the record's field name, so a quantity has one name in the record, in TensorBoard and
in efficiency.json."""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Optional

from profiling import summarize_times

from .efficiency_records import TrainRecord, ValRecord

TAG = "efficiency/"
LOGGED_FIELDS = ("latency_ms", "data_wait_ms", "peak_mem_mib", "peak_mem_growth_mib", "reserved_mem_mib")  # as they are


def _rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def latency_tags(prefix: str, latencies_ms: List[float]) -> Dict[str, float]:
    """`prefix`_p50/_p95/_p99/_mean by profiling's statistics (one percentile method everywhere)."""
    s = summarize_times(latencies_ms)
    return {f"{prefix}_p50": s.median_ms, f"{prefix}_p95": s.p95_ms, f"{prefix}_p99": s.p99_ms, f"{prefix}_mean": s.mean_ms}


def step_scalars(r: TrainRecord, world: int, unit: Optional[str], peak_tflops: Optional[float]) -> Dict[str, float]:
    """One training batch's scalars; throughput is rank 0's rate times the world size (DDP ranks step in lockstep)."""
    m = {f"{TAG}train_{name}": getattr(r, name) for name in LOGGED_FIELDS if getattr(r, name) is not None}
    span_s = (r.latency_ms + (r.data_wait_ms or 0.0)) / 1e3
    m[f"{TAG}train_samples_per_s"] = _rate(world * r.samples, span_s)
    if unit and r.tokens is not None:
        m[f"{TAG}train_{unit}_per_s"] = _rate(world * r.tokens, span_s)
    if r.flops_fwd_bwd:
        tflops = r.flops_fwd_bwd / (r.latency_ms / 1e3) / 1e12
        m.update({f"{TAG}train_gflop_per_step": r.flops_fwd_bwd / 1e9,
                  f"{TAG}train_gflop_per_sample": r.flops_fwd_bwd / 1e9 / max(1, r.samples),
                  f"{TAG}train_tflop_per_s": tflops})
        if peak_tflops:
            m[f"{TAG}train_mfu_pct"] = 100.0 * tflops / peak_tflops
    return m


def train_epoch_scalars(epoch: List[TrainRecord], world: int) -> Dict[str, float]:
    m = latency_tags(f"{TAG}train_latency_ms", [r.latency_ms for r in epoch])
    waits = [r.data_wait_ms for r in epoch if r.data_wait_ms is not None]
    if waits:
        m[f"{TAG}train_data_wait_ms_mean"] = statistics.fmean(waits)
    m[f"{TAG}train_peak_mem_mib_max"] = max(r.peak_mem_mib for r in epoch)
    span_s = sum(r.latency_ms + (r.data_wait_ms or 0.0) for r in epoch) / 1e3
    m[f"{TAG}train_samples_per_s_epoch"] = _rate(world * sum(r.samples for r in epoch), span_s)
    return m


def val_epoch_scalars(epoch: List[ValRecord]) -> Dict[str, float]:
    m = latency_tags(f"{TAG}val_latency_ms", [v.latency_ms for v in epoch])
    m[f"{TAG}val_peak_mem_mib_max"] = max(v.peak_mem_mib for v in epoch)
    return m


def steady(records: List[TrainRecord], warmup_batches: int) -> List[TrainRecord]:
    """The records the statistics use: without the first `warmup_batches` and the profiled ones, unless nothing
    else was measured."""
    later = records[warmup_batches:] if len(records) > warmup_batches else records
    return [r for r in later if not r.profiled] or later


def measured(records: List[TrainRecord], val: List[ValRecord], *, warmup_batches: int, world: int,
             unit: Optional[str], flop_shapes: int, ptflops_macs_per_sample: Optional[int],
             step_alloc_peak_mib: Optional[float], step_alloc_method: str, peak_tflops: Optional[float],
             mfu_note: str) -> Dict[str, Any]:
    """The measured half of efficiency.json. Pooled over ranks: latency and data wait percentiles over every
    rank's batches, peak memory the maximum, throughput the sum, TFLOP/s and MFU the mean per device."""
    out: Dict[str, Any] = {}
    if records:
        steady_records = steady(records, warmup_batches)
        total_samples = sum(r.samples for r in records)
        out.update({
            "flops_per_sample_fwd": sum(r.flops_fwd for r in records) / total_samples if total_samples else None,
            "flops_per_sample_fwd_bwd": sum(r.flops_fwd_bwd for r in records) / total_samples if total_samples else None,
            "flop_shapes_counted": flop_shapes,
            "ptflops_macs_per_sample_fwd": ptflops_macs_per_sample,
        })
        lat = summarize_times([r.latency_ms for r in steady_records])
        out.update({"latency_ms_p50": lat.median_ms, "latency_ms_p95": lat.p95_ms, "latency_ms_p99": lat.p99_ms,
                    "latency_ms_mean": lat.mean_ms, "latency_ms_std": lat.std_ms})
        waits = [r.data_wait_ms for r in steady_records if r.data_wait_ms is not None]
        if waits:
            w = summarize_times(waits)
            busy = sum(r.latency_ms for r in steady_records if r.data_wait_ms is not None)
            out.update({"data_wait_ms_mean": w.mean_ms, "data_wait_ms_p95": w.p95_ms,
                        "data_wait_fraction": sum(waits) / (sum(waits) + busy)})
        out["peak_mem_mib"] = max(r.peak_mem_mib for r in records)
        out["peak_mem_growth_mib"] = max(r.peak_mem_growth_mib for r in records)
        reserved = [r.reserved_mem_mib for r in records if r.reserved_mem_mib is not None]
        out["reserved_mem_mib"] = max(reserved) if reserved else None
        out["step_alloc_peak_mib"] = step_alloc_peak_mib
        out["step_alloc_method"] = step_alloc_method
        span_s = sum(r.latency_ms + (r.data_wait_ms or 0.0) for r in steady_records) / 1e3 / world  # ranks ran side by side
        busy_s = sum(r.latency_ms for r in steady_records) / 1e3 / world
        out["samples_per_s"] = sum(r.samples for r in steady_records) / span_s if span_s > 0 else None
        out["token_unit"] = unit
        out[f"{unit or 'tokens'}_per_s"] = (sum(r.tokens or 0 for r in steady_records) / span_s if unit and span_s > 0 else None)
        flops = sum(r.flops_fwd_bwd for r in steady_records) / world
        out["tflop_per_s"] = flops / busy_s / 1e12 if busy_s > 0 and flops else None  # per device
        out["peak_tflop_per_s"] = peak_tflops
        out["mfu_pct"] = 100.0 * out["tflop_per_s"] / peak_tflops if peak_tflops and out["tflop_per_s"] else None
        out["mfu_note"] = mfu_note
    if val:
        v = summarize_times([x.latency_ms for x in val])
        out.update({"val_latency_ms_p50": v.median_ms, "val_latency_ms_p95": v.p95_ms, "val_latency_ms_mean": v.mean_ms,
                    "val_peak_mem_mib": max(x.peak_mem_mib for x in val)})
    return out


def _fmt(value, spec: str, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{spec}}{unit}"


def format_table(s: Dict[str, Any]) -> str:
    """The console table printed when fitting ends, from an efficiency.json dict."""
    unit = s.get("token_unit")
    rows = [
        ("parameters", _fmt(s.get("parameters"), ",")),
        ("FLOPs per sample (fwd / fwd+bwd)", f"{_fmt((s.get('flops_per_sample_fwd') or 0) / 1e9, '.4g')} / "
                                             f"{_fmt((s.get('flops_per_sample_fwd_bwd') or 0) / 1e9, '.4g')} GFLOP"),
        ("latency p50 / p95", f"{_fmt(s.get('latency_ms_p50'), '.1f')} / {_fmt(s.get('latency_ms_p95'), '.1f')} ms"),
        ("data wait (mean, share)", f"{_fmt(s.get('data_wait_ms_mean'), '.1f', ' ms')}, {_fmt(s.get('data_wait_fraction'), '.1%')}"),
        ("peak memory (process / step's tensors)", f"{_fmt(s.get('peak_mem_mib'), ',.0f', ' MiB')} / "
                                                   f"{_fmt(s.get('step_alloc_peak_mib'), ',.1f', ' MiB')}"),
        ("throughput", f"{_fmt(s.get('samples_per_s'), ',.1f')} samples/s"
                       + (f", {_fmt(s.get(f'{unit}_per_s'), ',.0f')} {unit}/s" if unit else "")),
        ("achieved", f"{_fmt(s.get('tflop_per_s'), '.3g', ' TFLOP/s')}"
                     + (f", MFU {_fmt(s.get('mfu_pct'), '.1f', '%')}" if s.get("mfu_pct") is not None else "")),
        (f"best {s.get('best_val_metric') or 'validation metric'}", _fmt(s.get("best_val"), ".4f")),
        ("wall time", _fmt(s.get("wall_time_s"), ",.1f", " s")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"efficiency ({s.get('device_name')}, {s.get('precision')}, {s.get('world_size')} process(es))"]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    if s.get("mfu_note"):
        lines.append(f"  {s['mfu_note']}")
    return "\n".join(lines)
