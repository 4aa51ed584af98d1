"""The pluggable attention block: one mechanism per file, registered by name.

    from models.attention import build_attention, list_attentions
    attn = build_attention("linformer", dim=512, heads=8, k=256, max_seq_len=4096)
"""
from .base import Attention
from .registry import attention_options, build_attention, capabilities, get_attention, list_attentions, register_attention

# importing a mechanism's module registers it
from . import softmax, naive, torch_mha, linear, performer, local, linformer, nystromformer, hybrid  # noqa: E402,F401  isort: skip

__all__ = [
    "Attention",
    "attention_options",
    "build_attention",
    "capabilities",
    "get_attention",
    "list_attentions",
    "register_attention",
]
