"""From command-line flags and an optional YAML file to one validated run config.

Precedence, lowest first: the task's recipe (training/tasks.py) < the checkpoint's saved config
(when resuming or generating) < `--config FILE.yaml` < flags given on the command line. Every problem
found here is a UsageError: one sentence, exit code 2, before any data is read or any training starts.
"""
from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from lightning.fabric.connector import _PRECISION_INPUT_STR
from lightning.pytorch.accelerators import AcceleratorRegistry

from datamodules.common import DATA_SOURCES
from models.attention import attention_options, build_attention, get_attention, list_attentions
from models.attention.base import causal_alternatives
from profiling.sweep import is_oom
from training.settings import POSITIVE, PROBABILITY, S, Setting, UsageError
from training.tasks import get_task, list_tasks
from utils.checks import parse_value

NO_ATTENTION = "none"
ALL = "all"  # --attention all: the comparison study (training/study.py)


def is_study(attention: Optional[str]) -> bool:
    """--attention all, or a comma-separated list of mechanisms: the comparison study (training/study.py)."""
    return attention is not None and (attention == ALL or "," in attention)


SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit
PRECISIONS = typing.get_args(_PRECISION_INPUT_STR)  # Lightning's own list (its short aliases are deprecated)
ACCELERATORS = ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))
# The keys every task's run config can hold; a task adds its own (Task.settings). Those with help text are
# also command-line flags, in this order.
CORE_SETTINGS: List[Setting] = [
    # data
    S("data_source", "str", "auto | local | hub | synthetic (default auto: a local copy, else the hub)",
      choices=DATA_SOURCES),
    S("data_dir", "str", "folder holding the data set (e.g. ../shared/data/cifar10-jpg)", nullable=True),
    S("cache_dir", "str", "tokenizer / image caches (default $ATTENTION_SUITE_CACHE or ~/.cache/attention-suite)",
      nullable=True),
    S("num_workers", "int", "DataLoader worker processes", lo=0),
    S("tokenizer", "str", "imdb: bpe | byte; wikitext: word | bpe"),
    S("augment", "str", "images: none | standard | strong"),
    S("image_size", "int", "image side in pixels (32 for CIFAR-10)", lo=1),
    # network
    S("dim", "int", "model width", lo=1),
    S("depth", "int", "transformer blocks", lo=1),
    S("heads", "int", "attention heads", lo=1),
    S("mlp_ratio", "float", "MLP hidden width / model width", **POSITIVE),
    S("patch_size", "int", "ViT / transformer inpainting patch side", lo=1),
    S("seq_len", "int", "text: tokens per example (IMDB truncation, LM context)", lo=1),
    S("dropout", "float", "dropout rate", **PROBABILITY),
    S("drop_path", "float", "stochastic depth rate of the last block", **PROBABILITY),
    # optimisation
    S("batch_size", "int", "samples per step (per device)", lo=1),
    S("lr", "float", "peak learning rate (AdamW)", **POSITIVE),
    S("weight_decay", "float", "AdamW weight decay (not on biases, norms, positions)", lo=0),
    S("warmup", "float", "warm-up: a fraction of the steps (< 1) or a number of steps", lo=0),
    S("label_smoothing", "float", "classification label smoothing", **PROBABILITY),
    S("gradient_clip_val", "float", "gradient norm clipping (0 turns it off)", lo=0),
    S("accumulate_grad_batches", "int", "batches per optimiser step", lo=1),
    S("lr_schedule", "str", "after the warm-up: cosine | linear (to min_lr_ratio) | rsqrt (the LRA paper's text tasks)",
      choices=("cosine", "linear", "rsqrt")),
    S("recipe", "str", "a task's named recipe (the LRA tasks: small, the PyTorch reproductions' | paper, LRA's "
      "released configurations)"),
    # budget and hardware
    S("max_epochs", "int", "epochs to train (-1: no limit, with --max-steps)", lo=1, special=(-1,)),
    S("max_steps", "int", "optimiser steps to train (-1: no limit; stops before max-epochs if reached)",
      lo=1, special=(-1,)),
    S("limit_train_batches", "int|float", "batches per training epoch (int) or a fraction", lo=1),
    S("limit_val_batches", "int|float", "batches per validation (int) or a fraction; 0 skips validation", lo=0),
    S("limit_test_batches", "int|float", "batches of the final test (int) or a fraction", lo=1),
    S("val_check_interval", "int|float", "validate every N steps (int) or fraction of an epoch", lo=1),
    S("log_every_n_steps", "int", "training scalars every N steps", lo=1),
    S("precision", "str", "32-true | bf16-mixed | 16-mixed | ...", choices=PRECISIONS),
    S("accelerator", "str", "auto | cpu | gpu | ...", choices=ACCELERATORS),
    S("devices", "devices", "auto, a count, or a list such as 0,1"),
    S("strategy", "str", "auto | ddp | ddp_spawn | fsdp | deepspeed ... (Lightning's)"),
    S("seed", "int", "random seed (data order, initialisation, dropout)", lo=0, hi=SEED_MAX),
    S("deterministic", "bool", "deterministic algorithms where PyTorch has them (default on; "
      "--no-deterministic may be faster on GPU)"),
    S("compile", "bool", "torch.compile the network"),
    S("profiler", "str", "Lightning's profiler: simple | advanced | pytorch (per-hook times at the end)",
      choices=("simple", "advanced", "pytorch"), nullable=True),
    S("efficiency_callbacks", "bool", "log latency, data wait, peak memory, FLOPs, throughput and MFU "
      "per step and write efficiency.json (default on)"),
    S("progress_bar", "bool", "show Lightning's progress bar (--no-progress-bar for logs and pipes)"),
    # recipe keys without a flag (settable in a --config file)
    S("min_lr_ratio", "float", lo=0, hi=1),
    S("betas", "any"),
    S("model", "str"),
    S("attention", "str", nullable=True),
    S("attention_options", "any"),
]


def all_settings() -> List[Setting]:
    """The core settings, then every registered task's own (a key two tasks declare must be the same Setting)."""
    out: Dict[str, Setting] = {s.key: s for s in CORE_SETTINGS}
    for name in list_tasks():
        for s in get_task(name).settings:
            if s.key in out and out[s.key] != s:
                raise ValueError(f"task {name!r} declares setting {s.key!r} differently from an earlier declaration")
            out[s.key] = s
    return list(out.values())


SETTINGS = all_settings()
SETTING = {s.key: s for s in SETTINGS}
FLAGS = [s for s in SETTINGS if s.help is not None]
TRAINER_DEFAULTS = dict(precision="32-true", accelerator="auto", devices="auto", strategy="auto", compile=False,
                        progress_bar=True, profiler=None, efficiency_callbacks=True,
                        deterministic=True)
KEYS = {s.key for s in CORE_SETTINGS}  # what every task takes; a task adds its own (Task.settings)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a UsageError (one line, exit 2 in main) instead of usage + error."""

    def error(self, message: str):
        for kind, expected in (("int", "an integer"), ("float", "a number"), ("_number", "a number")):
            if f"invalid {kind} value" in message:
                message += f" (expected {expected})"
        raise UsageError(message.replace("invalid _number value", "invalid value"))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="train.py",
        description="Train a task model with a chosen attention mechanism; logs, checkpoints and the test result "
                    "land in lightning_logs/<model>-<attention>-<data source>/version_N/.",
        epilog="Example: python train.py --model vit --attention linformer --attention-opt k=32",
    )
    p.add_argument("--model", help=f"one of: {', '.join(list_tasks())}")
    p.add_argument("--attention", help=f"one of: {', '.join(list_attentions())} (default softmax); "
                                       f"'{ALL}': the comparison study of every mechanism the model supports")
    p.add_argument("--attention-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the attention mechanism (repeatable), e.g. features=128; in a study "
                        "NAME.KEY=VALUE, e.g. linformer.k=32")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="study: train every mechanism with N seeds (seed, seed + 1, ...); mean +- std in the table")
    p.add_argument("--study-dir", metavar="DIR", help="study: where the table, plots and report go "
                                                      "(default <logdir>/study-<model>)")
    p.add_argument("--study-sweep", action=argparse.BooleanOptionalAction, default=True,
                   help="study: also sweep the mechanisms with profile.py at the model's width around its "
                        "sequence length and link the plots (default on)")
    p.add_argument("--config", help="a YAML file of settings (keys as the flags, with _ for -); flags override it")
    p.add_argument("--logdir", default="lightning_logs", help="where runs are written (default lightning_logs)")
    p.add_argument("--ckpt-path", help="resume: 'last' (this run's latest last.ckpt) or a checkpoint file")
    p.add_argument("--fast-dev-run", nargs="?", const=1, type=int, default=0, metavar="N",
                   help="run N (default 1) batches of train / val / test, write nothing")
    p.add_argument("--no-test", action="store_true", help="skip testing the best checkpoint after fitting")
    p.add_argument("--verbose", action="store_true", help="show every message of Lightning and PyTorch (by default "
                                                           "their adverts and routine notes are left out)")
    p.add_argument("--generate", metavar="PROMPT", help="wikitext: sample a continuation from --ckpt-path and exit")
    p.add_argument("--max-new-tokens", type=int, default=50, help="--generate: tokens to sample")
    p.add_argument("--temperature", type=float, default=0.8, help="--generate: sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=40, help="--generate: keep the k most likely tokens (0 = all)")
    for s in FLAGS:
        if s.kind == "bool":
            p.add_argument(s.flag, dest=s.key, action=argparse.BooleanOptionalAction, default=None, help=s.help)
        else:
            kind = {"int|float": _number, "int": int, "float": float}.get(s.kind, str)
            p.add_argument(s.flag, dest=s.key, type=kind, default=None, help=s.help)
    return p


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


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
