"""From command-line flags and an optional YAML file to one validated run config.

The flags themselves are in flags.py (light, for an instant --help). Precedence, lowest first: the task's recipe
(training/recipes.py) < the checkpoint's saved config
(when resuming or generating) < `--config FILE.yaml` < flags given on the command line. Every problem
found here is a UsageError: one sentence, exit code 2, before any data is read or any training starts.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from lightning.pytorch.accelerators import AcceleratorRegistry

from models.attention import attention_options, build_attention, get_attention
from models.attention.base import causal_alternatives
from profiling.sweep import is_oom
from training.flags import (  # noqa: F401 - the flags' names, re-exported for the runner, the study and tests
    ALL,
    CORE_SETTINGS,
    FLAGS,
    KEYS,
    NO_ATTENTION,
    SETTING,
    SETTINGS,
    build_parser,
    is_study,
)
from training.settings import UsageError
from training.tasks import get_task, list_tasks
from utils.checks import parse_value

# Lightning's accelerators: the choices of --accelerator (flags.py leaves them open so that --help needs no Lightning)
ACCELERATORS = ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))
SETTING["accelerator"] = replace(SETTING["accelerator"], choices=ACCELERATORS)
SETTINGS[:] = [SETTING[s.key] for s in SETTINGS]
FLAGS[:] = [SETTING[s.key] for s in FLAGS]
TRAINER_DEFAULTS = dict(precision="32-true", accelerator="auto", devices="auto", strategy="auto", compile=False,
                        progress_bar=True, profiler=None, efficiency_callbacks=True,
                        deterministic=True)


def parse_attention_opts(items: List[str]) -> Dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--attention-opt {item!r} is not KEY=VALUE (e.g. --attention-opt features=128)")
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def load_yaml(path: str) -> Dict[str, Any]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"config file {path} does not exist; pass a YAML file of settings such as 'model: vit'")
    try:
        data = yaml.safe_load(p.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not a text file; pass a YAML file of settings such as 'model: vit'") from None
    except OSError as e:
        raise UsageError(f"config file {path} could not be read ({e.strerror or type(e).__name__})") from None
    except yaml.YAMLError as e:
        raise UsageError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of settings (key: value), found {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    opts = data.get("attention_options") or {}
    if not isinstance(opts, dict):
        raise UsageError(f"attention_options in {path} must be a mapping (e.g. {{features: 128}}), found {opts!r}")
    return data


def explicit_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The settings given as flags (None means not given)."""
    out = {s.key: getattr(args, s.key) for s in FLAGS if getattr(args, s.key) is not None}
    if args.model is not None:
        out["model"] = args.model
    if args.attention is not None:
        out["attention"] = args.attention
    return out


def resolve_config(args: argparse.Namespace, saved: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """args (+ the config saved in a checkpoint) -> the validated run config; raises UsageError."""
    from_file = load_yaml(args.config) if args.config else {}
    flags = explicit_settings(args)
    flag_opts = parse_attention_opts(args.attention_opt)
    name = flags.get("model") or from_file.get("model") or (saved or {}).get("model")
    if name is None:
        raise UsageError(f"--model is required (one of: {', '.join(list_tasks())})")
    if not isinstance(name, str):
        raise UsageError(f"model in {args.config} must be a task name (one of: {', '.join(list_tasks())}), got {name!r}")
    try:
        task = get_task(name)
    except ValueError as e:
        raise UsageError(str(e)) from None
    cfg = {**task.recipe(choose_recipe(task, flags, from_file, saved, args)), **TRAINER_DEFAULTS}
    known = set(cfg) | KEYS | {s.key for s in task.settings}
    unknown = sorted(set(from_file) - known)
    if unknown:
        raise UsageError(f"config file {args.config} has unknown setting(s) {', '.join(unknown)}; "
                         f"known settings: {', '.join(sorted(known))}")
    foreign = [SETTING[k].flag for k in flags if k not in known]
    if foreign:
        raise UsageError(f"{', '.join(foreign)} does not apply to --model {name}; leave it out (python train.py --help "
                         f"says which task each flag is for)")
    source = {key: f"the recipe of --model {name}" for key in cfg}
    for layer, origin in ((saved or {}, "checkpoint"), (from_file, "file"), (flags, "flag")):
        for k, v in layer.items():
            if k != "attention_options":
                cfg[k] = v
                source[k] = origin
    cfg["attention_options"] = {**(saved or {}).get("attention_options", {}),
                                **(from_file.get("attention_options") or {}), **flag_opts}
    validate(cfg, {k: _where(k, o, args) for k, o in source.items()})
    if not task.uses_attention:
        if cfg.get("attention") not in (None, NO_ATTENTION) or cfg["attention_options"]:
            raise UsageError(f"--model {name} has no attention layer; leave out --attention and --attention-opt")
        cfg["attention"] = NO_ATTENTION
    else:
        cfg["attention"] = cfg.get("attention") or "softmax"
        check_attention(task, cfg)
    return cfg


def choose_recipe(task, flags: Dict[str, Any], from_file: Dict[str, Any], saved: Optional[Dict[str, Any]],
                  args: argparse.Namespace) -> Optional[str]:
    """The named recipe asked for (flag, then file, then checkpoint), checked against the task's."""
    for layer, where in ((flags, "--recipe"), (from_file, f"recipe in {args.config}"), (saved or {}, "recipe saved in the checkpoint")):
        name = layer.get("recipe")
        if name is None:
            continue
        if not task.recipes:
            raise UsageError(f"{where} does not apply to --model {task.name}, which has one recipe; leave it out")
        if name not in task.recipes:
            raise UsageError(f"{where} must be one of {', '.join(task.recipes)} for --model {task.name}, got {name!r}")
        return name
    return None


def _where(key: str, origin: str, args: argparse.Namespace) -> str:
    """How a user would name where a setting came from, for messages."""
    if origin == "flag":
        return SETTING[key].flag if key in SETTING else f"--{key}"
    if origin == "file":
        return f"{key} in {args.config}"
    if origin == "checkpoint":
        return f"{key} saved in the checkpoint"
    return f"{key} in {origin}"


def validate(cfg: Dict[str, Any], where: Dict[str, str]) -> None:
    """Every known setting's type and range, and the combinations Lightning would refuse mid-run."""
    for key, value in cfg.items():
        if key in SETTING:
            SETTING[key].check(where.get(key, key), value)
    if cfg.get("max_epochs") == -1 and cfg.get("max_steps") == -1:
        raise UsageError(f"{where['max_epochs']} -1 (no epoch limit) needs --max-steps, or the run would never end")
    opts = cfg.get("attention_options")
    if not isinstance(opts, dict):
        raise UsageError(f"{where.get('attention_options', 'attention_options')} must be a mapping such as "
                         f"{{features: 128}}, got {opts!r}")
    betas = cfg.get("betas")
    if (not isinstance(betas, (list, tuple)) or len(betas) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise UsageError(f"{where.get('betas', 'betas')} must be two numbers in [0, 1) (AdamW's betas), got {betas!r}")


def check_attention(task, cfg: Dict[str, Any]) -> None:
    """The pairing of task and mechanism, and the options, by building one attention layer (cheap)."""
    name = cfg["attention"]
    try:
        cls = get_attention(name)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if task.causal and not cls.supports_causal:
        raise UsageError(f"--model {task.name} is a causal language model and attention '{name}' cannot be causal "
                         f"({cls.not_causal_reason}); use one of {causal_alternatives()}")
    options = dict(cfg["attention_options"])
    known = attention_options(name)
    if "max_seq_len" in known and "max_seq_len" not in options and task.sequence_length:
        options["max_seq_len"] = task.sequence_length(cfg)
    if task.causal:
        options["causal"] = True
    try:
        attn = build_attention(name, int(cfg["dim"]), int(cfg["heads"]), **options)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--attention {name} with options {cfg['attention_options'] or '{}'}: {e}") from None
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        raise UsageError(f"--attention {name} at --dim {cfg['dim']} does not fit in this machine's memory; "
                         f"lower --dim") from None
    n = task.sequence_length(cfg) if task.sequence_length else None
    if n is not None and attn.max_seq_len is not None and n > attn.max_seq_len:
        raise UsageError(f"attention '{name}' accepts at most {attn.max_seq_len} tokens but --model {task.name} "
                         f"gives it {n}; raise --attention-opt max_seq_len")
