"""Pure functions of the confidence explorer (app/support.py), on the shared finished run of conftest.py."""

from __future__ import annotations

import re

import numpy as np
import pytest
import support as sup
from run_support import SCORES
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
        # The top-2 scores as the readouts show them: to 3 decimals.
        assert readout["top2"][0] == (TRAIN_ID_NAMES[classes[0, r, c]], round(float(scores[0, r, c]), 3))
        label = reader.preview(index, "gt_label")[r, c]
        assert readout["gt"] == ("void" if label == 255 else TRAIN_ID_NAMES[label])
        grid = sup.readout_grid(maps, max_side=128)
        assert (grid["rows"], grid["cols"], grid["stride"]) == (64, 128, 4)
        for i, j in ((25, 50), (0, 0), (63, 127)):
            assert _grid_readout(grid, i, j) == sup.format_readout(sup.pixel_readout(maps, 4 * i, 4 * j))
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
        grid = sup.readout_grid(maps)
        assert grid["gt"] is None and "GT" not in _grid_readout(grid, 0, 0)
        assert _grid_readout(grid, 3, 7) == sup.format_readout(
            sup.pixel_readout(maps, 3, 7)
        )  # 32x64: stride 1


def _grid_readout(grid: dict, i: int, j: int) -> str:
    """What the browser's hover shows at grid point (i, j), decoded here as app/mapview.py decodes it."""
    import base64

    def array(name, dtype):
        return np.frombuffer(base64.b64decode(grid[name]), dtype=dtype) if grid[name] else None

    k, n = i * grid["cols"] + j, grid["rows"] * grid["cols"]
    names = grid["names"]
    lines = [f"pred: {names[array('pred', np.uint8)[k]]}"]
    if grid["top2_class"]:
        classes, scores = array("top2_class", np.uint8), array("top2_score", "<u2")
        lines.append(
            "top-2: "
            + ", ".join(f"{names[classes[t * n + k]]} {scores[t * n + k] / 1000:.3f}" for t in (0, 1))
        )
    confs = {s: np.frombuffer(base64.b64decode(v), "<u2") for s, v in grid["conf"].items()}
    lines.append(" · ".join(f"{s} {(v[k] + 0.5) / 65536:.4f}" for s, v in confs.items()))
    if grid["gt"]:
        ood = ("valid", "invalid", "void")[array("ood", np.uint8)[k]]
        lines.append(f"GT: {names[array('gt', np.uint8)[k]]} ({ood})")
    return "\n".join(lines)


def test_zoom_region_stays_inside():
    rows, cols = sup.zoom_region(1024, 2048, (0.5, 0.5), 4)
    assert (rows, cols) == (slice(384, 640), slice(768, 1280))
    rows, cols = sup.zoom_region(1024, 2048, (1.0, 0.0), 8)
    assert (rows, cols) == (slice(896, 1024), slice(0, 256))


# ------------------------------------------------------------------------------------------------ runs and tables


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


def test_inputs_a_run_names_are_read_only_where_it_resolved_them(tmp_path):
    """config.yaml may name its inputs relative to where `evaluate` ran; the app reads them where the run
    resolved them (its resume record), never relative to its own working directory (which may hold other
    files of the same names)."""
    from eomt_ood.bravo.rundir import recorded_input

    resolved = str(tmp_path / "data" / "images")
    assert recorded_input(
        {"images_root": "data/images", "resume": {"images_root": resolved}}, "images_root"
    ) == (tmp_path / "data" / "images")
    assert recorded_input({"images_root": resolved}, "images_root") == tmp_path / "data" / "images"
    assert recorded_input({"images_root": "data/images"}, "images_root") is None
    assert recorded_input({"gt": None, "resume": {"gt": None}}, "gt") is None
    with pytest.raises(UserError, match="relative to a folder it did not record"):
        sup.model_source({"model": None, "checkpoint": "weights/model.safetensors"}, [tmp_path])


def test_checkpoints_from_allowed_folders_only(run_dir, tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "deep").mkdir(parents=True)
    (allowed / "deep" / "b.ckpt").write_bytes(b"x")
    (allowed / "a.safetensors").write_bytes(b"x")
    (allowed / "notes.txt").write_text("not a checkpoint")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    (allowed / "link.safetensors").symlink_to(outside)  # a link out of the folder is not offered
    folders = [allowed.resolve()]
    assert sup.checkpoint_choices(folders) == [
        (allowed / "a.safetensors").resolve(),
        (allowed / "deep/b.ckpt").resolve(),
    ]
    roots = [run_dir.resolve()]
    config = {"model": "eomt_test", "checkpoint": str(outside)}
    # The run's own checkpoint outside every folder given: refused, named, with the way to allow it.
    with pytest.raises(UserError, match="outside the folders given to the app; not read .allow its folder"):
        sup.own_model_source(config, None, roots, folders)
    assert sup.own_model_source(config, None, roots, [tmp_path.resolve()]) == ("eomt_test", outside.resolve())
    # A chosen checkpoint: only from the allowed folders; not ours, so the run's model takes its weights.
    assert sup.own_model_source(config, allowed / "a.safetensors", roots, folders) == (
        "eomt_test",
        (allowed / "a.safetensors").resolve(),
    )
    for bad in (outside, allowed / "link.safetensors", allowed / ".." / "outside.safetensors"):
        with pytest.raises(UserError, match="outside the folders allowed with --allow"):
            sup.own_model_source(config, bad, roots, folders)
    with pytest.raises(UserError, match="names no model"):
        sup.own_model_source({"checkpoint": None, "model": None}, allowed / "a.safetensors", roots, folders)
    with pytest.raises(UserError, match="--allow .*nope: folder not found"):
        sup.parse_args([str(run_dir), "--allow", str(tmp_path / "nope")])
    with pytest.raises(UserError, match="give a folder after it"):
        sup.parse_args([str(run_dir), "--allow"])


def test_legends_name_every_colour():
    from eomt_ood.data.labels import TRAIN_ID_COLORS

    legend = sup.legend_html("prediction")
    for name, (r, g, b) in zip(TRAIN_ID_NAMES, TRAIN_ID_COLORS, strict=True):
        assert f'background:rgb({r},{g},{b});border:1px solid #0003"></span>{name}</span>' in legend
    outcome = sup.legend_html("OOD outcome")
    for code, name in (
        (sup.TRUE_POSITIVE, "(TP)"),
        (sup.FALSE_POSITIVE, "(FP)"),
        (sup.FALSE_NEGATIVE, "(FN)"),
    ):
        r, g, b = sup.OUTCOME_COLORS[code]
        assert re.search(rf"rgb\({r},{g},{b}\);[^<]*</span>[^<]*{re.escape(name)}", outcome)
    r, g, b = sup.colormap_lut("Inferno")[0]
    assert f"linear-gradient(to right, rgb({r},{g},{b})" in sup.legend_html("confidence", "Inferno")
    assert "invalid (OOD)" in sup.legend_html("OOD ground truth") and sup.legend_html("none") == ""


def test_score_results_and_metric_rows(run_dir):
    run = sup.open_run(run_dir)
    flat = sup.score_results(run.results, "rba")
    h = run.reader.histograms("rba")["synobjs"]
    assert flat["synobjs_auprc_ood"] == curve_metrics(h["ood_pos"][::-1], h["ood_neg"][::-1])["auprc"]
    single = {"synobjs_auprc_ood": 0.5, "meta": {"confidences": ["msp"]}}
    assert sup.score_results(single, "msp") == {"synobjs_auprc_ood": 0.5}
    assert sup.score_results(single, "rba") == {}
    rows = sup.metric_table_rows(flat, ["synobjs", "ACDCfog", "synrain"])
    assert [row["subset"] for row in rows] == ["synobjs", "ACDCfog"]  # synrain has no ground truth here
    assert rows[0]["auprc_ood"] == f"{flat['synobjs_auprc_ood']:.4f}" and rows[1]["auprc_ood"] == "–"
    assert rows[1]["miou_valid"] == f"{flat['ACDCfog_miou_valid']:.4f}"
    # With the run's bootstrap intervals: each cell is the same value, then its interval from results.json.
    intervals = sup.score_intervals(run.results, "rba")
    table = run.results["meta"]["intervals"]["rba"]
    assert intervals and intervals["synobjs_auprc_ood"] == tuple(table["synobjs_auprc_ood"])
    low, high = table["synobjs_auprc_ood"]
    with_intervals = sup.metric_table_rows(flat, ["synobjs", "ACDCfog"], intervals)
    assert with_intervals[0]["auprc_ood"] == f"{flat['synobjs_auprc_ood']:.4f} [{low:.4f}, {high:.4f}]"
    assert with_intervals[1]["auprc_ood"] == "–"  # no value, so no interval either
    assert sup.score_intervals(run.results, "no_such_score") == {} and sup.score_intervals({}, "rba") == {}
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


def test_map_view_data_carries_the_picture_and_the_readouts(run_dir):
    import base64

    from eomt_ood.data.png import decode_png

    with StoreReader(run_dir / "predictions.h5") as reader:
        maps = sup.read_maps(reader, 0)
    picture = sup.compose(maps, "prediction", 0.5, "msp")
    data = sup.map_view_data(picture, sup.readout_grid(maps), "run")
    np.testing.assert_array_equal(decode_png(base64.b64decode(data["src"].split(",", 1)[1]), "fig"), picture)
    assert (data["height"], data["width"], data["title"]) == (*picture.shape[:2], "run")
    assert _grid_readout(data["readout"], 3, 5) == sup.format_readout(sup.pixel_readout(maps, 3, 5))
