"""Per-image sufficient statistics of BRAVO scoring, in the one sparse format of the project.

Per image: a (C, C) confusion matrix over every V pixel and three level histograms, ``correct`` / ``wrong``
(V pixels by conf level with pred == / != GT) and ``ood_pos`` (I pixels by conf level). A 2 MP image fills
tens of thousands of its 65,536 levels, so an image keeps only the levels where any of the three is non-zero
(``levels``, uint16, strictly increasing) with one row of three counts each (``counts``, columns in
`COLUMNS` order). The images of a set are concatenated with offsets (compressed rows): image i is
``levels[offsets[i]:offsets[i + 1]]``.

One table of three columns rather than three tables: one level list and one offset list per image, one
binary search per image when resampling, and smaller files (a realistic 2 MP image: 49k levels, about 80 kB
with gzip + shuffle against 100 kB for three separate tables). The evaluator's image records, the prediction
store (`eomt_ood.store`, which documents the file layout) and the bootstrap (`eomt_ood.metrics.bootstrap`)
all use this format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from eomt_ood.errors import UserError
from eomt_ood.metrics.histogram import NUM_LEVELS

COLUMNS = ("correct", "wrong", "ood_pos")
"""The three per-image level histograms: the columns of ``counts``, in this order."""


def sparse_levels(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, 3) dense counts of one image (columns `COLUMNS`) -> (levels (m,) uint16, counts (m, 3) int64): the
    levels where any column is non-zero, ascending."""
    dense = np.asarray(dense)
    levels = np.flatnonzero(dense.any(axis=1))
    return levels.astype(np.uint16), dense[levels].astype(np.int64)


@dataclass(frozen=True)
class ImageSetStatistics:
    """Per-image statistics of n images (e.g. one subset of one run) in a fixed image order.

    - ``cm``: (n, C, C) int64 confusion matrices (rows = GT class, cols = pred) over every V pixel.
    - ``levels``: (nnz,) uint16; ``counts``: (nnz, 3) non-negative integers (``correct``, ``wrong``,
      ``ood_pos`` at that level); ``offsets``: (n + 1,) int64 from 0 to nnz. Higher level = more
      in-distribution; the OOD negatives are ``correct + wrong``.

    With the official pixel sample, the histograms count the sampled pixels and ``cm`` still every V pixel.
    """

    cm: np.ndarray
    levels: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    num_levels: int = NUM_LEVELS

    def __post_init__(self) -> None:
        n = self.cm.shape[0]
        if self.offsets.shape != (n + 1,) or self.counts.shape != (self.levels.shape[0], 3):
            raise ValueError(
                f"{n} confusion matrices need {n + 1} offsets and (nnz, 3) counts; got "
                f"{self.offsets.shape}, {self.counts.shape} for {self.levels.shape[0]} levels"
            )

    @property
    def n_images(self) -> int:
        return self.cm.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the encoded arrays (before any HDF5 compression)."""
        return sum(a.nbytes for a in self.encode().values())

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(levels (m,), counts (m, 3)) of image i: views, sorted by level."""
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.levels[start:end], self.counts[start:end]

    def dense(self, i: int) -> np.ndarray:
        """(num_levels, 3) int64 histograms of image i."""
        out = np.zeros((self.num_levels, 3), dtype=np.int64)
        levels, counts = self.row(i)
        out[levels] = counts
        return out

    def pooled(self) -> np.ndarray:
        """(num_levels, 3) int64 sums over all images (the subset's histograms)."""
        out = np.zeros((self.num_levels, 3), dtype=np.int64)
        step = 1 << 22  # stored levels per bincount: bounds the temporary copies (~32 MiB)
        for begin in range(0, self.levels.size, step):
            levels = self.levels[begin : begin + step]
            for j in range(3):
                # float64 sums of integer counts are exact far beyond any pixel count (2**53).
                weights = self.counts[begin : begin + step, j].astype(np.float64)
                out[:, j] += np.bincount(levels, weights=weights, minlength=self.num_levels).astype(np.int64)
        return out

    def take(self, indices: np.ndarray) -> ImageSetStatistics:
        """The images `indices` (any order, repeats allowed) as a new set."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSetStatistics.from_rows(
            self.cm[indices], (self.row(int(i)) for i in indices), self.num_levels
        )

    @classmethod
    def from_rows(
        cls,
        cm: Iterable[np.ndarray] | np.ndarray,
        rows: Iterable[tuple[np.ndarray, np.ndarray]],
        num_levels: int = NUM_LEVELS,
    ) -> ImageSetStatistics:
        """From per-image confusion matrices (C, C) and sparse rows (levels (m,) uint16, counts (m, 3)), e.g.
        the records of an evaluation; the counts keep the dtype of the first row (int32 in records)."""
        cms = [np.asarray(c, dtype=np.int64) for c in cm]
        rows = list(rows)
        if len(rows) != len(cms):
            raise ValueError(f"{len(cms)} confusion matrices but {len(rows)} sparse rows")
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([np.shape(levels)[0] for levels, _ in rows], out=offsets[1:])
        if rows:
            levels = np.concatenate([np.asarray(r[0]) for r in rows]).astype(np.uint16, copy=False)
            counts = np.concatenate([np.asarray(r[1]).reshape(-1, 3) for r in rows])
        else:
            levels, counts = np.zeros(0, np.uint16), np.zeros((0, 3), np.int64)
        cm_array = np.stack(cms) if cms else np.zeros((0, 19, 19), np.int64)
        return cls(cm_array, levels, counts, offsets, num_levels)

    @classmethod
    def from_images(cls, images: Iterable) -> ImageSetStatistics:
        """From per-image objects with ``cm`` (C, C) and ``sparse_histograms()`` -> (levels, counts (m, 3)),
        e.g. `eomt_ood.bravo.scoring.ImageStatistics`; any iterable (a generator too)."""
        cms, rows = [], []
        for image in images:
            cms.append(image.cm)
            rows.append(image.sparse_histograms())
        return cls.from_rows(cms, rows)

    def encode(self) -> dict[str, np.ndarray]:
        """Plain arrays for HDF5 datasets: ``cm`` (n, C, C) int32, ``levels`` (nnz,) uint16, ``counts`` (nnz, 3)
        int32, ``offsets`` (n + 1,) int64 (compress with gzip + shuffle there). A count of one image at one
        level is at most its pixel count, far below 2**31."""
        return {
            "cm": self.cm.astype(np.int32),
            "levels": self.levels.astype(np.uint16, copy=False),
            "counts": self.counts.astype(np.int32, copy=False),
            "offsets": self.offsets.astype(np.int64, copy=False),
        }

    @classmethod
    def decode(cls, arrays: Mapping[str, np.ndarray], source: str = "statistics") -> ImageSetStatistics:
        """Check and load the arrays of `encode` (e.g. read back from HDF5); bad data is a `UserError` naming
        `source` (the file and group)."""

        def fail(message: str) -> UserError:
            return UserError(f"{source}: per-image statistics {message}")

        missing = [key for key in ("cm", "levels", "counts", "offsets") if key not in arrays]
        if missing:
            raise fail(f"lack the dataset(s) {', '.join(missing)}")
        cm = np.asarray(arrays["cm"])
        levels, counts = np.asarray(arrays["levels"]), np.asarray(arrays["counts"])
        offsets = np.asarray(arrays["offsets"])
        if cm.ndim != 3 or cm.shape[1] != cm.shape[2] or cm.dtype.kind not in "iu":
            raise fail(f"'cm' must be (n, C, C) integers, got {cm.dtype} {cm.shape}")
        n = cm.shape[0]
        if levels.dtype != np.uint16 or levels.ndim != 1:
            raise fail(f"'levels' must be 1-D uint16, got {levels.dtype} {levels.shape}")
        if counts.dtype.kind not in "iu" or counts.shape != (levels.size, 3):
            raise fail(f"'counts' must be ({levels.size}, 3) integers, got {counts.dtype} {counts.shape}")
        if offsets.dtype.kind not in "iu" or offsets.shape != (n + 1,):
            raise fail(f"'offsets' must be {n + 1} integers (n images + 1), got {offsets.shape}")
        offsets = offsets.astype(np.int64)
        if offsets[0] != 0 or offsets[-1] != levels.size or (np.diff(offsets) < 0).any():
            raise fail(f"'offsets' must rise from 0 to {levels.size}")
        if (cm.size and cm.min() < 0) or (counts.size and counts.min() < 0):
            raise fail("hold negative counts")
        # Levels must rise strictly inside each image; a row start may go down.
        steps = np.diff(levels.astype(np.int32)) > 0
        row_start = np.zeros(levels.size, dtype=bool)
        row_start[offsets[1:-1][offsets[1:-1] < levels.size]] = True
        if not (steps | row_start[1:]).all():
            raise fail("'levels' are not strictly increasing within an image")
        return cls(cm.astype(np.int64), levels, counts, offsets)


def image_set_statistics(
    cm: np.ndarray, correct: np.ndarray, wrong: np.ndarray, ood_pos: np.ndarray
) -> ImageSetStatistics:
    """From dense arrays: cm (n, C, C), correct / wrong / ood_pos (n, L) (tests and small sets)."""
    correct, wrong, ood_pos = (np.asarray(a) for a in (correct, wrong, ood_pos))
    rows = (sparse_levels(np.stack([correct[i], wrong[i], ood_pos[i]], axis=1)) for i in range(len(correct)))
    return ImageSetStatistics.from_rows(
        np.asarray(cm), rows, correct.shape[1] if correct.ndim == 2 else NUM_LEVELS
    )
