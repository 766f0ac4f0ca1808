"""Resampling without torch: previews by pixel centres and boxes, read-outs that match them, the model-input resize.

- `centre_indices`: the input sample at the centre of each output cell (nearest neighbour);
- `downsample_labels`: a label map through those indices (a preview's prediction, ground truth);
- `downsample_mean`: a map averaged over the box each output pixel covers (a preview's confidence, photo);
- `photo_preview`: the preview of a photo;
- `preview_shape`: the preview size of an image (the long side at most `PREVIEW_SIDE`);
- `resized_size` / `resize_image`: an image resized for a model of input side S (short side = S), which the
  data workers of `evaluate` do without importing torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

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
    """Box-filter resize of a (H, W) or (H, W, K) map to (h, w[, K]) float64: each output is the mean of the
    input pixels it covers (box edges rounded from an even split)."""
    height, width = values.shape[:2]
    if (height, width) == shape:
        return values.astype(np.float64)
    if values.dtype.kind in "ub" and height % shape[0] == 0 and width % shape[1] == 0:
        return _even_box_mean(values, shape)
    row_edges = np.linspace(0, height, shape[0] + 1).round().astype(np.int64)
    col_edges = np.linspace(0, width, shape[1] + 1).round().astype(np.int64)
    summed = np.add.reduceat(
        np.add.reduceat(values.astype(np.float64), row_edges[:-1], axis=0), col_edges[:-1], axis=1
    )
    counts = np.outer(np.diff(row_edges), np.diff(col_edges)).reshape(shape + (1,) * (values.ndim - 2))
    return summed / np.maximum(counts, 1)


def photo_preview(rgb: np.ndarray) -> np.ndarray:
    """The preview of an (H, W, 3) uint8 photo: box-mean resized to `preview_shape`, rounded to uint8."""
    shape = preview_shape(*rgb.shape[:2])
    if rgb.shape[:2] == shape:
        return rgb
    return downsample_mean(rgb, shape).round().astype(np.uint8)


def _even_box_mean(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`downsample_mean` of unsigned integers when the boxes are all fy x fx: the box sums are added as uint64
    slices (exact, so equal to the float64 sums of the general path in any order), 6-15x faster than
    `np.add.reduceat` on a 2048 x 1024 map."""
    (height, width), (rows, cols) = values.shape[:2], shape
    fy, fx = height // rows, width // cols
    tail = values.shape[2:]
    by_row = values.reshape(rows, fy, width, *tail)
    summed = by_row[:, 0].astype(np.uint64)
    for i in range(1, fy):
        summed += by_row[:, i]
    by_col = summed.reshape(rows, cols, fx, *tail)
    total = by_col[:, :, 0].copy()
    for j in range(1, fx):
        total += by_col[:, :, j]
    return total / float(fy * fx)


def resized_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(H', W') with the short side equal to `side` and the aspect ratio kept: (round(H f), round(W f)).

    f = max(side/H, side/W). The long side is computed as round(long * side / short), the same arithmetic as
    the transformers processor, so a rounding tie cannot split the two apart; identity when the short side
    already equals `side`.
    """
    if height <= 0 or width <= 0 or side <= 0:
        raise ValueError(f"sizes must be positive, got {height}x{width} and side {side}")
    if min(height, width) == side:
        return height, width
    if height <= width:
        return side, round(width * side / height)
    return round(height * side / width), side


def resize_image(image: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) uint8 with the short side = `side`, PIL bilinear on uint8 (docs/models.md §3).

    Returns the input unchanged when it already has the right size.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype}{image.shape}")
    height, width = image.shape[:2]
    new_height, new_width = resized_size(height, width, side)
    if (new_height, new_width) == (height, width):
        return image
    resized = Image.fromarray(image).resize((new_width, new_height), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized)
