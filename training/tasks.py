"""The task registry: name -> recipe (training/recipes.py), DataModule, network and LightningModule;
`train.py --model NAME` reads it.

A new task is one DataModule file, one `register_recipe(TaskRecipe(...))` in recipes.py (its recipe is the only
place its default settings live; `settings` declares the keys only it has, `smoke` the sizes that make its
network tiny for the tests) and one `register_task(Task(...))` here. What the network and the LightningModule
need from the data (vocabulary size, classes, normalisation) is handed to them here, by name, once the
DataModule has prepared its data.
"""
from __future__ import annotations

from dataclasses import dataclass
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
from models.lra import LRAClassifier, LRAPairClassifier
from models.tasks import (
    ImageClassificationModule,
    InpaintingModule,
    LanguageModelModule,
    TaskModule,
    TextClassificationModule,
)
from models.text import TextClassifier
from models.vit import ViT
from training.recipes import RECIPES, TRANSFORMER, TaskRecipe


@dataclass(frozen=True)
class Task:
    """A recipe (training/recipes.py) and what builds its run: the DataModule, the network, the LightningModule
    and what that module takes from the data (vocabulary size, classes, normalisation)."""
    spec: TaskRecipe
    module: Type[TaskModule]
    build_datamodule: Callable[[Dict[str, Any]], L.LightningDataModule]
    build_network: Callable[[Dict[str, Any], Any], nn.Module]
    module_inputs: Callable[[Any], Dict[str, Any]] = lambda dm: {}  # what the LightningModule takes from the data

    # the recipe's fields, read through the task
    name = property(lambda self: self.spec.name)
    description = property(lambda self: self.spec.description)
    defaults = property(lambda self: self.spec.defaults)
    smoke = property(lambda self: self.spec.smoke)
    settings = property(lambda self: self.spec.settings)
    recipes = property(lambda self: self.spec.recipes)
    default_recipe = property(lambda self: self.spec.default_recipe)
    uses_attention = property(lambda self: self.spec.uses_attention)
    causal = property(lambda self: self.spec.causal)
    sequence_length = property(lambda self: self.spec.sequence_length)

    def recipe(self, name: Optional[str] = None) -> Dict[str, Any]:
        return self.spec.recipe(name)

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


register_task(Task(RECIPES["vit"], ImageClassificationModule, _cifar, _vit, module_inputs=_classes))


# ------------------------------------------------------------------------------------------------ IMDB
def _imdb(cfg):
    return IMDBDataModule(**_data(cfg, "tokenizer", "vocab_size", "bucket_by_length"), max_len=cfg["seq_len"])


def _text(cfg, dm):
    return TextClassifier(vocab_size=dm.vocab_size, num_classes=dm.num_classes, max_len=cfg["seq_len"],
                          **_net(cfg, *TRANSFORMER), **_attention(cfg))


register_task(Task(RECIPES["imdb"], TextClassificationModule, _imdb, _text, module_inputs=_classes))


# ------------------------------------------------------------------------------------------------ WikiText
def _wikitext(cfg):
    return WikiTextDataModule(**_data(cfg, "tokenizer"), name=cfg["dataset"], seq_len=cfg["seq_len"])


def _lm(cfg, dm):
    return LanguageModel(vocab_size=dm.vocab_size, seq_len=cfg["seq_len"], **_net(cfg, *TRANSFORMER), **_attention(cfg))


register_task(Task(RECIPES["wikitext"], LanguageModelModule, _wikitext, _lm, module_inputs=lambda dm: {"codec": dm}))


# ------------------------------------------------------------------------------------------------ inpainting
def _inpaint_data(cfg):
    return InpaintingDataModule(mask=cfg["mask"], hole_fraction=cfg["hole_fraction"],
                                **_data(cfg, "augment"), image_size=cfg["image_size"])




def _unet(cfg, dm):
    return UNetInpainter(channels=dm.channels, base=cfg["base_width"], levels=cfg["levels"])


def _inpaint_transformer(cfg, dm):
    return TransformerInpainter(image_size=dm.image_size, patch_size=cfg["patch_size"], channels=dm.channels,
                                **_net(cfg, *TRANSFORMER), **_attention(cfg))


register_task(Task(RECIPES["inpaint-cnn"], InpaintingModule, _inpaint_data, _unet, module_inputs=_normalisation))
register_task(Task(RECIPES["inpaint-transformer"], InpaintingModule, _inpaint_data, _inpaint_transformer, module_inputs=_normalisation))


# ------------------------------------------------------------------------------------------------ Long Range Arena
def _lra_net(cls):
    def build(cfg, dm):
        return cls(vocab_size=dm.vocab_size, num_classes=dm.num_classes, seq_len=dm.seq_len, pool=cfg["pool"],
                   **_net(cfg, *TRANSFORMER), **_attention(cfg))
    return build


def _lra_text(cfg):
    return LRATextDataModule(**_data(cfg), max_len=cfg["seq_len"])


register_task(Task(RECIPES["lra-text"], TextClassificationModule, _lra_text, _lra_net(LRAClassifier), module_inputs=_classes))


def _lra_image(cfg):
    return LRAImageDataModule(**_data(cfg))


register_task(Task(RECIPES["lra-image"], TextClassificationModule, _lra_image, _lra_net(LRAClassifier), module_inputs=_classes))


def _lra_retrieval(cfg):
    return RetrievalDataModule(**_data(cfg), max_len=cfg["seq_len"])


register_task(Task(RECIPES["lra-retrieval"], TextClassificationModule, _lra_retrieval, _lra_net(LRAPairClassifier), module_inputs=_classes))


def _lra_listops(cfg):
    return ListOpsDataModule(**_data(cfg), seq_len=cfg["seq_len"], data_seed=cfg["data_seed"])


register_task(Task(RECIPES["lra-listops"], TextClassificationModule, _lra_listops, _lra_net(LRAClassifier), module_inputs=_classes))


def _pathfinder(cfg):
    return PathfinderDataModule(**_data(cfg), resolution=cfg["resolution"], data_seed=cfg["data_seed"])


register_task(Task(RECIPES["lra-pathfinder"], TextClassificationModule, _pathfinder, _lra_net(LRAClassifier), module_inputs=_classes))
register_task(Task(RECIPES["lra-pathx"], TextClassificationModule, _pathfinder, _lra_net(LRAClassifier), module_inputs=_classes))

if set(RECIPES) != set(_TASKS):
    raise ValueError(f"every recipe needs its task and every task its recipe; recipes without a task: "
                     f"{sorted(set(RECIPES) - set(_TASKS))}, tasks without a recipe: {sorted(set(_TASKS) - set(RECIPES))}")
