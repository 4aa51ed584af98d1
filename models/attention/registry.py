"""Name -> attention class. `@register_attention("name")` on a class in its own file is all it takes
to add a mechanism; `build_attention("name", dim, heads, **options)` builds one."""
from __future__ import annotations

import inspect
from typing import Dict, List, Type, Union

from .base import REGISTERED as _REGISTRY
from .base import Attention


def register_attention(name: str):
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"@register_attention needs a non-empty string name, got {name!r}")

    def decorator(cls: Type[Attention]) -> Type[Attention]:
        if not (isinstance(cls, type) and issubclass(cls, Attention)):
            raise TypeError(f"@register_attention({name!r}) must decorate a subclass of Attention, got {cls!r}")
        if name in _REGISTRY:
            prev = _REGISTRY[name]
            raise ValueError(f"attention {name!r} is already registered by {prev.__module__}.{prev.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_attentions() -> List[str]:
    return sorted(_REGISTRY)


def get_attention(name: str) -> Type[Attention]:
    if not isinstance(name, str):
        raise ValueError(f"attention must be a name, one of {', '.join(list_attentions())}; got {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attention {name!r}; known: {', '.join(list_attentions())}") from None


def attention_options(name: str) -> Dict[str, object]:
    """Keyword options a mechanism accepts beyond dim/heads, with their defaults."""
    cls = get_attention(name)
    params = inspect.signature(cls.__init__).parameters
    return {
        k: p.default
        for k, p in params.items()
        if k not in ("self", "dim", "heads") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def build_attention(name: Union[str, Type[Attention]], dim: int, heads: int = 8, **options) -> Attention:
    if isinstance(name, type) and issubclass(name, Attention):
        cls = name
    else:
        cls = get_attention(name)
    known = attention_options(cls.name) if cls.name in _REGISTRY else None
    if known is not None:
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(
                f"attention '{cls.name}' has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(sorted(known))}"
            )
    return cls(dim, heads, **options)


def capabilities() -> Dict[str, Dict[str, bool]]:
    """The declared capabilities of every registered mechanism (for tables and docs)."""
    return {
        name: {
            "mask": cls.supports_mask,
            "padding_anywhere": cls.padding_anywhere,
            "causal": cls.supports_causal,
            "always_causal": cls.always_causal,
            "weights": cls.has_weights,
            "weights_are_distributions": cls.weights_are_distributions,
            "exact": cls.exact,
            "decoding": cls.supports_decoding,
        }
        for name, cls in sorted(_REGISTRY.items())
    }
