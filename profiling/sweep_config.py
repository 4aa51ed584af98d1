"""What a sweep measures: `SweepConfig`, the parsers of its comma-separated flags, and `validate`, which refuses
a bad request in one sentence naming the flag, the value and what is expected (ConfigError) before anything is
measured or written. The options each mechanism is built with (`resolved_options`) are decided here too, and
what the decoding mode implies (`run_causal`, `decode_steps`)."""
from __future__ import annotations

import cmath
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional

import torch

from models.attention import attention_options, build_attention, list_attentions
from utils.checks import check_int, check_number, parse_value

from .errors import is_oom
from .memory import free_memory

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fwd", "fwd+bwd", "decode")
DEVICE_ALIASES = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}
RESERVED_OPTIONS = ("causal",)  # set by the run (--causal), not per mechanism
MAX_NUMEL = 2**63 - 1  # torch indexes elements with int64
MAX_RUNS = 1_000_000  # per point; on CUDA every timed run holds an event pair from the start


class ConfigError(ValueError):
    """A bad sweep request; the message is one sentence saying what was wrong and what is expected."""


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
    target_seconds: float = 20.0  # a slow point's warm-up and runs stop early past this (>= 3 runs); 0 = all runs
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    options: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # as the user gave them, per attention

    def to_dict(self) -> dict:
        return asdict(self)


def run_causal(cfg: SweepConfig) -> bool:
    """Whether the points run causally: --causal, or the decoding mode (generation is causal by definition)."""
    return bool(cfg.causal) or cfg.mode == "decode"


def decode_steps(cfg: SweepConfig) -> int:
    """Single-token steps a decoding point takes after its prefill: one for the peak-memory measurement, then
    the warm-up and the timed ones (each advances the state by one position)."""
    return 1 + cfg.warmup + cfg.runs if cfg.mode == "decode" else 0


# ---------------------------------------------------------------------------------------------- flag parsers


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


# ---------------------------------------------------------------------------------------------- validation


def _int_in(flag: str, value, low: int, high: Optional[int], expected: str) -> int:
    """utils.checks.check_int, in the CLI's sentence: `--runs 0 is out of range; expected ...`."""
    try:
        return check_int(flag, value, low, high)
    except ValueError:
        raise ConfigError(f"{flag} {value!r} is out of range; expected {expected}") from None


def _positive_int(flag: str, value) -> int:
    return _int_in(flag, value, 1, None, "a positive integer")


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
        try:
            check_int("--seq-lens", n)
        except ValueError:
            raise ConfigError(f"--seq-lens has {n!r}; expected positive integers") from None
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
    try:
        check_number("--max-seconds-per-point", cfg.max_seconds, low=0, low_open=True)
    except ValueError:
        raise ConfigError(f"--max-seconds-per-point {cfg.max_seconds!r} is out of range; expected a positive, finite number of seconds") from None
    try:
        check_number("--target-seconds-per-point", cfg.target_seconds, low=0)
    except ValueError:
        raise ConfigError(f"--target-seconds-per-point {cfg.target_seconds!r} is out of range; expected a finite number of "
                          f"seconds >= 0 (0: always every run)") from None
    cpus = os.cpu_count() or 1
    _int_in("--threads", cfg.threads, 1, cpus, f"an integer from 1 to {cpus} (this machine's logical CPUs)")
    for name, opts in cfg.options.items():
        _check_options(name, opts, cfg)
    return cfg


def _check_options(name: str, opts: Dict[str, Any], cfg: SweepConfig) -> None:
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
            return
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if is_oom(e):
            msg = f"building it runs out of memory ({msg})"
        raise ConfigError(f"--opt {shown} is invalid: {msg}") from None
    finally:
        free_memory()


def _generic_options(name: str, cfg: SweepConfig) -> Dict[str, Any]:
    """Options the sweep sets without being asked (no names: read from the constructor's signature):
    a mechanism with a `max_seq_len` option gets the longest swept length, so it runs the whole sweep (in the
    decoding mode, the longest context plus the positions its steps add)."""
    accepted = attention_options(name)
    out: Dict[str, Any] = {}
    if "max_seq_len" in accepted and cfg.seq_lens:
        out["max_seq_len"] = max(cfg.seq_lens) + decode_steps(cfg)
    return out


def resolved_options(name: str, cfg: SweepConfig) -> Dict[str, Any]:
    """The options a point of `name` is built with: the generic ones, overridden by the user's."""
    out = _generic_options(name, cfg)
    out.update(cfg.options.get(name, {}))
    return out


def target_seconds(cfg: SweepConfig) -> Optional[float]:
    """The early-stop target a point's timing gets (None: every run)."""
    return cfg.target_seconds or None
