"""The compiled counting loops (eomt_ood.bravo.counting): what they count is tested through `image_statistics`
against scikit-learn and per-pixel oracles (test_bravo_score.py); here, that they refuse what would make them
index outside their tables (the compiled loops check no index), and that they run where numba cannot cache."""

import numpy as np
import pytest

from eomt_ood.bravo import counting


def _inputs(n: int = 50):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, n).astype(np.uint8)
    pred = rng.integers(0, 19, n).astype(np.uint8)
    invalid = rng.random(n) < 0.3
    return label, pred, invalid, np.zeros(2 << 13, np.int64)


def test_categorise_refuses_what_would_index_outside_the_codes():
    label, pred, invalid, codes = _inputs()
    bad_pred = pred.copy()
    bad_pred[7] = 19
    with pytest.raises(ValueError, match="below 19"):
        counting.categorise(label, bad_pred, invalid, 19, 13, codes)
    with pytest.raises(ValueError, match="codes"):
        counting.categorise(label, pred, invalid, 19, 13, codes[:-1])
    with pytest.raises(ValueError, match="codes"):
        counting.categorise(label, pred, invalid, 19, 13, codes.astype(np.int32))
    with pytest.raises(ValueError, match="codes"):  # 256 labels x 40 classes do not fit below 2^13
        counting.categorise(label, pred, invalid, 40, 13, codes)
    with pytest.raises(TypeError, match="uint8"):
        counting.categorise(label.astype(np.int16), pred, invalid, 19, 13, codes)
    with pytest.raises(TypeError, match="uint8"):
        counting.categorise(label, pred, invalid.astype(np.int32), 19, 13, codes)
    assert not codes.any(), "nothing was counted by the refused calls"


def test_categorise_counts_strided_inputs_and_any_nonzero_invalid_value():
    label, pred, invalid, codes = _inputs(100)
    wide = np.zeros(200, np.uint8)
    wide[::2] = invalid * np.uint8(200)  # invalid given as 0 / 200 in every other byte of a wider array
    levels = np.random.default_rng(1).integers(0, 1 << 16, 300).astype(np.uint16)[::3]
    category, table = counting.categorise(label[::-1], pred[::-1], wide[::2][::-1], 19, 13, codes, levels)
    lab, prd, inv = label[::-1].astype(int), pred[::-1].astype(int), invalid[::-1]
    np.testing.assert_array_equal(category, np.where(inv, 2, (lab != prd).astype(int)))
    expected = np.bincount(lab * 19 + prd + inv * (1 << 13), minlength=2 << 13)
    np.testing.assert_array_equal(codes, expected)
    # the levels counted in the same pass equal a second pass over the categories, and a plain count
    oracle = np.bincount(category.astype(int) * 65536 + levels, minlength=4 * 65536).reshape(4, 65536)
    np.testing.assert_array_equal(table, oracle)
    np.testing.assert_array_equal(counting.count_levels(category, levels), oracle)
    again, none = counting.categorise(label, pred, invalid, 19, 13, np.zeros_like(codes))
    assert none is None and np.array_equal(again[::-1], category)


def test_count_levels_refuses_mismatched_inputs():
    category = np.zeros(10, np.uint8)
    with pytest.raises(TypeError, match="uint16"):
        counting.count_levels(category, np.zeros(10, np.uint8))
    with pytest.raises(TypeError, match="10 flat uint16"):
        counting.count_levels(category, np.zeros(11, np.uint16))
    with pytest.raises(TypeError, match="flat uint8"):
        counting.count_levels(category.reshape(2, 5), np.zeros(10, np.uint16))
    label, pred, invalid, codes = _inputs(10)
    with pytest.raises(TypeError, match="10 flat uint16"):
        counting.categorise(label, pred, invalid, 19, 13, codes, np.zeros(9, np.uint16))
    with pytest.raises(TypeError, match="flat arrays of one size"):
        counting.categorise(label, pred[:9], invalid, 19, 13, codes)
    table = counting.count_levels(category[::2], np.arange(5, dtype=np.uint16))
    assert table.shape == (4, 65536) and table.dtype == np.int32
    np.testing.assert_array_equal(table[0, :5], np.ones(5))
    assert table.sum() == 5


def test_the_loops_compile_without_a_writable_cache(monkeypatch):
    # numba refuses cache=True when it finds nowhere to write (a read-only install without a home folder);
    # then the loops are compiled for the process alone.
    import numba

    asked = []
    real_njit = numba.njit

    def njit(**options):
        asked.append(options["cache"])
        if options["cache"]:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'counting.py'")
        return real_njit(**options)

    monkeypatch.setattr(counting.numba, "njit", njit)

    def add(a, out):  # pragma: no cover - compiled
        for i in range(a.size):
            out[0] += a[i]

    compiled = counting._jit(add)
    out = np.zeros(1, np.int64)
    compiled(np.arange(4, dtype=np.int64), out)
    assert asked == [True, False] and out[0] == 6
