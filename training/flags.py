"""The flags of train.py, with nothing heavier than the standard library, so that `python train.py --help` is
instant: the shared settings (`CORE_SETTINGS`; each task adds its own in training/recipes.py), the parser in
argument groups (task, attention, data, model sizes, optimisation, budget, hardware, output), and
`python train.py --model NAME --help`, which shows that task's recipe defaults and leaves out the other tasks'
flags. config.py turns parsed flags into a validated run config (and completes the accelerators' choices from
Lightning's registry).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from training.recipes import RECIPES, list_recipes
from training.settings import POSITIVE, PROBABILITY, S, Setting, UsageError

NO_ATTENTION = "none"
ALL = "all"  # --attention all: the comparison study (training/study.py)
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit
# Lightning's precision strings (typing.get_args(lightning.fabric.connector._PRECISION_INPUT_STR), its short aliases
# being deprecated) and the data sources of datamodules/common.py: written out so that --help imports neither;
# tests/test_help.py holds them equal
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true")
DATA_SOURCES = ("auto", "generated", "hub", "local", "synthetic")
ATTENTION_DIR = Path(__file__).resolve().parents[1] / "models" / "attention"


def is_study(attention: Optional[str]) -> bool:
    """--attention all, or a comma-separated list of mechanisms: the comparison study (training/study.py)."""
    return attention is not None and (attention == ALL or "," in attention)


def attention_names() -> List[str]:
    """The mechanisms registered in models/attention/, read from their `@register_attention("name")` lines rather
    than imported (the registry needs torch); tests/test_help.py holds them equal to list_attentions()."""
    found = set()
    for path in sorted(ATTENTION_DIR.glob("*.py")):
        found.update(re.findall(r'^@register_attention\(\s*"([^"]+)"\s*\)', path.read_text(encoding="utf-8"), re.M))
    return sorted(found)


# The keys every task's run config can hold; a task adds its own (TaskRecipe.settings). Those with help text are
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
    S("log_every_n_steps", "int", "training scalars every N steps (the recipe's is lowered to total steps // 50 "
      "in shorter runs, so that they have curves; one given here is kept)", lo=1),
    S("precision", "str", "32-true | bf16-mixed | 16-mixed | ...", choices=PRECISIONS),
    S("accelerator", "str", "auto | cpu | gpu | ... (Lightning's registry)"),
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
    for name in list_recipes():
        for s in RECIPES[name].settings:
            if s.key in out and out[s.key] != s:
                raise ValueError(f"task {name!r} declares setting {s.key!r} differently from an earlier declaration")
            out[s.key] = s
    return list(out.values())


SETTINGS = all_settings()
SETTING = {s.key: s for s in SETTINGS}
FLAGS = [s for s in SETTINGS if s.help is not None]
KEYS = {s.key for s in CORE_SETTINGS}  # what every task takes; a task adds its own (TaskRecipe.settings)

# --help's argument groups; a setting not named here is a task's own and goes under "task"
GROUPS = {
    "task": "which task and recipe, and settings of one task only",
    "attention": "the attention mechanism",
    "data": "where the data come from and how they are read",
    "model sizes": "the network",
    "optimisation": "AdamW, its schedule and regularisation",
    "budget": "how long to train, validate and test",
    "hardware": "devices, precision and reproducibility",
    "output": "what is written and shown",
    "comparison study": "--attention all (or a list): every mechanism, with seeds",
    "generation": "--generate: sample from a language-model checkpoint",
}
GROUP_OF = {
    **dict.fromkeys(("data_source", "data_dir", "cache_dir", "num_workers", "tokenizer", "augment", "image_size",
                     "vocab_size", "dataset", "mask", "hole_fraction", "data_seed", "resolution"), "data"),
    **dict.fromkeys(("dim", "depth", "heads", "mlp_ratio", "patch_size", "seq_len", "dropout", "drop_path", "pool",
                     "base_width", "levels"), "model sizes"),
    **dict.fromkeys(("batch_size", "lr", "weight_decay", "warmup", "label_smoothing", "gradient_clip_val",
                     "accumulate_grad_batches", "lr_schedule"), "optimisation"),
    **dict.fromkeys(("max_epochs", "max_steps", "limit_train_batches", "limit_val_batches", "limit_test_batches",
                     "val_check_interval"), "budget"),
    **dict.fromkeys(("precision", "accelerator", "devices", "strategy", "seed", "deterministic", "compile"), "hardware"),
    **dict.fromkeys(("log_every_n_steps", "profiler", "efficiency_callbacks", "progress_bar", "sample_prompt"), "output"),
    "recipe": "task",
}


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a UsageError (one line, exit 2 in main) instead of usage + error."""

    def error(self, message: str):
        for kind, expected in (("int", "an integer"), ("float", "a number"), ("_number", "a number")):
            if f"invalid {kind} value" in message:
                message += f" (expected {expected})"
        raise UsageError(message.replace("invalid _number value", "invalid value"))


def build_parser(model: Optional[str] = None) -> argparse.ArgumentParser:
    """train.py's parser. With `model` (a task's name) the help shows that task's recipe defaults and leaves out
    the flags only other tasks have (they would be refused for it)."""
    recipe = RECIPES[model].recipe() if model in RECIPES else None
    own = {s.key for s in RECIPES[model].settings} if model in RECIPES else None
    task_keys = {s.key for name in RECIPES for s in RECIPES[name].settings}
    p = Parser(
        prog="train.py", usage="train.py --model NAME [--attention NAME] [--attention-opt KEY=VALUE ...] [options]",
        description="Train a task model with a chosen attention mechanism; logs, checkpoints and the test result "
                    "land in lightning_logs/<model>-<attention>-<data source>/version_N/."
                    + (f" Defaults shown are those of --model {model}'s recipe"
                       f"{' (' + recipe['recipe'] + ')' if recipe.get('recipe') else ''}." if recipe else
                       " Give --model NAME with --help to see that task's recipe defaults."),
        epilog="Example: python train.py --model vit --attention linformer --attention-opt k=32",
    )
    g = {name: p.add_argument_group(name, about) for name, about in GROUPS.items()}
    g["task"].add_argument("--model", help="one of: " + "; ".join(f"{n} ({RECIPES[n].description})"
                                                                   for n in list_recipes()))
    g["task"].add_argument("--config", help="a YAML file of settings (keys as the flags, with _ for -); flags "
                                            "override it")
    g["attention"].add_argument("--attention", help=f"one of: {', '.join(attention_names())} (default softmax); "
                                                    f"'{ALL}': the comparison study of every mechanism the model "
                                                    f"supports")
    g["attention"].add_argument("--attention-opt", action="append", default=[], metavar="KEY=VALUE",
                                help="an option of the attention mechanism (repeatable), e.g. features=128; in a "
                                     "study NAME.KEY=VALUE, e.g. linformer.k=32")
    g["comparison study"].add_argument("--seeds", type=int, default=1, metavar="N",
                                       help="train every mechanism with N seeds (seed, seed + 1, ...); mean +- std "
                                            "in the table")
    g["comparison study"].add_argument("--study-dir", metavar="DIR", help="where the table, plots and report go "
                                                                          "(default <logdir>/study-<model>)")
    g["comparison study"].add_argument("--study-sweep", action=argparse.BooleanOptionalAction, default=True,
                                       help="also sweep the mechanisms with profile.py at the model's width around "
                                            "its sequence length and link the plots (default on)")
    g["output"].add_argument("--logdir", default="lightning_logs", help="where runs are written (default "
                                                                        "lightning_logs)")
    g["output"].add_argument("--ckpt-path", help="resume: 'last' (this run's latest last.ckpt) or a checkpoint file")
    g["budget"].add_argument("--fast-dev-run", nargs="?", const=1, type=int, default=0, metavar="N",
                             help="run N (default 1) batches of train / val / test, write nothing")
    g["budget"].add_argument("--no-test", action="store_true", help="skip testing the best checkpoint after fitting")
    g["output"].add_argument("--verbose", action="store_true",
                             help="show every message of Lightning and PyTorch (by default their adverts and "
                                  "routine notes are left out)")
    g["generation"].add_argument("--generate", metavar="PROMPT", help="wikitext: sample a continuation from "
                                                                      "--ckpt-path and exit")
    g["generation"].add_argument("--max-new-tokens", type=int, default=50, help="tokens to sample (default 50)")
    g["generation"].add_argument("--temperature", type=float, default=0.8,
                                 help="sampling temperature, 0 = greedy (default 0.8)")
    g["generation"].add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens, 0 = all "
                                                                       "(default 40)")
    for s in FLAGS:
        group = g[GROUP_OF.get(s.key, "task")]
        text = s.help
        if own is not None and s.key in task_keys and s.key not in own:
            text = argparse.SUPPRESS  # another task's own setting: refused for this one
        elif recipe is not None and recipe.get(s.key) is not None:
            text = f"{text} [{model}: {_shown(recipe[s.key])}]"
        if s.kind == "bool":
            group.add_argument(s.flag, dest=s.key, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {"int|float": _number, "int": int, "float": float}.get(s.kind, str)
            group.add_argument(s.flag, dest=s.key, type=kind, default=None, help=text)
    return p


def _shown(value) -> str:
    return "; ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def help_requested(argv: Sequence[str]) -> bool:
    """-h or --help among the flags (before a `--`)."""
    argv = list(argv)
    flags = argv[:argv.index("--")] if "--" in argv else argv
    return "-h" in flags or "--help" in flags


def print_help(argv: Sequence[str]) -> int:
    """The help, with the recipe defaults of the --model given (if any); returns the exit code 0."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    model = pre.parse_known_args(list(argv))[0].model
    build_parser(model).print_help()
    return 0
