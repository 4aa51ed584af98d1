"""The sequence-length sweep: what does each attention cost as the sequence grows?

    cfg = validate(SweepConfig(attentions=["softmax", "linformer"], devices=["cpu"], seq_lens=[128, 1024]))
    points = run_sweep(cfg, Path("results/my-sweep"))

A point is attention x device x seq_len, at the batch / dim / heads / dtype / mode / causal of the
run. Each point builds a fresh module on its device, then measures, in this order: FLOPs (analytic,
counted, ptflops MACs), peak memory, time. Every point, whatever its status, is appended to
results.jsonl at once (one line, flushed and fsynced), so a killed sweep loses nothing and
`resume=True` skips the points already finished. At the end: results.csv (flat, profiling.results
schema), env.json (machine, software, conventions; also written at the start) and summary.md
(profiling.report).

Statuses: ok | oom | timeout (over the per-point budget) | unsupported (the mechanism declares it
cannot: causal, a length above its max_seq_len, a ValueError at construction) | error (anything
else; retried on resume).
"""
from __future__ import annotations

import ast
import cmath
import contextlib
import copy
import gc
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

from models.attention import attention_options, build_attention, get_attention, list_attentions

from .machine import cpu_model, device_name
from .flops import FLOP_TOLERANCE, counted_flops, flop_report, ptflops_macs
from .memory import CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD, measure_peak_memory
from .results import CSV_COLUMNS, FINISHED, flatten, latest_by_key, point_key, read_points
from .timing import Clock, TimeBudgetExceeded, time_fn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fwd", "fwd+bwd")
DEVICE_ALIASES = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}
RESERVED_OPTIONS = ("causal",)  # set by the run (--causal), not per mechanism

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


MAX_NUMEL = 2**63 - 1  # torch indexes elements with int64
MAX_RUNS = 1_000_000  # per point; on CUDA every timed run holds an event pair from the start


class ConfigError(ValueError):
    """A bad sweep request; the message is one sentence saying what was wrong and what is expected."""


# ---------------------------------------------------------------------------------------------- config


@dataclass
class SweepConfig:
    attentions: List[str]
    devices: List[str]  # canonical: "cpu" | "cuda"
    seq_lens: List[int]
    dim: int = 512
    heads: int = 8
    batch: int = 1
    dtype: str = "fp32"
    mode: str = "fwd"
    causal: bool = False
    runs: int = 10
    warmup: int = 3
    max_seconds: float = 120.0
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    options: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # as the user gave them, per attention

    def to_dict(self) -> dict:
        return asdict(self)


def _items(flag: str, text: str, expected: str) -> List[str]:
    """The items of a comma-separated flag; an empty list or an empty item (10,,100 or a trailing
    comma) is refused rather than dropped: it is more often a typo than a wish."""
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise ConfigError(f"{flag} is empty; expected {expected}")
    if "" in items:
        raise ConfigError(f"{flag} {text!r} has an empty item; expected {expected}, with no empty item between commas")
    return items


def _once(flag: str, text: str, values: List[Any], items: List[str]) -> None:
    """Refuse a value named twice (after canonicalising: 10 and 010, gpu and cuda)."""
    first: Dict[Any, str] = {}
    for value, item in zip(values, items):
        if value in first:
            alias = f" ({first[value]} and {item} are the same)" if first[value] != item else ""
            raise ConfigError(f"{flag} {text!r} names {value} twice{alias}; expected each once")
        first[value] = item


def parse_seq_lens(text: str) -> List[int]:
    expected = "a comma-separated list of positive integers such as 128,1024"
    items = _items("--seq-lens", text, expected)
    lens = []
    for t in items:
        try:
            n = int(t)
        except ValueError:
            raise ConfigError(f"--seq-lens {text!r} has {t!r}, which is not an integer; expected {expected}") from None
        if n <= 0:
            raise ConfigError(f"--seq-lens {text!r} has {n}; expected {expected}")
        lens.append(n)
    _once("--seq-lens", text, lens, items)
    return sorted(lens)


def parse_attentions(text: Optional[str]) -> List[str]:
    known = list_attentions()
    if text is None:
        return known
    expected = f"a comma-separated list from: {', '.join(known)}"
    names = _items("--attentions", text, expected)
    for name in names:
        if name not in known:
            raise ConfigError(f"--attentions {text!r} has unknown attention {name!r}; known: {', '.join(known)}")
    _once("--attentions", text, names, names)
    return names


def parse_devices(text: str) -> List[str]:
    expected = "a comma-separated list of cpu and gpu (or cuda)"
    items = _items("--devices", text, expected)
    out = []
    for t in items:
        dev = DEVICE_ALIASES.get(t.lower())
        if dev is None:
            raise ConfigError(f"--devices {text!r} has unknown device {t!r}; expected cpu, gpu or cuda")
        out.append(dev)
    _once("--devices", text, out, items)
    return out


def parse_value(text: str) -> Any:
    """A Python literal when it reads as one (8, 0.5, True, None, (1, 2)), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _not_finite(value: Any) -> bool:
    if isinstance(value, (float, complex)):
        return not cmath.isfinite(value)
    if isinstance(value, (tuple, list, set, frozenset)):
        return any(_not_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_not_finite(v) for v in value.values())
    return False


def parse_opts(items: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """["linformer.k=64", "performer.features=128"] -> {"linformer": {"k": 64}, "performer": {...}}"""
    known = list_attentions()
    out: Dict[str, Dict[str, Any]] = {}
    given: Dict[tuple, str] = {}
    for item in items or ():
        m = re.fullmatch(r"\s*([^.=\s]+)\.([A-Za-z_]\w*)\s*=(.*)", item)
        if not m:
            raise ConfigError(f"--opt {item!r} is malformed; expected NAME.KEY=VALUE, for example linformer.k=64")
        name, key, raw = m.group(1), m.group(2), m.group(3).strip()
        if name not in known:
            raise ConfigError(f"--opt {item!r} names unknown attention {name!r}; known: {', '.join(known)}")
        accepted = [k for k in attention_options(name) if k not in RESERVED_OPTIONS]
        if key in RESERVED_OPTIONS:
            raise ConfigError(f"--opt {item!r} sets {key!r}, which the run sets for every mechanism; use --{key} instead")
        if key not in accepted:
            raise ConfigError(f"--opt {item!r}: attention {name!r} has no option {key!r}; its options are: {', '.join(sorted(accepted))}")
        if raw == "":
            raise ConfigError(f"--opt {item!r} has no value; expected NAME.KEY=VALUE, for example {name}.{key}=...")
        if (name, key) in given:
            raise ConfigError(f"--opt {item!r} sets {name}.{key} again (after --opt {given[name, key]!r}); expected each option once")
        value = parse_value(raw)
        if _not_finite(value):
            raise ConfigError(f"--opt {item!r} has a value that is not finite ({value!r}); expected a finite number")
        given[name, key] = item
        out.setdefault(name, {})[key] = value
    return out


def _int_in(flag: str, value, low: int, high: Optional[int] = None, expected: str = "") -> int:
    """An integer in [low, high]; bools are not integers here."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise ConfigError(f"{flag} {value!r} is out of range; expected {expected}")
    return value


def _positive_int(flag: str, value) -> int:
    return _int_in(flag, value, 1, expected="a positive integer")


def validate(cfg: SweepConfig) -> SweepConfig:
    """Check a config before anything is measured or written; raises ConfigError (one sentence that
    names the flag, the value and what is expected)."""
    known = list_attentions()
    if not cfg.attentions:
        raise ConfigError(f"--attentions is empty; expected one or more of: {', '.join(known)}")
    for name in cfg.attentions:
        if name not in known:
            raise ConfigError(f"--attentions has unknown attention {name!r}; known: {', '.join(known)}")
    _once("--attentions", ",".join(map(str, cfg.attentions)), list(cfg.attentions), list(cfg.attentions))
    if not cfg.devices:
        raise ConfigError("--devices is empty; expected cpu, gpu or both")
    for dev in cfg.devices:
        if dev not in ("cpu", "cuda"):
            raise ConfigError(f"--devices has unknown device {dev!r}; expected cpu, gpu or cuda")
    _once("--devices", ",".join(map(str, cfg.devices)), list(cfg.devices), list(cfg.devices))
    if not cfg.seq_lens:
        raise ConfigError("--seq-lens is empty; expected one or more positive integers")
    for n in cfg.seq_lens:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ConfigError(f"--seq-lens has {n!r}; expected positive integers")
    _once("--seq-lens", ",".join(map(str, cfg.seq_lens)), list(cfg.seq_lens), [str(n) for n in cfg.seq_lens])
    _positive_int("--dim", cfg.dim)
    _positive_int("--heads", cfg.heads)
    if cfg.dim % cfg.heads:
        raise ConfigError(f"--heads {cfg.heads} does not divide --dim {cfg.dim}; expected a number of heads that divides the width")
    _positive_int("--batch", cfg.batch)
    # sizes no tensor can hold fail here, not as an overflow in every point
    if cfg.batch * max(cfg.seq_lens) * cfg.dim > MAX_NUMEL:
        raise ConfigError(f"--seq-lens {max(cfg.seq_lens)} with --batch {cfg.batch} and --dim {cfg.dim} makes an input of "
                          f"{cfg.batch * max(cfg.seq_lens) * cfg.dim:.3g} elements; expected at most 2^63 - 1 (a tensor's limit)")
    if cfg.dim * cfg.dim > MAX_NUMEL:
        raise ConfigError(f"--dim {cfg.dim} makes a dim x dim projection of {cfg.dim * cfg.dim:.3g} elements; expected at most 2^63 - 1 (a tensor's limit)")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"--dtype {cfg.dtype!r} is unknown; expected one of {', '.join(DTYPES)}")
    if cfg.mode not in MODES:
        raise ConfigError(f"--mode {cfg.mode!r} is unknown; expected one of {', '.join(MODES)}")
    if not isinstance(cfg.causal, bool):
        raise ConfigError(f"--causal {cfg.causal!r} is not a flag value; expected true or false")
    _int_in("--runs", cfg.runs, 1, MAX_RUNS, f"an integer from 1 to {MAX_RUNS}")
    _int_in("--warmup", cfg.warmup, 0, MAX_RUNS, f"an integer from 0 to {MAX_RUNS}")
    if isinstance(cfg.max_seconds, bool) or not isinstance(cfg.max_seconds, (int, float)) or not (0 < cfg.max_seconds < math.inf):
        raise ConfigError(f"--max-seconds-per-point {cfg.max_seconds!r} is out of range; expected a positive, finite number of seconds")
    cpus = os.cpu_count() or 1
    _int_in("--threads", cfg.threads, 1, cpus, f"an integer from 1 to {cpus} (this machine's logical CPUs)")
    for name, opts in cfg.options.items():
        shown = " ".join(f"{name}.{k}={v}" for k, v in opts.items())
        if name not in cfg.attentions:
            raise ConfigError(f"--opt {shown} is for {name!r}, which is not measured (--attentions {','.join(cfg.attentions)}); "
                              f"expected options for measured mechanisms only: add {name} to --attentions or drop the option")
        accepted = attention_options(name)  # raises on an unknown name
        for key in opts:
            if key in RESERVED_OPTIONS or key not in accepted:
                raise ConfigError(f"--opt {name}.{key}: attention {name!r} has no settable option {key!r}; its options are: {', '.join(sorted(set(accepted) - set(RESERVED_OPTIONS)))}")
        # a bad value fails here rather than turning every point "unsupported": build once on the CPU
        # with and without the user's options; only a failure the options cause is theirs (a module too
        # large to build included: every point would be built the same way)
        try:
            build_attention(name, cfg.dim, cfg.heads, **resolved_options(name, cfg))
        except Exception as e:  # noqa: BLE001 - sorted below: bad values and allocations are the user's
            if not isinstance(e, (ValueError, TypeError)) and not is_oom(e):
                raise
            try:
                build_attention(name, cfg.dim, cfg.heads, **_generic_options(name, cfg))
            except Exception:  # noqa: BLE001 - the mechanism cannot run this config anyway: its points say so
                continue
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if is_oom(e):
                msg = f"building it runs out of memory ({msg})"
            raise ConfigError(f"--opt {shown} is invalid: {msg}") from None
        finally:
            free_memory()
    return cfg



def _generic_options(name: str, cfg: SweepConfig) -> Dict[str, Any]:
    """Options the sweep sets without being asked (no names: read from the constructor's signature):
    a mechanism with a `max_seq_len` option gets the longest swept length, so it runs the whole sweep."""
    accepted = attention_options(name)
    out: Dict[str, Any] = {}
    if "max_seq_len" in accepted and cfg.seq_lens:
        out["max_seq_len"] = max(cfg.seq_lens)
    return out


def resolved_options(name: str, cfg: SweepConfig) -> Dict[str, Any]:
    """The options a point of `name` is built with: the generic ones, overridden by the user's."""
    out = _generic_options(name, cfg)
    out.update(cfg.options.get(name, {}))
    return out


# ---------------------------------------------------------------------------------------------- environment


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "threads": cfg.threads,
        "threads_note": "torch.set_num_threads for every CPU point (flop count, memory and timing); not used on CUDA",
        "dtype": cfg.dtype,
        "dtype_note": f"module parameters and the input are both cast to {cfg.dtype} ({DTYPES[cfg.dtype]})",
        "mode": cfg.mode,
        "mode_note": (
            "forward only, under torch.no_grad(), module in eval()"
            if cfg.mode == "fwd"
            else "module in train(); each call: grads set to None, forward, out.float().sum().backward() "
            "(the input requires grad, so input gradients are computed as in a mid-network layer)"
        ),
        "git_commit": git_commit(),
        "command": command if command is not None else list(sys.argv),
        "memory_methods": {"cpu": CPU_MEMORY_METHOD, "cuda": CUDA_MEMORY_METHOD},
        "flop_conventions": FLOP_CONVENTIONS,
        "config": cfg.to_dict(),
    }


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------- files


def append_point(path: Path, point: dict) -> None:
    """One line, flushed and fsynced before the next point starts: a killed sweep loses nothing."""
    with open(path, "a") as fh:
        fh.write(json.dumps(point, sort_keys=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_csv(path: Path, points: Iterable[dict]) -> List[dict]:
    import csv
    import io

    rows = [flatten(p) for p in points]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(Path(path), buf.getvalue())
    return rows


def write_env(path: Path, env: dict) -> None:
    _write_atomic(Path(path), json.dumps(env, indent=2, default=str) + "\n")


def repair_jsonl(path: Path) -> None:
    """A killed run can leave a half-written last line; end the file with a newline so the next
    append starts a line of its own (read_points skips the broken one)."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------------------- one point


@dataclass
class PointSpec:
    attention: str
    device: str
    seq_len: int

    def key(self, cfg: SweepConfig) -> str:
        return point_key(self.attention, self.device, self.seq_len, cfg.batch, cfg.dim, cfg.heads, cfg.dtype, cfg.mode, cfg.causal)


_OOM_MESSAGE = re.compile(r"out of memory|not enough memory|(can't|cannot|could not|couldn't|unable to|failed to) allocate", re.I)


def is_oom(e: BaseException) -> bool:
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and bool(_OOM_MESSAGE.search(str(e)))


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0].strip() if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Unsupported(Exception):
    pass


class Budget:
    """The per-point time budget. Checked between stages and passed to time_fn; where the platform
    allows (main thread, POSIX), an interval timer also interrupts a stage that runs past it (between
    Python-level ops: one long kernel still finishes first). The memory stage is not interrupted
    (its profiler must close cleanly); a deadline passed during it is reported right after.

    `clock` (seconds) keeps the budget; by default time.perf_counter. The interval timer counts real
    seconds, so it is armed only on that default: a test hands in a fake clock and decides exactly
    when the budget runs out, whatever the machine's speed."""

    MAX_ALARM_S = 1e8  # setitimer overflows a platform time_t somewhere above 1e9 s; a budget this long never fires anyway

    def __init__(self, seconds: float, clock: Optional[Clock] = None):
        self.seconds = float(seconds)
        self._interrupts = clock is None
        self.clock: Clock = clock or time.perf_counter
        self.start = self.clock()
        self.stage = "setup"
        self._shielded = False
        self._pending = False
        self._armed = False
        self._old_handler = None

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def exceeded(self, detail: str = "") -> TimeBudgetExceeded:
        extra = f" ({detail})" if detail else ""
        return TimeBudgetExceeded(
            f"over the --max-seconds-per-point budget of {self.seconds:g} s: stopped during {self.stage}{extra} after {self.elapsed():.1f} s"
        )

    def check(self) -> None:
        if self.remaining() <= 0:
            raise self.exceeded()

    def _on_alarm(self, signum, frame):
        if self._shielded:
            self._pending = True
            return
        raise self.exceeded("interrupted")

    def __enter__(self):
        if self._interrupts and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            try:
                self._old_handler = signal.signal(signal.SIGALRM, self._on_alarm)
                signal.setitimer(signal.ITIMER_REAL, min(max(self.remaining(), 1e-3), self.MAX_ALARM_S))
                self._armed = True
            except (ValueError, OSError):
                self._armed = False
        return self

    def __exit__(self, *exc):
        self._shielded = True  # an alarm arriving now is ignored: the point is over
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old_handler if self._old_handler is not None else signal.SIG_DFL)
            self._armed = False
        return False

    @contextlib.contextmanager
    def in_stage(self, name: str, shielded: bool = False):
        self.stage = name
        self._shielded = shielded
        try:
            yield
        finally:
            self._shielded = False
        if self._pending:
            self._pending = False
            raise self.exceeded()
        self.check()


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
        "causal": bool(cfg.causal),
        "options": options,
        "status": None,
        "reason": None,
        "time": None,
        "memory": None,
        "flops": None,
        "achieved_gflops": None,
        "elapsed_s": None,
    }


def run_point(spec: PointSpec, cfg: SweepConfig, clock: Optional[Clock] = None) -> dict:
    """Build, count, measure one point; never raises for a point-level failure (it is the status).
    `clock`: see Budget (None: the real clock, with the interval timer)."""
    options = resolved_options(spec.attention, cfg)
    point = _base_point(spec, cfg, options)
    now = clock or time.perf_counter
    t0 = now()
    dev = torch.device(spec.device)
    dtype = DTYPES[cfg.dtype]
    backward = cfg.mode == "fwd+bwd"
    prev_threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(cfg.threads)
    attn = x = None
    try:
        cls = get_attention(spec.attention)
        if cfg.causal and not cls.supports_causal:
            raise _Unsupported(f"attention '{spec.attention}' cannot be causal: {cls.not_causal_reason}")
        torch.manual_seed(0)
        try:
            attn = build_attention(spec.attention, cfg.dim, cfg.heads, causal=cfg.causal, **options)
        except ValueError as e:
            raise _Unsupported(str(e).splitlines()[0]) from None
        limit = attn.max_seq_len
        if limit is not None and spec.seq_len > limit:
            hint = f"; raise it with --opt {spec.attention}.max_seq_len=N" if "max_seq_len" in options else ""
            raise _Unsupported(f"sequence length {spec.seq_len} exceeds max_seq_len={limit} of attention '{spec.attention}'{hint}")
        attn = attn.to(device=dev, dtype=dtype)
        attn.train(backward)
        x = torch.randn(cfg.batch, spec.seq_len, cfg.dim, device=dev).to(dtype).requires_grad_(backward)

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

        with Budget(cfg.max_seconds, clock) as budget:
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
                mem = measure_peak_memory(call, attn, dev)
                point["memory"] = mem.to_dict()
            with budget.in_stage("timing"):
                try:
                    stats = time_fn(
                        call, warmup=cfg.warmup, runs=cfg.runs, device=dev,
                        threads=cfg.threads if dev.type == "cpu" else None,
                        max_seconds=max(budget.remaining(), 1e-6), clock=budget.clock,
                    )  # fmt: skip
                except TimeBudgetExceeded as e:
                    m = re.search(r"during (.*)$", str(e))
                    raise budget.exceeded(m.group(1) if m else "") from None
                point["time"] = stats.to_dict()
        point["status"] = "ok"
        if stats.median_ms > 0:
            point["achieved_gflops"] = analytic / (stats.median_ms / 1e3) / 1e9
    except _Unsupported as e:
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


# ---------------------------------------------------------------------------------------------- the sweep


def plan(cfg: SweepConfig, devices: Optional[List[str]] = None) -> List[PointSpec]:
    """Every point, device by device, mechanism by mechanism, shortest sequence first."""
    return [
        PointSpec(name, dev, n)
        for dev in (devices if devices is not None else cfg.devices)
        for name in cfg.attentions
        for n in sorted(cfg.seq_lens)
    ]


def available_devices(cfg: SweepConfig, warn: Callable[[str], None]) -> List[str]:
    out = []
    for dev in cfg.devices:
        if dev == "cuda" and not torch.cuda.is_available():
            warn("warning: a GPU was requested but torch.cuda.is_available() is False on this machine; running the CPU points only")
            continue
        out.append(dev)
    return out


def _describe(spec: PointSpec) -> str:
    return f"{spec.attention} {spec.device} n={spec.seq_len}"


def _outcome(point: dict) -> str:
    if point["status"] == "ok":
        t, m = point["time"], point["memory"]
        return f"ok  {t['median_ms']:.3f} ms  {m['peak_bytes'] / 2**20:.2f} MiB"
    return f"{point['status']}: {point['reason']}"


class _Progress:
    """rich.progress on a terminal, plain lines elsewhere (pytest, CI, a log file)."""

    def __init__(self, total: int, stream=None):
        self.total, self.done = total, 0
        self.stream = stream or sys.stdout
        self.rich = None
        if self.stream.isatty():
            try:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

                self.rich = Progress(
                    TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=Console(file=self.stream),
                )  # fmt: skip
            except ImportError:
                self.rich = None

    def __enter__(self):
        if self.rich is not None:
            self.rich.__enter__()
            self.task = self.rich.add_task("", total=self.total)
        return self

    def __exit__(self, *exc):
        if self.rich is not None:
            self.rich.__exit__(*exc)
        return False

    def start(self, spec: PointSpec) -> None:
        if self.rich is not None:
            self.rich.update(self.task, description=_describe(spec))
        else:
            print(f"[{self.done + 1}/{self.total}] {_describe(spec)} ...", file=self.stream, flush=True)

    def finish(self, spec: PointSpec, point: dict) -> None:
        self.done += 1
        if self.rich is not None:
            self.rich.console.print(f"{_describe(spec)}: {_outcome(point)}", highlight=False, markup=False)
            self.rich.advance(self.task)
        else:
            print(f"[{self.done}/{self.total}] {_describe(spec)}: {_outcome(point)}", file=self.stream, flush=True)

    def log(self, text: str) -> None:
        if self.rich is not None:
            self.rich.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)


def default_out_dir(root: Optional[Path] = None, prefix: str = "sweep") -> Path:
    """A new results/<prefix>-YYYYmmdd-HHMMSS/ under the repository root (not created here)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent / "results"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = root / f"{prefix}-{stamp}"
    i = 2
    while out.exists():
        out = root / f"{prefix}-{stamp}-{i}"
        i += 1
    return out


def run_sweep(
    cfg: SweepConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    command: Optional[List[str]] = None,
    warn: Optional[Callable[[str], None]] = None,
    stream=None,
    clock: Optional[Clock] = None,
) -> List[dict]:
    """Run (or finish) a sweep into `out_dir`; returns the flat rows of every point in results.jsonl.
    `clock`: the per-point budget's (see Budget)."""
    from .report import write_summary

    validate(cfg)
    out_dir = Path(out_dir)
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    devices = available_devices(cfg, warn)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "results.jsonl"
    env_path = out_dir / "env.json"

    env = environment(cfg, command)
    env["start_time"] = _now()
    env["end_time"] = None
    if resume and env_path.exists():
        try:
            prev = json.loads(env_path.read_text())
            env["previous_sessions"] = prev.get("previous_sessions", []) + [
                {k: prev.get(k) for k in ("command", "start_time", "end_time", "git_commit", "config")}
            ]
        except (OSError, json.JSONDecodeError):
            pass
    write_env(env_path, env)

    done = set()
    if resume:
        repair_jsonl(jsonl)
        done = {k for k, p in latest_by_key(read_points(jsonl)).items() if p.get("status") in FINISHED}
    todo = [s for s in plan(cfg, devices) if s.key(cfg) not in done]
    skipped = len(plan(cfg, devices)) - len(todo)

    try:
        with _Progress(len(todo), stream) as progress:
            if skipped:
                progress.log(f"resuming {out_dir}: {skipped} finished point(s) kept, {len(todo)} to measure")
            for spec in todo:
                progress.start(spec)
                point = run_point(spec, cfg, clock=clock)
                append_point(jsonl, point)
                progress.finish(spec, point)
    finally:  # also after Ctrl-C: the table of what was measured so far (resume for the rest)
        points = list(latest_by_key(read_points(jsonl)).values())
        rows = write_csv(out_dir / "results.csv", points)
        write_summary(rows, out_dir)
        env["end_time"] = _now()
        env["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        write_env(env_path, env)
    return rows
