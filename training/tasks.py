"""The task registry: name -> DataModule, network, LightningModule and recipe; `train.py --model NAME` reads it.

A new task is one DataModule file and one `register_task(Task(...))` here: its recipe (`defaults`, laid over
COMMON) is the only place its default settings live, `settings` declares the keys only it has (type, range,
flag), and `smoke` holds the sizes that make its network tiny for the tests. What the network and the LightningModule need from the data (vocabulary size, classes,
normalisation) is handed to them here, by name, once the DataModule has prepared its data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import lightning as L
from torch import nn

from datamodules import CIFAR10DataModule, IMDBDataModule, InpaintingDataModule, WikiTextDataModule
from datamodules.lra_image import LRAImageDataModule
from datamodules.lra_listops import ListOpsDataModule
from datamodules.lra_pathfinder import PathfinderDataModule
from datamodules.lra_retrieval import RetrievalDataModule
from datamodules.lra_text import LRATextDataModule
from models.inpainting import TransformerInpainter, UNetInpainter
from models.language_model import LanguageModel
from models.lra import POOLS, LRAClassifier, LRAPairClassifier
from models.tasks import (
    ImageClassificationModule,
    InpaintingModule,
    LanguageModelModule,
    TaskModule,
    TextClassificationModule,
)
from models.text import TextClassifier
from models.vit import ViT
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
class Task:
    name: str
    description: str
    module: Type[TaskModule]
    build_datamodule: Callable[[Dict[str, Any]], L.LightningDataModule]
    build_network: Callable[[Dict[str, Any], Any], nn.Module]
    defaults: Dict[str, Any] = field(default_factory=dict)  # the recipe, over COMMON
    module_inputs: Callable[[Any], Dict[str, Any]] = lambda dm: {}  # what the LightningModule takes from the data
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

    def build_module(self, cfg: Dict[str, Any], dm, net: nn.Module) -> TaskModule:
        return self.module(net, cfg, **self.module_inputs(dm))

    @property
    def monitor(self) -> Tuple[str, str]:
        return self.module.monitor, self.module.monitor_mode


_TASKS: Dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def list_tasks() -> List[str]:
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_tasks())}") from None


def _data(cfg: Dict[str, Any], *keys: str) -> Dict[str, Any]:
    shared = ("data_source", "data_dir", "cache_dir", "batch_size", "num_workers", "seed")
    return {k: cfg[k] for k in shared + keys}


def _net(cfg: Dict[str, Any], *keys: str) -> Dict[str, Any]:
    return {k: cfg[k] for k in keys}


def _attention(cfg):
    return dict(attention=cfg["attention"], attention_options=dict(cfg.get("attention_options") or {}))


def _classes(dm) -> Dict[str, Any]:
    return {"num_classes": dm.num_classes}


def _normalisation(dm) -> Dict[str, Any]:
    return {"mean": tuple(dm.mean), "std": tuple(dm.std)}


# ------------------------------------------------------------------------------------------------ ViT
def _cifar(cfg):
    return CIFAR10DataModule(**_data(cfg, "augment"), image_size=cfg["image_size"])


def _vit(cfg, dm):
    return ViT(image_size=dm.image_size, patch_size=cfg["patch_size"], in_channels=dm.channels,
               num_classes=dm.num_classes, **_net(cfg, *TRANSFORMER), **_attention(cfg))


register_task(Task(
    "vit", "Vision Transformer on CIFAR-10 (top-1 / top-5 accuracy)", ImageClassificationModule, _cifar, _vit,
    defaults=dict(image_size=32, patch_size=4, dim=256, depth=6, heads=8, mlp_ratio=2.0, dropout=0.0, drop_path=0.1,
                  augment="standard", label_smoothing=0.1, batch_size=256, lr=1e-3, weight_decay=0.05,
                  warmup=0.05, max_epochs=200),
    module_inputs=_classes, smoke=dict(image_size=16, patch_size=4, **SMALL_TRANSFORMER),
    sequence_length=lambda cfg: (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1,
))


# ------------------------------------------------------------------------------------------------ IMDB
def _imdb(cfg):
    return IMDBDataModule(**_data(cfg, "tokenizer", "vocab_size", "bucket_by_length"), max_len=cfg["seq_len"])


def _text(cfg, dm):
    return TextClassifier(vocab_size=dm.vocab_size, num_classes=dm.num_classes, max_len=cfg["seq_len"],
                          **_net(cfg, *TRANSFORMER), **_attention(cfg))


register_task(Task(
    "imdb", "Transformer sentiment classifier on IMDB (accuracy, F1)", TextClassificationModule, _imdb, _text,
    defaults=dict(seq_len=512, tokenizer="bpe", vocab_size=16000, bucket_by_length=True, dim=128, depth=2, heads=4,
                  mlp_ratio=2.0, dropout=0.1, drop_path=0.0, batch_size=32, lr=5e-4, weight_decay=0.05,
                  warmup=0.1, max_epochs=4, label_smoothing=0.0),
    module_inputs=_classes, smoke=dict(tokenizer="byte", seq_len=32, **SMALL_TRANSFORMER),
    settings=(S("vocab_size", "int", "imdb: BPE vocabulary size", lo=2), S("bucket_by_length", "bool")),
    sequence_length=lambda cfg: cfg["seq_len"],
))


# ------------------------------------------------------------------------------------------------ WikiText
def _wikitext(cfg):
    return WikiTextDataModule(**_data(cfg, "tokenizer"), name=cfg["dataset"], seq_len=cfg["seq_len"])


def _lm(cfg, dm):
    return LanguageModel(vocab_size=dm.vocab_size, seq_len=cfg["seq_len"], **_net(cfg, *TRANSFORMER), **_attention(cfg))


register_task(Task(
    "wikitext", "Causal language model on WikiText-2 (perplexity, generation)", LanguageModelModule, _wikitext, _lm,
    defaults=dict(dataset="wikitext-2", tokenizer="word", seq_len=256, dim=256, depth=4, heads=4, mlp_ratio=4.0,
                  dropout=0.2, drop_path=0.0, batch_size=32, lr=1e-3, weight_decay=0.1, warmup=0.05, max_epochs=20,
                  sample_prompt="The", sample_tokens=40, temperature=0.8, top_k=40),
    module_inputs=lambda dm: {"codec": dm}, smoke=dict(seq_len=32, **SMALL_TRANSFORMER),
    settings=(S("dataset", "str", "wikitext: wikitext-2 or wikitext-103"),
              S("sample_prompt", "str", "wikitext: prompt of the samples logged while training"),
              S("sample_tokens", "int", lo=0), S("temperature", "float", lo=0), S("top_k", "int", lo=0)),
    causal=True, sequence_length=lambda cfg: cfg["seq_len"],
))


# ------------------------------------------------------------------------------------------------ inpainting
def _inpaint_data(cfg):
    return InpaintingDataModule(mask=cfg["mask"], hole_fraction=cfg["hole_fraction"],
                                **_data(cfg, "augment"), image_size=cfg["image_size"])


INPAINT = dict(image_size=32, mask="center", hole_fraction=0.25, augment="standard", loss="l1", outside_weight=0.1,
               batch_size=128, lr=1e-3, weight_decay=0.01, warmup=0.02, max_epochs=30)
INPAINT_SETTINGS = (S("mask", "str", "inpainting: center | boxes | strokes"),
                    S("hole_fraction", "float", "inpainting: fraction of the pixels masked", lo=0, hi=1, lo_open=True,
                      hi_open=True),
                    S("loss", "str"), S("outside_weight", "float", lo=0))


def _unet(cfg, dm):
    return UNetInpainter(channels=dm.channels, base=cfg["base_width"], levels=cfg["levels"])


def _inpaint_transformer(cfg, dm):
    return TransformerInpainter(image_size=dm.image_size, patch_size=cfg["patch_size"], channels=dm.channels,
                                **_net(cfg, *TRANSFORMER), **_attention(cfg))


register_task(Task(
    "inpaint-cnn", "U-Net inpainting on CIFAR-10 (PSNR, SSIM; no attention)", InpaintingModule, _inpaint_data, _unet,
    defaults=dict(INPAINT, base_width=32, levels=3), module_inputs=_normalisation,
    smoke=dict(image_size=16, base_width=8, levels=2), uses_attention=False,
    settings=INPAINT_SETTINGS + (S("base_width", "int", "inpaint-cnn: channels of the first U-Net level", lo=1),
                                 S("levels", "int", "inpaint-cnn: U-Net downsamplings", lo=1)),
))
register_task(Task(
    "inpaint-transformer", "Transformer inpainting over patches of CIFAR-10 (PSNR, SSIM)", InpaintingModule,
    _inpaint_data, _inpaint_transformer,
    defaults=dict(INPAINT, patch_size=4, dim=192, depth=6, heads=4, mlp_ratio=2.0, dropout=0.0, drop_path=0.0),
    module_inputs=_normalisation, smoke=dict(image_size=16, patch_size=4, **SMALL_TRANSFORMER),
    settings=INPAINT_SETTINGS, sequence_length=lambda cfg: (cfg["image_size"] // cfg["patch_size"]) ** 2,
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
LRA_SETTINGS = (S("pool", "str", "LRA: the classifier's pooling, cls | mean", choices=POOLS),)


def _lra_recipes(small: Dict[str, Any], paper: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {"small": {**LRA_SMALL, **small}, "paper": {**LRA_PAPER, **paper}}


def _lra_tokens(cfg) -> int:
    return cfg["seq_len"] + (cfg["pool"] == "cls")  # a CLS token goes in front


def _lra_net(cls):
    def build(cfg, dm):
        return cls(vocab_size=dm.vocab_size, num_classes=dm.num_classes, seq_len=dm.seq_len, pool=cfg["pool"],
                   **_net(cfg, *TRANSFORMER), **_attention(cfg))
    return build


LRA_SMOKE = dict(seq_len=64, dim=16, depth=1, heads=2)


def _lra_text(cfg):
    return LRATextDataModule(**_data(cfg), max_len=cfg["seq_len"])


register_task(Task(
    "lra-text", "LRA Text: byte-level IMDB sentiment, 4K bytes (accuracy)", TextClassificationModule, _lra_text,
    _lra_net(LRAClassifier), module_inputs=_classes, settings=LRA_SETTINGS, default_recipe="small",
    recipes=_lra_recipes(
        small=dict(seq_len=4096, batch_size=32, warmup=8000, max_steps=20000),
        paper=dict(seq_len=1000, dim=256, depth=4, heads=4, mlp_ratio=4.0, dropout=0.1, pool="cls", lr=0.05,
                   lr_schedule="rsqrt", warmup=8000, weight_decay=0.1, batch_size=32, max_steps=20000)),
    smoke=LRA_SMOKE, sequence_length=_lra_tokens,
))


def _lra_image(cfg):
    return LRAImageDataModule(**_data(cfg))


register_task(Task(
    "lra-image", "LRA Image: CIFAR-10 as 1,024 greyscale pixel tokens (accuracy)", TextClassificationModule,
    _lra_image, _lra_net(LRAClassifier), module_inputs=_classes, settings=LRA_SETTINGS, default_recipe="small",
    recipes=_lra_recipes(
        small=dict(batch_size=256, warmup=175, max_steps=35000),
        paper=dict(dim=128, depth=1, heads=8, mlp_ratio=1.0, dropout=0.3, pool="cls", lr=5e-4, lr_schedule="cosine",
                   warmup=175, weight_decay=0.0, batch_size=256, max_steps=35000)),
    smoke=dict(dim=16, depth=1, heads=2), sequence_length=lambda cfg: 1024 + (cfg["pool"] == "cls"),
))


def _lra_retrieval(cfg):
    return RetrievalDataModule(**_data(cfg), max_len=cfg["seq_len"])


register_task(Task(
    "lra-retrieval", "LRA Retrieval: do two AAN papers cite each other, 2 x 4K bytes (accuracy)",
    TextClassificationModule, _lra_retrieval, _lra_net(LRAPairClassifier), module_inputs=_classes,
    settings=LRA_SETTINGS, default_recipe="small",
    recipes=_lra_recipes(
        small=dict(seq_len=4000, batch_size=32, warmup=800, max_steps=30000),
        paper=dict(seq_len=4000, dim=128, depth=4, heads=4, mlp_ratio=4.0, dropout=0.1, pool="cls", lr=0.05,
                   lr_schedule="rsqrt", warmup=8000, weight_decay=0.1, batch_size=32, max_steps=5000)),
    smoke=LRA_SMOKE, sequence_length=_lra_tokens,
))


DATA_SEED = S("data_seed", "int", "LRA generated data: the generator's seed (the data stay the same whatever --seed)",
              lo=0, hi=2**32 - 1)


def _lra_listops(cfg):
    return ListOpsDataModule(**_data(cfg), seq_len=cfg["seq_len"], data_seed=cfg["data_seed"])


register_task(Task(
    "lra-listops", "LRA ListOps: the value of nested MAX/MIN/MED/SUM_MOD expressions, up to 2K tokens (accuracy)",
    TextClassificationModule, _lra_listops, _lra_net(LRAClassifier), module_inputs=_classes,
    settings=LRA_SETTINGS + (DATA_SEED,), defaults=dict(data_seed=0), default_recipe="small",
    recipes=_lra_recipes(
        small=dict(seq_len=2000, batch_size=32, warmup=1000, max_steps=5000),
        paper=dict(seq_len=2000, dim=512, depth=4, heads=8, mlp_ratio=2.0, dropout=0.1, pool="cls", lr=0.05,
                   lr_schedule="rsqrt", warmup=1000, weight_decay=0.1, batch_size=32, max_steps=5000)),
    smoke=LRA_SMOKE, sequence_length=_lra_tokens,
))


RESOLUTION = S("resolution", "int", "LRA Pathfinder: image side in pixels; LRA released 32, 64, 128 (Path-X) and 256",
               choices=(32, 64, 128, 256))


def _pathfinder(cfg):
    return PathfinderDataModule(**_data(cfg), resolution=cfg["resolution"], data_seed=cfg["data_seed"])


def _pixels(cfg) -> int:
    return cfg["resolution"] ** 2 + (cfg["pool"] == "cls")


register_task(Task(
    "lra-pathfinder", "LRA Pathfinder: are two discs joined by a dashed path, 32 x 32 = 1,024 pixels (accuracy)",
    TextClassificationModule, _pathfinder, _lra_net(LRAClassifier), module_inputs=_classes,
    settings=LRA_SETTINGS + (DATA_SEED, RESOLUTION), defaults=dict(data_seed=0, resolution=32), default_recipe="small",
    recipes=_lra_recipes(
        small=dict(batch_size=256, warmup=312, max_steps=62400),
        paper=dict(dim=32, depth=4, heads=4, mlp_ratio=1.0, dropout=0.2, pool="mean", lr=1e-3, lr_schedule="cosine",
                   warmup=312, weight_decay=0.0, batch_size=512, max_steps=62400)),
    smoke=dict(dim=16, depth=1, heads=2), sequence_length=_pixels,
))
register_task(Task(
    "lra-pathx", "LRA Path-X: Pathfinder at 128 x 128 = 16,384 pixels (accuracy; every model in the paper fails)",
    TextClassificationModule, _pathfinder, _lra_net(LRAClassifier), module_inputs=_classes,
    settings=LRA_SETTINGS + (DATA_SEED, RESOLUTION), defaults=dict(data_seed=0, resolution=128), default_recipe="small",
    recipes=_lra_recipes(
        # the reproductions did not run Path-X; their Pathfinder settings with a batch that fits 16K tokens
        small=dict(batch_size=32, warmup=312, max_steps=62400),
        paper=dict(dim=32, depth=1, heads=2, mlp_ratio=1.0, dropout=0.1, pool="mean", lr=1e-3, lr_schedule="cosine",
                   warmup=2500, weight_decay=0.0, gradient_clip_val=1.0, batch_size=64, max_steps=500000)),
    # the tests' every-mechanism matrix at 32 px: 16K tokens through the quadratic reference need ~17 GB (the
    # 128 px path is tested on its own, with a linear-time mechanism)
    smoke=dict(dim=16, depth=1, heads=2, resolution=32), sequence_length=_pixels,
))
