"""The 16-bit encoding of a confidence map, as BRAVO stores it (docs/metrics.md, "Confidence levels").

A confidence p in [0, 1] (higher = more in-distribution) is stored as the level k = min(floor(p * 65536), 65535)
and read back as the confidence (k + 0.5) / 65536. Both quantisers below give the same levels for float32 input:
multiplying by 65536 = 2^16 is exact in float32, so the floor sees the same number in torch and in numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from eomt_ood.errors import UserError
from eomt_ood.metrics.histogram import NUM_LEVELS

if TYPE_CHECKING:
    import torch


class NonFiniteConfidence(UserError):
    """A confidence map holds NaN: the scores of a model whose outputs were not finite."""

    def __init__(self) -> None:
        super().__init__(
            "the confidence map holds NaN: the model's outputs are not finite (NaN weights, or an overflow at "
            "--precision fp16?)"
        )


def quantise_confidence(confidence: np.ndarray) -> np.ndarray:
    """(...) confidences in [0, 1] -> uint16 levels; values outside [0, 1] are clipped, NaN is a
    `NonFiniteConfidence`."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if np.isnan(confidence).any():
        raise NonFiniteConfidence()
    levels = np.floor(np.clip(confidence, 0.0, 1.0) * NUM_LEVELS)
    return np.minimum(levels, NUM_LEVELS - 1).astype(np.uint16)


def quantise_tensor(confidence: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The same levels as `quantise_confidence`, on the tensor's device: (...) float -> int32 in [0, 65535].

    out: an integer tensor (uint16 on the host, say) of the same shape to write the levels into instead.
    """
    import torch

    if confidence.numel() and torch.isnan(confidence.max()):  # max propagates NaN: one pass, no mask
        raise NonFiniteConfidence()
    # clamp(p * 2^16, 0, 65535) then truncation equals min(floor(clamp(p, 0, 1) * 2^16), 65535): the product is
    # exact, and converting a float in [0, 65535] to an integer truncates, which is the floor there.
    scaled = confidence.float().mul(NUM_LEVELS).clamp_(0, NUM_LEVELS - 1)
    return out.copy_(scaled) if out is not None else scaled.to(torch.int32)


def confidence_of_levels(levels: np.ndarray) -> np.ndarray:
    """(...) uint16 levels -> float64 confidences (k + 0.5) / 65536."""
    return (np.asarray(levels, dtype=np.float64) + 0.5) / NUM_LEVELS
