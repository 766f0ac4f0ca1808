"""Resampling of label and level maps by pixel centres and boxes (numpy): previews, and read-outs that match them.

- `centre_indices`: the input sample at the centre of each output cell (nearest neighbour);
- `downsample_labels`: a label map through those indices (a preview's prediction, ground truth);
- `downsample_mean`: a map averaged over the box each output pixel covers (a preview's confidence, photo);
- `preview_shape`: the preview size of an image (the long side at most `PREVIEW_SIDE`).
"""

from __future__ import annotations

import numpy as np

PREVIEW_SIDE = 512


def centre_indices(length: int, size: int) -> np.ndarray:
    """(size,) int64: the index of the input sample at the centre of each of `size` equal cells over `length`."""
    return np.minimum(((np.arange(size) + 0.5) * length / size).astype(np.int64), length - 1)


def preview_shape(height: int, width: int, side: int = PREVIEW_SIDE) -> tuple[int, int]:
    """Size of the preview of an (height, width) map: the long side at most `side`, aspect kept."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def downsample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (..., H, W) integer map to (..., h, w) (pixel centres)."""
    rows, cols = centre_indices(labels.shape[-2], shape[0]), centre_indices(labels.shape[-1], shape[1])
    return labels[..., rows[:, None], cols[None, :]]


def downsample_mean(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Box-filter resize of a (H, W) map to (h, w): each output is the mean of the input pixels it covers."""
    height, width = values.shape
    if (height, width) == shape:
        return values.astype(np.float64)
    row_edges = np.linspace(0, height, shape[0] + 1).round().astype(np.int64)
    col_edges = np.linspace(0, width, shape[1] + 1).round().astype(np.int64)
    summed = np.add.reduceat(
        np.add.reduceat(values.astype(np.float64), row_edges[:-1], axis=0), col_edges[:-1], axis=1
    )
    counts = np.outer(np.diff(row_edges), np.diff(col_edges))
    return summed / np.maximum(counts, 1)
