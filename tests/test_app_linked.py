"""The explorer's linked plots and threshold scales (app/linked_plots.py) and its view in the URL
(app/view_state.py)."""

from __future__ import annotations

import linked_plots as lp
import numpy as np
import pytest
import support as sup
import view_state as vs
from sklearn.metrics import roc_curve

from eomt_ood.metrics.histogram import binary_histograms


def _pixels(seed: int = 5, n: int = 4000):
    """Random confidence levels (with ties) and OOD labels, and their histograms by confidence level."""
    rng = np.random.default_rng(seed)
    conf = rng.integers(0, 65536, n).astype(np.uint16)
    conf[:300] = 60000
    positive = rng.random(n) < 0.2 + 0.5 * (conf < 15000)
    pos, neg = binary_histograms(conf, positive)
    return conf, positive, pos, neg


def test_scales_round_trip_and_reach_small_doubts():
    for doubt in (1e-5, 0.005, 0.3, 1.0):
        assert lp.doubt_of_log(lp.log_position(doubt)) == pytest.approx(max(doubt, 10**lp.LOG_MIN))
    assert (
        lp.log_position(0.0) == lp.LOG_MIN and lp.doubt_of_level(0) > 10**lp.LOG_MIN
    )  # every level reachable
    assert lp.doubt_of_level(lp.NOTHING_FLAGGED) == 1.0 and lp.level_of_doubt(1.0) == lp.NOTHING_FLAGGED


def test_quantile_scale_is_the_share_of_pixels_flagged():
    conf, _, pos, neg = _pixels()
    shares = lp.flagged_shares(pos + neg)
    doubt_levels = 65535 - conf.astype(np.int64)
    for level in (0, 1, 5000, 5535, 30000, 65535, 65536):
        assert lp.quantile_of_level(shares, level) == pytest.approx(
            np.mean(doubt_levels >= level)
        )  # per pixel
    for quantile in (0.0, 0.01, 0.075, 0.5, 1.0):
        level = lp.level_of_quantile(shares, quantile)
        assert np.mean(doubt_levels >= level) >= quantile  # flags at least that share ...
        if level < lp.NOTHING_FLAGGED:
            assert (
                np.mean(doubt_levels >= level + 1) < quantile or quantile == 0
            )  # ... at the highest such level
    assert lp.flagged_shares(np.zeros(65536, np.int64)) is None


def test_operating_points_match_sklearn_roc():
    conf, positive, pos, neg = _pixels()
    doubt = 1.0 - (conf.astype(np.float64) + 0.5) / 65536
    fprs, tprs, thresholds = roc_curve(positive, doubt, drop_intermediate=False)
    for k in (1, 7, len(thresholds) // 2, len(thresholds) - 1):
        level = sup.level_of_doubt(thresholds[k])
        point = lp.operating_point(pos, neg, level)
        assert (point["tpr"], point["fpr"]) == pytest.approx((tprs[k], fprs[k]))
        flagged = doubt >= thresholds[k]
        assert point["precision"] == pytest.approx(positive[flagged].mean())
    nothing = lp.operating_point(pos, neg, lp.NOTHING_FLAGGED)
    assert nothing["tpr"] == 0 and nothing["fpr"] == 0 and np.isnan(nothing["precision"])


def test_curve_points_carry_their_threshold_and_the_star_sits_on_the_curve():
    _, _, pos, neg = _pixels()
    histograms = {
        "synobjs": {"ood_pos": pos, "ood_neg": neg},
        "ACDCfog": {"ood_pos": pos * 0, "ood_neg": neg},
    }
    start = sup.tpr95_threshold(pos, neg)
    fig = lp.threshold_curves(histograms, level=start.level, max_points=200)
    pr, roc = fig.data[0], fig.data[1]
    assert "synobjs" in pr.name and not any("ACDCfog" in (t.name or "") for t in fig.data)  # no OOD pixels
    custom = np.asarray(roc.customdata)
    for k in (0, 3, 50, len(custom) - 1):
        point = lp.operating_point(pos, neg, int(custom[k, 0]))
        assert (roc.x[k], roc.y[k]) == pytest.approx((point["fpr"], point["tpr"]))
        assert custom[k, 1] == pytest.approx(lp.doubt_of_level(int(custom[k, 0])))
    # A click on a point (the selection state Streamlit keeps) gives back that point's level.
    event = {
        "selection": {"points": [{"curve_number": 1, "point_index": 50, "customdata": custom[50].tolist()}]}
    }
    assert lp.level_from_selection(event) == int(custom[50, 0])
    # What the browser sends: the typed array of a point's customdata as an object keyed by position.
    keyed = {str(k): v for k, v in reversed(list(enumerate(custom[50].tolist())))}
    assert lp.level_from_selection({"selection": {"points": [{"customdata": keyed}]}}) == int(custom[50, 0])
    assert lp.level_from_selection({"selection": {"points": []}}) is None
    assert lp.level_from_selection({"selection": {"points": [{"customdata": {"a": 1}}]}}) is None
    stars = [t for t in fig.data if t.marker.symbol == "star"]
    assert (stars[1].x[0], stars[1].y[0]) == pytest.approx((start.fpr, start.tpr))
    assert lp.threshold_curves({"ACDCfog": histograms["ACDCfog"]}) is None


def test_start_threshold_and_its_description():
    _, _, pos, neg = _pixels()
    doubt, why = lp.start_threshold({"ood_pos": pos, "ood_neg": neg}, pos + neg)
    found = sup.tpr95_threshold(pos, neg)
    assert doubt == found.doubt and f"FPR {found.fpr:.4f}" in why
    assert lp.describe_level({"ood_pos": pos, "ood_neg": neg}, pos + neg, found.level).startswith(
        f"TPR {found.tpr:.4f} · FPR {found.fpr:.4f}"
    )
    # Without OOD pixels: where 5 % of the pixels are flagged.
    doubt, why = lp.start_threshold({"ood_pos": pos * 0, "ood_neg": neg}, neg)
    level = lp.level_of_doubt(doubt)
    assert lp.quantile_of_level(lp.flagged_shares(neg), level) >= 0.05 and "no OOD pixels" in why
    assert lp.describe_level({"ood_pos": pos * 0, "ood_neg": neg}, neg, level).startswith("flags 5.")
    assert lp.start_threshold({}, None) == (0.5, "no stored histogram for this subset")


def test_confusion_figure_cells_and_clicks():
    matrix = np.zeros((19, 19), np.int64)
    matrix[0, 0], matrix[0, 1], matrix[13, 14] = 90, 10, 5
    fig = lp.confusion_figure(matrix, selected=(0, 1))
    cells = fig.data[0]
    custom = np.asarray(cells.customdata)
    assert len(cells.x) == 3  # empty cells are not drawn
    row = custom[(custom[:, 0] == 0) & (custom[:, 1] == 1)][0]
    assert row[2] == 10 and row[3] == pytest.approx(0.1)  # pixels, share of the true class
    assert fig.data[1].x[0] == "sidewalk" and fig.data[1].y[0] == "road"  # the chosen cell's frame
    event = {"selection": {"points": [{"customdata": [13, 14, 5, 1.0]}]}}
    assert lp.cell_from_selection(event) == (13, 14)
    keyed = {"0": 13.0, "1": 14.0, "2": 5.0, "3": 1.0}
    assert lp.cell_from_selection({"selection": {"points": [{"customdata": keyed}]}}) == (13, 14)
    assert lp.cell_from_selection(None) is None


# ------------------------------------------------------------------------------------------------ URL


def _choices():
    rels = ["bravo_synobjs/a/1.png", "bravo_ACDC/fog/test/x/2_rgb_anon.png", "bravo_synobjs/a/3.png"]
    subsets = ["synobjs", "ACDCfog", "synobjs"]
    return [
        vs.RunChoice("run-a", "/r/run-a", ["msp", "rba"], subsets, rels),
        vs.RunChoice("run-b", "/r/run-b", ["msp"], subsets, rels),
    ]


def test_url_round_trip_reproduces_the_view():
    doubt = sup.doubt_of_level(60123)
    params = vs.url_of(
        ["run-b", "run-a"], "msp", "synobjs", "bravo_synobjs/a/3.png", "OOD outcome", doubt, "Image"
    )
    values, notes = vs.read_url(params, _choices(), ["Dataset", "Image"], sup.OVERLAYS)
    assert notes == []
    assert values == {
        "runs": ["/r/run-b", "/r/run-a"],
        "score": "msp",
        "subset": "synobjs",
        "image": 2,
        "overlay": "OOD outcome",
        "threshold": doubt,
        "view": "Image",
    }
    assert sup.level_of_doubt(float(params["threshold"])) == 60123  # written exactly: the same level


def test_url_values_that_do_not_fit_are_left_out_and_named():
    params = {
        "run": ["run-z", "run-a"],
        "score": "energy",
        "image": "bravo_ACDC/fog/test/x/2_rgb_anon.png",
        "subset": "synobjs",
        "overlay": "sparkles",
        "threshold": "1.5",
        "view": "Nowhere",
    }
    values, notes = vs.read_url(params, _choices(), ["Dataset"], sup.OVERLAYS)
    assert values == {"runs": ["/r/run-a"], "subset": "ACDCfog", "image": 1}  # the image's subset wins
    assert len(notes) == 5
    assert any("run-z" in n for n in notes) and any("energy" in n and "msp, rba" in n for n in notes)
    assert vs.read_url({"threshold": "abc"}, _choices(), ["Dataset"], sup.OVERLAYS)[0] == {}
