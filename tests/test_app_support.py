"""Pure functions of the confidence explorer, and `make_run`, the small run directory the app tests share."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_curve

from eomt_ood import app_support as sup
from eomt_ood.data.labels import TRAIN_ID_COLORS, TRAIN_ID_NAMES
from eomt_ood.errors import UserError
from eomt_ood.metrics.histogram import binary_histograms, curve_metrics
from eomt_ood.store import StoreReader, StoreWriter, preview_shape

SCORES = ["msp", "rba"]


def _image(rng: np.random.Generator, height: int, width: int, ood: bool, scores=tuple(SCORES)):
    """Synthetic maps: stripes of classes, a void band, an invalid box (OOD subsets) with lower confidence."""
    gt = ((np.arange(width)[None, :] * 19) // width).repeat(height, 0).astype(np.uint8)
    gt[: max(1, height // 10)] = 255
    invalid = np.zeros((height, width), np.uint8)
    if ood:
        invalid[height // 3 : height // 2, width // 4 : width // 2] = 1
    pred = gt.copy()
    flip = rng.random((height, width)) < 0.2
    pred[flip] = rng.integers(0, 19, int(flip.sum()))
    pred[gt == 255] = rng.integers(0, 19, int((gt == 255).sum()))
    confs = {}
    for s, score in enumerate(scores):
        base = rng.normal(0.8 - 0.05 * s, 0.12, (height, width)) - 0.35 * invalid - 0.2 * (pred != gt)
        confs[score] = np.clip(np.floor(np.clip(base, 0, 1) * 65536), 0, 65535).astype(np.uint16)
    # A "photo": the label colours, darkened and noisy, with a bright object on the invalid box.
    photo = 0.6 * TRAIN_ID_COLORS[np.minimum(gt, 18)] + rng.normal(0, 12, (height, width, 3))
    photo[invalid != 0] = (250, 240, 60)
    rgb = np.clip(photo, 0, 255).astype(np.uint8)
    ph, pw = preview_shape(height, width)
    top2_class = rng.integers(0, 19, (2, ph, pw), dtype=np.uint8)
    top2_score = np.sort(rng.random((2, ph, pw)), axis=0)[::-1].astype(np.float16)
    return gt, invalid, pred, confs, rgb, top2_class, top2_score


def make_run(folder: Path, seed: int = 0, images_root: Path | None = None, scores=tuple(SCORES)) -> Path:
    """A small run dir: synobjs (3 images, OOD boxes; one 600x1200 so previews are downsampled), ACDCfog
    (2 images, no invalid pixels), synrain (1 image without GT); results.json from `curve_metrics` of the
    stored histograms, per score; config.yaml naming `images_root` (photos written there when given)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    plan = [("synobjs", 64, 128, True), ("synobjs", 600, 1200, True), ("synobjs", 48, 96, True)]
    plan += [("ACDCfog", 64, 128, False), ("ACDCfog", 40, 80, False), ("synrain", 32, 64, None)]
    hist: dict = {s: {} for s in scores}
    with StoreWriter(folder / "predictions.h5", model="eomt_test", confidences=list(scores)) as store:
        for n, (subset, h, w, ood) in enumerate(plan):
            gt, invalid, pred, confs, rgb, t2c, t2s = _image(rng, h, w, bool(ood), scores)
            relpath = f"bravo_{subset}/img{n}.png"
            if images_root is not None:
                from eomt_ood.data.png import write_png

                write_png(images_root / relpath, rgb)
            stats = {}
            valid = gt != 255
            if ood is not None:
                for score in scores:
                    counts = hist[score].setdefault(
                        subset, {k: 0 for k in ("correct", "wrong", "ood_pos", "ood_neg")}
                    )
                    k = confs[score]
                    ok = valid & (invalid == 0)
                    counts["correct"] = counts["correct"] + np.bincount(k[ok & (pred == gt)], minlength=65536)
                    counts["wrong"] = counts["wrong"] + np.bincount(k[ok & (pred != gt)], minlength=65536)
                    pos, neg = binary_histograms(k[valid], (invalid != 0)[valid])
                    counts["ood_pos"] = counts["ood_pos"] + pos
                    counts["ood_neg"] = counts["ood_neg"] + neg
                    if score == scores[0] and ood:
                        m = curve_metrics(pos[::-1], neg[::-1])
                        stats.update(auprc_ood=m["auprc"], fpr95_ood=m["fpr95"])
                stats["miou"] = float(np.mean(pred[valid] == gt[valid]))  # a stand-in, only sorted on
            store.add_image(
                relpath,
                subset,
                pred,
                confs,
                top2_class=t2c,
                top2_score=t2s,
                gt_label=gt if ood is not None else None,
                gt_invalid=invalid if ood is not None else None,
                rgb=rgb,
                stats=stats,
            )
        for score in scores:
            for subset, counts in hist[score].items():
                store.add_histograms(score, subset, counts)
    results: dict = {"meta": {"model": "eomt_test"}}
    for score in scores:
        h = hist[score]["synobjs"]
        m = curve_metrics(h["ood_pos"][::-1], h["ood_neg"][::-1])
        flat = {f"synobjs_{k}_ood": v for k, v in m.items()}
        flat["ood_hmean"] = 2 / (1 / m["auroc"] + 1 / m["auprc"])
        results[score] = flat
    (folder / "results.json").write_text(json.dumps(results))
    config = {"model": "eomt_test", "checkpoint": None, "confidences": list(scores)}
    config["images_root"] = str(images_root) if images_root is not None else None
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("app") / "run-a")


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
    with StoreReader(run_dir / "predictions.h5") as reader:
        maps = sup.read_maps(reader, 1)  # the 600x1200 image: previews are 256x512
        assert maps["pred"].shape == (256, 512) and maps["rgb"].shape == (256, 512, 3)
        r, c = 100, 200
        readout = sup.pixel_readout(maps, r, c)
        assert readout["pred"] == TRAIN_ID_NAMES[reader.read(1, "pred", preview=True)[r, c]]
        for score in SCORES:
            level = int(reader.read(1, f"conf/{score}", preview=True)[r, c])
            assert readout["confidence"][score] == (level + 0.5) / 65536
        classes, scores = (
            reader.read(1, "top2_class", preview=True),
            reader.read(1, "top2_score", preview=True),
        )
        assert readout["top2"][0] == (TRAIN_ID_NAMES[classes[0, r, c]], pytest.approx(float(scores[0, r, c])))
        label = reader.read(1, "gt_label", preview=True)[r, c]
        assert readout["gt"] == ("void" if label == 255 else TRAIN_ID_NAMES[label])
        rows, cols, text = sup.hover_grid(maps, max_side=128)
        assert text.shape == (64, 128) and rows[1] == 4 and cols[1] == 4
        i, j = 25, 50
        assert text[i, j] == sup.format_readout(sup.pixel_readout(maps, rows[i], cols[j]))
        region = sup.read_maps(reader, 1, region=(slice(300, 340), slice(10, 90)))
        np.testing.assert_array_equal(region["pred"], reader.read(1, "pred")[300:340, 10:90])
        assert region["rgb"] is None


def test_readout_of_image_without_gt(run_dir):
    with StoreReader(run_dir / "predictions.h5") as reader:
        maps = sup.read_maps(reader, 5)
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
    with pytest.raises(UserError, match="not a run directory"):
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
    flat = sup.score_results(run.results, "rba", "msp")
    h = run.reader.histograms("rba")["synobjs"]
    assert flat["synobjs_auprc_ood"] == curve_metrics(h["ood_pos"][::-1], h["ood_neg"][::-1])["auprc"]
    single = {"synobjs_auprc_ood": 0.5, "meta": {}}
    assert sup.score_results(single, "msp", "msp") == {"synobjs_auprc_ood": 0.5}
    assert sup.score_results(single, "rba", "msp") == {}
    ood_fig, rel_fig = sup.curve_figures(run.reader.histograms("msp"))
    assert len(ood_fig.data) == 2 * 1 + 1  # synobjs PR + ROC, and the diagonal; ACDCfog has no positives
    assert len(rel_fig.data) == 3 * 2  # synobjs and ACDCfog reliability panels
    rows = sup.subset_metric_rows(flat, ["synobjs", "ACDCfog"])
    assert rows == [{"subset": "synobjs", "auroc_ood": flat["synobjs_auroc_ood"],
                     "auprc_ood": flat["synobjs_auprc_ood"], "fpr95_ood": flat["synobjs_fpr95_ood"]}]  # fmt: skip
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
