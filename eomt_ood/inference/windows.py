"""Pure crop / stitch helpers for EoMT's windowed semantic inference (docs/models.md §3).

An image is resized so its short side is the model's input side S, cut into S x S windows along its long side
only (the official window formula, identical in the transformers port), and the per-window score maps are
summed into a canvas and divided by how many windows covered each position. Everything here is model-agnostic
and works on plain tensors, so it is tested without a network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def window_starts(length: int, side: int) -> list[int]:
    """Start offsets of the S x S windows along a long side of `length` (>= `side`) pixels.

    n = ceil(M/S), O = n*S - M, o = O/(n-1) (0 when O = 0), start_j = int(j * (S - o)); the last window ends
    exactly at M. Examples (S = 1024): 2048 -> [0, 1024]; 2500 -> [0, 738, 1476]; 1820 -> [0, 796].
    """
    if length < side:
        raise ValueError(f"the long side ({length}) must be at least the window side ({side})")
    n = math.ceil(length / side)
    overlap = n * side - length
    step_back = overlap / (n - 1) if overlap > 0 else 0
    return [int(j * (side - step_back)) for j in range(n)]


def window_counts(length: int, side: int) -> torch.Tensor:
    """(length,) float32: how many windows cover each position along the long side (>= 1 everywhere)."""
    counts = torch.zeros(length, dtype=torch.float32)
    for start in window_starts(length, side):
        counts[start : start + side] += 1
    return counts


def crop_window(image: torch.Tensor, start: int, side: int) -> torch.Tensor:
    """The window at `start` of a (..., H', W') tensor whose short side is `side`: (..., side, side).

    Windows run along the height when H' > W', else along the width (a square image has one window).
    """
    height, width = image.shape[-2:]
    if min(height, width) != side:
        raise ValueError(f"the short side of {height}x{width} must equal the window side {side}")
    if height > width:
        return image[..., start : start + side, :]
    return image[..., :, start : start + side]


def add_window(canvas: torch.Tensor, window: torch.Tensor, start: int) -> None:
    """In place: add a (K, S, S) window's maps into the (K, H', W') sum canvas at `start` on the long side."""
    crop_window(canvas, start, window.shape[-1]).add_(window)


def place_window(canvas: torch.Tensor, window: torch.Tensor, start: int, filled: int) -> int:
    """In place: put a (K, S, S) window into the (K, H', W') canvas at `start` on the long side, where the first
    `filled` positions already hold the sum of earlier windows: the overlap is added, the rest copied. Windows
    placed in `window_starts` order so fill the canvas with the same sums as zeros + `add_window` (x + 0 = x for
    the non-negative maps here), without a zero fill of the whole canvas. Returns the new `filled`."""
    side = window.shape[-1]
    height, width = canvas.shape[-2:]
    axis = -2 if height > width else -1
    region = crop_window(canvas, start, side)
    shared = max(0, min(filled - start, side))
    if shared:
        region.narrow(axis, 0, shared).add_(window.narrow(axis, 0, shared))
    region.narrow(axis, shared, side - shared).copy_(window.narrow(axis, shared, side - shared))
    return max(filled, start + side)


def average_overlaps(canvas: torch.Tensor, side: int) -> torch.Tensor:
    """In place: divide a (K, H', W') sum canvas by the window count of each position; returns the canvas.

    Counts come from `window_counts` on the long side; they are >= 1 wherever a window landed, which is every
    position, so this equals the transformers port's `sum / count.clamp(min=1)`. Only the span between the first
    and the last overlapping position is divided (elsewhere the count is 1 and x / 1 = x).
    """
    height, width = canvas.shape[-2:]
    counts = window_counts(max(height, width), side)
    shared = torch.nonzero(counts > 1).flatten()
    if shared.numel() == 0:
        return canvas
    lo, hi = int(shared[0]), int(shared[-1]) + 1
    counts = counts[lo:hi].to(canvas.device)
    if height > width:
        canvas[:, lo:hi].div_(counts[:, None])
    else:
        canvas[:, :, lo:hi].div_(counts[None, :])
    return canvas


def stitch_windows(windows: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n, K, S, S) window maps in `window_starts` order -> (K, H', W') overlap-averaged canvas (float32)."""
    side = windows.shape[-1]
    starts = window_starts(max(height, width), side)
    if len(starts) != windows.shape[0]:
        raise ValueError(
            f"{height}x{width} needs {len(starts)} windows of side {side}, got {windows.shape[0]}"
        )
    canvas = torch.zeros((windows.shape[1], height, width), dtype=torch.float32, device=windows.device)
    for window, start in zip(windows, starts, strict=True):
        add_window(canvas, window.float(), start)
    return average_overlaps(canvas, side)


def _source_taps(
    out_len: int, in_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For bilinear resizing in_len -> out_len (align_corners=False): lower index, upper index, upper weight.

    Follows PyTorch's rule: src = (dst + 0.5) * in/out - 0.5, clamped at 0; the upper tap stays on the last row.
    """
    # float32 arithmetic in PyTorch's order, so the taps and weights agree with F.interpolate bit for bit.
    scale = torch.tensor(in_len / out_len, dtype=torch.float32)
    src = ((torch.arange(out_len, dtype=torch.float32, device=device) + 0.5) * scale - 0.5).clamp(min=0)
    lower = src.floor().long().clamp(max=in_len - 1)
    upper = (lower + 1).clamp(max=in_len - 1)
    return lower, upper, src - lower


def resize_rows(maps: torch.Tensor, height: int, width: int, rows: slice) -> torch.Tensor:
    """Rows `rows` of the bilinear (align_corners=False) resize of (K, h, w) maps to (K, height, width).

    Equal (to float rounding) to `F.interpolate(maps[None], (height, width), mode="bilinear")[0][:, rows]`
    without ever holding the full (K, height, width) result: the vertical pass gathers two source rows per output
    row, the horizontal pass is `F.interpolate` with the row count unchanged (which is an exact identity in y).
    """
    in_height = maps.shape[-2]
    if in_height == height:
        # The taps would be the rows themselves with weight 0, an exact copy: skip the gather.
        band = maps[:, rows]
    else:
        lower, upper, weight = _source_taps(height, in_height, maps.device)
        lower, upper, weight = lower[rows], upper[rows], weight[rows]
        band = maps[:, lower] * (1 - weight)[:, None] + maps[:, upper] * weight[:, None]
    if band.shape[-1] == width:
        return band
    return F.interpolate(band[None], size=(band.shape[-2], width), mode="bilinear", align_corners=False)[0]
