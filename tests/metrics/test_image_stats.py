"""Sparse per-image statistics (`eomt_ood.metrics.image_stats`): exact round trips and checked decoding."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from eomt_ood.errors import UserError
from eomt_ood.metrics.image_stats import CATEGORIES, ImageSetStatistics


class Image:
    """Dense per-image statistics shaped like the evaluator's (cm (19, 19), three (65536,) histograms)."""

    def __init__(self, rng: np.random.Generator, empty_wrong: bool = False):
        self.cm = rng.integers(0, 9, size=(19, 19))
        self.correct = np.where(rng.random(65536) < 0.01, rng.integers(1, 70000, 65536), 0)
        self.wrong = np.where(rng.random(65536) < 0.005, rng.integers(1, 30, 65536), 0)
        if empty_wrong:
            self.wrong[:] = 0
        self.ood_pos = np.zeros(65536, np.int64)
        self.ood_pos[[0, 65535]] = [3, 2**33]  # the extreme levels, and a count beyond uint32


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image(rng, empty_wrong=(i == 1)) for i in range(4)]


def test_from_images_keeps_every_count(images):
    stats = ImageSetStatistics.from_images(iter(images))  # a one-pass iterable is enough
    encoded = stats.encode()
    assert encoded["correct_counts"].dtype == np.uint32 and encoded["ood_pos_counts"].dtype == np.uint64
    assert encoded["wrong_counts"].dtype == np.uint8 and encoded["cm"].dtype == np.uint8
    assert stats.wrong.row(1)[0].size == 0
    for i, image in enumerate(images):
        for name in CATEGORIES:
            np.testing.assert_array_equal(getattr(stats, name).dense(i), getattr(image, name))
    picked = stats.take(np.array([2, 2, 0]))
    np.testing.assert_array_equal(picked.correct.dense(1), images[2].correct)
    np.testing.assert_array_equal(picked.cm[2], images[0].cm)
    np.testing.assert_array_equal(stats.correct.pooled(), sum(im.correct for im in images))
    with pytest.raises(ValueError, match="at most 65536"):
        bad = Image(np.random.default_rng(1))
        bad.wrong = np.zeros(70000, np.int64)
        ImageSetStatistics.from_images([bad])


def test_encode_decode_round_trip_is_exact_through_hdf5(images, tmp_path):
    stats = ImageSetStatistics.from_images(images)
    with h5py.File(tmp_path / "stats.h5", "w") as f:
        group = f.create_group("synobjs")
        for name, array in stats.encode().items():
            group.create_dataset(name, data=array, compression="gzip", shuffle=True)
    with h5py.File(tmp_path / "stats.h5", "r") as f:
        back = ImageSetStatistics.decode({k: v[()] for k, v in f["synobjs"].items()}, "stats.h5:/synobjs")
    np.testing.assert_array_equal(back.cm, stats.cm)
    for name in CATEGORIES:
        for i, image in enumerate(images):
            np.testing.assert_array_equal(getattr(back, name).dense(i), getattr(image, name))
    assert {k: v.dtype for k, v in back.encode().items()} == {k: v.dtype for k, v in stats.encode().items()}


def _broken(encoded: dict, name: str, fn) -> dict:
    out = dict(encoded)
    out[name] = fn(out[name].copy())
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: {k: v for k, v in e.items() if k != "wrong_counts"}, "lack the dataset"),
        (lambda e: _broken(e, "cm", lambda a: a.astype(np.float64)), "'cm' must be"),
        (lambda e: _broken(e, "correct_levels", lambda a: a.astype(np.int32)), "uint16"),
        (lambda e: _broken(e, "correct_levels", lambda a: a[::-1].copy()), "strictly increasing"),
        (lambda e: _broken(e, "wrong_counts", lambda a: a * 0), "zeros"),
        (lambda e: _broken(e, "ood_pos_counts", lambda a: a[:-1]), "shaped like"),
        (lambda e: _broken(e, "ood_pos_offsets", lambda a: a[:-1]), "offsets"),
        (lambda e: _broken(e, "ood_pos_offsets", lambda a: a[::-1].copy()), "rise from 0"),
    ],
)
def test_decode_rejects_bad_data_with_one_user_error(images, change, message):
    encoded = ImageSetStatistics.from_images(images).encode()
    with pytest.raises(UserError, match=message) as err:
        ImageSetStatistics.decode(change(encoded), "run.h5:/synobjs")
    assert str(err.value).startswith("run.h5:/synobjs: ")
