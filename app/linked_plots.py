"""The explorer's linked plots and its threshold scales (pure: figures and numbers, no Streamlit).

- Threshold scales: the OOD threshold is a doubt value t (1 - confidence; a pixel is flagged when its doubt level
  j = 65535 - k is >= `level_of_doubt(t)`). The useful values of t often sit near 0.001-0.01, so the slider moves
  on a log10 scale or on the quantile scale (the share of a subset's pixels the threshold flags); the exact value
  is typed in separately.
- OOD curves with a marker on every drawn point: each point carries its doubt level, so a click on it sets the
  threshold there; the current operating point is drawn as a star.
- The confusion matrix as a grid of square markers (a plotly heatmap cannot be clicked to a selection): a click
  on a cell names (true class, predicted class).

Histograms are the store's: (65536,) counts indexed by confidence level k (see `eomt_ood.store`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from support import doubt_of_level, level_of_doubt, tpr95_threshold

from eomt_ood.bravo.layout import OOD_SUBSETS
from eomt_ood.data.labels import TRAIN_ID_NAMES
from eomt_ood.metrics.histogram import NUM_LEVELS
from eomt_ood.reports.plots import TEMPLATE, ood_curve_data, ordered_subsets

LOG_MIN = -5.2  # log10 of a doubt a little below the smallest one a level stands for, 0.5 / 65536
NOTHING_FLAGGED = NUM_LEVELS  # the doubt level that flags no pixel
_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2")


# ------------------------------------------------------------------------------------------------ scales


def log_position(doubt: float) -> float:
    """Slider position of a doubt on the log scale: log10(doubt), clipped to [LOG_MIN, 0]."""
    return float(np.clip(math.log10(doubt), LOG_MIN, 0.0)) if doubt > 0 else LOG_MIN


def doubt_of_log(position: float) -> float:
    return float(10.0 ** np.clip(position, LOG_MIN, 0.0))


def flagged_shares(counts: np.ndarray) -> np.ndarray | None:
    """(65537,) share of the pixels of `counts` ((65536,) by confidence level) that doubt level j flags, for
    j = 0 .. 65536 (decreasing from 1 to 0); None when `counts` is empty."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return None
    # Doubt level j flags confidence levels k <= 65535 - j.
    return np.append(np.cumsum(counts)[::-1], 0) / total


def quantile_of_level(shares: np.ndarray, level: int) -> float:
    """The share of pixels that doubt level `level` flags (`flagged_shares`)."""
    return float(shares[int(np.clip(level, 0, NUM_LEVELS))])


def level_of_quantile(shares: np.ndarray, quantile: float) -> int:
    """The highest doubt level that flags at least `quantile` of the pixels (0: nothing flagged)."""
    return int(np.clip(np.count_nonzero(shares >= quantile) - 1, 0, NUM_LEVELS))


def operating_point(ood_pos: np.ndarray, ood_neg: np.ndarray, level: int) -> dict[str, float]:
    """TPR, FPR and precision of flagging doubt level >= `level`, from (65536,) histograms of the invalid and
    valid pixels by confidence level (NaN where a class is empty or nothing is flagged)."""
    pos, neg = np.asarray(ood_pos, dtype=np.int64), np.asarray(ood_neg, dtype=np.int64)
    last = NUM_LEVELS - 1 - int(level)  # the highest confidence level flagged; < 0 flags nothing
    tp = int(pos[: last + 1].sum()) if last >= 0 else 0
    fp = int(neg[: last + 1].sum()) if last >= 0 else 0
    num_pos, num_neg = int(pos.sum()), int(neg.sum())
    return {
        "tpr": tp / num_pos if num_pos else math.nan,
        "fpr": fp / num_neg if num_neg else math.nan,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
    }


START_SHARE = 0.05  # without OOD ground truth the threshold starts where it flags this share of the pixels


def start_threshold(histograms: Mapping[str, np.ndarray], counts: np.ndarray | None) -> tuple[float, str]:
    """(doubt, why) where the threshold starts on a subset: at TPR 95 % of its stored OOD histograms, else where it
    flags `START_SHARE` of its pixels (`counts`: `support.scored_counts`), else at 0.5."""
    found = tpr95_threshold(histograms.get("ood_pos", [0]), histograms.get("ood_neg", [0]))
    if found is not None:
        return found.doubt, f"TPR 95 % of the stored histograms (TPR {found.tpr:.4f}, FPR {found.fpr:.4f})"
    shares = flagged_shares(counts) if counts is not None else None
    if shares is not None:
        level = level_of_quantile(shares, START_SHARE)
        return doubt_of_level(
            level
        ), f"flags {quantile_of_level(shares, level):.1%} of the pixels (no OOD pixels here)"
    return 0.5, "no stored histogram for this subset"


def describe_level(histograms: Mapping[str, np.ndarray], counts: np.ndarray | None, level: int) -> str:
    """What doubt level `level` does on a subset, in words: TPR / FPR where it has OOD pixels, else the share of
    its pixels flagged; "–" without histograms."""
    if np.asarray(histograms.get("ood_pos", [0])).sum() and np.asarray(histograms.get("ood_neg", [0])).sum():
        point = operating_point(histograms["ood_pos"], histograms["ood_neg"], level)
        return f"TPR {point['tpr']:.4f} · FPR {point['fpr']:.4f}"
    shares = flagged_shares(counts) if counts is not None else None
    return f"flags {quantile_of_level(shares, level):.2%} of the pixels" if shares is not None else "–"


# ------------------------------------------------------------------------------------------------ OOD curves


def curve_subsets(histograms: Mapping[str, Mapping[str, np.ndarray]]) -> list[str]:
    """The OOD subsets (SMIYC, synobjs) with both invalid and valid pixels, in the official order."""
    return [
        s
        for s in ordered_subsets(histograms)
        if s in OOD_SUBSETS
        and np.asarray(histograms[s].get("ood_pos", [0])).sum() > 0
        and np.asarray(histograms[s].get("ood_neg", [0])).sum() > 0
    ]


def threshold_curves(
    histograms: Mapping[str, Mapping[str, np.ndarray]], level: int | None = None, max_points: int = 300
):
    """PR and ROC curves of the OOD subsets with a clickable marker on every drawn point (customdata: doubt level,
    doubt, TPR, FPR, precision) and, at doubt level `level`, a star on each curve. None without OOD subsets."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    subsets = curve_subsets(histograms)
    if not subsets:
        return None
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "Precision-recall (click a point: threshold there)",
            "ROC (click a point: threshold)",
        ),
        horizontal_spacing=0.1,
    )
    for i, subset in enumerate(subsets):
        h = histograms[subset]
        data = ood_curve_data(h["ood_pos"], h["ood_neg"], max_points)
        levels = np.minimum(data["threshold"], NOTHING_FLAGGED)
        doubts = np.minimum((levels + 0.5) / NUM_LEVELS, 1.0)
        custom = np.stack([levels, doubts, data["tpr"], data["fpr"], data["precision"]], axis=1)
        color = _COLORS[i % len(_COLORS)]
        hover = (
            "doubt ≥ %{customdata[1]:.6f}<br>TPR %{customdata[2]:.4f} · FPR %{customdata[3]:.4f}"
            "<br>precision %{customdata[4]:.4f}<extra>" + subset + "</extra>"
        )
        metrics = data["metrics"]
        common = {"mode": "lines+markers", "marker": {"size": 5, "color": color}, "customdata": custom}
        fig.add_trace(
            go.Scatter(
                x=data["recall"],
                y=data["precision"],
                line={"shape": "vh", "color": color},
                name=f"{subset} AUPRC {metrics['auprc']:.4f}",
                legendgroup=subset,
                hovertemplate=hover,
                **common,
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=data["fpr"],
                y=data["tpr"],
                line={"color": color},
                name=f"{subset} AUROC {metrics['auroc']:.4f}, FPR95 {metrics['fpr95']:.4f}",
                legendgroup=subset,
                hovertemplate=hover,
                **common,
            ),
            row=1,
            col=2,
        )
        if level is not None:
            point = operating_point(h["ood_pos"], h["ood_neg"], level)
            star = {
                "mode": "markers",
                "marker": {
                    "symbol": "star",
                    "size": 16,
                    "color": color,
                    "line": {"width": 1, "color": "#222"},
                },
                "showlegend": False,
                "legendgroup": subset,
                "hoverinfo": "skip",
            }
            fig.add_trace(go.Scatter(x=[point["tpr"]], y=[point["precision"]], **star), row=1, col=1)
            fig.add_trace(go.Scatter(x=[point["fpr"]], y=[point["tpr"]], **star), row=1, col=2)
    fig.add_hline(y=0.95, line={"dash": "dot", "color": "#bbb"}, row=1, col=2)
    fig.update_xaxes(title_text="recall", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="precision", range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="false-positive rate", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="true-positive rate", range=[0, 1.02], row=1, col=2)
    fig.update_layout(
        template=TEMPLATE,
        height=430,
        legend={"orientation": "h", "y": -0.22},
        margin={"t": 40},
        clickmode="event+select",
    )
    return fig


def level_from_selection(event: Any) -> int | None:
    """The doubt level carried by the first clicked point of a `threshold_curves` chart's selection state."""
    for point in _selected_points(event):
        custom = _custom_values(point.get("customdata"))
        if custom:
            return round(custom[0])
    return None


def _custom_values(custom: Any) -> list[float]:
    """A point's customdata as a list of numbers. Plotly sends numpy columns to the browser as typed arrays, and
    a typed array comes back from the browser as an object keyed by position ({"0": v0, "1": v1, ...}); a list
    is what `plotly.py` figures and tests hold."""
    if isinstance(custom, Mapping):
        try:
            keys = sorted(custom, key=int)
        except (TypeError, ValueError):
            return []
        custom = [custom[k] for k in keys]
    if not isinstance(custom, list | tuple):
        return []
    try:
        return [float(v) for v in custom]
    except (TypeError, ValueError):
        return []


def _selected_points(event: Any) -> list[dict]:
    if event is None:
        return []
    selection = event.get("selection") if isinstance(event, Mapping) else getattr(event, "selection", None)
    if selection is None:
        return []
    points = selection.get("points") if isinstance(selection, Mapping) else getattr(selection, "points", None)
    return list(points or [])


# ------------------------------------------------------------------------------------------------ confusion


def confusion_figure(matrix: np.ndarray, selected: tuple[int, int] | None = None):
    """The (19, 19) confusion matrix (rows: ground truth, columns: prediction) as square markers coloured by the
    share of the true class's pixels (log scale); customdata: true id, predicted id, pixels, share."""
    import plotly.graph_objects as go

    matrix = np.asarray(matrix, dtype=np.int64)
    n = matrix.shape[0]
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    true_ids, pred_ids = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    names = np.array(TRAIN_ID_NAMES[:n])
    keep = matrix.ravel() > 0
    colour = np.log10(np.maximum(share.ravel(), 1e-5))
    custom = np.stack([true_ids.ravel(), pred_ids.ravel(), matrix.ravel(), share.ravel()], axis=1)[keep]
    fig = go.Figure(
        go.Scatter(
            x=names[pred_ids.ravel()][keep],
            y=names[true_ids.ravel()][keep],
            mode="markers",
            marker={
                "symbol": "square",
                "size": 21,
                "color": colour[keep],
                "cmin": -5,
                "cmax": 0,
                "colorscale": "Blues",
                "colorbar": {
                    "title": "share of<br>true class",
                    "tickvals": [-5, -4, -3, -2, -1, 0],
                    "ticktext": ["≤0.001 %", "0.01 %", "0.1 %", "1 %", "10 %", "100 %"],
                },
            },
            customdata=custom,
            hovertemplate=(
                "true %{y} → predicted %{x}<br>%{customdata[2]:,} pixels (%{customdata[3]:.3%} of %{y})"
                "<extra>click: images behind this cell</extra>"
            ),
            showlegend=False,
        )
    )
    if selected is not None:
        t, p = selected
        fig.add_trace(
            go.Scatter(
                x=[names[p]],
                y=[names[t]],
                mode="markers",
                marker={"symbol": "square-open", "size": 25, "color": "#e45756", "line": {"width": 3}},
                hoverinfo="skip",
                showlegend=False,
            )
        )
    axis = {"categoryorder": "array", "categoryarray": list(names), "tickangle": -45, "showgrid": False}
    fig.update_layout(
        template=TEMPLATE,
        height=640,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={**axis, "title": "predicted", "side": "top"},
        yaxis={**axis, "title": "ground truth", "autorange": "reversed", "tickangle": 0},
        clickmode="event+select",
    )
    return fig


def cell_from_selection(event: Any) -> tuple[int, int] | None:
    """(true id, predicted id) of the first clicked cell of a `confusion_figure` chart's selection state."""
    for point in _selected_points(event):
        custom = _custom_values(point.get("customdata"))
        if len(custom) >= 2:
            return round(custom[0]), round(custom[1])
    return None


__all__ = ["doubt_of_level", "level_of_doubt"]  # the scale's ends, re-exported beside the scales
