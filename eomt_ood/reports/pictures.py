"""Pictures of an image's maps: colour maps, overlays on the photo, small JPEG thumbnails as data URIs.

Shared by the report (thumbnails of the worst images) and the explorer (`app/`), so both colour a map the same
way. Inputs are the store's preview maps (`eomt_ood.store`): confidence levels k (uint16, higher = more
in-distribution), train ids (uint8, 255 = void), the OOD mask (uint8, non-zero = invalid) and the photo
(h, w, 3) uint8. Outputs are (h, w, 3) uint8 pictures.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from eomt_ood.data.labels import IGNORE

GT_COLORS = {"invalid": (255, 0, 255), "void": (40, 40, 40)}


@lru_cache(maxsize=16)
def colormap_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table sampled from a plotly named colour scale (low -> high)."""
    from plotly.colors import get_colorscale, sample_colorscale, unlabel_rgb

    colors = sample_colorscale(get_colorscale(name), np.linspace(0.0, 1.0, 256), colortype="rgb")
    lut = np.array([unlabel_rgb(c) for c in colors], dtype=np.float64).round().astype(np.uint8)
    lut.flags.writeable = False
    return lut


def colorize_confidence(levels: np.ndarray, colormap: str = "Viridis") -> np.ndarray:
    """(h, w) uint16 confidence levels -> (h, w, 3) uint8, low confidence at the colour scale's low end."""
    return colormap_lut(colormap)[np.asarray(levels, dtype=np.uint16) >> 8]


def gray_canvas(shape: tuple[int, int]) -> np.ndarray:
    """A mid-grey (h, w, 3) uint8 base for when the photo is not available."""
    return np.full((*shape, 3), 128, dtype=np.uint8)


def blend(base: np.ndarray, layer: np.ndarray, opacity: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Alpha-blend `layer` over `base` (both (h, w, 3) uint8) with `opacity` in [0, 1], only where `mask`."""
    if base.shape != layer.shape:
        raise ValueError(f"base {base.shape} and layer {layer.shape} differ in shape")
    alpha = float(np.clip(opacity, 0.0, 1.0))
    mixed = base.astype(np.float32) * (1.0 - alpha) + layer.astype(np.float32) * alpha
    out = np.rint(mixed).astype(np.uint8)
    if mask is not None:
        out = np.where(mask[..., None], out, base)
    return out


def gt_layer(gt_label: np.ndarray, gt_invalid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(layer (h, w, 3) uint8, mask (h, w) bool) marking invalid non-void pixels (magenta) and void (dark)."""
    void = gt_label == IGNORE
    invalid = (gt_invalid != 0) & ~void
    layer = np.zeros((*gt_label.shape, 3), dtype=np.uint8)
    layer[invalid] = GT_COLORS["invalid"]
    layer[void] = GT_COLORS["void"]
    return layer, invalid | void


def shrink(picture: np.ndarray, side: int) -> np.ndarray:
    """A (h, w, 3) uint8 picture with its long side at most `side` (box filter; aspect kept)."""
    from PIL import Image

    height, width = picture.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return picture
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(picture)).resize(size, Image.Resampling.BOX))


def jpeg_data_uri(picture: np.ndarray, quality: int = 80) -> str:
    """A (h, w, 3) uint8 picture as a `data:image/jpeg;base64,...` URI (a thumbnail is a few kB)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def photo_with_ood_truth(maps: Mapping[str, Any], opacity: float = 0.6) -> np.ndarray:
    """The photo (grey without one) with the OOD ground truth over it (invalid magenta, void dark), if any."""
    base = maps.get("rgb")
    if base is None:
        base = gray_canvas(maps["pred"].shape)
    if maps.get("gt_label") is None or maps.get("gt_invalid") is None:
        return base
    layer, mask = gt_layer(maps["gt_label"], maps["gt_invalid"])
    return blend(base, layer, opacity, mask)


def report_thumbnails(reader: Any, index: int, score: str, side: int = 200) -> tuple[str, str]:
    """(photo with its OOD ground truth, confidence map of `score`) of stored image `index`, as JPEG data URIs
    with the long side `side`, from the store's previews (`eomt_ood.store.StoreReader`)."""
    maps: dict[str, Any] = {"pred": reader.preview(index, "pred")}
    for name in ("rgb", "gt_label", "gt_invalid"):
        try:
            maps[name] = reader.preview(index, name)
        except KeyError:
            maps[name] = None
    photo = photo_with_ood_truth(maps)
    confidence = colorize_confidence(reader.preview(index, f"conf/{score}"))
    return jpeg_data_uri(shrink(photo, side)), jpeg_data_uri(shrink(confidence, side))
