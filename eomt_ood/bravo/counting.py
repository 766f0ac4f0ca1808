"""The per-pixel counting loops of BRAVO scoring, compiled (numba): one pass over an image's pixels each.

Scoring's cost beyond decoding the PNGs is counting: every pixel's (label, pred, invalid) pair and its
(category, confidence level) pair. numpy needs key arrays and a `bincount` per table, several passes over the
image: 8-10 ms per 2048x1024 image on the Intel VM of `benchmarks/results`, where one compiled pass that fills
both tables takes about 4 ms. `eomt_ood.bravo.scoring` checks the inputs, chooses the pair-code layout and
turns the tables into statistics; this module counts, and says what a pixel's category is (`_pixel`).

numba is imported with this module, so the scoring module imports it only when an image is scored (the import
and the loading of the compiled loops take about 0.35 s, once per process; `warm`). The loops are compiled
once per machine into numba's cache (next to this file, or the user's cache folder when that is read-only), or
once per process where no cache folder is writable.
"""

from __future__ import annotations

import numba
import numpy as np


def _jit(fn):
    """`numba.njit` that caches its machine code on disk where numba finds a writable place for it."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available" (read-only install, no home)
        return numba.njit(cache=False, nogil=True)(fn)


@numba.njit(inline="always")
def _pixel(lab, prd, inv, classes, invalid_bit):  # pragma: no cover - compiled
    """One pixel's pair code and category (0 = correct V, 1 = wrong V, 2 = I, 3 = void): 255 >> 6 is 3 and
    every train id >> 6 is 0, so void wins over invalid, and invalid over wrong."""
    lab, prd, inv = np.intp(lab), np.intp(prd), np.intp(inv != 0)
    code = (lab * classes + prd) | (inv << invalid_bit)
    return code, (lab >> 6) | (inv << 1) | (np.intp(lab != prd) & (inv ^ 1))


@_jit
def _categorise(label, pred, invalid, classes, invalid_bit, category, codes):  # pragma: no cover - compiled
    for i in range(label.size):
        code, cat = _pixel(label[i], pred[i], invalid[i], classes, invalid_bit)
        codes[code] += 1
        category[i] = cat


@_jit
def _categorise_and_count(
    label, pred, invalid, levels, classes, invalid_bit, category, codes, table
):  # pragma: no cover - compiled
    for i in range(label.size):
        code, cat = _pixel(label[i], pred[i], invalid[i], classes, invalid_bit)
        codes[code] += 1
        category[i] = cat
        table[cat, levels[i]] += 1


@_jit
def _count_levels(category, levels, table):  # pragma: no cover - compiled
    for i in range(levels.size):
        table[category[i] & 3, levels[i]] += 1


def categorise(
    label: np.ndarray,
    pred: np.ndarray,
    invalid: np.ndarray,
    classes: int,
    invalid_bit: int,
    codes: np.ndarray,
    levels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Each pixel's category (uint8: 0 = correct V, 1 = wrong V, 2 = I, 3 = void), adding 1 per pixel to
    `codes` (int64) at its pair code, label * classes + pred, plus 2^invalid_bit when invalid; with `levels`
    (flat uint16, one per pixel), their `count_levels` table too, in the same pass (else None).

    label, pred: flat uint8, pred below `classes` (a label outside the train ids and 255 gets a code of its
    own and a meaningless category). invalid: flat uint8 or bool, non-zero = invalid. `codes`: every code's
    count, (2^(invalid_bit + 1),) int64, with 256 * classes <= 2^invalid_bit. The compiled loops check no
    index, so this function checks what the indices depend on.
    """
    if label.dtype != np.uint8 or pred.dtype != np.uint8 or invalid.dtype not in (np.uint8, np.bool_):
        raise TypeError(
            f"expected uint8 label/pred and uint8/bool invalid, got {label.dtype}, {pred.dtype}, "
            f"{invalid.dtype}"
        )
    if not label.shape == pred.shape == invalid.shape == (label.size,):
        raise TypeError(f"expected flat arrays of one size, got {label.shape}, {pred.shape}, {invalid.shape}")
    if codes.dtype != np.int64 or codes.shape != (2 << invalid_bit,) or 256 * classes > 1 << invalid_bit:
        raise ValueError(f"codes: need ({2 << invalid_bit},) int64, got {codes.shape} {codes.dtype}")
    if pred.size and int(pred.max()) >= classes:
        raise ValueError(f"pred: values must be below {classes}")
    label, pred = np.ascontiguousarray(label), np.ascontiguousarray(pred)
    invalid = np.ascontiguousarray(invalid).view(np.uint8)
    category = np.empty(label.size, dtype=np.uint8)
    if levels is None:
        _categorise(label, pred, invalid, classes, invalid_bit, category, codes)
        return category, None
    table = _level_table(levels, label.size)
    _categorise_and_count(
        label, pred, invalid, np.ascontiguousarray(levels), classes, invalid_bit, category, codes, table
    )
    return category, table


def count_levels(category: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(4, 65536) pixel counts per (category, level) of flat uint8 categories (0..3) and uint16 levels (int32,
    or int64 where a count could pass 2^31 - 1)."""
    if category.dtype != np.uint8 or category.shape != (category.size,):
        raise TypeError(f"expected flat uint8 categories, got {category.dtype} {category.shape}")
    table = _level_table(levels, category.size)
    _count_levels(np.ascontiguousarray(category), np.ascontiguousarray(levels), table)
    return table


def _level_table(levels: np.ndarray, size: int) -> np.ndarray:
    """The zeroed (category, level) table for `size` flat uint16 levels, after checking them."""
    if levels.dtype != np.uint16 or levels.shape != (size,):
        raise TypeError(f"expected {size} flat uint16 levels, got {levels.dtype} {levels.shape}")
    return np.zeros((4, 1 << 16), dtype=np.int32 if size < 2**31 else np.int64)


def warm() -> None:
    """Load (or compile) the loops now, on one pixel. A pool worker that will count runs this as it starts, so
    that loading them (about 0.35 s with the import, once per process) overlaps its parent's own start-up
    rather than delaying the first image. (numba compiles per argument type, so any sizes do.)"""
    codes = np.zeros(2 << 8, dtype=np.int64)
    one = np.zeros(1, dtype=np.uint8)
    category, _ = categorise(one, one, one, 1, 8, codes, np.zeros(1, dtype=np.uint16))
    categorise(one, one, one, 1, 8, codes)
    count_levels(category, np.zeros(1, dtype=np.uint16))
