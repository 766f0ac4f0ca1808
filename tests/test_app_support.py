"""Pure functions of the confidence explorer (app/support.py), on the shared finished run of conftest.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import support as sup
from conftest import SCORES
from sklearn.metrics import roc_curve

from eomt_ood.data.labels import TRAIN_ID_COLORS, TRAIN_ID_NAMES
from eomt_ood.errors import UserError
from eomt_ood.metrics.histogram import binary_histograms, curve_metrics
from eomt_ood.store import StoreReader


@pytest.fixture(scope="module")
def run_dir(finished_run):
    return finished_run


# ------------------------------------------------------------------------------------------------ threshold


def _direct_tpr95(doubt: np.ndarray, positive: np.ndarray) -> tuple[float, float, float]:
    """Per-pixel oracle: highest doubt value whose `doubt >= t` flags >= 95 % of positives, with its TPR/FPR."""
    for t in np.unique(doubt)[::-1]:
        flagged = doubt >= t
        tpr = flagged[positive].mean()
        if tpr >= 0.95:
            return float(t), float(tpr), float(flagged[~positive].mean())
    raise AssertionError("unreachable")


def test_tpr95_threshold_matches_per_pixel_computation():
    rng = np.random.default_rng(3)
    conf = rng.integers(0, 65536, 5000).astype(np.uint16)
    conf[:200] = 7  # a heavy tie
    positive = rng.random(5000) < 0.3 + 0.4 * (conf < 20000)
    pos, neg = binary_histograms(conf, positive)
    found = sup.tpr95_threshold(pos, neg)
    doubt = 1.0 - (conf.astype(np.float64) + 0.5) / 65536
    t, tpr, fpr = _direct_tpr95(doubt, positive)
    assert found.doubt == pytest.approx(t, abs=1e-12)
    assert (found.tpr, found.fpr) == pytest.approx((tpr, fpr))
    # scikit-learn's ROC over doubt: the first point reaching TPR 0.95 is the same operating point.
    fprs, tprs, thresholds = roc_curve(positive, doubt, drop_intermediate=False)
    first = np.argmax(tprs >= 0.95)
    assert (found.tpr, found.fpr, found.doubt) == pytest.approx((tprs[first], fprs[first], thresholds[first]))
    # The slider value maps back to the same level, so the outcome map flags exactly doubt >= t.
    assert sup.level_of_doubt(found.doubt) == found.level
    codes = sup.outcome_map(
        conf[None], np.zeros((1, 5000), np.uint8), positive[None].astype(np.uint8), found.level
    )
    assert (codes == sup.TRUE_POSITIVE).sum() == ((doubt >= t) & positive).sum()


def test_tpr95_threshold_needs_both_classes():
    assert sup.tpr95_threshold(np.zeros(65536, np.int64), np.ones(65536, np.int64)) is None
    assert sup.tpr95_threshold(np.ones(65536, np.int64), np.zeros(65536, np.int64)) is None


def test_image_histograms_drop_void_and_outcomes_partition_pixels():
    rng = np.random.default_rng(4)
    conf = rng.integers(0, 65536, (20, 30)).astype(np.uint16)
    label = rng.integers(0, 19, (20, 30)).astype(np.uint8)
    label[:3] = 255
    invalid = (rng.random((20, 30)) < 0.25).astype(np.uint8)
    pos, neg = sup.image_ood_histograms(conf, label, invalid)
    assert pos.sum() == ((invalid != 0) & (label != 255)).sum()
    assert neg.sum() == ((invalid == 0) & (label != 255)).sum()
    codes = sup.outcome_map(conf, label, invalid, 30000)
    counts = sup.outcome_counts(codes)
    flagged = 65535 - conf.astype(np.int64) >= 30000
    keep = label != 255
    assert counts["void"] == 3 * 30
    assert counts["true positive"] == (flagged & (invalid != 0) & keep).sum()
    assert counts["false positive"] == (flagged & (invalid == 0) & keep).sum()
    assert counts["false negative"] == (~flagged & (invalid != 0) & keep).sum()
    assert sum(counts.values()) == 600


def test_doubt_levels_round_trip():
    for level in (0, 1, 32767, 65535):
        assert sup.level_of_doubt(sup.doubt_of_level(level)) == level
    assert sup.doubt_of_level(65535 - 100) == pytest.approx(1 - (100 + 0.5) / 65536)


# ------------------------------------------------------------------------------------------------ overlays


def test_blend_and_prediction_overlay_use_cityscapes_colours():
    base = np.full((2, 3, 3), 100, np.uint8)
    pred = np.array([[0, 13, 255], [18, 1, 2]], np.uint8)
    maps = {"pred": pred, "confs": {"msp": np.zeros((2, 3), np.uint16)}, "rgb": base}
    full = sup.compose(maps, "prediction", 1.0, "msp")
    assert (
        full[0, 0].tolist() == TRAIN_ID_COLORS[0].tolist()
        and full[0, 1].tolist() == TRAIN_ID_COLORS[13].tolist()
    )
    assert full[0, 2].tolist() == [0, 0, 0]  # void is black
    half = sup.compose(maps, "prediction", 0.5, "msp")
    np.testing.assert_array_equal(half[1, 0], np.rint((100 + TRAIN_ID_COLORS[18].astype(float)) / 2))
    np.testing.assert_array_equal(sup.compose(maps, "prediction", 0.0, "msp"), base)
    np.testing.assert_array_equal(sup.compose(maps, "none", 0.7, "msp"), base)
    mask = np.array([[True, False, False], [False, False, False]])
    masked = sup.blend(base, np.zeros_like(base), 1.0, mask)
    assert masked[0, 0].tolist() == [0, 0, 0] and masked[0, 1].tolist() == [100, 100, 100]


def test_confidence_colours_follow_the_colour_scale():
    lut = sup.colormap_lut("Greys")
    levels = np.array([[0, 65535]], np.uint16)
    rgb = sup.colorize_confidence(levels, "Greys")
    assert rgb[0, 0].tolist() == lut[0].tolist() and rgb[0, 1].tolist() == lut[255].tolist()
    assert lut[0].tolist() == [255, 255, 255] and lut[255].tolist() == [
        0,
        0,
        0,
    ]  # plotly Greys: white -> black
    viridis = sup.colormap_lut("Viridis")
    assert viridis[0].tolist() == [68, 1, 84] and viridis[255].tolist() == [253, 231, 37]


def test_outcome_and_gt_overlays():
    label = np.array([[255, 1, 1, 1]], np.uint8)
    invalid = np.array([[1, 1, 1, 0]], np.uint8)
    conf = np.array([[0, 0, 65535, 0]], np.uint16)  # doubt high, high, low, high
    maps = {"pred": label, "confs": {"msp": conf}, "gt_label": label, "gt_invalid": invalid, "rgb": None}
    out = sup.compose(maps, "OOD outcome", 1.0, "msp", threshold_level=32768)
    grey = [128, 128, 128]
    assert out[0].tolist() == [grey, sup.OUTCOME_COLORS[sup.TRUE_POSITIVE].tolist(),
                               sup.OUTCOME_COLORS[sup.FALSE_NEGATIVE].tolist(),
                               sup.OUTCOME_COLORS[sup.FALSE_POSITIVE].tolist()]  # fmt: skip
    gt = sup.compose(maps, "OOD ground truth", 1.0, "msp")
    assert gt[0].tolist() == [list(sup.GT_COLORS["void"]), list(sup.GT_COLORS["invalid"]),
                              list(sup.GT_COLORS["invalid"]), grey]  # fmt: skip
    # Without GT the GT overlays leave the picture alone.
    no_gt = {**maps, "gt_label": None, "gt_invalid": None}
    assert sup.compose(no_gt, "OOD outcome", 1.0, "msp", threshold_level=0)[0].tolist() == [grey] * 4


# ------------------------------------------------------------------------------------------------ readouts


def test_pixel_readout_and_hover_text(run_dir):
    from eomt_ood.bravo.layout import read_label
    from eomt_ood.data.images import read_image
    from eomt_ood.data.png import read_png

    with StoreReader(run_dir / "predictions.h5") as reader:
        index = reader.relpaths.index("bravo_synobjs/bear/1.png")  # the 600x1200 image: previews are 256x512
        maps = sup.read_maps(reader, index)
        assert maps["pred"].shape == (256, 512) and maps["rgb"].shape == (256, 512, 3)
        r, c = 100, 200
        readout = sup.pixel_readout(maps, r, c)
        assert readout["pred"] == TRAIN_ID_NAMES[reader.preview(index, "pred")[r, c]]
        for score in SCORES:
            level = int(reader.preview(index, f"conf/{score}")[r, c])
            assert readout["confidence"][score] == (level + 0.5) / 65536
        classes, scores = reader.preview(index, "top2_class"), reader.preview(index, "top2_score")
        assert readout["top2"][0] == (TRAIN_ID_NAMES[classes[0, r, c]], pytest.approx(float(scores[0, r, c])))
        label = reader.preview(index, "gt_label")[r, c]
        assert readout["gt"] == ("void" if label == 255 else TRAIN_ID_NAMES[label])
        rows, cols, text = sup.hover_grid(maps, max_side=128)
        assert text.shape == (64, 128) and rows[1] == 4 and cols[1] == 4
        i, j = 25, 50
        assert text[i, j] == sup.format_readout(sup.pixel_readout(maps, rows[i], cols[j]))
    # Zoom: full resolution from the run's own PNGs, the GT and the photo from the folders the run names.
    run = sup.open_run(run_dir)
    window = (slice(300, 340), slice(10, 90))
    region = sup.read_region(run, index, window)
    pred = read_png(run_dir / "submission" / "bravo_synobjs/bear/1_pred.png")
    np.testing.assert_array_equal(region["pred"], pred[window])
    conf = read_png(run_dir / "confidence" / "rba" / "bravo_synobjs/bear/1_conf.png")
    np.testing.assert_array_equal(region["confs"]["rba"], conf[window])
    gt = read_label((run_dir.parent / "gt" / "bravo_synobjs/bear/1_gt.png").read_bytes(), "gt")
    np.testing.assert_array_equal(region["gt_label"], gt[window])
    photo = read_image(run_dir.parent / "images" / "bravo_synobjs/bear/1.png")
    np.testing.assert_array_equal(region["rgb"], photo[window])
    run.reader.close()


def test_readout_of_image_without_gt(run_dir):
    with StoreReader(run_dir / "predictions.h5") as reader:
        maps = sup.read_maps(reader, reader.relpaths.index("bravo_synrain/x/5_leftImg8bit.png"))
        readout = sup.pixel_readout(maps, 0, 0)
        assert readout["gt"] is None and readout["ood"] is None
        assert "GT" not in sup.hover_grid(maps)[2][0, 0]


def test_zoom_region_stays_inside():
    rows, cols = sup.zoom_region(1024, 2048, (0.5, 0.5), 4)
    assert (rows, cols) == (slice(384, 640), slice(768, 1280))
    rows, cols = sup.zoom_region(1024, 2048, (1.0, 0.0), 8)
    assert (rows, cols) == (slice(896, 1024), slice(0, 256))


# ------------------------------------------------------------------------------------------------ runs and tables


def test_image_table_sorts_worst_first(run_dir):
    with StoreReader(run_dir / "predictions.h5") as reader:
        rows = sup.image_rows(reader)
        stats = reader.stats()
    assert len(rows) == 6
    by_auprc = sup.worst_first(rows, "auprc_ood")
    finite = sorted(v for v in stats["auprc_ood"] if not math.isnan(v))
    assert [r["auprc_ood"] for r in by_auprc[:3]] == finite
    assert all(math.isnan(r["auprc_ood"]) for r in by_auprc[3:])
    by_fpr = sup.worst_first(rows, "fpr95_ood", "synobjs")
    assert [r["fpr95_ood"] for r in by_fpr] == sorted((r["fpr95_ood"] for r in by_fpr), reverse=True)
    assert [r["subset"] for r in sup.worst_first(rows, "miou", "ACDCfog")] == ["ACDCfog"] * 2


def test_runs_refuse_paths_outside(run_dir, tmp_path):
    assert sup.resolve_run_dirs([run_dir, run_dir]) == [run_dir.resolve()]
    with pytest.raises(UserError, match="not a run folder"):
        sup.resolve_run_dirs([tmp_path])
    with pytest.raises(UserError, match="at least one"):
        sup.resolve_run_dirs([])
    roots = [run_dir.resolve()]
    assert sup.allowed_file(run_dir / "images" / "a.png", roots) == (run_dir / "images" / "a.png").resolve()
    assert sup.allowed_file(run_dir / ".." / "elsewhere.png", roots) is None
    assert sup.allowed_file("/etc/passwd", roots) is None
    link = run_dir / "sneaky"
    link.symlink_to("/etc")
    try:
        assert sup.allowed_file(link / "passwd", roots) is None  # symlinks are resolved first
    finally:
        link.unlink()
    with pytest.raises(UserError, match="outside the folders"):
        sup.model_source({"model": "eomt_test", "checkpoint": "/etc/passwd"}, roots)
    assert sup.model_source({"model": "eomt_test", "checkpoint": None}, roots) == ("eomt_test", None)
    inside = run_dir / "weights.safetensors"
    inside.write_bytes(b"")
    assert sup.model_source({"model": None, "checkpoint": str(inside)}, roots) == (None, inside.resolve())
    with pytest.raises(UserError, match="not found"):
        sup.model_source({"model": None, "checkpoint": str(run_dir / "missing.safetensors")}, roots)


def test_score_results_and_curves(run_dir):
    run = sup.open_run(run_dir)
    flat = sup.score_results(run.results, "rba")
    h = run.reader.histograms("rba")["synobjs"]
    assert flat["synobjs_auprc_ood"] == curve_metrics(h["ood_pos"][::-1], h["ood_neg"][::-1])["auprc"]
    single = {"synobjs_auprc_ood": 0.5, "meta": {"confidences": ["msp"]}}
    assert sup.score_results(single, "msp") == {"synobjs_auprc_ood": 0.5}
    assert sup.score_results(single, "rba") == {}
    ood_fig, rel_fig = sup.curve_figures(run.reader.histograms("msp"))
    assert len(ood_fig.data) == 2 * 1 + 1  # synobjs PR + ROC, and the diagonal; ACDCfog has no positives
    assert len(rel_fig.data) == 3 * 2  # synobjs and ACDCfog reliability panels
    rows = sup.subset_metric_rows(flat, ["synobjs", "ACDCfog"])
    assert [row["subset"] for row in rows] == ["synobjs", "ACDCfog"]
    assert rows[0]["auprc_ood"] == flat["synobjs_auprc_ood"] and "auprc_ood" not in rows[1]
    assert rows[1]["miou_valid"] == flat["ACDCfog_miou_valid"]
    run.reader.close()


def test_own_image_through_the_tiny_model():
    model = sup.build_model("eomt_test", None)
    image = np.random.default_rng(0).integers(0, 256, (40, 72, 3), dtype=np.uint8)
    maps = sup.predict_own_image(model, image, ["msp"])
    assert maps["pred"].shape == (40, 72) and maps["confs"]["msp"].dtype == np.uint16
    picture = sup.compose(maps, "confidence", 1.0, "msp")
    np.testing.assert_array_equal(picture, sup.colorize_confidence(maps["confs"]["msp"]))


def test_decode_upload_rejects_garbage():
    from eomt_ood.data.png import encode_png

    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(sup.decode_upload(encode_png(image), "x.png"), image)
    with pytest.raises(UserError, match="x.jpg: unreadable image"):
        sup.decode_upload(b"not an image", "x.jpg")


def test_image_figure_carries_the_picture_and_the_readouts(run_dir):
    import base64

    from eomt_ood.data.png import decode_png

    with StoreReader(run_dir / "predictions.h5") as reader:
        maps = sup.read_maps(reader, 0)
    picture = sup.compose(maps, "prediction", 0.5, "msp")
    hover = sup.hover_grid(maps)
    fig = sup.image_figure(picture, hover, "run")
    source = fig.data[0].source
    assert source.startswith("data:image/png;base64,")
    np.testing.assert_array_equal(decode_png(base64.b64decode(source.split(",", 1)[1]), "fig"), picture)
    assert fig.data[1].text[3][5] == hover[2][3, 5]
    assert list(fig.layout.yaxis.range) == [picture.shape[0] - 0.5, -0.5]  # row 0 at the top, like the photo
