"""The names of the model zoo: a dict, a decorator that fills it, a lookup (no model code, no imports of models).

Each model family registers its named architectures with `@register_model` where they are defined (EoMT in
`models/registry.py`, the Mask2Former baselines in `models/baselines/`); `models/registry.py` builds them by name.
Kept apart from the builder so the baselines can register without importing it (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model function under its own name; it takes only keyword overrides."""
    if fn.__name__ in MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    MODELS[fn.__name__] = fn
    return fn
