"""The tasks' recipes, with nothing heavier than the standard library: name, description, default settings
(COMMON, the task's `defaults`, a named recipe's values), the keys only the task has (`settings`: type, range,
flag help), the sizes that make its network tiny (`smoke`), whether it is causal or has attention, and the
tokens its attention sees. `python train.py --help` reads these without importing torch; training/tasks.py
adds what builds the data, the network and the LightningModule (one `register_task` per recipe).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from training.settings import S, Setting

# keys every recipe has (the shared trainer / optimiser budget); task recipes add their own
COMMON: Dict[str, Any] = dict(
    data_source="auto", data_dir=None, cache_dir=None, num_workers=0, seed=0,
    batch_size=64, lr=1e-3, weight_decay=0.05, warmup=0.05, min_lr_ratio=0.0, betas=(0.9, 0.999),
    max_epochs=10, max_steps=-1, gradient_clip_val=1.0, accumulate_grad_batches=1,
    limit_train_batches=1.0, limit_val_batches=1.0, limit_test_batches=1.0, val_check_interval=1.0,
    log_every_n_steps=20, lr_schedule="cosine", attention_options={},
)
TRANSFORMER = ("dim", "depth", "heads", "mlp_ratio", "dropout", "drop_path")
SMALL_TRANSFORMER = dict(dim=32, depth=1, heads=2)

@dataclass(frozen=True)
class TaskRecipe:
    name: str
    description: str
    defaults: Dict[str, Any] = field(default_factory=dict)  # the recipe, over COMMON
    smoke: Dict[str, Any] = field(default_factory=dict)  # settings for a tiny network (tests, smoke runs)
    settings: Tuple[Setting, ...] = ()  # the task's own config keys (type, range, flag help); shared ones: config.py
    recipes: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # named alternatives over `defaults` (--recipe)
    default_recipe: Optional[str] = None
    uses_attention: bool = True
    causal: bool = False
    sequence_length: Optional[Callable[[Dict[str, Any]], int]] = None  # tokens the attention sees

    def recipe(self, name: Optional[str] = None) -> Dict[str, Any]:
        """The settings of recipe `name` (None: the task's default one): COMMON, the task's defaults, then the
        named recipe's own values."""
        name = name or self.default_recipe
        named = self.recipes[name] if name is not None else {}
        return {**COMMON, **self.defaults, **named, "model": self.name, **({"recipe": name} if name else {})}


RECIPES: Dict[str, TaskRecipe] = {}


def register_recipe(recipe: TaskRecipe) -> TaskRecipe:
    if recipe.name in RECIPES:
        raise ValueError(f"task {recipe.name!r} already has a recipe")
    RECIPES[recipe.name] = recipe
    return recipe


def list_recipes() -> List[str]:
    return sorted(RECIPES)


# ------------------------------------------------------------------------------------------------ ViT
register_recipe(TaskRecipe(
    "vit",
    "Vision Transformer on CIFAR-10 (top-1 / top-5 accuracy)",
    defaults=dict(image_size=32, patch_size=4, dim=256, depth=6, heads=8, mlp_ratio=2.0, dropout=0.0, drop_path=0.1,
                  augment="standard", label_smoothing=0.1, batch_size=256, lr=1e-3, weight_decay=0.05,
                  warmup=0.05, max_epochs=200),
    smoke=dict(image_size=16, patch_size=4, **SMALL_TRANSFORMER),
    sequence_length=lambda cfg: (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1,
))


# ------------------------------------------------------------------------------------------------ IMDB
register_recipe(TaskRecipe(
    "imdb",
    "Transformer sentiment classifier on IMDB (accuracy, F1)",
    defaults=dict(seq_len=512, tokenizer="bpe", vocab_size=16000, bucket_by_length=True, dim=128, depth=2, heads=4,
                  mlp_ratio=2.0, dropout=0.1, drop_path=0.0, batch_size=32, lr=5e-4, weight_decay=0.05,
                  warmup=0.1, max_epochs=4, label_smoothing=0.0),
    smoke=dict(tokenizer="byte", seq_len=32, **SMALL_TRANSFORMER),
    settings=(S("vocab_size", "int", "imdb: BPE vocabulary size", lo=2), S("bucket_by_length", "bool")),
    sequence_length=lambda cfg: cfg["seq_len"],
))


# ------------------------------------------------------------------------------------------------ WikiText
register_recipe(TaskRecipe(
    "wikitext",
    "Causal language model on WikiText-2 (perplexity, generation)",
    defaults=dict(dataset="wikitext-2", tokenizer="word", seq_len=256, dim=256, depth=4, heads=4, mlp_ratio=4.0,
                  dropout=0.2, drop_path=0.0, batch_size=32, lr=1e-3, weight_decay=0.1, warmup=0.05, max_epochs=20,
                  sample_prompt="The", sample_tokens=40, temperature=0.8, top_k=40),
    smoke=dict(seq_len=32, **SMALL_TRANSFORMER),
    settings=(S("dataset", "str", "wikitext: wikitext-2 or wikitext-103"),
              S("sample_prompt", "str", "wikitext: prompt of the samples logged while training"),
              S("sample_tokens", "int", lo=0), S("temperature", "float", lo=0), S("top_k", "int", lo=0)),
    causal=True,
    sequence_length=lambda cfg: cfg["seq_len"],
))


# ------------------------------------------------------------------------------------------------ inpainting
INPAINT = dict(image_size=32, mask="center", hole_fraction=0.25, augment="standard", loss="l1", outside_weight=0.1,
               batch_size=128, lr=1e-3, weight_decay=0.01, warmup=0.02, max_epochs=30)
INPAINT_SETTINGS = (S("mask", "str", "inpainting: center | boxes | strokes"),
                    S("hole_fraction", "float", "inpainting: fraction of the pixels masked", lo=0, hi=1, lo_open=True,
                      hi_open=True),
                    S("loss", "str"), S("outside_weight", "float", lo=0))

register_recipe(TaskRecipe(
    "inpaint-cnn",
    "U-Net inpainting on CIFAR-10 (PSNR, SSIM; no attention)",
    defaults=dict(INPAINT, base_width=32, levels=3),
    smoke=dict(image_size=16, base_width=8, levels=2),
    uses_attention=False,
    settings=INPAINT_SETTINGS + (S("base_width", "int", "inpaint-cnn: channels of the first U-Net level", lo=1),
                                 S("levels", "int", "inpaint-cnn: U-Net downsamplings", lo=1)),
))


register_recipe(TaskRecipe(
    "inpaint-transformer",
    "Transformer inpainting over patches of CIFAR-10 (PSNR, SSIM)",
    defaults=dict(INPAINT, patch_size=4, dim=192, depth=6, heads=4, mlp_ratio=2.0, dropout=0.0, drop_path=0.0),
    smoke=dict(image_size=16, patch_size=4, **SMALL_TRANSFORMER),
    settings=INPAINT_SETTINGS,
    sequence_length=lambda cfg: (cfg["image_size"] // cfg["patch_size"]) ** 2,
))


# ------------------------------------------------------------------------------------------------ Long Range Arena
# Two recipes per task (--recipe, docs/lra.md): "small", the PyTorch reproductions' configuration
# (mlpen/Nystromformer LRA/code/lra_config.py: 2 layers, width 64, 2 heads, MLP 128, mean pooling, AdamW 1e-4
# with linear decay, no weight decay), the default; and "paper", LRA's released configurations
# (google-research/long-range-arena lra_benchmarks/*/configs/base_*_config.py with transformer_base.py).
LRA_SMALL = dict(dim=64, depth=2, heads=2, mlp_ratio=2.0, dropout=0.1, drop_path=0.0, pool="mean", lr=1e-4,
                 lr_schedule="linear", weight_decay=0.0, gradient_clip_val=0.0, label_smoothing=0.0, max_epochs=-1,
                 log_every_n_steps=10)
LRA_PAPER = dict(drop_path=0.0, label_smoothing=0.0, gradient_clip_val=0.0, max_epochs=-1, log_every_n_steps=10)
# the pooling of the LRA classifiers (models/lra.py POOLS; tests/test_help.py holds them equal)
POOLS = ("cls", "mean")
LRA_SETTINGS = (S("pool", "str", "LRA: the classifier's pooling, cls | mean", choices=POOLS),)


def _lra_recipes(small: Dict[str, Any], paper: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {"small": {**LRA_SMALL, **small}, "paper": {**LRA_PAPER, **paper}}


def _lra_tokens(cfg) -> int:
    return cfg["seq_len"] + (cfg["pool"] == "cls")  # a CLS token goes in front



LRA_SMOKE = dict(seq_len=64, dim=16, depth=1, heads=2)


register_recipe(TaskRecipe(
    "lra-text",
    "LRA Text: byte-level IMDB sentiment, 4K bytes (accuracy)",
    settings=LRA_SETTINGS,
    default_recipe="small",
    recipes=_lra_recipes(
        small=dict(seq_len=4096, batch_size=32, warmup=8000, max_steps=20000),
        paper=dict(seq_len=1000, dim=256, depth=4, heads=4, mlp_ratio=4.0, dropout=0.1, pool="cls", lr=0.05,
                   lr_schedule="rsqrt", warmup=8000, weight_decay=0.1, batch_size=32, max_steps=20000)),
    smoke=LRA_SMOKE,
    sequence_length=_lra_tokens,
))


register_recipe(TaskRecipe(
    "lra-image",
    "LRA Image: CIFAR-10 as 1,024 greyscale pixel tokens (accuracy)",
    settings=LRA_SETTINGS,
    default_recipe="small",
    recipes=_lra_recipes(
        small=dict(batch_size=256, warmup=175, max_steps=35000),
        paper=dict(dim=128, depth=1, heads=8, mlp_ratio=1.0, dropout=0.3, pool="cls", lr=5e-4, lr_schedule="cosine",
                   warmup=175, weight_decay=0.0, batch_size=256, max_steps=35000)),
    smoke=dict(dim=16, depth=1, heads=2),
    sequence_length=lambda cfg: 1024 + (cfg["pool"] == "cls"),
))


register_recipe(TaskRecipe(
    "lra-retrieval",
    "LRA Retrieval: do two AAN papers cite each other, 2 x 4K bytes (accuracy)",
    settings=LRA_SETTINGS,
    default_recipe="small",
    recipes=_lra_recipes(
        small=dict(seq_len=4000, batch_size=32, warmup=800, max_steps=30000),
        paper=dict(seq_len=4000, dim=128, depth=4, heads=4, mlp_ratio=4.0, dropout=0.1, pool="cls", lr=0.05,
                   lr_schedule="rsqrt", warmup=8000, weight_decay=0.1, batch_size=32, max_steps=5000)),
    smoke=LRA_SMOKE,
    sequence_length=_lra_tokens,
))


DATA_SEED = S("data_seed", "int", "LRA generated data: the generator's seed (the data stay the same whatever --seed)",
              lo=0, hi=2**32 - 1)


register_recipe(TaskRecipe(
    "lra-listops",
    "LRA ListOps: the value of nested MAX/MIN/MED/SUM_MOD expressions, up to 2K tokens (accuracy)",
    settings=LRA_SETTINGS + (DATA_SEED,),
    defaults=dict(data_seed=0),
    default_recipe="small",
    recipes=_lra_recipes(
        small=dict(seq_len=2000, batch_size=32, warmup=1000, max_steps=5000),
        paper=dict(seq_len=2000, dim=512, depth=4, heads=8, mlp_ratio=2.0, dropout=0.1, pool="cls", lr=0.05,
                   lr_schedule="rsqrt", warmup=1000, weight_decay=0.1, batch_size=32, max_steps=5000)),
    smoke=LRA_SMOKE,
    sequence_length=_lra_tokens,
))


RESOLUTION = S("resolution", "int", "LRA Pathfinder: image side in pixels; LRA released 32, 64, 128 (Path-X) and 256",
               choices=(32, 64, 128, 256))


def _pixels(cfg) -> int:
    return cfg["resolution"] ** 2 + (cfg["pool"] == "cls")


register_recipe(TaskRecipe(
    "lra-pathfinder",
    "LRA Pathfinder: are two discs joined by a dashed path, 32 x 32 = 1,024 pixels (accuracy)",
    settings=LRA_SETTINGS + (DATA_SEED, RESOLUTION),
    defaults=dict(data_seed=0, resolution=32),
    default_recipe="small",
    recipes=_lra_recipes(
        small=dict(batch_size=256, warmup=312, max_steps=62400),
        paper=dict(dim=32, depth=4, heads=4, mlp_ratio=1.0, dropout=0.2, pool="mean", lr=1e-3, lr_schedule="cosine",
                   warmup=312, weight_decay=0.0, batch_size=512, max_steps=62400)),
    smoke=dict(dim=16, depth=1, heads=2),
    sequence_length=_pixels,
))


register_recipe(TaskRecipe(
    "lra-pathx",
    "LRA Path-X: Pathfinder at 128 x 128 = 16,384 pixels (accuracy; every model in the paper fails)",
    settings=LRA_SETTINGS + (DATA_SEED, RESOLUTION),
    defaults=dict(data_seed=0, resolution=128),
    default_recipe="small",
    recipes=_lra_recipes(
        # the reproductions did not run Path-X; their Pathfinder settings with a batch that fits 16K tokens
        small=dict(batch_size=32, warmup=312, max_steps=62400),
        paper=dict(dim=32, depth=1, heads=2, mlp_ratio=1.0, dropout=0.1, pool="mean", lr=1e-3, lr_schedule="cosine",
                   warmup=2500, weight_decay=0.0, gradient_clip_val=1.0, batch_size=64, max_steps=500000)),
    # the tests' every-mechanism matrix at 32 px: 16K tokens through the quadratic reference need ~17 GB (the
    # 128 px path is tested on its own, with a linear-time mechanism)
    smoke=dict(dim=16, depth=1, heads=2, resolution=32),
    sequence_length=_pixels,
))
