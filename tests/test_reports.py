"""The HTML report and its plotly figures (`eomt_ood.reports`): content, curve ends, exact areas, missing data."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from eomt_ood.metrics.histogram import curve_metrics
from eomt_ood.reports import plots
from eomt_ood.reports.html import build_report, worst_images_html, write_report

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


def test_reliability_bars_pixel_counts_and_ece_title():
    # docs/metrics.md §13 semantic example: ECE = 16759/40960 by hand.
    h = {"correct": hist_of(SEM_LEVELS[SEM_CORRECT]), "wrong": hist_of(SEM_LEVELS[~SEM_CORRECT])}
    fig = plots.reliability_diagrams({"ACDCfog": h, "SMIYC": h})
    titles = [a.text for a in fig.layout.annotations if a.text]
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
    # Under it, the pixels per bin (empty bins left off the log axis), on an axis of its own.
    counts = next(t for t in fig.data if t.name == "pixels per bin")
    expected_counts = np.bincount(bins, minlength=15).astype(float)
    expected_counts[expected_counts == 0] = np.nan
    np.testing.assert_array_equal(np.asarray(counts.y, dtype=float), expected_counts)
    assert counts.yaxis != bars.yaxis and fig.layout[counts.yaxis.replace("y", "yaxis")].type == "log"


def test_worst_images_order_nan_skipped_and_thumbnails(run):
    per_image = run[3]
    assert plots.worst_rows(per_image, "auprc_ood", count=3) == [2, 4, 3]
    assert plots.worst_rows(per_image, "fpr95_ood", count=2) == [4, 3]  # lower is better: highest first
    assert plots.worst_rows([{"auprc_ood": math.nan}], "auprc_ood") == []
    thumbs = {"bravo_synobjs/polar bear/2.png": ("data:image/jpeg;base64,AAA", "data:image/jpeg;base64,BBB")}
    table = worst_images_html(per_image, "auprc_ood", 3, thumbs)
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    assert [c[3] for c in cells] == [f"bravo_synobjs/polar bear/{i}.png" for i in (2, 4, 3)]
    assert [c[4] for c in cells] == ["0.1000", "0.3000", "0.5000"]
    assert [c[-2] for c in cells] == ["1,002", "1,004", "1,003"]
    assert cells[0][:2] == [
        '<img src="data:image/jpeg;base64,AAA" alt="">',
        '<img src="data:image/jpeg;base64,BBB" alt="">',
    ]
    assert cells[1][:2] == ["", ""]  # no thumbnail given for that image
    assert "3 worst images by per-image auprc_ood (lowest first)" in table
    assert worst_images_html([{"auprc_ood": math.nan}], "auprc_ood") is None


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


def test_run_report_covers_every_score_with_thumbnails(finished_run):
    """The report `gather_run` wrote for the shared two-score run (conftest.py): one section per score, the
    model's short name in the title, a run table cut nowhere, thumbnails made from the store's previews."""
    import base64
    import html as html_lib
    import io
    import json

    from PIL import Image

    from eomt_ood.reports.pictures import GT_COLORS, shrink
    from eomt_ood.store import StoreReader

    text = (finished_run / "report.html").read_text(encoding="utf-8")
    results = json.loads((finished_run / "results.json").read_text())
    assert "<title>eomt-ood BRAVO evaluation: eomt_test</title>" in text
    sections = re.split(r'<h2 id="score-(\w+)">', text)
    assert sections[1::2] == ["msp", "rba"]
    for score, body in zip(sections[1::2], sections[2::2], strict=True):
        assert f"{results[score]['synobjs_auprc_ood']:.4f}" in body
        assert f"{results[score]['bravo_index']:.4f}" in body
        # synobjs has three images with a per-image AUPRC: three rows, each with a photo and a confidence map.
        assert "3 worst images by per-image auprc_ood" in body
        assert len(re.findall(r'<img src="data:image/jpeg;base64,', body)) == 6
    # The run table: every value whole (no "…"), the pixel counts per subset as a table of their own. Only the
    # page's own markup is searched: the embedded plotly.js holds "…" in some versions (5.22), and a failing
    # `in` over megabytes of script would also make pytest spend minutes on the diff.
    markup = re.sub(r"<script\b.*?</script>", "", text, flags=re.S)
    assert markup.count("…") == 0
    assert html_lib.escape(results["meta"]["images_root"]) in text
    assert re.search(r'<table class="grid"><tr><th></th><th>\w+</th>', text)
    # The first photo thumbnail is the stored photo preview, shrunk, with the OOD truth in magenta.
    worst = re.split(r'<table class="worst">', sections[2])[1]
    uri, rel = re.search(
        r'<img src="data:image/jpeg;base64,([^"]+)".*?<td class="path">([^<]+)<', worst
    ).groups()
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB"), dtype=np.float64)
    with StoreReader(finished_run / "predictions.h5") as reader:
        i = reader.relpaths.index(html_lib.unescape(rel))
        photo = reader.preview(i, "rgb")
        invalid = reader.preview(i, "gt_invalid") != 0
    assert max(thumb.shape[:2]) == min(200, max(photo.shape[:2]))
    small_photo = shrink(photo, 200).astype(np.float64)
    small_invalid = shrink(np.repeat(invalid[..., None] * 255, 3, -1).astype(np.uint8), 200)[..., 0] == 255
    outside = ~small_invalid
    assert np.abs(thumb[outside] - small_photo[outside]).mean() < 12  # JPEG loss only
    magenta = 0.4 * small_photo[small_invalid] + 0.6 * np.array(GT_COLORS["invalid"])
    assert np.abs(thumb[small_invalid] - magenta).mean() < 20
