"""HDF5 store of an evaluation run's predictions, confidence maps, per-image statistics and histograms (h5py).

One file, `RUN_DIR/predictions.h5`, written once at the end of a run (to a temporary name, then renamed, so a
reader never sees a half-written store) and read by the report, the app and re-scoring without the model.

Layout::

    attrs: format, eomt_ood_version, model, confidences (list, the first is the submission's), num_levels
    images/relpath, images/subset          (N,) strings, image i's BRAVO input path and subset name
    images/height, images/width            (N,) int32
    images/<i:06d>/pred                    (H, W) uint8 train ids
    images/<i:06d>/conf/<score>            (H, W) uint16 levels k; confidence = (k + 0.5) / 65536
    images/<i:06d>/gt_label, gt_invalid    (H, W) uint8: train ids (255 void) and 0/1 invalid (with ground truth)
    images/<i:06d>/preview/...             the same maps at most PREVIEW_SIDE on the long side (nearest for
                                           labels, level mean for confidences), plus top2_class (2, h, w) uint8
                                           and top2_score (2, h, w) float16 of the normalised class scores, and
                                           rgb (h, w, 3) uint8, the input image (box-filtered)
    stats/<field>                          (N,) float64 per-image statistics (NaN where undefined)
    histograms/<score>/<subset>/<name>     (65536,) int64: correct, wrong, ood_pos, ood_neg (indexed by level)

Full-resolution maps are chunked (256 x 256) and gzip-compressed, so the app reads one image (or one zoomed
region) without touching the rest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from eomt_ood import __version__
from eomt_ood.errors import UserError

FORMAT = "eomt-ood-predictions-1"
PREVIEW_SIDE = 512
_CHUNK = 256
_STR = h5py.string_dtype(encoding="utf-8")


def preview_shape(height: int, width: int, side: int = PREVIEW_SIDE) -> tuple[int, int]:
    """Size of the preview of an (height, width) map: the long side at most `side`, aspect kept."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def downsample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (..., H, W) integer map to (..., h, w) (pixel centres)."""
    height, width = labels.shape[-2:]
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * height / shape[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * width / shape[1]).astype(np.int64), width - 1)
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


class StoreWriter:
    """Write a store to `path` atomically: use as a context manager; the file appears only on a clean exit."""

    def __init__(self, path: str | Path, *, model: str, confidences: list[str], num_levels: int = 65536):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file = h5py.File(self._tmp, "w")
        self._file.attrs.update(
            format=FORMAT,
            eomt_ood_version=__version__,
            model=model,
            num_levels=num_levels,
            confidences=np.array(confidences, dtype=object),
        )
        self._confidences = list(confidences)
        self._index: list[tuple[str, str, int, int]] = []
        self._stats: list[Mapping[str, float]] = []
        self._images = self._file.create_group("images")

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._finish()
            self._file.close()
            os.replace(self._tmp, self.path)
        else:
            self._file.close()
            self._tmp.unlink(missing_ok=True)

    def _dataset(self, group: h5py.Group, name: str, data: np.ndarray) -> None:
        chunks = tuple(min(_CHUNK, s) for s in data.shape) if data.ndim >= 2 else None
        group.create_dataset(
            name, data=data, chunks=chunks, compression="gzip", compression_opts=4, shuffle=True
        )

    def add_image(
        self,
        relpath: str,
        subset: str,
        pred: np.ndarray,
        confs: Mapping[str, np.ndarray],
        *,
        top2_class: np.ndarray | None = None,
        top2_score: np.ndarray | None = None,
        gt_label: np.ndarray | None = None,
        gt_invalid: np.ndarray | None = None,
        rgb: np.ndarray | None = None,
        stats: Mapping[str, float] | None = None,
    ) -> None:
        """Add one image: pred (H, W) uint8; confs {score: (H, W) uint16}; optional GT and previews.

        `top2_class` / `top2_score` are already at preview size ((2, h, w); see `preview_shape`); `rgb` is the
        full-size input (H, W, 3) uint8, of which only the preview is kept.
        """
        if set(confs) != set(self._confidences):
            raise ValueError(f"confidences {sorted(confs)} do not match the store's {self._confidences}")
        height, width = pred.shape
        group = self._images.create_group(f"{len(self._index):06d}")
        self._dataset(group, "pred", pred.astype(np.uint8, copy=False))
        conf_group = group.create_group("conf")
        for name, levels in confs.items():
            if levels.shape != pred.shape or levels.dtype != np.uint16:
                raise ValueError(f"{relpath}: confidence {name} must be uint16 {pred.shape}")
            self._dataset(conf_group, name, levels)
        shape = preview_shape(height, width)
        preview = group.create_group("preview")
        preview.create_dataset("pred", data=downsample_labels(pred, shape))
        preview_conf = preview.create_group("conf")
        for name, levels in confs.items():
            preview_conf.create_dataset(name, data=downsample_mean(levels, shape).round().astype(np.uint16))
        if gt_label is not None and gt_invalid is not None:
            self._dataset(group, "gt_label", gt_label.astype(np.uint8, copy=False))
            self._dataset(group, "gt_invalid", (gt_invalid != 0).astype(np.uint8))
            preview.create_dataset("gt_label", data=downsample_labels(gt_label, shape))
            preview.create_dataset(
                "gt_invalid", data=downsample_labels((gt_invalid != 0).astype(np.uint8), shape)
            )
        if rgb is not None:
            if rgb.shape != (height, width, 3):
                raise ValueError(f"{relpath}: rgb must have shape ({height}, {width}, 3), got {rgb.shape}")
            channels = [downsample_mean(rgb[..., c], shape) for c in range(3)]
            preview.create_dataset("rgb", data=np.stack(channels, -1).round().astype(np.uint8))
        if top2_class is not None and top2_score is not None:
            if top2_class.shape != (2, *shape) or top2_score.shape != (2, *shape):
                raise ValueError(f"{relpath}: top-2 previews must have shape (2, {shape[0]}, {shape[1]})")
            preview.create_dataset("top2_class", data=top2_class.astype(np.uint8))
            preview.create_dataset("top2_score", data=top2_score.astype(np.float16))
        self._index.append((relpath, subset, height, width))
        self._stats.append(dict(stats or {}))

    def add_histograms(self, score: str, subset: str, histograms: Mapping[str, np.ndarray]) -> None:
        """Store a subset's pooled histograms ({"correct", "wrong", "ood_pos", "ood_neg"} -> (65536,) int64)."""
        group = self._file.require_group(f"histograms/{score}/{subset}")
        for name, counts in histograms.items():
            group.create_dataset(name, data=np.asarray(counts, dtype=np.int64), compression="gzip")

    def _finish(self) -> None:
        relpaths, subsets, heights, widths = (
            zip(*self._index, strict=True) if self._index else ((), (), (), ())
        )
        self._images.create_dataset("relpath", data=np.array(relpaths, dtype=object), dtype=_STR)
        self._images.create_dataset("subset", data=np.array(subsets, dtype=object), dtype=_STR)
        self._images.create_dataset("height", data=np.array(heights, dtype=np.int32))
        self._images.create_dataset("width", data=np.array(widths, dtype=np.int32))
        stats = self._file.create_group("stats")
        fields = sorted({key for row in self._stats for key in row})
        for key in fields:
            stats.create_dataset(
                key, data=np.array([row.get(key, np.nan) for row in self._stats], dtype=np.float64)
            )


class StoreReader:
    """Read a store written by `StoreWriter`. Cheap to open; reads maps lazily, one image at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: prediction store not found")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise UserError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        if self._file.attrs.get("format") != FORMAT:
            raise UserError(
                f"{self.path}: not an eomt-ood prediction store (format {self._file.attrs.get('format')!r})"
            )
        images = self._file["images"]
        self.relpaths: list[str] = [s.decode() if isinstance(s, bytes) else s for s in images["relpath"][()]]
        self.subsets: list[str] = [s.decode() if isinstance(s, bytes) else s for s in images["subset"][()]]
        self.heights = images["height"][()]
        self.widths = images["width"][()]
        self.confidences: list[str] = [str(c) for c in self._file.attrs["confidences"]]
        self.model: str = str(self._file.attrs.get("model", ""))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.relpaths)

    def stats(self) -> dict[str, np.ndarray]:
        """Per-image statistics: {field: (N,) float64}."""
        return {key: ds[()] for key, ds in self._file["stats"].items()}

    def has_ground_truth(self, index: int) -> bool:
        return "gt_label" in self._file[f"images/{index:06d}"]

    def read(
        self, index: int, name: str, *, preview: bool = False, region: tuple[slice, slice] | None = None
    ):
        """One map of image `index`: "pred", "conf/<score>", "gt_label", "gt_invalid", "top2_class", "top2_score",
        "rgb" (preview only).

        `preview=True` reads the downsampled copy; `region` reads a window of the full-resolution map.
        """
        group = self._file[f"images/{index:06d}"]
        key = f"preview/{name}" if preview else name
        if key not in group:
            raise KeyError(f"image {index} has no {key!r}")
        dataset = group[key]
        return dataset[region] if region is not None else dataset[()]

    def histograms(self, score: str) -> dict[str, dict[str, np.ndarray]]:
        """{subset: {"correct", "wrong", "ood_pos", "ood_neg": (65536,) int64}} for one confidence score."""
        if f"histograms/{score}" not in self._file:
            return {}
        return {
            subset: {name: ds[()] for name, ds in group.items()}
            for subset, group in self._file[f"histograms/{score}"].items()
        }

    def iter_images(self) -> Iterator[tuple[int, str, str]]:
        yield from ((i, r, s) for i, (r, s) in enumerate(zip(self.relpaths, self.subsets, strict=True)))
