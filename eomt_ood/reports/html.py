"""One self-contained `report.html` of an evaluation: works offline (plotly.js embedded once, inline).

`write_report` takes the same plain data as `eomt_ood.reports.plots` (results, histograms, per-image rows and,
for runs without ground truth, confidence histograms) and writes whichever sections the data supports; a
section without data says so instead of failing.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from eomt_ood.io import write_text_atomic
from eomt_ood.reports import plots

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 0 24px 48px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.note { color: #666; font-size: 14px; }
.summary { display: flex; gap: 16px; flex-wrap: wrap; margin: 16px 0; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 10px 16px; min-width: 150px; }
.card .label { color: #666; font-size: 13px; } .card .value { font-size: 26px; font-weight: 600; }
table.meta { border-collapse: collapse; font-size: 13px; }
table.meta td { padding: 2px 12px 2px 0; vertical-align: top; } table.meta td:first-child { color: #666; }
"""


def page(title: str, body: list[str], css: str = "") -> str:
    """A whole self-contained HTML page: `title` as <title> and <h1>, then `body`; plotly.js inlined once (not a
    CDN link) so that the file opens offline and every figure only carries its data."""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_CSS}{css}</style>",
            f'<script type="text/javascript">{get_plotlyjs()}</script>',
            "</head><body>",
            f"<h1>{html.escape(title)}</h1>",
            *body,
            "</body></html>",
        ]
    )


def written_note(extra: str = "") -> str:
    """The "Written <date> by eomt-ood" line under a page's title."""
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f'<p class="note">Written {created} by eomt-ood. {extra}</p>'


def figure_html(fig: go.Figure) -> str:
    # plotly.js is written once in <head>; every figure only carries its data.
    return fig.to_html(
        full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True}
    )


def _meta_html(meta) -> str:
    if not isinstance(meta, Mapping) or not meta:
        return ""
    rows = []
    for key, value in meta.items():
        if key == "intervals":  # shown with the metrics
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str, allow_nan=True)
        if len(text) > 300:
            text = text[:300] + " …"
        rows.append(f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(text)}</td></tr>")
    return f'<h2>Run</h2><table class="meta">{"".join(rows)}</table>'


def _summary_html(results: Mapping, intervals: Mapping | None = None) -> str:
    intervals = intervals or {}

    def under(key: str) -> str:
        iv = intervals.get(key)
        return f'<div class="label">[{iv[0]:.4f}, {iv[1]:.4f}]</div>' if iv else ""

    cards = [
        f'<div class="card"><div class="label">{key}</div><div class="value">'
        f"{plots.format_value(results[key])}</div>{under(key)}</div>"
        for key in plots.SUMMARY_KEYS
        if key in results
    ]
    return f'<div class="summary">{"".join(cards)}</div>' if cards else ""


def _section(title: str, fig: go.Figure | None, missing: str) -> str:
    body = figure_html(fig) if fig is not None else f'<p class="note">{html.escape(missing)}</p>'
    return f"<h2>{html.escape(title)}</h2>\n{body}"


def build_report(
    results: Mapping,
    histograms: Mapping[str, Mapping[str, np.ndarray]],
    per_image: Sequence[Mapping],
    title: str = "eomt-ood evaluation report",
    conf_histograms: Mapping[str, np.ndarray] | None = None,
    worst_count: int = 20,
    intervals: Mapping[str, tuple[float, float]] | None = None,
) -> str:
    """The report as one HTML string (see `write_report`)."""
    results = dict(results or {})
    histograms = histograms or {}
    per_image = list(per_image or [])
    has_gt = bool(plots.subsets_in(results) or histograms or per_image)
    sections = [_meta_html(results.get("meta"))]
    if has_gt:
        sections.append(
            _section(
                "Metrics",
                plots.metrics_table(results, intervals) if plots.subsets_in(results) else None,
                "No metrics.",
            )
        )
        bars = plots.interval_bars(results, intervals) if intervals else None
        if bars is not None:
            sections.append(_section("Intervals", bars, ""))
        iou = plots.iou_heatmap(results)
        if iou is not None:
            sections.append(_section("IoU per class", iou, ""))
        sections.append(
            _section(
                "OOD detection (synobjs, SMIYC)",
                plots.ood_curves(histograms),
                "No OOD subset with invalid and valid pixels in this run.",
            )
        )
        sections.append(
            _section(
                "Calibration", plots.reliability_diagrams(histograms), "No subset with semantic ground truth."
            )
        )
        worst = plots.worst_images_table(per_image, "auprc_ood", worst_count)
        if worst is None:
            # Without OOD images the worst segmentations are the next most useful list.
            worst = plots.worst_images_table(per_image, "miou", worst_count)
        sections.append(_section("Worst images", worst, "No per-image metrics."))
    if conf_histograms:
        sections.append(
            _section(
                "Confidence",
                plots.confidence_histograms(conf_histograms),
                "All confidence histograms are empty.",
            )
        )
    if not has_gt and not conf_histograms:
        sections.append(
            '<p class="note">Nothing to show: no metrics, histograms or confidences were given.</p>'
        )
    note = "Metrics as in docs/metrics.md (pooled over each subset)."
    return page(title, [written_note(note), _summary_html(results, intervals), *sections])


def write_report(
    path: str | Path,
    results: Mapping,
    histograms: Mapping[str, Mapping[str, np.ndarray]],
    per_image: Sequence[Mapping],
    title: str = "eomt-ood evaluation report",
    conf_histograms: Mapping[str, np.ndarray] | None = None,
    intervals: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Write one self-contained HTML report to `path` (atomically) and return the path.

    results: flat official keys + `meta` (docs/metrics.md §6); may be empty for runs without ground truth.
    histograms[subset]: `correct`, `wrong`, `ood_pos`, `ood_neg` (65536,) int64 counts per confidence level.
    per_image: rows with `subset`, `image`, `auprc_ood`, `fpr95_ood`, `miou`, `ece`, `num_valid`, `num_invalid`.
    conf_histograms[subset]: (L,) counts per confidence level, for runs without ground truth.
    intervals: optional {key: (low, high)} bootstrap intervals (`meta.intervals`), shown with the values.
    """
    text = build_report(
        results, histograms, per_image, title=title, conf_histograms=conf_histograms, intervals=intervals
    )
    return write_text_atomic(path, text)


__all__ = ["build_report", "figure_html", "page", "write_report", "written_note"]
