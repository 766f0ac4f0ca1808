"""Sparse per-image statistics (`eomt_ood.metrics.image_stats`): exact round trips and checked decoding."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from eomt_ood.bravo.scoring import ImageStatistics
from eomt_ood.errors import UserError
from eomt_ood.metrics.image_stats import COLUMNS, ImageSetStatistics, image_set_statistics


def _image(rng: np.random.Generator, empty_wrong: bool = False) -> ImageStatistics:
    """Dense per-image statistics as the evaluator makes them (cm (19, 19), three (65536,) histograms)."""
    correct = np.where(rng.random(65536) < 0.01, rng.integers(1, 70000, 65536), 0)
    wrong = np.where(rng.random(65536) < 0.005, rng.integers(1, 30, 65536), 0)
    if empty_wrong:
        wrong[:] = 0
    ood_pos = np.zeros(65536, np.int64)
    ood_pos[[0, 65535]] = [3, 2**30]  # the extreme levels, and a count that needs 31 bits
    return ImageStatistics(rng.integers(0, 9, size=(19, 19)), correct, wrong, ood_pos)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [_image(rng, empty_wrong=(i == 1)) for i in range(4)]


def _dense(image: ImageStatistics) -> np.ndarray:
    return np.stack([getattr(image, name) for name in COLUMNS], axis=1)


def test_from_images_keeps_every_count(images):
    stats = ImageSetStatistics.from_images(iter(images))  # a one-pass iterable is enough
    assert stats.levels.dtype == np.uint16 and stats.counts.shape == (stats.levels.size, 3)
    for i, image in enumerate(images):
        np.testing.assert_array_equal(stats.dense(i), _dense(image))
        np.testing.assert_array_equal(stats.cm[i], image.cm)
    # One level list per image: the union of the three histograms' non-empty levels.
    union = np.flatnonzero(_dense(images[1]).any(axis=1))
    np.testing.assert_array_equal(stats.row(1)[0], union)
    assert not stats.row(1)[1][:, 1].any()
    picked = stats.take(np.array([2, 2, 0]))
    np.testing.assert_array_equal(picked.dense(1), _dense(images[2]))
    np.testing.assert_array_equal(picked.cm[2], images[0].cm)
    np.testing.assert_array_equal(stats.pooled(), sum(_dense(im) for im in images))
    dense = image_set_statistics(
        np.stack([im.cm for im in images]), *(np.stack([getattr(im, c) for im in images]) for c in COLUMNS)
    )
    for name in ("cm", "levels", "counts", "offsets"):
        np.testing.assert_array_equal(getattr(dense, name), getattr(stats, name))


def test_encode_decode_round_trip_is_exact_through_hdf5(images, tmp_path):
    stats = ImageSetStatistics.from_images(images)
    encoded = stats.encode()
    assert {k: v.dtype for k, v in encoded.items()} == {
        "cm": np.int32,
        "levels": np.uint16,
        "counts": np.int32,
        "offsets": np.int64,
    }
    with h5py.File(tmp_path / "stats.h5", "w") as f:
        group = f.create_group("synobjs")
        for name, array in encoded.items():
            group.create_dataset(name, data=array, compression="gzip", shuffle=True)
    with h5py.File(tmp_path / "stats.h5", "r") as f:
        back = ImageSetStatistics.decode({k: v[()] for k, v in f["synobjs"].items()}, "stats.h5:/synobjs")
    for i, image in enumerate(images):
        np.testing.assert_array_equal(back.dense(i), _dense(image))
    np.testing.assert_array_equal(back.cm, stats.cm)


def _broken(encoded: dict, name: str, fn) -> dict:
    out = dict(encoded)
    out[name] = fn(out[name].copy())
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: {k: v for k, v in e.items() if k != "counts"}, "lack the dataset"),
        (lambda e: _broken(e, "cm", lambda a: a.astype(np.float64)), "'cm' must be"),
        (lambda e: _broken(e, "levels", lambda a: a.astype(np.int32)), "uint16"),
        (lambda e: _broken(e, "levels", lambda a: a[::-1].copy()), "strictly increasing"),
        (lambda e: _broken(e, "counts", lambda a: -a), "negative"),
        (lambda e: _broken(e, "counts", lambda a: a[:-1]), r"must be \(\d+, 3\)"),
        (lambda e: _broken(e, "offsets", lambda a: a[:-1]), "offsets"),
        (lambda e: _broken(e, "offsets", lambda a: a[::-1].copy()), "rise from 0"),
    ],
)
def test_decode_rejects_bad_data_with_one_user_error(images, change, message):
    encoded = ImageSetStatistics.from_images(images).encode()
    with pytest.raises(UserError, match=message) as err:
        ImageSetStatistics.decode(change(encoded), "run.h5:/synobjs")
    assert str(err.value).startswith("run.h5:/synobjs: ")
