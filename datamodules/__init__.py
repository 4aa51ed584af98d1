"""Lightning DataModules for the task models: real loaders that also work offline from local copies
in the official layouts, plus synthetic stand-ins for tests. See common.py for source selection.

    from datamodules import IMDBDataModule
    dm = IMDBDataModule(data_source="auto", data_dir="~/data/imdb", max_len=512)
    dm.prepare_data(); dm.setup("fit"); batch = next(iter(dm.train_dataloader()))
"""
from .cifar import CIFAR10DataModule
from .common import DATA_SOURCES, DataUnavailableError, SourcedDataModule, default_cache_dir, seeded_split
from .imdb import IMDBDataModule
from .inpainting import InpaintingDataModule
from .wikitext import WikiTextDataModule

__all__ = [
    "CIFAR10DataModule",
    "DATA_SOURCES",
    "DataUnavailableError",
    "IMDBDataModule",
    "InpaintingDataModule",
    "SourcedDataModule",
    "WikiTextDataModule",
    "default_cache_dir",
    "seeded_split",
]
