"""Per-image sufficient statistics of BRAVO scoring in sparse form, for storage and for resampling images.

Per image: a (C, C) confusion matrix over every V pixel and three level histograms (``correct``, ``wrong``: V
pixels by conf level with pred == / != GT; ``ood_pos``: I pixels by conf level). A 2 MP image fills tens of
thousands of its 65,536 levels per histogram, so each histogram keeps only its non-empty levels (uint16) and
their counts, concatenated over the images of a subset with offsets (compressed rows). `ImageSetStatistics.encode`
gives plain arrays for HDF5 datasets (about 410 KB per realistic 2 MP image raw, 110 KB with gzip + shuffle,
against 1.5 MB of dense int64 histograms); `ImageSetStatistics.decode` checks them and gives them back.
`eomt_ood.metrics.bootstrap` resamples them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from eomt_ood.errors import UserError
from eomt_ood.metrics.histogram import NUM_LEVELS

CATEGORIES = ("correct", "wrong", "ood_pos")
"""The three per-image level histograms, in storage order."""


def _min_uint(high: int) -> np.dtype:
    """The smallest unsigned dtype that holds `high`."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if high <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


@dataclass(frozen=True)
class SparseHistograms:
    """Level histograms of n images in compressed-row form.

    Row i (image i) holds ``levels[offsets[i]:offsets[i + 1]]`` (uint16, strictly increasing) with the matching
    ``counts`` (unsigned, > 0); every other level of that image is 0. ``offsets``: (n + 1,) int64, from 0 to nnz.
    """

    levels: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    num_levels: int = NUM_LEVELS

    @property
    def n_images(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def nbytes(self) -> int:
        return self.levels.nbytes + self.counts.nbytes + self.offsets.nbytes

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(levels, counts) of image i: views, sorted by level."""
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.levels[start:end], self.counts[start:end]

    def dense(self, i: int) -> np.ndarray:
        """(num_levels,) int64 histogram of image i."""
        out = np.zeros(self.num_levels, dtype=np.int64)
        levels, counts = self.row(i)
        out[levels] = counts
        return out

    def pooled(self) -> np.ndarray:
        """(num_levels,) int64 sum over all images (the subset histogram)."""
        out = np.zeros(self.num_levels)
        step = 1 << 22  # stored levels per bincount: bounds the temporary copies (~64 MiB)
        for begin in range(0, self.levels.size, step):
            levels, counts = self.levels[begin : begin + step], self.counts[begin : begin + step]
            # float64 sums of integer counts are exact far beyond any pixel count (2**53).
            out += np.bincount(levels, weights=counts.astype(np.float64), minlength=self.num_levels)
        return out.astype(np.int64)

    def take(self, indices: np.ndarray) -> SparseHistograms:
        """The rows `indices` (any order, repeats allowed) as a new set."""
        rows = [self.row(int(i)) for i in np.asarray(indices, dtype=np.int64)]
        return _from_rows(rows, self.num_levels, self.counts.dtype)

    @classmethod
    def from_dense(cls, rows: Iterable[np.ndarray]) -> SparseHistograms:
        """From dense (num_levels,) non-negative integer rows (one per image)."""
        sparse, num_levels, high = [], None, 0
        for row in rows:
            row = np.asarray(row)
            if num_levels is None:
                num_levels = row.shape[0]
            levels = np.flatnonzero(row)
            counts = row[levels]
            if counts.size:
                high = max(high, int(counts.max()))
            sparse.append((levels.astype(np.uint16), counts.astype(np.uint64)))
        return _from_rows(sparse, num_levels or NUM_LEVELS, _min_uint(high))


def _from_rows(rows: list, num_levels: int, count_dtype: np.dtype) -> SparseHistograms:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([levels.size for levels, _ in rows], out=offsets[1:])
    if rows:
        levels = np.concatenate([r[0] for r in rows]).astype(np.uint16, copy=False)
        counts = np.concatenate([r[1] for r in rows]).astype(count_dtype, copy=False)
    else:
        levels, counts = np.zeros(0, np.uint16), np.zeros(0, count_dtype)
    return SparseHistograms(levels, counts, offsets, num_levels)


@dataclass(frozen=True)
class ImageSetStatistics:
    """Per-image statistics of the n images of one subset (one run), in a fixed image order.

    - ``cm``: (n, C, C) int64 confusion matrices (rows = GT class, cols = pred) over every V pixel.
    - ``correct`` / ``wrong``: V pixels per conf level with pred == / != GT; ``ood_pos``: I pixels per conf
      level (the OOD negatives are ``correct + wrong``). Higher level = more in-distribution.

    With the official sample, the histograms count the sampled pixels and ``cm`` still every V pixel.
    """

    cm: np.ndarray
    correct: SparseHistograms
    wrong: SparseHistograms
    ood_pos: SparseHistograms

    def __post_init__(self) -> None:
        n = self.cm.shape[0]
        for name in CATEGORIES:
            if getattr(self, name).n_images != n:
                raise ValueError(f"{name}: {getattr(self, name).n_images} images, the cm has {n}")

    @property
    def n_images(self) -> int:
        return self.cm.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the encoded arrays (before any HDF5 compression)."""
        return sum(a.nbytes for a in self.encode().values())

    @classmethod
    def from_images(cls, images: Iterable) -> ImageSetStatistics:
        """From per-image objects with ``cm`` (C, C) and ``correct`` / ``wrong`` / ``ood_pos`` (L,) arrays.

        Any iterable (a generator too), e.g. the evaluator's per-image statistics in image order; only the
        sparse form is kept, so memory grows with the non-empty levels, not with 3 x 65,536 per image.
        """
        cms: list[np.ndarray] = []
        rows: dict[str, list] = {name: [] for name in CATEGORIES}
        high = dict.fromkeys(CATEGORIES, 0)
        num_levels = None
        for image in images:
            cms.append(np.asarray(image.cm, dtype=np.int64))
            for name in CATEGORIES:
                dense = np.asarray(getattr(image, name))
                if num_levels is None:
                    num_levels = dense.shape[0]
                if dense.shape != (num_levels,) or num_levels > NUM_LEVELS:
                    raise ValueError(
                        f"{name}: expected ({num_levels},) level counts (at most 65536 levels), got {dense.shape}"
                    )
                levels = np.flatnonzero(dense)
                counts = dense[levels]
                if counts.size:
                    high[name] = max(high[name], int(counts.max()))
                # uint32 already: per-image counts stay far below 2**32, and the int64 copies would dominate memory.
                dtype = np.uint32 if high[name] < 2**32 else np.uint64
                rows[name].append((levels.astype(np.uint16), counts.astype(dtype)))
        if num_levels is None:
            raise ValueError("no images")
        hists = {name: _from_rows(rows[name], num_levels, _min_uint(high[name])) for name in CATEGORIES}
        return cls(np.stack(cms), **hists)

    def take(self, indices: np.ndarray) -> ImageSetStatistics:
        """The images `indices` (e.g. the images two runs share), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSetStatistics(
            self.cm[indices], *(getattr(self, name).take(indices) for name in CATEGORIES)
        )

    def encode(self) -> dict[str, np.ndarray]:
        """Plain arrays for HDF5 datasets (compress with gzip + shuffle there).

        ``cm``: (n, C, C) smallest unsigned dtype; per category ``<name>_levels`` (nnz,) uint16,
        ``<name>_counts`` (nnz,) smallest unsigned dtype, ``<name>_offsets`` (n + 1,) int64.
        """
        cm_high = int(self.cm.max()) if self.cm.size else 0
        out = {"cm": self.cm.astype(_min_uint(cm_high))}
        for name in CATEGORIES:
            hist = getattr(self, name)
            high = int(hist.counts.max()) if hist.counts.size else 0
            out[f"{name}_levels"] = hist.levels.astype(np.uint16, copy=False)
            out[f"{name}_counts"] = hist.counts.astype(_min_uint(high))
            out[f"{name}_offsets"] = hist.offsets.astype(np.int64, copy=False)
        return out

    @classmethod
    def decode(cls, arrays: Mapping[str, np.ndarray], source: str = "statistics") -> ImageSetStatistics:
        """Check and load the arrays of `encode` (e.g. read back from HDF5); bad data is a `UserError` naming
        `source` (the file and group)."""

        def fail(message: str) -> UserError:
            return UserError(f"{source}: per-image statistics {message}")

        required = ["cm", *(f"{n}_{part}" for n in CATEGORIES for part in ("levels", "counts", "offsets"))]
        missing = [key for key in required if key not in arrays]
        if missing:
            raise fail(f"lack the dataset(s) {', '.join(missing)}")
        cm = np.asarray(arrays["cm"])
        if cm.ndim != 3 or cm.shape[1] != cm.shape[2] or cm.dtype.kind != "u":
            raise fail(f"'cm' must be (n, C, C) unsigned integers, got {cm.dtype} {cm.shape}")
        n = cm.shape[0]
        hists = {}
        for name in CATEGORIES:
            levels = np.asarray(arrays[f"{name}_levels"])
            counts = np.asarray(arrays[f"{name}_counts"])
            offsets = np.asarray(arrays[f"{name}_offsets"])
            if levels.dtype != np.uint16 or levels.ndim != 1:
                raise fail(f"'{name}_levels' must be 1-D uint16, got {levels.dtype} {levels.shape}")
            if counts.dtype.kind != "u" or counts.shape != levels.shape:
                raise fail(f"'{name}_counts' must be unsigned integers shaped like '{name}_levels'")
            if offsets.dtype.kind not in "iu" or offsets.shape != (n + 1,):
                raise fail(f"'{name}_offsets' must be {n + 1} integers (n images + 1)")
            offsets = offsets.astype(np.int64)
            if offsets[0] != 0 or offsets[-1] != levels.size or (np.diff(offsets) < 0).any():
                raise fail(f"'{name}_offsets' must rise from 0 to {levels.size}")
            if counts.size and counts.min() == 0:
                raise fail(f"'{name}_counts' holds zeros (only non-empty levels are stored)")
            # Levels must rise strictly inside each image; a row start may go down.
            steps = np.diff(levels.astype(np.int32)) > 0
            row_start = np.zeros(levels.size, dtype=bool)
            row_start[offsets[1:-1][offsets[1:-1] < levels.size]] = True
            if not (steps | row_start[1:]).all():
                raise fail(f"'{name}_levels' are not strictly increasing within an image")
            hists[name] = SparseHistograms(levels, counts, offsets)
        return cls(cm.astype(np.int64), **hists)


def image_set_statistics(
    cm: np.ndarray, correct: np.ndarray, wrong: np.ndarray, ood_pos: np.ndarray
) -> ImageSetStatistics:
    """From dense arrays: cm (n, C, C), correct / wrong / ood_pos (n, L) (tests and small sets)."""
    return ImageSetStatistics(
        np.asarray(cm, dtype=np.int64),
        SparseHistograms.from_dense(correct),
        SparseHistograms.from_dense(wrong),
        SparseHistograms.from_dense(ood_pos),
    )
