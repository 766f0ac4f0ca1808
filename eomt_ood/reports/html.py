"""One self-contained `report.html` of an evaluation: works offline (plotly.js embedded once, inline).

A run's report has one section per confidence score (`ScoreSection`: the same plain data as
`eomt_ood.reports.plots` takes: metrics, histograms, per-image rows, for runs without ground truth confidence
histograms, and thumbnails of the worst images) and shows whichever parts the data supports; a part without data
says so instead of failing. `write_store_report` builds the sections of every score from a run's prediction store
(`evaluate` writes its report so); `write_report` is the one-score form of the same page.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
table.meta td { padding: 2px 12px 2px 0; vertical-align: top; overflow-wrap: anywhere; }
table.meta td:first-child { color: #666; white-space: nowrap; }
table.grid { border-collapse: collapse; } table.grid th, table.grid td { padding: 1px 10px 1px 0; text-align: right; }
table.grid th { color: #666; font-weight: normal; } table.grid td:first-child { text-align: left; }
table.worst { border-collapse: collapse; font-size: 13px; margin-top: 8px; }
table.worst th { background: #e8eef7; text-align: left; padding: 4px 8px; }
table.worst td { border-top: 1px solid #eee; padding: 3px 8px; vertical-align: middle; }
table.worst td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.worst td.path { overflow-wrap: anywhere; max-width: 320px; } table.worst img { display: block; height: 80px; }
h3 { margin-top: 24px; } .nav { font-size: 15px; }
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


def _meta_value(value, depth: int = 0) -> str:
    """One run-table value as HTML: mappings as nested tables (a table of rows when every value is a mapping
    with the same keys, e.g. the pixel counts per subset), lists joined, floats to 6 significant digits, None
    as "–". Nothing is cut: long paths wrap."""
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return html.escape(f"{value:,}" if not isinstance(value, bool) else str(value))
    if isinstance(value, float):
        return html.escape(plots.format_value(value) if value != value else f"{value:.6g}")
    if isinstance(value, Mapping):
        if not value:
            return "–"
        inner = list(value.values())
        keys = list(inner[0].keys()) if isinstance(inner[0], Mapping) else None
        if keys and all(isinstance(v, Mapping) and list(v.keys()) == keys for v in inner):
            head = "".join(f"<th>{html.escape(str(k))}</th>" for k in ["", *keys])
            body = "".join(
                f"<tr><td>{html.escape(str(name))}</td>"
                + "".join(f"<td>{_meta_value(row[k], depth + 1)}</td>" for k in keys)
                + "</tr>"
                for name, row in value.items()
            )
            return f'<table class="grid"><tr>{head}</tr>{body}</table>'
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{_meta_value(v, depth + 1)}</td></tr>"
            for k, v in value.items()
        )
        return f'<table class="meta">{rows}</table>'
    if isinstance(value, list | tuple):
        if all(not isinstance(v, Mapping | list | tuple) for v in value):
            return ", ".join(_meta_value(v, depth + 1) for v in value) or "–"
        return "<br>".join(_meta_value(v, depth + 1) for v in value)
    return html.escape(str(value))


def _meta_html(meta) -> str:
    if not isinstance(meta, Mapping) or not meta:
        return ""
    rows = [
        f"<tr><td>{html.escape(str(key))}</td><td>{_meta_value(value)}</td></tr>"
        for key, value in meta.items()
        if key != "intervals"  # shown with the metrics
    ]
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


def _section(title: str, fig: go.Figure | None, missing: str, level: int = 2) -> str:
    body = figure_html(fig) if fig is not None else f'<p class="note">{html.escape(missing)}</p>'
    return f"<h{level}>{html.escape(title)}</h{level}>\n{body}"


WORST_COLUMNS = ("auprc_ood", "fpr95_ood", "miou", "ece", "num_valid", "num_invalid")


def worst_images_html(
    per_image: Sequence[Mapping],
    metric: str,
    count: int = 20,
    thumbnails: Mapping[str, tuple[str, str]] | None = None,
) -> str | None:
    """HTML table of the `count` worst images by `metric` (`plots.worst_rows`), with the photo (OOD ground truth
    over it) and the confidence map of each as thumbnails when given ({image: (photo URI, confidence URI)});
    None when no image has a finite value."""
    picked = plots.worst_rows(per_image, metric, count)
    if not picked:
        return None
    thumbnails = thumbnails or {}
    show = bool(thumbnails)
    head = (["photo · OOD truth", "confidence"] if show else []) + ["subset", "image", *WORST_COLUMNS]
    header = "".join(f"<th>{'<b>' + c + '</b>' if c == metric else html.escape(c)}</th>" for c in head)
    lines = []
    for i in picked:
        row = per_image[i]
        cells = []
        if show:
            pair = thumbnails.get(str(row.get("image")))
            cells += [f'<td><img src="{uri}" alt=""></td>' for uri in pair] if pair else ["<td></td>"] * 2
        cells.append(f"<td>{html.escape(str(row.get('subset')))}</td>")
        cells.append(f'<td class="path">{html.escape(str(row.get("image")))}</td>')
        for key in WORST_COLUMNS:
            value = row.get(key)
            if key.startswith("num_"):
                text = "–" if value is None or value != value else f"{int(value):,}"
            else:
                text = plots.format_value(value)
            cells.append(f'<td class="num">{text}</td>')
        lines.append(f"<tr>{''.join(cells)}</tr>")
    direction = "highest" if plots.lower_is_better(metric) else "lowest"
    caption = f"{len(picked)} worst images by per-image {metric} ({direction} first)"
    return f'<p class="note">{caption}</p><table class="worst"><tr>{header}</tr>{"".join(lines)}</table>'


@dataclass
class ScoreSection:
    """What the report shows of one confidence score.

    metrics: the score's flat official keys ({} without ground truth). histograms[subset]: `correct`, `wrong`,
    `ood_pos`, `ood_neg` (65536,) counts per confidence level. per_image: rows with `subset`, `image` and the
    image's metrics (`auprc_ood`, `fpr95_ood`, `miou`, `ece`, `num_valid`, `num_invalid`). conf_histograms[subset]:
    (L,) counts per confidence level, for runs without ground truth. thumbnails: {image: (photo URI, confidence
    URI)} for the worst-images table. intervals: {key: (low, high)} bootstrap intervals of the metrics
    (`meta.intervals`), shown with the values.
    """

    score: str | None
    metrics: Mapping
    histograms: Mapping[str, Mapping[str, np.ndarray]]
    per_image: Sequence[Mapping]
    conf_histograms: Mapping[str, np.ndarray] | None = None
    thumbnails: Mapping[str, tuple[str, str]] | None = None
    intervals: Mapping[str, tuple[float, float]] | None = None


def _worst_metric(per_image: Sequence[Mapping]) -> str | None:
    """AUPRC_OOD when some image has it, else mIoU (without OOD images the worst segmentations are the next most
    useful list), else None."""
    for metric in ("auprc_ood", "miou"):
        if plots.worst_rows(per_image, metric, 1):
            return metric
    return None


def _score_body(section: ScoreSection, worst_count: int) -> list[str]:
    metrics, histograms, per_image = dict(section.metrics or {}), section.histograms or {}, section.per_image
    has_gt = bool(plots.subsets_in(metrics) or histograms or per_image)
    intervals = section.intervals
    body = [_summary_html(metrics, intervals)]
    if has_gt:
        table = plots.metrics_table(metrics, intervals) if plots.subsets_in(metrics) else None
        body.append(_section("Metrics", table, "No metrics.", 3))
        bars = plots.interval_bars(metrics, intervals) if intervals else None
        if bars is not None:
            body.append(_section("Intervals", bars, "", 3))
        body.append(
            _section(
                "OOD detection (synobjs, SMIYC)",
                plots.ood_curves(histograms),
                "No OOD subset with invalid and valid pixels in this run.",
                3,
            )
        )
        body.append(
            _section(
                "Calibration",
                plots.reliability_diagrams(histograms),
                "No subset with semantic ground truth.",
                3,
            )
        )
        metric = _worst_metric(per_image)
        worst = worst_images_html(per_image, metric, worst_count, section.thumbnails) if metric else None
        body.append("<h3>Worst images</h3>" + (worst or '<p class="note">No per-image metrics.</p>'))
    if section.conf_histograms:
        body.append(
            _section(
                "Confidence",
                plots.confidence_histograms(section.conf_histograms),
                "All confidence histograms are empty.",
                3,
            )
        )
    if not has_gt and not section.conf_histograms:
        body.append('<p class="note">Nothing to show: no metrics, histograms or confidences were given.</p>')
    return body


def build_run_report(
    sections: Sequence[ScoreSection], meta: Mapping | None, title: str, worst_count: int = 20
) -> str:
    """The report of a run as one HTML string: the run table, the per-class IoU (it does not depend on the
    score), then one section per confidence score (with links to each when there are several)."""
    parts = [written_note("Metrics as in docs/metrics.md (pooled over each subset).")]
    named = [s for s in sections if s.score]
    if len(named) > 1:
        links = " · ".join(
            f'<a href="#score-{html.escape(s.score)}">{html.escape(s.score)}</a>' for s in named
        )
        parts.append(f'<p class="nav">Confidence scores: {links}</p>')
    parts.append(_meta_html(meta))
    iou = plots.iou_heatmap(sections[0].metrics) if sections else None
    if iou is not None:
        parts.append(_section("IoU per class (the same for every score)", iou, ""))
    for section in sections:
        if section.score:
            anchor = html.escape(section.score)
            parts.append(f'<h2 id="score-{anchor}">Confidence score: {anchor}</h2>')
        parts.extend(_score_body(section, worst_count))
    return page(title, parts)


def write_run_report(
    path: str | Path, sections: Sequence[ScoreSection], meta: Mapping | None, title: str
) -> Path:
    """Write `build_run_report` to `path` (atomically) and return the path."""
    return write_text_atomic(path, build_run_report(sections, meta, title))


def build_report(
    results: Mapping,
    histograms: Mapping[str, Mapping[str, np.ndarray]],
    per_image: Sequence[Mapping],
    title: str = "eomt-ood evaluation report",
    conf_histograms: Mapping[str, np.ndarray] | None = None,
    worst_count: int = 20,
    thumbnails: Mapping[str, tuple[str, str]] | None = None,
    intervals: Mapping[str, tuple[float, float]] | None = None,
) -> str:
    """The report of one score as one HTML string (see `write_report`)."""
    results = dict(results or {})
    meta = results.pop("meta", None)
    section = ScoreSection(
        None, results, histograms or {}, list(per_image or []), conf_histograms, thumbnails, intervals
    )
    return build_run_report([section], meta, title, worst_count)


def write_report(
    path: str | Path,
    results: Mapping,
    histograms: Mapping[str, Mapping[str, np.ndarray]],
    per_image: Sequence[Mapping],
    title: str = "eomt-ood evaluation report",
    conf_histograms: Mapping[str, np.ndarray] | None = None,
    intervals: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Write one self-contained HTML report of one score to `path` (atomically) and return the path.

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


def store_sections(reader, results: Mapping, worst_count: int = 20) -> list[ScoreSection]:
    """One `ScoreSection` per confidence score of a run, from its prediction store (`eomt_ood.store.StoreReader`:
    histograms, per-image metrics, previews for the thumbnails) and its results (the metrics of each score)."""
    from eomt_ood.bravo.rundir import intervals_of, score_block
    from eomt_ood.reports.pictures import report_thumbnails

    has_metrics = any(k != "meta" for k in results)
    sections = []
    for score in reader.confidences:
        metrics = score_block(results, score)[1] if has_metrics else {}
        intervals = intervals_of(results, score) if has_metrics else None
        stats = reader.stats(score)
        per_image = [
            {"subset": subset, "image": rel, **{k: float(v[i]) for k, v in stats.items()}}
            for i, (rel, subset) in enumerate(zip(reader.relpaths, reader.subsets, strict=True))
        ]
        metric = _worst_metric(per_image)
        thumbnails = {}
        if metric is not None:
            for i in plots.worst_rows(per_image, metric, worst_count):
                thumbnails[reader.relpaths[i]] = report_thumbnails(reader, i, score)
        level = reader.level_histograms(score)
        sections.append(
            ScoreSection(
                score,
                metrics,
                reader.histograms(score),
                per_image,
                level or None,
                thumbnails or None,
                intervals or None,
            )
        )
    return sections


def write_store_report(path: str | Path, store: str | Path, results: Mapping, title: str) -> Path:
    """Write the report of a run from its prediction store and results (every confidence score)."""
    from eomt_ood.store import StoreReader

    with StoreReader(store) as reader:
        sections = store_sections(reader, results)
    return write_run_report(path, sections, results.get("meta"), title)


__all__ = [
    "ScoreSection",
    "build_report",
    "build_run_report",
    "figure_html",
    "page",
    "store_sections",
    "worst_images_html",
    "write_report",
    "write_run_report",
    "write_store_report",
    "written_note",
]
