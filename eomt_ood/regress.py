"""Regression gate: compare the metrics of a run (`results.json`) with a stored baseline of the same format.

Both files are results files (`eomt_ood.bravo.rundir`): a flat JSON object of official keys
(`synobjs_auprc_ood`, `ACDCfog_ece_valid`, ...) plus an optional `meta` key, or, for runs that score several
confidence maps, one such flat object per confidence score (`{"msp": {...}, "energy": {...}, "meta": {...}}`).
Blocks are matched by score name.

Watched keys are fnmatch patterns over metric keys (default `*_auprc_ood`); only scalar metrics are compared
(`iou_valid` lists never are). Higher is better, except keys containing `_ece_` or `_fpr95_` (lower is
better). A metric *regressed* when it moved in its bad direction by more than the absolute tolerance; a watched
key of the baseline that is absent from the results, or a NaN facing a number, fails the gate as well.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eomt_ood.bravo.rundir import FLAT, load_results, metric_blocks, scalar_metrics, write_results
from eomt_ood.bravo.scoring import lower_is_better
from eomt_ood.errors import UserError

DEFAULT_PATTERNS = ("*_auprc_ood",)
DEFAULT_TOLERANCE = 0.005

# A difference read from JSON decimals carries float64 rounding (0.7 - 0.695 = 0.0050000000000000044); this slack
# keeps "moved by exactly the tolerance" within it. It is far below any metric resolution that matters.
_ROUNDING_SLACK = 1e-12

OK, REGRESSED, IMPROVED, NEW, MISSING = "ok", "REGRESSED", "improved", "new", "missing"
FAILING = frozenset({REGRESSED, MISSING})


@dataclass(frozen=True)
class Comparison:
    """One watched metric. `name` is `key` (flat files) or `block/key`; values are None where absent."""

    name: str
    baseline: float | None
    current: float | None
    status: str
    lower_is_better: bool

    @property
    def delta(self) -> float | None:
        """current - baseline (signed, NaN if either is NaN), None if either side is absent."""
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline


def _status(baseline: float, current: float, tolerance: float, lower_better: bool) -> str:
    if math.isnan(baseline) or math.isnan(current):
        return OK if math.isnan(baseline) and math.isnan(current) else REGRESSED
    # Positive = moved in the good direction.
    gain = (baseline - current) if lower_better else (current - baseline)
    if gain < -(tolerance + _ROUNDING_SLACK):
        return REGRESSED
    if gain > tolerance + _ROUNDING_SLACK:
        return IMPROVED
    return OK


def compare(
    baseline: dict,
    results: dict,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[Comparison]:
    """Compare the watched metrics of two parsed results objects (see the module docstring for the rules).

    Rows come in baseline order (then keys only in the results); statuses: ok, REGRESSED, improved (moved the
    good way by more than the tolerance), new (only in the results), missing (only in the baseline).
    `UserError` when the files are flat vs per-score, or a pattern matches no metric key in either file.
    """
    if not tolerance >= 0:
        raise UserError(f"--tolerance: must be a non-negative number, got {tolerance}")
    if not patterns:
        raise UserError("--keys: give at least one pattern")
    base_blocks = {k: scalar_metrics(v) for k, v in metric_blocks(baseline, "baseline").items()}
    curr_blocks = {k: scalar_metrics(v) for k, v in metric_blocks(results, "results").items()}
    base_flat, curr_flat = set(base_blocks) == {FLAT}, set(curr_blocks) == {FLAT}
    if base_flat != curr_flat:
        kinds = {True: "flat metrics", False: "per-score blocks"}
        raise UserError(
            f"baseline has {kinds[base_flat]} but results have {kinds[curr_flat]}; compare like with like"
        )
    all_keys = {k for blocks in (base_blocks, curr_blocks) for block in blocks.values() for k in block}
    for pattern in patterns:
        if not fnmatch.filter(all_keys, pattern):
            raise UserError(f"--keys {pattern}: matches no metric key in the baseline or the results")

    def watched(key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in patterns)

    rows = []
    block_names = list(base_blocks) + [b for b in curr_blocks if b not in base_blocks]
    for block in block_names:
        base, curr = base_blocks.get(block, {}), curr_blocks.get(block, {})
        keys = [k for k in base if watched(k)] + [k for k in curr if watched(k) and k not in base]
        for key in keys:
            name = f"{block}/{key}" if block != FLAT else key
            lower = lower_is_better(key)
            b, c = base.get(key), curr.get(key)
            if c is None:
                status = MISSING
            elif b is None:
                status = NEW
            else:
                status = _status(b, c, tolerance, lower)
            rows.append(Comparison(name, b, c, status, lower))
    return rows


def failed(rows: Sequence[Comparison]) -> bool:
    """True when any row regressed or is missing from the results."""
    return any(row.status in FAILING for row in rows)


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "NaN"
    return f"{value:+.6f}" if signed else f"{value:.6f}"


def format_table(rows: Sequence[Comparison]) -> str:
    """Aligned text table: key, baseline, current, delta (current - baseline), direction and status."""
    header = ("key", "baseline", "current", "delta", "better", "status")
    body = [
        (
            row.name,
            _fmt(row.baseline),
            _fmt(row.current),
            _fmt(row.delta, signed=True),
            "lower" if row.lower_is_better else "higher",
            row.status,
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        # Key left-aligned, numbers right-aligned so decimal points line up.
        parts = [cells[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(cells[1:4], widths[1:4], strict=True)
        ]
        parts += [cells[4].ljust(widths[4]), cells[5]]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


def _changed(row: Comparison) -> bool:
    """True when the value differs at all (NaN equals NaN), whatever the tolerance."""
    if row.baseline is None or row.current is None:
        return True
    if math.isnan(row.baseline) or math.isnan(row.current):
        return math.isnan(row.baseline) != math.isnan(row.current)
    return row.baseline != row.current


def run_gate(
    baseline_path: str | Path,
    results_path: str | Path,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    tolerance: float = DEFAULT_TOLERANCE,
    update: bool = False,
) -> tuple[int, str]:
    """Run the gate; returns (exit code, report text). Exit 0 = all watched metrics within tolerance, 1 = some
    regressed or went missing.

    With `update`, the baseline file is replaced by a copy of the results on purpose (created if absent); the
    report lists what changed and the exit code is 0.
    """
    baseline_path, results_path = Path(baseline_path), Path(results_path)
    results = load_results(results_path, "results")
    if update and not baseline_path.exists():
        write_results(results, baseline_path)
        return 0, f"created baseline {baseline_path} from {results_path}"
    baseline = load_results(baseline_path, "baseline")
    if update:
        lines = []
        try:
            changed = [r for r in compare(baseline, results, patterns, tolerance) if _changed(r)]
            if changed:
                lines.append(format_table(changed))
            note = f"{len(changed)} watched value(s) changed"
        except UserError as exc:
            # --update is how a new format or a newly watched metric enters the baseline, so it goes ahead.
            note = f"replaced without a per-key comparison ({exc})"
        write_results(results, baseline_path)
        lines.append(f"updated baseline {baseline_path} from {results_path}: {note}")
        return 0, "\n".join(lines)
    rows = compare(baseline, results, patterns, tolerance)
    bad = [r for r in rows if r.status in FAILING]
    summary = (
        f"FAILED: {len(bad)} of {len(rows)} watched metric(s) regressed by more than {tolerance:g} or are missing"
        if bad
        else f"passed: {len(rows)} watched metric(s) within tolerance {tolerance:g}"
    )
    return (1 if bad else 0), format_table(rows) + "\n" + summary
