"""Cityscapes label ids, train ids, names and colours, taken from the cityscapesscripts label table.

Cityscapes ground truth stores *labelIds* (0..33, plus -1 for licence plates, which never appears in a uint8 PNG).
Training and evaluation use 19 *trainIds* (0..18); every label whose `ignoreInEval` is true, and every value the
table does not know, maps to `IGNORE` (255).

- `LABEL_TO_TRAIN`: (256,) uint8 lookup table, `train_ids = LABEL_TO_TRAIN[label_ids]`.
- `TRAIN_TO_LABEL`: (256,) uint8, trainId -> its labelId (255 -> 0 "unlabeled"), for writing labelIds PNGs.
- `TRAIN_ID_NAMES`: the 19 class names in trainId order ("road", "sidewalk", ..., "bicycle").
- `TRAIN_ID_COLORS`: (19, 3) uint8 Cityscapes palette in trainId order.
- `LABEL_ID_COLORS`: (256, 3) uint8 palette by labelId (the official `_gtFine_color.png` colours; unknown = black).
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS

NUM_CLASSES = 19
IGNORE = 255


def _build_tables() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], np.ndarray, np.ndarray]:
    label_to_train = np.full(256, IGNORE, dtype=np.uint8)
    train_to_label = np.zeros(256, dtype=np.uint8)  # 255 (and anything unused) -> 0 "unlabeled"
    label_colors = np.zeros((256, 3), dtype=np.uint8)
    names: list[str | None] = [None] * NUM_CLASSES
    train_colors = np.zeros((NUM_CLASSES, 3), dtype=np.uint8)
    for label in _CITYSCAPES_LABELS:
        if not 0 <= label.id < 256:
            continue  # licence plate (-1) cannot occur in a uint8 labelIds PNG
        label_colors[label.id] = label.color
        if label.ignoreInEval or not 0 <= label.trainId < NUM_CLASSES:
            continue
        label_to_train[label.id] = label.trainId
        train_to_label[label.trainId] = label.id
        names[label.trainId] = label.name
        train_colors[label.trainId] = label.color
    if any(name is None for name in names):
        raise RuntimeError(f"cityscapesscripts label table lacks trainIds: {names}")
    for table in (label_to_train, train_to_label, label_colors, train_colors):
        table.flags.writeable = False
    return label_to_train, train_to_label, tuple(names), train_colors, label_colors  # type: ignore[arg-type]


LABEL_TO_TRAIN, TRAIN_TO_LABEL, TRAIN_ID_NAMES, TRAIN_ID_COLORS, LABEL_ID_COLORS = _build_tables()


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """(H, W) integer labelIds -> (H, W) uint8 trainIds (255 = ignore); values outside 0..255 map to 255."""
    label_ids = np.asarray(label_ids)
    if label_ids.dtype == np.uint8:
        return LABEL_TO_TRAIN[label_ids]
    out = np.full(label_ids.shape, IGNORE, dtype=np.uint8)
    inside = (label_ids >= 0) & (label_ids < 256)
    out[inside] = LABEL_TO_TRAIN[label_ids[inside].astype(np.intp)]
    return out


def colorize_train_ids(train_ids: np.ndarray, ignore_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """(H, W) uint8 trainIds -> (H, W, 3) uint8 RGB with the Cityscapes palette; 255 and unknown -> `ignore_color`."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:] = ignore_color
    palette[:NUM_CLASSES] = TRAIN_ID_COLORS
    return palette[np.asarray(train_ids, dtype=np.uint8)]
