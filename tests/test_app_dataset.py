"""The explorer's dataset view (app/dataset_view.py): filters, order, pages, histograms, thumbnails, confusion."""

from __future__ import annotations

import math

import dataset_view as dv
import numpy as np
import pytest
import support as sup

from eomt_ood.metrics.segmentation import mean_iou
from eomt_ood.store import StoreReader

NAN = math.nan


@pytest.fixture(scope="module")
def run(finished_run):
    opened = sup.open_run(finished_run)
    yield opened
    opened.reader.close()


def test_filters_order_and_pages():
    subsets = np.array(["a", "b", "a", "a", "b", "a"], dtype=object)
    stats = {
        "auprc_ood": np.array([0.5, NAN, 0.2, 0.9, 0.1, 0.2]),
        "fpr95_ood": np.array([0.3, 0.1, 0.8, NAN, 0.5, 0.4]),
    }
    assert dv.in_subset(subsets, "a").tolist() == [0, 2, 3, 5]
    assert dv.in_subset(subsets, "all").tolist() == list(range(6))
    base = dv.in_subset(subsets, "all")
    # A range covering the whole span filters nothing (the NaN image stays); a narrower one keeps finite values.
    assert dv.apply_ranges(stats, base, {"auprc_ood": (0.1, 0.9)}).tolist() == list(range(6))
    assert dv.apply_ranges(stats, base, {"auprc_ood": (0.15, 0.6)}).tolist() == [0, 2, 5]
    both = dv.apply_ranges(stats, base, {"auprc_ood": (0.15, 0.6), "fpr95_ood": (0.35, 0.8)})
    assert both.tolist() == [2, 5]
    # The ends a browser's slider sends: on its grid of 1/200 of the span, where rounding can put the top end a
    # whole step below the span's top though nobody moved it.
    span = (0.1, 0.9)
    top = span[0] + 199 * ((span[1] - span[0]) / 200)
    assert dv.fit_range((span[0], top), span) == span
    assert dv.fit_range((0.05, 2.0), span) == span  # clamped
    assert dv.fit_range((0.1 + 0.8 / 200, 0.9 - 0.8 / 200), span) == span  # a step in: no filter
    assert dv.fit_range((0.1 + 1.6 / 200, 0.9 - 1.6 / 200), span) == pytest.approx(
        (0.108, 0.892)
    )  # two steps
    kept = dv.apply_ranges(stats, base, {"auprc_ood": dv.fit_range((0.1, top), span)})
    assert kept.tolist() == list(range(6))  # the image with the largest value stays
    # Oracle: Python's sort on (missing last, value, index); AUPRC worst = lowest, FPR95 worst = highest.
    for stat, highest in (("auprc_ood", False), ("fpr95_ood", True)):
        values = stats[stat]
        expected = sorted(
            range(6),
            key=lambda i, v=values, h=highest: (
                math.isnan(v[i]),
                0 if math.isnan(v[i]) else (-v[i] if h else v[i]),
                i,
            ),
        )
        assert dv.order(stats, base, stat).tolist() == expected
        best = sorted(
            range(6),
            key=lambda i, v=values, h=highest: (
                math.isnan(v[i]),
                0 if math.isnan(v[i]) else (v[i] if h else -v[i]),
                i,
            ),
        )
        assert dv.order(stats, base, stat, reverse=True).tolist() == best
    assert dv.order_caption("auprc_ood") == "auprc_ood, lowest first"
    assert dv.order_caption("fpr95_ood", reverse=True) == "fpr95_ood, lowest first"
    assert dv.order_caption("ood_fraction") == "ood_fraction, highest first"
    indices = np.arange(50)
    assert dv.page_count(50, 24) == 3 and dv.page_count(0, 24) == 1
    assert dv.page_items(indices, 3, 24).tolist() == [48, 49]
    assert dv.page_items(indices, 9, 24).tolist() == [48, 49]  # clamped to the last page


def test_histogram_picture_bars_follow_the_counts():
    values = np.array([0.0, 0.1, 0.1, 0.1, 0.5, 0.9, 1.0, NAN])
    picture = dv.histogram_picture(values, (0.0, 1.0), (0.0, 0.5), bins=4, size=(30, 40))
    counts, _ = np.histogram(values[np.isfinite(values)], bins=4, range=(0.0, 1.0))  # oracle: numpy
    assert counts.tolist() == [4, 0, 1, 2]
    for k, count in enumerate(counts):
        column = picture[:, k * 10 + 4]
        coloured = (column != 255).any(axis=1)
        assert coloured.sum() == (0 if count == 0 else round(30 * count / 4))
        assert coloured[::-1].cumprod().sum() == coloured.sum()  # bars stand on the bottom
    blue, grey = picture[-1, 4], picture[-1, 34]
    assert blue.tolist() == [76, 120, 168] and grey.tolist() == [200, 200, 200]  # in and out of the range
    assert dv.picture_uri(picture).startswith("data:image/png;base64,")


def test_thumbnail_maps_are_the_previews_every_other_pixel(run):
    big = run.index_of("bravo_synobjs/bear/1.png")
    full = sup.read_maps(run.reader, big)
    for overlay in sup.OVERLAYS:
        thumb = dv.thumbnail_maps(run.reader, big, overlay, "rba")
        need = dv.OVERLAY_MAPS[overlay]
        assert ("conf" in need) == ("rba" in thumb["confs"])
        for name in ("gt_label", "gt_invalid", "pred"):
            if name in need:
                np.testing.assert_array_equal(thumb[name], full[name][::2, ::2])
        if "conf" in need:
            np.testing.assert_array_equal(thumb["confs"]["rba"], full["confs"]["rba"][::2, ::2])
        # The photo is the stored JPEG decoded at half scale: close to the preview photo halved.
        halved = dv.shrink(full["rgb"], full["rgb"].shape[1] // 2).astype(float)
        assert thumb["rgb"].shape == halved.shape
        assert np.abs(thumb["rgb"].astype(float) - halved).mean() < 6
    # Outcome thumbnails: the same codes as the preview's, every other pixel.
    level = 40000
    thumb = dv.thumbnail_maps(run.reader, big, "OOD outcome", "msp")
    codes = sup.outcome_map(thumb["confs"]["msp"], thumb["gt_label"], thumb["gt_invalid"], level)
    full_codes = sup.outcome_map(full["confs"]["msp"], full["gt_label"], full["gt_invalid"], level)
    np.testing.assert_array_equal(codes, full_codes[::2, ::2])
    # An image without ground truth: the GT overlays have nothing to draw and leave the photo.
    plain = run.index_of("bravo_synrain/x/5_leftImg8bit.png")
    thumb = dv.thumbnail_maps(run.reader, plain, "OOD outcome", "msp")
    assert thumb["gt_label"] is None
    np.testing.assert_array_equal(
        sup.compose(thumb, "OOD outcome", 0.6, "msp", "Viridis", level), thumb["rgb"]
    )


def test_grid_items_show_the_sort_statistic_and_missing_values_as_a_dash(run):
    stats = run.stats("msp")
    acdc = run.index_of("bravo_ACDC/fog/test/a/3_rgb_anon.png")
    bear = run.index_of("bravo_synobjs/bear/0.png")
    items = dv.grid_items([bear, acdc], run.reader.relpaths, ["a", "b"], stats, "auprc_ood", ["x", "y"])
    assert items[0] == {
        "index": bear,
        "src": "a",
        "title": "bravo_synobjs/bear/0.png",
        "caption": f"0.png · auprc_ood {stats['auprc_ood'][bear]:.4f} · x",
    }
    assert items[1]["caption"] == "3_rgb_anon.png · auprc_ood – · y"


def test_confusion_cells_and_their_images(run, finished_run):
    import json

    matrices = run.confusion_matrices()
    acdc = dv.in_subset(run.subsets, "ACDCfog")
    pooled = dv.pooled_confusion(matrices, acdc)
    # Oracle: the run's own pooled mIoU of ACDCfog (results.json, from the scorer) from the summed matrices.
    results = json.loads((finished_run / "results.json").read_text())["msp"]
    assert mean_iou(pooled) == pytest.approx(results["ACDCfog_miou_valid"], abs=1e-12)
    everything = np.arange(len(run.reader))
    found = dv.cell_contributors(matrices, everything, 2, 5, count=3)
    # Oracle: brute force over the images.
    pixels = [(int(matrices[i, 2, 5]), i) for i in everything if matrices[i, 2, 5] > 0]
    expected = sorted(pixels, key=lambda p: (-p[0], p[1]))[:3]
    total = sum(p for p, _ in pixels)
    assert [(i, n) for i, n, _ in found] == [(i, n) for n, i in expected]
    assert [share for _, _, share in found] == pytest.approx([n / total for n, _ in expected])
    assert (
        dv.cell_contributors(matrices, np.array([run.index_of("bravo_synrain/x/5_leftImg8bit.png")]), 2, 5)
        == []
    )
    assert not dv.pooled_confusion(matrices, np.array([], dtype=np.int64)).any()


def test_store_tables_are_read_once(run, finished_run):
    with StoreReader(finished_run / "predictions.h5") as reader:
        np.testing.assert_array_equal(run.confusion_matrices(), reader.image_statistics("msp").cm)
        assert run.stats("msp").keys() == reader.stats("msp").keys()
    assert run.stats("msp") is run.stats("msp") and run.confusion_matrices() is run.confusion_matrices()
    with pytest.raises(ValueError):
        run.stats("msp")["miou"][0] = 1.0  # shared between sessions: read-only
