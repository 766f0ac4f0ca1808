"""`eomt-ood compare`: several evaluation runs side by side (the paper's OOD comparison: EoMT vs Mask2Former).

Each RUN_DIR is a directory written by `eomt_ood.evaluate.evaluate_bravo` (results.json, predictions.h5,
config.yaml), or the results JSON of `eomt-ood score --stats` (its statistics file gives the histograms and the
per-image statistics). For every run one confidence score is compared: `--confidence NAME` when given, else the
run's first score (`meta.confidences[0]`, the one it submitted).

Intervals (`eomt_ood.bravo.intervals`): every run's per-image statistics are resampled with the same seeded
draws, so each value gets its bootstrap interval, and every run after the first gets its difference to the
first with the paired interval (the same resampled images for both), marked where that interval excludes 0.
Pairing needs the same images (matched by name); runs over other images get their own intervals only, and a
warning says why.

The report holds

- a table in the layout of the paper's OOD comparison: method, backbone, pre-training, AUPRC_OOD of each OOD
  subset (SMIYC, synobjs), then AUROC_OOD / FPR95_OOD, and the BRAVO summaries; a second table with mIoU and
  ECE of every subset;
- precision-recall curves of all runs on one plot per OOD subset (OOD = positive, score = 1 - confidence, from
  each run's stored histograms, docs/metrics.md §6), and grouped bar charts of the key metrics per subset;
- a warning banner listing every convention on which the runs differ (pixels scored, confidence score, subsets
  and their image / pixel counts, input size, precision, unscored subsets). The report is still written: the
  banner says what is not comparable instead of mixing it silently.

Method, backbone and pre-training come from the model the run recorded (`meta.model_config` = {"name",
"kwargs"}, else the checkpoint's safetensors metadata, else `meta.model`). Pre-training is what the registered
architecture is built for (DINOv2 for the EoMT / ViT-Adapter ViTs, IN21K for Swin-L and DeiT-III, ...); the
weights file does not record which backbone weights training started from, so this is the family's recipe, and
"none" for the tiny random test sizes.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from eomt_ood.bravo.layout import OOD_SUBSETS, SUBSETS
from eomt_ood.bravo.scoring import lower_is_better
from eomt_ood.errors import UserError
from eomt_ood.io import atomic_path, check_output, write_text_atomic
from eomt_ood.reports import plots
from eomt_ood.reports.html import figure_html, page, written_note

# Metrics of the OOD subsets, in the paper's order (AUPRC_OOD first: the headline number).
OOD_METRICS = ("auprc_ood", "auroc_ood", "fpr95_ood")
SEMANTIC_METRICS = ("miou_valid", "ece_valid")
METRIC_LABELS = {
    "auprc_ood": "AUPRC_OOD",
    "auroc_ood": "AUROC_OOD",
    "fpr95_ood": "FPR95_OOD",
    "miou_valid": "mIoU",
    "ece_valid": "ECE",
}
IDENTITY_COLUMNS = ("run", "method", "backbone", "pretraining", "model", "score", "pixels")

# Registered-name prefix -> (method, backbone, pre-training of that architecture in the paper / its recipe).
# Longest prefix wins, so "eomt_deit3_large" is not read as a DINOv2 ViT.
_ARCHITECTURES = {
    "eomt_small": ("EoMT", "ViT-S", "DINOv2"),
    "eomt_base": ("EoMT", "ViT-B", "DINOv2"),
    "eomt_large": ("EoMT", "ViT-L", "DINOv2"),
    "eomt_giant": ("EoMT", "ViT-g", "DINOv2"),
    "eomt_deit3_large": ("EoMT", "ViT-L", "DeiT-III (IN21K)"),
    "eomt_eva02_large": ("EoMT", "ViT-L", "EVA-02"),
    "eomt_test": ("EoMT", "test", "none"),
    "m2f_swin_large": ("Mask2Former", "Swin-L", "IN21K"),
    "m2f_swin_tiny": ("Mask2Former", "Swin-T", "IN1K"),
    "m2f_swin_test": ("Mask2Former", "Swin test", "none"),
    "m2f_vit_adapter_large": ("Mask2Former", "ViT-Adapter-L", "DINOv2"),
    "m2f_vit_adapter_small": ("Mask2Former", "ViT-Adapter-S", "DINOv2"),
    "m2f_vit_adapter_test": ("Mask2Former", "ViT-Adapter test", "none"),
}


def describe_architecture(name: str | None) -> tuple[str, str, str]:
    """(method, backbone, pre-training) of a registered model name; "unknown" for what the name does not tell."""
    if not name:
        return "unknown", "unknown", "unknown"
    matches = [prefix for prefix in _ARCHITECTURES if name == prefix or name.startswith(prefix + "_")]
    if matches:
        return _ARCHITECTURES[max(matches, key=len)]
    if name.startswith("eomt"):
        return "EoMT", "unknown", "unknown"
    if name.startswith("m2f"):
        return "Mask2Former", "unknown", "unknown"
    return "unknown", "unknown", "unknown"


def _default_img_size(name: str | None) -> int | None:
    """Input size a registered name builds with when its kwargs do not set one (the `_1024` / `_512` suffix)."""
    if not name:
        return None
    if name.endswith("_test"):
        return 64
    for size in (1024, 512):
        if name.endswith(f"_{size}"):
            return size
    if name.startswith("m2f_") and not name.endswith("_test"):
        return 1024
    return None


@dataclass
class RunSummary:
    """One run, reduced to what the comparison needs.

    metrics: the flat official keys of the compared score (`<subset>_<metric>`, `bravo_index`, ...).
    histograms[subset]: (65536,) int64 `correct`, `wrong`, `ood_pos`, `ood_neg` per confidence level (higher =
    more confident), from the run's store; empty when the store has none for the score.
    """

    path: Path
    label: str
    score: str
    metrics: dict[str, Any]
    meta: dict[str, Any]
    config: dict[str, Any]
    model_name: str | None
    model_kwargs: dict[str, Any]
    method: str
    backbone: str
    pretraining: str
    histograms: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    statistics_file: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)  # the whole results file (every score block)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    differences: dict[str, Any] = field(default_factory=dict)  # key -> bootstrap.Difference (run - first run)
    run_label: str = ""  # the run's own label: `label` without the score that several compared scores add

    @property
    def img_size(self) -> int | None:
        size = self.model_kwargs.get("img_size")
        return int(size) if isinstance(size, int | float) else _default_img_size(self.model_name)


def load_run(run_dir: str | Path, confidence: str | None = None) -> RunSummary:
    """Read one run folder (results.json, config.yaml, predictions.h5), or a `score` results JSON with its
    statistics file; bad input is a one-line UserError."""
    from eomt_ood.bravo.rundir import RunDir, load_results, model_record, score_block, statistics_file
    from eomt_ood.store import StoreReader

    run = RunDir(Path(run_dir))
    if run.path.suffix == ".json" and run.path.is_file():
        results_file = run.path
        results, config = load_results(results_file), {}
        stats_file = statistics_file(results, results_file)
    else:
        results_file = run.results_file
        results, config = run.read_results(), run.read_config()
        stats_file = run.store_file
    recorded_meta = results.get("meta")
    meta: dict[str, Any] = recorded_meta if isinstance(recorded_meta, dict) else {}
    score, metrics = score_block(results, confidence, where=str(results_file))
    if not metrics:
        raise UserError(f"{results_file}: no metrics (was the run scored with --gt?)")
    score = score or "unknown"
    model = model_record(meta, config) or {}
    name = model.get("name")
    method, backbone, pretraining = describe_architecture(name)
    histograms = {}
    if stats_file is not None:
        with StoreReader(stats_file) as store:
            # A `score` run's statistics file names its one score "submission".
            histograms = store.histograms(score if score in store.confidences else store.confidences[0])
    label = (run.path.stem if results_file == run.path else run.path.name) or str(run.path)
    return RunSummary(
        path=run.path,
        label=label,
        run_label=label,
        score=score,
        metrics=metrics,
        meta=meta,
        config=config,
        model_name=name,
        model_kwargs=dict(model.get("kwargs") or {}),
        method=method,
        backbone=backbone,
        pretraining=pretraining,
        histograms=histograms,
        statistics_file=stats_file,
        results=results,
    )


def score_list(confidence: str | Sequence[str] | None) -> list[str | None]:
    """The scores `--confidence` asks for: [None] (each run's submitted one) when it names none, else its
    comma-separated names in order, each once."""
    if confidence is None:
        return [None]
    names = confidence.split(",") if isinstance(confidence, str) else list(confidence)
    scores = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not scores:
        raise UserError("--confidence: give a score name, or several separated by commas")
    return scores


def load_runs(
    run_dirs: Sequence[str | Path], confidence: str | Sequence[str] | None = None
) -> list[RunSummary]:
    """Every run, once per score of `confidence` (`score_list`: one row per run and score, run by run), with
    labels made unique: the directory name, else the whole path, and with several scores the score after it.

    Several scores need results that name them: a `score` results file holds one unnamed score, which would
    only repeat under every name, so it is a `UserError` then.
    """
    from eomt_ood.bravo.rundir import FLAT, metric_blocks

    if not run_dirs:
        raise UserError("RUN_DIR: give at least one run directory")
    scores = score_list(confidence)
    groups = [[load_run(d, score) for score in scores] for d in run_dirs]
    names = [group[0].label for group in groups]
    runs = []
    for group in groups:
        for run in group:
            if (
                len(scores) > 1
                and set(metric_blocks(run.results)) == {FLAT}
                and not run.meta.get("confidences")
            ):
                raise UserError(
                    f"{run.path}: results of one unnamed score (a `score` results file), which cannot be "
                    "compared under several --confidence names; give it one"
                )
            if names.count(run.label) > 1:
                run.label = run.run_label = str(run.path)
            if len(scores) > 1:
                run.label += f" ({run.score})"
            runs.append(run)
    return runs


def add_intervals(runs: Sequence[RunSummary], settings: Any) -> list[str]:
    """Fill every run's `intervals` and, for the runs after the first, its paired `differences` to the first.

    All runs are resampled with the same seeded draws (`settings`: an `eomt_ood.bravo.intervals.Settings`),
    their subsets side by side in worker processes. Returns one line per run that could not be paired (other
    images) or has no per-image statistics.
    """
    from eomt_ood.bravo import intervals as iv
    from eomt_ood.io import default_workers

    notes: list[str] = []
    stats, reps = [], []
    with iv.interval_pool(default_workers()) as pool:
        for run in runs:
            if run.statistics_file is None:
                notes.append(f"{run.label}: no per-image statistics beside its results, so no intervals")
                stats.append(None)
                reps.append(None)
                continue
            run_stats = iv.ScoreStatistics.from_store(run.statistics_file, run.score)
            run_reps = iv.run_replicates(run_stats, run.metrics, settings, str(run.path), pool.map)
            run.intervals = {k: (v[0], v[1]) for k, v in iv.interval_table(run_reps, settings.level).items()}
            stats.append(run_stats)
            reps.append(run_reps)
    first = runs[0]
    for run, run_stats, run_reps in zip(runs[1:], stats[1:], reps[1:], strict=True):
        if run_reps is None or reps[0] is None:
            continue
        shared = [s for s in iv.scored_subsets(run.metrics) if s in iv.scored_subsets(first.metrics)]
        reason = iv.same_images(stats[0], run_stats, shared)
        if reason is not None:
            notes.append(f"{run.label} is not paired with {first.label}: {reason}")
            continue
        run.differences = iv.paired_differences(run_reps, reps[0], settings.level)
    return notes


# ------------------------------------------------------------------------------------------------ conventions


def _differs(values: Mapping[str, Any]) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1


def _listing(values: Mapping[str, Any]) -> str:
    return "; ".join(f"{label}: {value}" for label, value in values.items())


def convention_differences(runs: Sequence[RunSummary], chosen: Sequence[str] = ()) -> list[str]:
    """One line per convention on which the runs differ (empty when they agree on all of them); `chosen`:
    conventions the comparison varies on purpose (e.g. "confidence score" when several are asked for)."""
    lines = []
    checks = {
        "pixels scored": {r.label: r.meta.get("pixels", "unknown") for r in runs},
        "confidence score": {r.label: r.score for r in runs},
        "subsets evaluated": {
            r.label: ", ".join(plots.ordered_subsets((r.meta.get("subsets") or {}).keys())) for r in runs
        },
        "input size (img_size)": {r.label: r.img_size or "unknown" for r in runs},
        "precision": {r.label: r.config.get("precision", "unknown") for r in runs},
    }
    for what, values in checks.items():
        if what not in chosen and _differs(values):
            lines.append(f"{what} differs: {_listing(values)}")
    # Same subsets but other images or other ground-truth pixels: not the same test set (or not the same GT
    # resolution), so the numbers are not comparable either.
    subsets = plots.ordered_subsets({s for r in runs for s in (r.meta.get("subsets") or {})})
    for subset in subsets:
        for count in ("images", "valid", "invalid", "void"):
            values = {
                r.label: (r.meta.get("subsets") or {}).get(subset, {}).get(count)
                for r in runs
                if subset in (r.meta.get("subsets") or {})
            }
            if _differs(values):
                lines.append(f"{subset}: {count} count differs: {_listing(values)}")
    for run in runs:
        unscored = run.meta.get("unscored_subsets") or {}
        if unscored:
            lines.append(f"{run.label}: subsets left unscored: {', '.join(unscored)}")
        if run.model_name is None:
            lines.append(f"{run.label}: the model is not recorded (method and backbone unknown)")
    return lines


# ------------------------------------------------------------------------------------------------ the table


def _subsets(runs: Sequence[RunSummary]) -> list[str]:
    return plots.ordered_subsets({s for r in runs for s in plots.subsets_in(r.metrics)})


def comparison_rows(runs: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """One dict per run: identity columns, then `<subset>_<metric>` (OOD metrics of the OOD subsets, mIoU and
    ECE of every subset), then the summaries; None where a run lacks a value.

    With intervals (`add_intervals`), each value column `c` is followed by `c_low`, `c_high` (its bootstrap
    interval) and `c_diff`, `c_diff_low`, `c_diff_high`, `c_diff_excludes_0` (run - first run, paired; None
    for the first run and for runs that could not be paired)."""
    intervals = any(run.intervals for run in runs)
    subsets = _subsets(runs)
    ood = [s for s in subsets if s in OOD_SUBSETS]
    columns = [f"{s}_{m}" for m in OOD_METRICS for s in ood]
    columns += [f"{s}_{m}" for s in subsets for m in SEMANTIC_METRICS]
    columns += list(plots.SUMMARY_KEYS)
    # Only columns some run has a value for (SMIYC has no semantic ground truth, so no mIoU / ECE).
    columns = [c for c in columns if any(c in r.metrics for r in runs)]
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run": run.label,
            "method": run.method,
            "backbone": run.backbone,
            "pretraining": run.pretraining,
            "model": run.model_name or "unknown",
            "score": run.score,
            "pixels": run.meta.get("pixels", "unknown"),
        }
        for column in columns:
            row[column] = run.metrics.get(column)
            if intervals:
                interval = run.intervals.get(column)
                row[f"{column}_low"], row[f"{column}_high"] = interval if interval else (None, None)
                diff = run.differences.get(column)
                row[f"{column}_diff"] = diff.point if diff else None
                row[f"{column}_diff_low"] = diff.low if diff else None
                row[f"{column}_diff_high"] = diff.high if diff else None
                row[f"{column}_diff_excludes_0"] = diff.excludes_zero if diff else None
        rows.append(row)
    return rows


def comparison_text(rows: Sequence[Mapping[str, Any]], level: float = 0.95) -> str:
    """The headline columns of `comparison_rows` as a console table: AUPRC_OOD of each OOD subset, then the
    semantic and BRAVO summaries, one line per run; with intervals, each run after the first shows its paired
    difference to the first beside its value (``*`` where the interval of the difference excludes 0)."""
    keys = [f"{s}_auprc_ood" for s in SUBSETS if s in OOD_SUBSETS] + ["semantic_hmean", "bravo_index"]
    keys = [k for k in keys if k in rows[0]]
    table = [["run", "score", *keys]]
    marked = False
    for row in rows:
        cells = [str(row["run"]), str(row["score"])]
        for key in keys:
            cell = plots.format_value(row[key])
            diff = row.get(f"{key}_diff")
            if diff is not None:
                cell += f" ({diff:+.4f})" + ("*" if row[f"{key}_diff_excludes_0"] else " ")
                marked = True
            cells.append(cell)
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    ]
    if marked:
        lines.append(
            f"(+x): this run minus {rows[0]['run']}, paired over the same images; *: the {level:.0%} "
            "interval of the difference excludes 0"
        )
    return "\n".join(line.rstrip() for line in lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The table as CSV (one row per run; floats in full precision, empty for a missing value), atomically."""
    columns = list(rows[0]) if rows else list(IDENTITY_COLUMNS)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in row.items()}
            )
    return Path(path)


def _cell(value: Any) -> str:
    return html.escape(
        plots.format_value(value) if value is None or isinstance(value, int | float) else str(value)
    )


def _best(values: Sequence[Any], metric: str) -> set[int]:
    """Indices of the best finite value of a column (ties all bold), none with fewer than two values."""
    finite = [(i, float(v)) for i, v in enumerate(values) if isinstance(v, int | float) and math.isfinite(v)]
    if len(finite) < 2:
        return set()
    target = (min if lower_is_better(metric) else max)(v for _, v in finite)
    return {i for i, v in finite if v == target}


def _metric_of(column: str) -> str:
    if column in plots.SUMMARY_KEYS:
        return column
    return next((m for m in (*OOD_METRICS, *SEMANTIC_METRICS) if column.endswith("_" + m)), column)


def _html_table(
    rows: Sequence[Mapping[str, Any]], groups: Sequence[tuple[str, Sequence[tuple[str, str]]]]
) -> str:
    """An HTML table with a two-level header: groups of (column key, sub-header); the best value in bold."""
    head1 = [
        '<th rowspan="2">method</th><th rowspan="2">backbone</th><th rowspan="2">pre-training</th>',
        '<th rowspan="2">run</th><th rowspan="2">score</th>',
    ]
    head2: list[str] = []
    present = set(rows[0]) if rows else set()
    groups = [(title, [c for c in columns if c[0] in present]) for title, columns in groups]
    groups = [(title, columns) for title, columns in groups if columns]
    for title, columns in groups:
        head1.append(f'<th colspan="{len(columns)}">{html.escape(title)}</th>')
        head2.extend(f"<th>{html.escape(sub)}</th>" for _, sub in columns)
    keys = [key for _, columns in groups for key, _ in columns]
    # The metric of a column decides its direction: "<subset>_ece_valid" -> lower is better.
    best = {key: _best([row.get(key) for row in rows], _metric_of(key)) for key in keys}
    body = []
    for i, row in enumerate(rows):
        cells = [f"<td>{_cell(row[k])}</td>" for k in ("method", "backbone", "pretraining", "run", "score")]
        for key in keys:
            text = _cell(row.get(key))
            shown = "<b>" + text + "</b>" if i in best[key] else text
            cells.append(f'<td class="num">{shown}{_interval_html(row, key)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        '<div class="scroll"><table class="compare"><thead>'
        f"<tr>{''.join(head1)}</tr><tr>{''.join(head2)}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _interval_html(row: Mapping[str, Any], key: str) -> str:
    """The bootstrap interval of a cell and, for a run after the first, its paired difference to the first
    (marked when the interval excludes 0: green when the run is better, red when worse)."""
    out = ""
    low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
    if isinstance(low, float) and isinstance(high, float) and not (math.isnan(low) or math.isnan(high)):
        out += f'<br><span class="iv">[{low:.4f}, {high:.4f}]</span>'
    diff = row.get(f"{key}_diff")
    if isinstance(diff, float) and not math.isnan(diff):
        lo, hi = row.get(f"{key}_diff_low"), row.get(f"{key}_diff_high")
        span = f" [{lo:+.4f}, {hi:+.4f}]" if isinstance(lo, float) and not math.isnan(lo) else ""
        kind = ""
        if row.get(f"{key}_diff_excludes_0"):
            better = (diff < 0) == lower_is_better(_metric_of(key))
            kind = " better" if better else " worse"
        mark = " ●" if kind else ""
        out += f'<br><span class="diff{kind}">Δ {diff:+.4f}{span}{mark}</span>'
    return out


def ood_table_html(runs: Sequence[RunSummary], rows: Sequence[Mapping[str, Any]]) -> str:
    """The paper's layout: AUPRC_OOD per OOD subset first, then AUROC / FPR95, then the BRAVO summaries."""
    ood = [s for s in _subsets(runs) if s in OOD_SUBSETS]
    groups = [(METRIC_LABELS[m], [(f"{s}_{m}", s) for s in ood]) for m in OOD_METRICS if ood]
    groups.append(("BRAVO", [(k, k) for k in plots.SUMMARY_KEYS]))
    return _html_table(rows, groups)


def chance_auprc(run: RunSummary, subset: str) -> float | None:
    """AUPRC_OOD of a confidence that knows nothing: the fraction of OOD pixels among the scored ones (None if
    the run does not record the counts). Read a run's AUPRC_OOD against it."""
    counts = (run.meta.get("subsets") or {}).get(subset) or {}
    sampled = run.meta.get("pixels") == "official sampling"
    pos = counts.get("sampled_invalid" if sampled else "invalid")
    neg = counts.get("sampled_valid" if sampled else "valid")
    if not isinstance(pos, int) or not isinstance(neg, int) or pos + neg == 0:
        return None
    return pos / (pos + neg)


def chance_note(runs: Sequence[RunSummary]) -> str:
    """One line per distinct set of chance levels (one line when all runs share the test set)."""
    ood = [s for s in _subsets(runs) if s in OOD_SUBSETS]
    if not ood:
        return ""
    by_text: dict[str, list[str]] = {}
    for run in runs:
        text = ", ".join(f"{s} {plots.format_value(chance_auprc(run, s))}" for s in ood)
        by_text.setdefault(text, []).append(run.label)
    lines = [
        f"{text}" + (f" ({', '.join(labels)})" if len(by_text) > 1 else "")
        for text, labels in by_text.items()
    ]
    return (
        '<p class="note">AUPRC_OOD of an uninformed confidence (fraction of OOD pixels): '
        + html.escape("; ".join(lines))
        + "</p>"
    )


def semantic_table_html(runs: Sequence[RunSummary], rows: Sequence[Mapping[str, Any]]) -> str:
    subsets = _subsets(runs)
    return _html_table(
        rows, [(METRIC_LABELS[m], [(f"{s}_{m}", s) for s in subsets]) for m in SEMANTIC_METRICS]
    )


# ------------------------------------------------------------------------------------------------ figures


def pr_curves(runs: Sequence[RunSummary], max_points: int | None = plots.CURVE_POINTS) -> go.Figure | None:
    """Precision-recall curves (OOD = positive) of every run, one panel per OOD subset; None without data.

    Legends carry the exact AUPRC of the histograms (`plots.ood_curve_data`), not of the thinned points.
    """
    subsets = [
        s
        for s in plots.ordered_subsets({s for r in runs for s in r.histograms})
        if s in OOD_SUBSETS and any(plots._nonempty(r.histograms, s, "ood_pos", "ood_neg") for r in runs)
    ]
    if not subsets:
        return None
    fig = make_subplots(rows=1, cols=len(subsets), subplot_titles=[f"{s}: precision-recall" for s in subsets])
    for i, run in enumerate(runs):
        color = plots._COLORS[i % len(plots._COLORS)]
        for col, subset in enumerate(subsets, start=1):
            if not plots._nonempty(run.histograms, subset, "ood_pos", "ood_neg"):
                continue
            h = run.histograms[subset]
            data = plots.ood_curve_data(h["ood_pos"], h["ood_neg"], max_points)
            fig.add_trace(
                go.Scatter(
                    x=data["recall"],
                    y=data["precision"],
                    mode="lines",
                    line={"shape": "vh", "color": color},
                    name=f"{run.label} ({run.method} {run.backbone})",
                    legendgroup=run.label,
                    showlegend=col == 1,
                    hovertemplate=f"{html.escape(run.label)} {subset} AUPRC {data['metrics']['auprc']:.4f}"
                    "<br>recall %{x:.4f}<br>precision %{y:.4f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        for col in range(1, len(subsets) + 1):
            fig.update_xaxes(title_text="recall", range=[0, 1], row=1, col=col)
            fig.update_yaxes(title_text="precision", range=[0, 1.02], row=1, col=col)
    fig.update_layout(
        template=plots.TEMPLATE,
        title="OOD precision-recall (score = 1 - confidence)",
        height=460,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def metric_bars(runs: Sequence[RunSummary]) -> go.Figure | None:
    """Grouped bars per metric (rows: AUPRC/AUROC/FPR95 over the OOD subsets, mIoU/ECE over all), a bar per run."""
    subsets = _subsets(runs)
    ood = [s for s in subsets if s in OOD_SUBSETS]
    panels = [(m, ood) for m in OOD_METRICS if ood] + [(m, subsets) for m in SEMANTIC_METRICS]
    # Per panel only the subsets some run has the metric for (SMIYC has no mIoU / ECE).
    panels = [(m, [s for s in ss if any(f"{s}_{m}" in r.metrics for r in runs)]) for m, ss in panels]
    panels = [(m, ss) for m, ss in panels if ss]
    if not panels:
        return None
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        subplot_titles=[
            f"{METRIC_LABELS[m]} ({'lower' if lower_is_better(m) else 'higher'} is better)" for m, _ in panels
        ],
        vertical_spacing=0.25 / len(panels),
    )
    for i, run in enumerate(runs):
        color = plots._COLORS[i % len(plots._COLORS)]
        for row, (metric, names) in enumerate(panels, start=1):
            values = [run.metrics.get(f"{s}_{metric}") for s in names]
            values = [v if isinstance(v, int | float) else None for v in values]
            fig.add_trace(
                go.Bar(
                    x=names,
                    y=values,
                    error_y=plots.error_bars(values, [run.intervals.get(f"{s}_{metric}") for s in names]),
                    name=run.label,
                    marker_color=color,
                    legendgroup=run.label,
                    showlegend=row == 1,
                    hovertemplate=f"{html.escape(run.label)}<br>%{{x}}: %{{y:.4f}}<extra></extra>",
                ),
                row=row,
                col=1,
            )
    fig.update_layout(
        template=plots.TEMPLATE, barmode="group", height=260 * len(panels), title="Metrics per subset"
    )
    return fig


# ------------------------------------------------------------------------------------------------ the report

_COMPARE_CSS = """
.warning { background: #fff4e5; border: 1px solid #f0a040; border-radius: 8px; padding: 8px 16px; margin: 16px 0; }
.warning h3 { margin: 4px 0; color: #a04000; }
.scroll { overflow-x: auto; }
table.compare { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
table.compare th, table.compare td { border: 1px solid #ddd; padding: 3px 8px; }
table.compare th { background: #f6f6f6; } table.compare td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.compare .iv, table.compare .diff { font-size: 11px; color: #666; white-space: nowrap; }
table.compare .diff.better { color: #1a7f37; font-weight: 600; } table.compare .diff.worse { color: #c62828; font-weight: 600; }
"""


def warning_banner(differences: Sequence[str], chosen: Sequence[str] = ()) -> str:
    """The report's line on conventions: every `convention_differences` line as a warning, else that the
    runs share them (all but the `chosen` ones, which the comparison varies on purpose)."""
    if not differences:
        shared = [c for c in ("pixels scored", "confidence score") if c not in chosen]
        shared += ["subsets and their counts", "input size", "precision"]
        varied = "".join(f" The {c} differs, as asked." for c in chosen)
        return f'<p class="note">All runs share the same conventions ({", ".join(shared)}).{varied}</p>'
    items = "".join(f"<li>{html.escape(line)}</li>" for line in differences)
    return (
        '<div class="warning"><h3>Warning: these runs were not evaluated the same way; read the numbers with '
        f"care</h3><ul>{items}</ul></div>"
    )


# ------------------------------------------------------------------------------- paper reference (Table E)
# The paper's numbers and the table live in `reports/paper.py`; this gathers each run's model and
# every score block of its results.json (not just the compared score).


def paper_reference(runs: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """The rows of the paper's Table E beside every score each run computed (`paper.table_e_rows`), each run
    once however many of its scores are compared."""
    from eomt_ood.reports import paper

    entries, seen = [], set()
    for run in runs:
        if run.path not in seen:  # a run compared with several scores: its first row
            seen.add(run.path)
            entries.append(paper.RunScores(run.run_label, run.model_name, paper.score_blocks(run.results)))
    return paper.table_e_rows(entries)


def with_paper_columns(rows: Sequence[Mapping[str, Any]], runs: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """`comparison_rows` plus the Table E row of each run's architecture and the paper's AUPRC_OOD."""
    from eomt_ood.reports import paper

    return [dict(row) | paper.reference_columns(run.model_name) for row, run in zip(rows, runs, strict=True)]


def build_comparison(
    runs: Sequence[RunSummary],
    title: str = "eomt-ood comparison",
    notes: Sequence[str] = (),
    level: float = 0.95,
    replicates: int = 0,
    chosen: Sequence[str] = (),
) -> str:
    """The comparison report as one self-contained HTML string (`notes`: extra warning lines, e.g. pairing;
    `chosen`: as in `convention_differences`)."""
    from eomt_ood.reports.paper import table_e_html

    rows = comparison_rows(runs)
    differences = convention_differences(runs, chosen) + list(notes)
    sources = "".join(
        f"<tr><td>{html.escape(r.label)}</td><td>{html.escape(str(r.path))}</td>"
        f"<td>{html.escape(r.model_name or 'unknown')}</td></tr>"
        for r in runs
    )
    curves = pr_curves(runs)
    bars = metric_bars(runs)
    note = (
        "Metrics as in docs/metrics.md (pooled over each subset); the best value of each column is bold. "
        "Pre-training is that of the architecture's recipe."
    )
    if any(run.intervals for run in runs):
        note += (
            f" [low, high]: {level:.0%} bootstrap interval over the test images (B = {replicates}; it covers the "
            f"choice of images, not training seeds). Δ: this run minus {runs[0].label}, with its paired interval "
            "(the same resampled images for both); ● marks a difference whose interval excludes 0 (green: "
            "better, red: worse)."
        )
    return page(
        title,
        [
            written_note(note),
            warning_banner(differences, chosen),
            "<h2>OOD detection</h2>",
            ood_table_html(runs, rows),
            chance_note(runs),
            "<h2>Paper reference: Table E of the EoMT paper</h2>",
            table_e_html(paper_reference(runs)),
            "<h2>Segmentation and calibration</h2>",
            semantic_table_html(runs, rows),
            "<h2>OOD precision-recall curves</h2>",
            figure_html(curves)
            if curves is not None
            else '<p class="note">No OOD subset with stored histograms.</p>',
            "<h2>Metrics per subset</h2>",
            figure_html(bars) if bars is not None else '<p class="note">No metrics.</p>',
            f'<h2>Runs</h2><table class="meta">{sources}</table>',
        ],
        css=_COMPARE_CSS,
    )


def compare_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    csv_path: str | Path | None = None,
    confidence: str | Sequence[str] | None = None,
    title: str = "eomt-ood comparison",
    bootstrap: Any = None,
) -> dict[str, Any]:
    """Write the comparison report to `out` (and the table to `csv_path`); returns {"rows", "table" (the
    headline columns as text, `comparison_text`), "differences", "paper_table"} (the last: the paper's Table E
    beside the measured numbers, as text).

    confidence: the score to compare (default: each run's submitted one), or several (comma-separated, or a
    sequence): then every run is compared once per score, run by run (`load_runs`), and the scores differing
    is not flagged. bootstrap: an `eomt_ood.bravo.intervals.Settings` (default B = 1000, seed 0, 95%;
    replicates 0 = no intervals). The output paths are checked before any run is read: neither may be an
    existing file of an input run. `differences` lists the conventions the runs differ on and the runs that
    could not be paired.
    """
    from eomt_ood.bravo.intervals import Settings
    from eomt_ood.bravo.rundir import read_paths

    settings = (bootstrap if bootstrap is not None else Settings()).check()
    inputs = [path for run in run_dirs for path in read_paths(run)]
    check_output(out, "--out", inputs)
    if csv_path is not None:
        check_output(csv_path, "--csv", [*inputs, out])
    runs = load_runs(run_dirs, confidence)
    chosen = ("confidence score",) if len(score_list(confidence)) > 1 else ()
    notes = add_intervals(runs, settings) if settings.enabled else []
    page_text = build_comparison(runs, title, notes, settings.level, settings.replicates, chosen)
    write_text_atomic(out, page_text)
    rows = with_paper_columns(comparison_rows(runs), runs)
    if csv_path is not None:
        write_csv(rows, csv_path)
    from eomt_ood.reports.paper import table_e_text

    paper_table = table_e_text(paper_reference(runs))
    return {
        "rows": rows,
        "table": comparison_text(rows, settings.level),
        "differences": convention_differences(runs, chosen) + notes,
        "paper_table": paper_table,
    }


__all__ = [
    "RunSummary",
    "add_intervals",
    "build_comparison",
    "compare_runs",
    "comparison_rows",
    "comparison_text",
    "convention_differences",
    "describe_architecture",
    "load_run",
    "load_runs",
    "score_list",
    "write_csv",
]
