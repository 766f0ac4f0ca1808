"""Registry of per-pixel confidence scores: name -> pure function `(PixelOutputs) -> (H, W) in [0, 1]`.

Higher = more in-distribution. Each score lives in `eomt_ood.confidence.scores` as one function decorated with
`@register_confidence("name")`; its docstring states the raw range and the fixed monotone map to [0, 1]
(docs/scores.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eomt_ood.confidence.outputs import PixelOutputs
from eomt_ood.errors import UserError

ConfidenceFn = Callable[[PixelOutputs], torch.Tensor]

_CONFIDENCES: dict[str, ConfidenceFn] = {}


def register_confidence(name: str) -> Callable[[ConfidenceFn], ConfidenceFn]:
    """Decorator: register a confidence function under `name` (a duplicate name is a programmer error)."""

    def decorate(fn: ConfidenceFn) -> ConfidenceFn:
        if name in _CONFIDENCES:
            raise ValueError(f"confidence {name!r} is registered twice")
        _CONFIDENCES[name] = fn
        return fn

    return decorate


def get_confidence(name: str) -> ConfidenceFn:
    """The confidence function registered as `name`; an unknown name is a `UserError` listing the valid ones."""
    try:
        return _CONFIDENCES[name]
    except KeyError:
        raise UserError(
            f"--confidence: unknown confidence {name!r}; available: {', '.join(list_confidences())}"
        ) from None


def list_confidences() -> list[str]:
    """Registered confidence names, sorted."""
    return sorted(_CONFIDENCES)
