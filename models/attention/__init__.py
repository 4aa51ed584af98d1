"""The pluggable attention block: one mechanism per file, registered by name.

    from models.attention import build_attention, list_attentions
    attn = build_attention("linformer", dim=512, heads=8, k=256, max_seq_len=4096)

Every module in this package other than the shared ones below is imported here, so a new file with
an `@register_attention("name")` class is all it takes to add a mechanism.
"""
import importlib
import pkgutil

from .base import Attention
from .registry import (
    attention_options,
    build_attention,
    capabilities,
    get_attention,
    list_attentions,
    register_attention,
)

_SHARED = {"base", "registry", "functional", "blocked"}
for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod not in _SHARED and not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")

__all__ = [
    "Attention",
    "attention_options",
    "build_attention",
    "capabilities",
    "get_attention",
    "list_attentions",
    "register_attention",
]
