"""EfficiencyMonitor: what each training step cost (latency, data wait, peak memory, FLOPs, throughput, TFLOP/s,
MFU), in TensorBoard under `efficiency/` while training and in `efficiency.json` plus a console table when fitting
ends. Every figure comes from profiling/ (one timer, one memory meter, one FLOP counter); the records are in
efficiency_records.py, the figures made of them in efficiency_summary.py; README "What each step cost" says how
each is measured.

    trainer = L.Trainer(callbacks=[EfficiencyMonitor(run_info={"model": "vit", "attention": "softmax"})])
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils._pytree import tree_leaves

from profiling import Clock, FlopTally, StepMemory, StepTimer, matmul_dtype, mfu_note, peak_tflops, ptflops_macs
from profiling.machine import device_name
from profiling.memory import CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD, CPUAllocatorPeak
from utils.io import write_json

from .efficiency_records import MIB, TrainRecord, ValRecord, records_from_state, records_to_state
from .efficiency_summary import format_table, measured, steady, step_scalars, train_epoch_scalars, val_epoch_scalars

FLOP_COUNTER = "torch.utils.flop_counter.FlopCounterMode + fused-attention formulas (profiling/flops.py), once per batch shape"
EFFICIENCY_FILE = "efficiency.json"


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


# c10's CPU allocator says this (once per 1,000) when a block allocated before the allocator profiler started is
# freed while it runs: in a training step that is always so (the last step's gradients, the batch before), and
# the peak it measures does not depend on it (profiling/memory.py: allocations above the level at the start)
ALLOCATOR_NOTE = "Memory block of unknown size was allocated before the profiling started"


class _HoldNativeNote:
    """While the allocator profiler is open over a training step, holds what is written to fd 2 (where c10 logs)
    in a temporary file, then writes it all back except ALLOCATOR_NOTE: nothing else written meanwhile is lost."""

    def __init__(self):
        self._saved: Optional[int] = None
        self._held = None

    def start(self) -> None:
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
        except (OSError, ValueError):  # no fd 2 (an embedding host): nothing to hold
            self._saved = None
            return
        self._held = tempfile.TemporaryFile()
        os.dup2(self._held.fileno(), 2)

    def stop(self) -> None:
        if self._saved is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None
        self._held.seek(0)
        text = self._held.read().decode("utf-8", errors="replace")
        self._held.close()
        kept = "".join(line for line in text.splitlines(keepends=True) if ALLOCATOR_NOTE not in line)
        if kept:
            sys.stderr.write(kept)
            sys.stderr.flush()


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
    """Measures every training and validation batch (not the sanity check). Statistics leave out the first
    `warmup_batches` of the fit. Under DDP every process measures its own batches; TensorBoard gets rank 0's and
    efficiency.json pools the ranks. Its records travel in checkpoints."""

    def __init__(self, run_info: Optional[Dict[str, Any]] = None, warmup_batches: int = 2, print_table: bool = True,
                 clock: Clock = time.perf_counter, hold_allocator_note: bool = True):
        """`clock`: seconds, for latency off CUDA, data wait and wall time; tests hand in a ManualClock.
        `hold_allocator_note`: keep c10's ALLOCATOR_NOTE off the console (train.py --verbose shows it)."""
        if warmup_batches < 0:
            raise ValueError(f"warmup_batches must be >= 0, got {warmup_batches}")
        self._clock = clock
        self.run_info = dict(run_info or {})
        self.warmup_batches = warmup_batches
        self.print_table = print_table
        # saved in checkpoints
        self.train: List[TrainRecord] = []
        self.val: List[ValRecord] = []
        self.flops: Dict[str, Tuple[int, int]] = {}  # signature -> (forward, forward + backward)
        self.ptflops_macs_per_sample: Optional[int] = None
        self.wall_before_s = 0.0  # fit time of earlier (resumed-from) sessions
        self.step_alloc_peak_mib: Optional[float] = None  # tensor memory a step allocates above its start (max)
        self._alloc_numel = 0  # elements of the largest batch measured by the allocator profiler so far
        # this session
        self.timer: Optional[StepTimer] = None
        self.memory: Optional[StepMemory] = None
        self.tally = FlopTally()
        self.alloc: Optional[CPUAllocatorPeak] = None
        self._note = _HoldNativeNote() if hold_allocator_note else None
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
        self._current = {"batch": self._batch, "step": trainer.global_step, "data_wait_ms": wait, "sig": sig,
                         "counts": counts, "profiled": False}
        numel = sum(t.numel() for t in tensors)
        if self.alloc is not None and numel > self._alloc_numel and not self.alloc.active:
            self._alloc_numel = numel  # each new largest batch once: the tensor memory of a step, as profile.py reads it
            self._current["profiled"] = True
            if self._note is not None:
                self._note.start()
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
            self.step_alloc_peak_mib = max(self.step_alloc_peak_mib or 0.0, self._stop_alloc() / MIB)
        elif self.alloc is None:  # CUDA: the allocator's own peak above the step's start, every step
            self.step_alloc_peak_mib = max(self.step_alloc_peak_mib or 0.0, mem.growth_bytes / MIB)
        if self._counting is not None:
            total = self._stop_counting()
            self.flops[self._counting] = (self._fwd if self._fwd is not None else total, total)
            if self.ptflops_macs_per_sample is None:
                self.ptflops_macs_per_sample = self._ptflops(pl_module, batch)
            self._counting = None
        rec = self._current
        rec.update(peak_mem_mib=mem.peak_bytes / MIB, peak_mem_growth_mib=mem.growth_bytes / MIB,
                   reserved_mem_mib=None if mem.reserved_bytes is None else mem.reserved_bytes / MIB)
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
                self.val.append(ValRecord(latency_ms=ms, peak_mem_mib=rec["peak_mem_mib"]))
                continue
            counts = rec["counts"]
            unit = next((k for k in counts if k != "samples"), None)
            fwd, fwd_bwd = self.flops.get(rec["sig"], (0, 0))
            self.train.append(TrainRecord(
                batch=rec["batch"], step=rec["step"], latency_ms=ms, data_wait_ms=rec["data_wait_ms"],
                peak_mem_mib=rec["peak_mem_mib"], peak_mem_growth_mib=rec["peak_mem_growth_mib"],
                reserved_mem_mib=rec["reserved_mem_mib"], samples=int(counts.get("samples", 0)),
                tokens=int(counts[unit]) if unit else None, flops_fwd=fwd, flops_fwd_bwd=fwd_bwd, profiled=rec["profiled"]))
            self._unit = unit
            every = max(1, int(trainer.log_every_n_steps or 1))
            if (rec["step"] + 1) % every == 0:  # the steps Lightning logs train/loss_step at (should_update_logs)
                self._log(trainer, step_scalars(self.train[-1], trainer.world_size, unit, self._peak), rec["step"])

    @staticmethod
    def _log(trainer, metrics: Dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close_open_meters()  # a batch whose end hook never ran (the module's on_train_batch_start returned -1)
        self._drain(trainer, flush=True)
        epoch = self.train[self._epoch_start:]
        if epoch:
            self._log(trainer, train_epoch_scalars(epoch, trainer.world_size), trainer.global_step)
        self.write_summary(trainer, pl_module)

    # ------------------------------------------------------------------ validation batches
    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._wait_from = None  # the next training batch's wait would include validation
            self._val_start = len(self.val)

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
        self._open[tag] = {"peak_mem_mib": self.memory.stop().peak_bytes / MIB}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.timer is None:
            return
        self._drain(trainer, flush=True)
        epoch = self.val[self._val_start:]
        if epoch:
            self._log(trainer, val_epoch_scalars(epoch), trainer.global_step)

    # ------------------------------------------------------------------ failures and the end
    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close_open_meters()

    def _close_open_meters(self) -> None:
        if self.tally.active:
            self._stop_counting()
        if self.alloc is not None and self.alloc.active:
            self._stop_alloc()
        self._counting = None

    def _stop_alloc(self) -> int:
        try:
            return self.alloc.stop()
        finally:
            if self._note is not None:
                self._note.stop()

    def on_train_end(self, trainer, pl_module) -> None:
        self._drain(trainer, flush=True)
        summary = self.write_summary(trainer, pl_module)
        if summary is not None and self.print_table and trainer.is_global_zero:
            print(format_table(summary))

    # ------------------------------------------------------------------ summary
    def summary(self, trainer, pl_module, records: List[TrainRecord], val: List[ValRecord]) -> Dict[str, Any]:
        """efficiency.json: the run (who, where, how measured), then what was measured (efficiency_summary)."""
        world = trainer.world_size
        cb = trainer.checkpoint_callback
        best = getattr(cb, "best_model_score", None)
        head: Dict[str, Any] = {
            **self.run_info,
            "device": str(trainer.strategy.root_device), "device_name": self._device_name,
            "precision": str(trainer.precision), "matmul_dtype": self._dtype, "world_size": world,
            "parameters": sum(p.numel() for p in pl_module.parameters()),
            "trainable_parameters": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
            "best_val_metric": getattr(cb, "monitor", None), "best_val": float(best) if best is not None else None,
            "wall_time_s": round(self.wall_before_s + self._clock() - self._fit_start, 3),
            "epochs": trainer.current_epoch, "steps": trainer.global_step,
            "train_batches_measured": len(records),
            "warmup_batches_excluded": len(records) - len(steady(records, self.warmup_batches)),
            "val_batches_measured": len(val),
            "latency_clock": self.timer.clock if self.timer else None,
            "memory_method": self.memory.method if self.memory else None, "flop_counter": FLOP_COUNTER,
            "aggregation": ("per-rank batches pooled for latency and data wait; peak memory: max over ranks; "
                            "throughput: sum over ranks; TFLOP/s and MFU: mean per device") if world > 1 else "single process",
        }
        alloc_method = (CUDA_MEMORY_METHOD if self.alloc is None else
                        CPU_MEMORY_METHOD + "; on the first batch of each new largest shape")
        return {**head, **measured(records, val, warmup_batches=self.warmup_batches, world=world, unit=self._unit,
                                   flop_shapes=len(self.flops), ptflops_macs_per_sample=self.ptflops_macs_per_sample,
                                   step_alloc_peak_mib=self.step_alloc_peak_mib, step_alloc_method=alloc_method,
                                   peak_tflops=self._peak, mfu_note=self.note)}

    def write_summary(self, trainer, pl_module) -> Optional[Dict[str, Any]]:
        """Gather every rank's records, summarise, write efficiency.json in the run folder (rank 0)."""
        if self.timer is None:
            return None
        records, val = self.train, self.val
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: List[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, records_to_state(self.train, self.val))
            records, val = [], []
            for state in gathered:
                train_i, val_i = records_from_state(state)
                records += train_i
                val += val_i
        log_dir = trainer.log_dir if trainer.loggers else None  # a broadcast under DDP: every rank asks
        if not trainer.is_global_zero:
            return None
        summary = self.summary(trainer, pl_module, records, val)
        if log_dir:
            write_json(Path(log_dir) / EFFICIENCY_FILE, summary)
        return summary

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """The records by field name (efficiency_records.py), the FLOP counts and the wall time so far."""
        wall = self.wall_before_s + (self._clock() - self._fit_start if self._fit_start is not None else 0.0)
        return {**records_to_state(self.train, self.val), "flops": {k: list(v) for k, v in self.flops.items()},
                "ptflops_macs_per_sample": self.ptflops_macs_per_sample, "wall_s": wall, "unit": self._unit,
                "step_alloc_peak_mib": self.step_alloc_peak_mib, "alloc_numel": self._alloc_numel}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Either form: records by name, or the positional lists of checkpoints written before."""
        self.train, self.val = records_from_state(state)
        self.flops = {k: tuple(v) for k, v in state.get("flops", {}).items()}
        self.ptflops_macs_per_sample = state.get("ptflops_macs_per_sample")
        self.wall_before_s = float(state.get("wall_s", 0.0))
        self._unit = state.get("unit")
        old_bytes = state.get("step_alloc_peak_bytes")
        self.step_alloc_peak_mib = state.get("step_alloc_peak_mib", None if old_bytes is None else old_bytes / MIB)
        self._alloc_numel = int(state.get("alloc_numel", 0))
