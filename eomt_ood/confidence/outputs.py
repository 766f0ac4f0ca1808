"""The input of every confidence score: overlap-averaged per-pixel outputs of a mask-classification model.

`PixelOutputs` holds, for an image or a band of its rows, the C semantic scores s_c = sum_q softmax(z_q)[c] *
sigmoid(m_q) and the no-object mass n = sum_q softmax(z_q)[C] * sigmoid(m_q) (each in [0, Q]). The reductions
several scores and the prediction share (the max and argmax over classes, the known-class mass sum_c s_c) are
computed once per band and cached, so taking the prediction and several scores costs one pass each.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

# Pixels per step of `first_max`'s CPU loop: its per-class temporaries (a few bytes a pixel) stay in cache.
_CHUNK_PIXELS = 1 << 17


def first_max(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`scores.max(0)` of a (C, ...) tensor: the max over dim 0 and the index of its first occurrence (int64).

    On the CPU, torch reduces over a leading dimension with indices one pixel at a time (about 0.2 s for 19
    classes of a 2048 x 1024 image on one core). There, for float32 and C < 255, the max is taken with numpy's
    vectorised row maximum and the first index as min_c (c if s_c == max else 255) over uint8 rows, about 6x
    faster; a NaN anywhere falls back to torch (NaN propagates there). Same values and indices as torch (a
    maximum of +0 and -0 may come out as either zero).
    """
    if (
        scores.device.type != "cpu"
        or scores.dtype != torch.float32
        or scores.requires_grad
        or scores.dim() < 2
        or not 1 <= scores.shape[0] < 255
    ):
        return scores.max(0)
    array = scores.detach().numpy()
    values = np.empty(array.shape[1:], dtype=np.float32)
    first = np.empty(array.shape[1:], dtype=np.uint8)
    width = int(np.prod(array.shape[2:], dtype=np.int64))
    step = max(1, _CHUNK_PIXELS // max(1, width))
    equal = np.empty((min(step, array.shape[1]), *array.shape[2:]), dtype=bool)
    candidate = np.empty(equal.shape, dtype=np.uint8)
    for top in range(0, array.shape[1], step):
        block = array[:, top : top + step]
        rows = block.shape[1]
        best, index = values[top : top + rows], first[top : top + rows]
        eq, cand = equal[:rows], candidate[:rows]
        np.max(block, axis=0, out=best)
        index.fill(255)
        for c in range(array.shape[0]):
            np.not_equal(block[c], best, out=eq)  # True where class c is not the max
            np.multiply(eq.view(np.uint8), np.uint8(255 - c), out=cand)  # 0 where it is, else 255 - c
            cand += np.uint8(c)  # c where it is, 255 elsewhere
            np.minimum(index, cand, out=index)
    if np.isnan(values).any():
        return scores.max(0)
    return torch.from_numpy(values), torch.from_numpy(first).long()


class PixelOutputs:
    """class_scores: (C, H, W) float32, raw range [0, Q]; no_object: (H, W) float32, raw range [0, Q]."""

    def __init__(self, class_scores: torch.Tensor, no_object: torch.Tensor):
        self.class_scores = class_scores
        self.no_object = no_object

    @classmethod
    def from_stack(cls, stack: torch.Tensor) -> PixelOutputs:
        """Split a (C+1, H, W) stack (classes, then no-object) into its fields."""
        return cls(class_scores=stack[:-1], no_object=stack[-1])

    @cached_property
    def _top(self) -> tuple[torch.Tensor, torch.Tensor]:
        return first_max(self.class_scores.float())

    @property
    def max_score(self) -> torch.Tensor:
        """(H, W) float32 max_c s_c."""
        return self._top[0]

    @property
    def prediction(self) -> torch.Tensor:
        """(H, W) int64 argmax_c s_c (the first maximal class on ties)."""
        return self._top[1]

    @cached_property
    def known_mass(self) -> torch.Tensor:
        """(H, W) float32 k = sum_c s_c."""
        return self.class_scores.float().sum(0)
