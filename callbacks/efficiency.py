"""What each training step cost: latency, data wait, peak memory, FLOPs, throughput, TFLOP/s and MFU,
in TensorBoard while training and in `efficiency.json` (plus a console table) when fitting ends.

    trainer = L.Trainer(callbacks=[EfficiencyMonitor(run_info={"model": "vit", "attention": "softmax"})])

Every measurement comes from `profiling/` (one timer, one memory meter, one FLOP counter in the code base):

- latency_ms: a training batch from `on_train_batch_start` to `on_train_batch_end` (forward, backward,
  optimiser step), by `StepTimer`: CUDA events on GPU, resolved without synchronising each step;
  the monitor's clock (time.perf_counter unless one is handed in) after a device synchronisation
  elsewhere. Data wait and wall time are read on the same clock. Validation batches are timed the
  same way; the sanity check is skipped.
- data_wait_ms: from the end of the previous training batch (or the epoch's start) to the start of
  this one: fetching the batch from the loader, moving it to the device and the loop's own
  bookkeeping. A batch right after a mid-epoch validation run has no figure (validation and
  checkpointing would be in it).
- peak_mem_mib: the peak during the step by `StepMemory` (CUDA: the allocator's max_memory_allocated
  since a reset at the step's start, memory_reserved alongside; CPU: the process's resident-set
  high-water mark, reset at the step's start), absolute; peak_mem_growth_mib is the peak above the
  level at the step's start. The method is written into efficiency.json and TensorBoard.
- step_alloc_peak_mib: the tensor memory a training step allocates above the level at its start, by the
  allocator itself (the figure profile.py reports): on CUDA the maximum of the step peaks above; on CPU
  the profiler method of profiling/memory.py, held over the first batch of each new largest shape (the
  profiler is too slow for every step; such a step is left out of the latency statistics). Unlike the
  process figure on CPU, it does not depend on what the process did before (another run in a study).
- FLOPs: counted on the live training step by `FlopTally` (FlopCounterMode with the fused-attention
  formulas of profiling/flops.py) the first time each distinct batch shape arrives: forward (read at
  `on_before_backward`) and forward + backward; later batches of that shape reuse the count, so the
  counter's dispatch cost is paid once per shape. A compiled network runs eagerly for its counted
  step (the counter cannot see inside compiled kernels). ptflops' MACs per sample (forward, first
  shape) are recorded alongside as a cross-check.
- throughput: samples/s and tokens/s (patches/s for images) over latency + data wait;
  tflop_per_s = FLOPs / latency; mfu_pct = tflop_per_s / the device's peak for the run's matmul
  precision (profiling/peaks.py). An unknown device gets no MFU and one note saying so.

The LightningModule may say how much work a batch is: `batch_counts(batch) -> {"samples": n,
"tokens": m}` (or "patches"); without it a batch counts the leading dimension of its first tensor as
samples. With `net` and `map_inputs(batch)` (one sample's network inputs) it also gets the ptflops
cross-check.

TensorBoard tags, all under `efficiency/`: per training batch, every `log_every_n_steps`:
train_latency_ms, train_data_wait_ms, train_peak_mem_mib, train_peak_mem_growth_mib,
train_reserved_mem_mib (CUDA), train_samples_per_s, train_<unit>_per_s, train_gflop_per_step,
train_gflop_per_sample, train_tflop_per_s, train_mfu_pct (known GPU); per epoch:
train_latency_ms_{p50,p95,p99,mean}, train_data_wait_ms_mean, train_peak_mem_mib_max,
train_samples_per_s_epoch, val_latency_ms_{p50,p95,p99,mean}, val_peak_mem_mib_max; and a text
`efficiency/methods` naming the clock, the memory method, the FLOP counter and the MFU note.

Distributed runs: every process measures its own batches. The per-batch scalars are rank 0's (only
rank 0 writes TensorBoard), with throughput scaled to the whole job (world size x rank 0's rate,
since DDP ranks step in lockstep). efficiency.json aggregates all ranks on purpose: latency and data
wait percentiles over every rank's batches, peak memory the maximum over ranks, throughput the sum
over ranks, TFLOP/s and MFU the mean per device.

Statistics leave out the first `warmup_batches` training batches of the fit (lazy initialisation,
allocator growth, compilation) unless nothing else was measured. The callback's state (every
batch's record, the FLOP counts, the wall time so far) is saved in checkpoints, so the summary of a
resumed run covers the whole run.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils._pytree import tree_leaves

from profiling import Clock, FlopTally, StepMemory, StepTimer, matmul_dtype, mfu_note, peak_tflops, ptflops_macs, summarize_times
from profiling.memory import CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD, CPUAllocatorPeak
from profiling.machine import device_name

MIB = 2**20
FLOP_COUNTER = "torch.utils.flop_counter.FlopCounterMode + fused-attention formulas (profiling/flops.py), once per batch shape"
EFFICIENCY_FILE = "efficiency.json"



class TrainRecord(NamedTuple):
    """One training batch as measured."""
    batch: int  # batches since the run began
    step: int  # the optimiser step it was logged at
    latency_ms: float
    wait_ms: Optional[float]  # None: not measurable (right after a mid-epoch validation)
    peak_bytes: int
    growth_bytes: int
    reserved_bytes: Optional[int]  # CUDA only
    samples: int
    tokens: Optional[int]  # tokens or patches, None when the task has neither
    flops_fwd: int
    flops: int  # forward + backward
    profiled: bool = False  # ran under the CPU allocator profiler (slow): left out of the latency statistics


def batch_tensors(batch: Any) -> List[torch.Tensor]:
    return [t for t in tree_leaves(batch) if isinstance(t, torch.Tensor)]


def batch_signature(tensors: List[torch.Tensor]) -> str:
    """Shapes and dtypes of every tensor in a batch: FLOPs are counted once per signature."""
    return ";".join(f"{tuple(t.shape)}:{t.dtype}" for t in tensors)


def default_counts(batch: Any) -> Dict[str, int]:
    for t in tree_leaves(batch):
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return {"samples": int(t.shape[0])}
    return {"samples": 1}


def percentiles(xs: List[float], prefix: str) -> Dict[str, float]:
    s = summarize_times(xs)
    return {f"{prefix}_p50": s.median_ms, f"{prefix}_p95": s.p95_ms, f"{prefix}_p99": s.p99_ms, f"{prefix}_mean": s.mean_ms}


class _EagerForCounting:
    """Runs modules compiled in place (nn.Module.compile) eagerly while their FLOPs are counted."""

    def __init__(self, module: torch.nn.Module):
        self.saved = [(m, m._compiled_call_impl) for m in module.modules() if getattr(m, "_compiled_call_impl", None) is not None]
        for m, _ in self.saved:
            m._compiled_call_impl = None

    def restore(self) -> None:
        for m, impl in self.saved:
            m._compiled_call_impl = impl
        self.saved = []


class EfficiencyMonitor(Callback):
    def __init__(self, run_info: Optional[Dict[str, Any]] = None, warmup_batches: int = 2, print_table: bool = True,
                 clock: Clock = time.perf_counter):
        """`clock`: seconds, for latency off CUDA, data wait and wall time; tests hand in a fake one that
        advances by known amounts, so they check the arithmetic exactly whatever the machine's speed."""
        if warmup_batches < 0:
            raise ValueError(f"warmup_batches must be >= 0, got {warmup_batches}")
        self._clock = clock
        self.run_info = dict(run_info or {})
        self.warmup_batches = warmup_batches
        self.print_table = print_table
        # saved in checkpoints
        self.train: List[TrainRecord] = []
        self.val_latency: List[float] = []
        self.val_peak: List[int] = []
        self.flops: Dict[str, Tuple[int, int]] = {}  # signature -> (forward, forward + backward)
        self.ptflops_macs_per_sample: Optional[int] = None
        self.wall_before_s = 0.0  # fit time of earlier (resumed-from) sessions
        self.step_alloc_peak_bytes: Optional[int] = None  # tensor memory a step allocates above its start (max)
        self._alloc_numel = 0  # elements of the largest batch measured by the allocator profiler so far
        # this session
        self.timer: Optional[StepTimer] = None
        self.memory: Optional[StepMemory] = None
        self.tally = FlopTally()
        self.alloc: Optional[CPUAllocatorPeak] = None
        self._eager: Optional[_EagerForCounting] = None
        self._counting: Optional[str] = None
        self._fwd: Optional[int] = None
        self._open: Dict[Any, dict] = {}
        self._current: Dict[str, Any] = {}
        self._unit: Optional[str] = None
        self._val_n = 0
        self._wait_from: Optional[float] = None
        self._batch = 0
        self._epoch_start = 0
        self._val_start = 0
        self._fit_start: Optional[float] = None  # None until the fit starts (a clock may read 0.0)
        self._device_name = ""
        self._dtype: Optional[str] = None
        self._peak: Optional[float] = None
        self.note = ""

    # ------------------------------------------------------------------ set-up
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dev = trainer.strategy.root_device
        self.timer, self.memory = StepTimer(dev, clock=self._clock), StepMemory(dev)
        self.alloc = CPUAllocatorPeak() if dev.type == "cpu" else None
        self._device_name = device_name(dev)
        self._dtype = matmul_dtype(trainer.precision)
        self._peak = peak_tflops(self._device_name, self._dtype) if dev.type == "cuda" else None
        self.note = mfu_note(self._device_name, self._dtype) if self._peak is None else ""
        self._fit_start = self._clock()
        self._batch = len(self.train)
        methods = (f"latency clock: {self.timer.clock}; memory: {self.memory.method}; FLOPs: {FLOP_COUNTER}; "
                   f"MFU: {self.note or f'against {self._peak} TFLOP/s ({self._dtype}, {self._device_name})'}")
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                exp = getattr(logger, "experiment", None)
                if hasattr(exp, "add_text"):
                    exp.add_text("efficiency/methods", methods, trainer.global_step)

    # ------------------------------------------------------------------ training batches
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._wait_from = self._clock()
        self._epoch_start = len(self.train)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = self._clock()
        wait = (now - self._wait_from) * 1e3 if self._wait_from is not None else None
        tensors = batch_tensors(batch)
        sig = batch_signature(tensors)
        if sig not in self.flops and not self.tally.active:
            self._eager = _EagerForCounting(pl_module)
            self._counting, self._fwd = sig, None
            self.tally.start()
        counts = pl_module.batch_counts(batch) if hasattr(pl_module, "batch_counts") else default_counts(batch)
        self._current = {"batch": self._batch, "step": trainer.global_step, "wait": wait, "sig": sig, "counts": counts,
                         "profiled": False}
        numel = sum(t.numel() for t in tensors)
        if self.alloc is not None and numel > self._alloc_numel and not self.alloc.active:
            self._alloc_numel = numel  # each new largest batch once: the tensor memory of a step, as profile.py reads it
            self._current["profiled"] = True
            self.alloc.start()
        self.memory.start()
        self.timer.start()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self._counting is not None and self._fwd is None:
            self._fwd = self.tally.so_far()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tag = ("train", self._batch)
        self.timer.stop(tag)
        mem = self.memory.stop()
        if self.alloc is not None and self.alloc.active:
            self.step_alloc_peak_bytes = max(self.step_alloc_peak_bytes or 0, self.alloc.stop())
        elif self.alloc is None:  # CUDA: the allocator's own peak above the step's start, every step
            self.step_alloc_peak_bytes = max(self.step_alloc_peak_bytes or 0, mem.growth_bytes)
        if self._counting is not None:
            total = self._stop_counting()
            self.flops[self._counting] = (self._fwd if self._fwd is not None else total, total)
            if self.ptflops_macs_per_sample is None:
                self.ptflops_macs_per_sample = self._ptflops(pl_module, batch)
            self._counting = None
        rec = self._current
        rec.update(peak=mem.peak_bytes, growth=mem.growth_bytes, reserved=mem.reserved_bytes)
        self._open[tag] = rec
        self._batch += 1
        self._drain(trainer)
        self._wait_from = self._clock()

    def _stop_counting(self) -> int:
        total = self.tally.stop()
        if self._eager is not None:
            self._eager.restore()
            self._eager = None
        return total

    def _ptflops(self, pl_module, batch) -> Optional[int]:
        net = getattr(pl_module, "net", None)
        if net is None or not hasattr(pl_module, "map_inputs"):
            return None
        was_training = net.training
        eager = _EagerForCounting(net)
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                macs = ptflops_macs(net, lambda: tuple(pl_module.map_inputs(batch)))
        finally:
            net.train(was_training)  # ptflops leaves the model in eval mode
            eager.restore()
        return macs

    def _drain(self, trainer, flush: bool = False) -> None:
        """Complete the records whose times are known (all of them when `flush`) and log them."""
        for tag, ms in (self.timer.flush() if flush else self.timer.ready()):
            rec = self._open.pop(tag, None)
            if rec is None:
                continue
            if tag[0] == "val":
                self.val_latency.append(ms)
                self.val_peak.append(rec["peak"])
                continue
            counts = rec["counts"]
            samples = int(counts.get("samples", 0))
            unit = next((k for k in counts if k != "samples"), None)
            fwd, flops = self.flops.get(rec["sig"], (0, 0))
            self.train.append(TrainRecord(rec["batch"], rec["step"], ms, rec["wait"], rec["peak"], rec["growth"], rec["reserved"],
                                          samples, int(counts[unit]) if unit else None, fwd, flops, rec["profiled"]))
            self._unit = unit
            every = max(1, int(trainer.log_every_n_steps or 1))
            if rec["batch"] % every == 0:
                self._log(trainer, self._step_metrics(self.train[-1], trainer.world_size, unit), rec["step"])

    def _step_metrics(self, r: TrainRecord, world: int, unit: Optional[str]) -> Dict[str, float]:
        ms, wait, peak, growth, reserved, samples, tokens, flops = (r.latency_ms, r.wait_ms, r.peak_bytes, r.growth_bytes,
                                                                     r.reserved_bytes, r.samples, r.tokens, r.flops)
        span_s = (ms + (wait or 0.0)) / 1e3
        m = {"efficiency/train_latency_ms": ms, "efficiency/train_peak_mem_mib": peak / MIB,
             "efficiency/train_peak_mem_growth_mib": growth / MIB,
             "efficiency/train_samples_per_s": world * samples / span_s if span_s > 0 else math.nan}
        if wait is not None:
            m["efficiency/train_data_wait_ms"] = wait
        if reserved is not None:
            m["efficiency/train_reserved_mem_mib"] = reserved / MIB
        if unit and tokens is not None:
            m[f"efficiency/train_{unit}_per_s"] = world * tokens / span_s if span_s > 0 else math.nan
        if flops:
            tflops = flops / (ms / 1e3) / 1e12
            m.update({"efficiency/train_gflop_per_step": flops / 1e9, "efficiency/train_gflop_per_sample": flops / 1e9 / max(1, samples),
                      "efficiency/train_tflop_per_s": tflops})
            if self._peak:
                m["efficiency/train_mfu_pct"] = 100.0 * tflops / self._peak
        return m

    @staticmethod
    def _log(trainer, metrics: Dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close_open_meters()  # a batch whose end hook never ran (the module's on_train_batch_start returned -1)
        self._drain(trainer, flush=True)
        epoch = self.train[self._epoch_start:]
        if epoch:
            metrics = percentiles([r.latency_ms for r in epoch], "efficiency/train_latency_ms")
            waits = [r.wait_ms for r in epoch if r.wait_ms is not None]
            if waits:
                metrics["efficiency/train_data_wait_ms_mean"] = statistics.fmean(waits)
            metrics["efficiency/train_peak_mem_mib_max"] = max(r.peak_bytes for r in epoch) / MIB
            span_s = sum(r.latency_ms + (r.wait_ms or 0.0) for r in epoch) / 1e3
            metrics["efficiency/train_samples_per_s_epoch"] = trainer.world_size * sum(r.samples for r in epoch) / span_s
            self._log(trainer, metrics, trainer.global_step)
        self.write_summary(trainer, pl_module)

    # ------------------------------------------------------------------ validation batches
    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._wait_from = None  # the next training batch's wait would include validation
            self._val_start = len(self.val_latency)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or self.timer is None:
            return
        self.memory.start()
        self.timer.start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or self.timer is None:
            return
        tag = ("val", self._val_n)
        self._val_n += 1
        self.timer.stop(tag)
        self._open[tag] = {"peak": self.memory.stop().peak_bytes}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.timer is None:
            return
        self._drain(trainer, flush=True)
        lat = self.val_latency[self._val_start:]
        if lat:
            metrics = percentiles(lat, "efficiency/val_latency_ms")
            metrics["efficiency/val_peak_mem_mib_max"] = max(self.val_peak[self._val_start:]) / MIB
            self._log(trainer, metrics, trainer.global_step)

    # ------------------------------------------------------------------ failures and the end
    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close_open_meters()

    def _close_open_meters(self) -> None:
        if self.tally.active:
            self._stop_counting()
        if self.alloc is not None and self.alloc.active:
            self.alloc.stop()
        self._counting = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._drain(trainer, flush=True)
        summary = self.write_summary(trainer, pl_module)
        if summary is not None and self.print_table and trainer.is_global_zero:
            print(format_table(summary))

    # ------------------------------------------------------------------ summary
    def summary(self, trainer, pl_module, records: List[TrainRecord], val_latency: List[float], peaks: List[int]) -> Dict[str, Any]:
        later = records[self.warmup_batches:] if len(records) > self.warmup_batches else records
        steady = [r for r in later if not r.profiled] or later
        world = trainer.world_size
        cb = trainer.checkpoint_callback
        best = getattr(cb, "best_model_score", None)
        unit = self._unit
        params = sum(p.numel() for p in pl_module.parameters())
        out: Dict[str, Any] = {
            **self.run_info,
            "device": str(trainer.strategy.root_device), "device_name": self._device_name,
            "precision": str(trainer.precision), "matmul_dtype": self._dtype, "world_size": world,
            "parameters": params, "trainable_parameters": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
            "best_val_metric": getattr(cb, "monitor", None), "best_val": float(best) if best is not None else None,
            "wall_time_s": round(self.wall_before_s + self._clock() - self._fit_start, 3),
            "epochs": trainer.current_epoch, "steps": trainer.global_step,
            "train_batches_measured": len(records), "warmup_batches_excluded": len(records) - len(steady),
            "val_batches_measured": len(val_latency),
            "latency_clock": self.timer.clock if self.timer else None,
            "memory_method": self.memory.method if self.memory else None, "flop_counter": FLOP_COUNTER,
            "aggregation": ("per-rank batches pooled for latency and data wait; peak memory: max over ranks; "
                            "throughput: sum over ranks; TFLOP/s and MFU: mean per device") if world > 1 else "single process",
        }
        if records:
            total_samples = sum(r.samples for r in records)
            out.update({
                "flops_per_sample_fwd": sum(r.flops_fwd for r in records) / total_samples if total_samples else None,
                "flops_per_sample_fwd_bwd": sum(r.flops for r in records) / total_samples if total_samples else None,
                "flop_shapes_counted": len(self.flops),
                "ptflops_macs_per_sample_fwd": self.ptflops_macs_per_sample,
            })
            lat = summarize_times([r.latency_ms for r in steady])
            out.update({"latency_ms_p50": lat.median_ms, "latency_ms_p95": lat.p95_ms, "latency_ms_p99": lat.p99_ms,
                        "latency_ms_mean": lat.mean_ms, "latency_ms_std": lat.std_ms})
            waits = [r.wait_ms for r in steady if r.wait_ms is not None]
            if waits:
                w = summarize_times(waits)
                busy = sum(r.latency_ms for r in steady if r.wait_ms is not None)
                out.update({"data_wait_ms_mean": w.mean_ms, "data_wait_ms_p95": w.p95_ms,
                            "data_wait_fraction": sum(waits) / (sum(waits) + busy)})
            out["peak_mem_mib"] = max(r.peak_bytes for r in records) / MIB
            out["peak_mem_growth_mib"] = max(r.growth_bytes for r in records) / MIB
            reserved = [r.reserved_bytes for r in records if r.reserved_bytes is not None]
            out["reserved_mem_mib"] = max(reserved) / MIB if reserved else None
            out["step_alloc_peak_mib"] = self.step_alloc_peak_bytes / MIB if self.step_alloc_peak_bytes is not None else None
            out["step_alloc_method"] = (CUDA_MEMORY_METHOD if self.alloc is None else
                                        CPU_MEMORY_METHOD + "; on the first batch of each new largest shape")
            span_s = sum(r.latency_ms + (r.wait_ms or 0.0) for r in steady) / 1e3 / world  # pooled ranks ran side by side
            busy_s = sum(r.latency_ms for r in steady) / 1e3 / world
            out["samples_per_s"] = sum(r.samples for r in steady) / span_s if span_s > 0 else None
            out["token_unit"] = unit
            out[f"{unit or 'tokens'}_per_s"] = (sum(r.tokens or 0 for r in steady) / span_s if unit and span_s > 0 else None)
            flops = sum(r.flops for r in steady) / world
            out["tflop_per_s"] = flops / busy_s / 1e12 if busy_s > 0 and flops else None  # per device
            out["peak_tflop_per_s"] = self._peak
            out["mfu_pct"] = 100.0 * out["tflop_per_s"] / self._peak if self._peak and out["tflop_per_s"] else None
            out["mfu_note"] = self.note
        if val_latency:
            v = summarize_times(val_latency)
            out.update({"val_latency_ms_p50": v.median_ms, "val_latency_ms_p95": v.p95_ms, "val_latency_ms_mean": v.mean_ms,
                        "val_peak_mem_mib": max(peaks) / MIB})
        return out

    def write_summary(self, trainer, pl_module) -> Optional[Dict[str, Any]]:
        """Gather every rank's records, summarise, write efficiency.json in the run folder (rank 0)."""
        if self.timer is None:
            return None
        records, val_latency, peaks = self.train, self.val_latency, self.val_peak
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: List[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, (self.train, self.val_latency, self.val_peak))
            records = [r for g in gathered for r in g[0]]
            val_latency = [x for g in gathered for x in g[1]]
            peaks = [x for g in gathered for x in g[2]]
        log_dir = trainer.log_dir if trainer.loggers else None  # a broadcast under DDP: every rank asks
        if not trainer.is_global_zero:
            return None
        summary = self.summary(trainer, pl_module, records, val_latency, peaks)
        if log_dir:
            write_json(Path(log_dir) / EFFICIENCY_FILE, summary)
        return summary

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        wall = self.wall_before_s + (self._clock() - self._fit_start if self._fit_start is not None else 0.0)
        return {"train": [list(r) for r in self.train], "val_latency": list(self.val_latency), "val_peak": list(self.val_peak),
                "flops": {k: list(v) for k, v in self.flops.items()}, "ptflops_macs_per_sample": self.ptflops_macs_per_sample,
                "wall_s": wall, "unit": self._unit, "step_alloc_peak_bytes": self.step_alloc_peak_bytes,
                "alloc_numel": self._alloc_numel}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.train = [TrainRecord(*r) for r in state.get("train", [])]
        self.val_latency = list(state.get("val_latency", []))
        self.val_peak = list(state.get("val_peak", []))
        self.flops = {k: tuple(v) for k, v in state.get("flops", {}).items()}
        self.ptflops_macs_per_sample = state.get("ptflops_macs_per_sample")
        self.wall_before_s = float(state.get("wall_s", 0.0))
        self._unit = state.get("unit")
        self.step_alloc_peak_bytes = state.get("step_alloc_peak_bytes")
        self._alloc_numel = int(state.get("alloc_numel", 0))


def write_json(path: Path, obj: Dict[str, Any]) -> None:
    """Atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _fmt(value, spec: str, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{spec}}{unit}"


def format_table(s: Dict[str, Any]) -> str:
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
