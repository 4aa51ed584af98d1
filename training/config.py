"""From command-line flags and an optional YAML file to one validated run config.

Precedence, lowest first: the task's recipe (models/tasks/registry.py) < the checkpoint's saved config
(when resuming or generating) < `--config FILE.yaml` < flags given on the command line. Every problem
found here is a UsageError: one sentence, exit code 2, before any data is read or any training starts.
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any, Dict, List, Optional

from models.attention import attention_options, build_attention, get_attention, list_attentions
from models.attention.base import causal_alternatives
from models.tasks import get_task, list_tasks

NO_ATTENTION = "none"
ALL = "all"  # --attention all: the comparison study (training/study.py)


class UsageError(ValueError):
    """Bad input: the message is one sentence saying what was wrong and what is expected."""


# (flag, config key, type, help). Types: int, float, str, "bool" (a --flag / --no-flag pair), "int|float".
FLAGS = [
    # data
    ("--data-source", "data_source", str, "auto | local | hub | synthetic (default auto: a local copy, else the hub)"),
    ("--data-dir", "data_dir", str, "folder holding the data set (e.g. ../shared/data/cifar10-jpg)"),
    ("--cache-dir", "cache_dir", str, "tokenizer / image caches (default $ATTENTION_SUITE_CACHE or ~/.cache/attention-suite)"),
    ("--num-workers", "num_workers", int, "DataLoader worker processes"),
    ("--dataset", "dataset", str, "wikitext: wikitext-2 or wikitext-103"),
    ("--tokenizer", "tokenizer", str, "imdb: bpe | byte; wikitext: word | bpe"),
    ("--vocab-size", "vocab_size", int, "imdb: BPE vocabulary size"),
    ("--augment", "augment", str, "images: none | standard | strong"),
    ("--mask", "mask", str, "inpainting: center | boxes | strokes"),
    ("--hole-fraction", "hole_fraction", float, "inpainting: fraction of the pixels masked"),
    ("--image-size", "image_size", int, "image side in pixels (32 for CIFAR-10)"),
    # network
    ("--dim", "dim", int, "model width"),
    ("--depth", "depth", int, "transformer blocks"),
    ("--heads", "heads", int, "attention heads"),
    ("--mlp-ratio", "mlp_ratio", float, "MLP hidden width / model width"),
    ("--patch-size", "patch_size", int, "ViT / transformer inpainting patch side"),
    ("--seq-len", "seq_len", int, "text: tokens per example (IMDB truncation, LM context)"),
    ("--dropout", "dropout", float, "dropout rate"),
    ("--drop-path", "drop_path", float, "stochastic depth rate of the last block"),
    ("--base-width", "base_width", int, "inpaint-cnn: channels of the first U-Net level"),
    ("--levels", "levels", int, "inpaint-cnn: U-Net downsamplings"),
    # optimisation
    ("--batch-size", "batch_size", int, "samples per step (per device)"),
    ("--lr", "lr", float, "peak learning rate (AdamW)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (not on biases, norms, positions)"),
    ("--warmup", "warmup", float, "warm-up: a fraction of the steps (< 1) or a number of steps"),
    ("--label-smoothing", "label_smoothing", float, "classification label smoothing"),
    ("--gradient-clip-val", "gradient_clip_val", float, "gradient norm clipping (0 turns it off)"),
    ("--accumulate-grad-batches", "accumulate_grad_batches", int, "batches per optimiser step"),
    # budget and hardware
    ("--max-epochs", "max_epochs", int, "epochs to train"),
    ("--max-steps", "max_steps", int, "optimiser steps to train (-1: no limit; stops before max-epochs if reached)"),
    ("--limit-train-batches", "limit_train_batches", "int|float", "batches per training epoch (int) or a fraction"),
    ("--limit-val-batches", "limit_val_batches", "int|float", "batches per validation (int) or a fraction"),
    ("--limit-test-batches", "limit_test_batches", "int|float", "batches of the final test (int) or a fraction"),
    ("--val-check-interval", "val_check_interval", "int|float", "validate every N steps (int) or fraction of an epoch"),
    ("--log-every-n-steps", "log_every_n_steps", int, "training scalars every N steps"),
    ("--precision", "precision", str, "32-true | bf16-mixed | 16-mixed | ..."),
    ("--accelerator", "accelerator", str, "auto | cpu | gpu | ..."),
    ("--devices", "devices", str, "auto, a count, or a list such as 0,1"),
    ("--strategy", "strategy", str, "auto | ddp | ddp_spawn | fsdp | deepspeed ... (Lightning's)"),
    ("--seed", "seed", int, "random seed (data order, initialisation, dropout)"),
    ("--deterministic", "deterministic", "bool", "deterministic algorithms where PyTorch has them (default on; "
     "--no-deterministic may be faster on GPU)"),
    ("--compile", "compile", "bool", "torch.compile the network"),
    ("--profiler", "profiler", str, "Lightning's profiler: simple | advanced | pytorch (per-hook times at the end)"),
    ("--efficiency-callbacks", "efficiency_callbacks", "bool", "log latency, data wait, peak memory, FLOPs, throughput and MFU "
     "per step and write efficiency.json (default on)"),
    ("--progress-bar", "progress_bar", "bool", "show Lightning's progress bar (--no-progress-bar for logs and pipes)"),
    ("--sample-prompt", "sample_prompt", str, "wikitext: prompt of the samples logged while training"),
]
TRAINER_DEFAULTS = dict(precision="32-true", accelerator="auto", devices="auto", strategy="auto", compile=False,
                        progress_bar=True, profiler=None, efficiency_callbacks=True,
                        deterministic=True)
KEYS = {key for _, key, _, _ in FLAGS} | {"model", "attention", "attention_options"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    p.add_argument("--generate", metavar="PROMPT", help="wikitext: sample a continuation from --ckpt-path and exit")
    p.add_argument("--max-new-tokens", type=int, default=50, help="--generate: tokens to sample")
    p.add_argument("--temperature", type=float, default=0.8, help="--generate: sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=40, help="--generate: keep the k most likely tokens (0 = all)")
    for flag, key, kind, help_ in FLAGS:
        if kind == "bool":
            p.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            p.add_argument(flag, dest=key, type=_number if kind == "int|float" else kind, default=None, help=help_)
    return p


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_value(text: str) -> Any:
    """'128' -> 128, '0.5' -> 0.5, 'true' -> True, '(1, 2)' -> (1, 2), anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_attention_opts(items: List[str]) -> Dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--attention-opt {item!r} is not KEY=VALUE (e.g. --attention-opt features=128)")
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def load_yaml(path: str) -> Dict[str, Any]:
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"config file {path} does not exist; pass a YAML file of settings such as 'model: vit'")
    try:
        data = yaml.safe_load(p.read_text()) or {}
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
    out = {key: getattr(args, key) for _, key, _, _ in FLAGS if getattr(args, key) is not None}
    if args.model is not None:
        out["model"] = args.model
    if args.attention is not None:
        out["attention"] = args.attention
    return out


def resolve_config(args: argparse.Namespace, saved: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """args (+ the config saved in a checkpoint) -> the run config; raises UsageError."""
    from_file = load_yaml(args.config) if args.config else {}
    flags = explicit_settings(args)
    flag_opts = parse_attention_opts(args.attention_opt)
    name = flags.get("model") or from_file.get("model") or (saved or {}).get("model")
    if name is None:
        raise UsageError(f"--model is required (one of: {', '.join(list_tasks())})")
    try:
        task = get_task(name)
    except ValueError as e:
        raise UsageError(str(e)) from None
    cfg = {**task.recipe(), **TRAINER_DEFAULTS}
    unknown = sorted(set(from_file) - set(cfg) - KEYS)
    if unknown:
        raise UsageError(f"config file {args.config} has unknown setting(s) {', '.join(unknown)}; "
                         f"known settings: {', '.join(sorted(set(cfg) | KEYS))}")
    for layer in (saved or {}, from_file, flags):
        cfg.update({k: v for k, v in layer.items() if k != "attention_options"})
    cfg["attention_options"] = {**(saved or {}).get("attention_options", {}),
                                **(from_file.get("attention_options") or {}), **flag_opts}
    if not task.uses_attention:
        if cfg.get("attention") not in (None, NO_ATTENTION) or cfg["attention_options"]:
            raise UsageError(f"--model {name} has no attention layer; leave out --attention and --attention-opt")
        cfg["attention"] = NO_ATTENTION
    else:
        cfg["attention"] = cfg.get("attention") or "softmax"
        check_attention(task, cfg)
    return cfg


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
    n = task.sequence_length(cfg) if task.sequence_length else None
    if n is not None and attn.max_seq_len is not None and n > attn.max_seq_len:
        raise UsageError(f"attention '{name}' accepts at most {attn.max_seq_len} tokens but --model {task.name} "
                         f"gives it {n}; raise --attention-opt max_seq_len")
