"""The tasks' LightningModules: a shared step, metrics and optimiser (base.py), handed their network and
what they need from the data by the task registry (training/tasks.py)."""
from .base import TaskModule
from .classification import ImageClassificationModule, TextClassificationModule
from .inpainting import InpaintingModule
from .language_model import LanguageModelModule

__all__ = ["ImageClassificationModule", "InpaintingModule", "LanguageModelModule", "TaskModule",
           "TextClassificationModule"]
