"""The EoMT paper's Table E beside measured BRAVO numbers: the paper's values and the table logic, pure.

Table E (Kerssies et al., "Your ViT is Secretly an Image Segmentation Model", CVPR 2025, appendix C) reports
one AUPRC_OOD per model, all trained on Cityscapes train and evaluated on BRAVO:

    M2F   Swin-L           IN21K   56.8
    M2F‡  ViT-Adapter-L‡   DINOv2  68.7      (‡ the authors' re-implementation)
    EoMT  ViT-L            DINOv2  89.7

BRAVO has two OOD subsets with an AUPRC_OOD each (`SMIYC_auprc_ood`, `synobjs_auprc_ood`); the paper says
neither which of them (or which combination) its single number is, nor which confidence score it ranks pixels
by. So this table never picks one: for every run and every confidence score the run computed it shows the
three candidates, SMIYC, synobjs and their mean, beside the paper's number. The paper's values are in percent
and so is the table (measured fractions x 100).

Inputs are plain data (a run label, its registered model name, {score: flat metrics}); outputs are row dicts,
text and HTML fragments. Reading run folders is the caller's job (`reports/compare.py`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PAPER = 'Kerssies et al., "Your ViT is Secretly an Image Segmentation Model", CVPR 2025'


@dataclass(frozen=True)
class PaperRow:
    """One row of Table E. auprc_ood in percent as printed; paper_model: the registered name of the paper's
    model; families: registered-name prefixes whose models are this row's architecture (other sizes, tests)."""

    method: str
    backbone: str
    pretraining: str
    auprc_ood: float
    paper_model: str
    families: tuple[str, ...]
    reimplemented: bool = False

    @property
    def label(self) -> str:
        mark = "‡" if self.reimplemented else ""
        return f"{self.method}{mark} {self.backbone}{mark} {self.pretraining}"


TABLE_E: tuple[PaperRow, ...] = (
    PaperRow("M2F", "Swin-L", "IN21K", 56.8, "m2f_swin_large", ("m2f_swin",)),
    PaperRow(
        "M2F",
        "ViT-Adapter-L",
        "DINOv2",
        68.7,
        "m2f_vit_adapter_large",
        ("m2f_vit_adapter",),
        reimplemented=True,
    ),
    # DINOv2 EoMT only: the DeiT-III and EVA-02 variants are other pre-trainings, not this row.
    PaperRow(
        "EoMT",
        "ViT-L",
        "DINOv2",
        89.7,
        "eomt_large_patch16_1024",
        ("eomt_small", "eomt_base", "eomt_large", "eomt_giant", "eomt_test"),
    ),
)

# The BRAVO keys the paper's single number could be, in the order shown. "mean" is their arithmetic mean.
CANDIDATES: tuple[tuple[str, str], ...] = (("SMIYC", "SMIYC_auprc_ood"), ("synobjs", "synobjs_auprc_ood"))
MEAN = "mean"


@dataclass(frozen=True)
class RunScores:
    """One evaluation run: label, registered model name (None if unknown), {score: flat metrics}."""

    label: str
    model: str | None
    scores: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def score_blocks(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{score: flat metrics} of a results.json object: several scores are {score: {...}, "meta": {...}}, one
    score is flat (named by `meta.confidences[0]`, else "unknown")."""
    blocks = {k: v for k, v in results.items() if k != "meta"}
    if blocks and all(isinstance(v, Mapping) for v in blocks.values()):
        return {str(k): dict(v) for k, v in blocks.items()}
    recorded = (results.get("meta") or {}).get("confidences") or ["unknown"]
    return {str(recorded[0]): dict(blocks)}


def paper_row_for(model: str | None) -> PaperRow | None:
    """The Table E row whose architecture a registered model name belongs to (longest family prefix), or None."""
    if not model:
        return None
    best: tuple[int, PaperRow] | None = None
    for row in TABLE_E:
        for family in row.families:
            if (model == family or model.startswith(family + "_")) and (
                best is None or len(family) > best[0]
            ):
                best = (len(family), row)
    return best[1] if best else None


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def candidates(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """{"SMIYC", "synobjs", "mean"} in percent (None where a key is missing or not finite; the mean needs both)."""
    out: dict[str, float | None] = {}
    for name, key in CANDIDATES:
        value = _finite(metrics.get(key))
        out[name] = None if value is None else 100 * value
    parts = [out[name] for name, _ in CANDIDATES]
    out[MEAN] = None if any(p is None for p in parts) else sum(parts) / len(parts)  # type: ignore[arg-type]
    return out


def reference_columns(model: str | None) -> dict[str, Any]:
    """Columns for a per-run table: the Table E row of the run's architecture and its AUPRC_OOD as a fraction
    (like every metric column), None when no row fits."""
    row = paper_row_for(model)
    return {
        "paper_table_e_row": row.label if row else None,
        "paper_table_e_auprc_ood": row.auprc_ood / 100 if row else None,
        "paper_table_e_same_model": (model == row.paper_model) if row else None,
    }


def table_e_rows(runs: Sequence[RunScores]) -> list[dict[str, Any]]:
    """One dict per (paper row, run, score), in the paper's row order; paper rows without a run get one entry
    with run None; runs of no Table E architecture come last with paper None.

    Keys: paper (PaperRow | None), run, model, same_model (the paper's exact model, not another size), score,
    SMIYC, synobjs, mean (percent or None).
    """
    rows: list[dict[str, Any]] = []
    matched = {id(run): paper_row_for(run.model) for run in runs}
    for paper_row in TABLE_E:
        mine = [run for run in runs if matched[id(run)] is paper_row]
        if not mine:
            rows.append({"paper": paper_row, "run": None, "model": None, "same_model": None, "score": None})
        for run in mine:
            rows.extend(_run_rows(paper_row, run))
    for run in runs:
        if matched[id(run)] is None:
            rows.extend(_run_rows(None, run))
    return rows


def _run_rows(paper_row: PaperRow | None, run: RunScores) -> list[dict[str, Any]]:
    same = paper_row is not None and run.model == paper_row.paper_model
    scores = run.scores or {"unknown": {}}
    return [
        {"paper": paper_row, "run": run.label, "model": run.model, "same_model": same, "score": score}
        | candidates(metrics)
        for score, metrics in scores.items()
    ]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


_HEADER = ("Method", "Backbone", "Pre-training", "Paper", "Run", "Model", "Score", "SMIYC", "synobjs", "mean")


def _cells(row: Mapping[str, Any], first_of_paper_row: bool) -> list[str]:
    paper: PaperRow | None = row["paper"]
    mark = "‡" if paper is not None and paper.reimplemented else ""
    if paper is None:
        left = ["(not in Table E)", "", "", "–"]
    elif first_of_paper_row:
        left = [paper.method + mark, paper.backbone + mark, paper.pretraining, f"{paper.auprc_ood:.1f}"]
    else:
        left = ["", "", "", ""]
    if row["run"] is None:
        return [*left, "(no run)", "", "", "", "", ""]
    model = (row["model"] or "unknown") + ("" if row["same_model"] or paper is None else " *")
    return [*left, row["run"], model, row["score"], *(_pct(row[k]) for k in ("SMIYC", "synobjs", MEAN))]


def _grouped(rows: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], bool]]:
    """Each row with "is it the first row of its paper row" (paper cells are printed once)."""
    out, previous = [], object()
    for row in rows:
        out.append((row, row["paper"] is not previous or row["paper"] is None))
        previous = row["paper"]
    return out


def notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The footnotes the table needs (the unknown scoring rule always; the others when they apply)."""
    lines = [
        "Paper: AUPRC_OOD (%) of "
        + PAPER
        + ", appendix Table E (trained on Cityscapes train, evaluated on BRAVO).",
        "The paper gives one number per model and states neither the BRAVO key behind it nor the confidence score; "
        "measured: SMIYC = SMIYC_auprc_ood, synobjs = synobjs_auprc_ood, mean = their mean (x 100), "
        "for every score each run computed.",
    ]
    if any(row["paper"] is not None and row["paper"].reimplemented for row in rows):
        lines.append("‡ the paper's re-implementation.")
    others = sorted(
        {row["paper"].paper_model for row in rows if row["run"] and row["paper"] and not row["same_model"]}
    )
    if others:
        lines.append(
            "* not the paper's model (" + ", ".join(others) + "): another size, e.g. a dry run; "
            "its numbers do not reproduce the paper's."
        )
    return lines


def table_e_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table as aligned plain text (paper columns | measured columns), with its notes."""
    body = [_cells(row, first) for row, first in _grouped(rows)]
    widths = [max(len(line[i]) for line in [list(_HEADER), *body]) for i in range(len(_HEADER))]
    numeric = {3, 7, 8, 9}

    def render(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return ("  ".join(parts[:4]) + " | " + "  ".join(parts[4:])).rstrip()

    lines = ["Table E: AUPRC_OOD (%) on BRAVO, paper | measured", render(_HEADER)]
    lines.append("-" * len(lines[-1]))
    lines += [render(cells) for cells in body]
    return "\n".join([*lines, "", *notes(rows)])


def table_e_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table as an HTML fragment (class "compare", like the other comparison tables), with its notes."""
    head1 = '<th colspan="4">Paper (Table E)</th><th colspan="3">Run</th><th colspan="3">Measured AUPRC_OOD (%)</th>'
    head2 = "".join(f"<th>{html.escape(h)}</th>" for h in _HEADER)
    body = []
    for row, first in _grouped(rows):
        cells = _cells(row, first)
        tds = [
            f'<td class="num">{html.escape(c)}</td>' if i in (3, 7, 8, 9) else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(cells)
        ]
        body.append(f"<tr>{''.join(tds)}</tr>")
    note = "".join(f'<p class="note">{html.escape(line)}</p>' for line in notes(rows))
    return (
        '<div class="scroll"><table class="compare"><thead>'
        f"<tr>{head1}</tr><tr>{head2}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{note}"
    )
