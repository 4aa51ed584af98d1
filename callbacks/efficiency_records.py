"""What EfficiencyMonitor keeps of each batch, by name: `TrainRecord` and `ValRecord`, saved in checkpoints as
dicts of their fields, so that a resumed run's summary covers the whole run. A new per-batch metric is one field
here (with a default, so that checkpoints written before it still load) and the lines that compute it. Memory is
in MiB under the one name used everywhere (the callback, TensorBoard, efficiency.json, the study report)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional

MIB = 2**20


@dataclass
class TrainRecord:
    """One training batch as measured."""

    batch: int  # batches since the run began
    step: int  # the optimiser step it was logged at
    latency_ms: float
    data_wait_ms: Optional[float]  # None: not measurable (right after a mid-epoch validation)
    peak_mem_mib: float  # the step's peak, absolute
    peak_mem_growth_mib: float  # the peak above the level at the step's start
    reserved_mem_mib: Optional[float]  # CUDA only
    samples: int
    tokens: Optional[int]  # tokens or patches, None when the task has neither
    flops_fwd: int
    flops_fwd_bwd: int
    profiled: bool = False  # ran under the CPU allocator profiler (slow): left out of the latency statistics


@dataclass
class ValRecord:
    """One validation batch as measured."""

    latency_ms: float
    peak_mem_mib: float


# the positional list a TrainRecord was saved as before records were saved by name (profiled came last, optional)
_OLD_TRAIN_ORDER = ("batch", "step", "latency_ms", "wait_ms", "peak_bytes", "growth_bytes", "reserved_bytes", "samples",
                    "tokens", "flops_fwd", "flops", "profiled")


def _mib(v: Optional[float]) -> Optional[float]:
    return None if v is None else v / MIB


def _by_name(cls, entry: Dict[str, Any]):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in entry.items() if k in known})


def train_record(entry) -> TrainRecord:
    """A TrainRecord from its saved form: a dict by field name, or the older positional list (bytes, not MiB)."""
    if isinstance(entry, dict):
        return _by_name(TrainRecord, entry)
    old = dict(zip(_OLD_TRAIN_ORDER, entry))
    return TrainRecord(batch=old["batch"], step=old["step"], latency_ms=old["latency_ms"], data_wait_ms=old["wait_ms"],
                       peak_mem_mib=_mib(old["peak_bytes"]), peak_mem_growth_mib=_mib(old["growth_bytes"]),
                       reserved_mem_mib=_mib(old["reserved_bytes"]), samples=old["samples"], tokens=old["tokens"],
                       flops_fwd=old["flops_fwd"], flops_fwd_bwd=old["flops"], profiled=bool(old.get("profiled", False)))


def records_to_state(train: List[TrainRecord], val: List[ValRecord]) -> Dict[str, Any]:
    return {"train": [asdict(r) for r in train], "val": [asdict(v) for v in val]}


def records_from_state(state: Dict[str, Any]) -> tuple:
    """(train records, validation records) from a checkpoint's state, either form."""
    train = [train_record(r) for r in state.get("train", [])]
    if "val" in state:
        val = [_by_name(ValRecord, v) for v in state["val"]]
    else:  # before records were saved by name: two parallel lists, the peaks in bytes
        val = [ValRecord(ms, peak / MIB) for ms, peak in zip(state.get("val_latency", []), state.get("val_peak", []))]
    return train, val
