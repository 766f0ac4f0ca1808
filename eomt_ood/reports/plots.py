"""Plotly figures of an evaluation: metric tables, OOD curves, reliability diagrams, worst images, confidences.

Every function takes plain data, so it does not care how the evaluation ran:

- `results`: the flat official keys of docs/metrics.md §6 (`synobjs_auprc_ood`, `ACDCfog_iou_valid`, ...) and an
  optional `meta` entry.
- `histograms[subset]`: (65536,) int64 counts per confidence level k (confidence (k + 0.5) / 65536, higher = more
  confident): `correct` / `wrong` over valid pixels, `ood_pos` / `ood_neg` over invalid / valid pixels. The OOD
  score is the *reverse* order (doubt), so OOD curves use `ood_pos[::-1]`, `ood_neg[::-1]`.
- `per_image`: dicts with `subset`, `image`, `auprc_ood`, `fpr95_ood`, `miou`, `ece`, `num_valid`,
  `num_invalid` (NaN where a metric does not apply).

Curves are thinned to `max_points` points for a small file; areas and legends always come from the exact
histogram metrics (`curve_metrics`, `ece`), never from the thinned points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from eomt_ood.bravo.layout import OOD_SUBSETS, SEMANTIC_SUBSETS, SUBSETS
from eomt_ood.bravo.scoring import OOD_KEYS, SEMANTIC_KEYS, lower_is_better
from eomt_ood.data.labels import TRAIN_ID_NAMES
from eomt_ood.metrics.histogram import curve_metrics, curves, ece, reliability

# Per-subset metrics in the order of docs/metrics.md §6 (iou_valid is a list and has its own heatmap), then hmean.
METRIC_COLUMNS = (*(k for k in SEMANTIC_KEYS if k != "iou_valid"), *OOD_KEYS, "hmean")
SUMMARY_KEYS = ("semantic_hmean", "ood_hmean", "bravo_index")
CURVE_POINTS = 2000
TEMPLATE = "plotly_white"


def format_value(value) -> str:
    """A metric as text: 4 decimals, or an en dash for an absent or undefined (NaN) value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.4f}"


def subsets_in(results: Mapping) -> list[str]:
    """Subsets with at least one per-subset metric in `results`: official order first, then others sorted."""
    found = set()
    for key in results:
        for metric in (*METRIC_COLUMNS, "iou_valid"):
            if key.endswith("_" + metric) and key not in SUMMARY_KEYS:
                found.add(key[: -len(metric) - 1])
    return [s for s in SUBSETS if s in found] + sorted(found - set(SUBSETS))


def ordered_subsets(names) -> list[str]:
    names = set(names)
    return [s for s in SUBSETS if s in names] + sorted(names - set(SUBSETS))


def format_interval(value, interval: Sequence[float] | None, html: bool = True) -> str:
    """`format_value`, then the interval as "[low, high]" when there is one: on a second line in small type
    (`html`, for the report's tables) or after a space (plain text, for the explorer)."""
    text = format_value(value)
    if interval is None or text == "–" or any(math.isnan(v) for v in interval):
        return text
    bounds = f"[{interval[0]:.4f}, {interval[1]:.4f}]"
    return f"{text}<br><span style='font-size:10px'>{bounds}</span>" if html else f"{text} {bounds}"


def metrics_table(results: Mapping, intervals: Mapping[str, Sequence[float]] | None = None) -> go.Figure:
    """Table of the per-subset metrics (rows: subsets; columns: docs/metrics.md §6 order + hmean), then summaries.

    intervals: optional {key: (low, high)} bootstrap intervals, printed under each value."""
    intervals = intervals or {}
    subsets = subsets_in(results)
    columns = [m for m in METRIC_COLUMNS if any(f"{s}_{m}" in results for s in subsets)]
    header = ["subset", *(f"{m} ↓" if lower_is_better(m) else m for m in columns)]
    cells = [subsets] + [
        [format_interval(results.get(f"{s}_{m}"), intervals.get(f"{s}_{m}")) for s in subsets]
        for m in columns
    ]
    summary = [k for k in SUMMARY_KEYS if k in results]
    if summary:
        cells[0] = [*cells[0], *summary]
        for i in range(1, len(cells)):
            cells[i] = [*cells[i], *([""] * len(summary))]
        if len(cells) == 1:  # no per-subset metric at all: summaries get their own value column
            header.append("value")
            cells.append([""] * len(subsets))
        for k in summary:
            cells[1][cells[0].index(k)] = format_interval(results[k], intervals.get(k))
    row_height = 38 if intervals else 24
    fig = go.Figure(
        go.Table(
            header={"values": header, "align": "left", "fill_color": "#e8eef7", "font": {"size": 12}},
            cells={"values": cells, "align": ["left"] + ["right"] * (len(header) - 1), "height": row_height},
        )
    )
    fig.update_layout(
        template=TEMPLATE,
        title="Metrics per subset (↓ = lower is better"
        + ("; [low, high]: bootstrap interval over images)" if intervals else ")"),
        height=90 + (row_height + 2) * (len(cells[0]) + 1),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return fig


def error_bars(values: Sequence, intervals: Sequence[Sequence[float] | None]) -> dict | None:
    """A plotly `error_y` of asymmetric bars from (low, high) intervals around `values`; None without any."""
    if not any(iv is not None for iv in intervals):
        return None
    plus, minus = [], []
    for value, iv in zip(values, intervals, strict=True):
        ok = iv is not None and isinstance(value, int | float) and not any(math.isnan(v) for v in iv)
        plus.append(max(iv[1] - value, 0.0) if ok else None)  # type: ignore[index]
        minus.append(max(value - iv[0], 0.0) if ok else None)  # type: ignore[index]
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "thickness": 1.2}


def interval_bars(
    results: Mapping, intervals: Mapping[str, Sequence[float]], width: int = 3
) -> go.Figure | None:
    """Bars of the key metrics per subset with their bootstrap intervals as error bars; None without intervals.

    One panel per metric (mIoU, ECE, AUROC_valid; AUPRC_OOD, AUROC_OOD, FPR95_OOD), x = the subsets that have it.
    """
    metrics = ("miou_valid", "ece_valid", "auroc_valid", "auprc_ood", "auroc_ood", "fpr95_ood")
    subsets = subsets_in(results)
    panels = [(m, [s for s in subsets if f"{s}_{m}" in intervals]) for m in metrics]
    panels = [(m, names) for m, names in panels if names]
    if not panels:
        return None
    rows = math.ceil(len(panels) / width)
    fig = make_subplots(
        rows=rows,
        cols=min(width, len(panels)),
        subplot_titles=[f"{m} ({'lower' if lower_is_better(m) else 'higher'} is better)" for m, _ in panels],
        vertical_spacing=0.3 / rows,
    )
    for i, (metric, names) in enumerate(panels):
        values = [results.get(f"{s}_{metric}") for s in names]
        fig.add_trace(
            go.Bar(
                x=names,
                y=values,
                marker_color=_COLORS[i % len(_COLORS)],
                error_y=error_bars(values, [intervals.get(f"{s}_{metric}") for s in names]),
                showlegend=False,
                hovertemplate="%{x}: %{y:.4f}<extra>" + metric + "</extra>",
            ),
            row=i // width + 1,
            col=i % width + 1,
        )
    fig.update_layout(
        template=TEMPLATE,
        title="Key metrics per subset, with bootstrap intervals over images",
        height=300 * rows + 60,
    )
    return fig


def iou_heatmap(results: Mapping) -> go.Figure | None:
    """Per-class IoU (subsets x 19 classes) from the `<subset>_iou_valid` lists; None if there are none."""
    subsets = [s for s in subsets_in(results) if isinstance(results.get(f"{s}_iou_valid"), list | tuple)]
    if not subsets:
        return None
    iou = np.array([[np.nan if v is None else float(v) for v in results[f"{s}_iou_valid"]] for s in subsets])
    names = (
        list(TRAIN_ID_NAMES) if iou.shape[1] == len(TRAIN_ID_NAMES) else [str(i) for i in range(iou.shape[1])]
    )
    text = [[format_value(v) for v in row] for row in iou]
    fig = go.Figure(
        go.Heatmap(
            z=iou,
            x=names,
            y=subsets,
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            text=text,
            texttemplate="%{text}",
            hovertemplate="%{y} / %{x}: IoU %{text}<extra></extra>",
            colorbar={"title": "IoU"},
        )
    )
    fig.update_layout(
        template=TEMPLATE,
        title="IoU per class on valid pixels (NaN: class absent from GT and prediction)",
        height=160 + 30 * len(subsets),
        yaxis={"autorange": "reversed"},
        margin={"t": 50},
    )
    return fig


def _nonempty(histograms: Mapping, subset: str, *keys: str) -> bool:
    """True when every one of `keys` is present for `subset` and holds at least one pixel."""
    h = histograms.get(subset, {})
    return all(k in h and np.asarray(h[k]).sum() > 0 for k in keys)


def _total(histograms: Mapping, subset: str, *keys: str) -> int:
    """Pixels over `keys` of `subset`; 0 unless all of them are present."""
    h = histograms.get(subset, {})
    if not all(k in h for k in keys):
        return 0
    return int(sum(np.asarray(h[k], dtype=np.int64).sum() for k in keys))


def ood_curve_data(ood_pos: np.ndarray, ood_neg: np.ndarray, max_points: int | None = CURVE_POINTS) -> dict:
    """Curve points and exact metrics of one OOD subset (invalid pixels positive, score = doubt = 65535 - k).

    Returns `curves(...)` of the reversed histograms (ROC fpr/tpr, PR recall/precision, from the implicit start
    (0, 0) / (recall 0, precision 1) to (1, 1) / recall 1) plus `metrics` = `curve_metrics(...)`.
    """
    pos, neg = np.asarray(ood_pos)[::-1], np.asarray(ood_neg)[::-1]
    data: dict = dict(curves(pos, neg, max_points=max_points))
    data["metrics"] = curve_metrics(pos, neg)
    return data


def _diagonal(fig: go.Figure, row: int, col: int) -> None:
    """The dotted y = x reference line (chance ROC, perfect calibration) in one panel."""
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"dash": "dot", "color": "#999"},
            showlegend=False,
            hoverinfo="skip",
        ),
        row=row,
        col=col,
    )


def ood_curves(histograms: Mapping, max_points: int | None = CURVE_POINTS) -> go.Figure | None:
    """PR and ROC curves of the OOD subsets (SMIYC, synobjs) with non-empty `ood_pos` and `ood_neg`; None if none.

    The PR trace is drawn as steps ("vh": precision i holds on (recall i-1, recall i]), so its area is the
    step-integral AUPRC of docs/metrics.md §5 when no point was thinned away; the legend shows the exact values.
    """
    # Only the OOD subsets (docs/metrics.md §8): the invalid pixels of the other subsets are not OOD positives.
    subsets = [
        s
        for s in ordered_subsets(histograms)
        if s in OOD_SUBSETS and _nonempty(histograms, s, "ood_pos", "ood_neg")
    ]
    if not subsets:
        return None
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Precision-recall (OOD = positive)", "ROC (OOD = positive)"),
        horizontal_spacing=0.1,
    )
    for i, subset in enumerate(subsets):
        data = ood_curve_data(histograms[subset]["ood_pos"], histograms[subset]["ood_neg"], max_points)
        m = data["metrics"]
        color = _COLORS[i % len(_COLORS)]
        fig.add_trace(
            go.Scatter(
                x=data["recall"],
                y=data["precision"],
                mode="lines",
                line={"shape": "vh", "color": color},
                name=f"{subset}  AUPRC {m['auprc']:.4f}",
                legendgroup=subset,
                hovertemplate="recall %{x:.4f}<br>precision %{y:.4f}<extra>" + subset + "</extra>",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=data["fpr"],
                y=data["tpr"],
                mode="lines",
                line={"color": color},
                name=f"{subset}  AUROC {m['auroc']:.4f}, FPR95 {m['fpr95']:.4f}",
                legendgroup=subset,
                hovertemplate="FPR %{x:.4f}<br>TPR %{y:.4f}<extra>" + subset + "</extra>",
            ),
            row=1,
            col=2,
        )
    _diagonal(fig, 1, 2)
    fig.add_hline(y=0.95, line={"dash": "dot", "color": "#bbb"}, row=1, col=2)
    fig.update_xaxes(title_text="recall", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="precision", range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="false-positive rate", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="true-positive rate", range=[0, 1.02], row=1, col=2)
    fig.update_layout(
        template=TEMPLATE,
        title="OOD detection curves (score = 1 - confidence)",
        height=460,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def reliability_diagrams(histograms: Mapping, n_bins: int = 15) -> go.Figure | None:
    """Reliability diagram per subset with semantic GT: accuracy per confidence bin against the diagonal, and
    under it the pixels in each bin (log scale), so a bin's weight in the ECE is visible.

    Bins are the 15 contiguous level bins of the ECE (docs/metrics.md §7); each panel's title carries the exact ECE.
    SMIYC has no semantic GT and is left out. None if no subset has correct/wrong counts.
    """
    no_semantics = set(SUBSETS) - set(SEMANTIC_SUBSETS)
    subsets = [
        s
        for s in ordered_subsets(histograms)
        if s not in no_semantics and _total(histograms, s, "correct", "wrong") > 0
    ]
    if not subsets:
        return None
    cols = min(3, len(subsets))
    rows = math.ceil(len(subsets) / cols)
    titles: list[str] = []
    for r in range(rows):  # one title per panel on its accuracy row; the pixel-count rows have none
        for c in range(cols):
            i = r * cols + c
            if i < len(subsets):
                h = histograms[subsets[i]]
                titles.append(f"{subsets[i]}  (ECE {ece(h['correct'], h['wrong'], n_bins):.4f})")
            else:
                titles.append("")
        titles.extend([""] * cols)
    fig = make_subplots(
        rows=2 * rows,
        cols=cols,
        subplot_titles=titles,
        row_heights=[0.75, 0.25] * rows,
        horizontal_spacing=0.06,
        vertical_spacing=0.12 / rows,
        shared_xaxes=True,
    )
    for i, s in enumerate(subsets):
        r, c = divmod(i, cols)
        rel = reliability(histograms[s]["correct"], histograms[s]["wrong"], n_bins)
        _reliability_panel(fig, rel, 2 * r + 1, c + 1, first=i == 0)
    fig.update_xaxes(range=[0, 1])
    for r in range(rows):
        fig.update_yaxes(range=[0, 1], title_text="accuracy", row=2 * r + 1)
        fig.update_yaxes(type="log", title_text="pixels", row=2 * r + 2)
        fig.update_xaxes(title_text="confidence", row=2 * r + 2)
    fig.update_layout(
        template=TEMPLATE, title="Reliability on valid pixels", height=420 * rows + 80, bargap=0
    )
    return fig


def _reliability_panel(
    fig: go.Figure, rel: Mapping[str, np.ndarray], row: int, col: int, first: bool
) -> None:
    """One subset's reliability bars and mean confidences at (row, col), its pixel counts at (row + 1, col).

    rel: `metrics.histogram.reliability` of the subset (per-bin lower, upper, accuracy, confidence, count).
    """
    centre, width = (rel["lower"] + rel["upper"]) / 2, rel["upper"] - rel["lower"]
    count = np.asarray(rel["count"], dtype=np.int64)
    share = count / max(int(count.sum()), 1)
    fig.add_trace(
        go.Bar(
            x=centre,
            y=rel["accuracy"],
            width=width,
            marker={"color": "#4c78a8", "line": {"width": 0.5}},
            name="accuracy",
            showlegend=first,
            legendgroup="accuracy",
            customdata=np.stack([rel["confidence"], count, share], axis=1),
            hovertemplate=(
                "bin %{x:.3f}<br>accuracy %{y:.4f}<br>mean confidence %{customdata[0]:.4f}"
                "<br>pixels %{customdata[1]:,} (%{customdata[2]:.2%})<extra></extra>"
            ),
        ),
        row=row,
        col=col,
    )
    fig.add_trace(
        go.Scatter(
            x=centre,
            y=rel["confidence"],
            mode="markers",
            marker={"color": "#e45756", "size": 5},
            name="mean confidence",
            showlegend=first,
            legendgroup="conf",
            hoverinfo="skip",
        ),
        row=row,
        col=col,
    )
    _diagonal(fig, row, col)
    # Empty bins are left out of the log axis (a zero has no place on it).
    fig.add_trace(
        go.Bar(
            x=centre,
            y=np.where(count > 0, count, np.nan),
            width=width,
            marker={"color": "#9ecae9", "line": {"width": 0.5}},
            name="pixels per bin",
            showlegend=first,
            legendgroup="pixels",
            customdata=share,
            hovertemplate="bin %{x:.3f}<br>pixels %{y:,} (%{customdata:.2%})<extra></extra>",
        ),
        row=row + 1,
        col=col,
    )


def _worst_order(values: np.ndarray, metric: str) -> np.ndarray:
    finite = np.flatnonzero(np.isfinite(values))
    order = np.argsort(values[finite], kind="stable")
    if lower_is_better(metric):
        order = order[::-1]
    return finite[order]


def worst_rows(per_image: Sequence[Mapping], metric: str = "auprc_ood", count: int = 20) -> list[int]:
    """Positions in `per_image` of the `count` worst images by a per-image metric, worst first; NaN skipped.

    Worst = lowest for higher-is-better metrics (AUPRC, mIoU), highest for ECE / FPR95; ties keep their order.
    """
    values = np.array([float(row.get(metric, math.nan)) for row in per_image], dtype=np.float64)
    return [int(i) for i in _worst_order(values, metric)[:count]]


def confidence_histograms(conf_histograms: Mapping[str, np.ndarray], bins: int = 256) -> go.Figure | None:
    """Distribution of confidence per subset (no GT needed): share of pixels per confidence bin, one line each.

    `conf_histograms[subset]`: (L,) counts per confidence level (L = 65536 or coarser; level k = confidence
    (k + 0.5) / L). Levels are summed into `bins` equal bins when L is a multiple of it. Empty subsets are
    skipped; None if nothing is left.
    """
    fig = go.Figure()
    for i, subset in enumerate(ordered_subsets(conf_histograms)):
        counts = np.asarray(conf_histograms[subset], dtype=np.int64).ravel()
        total = int(counts.sum())
        if total == 0:
            continue
        if counts.size > bins and counts.size % bins == 0:
            counts = counts.reshape(bins, -1).sum(axis=1)
        edges = np.arange(counts.size + 1) / counts.size
        # Step line with one point per bin edge: share of bin b drawn over [edge b, edge b+1).
        x = edges
        y = np.append(counts / total, counts[-1] / total)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                line={"shape": "hv", "color": _COLORS[i % len(_COLORS)]},
                name=f"{subset} ({total:,} px)",
                hovertemplate="confidence ≥ %{x:.4f}: %{y:.3%}<extra>" + subset + "</extra>",
            )
        )
    if not fig.data:
        return None
    fig.update_layout(
        template=TEMPLATE,
        title="Confidence distribution per subset (share of pixels per bin)",
        xaxis={"title": "confidence", "range": [0, 1]},
        yaxis={"title": "share of pixels", "type": "log"},
        height=420,
    )
    return fig


_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac")
