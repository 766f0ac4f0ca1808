import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eomt_ood.data.resample import resize_image, resized_size
from eomt_ood.inference.windows import (
    average_overlaps,
    crop_window,
    resize_rows,
    stitch_windows,
    window_counts,
    window_starts,
)


@pytest.mark.parametrize(
    ("height", "width", "side", "resized", "starts"),
    [
        (1024, 2048, 1024, (1024, 2048), [0, 1024]),  # docs/models.md §3: Cityscapes, no overlap
        (1024, 2500, 1024, (1024, 2500), [0, 738, 1476]),  # docs/models.md §3: overlap o = 286
        (720, 1280, 1024, (1024, 1820), [0, 796]),  # docs/models.md §3: f = 1.4222
        (2048, 1024, 1024, (2048, 1024), [0, 1024]),  # portrait: windows run down the height
        (1500, 1000, 1024, (1536, 1024), [0, 512]),
        (100, 50, 64, (128, 64), [0, 64]),  # smaller than S: upscaled
        (40, 40, 64, (64, 64), [0]),  # square and small: one window
        (64, 65, 64, (64, 65), [0, 1]),  # one pixel too long: two windows overlapping by 63
    ],
)
def test_resized_size_and_window_starts_match_the_doc(height, width, side, resized, starts):
    assert resized_size(height, width, side) == resized
    assert window_starts(max(resized), side) == starts


def test_window_starts_follow_the_formula_and_cover_the_side():
    side = 64
    for length in range(side, 6 * side):
        starts = window_starts(length, side)
        n = math.ceil(length / side)
        overlap = n * side - length
        step = side - (overlap / (n - 1) if overlap else 0)
        assert starts == [int(j * step) for j in range(n)]
        assert starts[0] == 0 and starts[-1] + side == length  # flush with both ends
        assert all(b - a <= side for a, b in itertools.pairwise(starts))  # no gaps
        assert window_counts(length, side).min() >= 1


def test_window_starts_rejects_a_short_side():
    with pytest.raises(ValueError):
        window_starts(63, 64)


def test_resize_image_is_pil_bilinear_and_identity_at_the_right_size():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = resize_image(image, 64)
    assert out.shape == (64, 107, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(image).resize((107, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, expected)
    same = rng.integers(0, 256, (64, 90, 3), dtype=np.uint8)
    assert resize_image(same, 64) is same


def test_crop_window_runs_along_the_long_side():
    landscape = torch.arange(4 * 10).reshape(1, 4, 10)
    assert torch.equal(crop_window(landscape, 3, 4), landscape[..., :, 3:7])
    portrait = torch.arange(10 * 4).reshape(1, 10, 4)
    assert torch.equal(crop_window(portrait, 6, 4), portrait[..., 6:10, :])


def test_stitch_of_constant_windows_gives_known_averages():
    side, width = 64, 150  # starts 0, 43, 86: columns 43..63 and 86..106 covered twice
    starts = window_starts(width, side)
    assert starts == [0, 43, 86]
    windows = torch.stack([torch.full((2, side, side), float(v)) for v in (1.0, 2.0, 4.0)])
    canvas = stitch_windows(windows, side, width)
    row = canvas[0, 5]
    assert torch.all(row[:43] == 1) and torch.all(row[43:64] == 1.5)
    assert torch.all(row[64:86] == 2) and torch.all(row[86:107] == 3) and torch.all(row[107:] == 4)
    assert torch.equal(canvas[0], canvas[1])


def test_stitch_matches_the_transformers_count_canvas_on_a_portrait_image():
    side, height = 32, 90
    starts = window_starts(height, side)
    windows = torch.randn(len(starts), 3, side, side)
    total = torch.zeros(3, height, side)
    count = torch.zeros(3, height, side)
    for window, start in zip(windows, starts, strict=True):
        total[:, start : start + side] += window
        count[:, start : start + side] += 1
    torch.testing.assert_close(stitch_windows(windows, height, side), total / count.clamp(min=1))


def test_average_overlaps_of_summed_ones_is_one():
    canvas = torch.zeros(1, 64, 200)
    for start in window_starts(200, 64):
        canvas[:, :, start : start + 64] += 1
    assert torch.equal(average_overlaps(canvas, 64), torch.ones(1, 64, 200))


@pytest.mark.parametrize(("src", "dst"), [((7, 9), (20, 13)), ((32, 64), (64, 128)), ((50, 40), (17, 100))])
def test_resize_rows_in_bands_equals_a_full_bilinear_resize(src, dst):
    maps = torch.randn(3, *src)
    full = F.interpolate(maps[None], size=dst, mode="bilinear", align_corners=False)[0]
    bands = [resize_rows(maps, *dst, slice(top, min(top + 6, dst[0]))) for top in range(0, dst[0], 6)]
    torch.testing.assert_close(torch.cat(bands, 1), full, atol=2e-6, rtol=0)


def test_resize_rows_is_exact_identity_at_the_same_size():
    maps = torch.randn(2, 9, 11)
    assert torch.equal(resize_rows(maps, 9, 11, slice(2, 7)), maps[:, 2:7])


def test_placing_windows_equals_adding_them_to_zeros():
    """`place_window` (copy where nothing is yet, add on the overlap) gives exactly zeros + `add_window`, for
    windows along the width and along the height, with and without overlaps; every position gets written."""
    from eomt_ood.inference.windows import add_window, place_window

    torch.manual_seed(0)
    for height, width in ((64, 200), (64, 128), (170, 64), (64, 64)):
        side = 64
        starts = window_starts(max(height, width), side)
        windows = torch.rand(len(starts), 3, side, side)
        added = torch.zeros(3, height, width)
        placed = torch.full((3, height, width), float("nan"))  # unwritten positions would stay NaN
        filled = 0
        for window, start in zip(windows, starts, strict=True):
            add_window(added, window, start)
            filled = place_window(placed, window, start, filled)
        assert torch.equal(placed, added)
        assert torch.equal(
            average_overlaps(placed.clone(), side),
            added / window_counts(max(height, width), side).view((-1, 1) if height > width else (1, -1)),
        )
