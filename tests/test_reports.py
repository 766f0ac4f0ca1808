"""The HTML report and its plotly figures (`eomt_ood.reports`): content, curve ends, exact areas, missing data."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from eomt_ood.metrics.histogram import curve_metrics
from eomt_ood.reports import plots
from eomt_ood.reports.html import build_report, write_report

L = 65536


def hist_of(levels, minlength=L) -> np.ndarray:
    return np.bincount(np.asarray(levels, dtype=np.int64), minlength=minlength)


# docs/metrics.md §13, OOD part: conf levels of six non-void pixels and which are invalid (the positives).
OOD_LEVELS = np.array([65535, 50000, 50000, 20000, 10000, 0])
OOD_INVALID = np.array([False, False, True, True, False, True])
# docs/metrics.md §13, semantic part: conf levels of ten valid pixels and which are correct.
SEM_LEVELS = np.array([60000, 60000, 50000, 40000, 40000, 30000, 20000, 10000, 5000, 1000])
SEM_CORRECT = np.array([1, 0, 1, 1, 1, 0, 1, 0, 1, 0], dtype=bool)


def random_subset(rng, ood: bool, n_valid=3000, n_invalid=400):
    """Histograms of one synthetic subset plus its per-pixel data (levels, correct, invalid) for oracles."""
    levels_valid = np.minimum((rng.beta(6, 1.5, n_valid) * L).astype(np.int64), L - 1)
    correct = rng.random(n_valid) < levels_valid / L
    h = {
        "correct": hist_of(levels_valid[correct]),
        "wrong": hist_of(levels_valid[~correct]),
        "ood_pos": np.zeros(L, np.int64),
        "ood_neg": np.zeros(L, np.int64),
    }
    pixels = {"levels": levels_valid, "correct": correct}
    if ood:
        levels_invalid = np.minimum((rng.beta(2, 3, n_invalid) * L).astype(np.int64), L - 1)
        h["ood_pos"], h["ood_neg"] = hist_of(levels_invalid), hist_of(levels_valid)
        pixels["ood_levels"] = np.concatenate([levels_invalid, levels_valid])
        pixels["ood_target"] = np.concatenate([np.ones(n_invalid, bool), np.zeros(n_valid, bool)])
    return h, pixels


@pytest.fixture(scope="module")
def run():
    rng = np.random.default_rng(0)
    histograms, pixels, results, per_image = {}, {}, {}, []
    for subset in ("ACDCfog", "SMIYC", "synobjs"):
        histograms[subset], pixels[subset] = random_subset(rng, ood=subset != "ACDCfog")
    for subset in ("ACDCfog", "synobjs"):
        results.update({f"{subset}_miou_valid": 0.61234, f"{subset}_ece_valid": 0.04321})
        results[f"{subset}_iou_valid"] = [0.5] * 18 + [math.nan]
    for subset in ("SMIYC", "synobjs"):
        m = curve_metrics(histograms[subset]["ood_pos"][::-1], histograms[subset]["ood_neg"][::-1])
        results.update({f"{subset}_auroc_ood": m["auroc"], f"{subset}_auprc_ood": m["auprc"]})
        results[f"{subset}_fpr95_ood"] = m["fpr95"]
    results.update(ACDCfog_hmean=0.5, SMIYC_hmean=0.25, synobjs_hmean=0.375)
    results.update(semantic_hmean=0.7777, ood_hmean=math.nan, bravo_index=0.4242)
    results["meta"] = {"mode": "all pixels", "gt": "<gt & co>"}
    for i, auprc in enumerate([0.9, math.nan, 0.1, 0.5, 0.3]):
        per_image.append(
            {
                "subset": "synobjs" if i % 2 else "SMIYC",
                "image": f"bravo_synobjs/polar bear/{i}.png",
                "auprc_ood": auprc,
                "fpr95_ood": 0.1 * i,
                "miou": 0.5,
                "ece": 0.01,
                "num_valid": 1000 + i,
                "num_invalid": 10 * i,
            }
        )
    return results, histograms, pixels, per_image


def test_report_is_self_contained_and_shows_the_data(run, tmp_path):
    results, histograms, _, per_image = run
    path = write_report(tmp_path / "out" / "report.html", results, histograms, per_image, title="Test run")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<title>Test run</title>" in text
    # plotly.js inline exactly once, no script loaded from the network (works offline).
    assert text.count("plotly.js v") == 1
    assert not re.search(r"<script[^>]+src=", text)
    for name in ("ACDCfog", "SMIYC", "synobjs", "bravo_index", "0.4242", "0.7777", "0.6123", "0.0432"):
        assert name in text, name
    assert f"{results['synobjs_auprc_ood']:.4f}" in text
    assert "&lt;gt &amp; co&gt;" in text  # meta is escaped
    for title in (
        "Metrics per subset",
        "OOD detection curves",
        "Reliability on valid pixels",
        "worst images",
    ):
        assert title in text, title
    assert not list(tmp_path.glob("out/.*tmp"))


def test_metrics_table_cells_follow_the_official_order(run):
    results = run[0]
    table = plots.metrics_table(results).data[0]
    header = list(table.header.values)
    assert header == [
        "subset",
        "miou_valid",
        "ece_valid ↓",
        "auroc_ood",
        "auprc_ood",
        "fpr95_ood ↓",
        "hmean",
    ]
    columns = dict(zip(header, table.cells.values, strict=True))
    assert list(columns["subset"]) == [
        "ACDCfog",
        "SMIYC",
        "synobjs",
        "semantic_hmean",
        "ood_hmean",
        "bravo_index",
    ]
    assert list(columns["miou_valid"]) == ["0.6123", "–", "0.6123", "0.7777", "–", "0.4242"]
    assert columns["auprc_ood"][2] == f"{results['synobjs_auprc_ood']:.4f}"


def test_worked_example_curves_start_end_and_areas():
    pos, neg = hist_of(OOD_LEVELS[OOD_INVALID]), hist_of(OOD_LEVELS[~OOD_INVALID])
    fig = plots.ood_curves({"synobjs": {"ood_pos": pos, "ood_neg": neg}})
    pr, roc = fig.data[0], fig.data[1]
    recall, precision = np.asarray(pr.x), np.asarray(pr.y)
    fpr, tpr = np.asarray(roc.x), np.asarray(roc.y)
    assert (recall[0], precision[0], recall[-1]) == (0.0, 1.0, 1.0)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert pr.line.shape == "vh"
    # Step area of the drawn PR curve and trapezoid area of the drawn ROC: the hand-checked docs/metrics.md §13 values.
    assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(34 / 45, abs=1e-15)
    assert np.trapezoid(tpr, fpr) == pytest.approx(13 / 18, abs=1e-15)
    assert "AUPRC 0.7556" in pr.name and "FPR95 0.6667" in roc.name


def test_plotted_curves_match_curve_metrics_and_sklearn(run):
    _, histograms, pixels, _ = run
    fig = plots.ood_curves(histograms, max_points=None)
    names = [trace.name.split()[0] for trace in fig.data if trace.name]
    assert names == ["SMIYC", "SMIYC", "synobjs", "synobjs"]  # ACDCfog has no OOD pixels
    for i, subset in enumerate(("SMIYC", "synobjs")):
        pr, roc = fig.data[2 * i], fig.data[2 * i + 1]
        h, px = histograms[subset], pixels[subset]
        exact = curve_metrics(h["ood_pos"][::-1], h["ood_neg"][::-1])
        drawn_auprc = np.sum(np.diff(np.asarray(pr.x)) * np.asarray(pr.y)[1:])
        assert drawn_auprc == pytest.approx(exact["auprc"], abs=1e-12)
        # Independent oracle: scikit-learn on the pixels, score = doubt = 65535 - level.
        doubt = 65535 - px["ood_levels"]
        assert drawn_auprc == pytest.approx(average_precision_score(px["ood_target"], doubt), abs=1e-12)
        drawn_auroc = np.trapezoid(np.asarray(roc.y), np.asarray(roc.x))
        assert drawn_auroc == pytest.approx(roc_auc_score(px["ood_target"], doubt), abs=1e-12)


def test_thinned_curves_keep_their_ends_and_exact_legend(run):
    _, histograms, _, _ = run
    h = histograms["synobjs"]
    fig = plots.ood_curves({"synobjs": h}, max_points=50)
    pr, roc = fig.data[0], fig.data[1]
    assert len(pr.x) <= 50 and len(roc.x) <= 50
    assert (pr.x[0], pr.y[0], pr.x[-1]) == (0.0, 1.0, 1.0)
    assert (roc.x[0], roc.y[0], roc.x[-1], roc.y[-1]) == (0.0, 0.0, 1.0, 1.0)
    exact = curve_metrics(h["ood_pos"][::-1], h["ood_neg"][::-1])
    assert f"AUPRC {exact['auprc']:.4f}" in pr.name
    # Thinning keeps the drawn area close (a plot, not a metric).
    assert np.sum(np.diff(np.asarray(pr.x)) * np.asarray(pr.y)[1:]) == pytest.approx(exact["auprc"], abs=0.03)


def test_reliability_bars_and_ece_title():
    # docs/metrics.md §13 semantic example: ECE = 16759/40960 by hand.
    h = {"correct": hist_of(SEM_LEVELS[SEM_CORRECT]), "wrong": hist_of(SEM_LEVELS[~SEM_CORRECT])}
    fig = plots.reliability_diagrams({"ACDCfog": h, "SMIYC": h})
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [f"ACDCfog  (ECE {16759 / 40960:.4f})"]  # SMIYC has no semantic GT: no panel
    bars = fig.data[0]
    # Oracle: bin of confidence (k + 0.5)/65536 in [b/15, (b+1)/15), accuracy = mean correctness per bin.
    conf = (SEM_LEVELS + 0.5) / L
    bins = np.floor(conf * 15).astype(int)
    expected = np.full(15, np.nan)
    for b in np.unique(bins):
        expected[b] = SEM_CORRECT[bins == b].mean()
    np.testing.assert_allclose(np.asarray(bars.y, dtype=float), expected, equal_nan=True)
    np.testing.assert_allclose(np.asarray(bars.x), (np.arange(15) + 0.5) / 15, atol=1e-4)


def test_worst_images_order_and_nan_skipped(run):
    per_image = run[3]
    table = plots.worst_images_table(per_image, "auprc_ood", count=3).data[0]
    columns = {
        h.replace("<b>", "").replace("</b>", ""): list(v)
        for h, v in zip(table.header.values, table.cells.values, strict=True)
    }
    assert columns["auprc_ood"] == ["0.1000", "0.3000", "0.5000"]
    assert columns["image"] == [f"bravo_synobjs/polar bear/{i}.png" for i in (2, 4, 3)]
    assert columns["num_valid"] == ["1,002", "1,004", "1,003"]
    # FPR95 is lower-is-better: worst = highest first.
    table = plots.worst_images_table(per_image, "fpr95_ood", count=2).data[0]
    assert list(table.cells.values[3]) == ["0.4000", "0.3000"]
    assert plots.worst_images_table([{"auprc_ood": math.nan}], "auprc_ood") is None


def test_report_without_ood_subsets(run, tmp_path):
    results, histograms, _, _ = run
    semantic_only = {k: v for k, v in results.items() if k.startswith("ACDCfog") or k == "meta"}
    per_image = [
        dict(
            subset="ACDCfog",
            image=f"a{i}.png",
            auprc_ood=math.nan,
            fpr95_ood=math.nan,
            miou=m,
            ece=0.1,
            num_valid=5,
            num_invalid=0,
        )
        for i, m in enumerate([0.8, 0.2])
    ]
    path = write_report(tmp_path / "r.html", semantic_only, {"ACDCfog": histograms["ACDCfog"]}, per_image)
    text = path.read_text(encoding="utf-8")
    assert "No OOD subset with invalid and valid pixels" in text
    assert "Reliability on valid pixels" in text
    assert "worst images by per-image miou" in text  # falls back to mIoU without OOD values


def test_report_without_ground_truth(tmp_path):
    conf = {"synobjs": hist_of([100, 40000, 65535, 65535]), "ACDCfog": np.zeros(L, np.int64)}
    path = write_report(tmp_path / "r.html", {"meta": {"mode": "no GT"}}, {}, [], conf_histograms=conf)
    text = path.read_text(encoding="utf-8")
    assert "Confidence distribution per subset" in text and "Metrics per subset" not in text
    fig = plots.confidence_histograms(conf)
    assert [t.name for t in fig.data] == ["synobjs (4 px)"]  # the empty subset is skipped
    trace = fig.data[0]
    assert len(trace.x) == 257 and np.sum(np.asarray(trace.y)[:-1]) == pytest.approx(1.0)
    assert trace.y[-2] == 0.5  # two of four pixels at the top level
    # A coarser histogram is plotted as given.
    assert len(plots.confidence_histograms({"SMIYC": np.array([1, 2, 3, 4])}).data[0].x) == 5
    # Nothing at all still gives a page.
    assert "Nothing to show" in build_report({}, {}, [])


def test_ood_curves_leave_out_subsets_whose_invalid_pixels_are_not_ood():
    rng = np.random.default_rng(7)
    hist = {k: rng.integers(0, 5, 65536) for k in ("correct", "wrong", "ood_pos", "ood_neg")}
    figure = plots.ood_curves({"ACDCfog": hist, "synobjs": hist, "synrain": hist})
    names = " ".join(trace.name or "" for trace in figure.data)
    assert "synobjs" in names
    assert "ACDCfog" not in names and "synrain" not in names
    assert plots.ood_curves({"ACDCfog": hist}) is None
