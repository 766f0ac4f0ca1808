"""The dataset view of the explorer: which images of a run are shown, in which order, page by page.

Pure functions on a run's per-image statistics (`eomt_ood.store.StoreReader.stats`: one (N,) float64 array per
statistic, NaN where undefined): filtering by subset and by ranges of statistics, ordering worst first, paging,
the sidebar histograms (inline SVG), the grid's thumbnails, and the images behind a confusion-matrix cell. All of
it works on index arrays, so a 4,000-image run costs a few vectorised numpy calls per rerun.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eomt_ood.bravo.scoring import lower_is_better
from eomt_ood.reports.pictures import jpeg_data_uri, shrink
from eomt_ood.reports.plots import format_value
from eomt_ood.store import preview_shape

# Statistics the grid can be sorted by, and those with a histogram and a range filter in the sidebar.
SORT_STATS = ("auprc_ood", "fpr95_ood", "miou", "ood_fraction", "mean_confidence", "ece", "auroc_ood")
FILTER_STATS = ("auprc_ood", "fpr95_ood", "miou", "ood_fraction", "mean_confidence")
# "Worst first" per statistic: True = highest first. Metrics follow the project's one direction rule; the OOD
# fraction is read as "most OOD first", the mean confidence as "least confident first".
HIGHEST_FIRST = {stat: lower_is_better(stat) for stat in SORT_STATS} | {"ood_fraction": True}
PAGE_SIZE = 24
FILTER_STEPS = 200  # a range slider moves in steps of 1/200 of its statistic's span
THUMB_SIDE = 256


def in_subset(subsets: np.ndarray, subset: str | None) -> np.ndarray:
    """Indices (int64, ascending) of the images of `subset`; all images for None or "all"."""
    if subset in (None, "all"):
        return np.arange(len(subsets))
    return np.flatnonzero(subsets == subset)


def value_span(values: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of the finite entries, None when there is none."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


def fit_range(chosen: tuple[float, float], span: tuple[float, float]) -> tuple[float, float]:
    """A range slider's (low, high) clamped into `span`, an end within one step (1/`FILTER_STEPS` of the span)
    of the span's end put on it. The browser's slider snaps both ends to its step grid whenever one moves, and
    where the grid overshoots the top by a rounding error it puts the top end one whole step lower, which would
    silently filter out the image with the largest value. (So the first step in from either end filters
    nothing; the second does.)"""
    step = (span[1] - span[0]) / FILTER_STEPS * 1.001
    low = min(max(chosen[0], span[0]), span[1])
    high = max(min(chosen[1], span[1]), span[0])
    return (span[0] if low <= span[0] + step else low), (span[1] if high >= span[1] - step else high)


def apply_ranges(
    stats: Mapping[str, np.ndarray], indices: np.ndarray, ranges: Mapping[str, tuple[float, float]]
) -> np.ndarray:
    """The images of `indices` whose statistics lie in `ranges` ({stat: (low, high)}, inclusive).

    A range that covers the whole span of a statistic over `indices` filters nothing (images without a value
    stay); a narrower one keeps only images with a finite value inside it.
    """
    keep = np.asarray(indices, dtype=np.int64)
    for stat, (low, high) in ranges.items():
        if stat not in stats:
            continue
        span = value_span(stats[stat][indices])
        if span is None or (low <= span[0] and high >= span[1]):
            continue
        values = stats[stat][keep]
        keep = keep[np.isfinite(values) & (values >= low) & (values <= high)]
    return keep


def order(
    stats: Mapping[str, np.ndarray], indices: np.ndarray, stat: str, reverse: bool = False
) -> np.ndarray:
    """`indices` worst first by `stat` (`HIGHEST_FIRST`), or best first when `reverse`; images without a value
    last either way, ties in index order."""
    indices = np.asarray(indices, dtype=np.int64)
    if stat not in stats:
        return indices
    values = stats[stat][indices]
    finite = np.isfinite(values)
    descending = HIGHEST_FIRST.get(stat, False) != reverse
    key = np.where(finite, -values if descending else values, 0.0)
    ranked = np.lexsort((indices, key, ~finite))  # last key first: finite before NaN, then value, then index
    return indices[ranked]


def order_caption(stat: str, reverse: bool = False) -> str:
    """How `order` sorts, in words: "auprc_ood, lowest first"."""
    highest = HIGHEST_FIRST.get(stat, False) != reverse
    return f"{stat}, {'highest' if highest else 'lowest'} first"


def page_count(total: int, size: int = PAGE_SIZE) -> int:
    return max(1, math.ceil(total / size))


def page_items(indices: np.ndarray, page: int, size: int = PAGE_SIZE) -> np.ndarray:
    """The images on 1-based page `page` (clamped to the pages there are)."""
    page = min(max(1, int(page)), page_count(len(indices), size))
    return indices[(page - 1) * size : page * size]


def histogram_counts(
    values: np.ndarray, span: tuple[float, float], bins: int = 24
) -> tuple[np.ndarray, np.ndarray]:
    """(counts (bins,), edges (bins + 1,)) of the finite `values` over `span` (a degenerate span is widened)."""
    low, high = span
    if high <= low:
        high = low + 1e-9
    return np.histogram(values[np.isfinite(values)], bins=bins, range=(low, high))


def histogram_picture(
    values: np.ndarray,
    span: tuple[float, float],
    selected: tuple[float, float] | None = None,
    bins: int = 24,
    size: tuple[int, int] = (40, 240),
) -> np.ndarray:
    """A small (height, width, 3) uint8 bar chart of `histogram_counts`: bars whose centre lies inside `selected`
    in blue, the others in grey, on white; bar heights proportional to the counts (a non-empty bin is at least
    one pixel tall). A picture rather than a chart: the sidebar stays light at any number of images."""
    counts, edges = histogram_counts(values, span, bins)
    height, width = size
    picture = np.full((height, width, 3), 255, np.uint8)
    peak = max(int(counts.max()), 1)
    bounds = np.linspace(0, width, bins + 1).round().astype(int)
    for k, count in enumerate(counts):
        if count == 0:
            continue
        centre = (edges[k] + edges[k + 1]) / 2
        inside = selected is None or selected[0] <= centre <= selected[1]
        bar = max(1, round(height * int(count) / peak))
        left, right = bounds[k], max(bounds[k] + 1, bounds[k + 1] - 1)  # a one-pixel gap between bars
        picture[height - bar :, left:right] = (76, 120, 168) if inside else (200, 200, 200)
    return picture


def picture_uri(picture: np.ndarray) -> str:
    """A small picture as a PNG data URI (lossless: the bars keep their exact heights)."""
    import base64

    from eomt_ood.data.png import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(picture)).decode("ascii")


# The preview maps each overlay needs besides the photo (`support.compose`).
OVERLAY_MAPS = {
    "none": (),
    "prediction": ("pred",),
    "confidence": ("conf",),
    "OOD ground truth": ("gt_label", "gt_invalid"),
    "OOD outcome": ("conf", "gt_label", "gt_invalid"),
}


def thumbnail_maps(reader: Any, index: int, overlay: str, score: str, step: int = 2) -> dict[str, Any]:
    """What `support.compose` needs for a thumbnail of stored image `index`, every `step`-th row and column of
    the previews: only the maps of `overlay`, and the photo decoded at the reduced scale straight from its JPEG
    (no full-size decode). Keys as `support.read_maps`; absent maps are None."""
    from PIL import Image

    from eomt_ood.store import unpack_array

    height, width = (int(v) for v in preview_shape(int(reader.heights[index]), int(reader.widths[index])))
    shape = (len(range(0, height, step)), len(range(0, width, step)))
    maps: dict[str, Any] = {"pred": None, "confs": {}, "gt_label": None, "gt_invalid": None, "rgb": None}
    has_gt = reader.has_ground_truth(index)
    for name in OVERLAY_MAPS.get(overlay, ()):
        if name.startswith("gt") and not has_gt:
            continue
        stored = f"conf/{score}" if name == "conf" else name
        sub = unpack_array(np.frombuffer(reader.preview_bytes(index, stored), np.uint8))[::step, ::step]
        if name == "conf":
            maps["confs"][score] = sub
        else:
            maps[name] = sub
    if maps["pred"] is None:
        maps["pred"] = np.zeros(shape, np.uint8)  # only its shape is read
    try:
        with Image.open(io.BytesIO(reader.preview_bytes(index, "rgb"))) as img:
            img.draft("RGB", (shape[1], shape[0]))  # JPEG decodes at 1/2, 1/4, 1/8 scale for free
            photo = img.convert("RGB")
            if photo.size != (shape[1], shape[0]):
                photo = photo.resize((shape[1], shape[0]), Image.Resampling.BOX)
            maps["rgb"] = np.asarray(photo)
    except KeyError:
        pass
    return maps


def thumbnail(picture: np.ndarray, side: int = THUMB_SIDE) -> str:
    """A composed (h, w, 3) uint8 picture as a small JPEG data URI for the grid."""
    return jpeg_data_uri(shrink(picture, side), quality=82)


def grid_items(
    indices: Sequence[int],
    relpaths: Sequence[str],
    sources: Sequence[str],
    stats: Mapping[str, np.ndarray],
    stat: str | None,
    extra: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The thumbnail grid's data: one {index, src, title, caption} per image. The caption is the image's file
    name, then its `stat` ("–" where undefined; left out for None), then its line of `extra`."""
    items = []
    for k, (i, src) in enumerate(zip(indices, sources, strict=True)):
        rel = relpaths[int(i)]
        parts = [rel.rsplit("/", 1)[-1]]
        if stat is not None:
            value = float(stats[stat][int(i)]) if stat in stats else math.nan
            parts.append(f"{stat} {format_value(value)}")
        if extra is not None:
            parts.append(extra[k])
        items.append({"index": int(i), "src": src, "title": rel, "caption": " · ".join(parts)})
    return items


def pooled_confusion(matrices: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(19, 19) int64 sum of the per-image confusion matrices of `indices` (rows: ground truth, columns: pred)."""
    if len(indices) == 0:
        return np.zeros(matrices.shape[1:], dtype=np.int64)
    return matrices[np.asarray(indices, dtype=np.int64)].sum(axis=0)


def cell_contributors(
    matrices: np.ndarray, indices: np.ndarray, true_class: int, pred_class: int, count: int = 12
) -> list[tuple[int, int, float]]:
    """The images of `indices` with the most pixels in confusion cell (true_class, pred_class), most first:
    [(index, pixels, share of the cell's pixels over `indices`)]; images with none are left out."""
    indices = np.asarray(indices, dtype=np.int64)
    pixels = matrices[indices, true_class, pred_class]
    total = int(pixels.sum())
    ranked = np.lexsort((indices, -pixels))[:count]
    return [(int(indices[k]), int(pixels[k]), int(pixels[k]) / total) for k in ranked if pixels[k] > 0]
