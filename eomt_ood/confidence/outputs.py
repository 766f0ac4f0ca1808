"""The input of every confidence score: overlap-averaged per-pixel outputs of a mask-classification model.

`PixelOutputs` holds, for an image or a band of its rows, the C semantic scores s_c = sum_q softmax(z_q)[c] *
sigmoid(m_q) and the no-object mass n = sum_q softmax(z_q)[C] * sigmoid(m_q) (each in [0, Q]). The reductions
several scores and the prediction share (the max and argmax over classes, the known-class mass sum_c s_c) are
computed once per band and cached, so taking the prediction and several scores costs one pass each.
"""

from __future__ import annotations

from functools import cached_property

import torch


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
        values, indices = self.class_scores.float().max(0)
        return values, indices

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
