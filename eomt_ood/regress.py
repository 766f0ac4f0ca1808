"""Regression gate: compare the metrics of a run (`results.json`) with a stored baseline of the same format.

Both files are results files (`eomt_ood.bravo.rundir`): a flat JSON object of official keys
(`synobjs_auprc_ood`, `ACDCfog_ece_valid`, ...) plus an optional `meta` key, or, for runs that score several
confidence maps, one such flat object per confidence score (`{"msp": {...}, "energy": {...}, "meta": {...}}`).
Blocks are matched by score name.

Watched keys are fnmatch patterns over metric keys (default `*_auprc_ood`); only scalar metrics are compared
(`iou_valid` lists never are). Higher is better, except keys containing `_ece_` or `_fpr95_` (lower is
better). A metric *regressed* when it moved in its bad direction by more than the absolute tolerance; a watched
key of the baseline that is absent from the results, or a NaN facing a number, fails the gate as well.

With a significance level (`--significance 0.05`) a drop beyond the tolerance fails only when it is also larger
than image sampling explains: both runs' per-image statistics are resampled with the same draws
(`eomt_ood.bravo.intervals`) and the paired interval of current - baseline, at level 1 - significance, must
lie wholly on the bad side of 0; otherwise the check is reported as `noise` and passes. A results file finds
its per-image statistics through `meta.statistics` (or a `predictions.h5` beside it, or an explicit path);
`--update` writes a statistics file beside the baseline (`<baseline>.stats.h5`) and points the baseline's
`meta.statistics` at it.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eomt_ood.bravo.rundir import FLAT, load_results, metric_blocks, scalar_metrics, write_results
from eomt_ood.bravo.scoring import lower_is_better
from eomt_ood.errors import UserError

DEFAULT_PATTERNS = ("*_auprc_ood",)
DEFAULT_TOLERANCE = 0.005

# A difference read from JSON decimals carries float64 rounding (0.7 - 0.695 = 0.0050000000000000044); this slack
# keeps "moved by exactly the tolerance" within it. It is far below any metric resolution that matters.
_ROUNDING_SLACK = 1e-12

OK, REGRESSED, IMPROVED, NEW, MISSING = "ok", "REGRESSED", "improved", "new", "missing"
NOISE = "noise"
"""Dropped by more than the tolerance, but within image sampling (`--significance`): does not fail."""
FAILING = frozenset({REGRESSED, MISSING})


@dataclass(frozen=True)
class Comparison:
    """One watched metric. `name` is `key` (flat files) or `block/key`; values are None where absent."""

    name: str
    baseline: float | None
    current: float | None
    status: str
    lower_is_better: bool
    interval: tuple[float, float] | None = None  # paired interval of current - baseline (--significance)

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
    names: tuple[str, str] = ("baseline", "results"),
) -> list[Comparison]:
    """Compare the watched metrics of two parsed results objects (see the module docstring for the rules).

    Rows come in baseline order (then keys only in the results); statuses: ok, REGRESSED, improved (moved the
    good way by more than the tolerance), new (only in the results), missing (only in the baseline).
    `UserError` when the files are flat vs per-score, a pattern matches no metric key in either file, or a
    watched key holds something other than a number (null, a string, true; `names` name the two in the message).
    """
    if not tolerance >= 0:
        raise UserError(f"--tolerance: must be a non-negative number, got {tolerance}")
    if not patterns:
        raise UserError("--keys: give at least one pattern")
    raw_blocks = (metric_blocks(baseline, "baseline"), metric_blocks(results, "results"))
    base_blocks, curr_blocks = ({k: scalar_metrics(v) for k, v in raw.items()} for raw in raw_blocks)
    base_flat, curr_flat = set(base_blocks) == {FLAT}, set(curr_blocks) == {FLAT}
    if base_flat != curr_flat:
        kinds = {True: "flat metrics", False: "per-score blocks"}
        raise UserError(
            f"baseline has {kinds[base_flat]} but results have {kinds[curr_flat]}; compare like with like, "
            "or gate one score of both with --confidence"
        )
    all_keys = {k for blocks in (base_blocks, curr_blocks) for block in blocks.values() for k in block}
    for pattern in patterns:
        if not fnmatch.filter(all_keys, pattern):
            raise UserError(f"--keys {pattern}: matches no metric key in the baseline or the results")

    def watched(key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in patterns)

    # A watched value that is not a number would drop out of the comparison (and a gate on it would pass);
    # lists (`iou_valid`) are not gated and may match a wide pattern.
    for where, raw in zip(names, raw_blocks, strict=True):
        for block, metrics in raw.items():
            for key, value in metrics.items():
                if watched(key) and not isinstance(value, list) and key not in scalar_metrics({key: value}):
                    name = f"{block}/{key}" if block != FLAT else key
                    raise UserError(f"{where}: {name} holds {json.dumps(value)}, not a number")

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


def _fmt_interval(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return "-"
    return f"[{_fmt(interval[0], signed=True)}, {_fmt(interval[1], signed=True)}]"


def format_table(rows: Sequence[Comparison], level: float | None = None) -> str:
    """Aligned text table: key, baseline, current, delta (current - baseline), then, when a significance test
    ran (`level` given), the paired interval of delta at that level; direction and status."""
    paired = level is not None
    interval_header = (f"{level:.0%} interval of delta",) if paired else ()
    header = ("key", "baseline", "current", "delta", *interval_header, "better", "status")
    body = [
        (
            row.name,
            _fmt(row.baseline),
            _fmt(row.current),
            _fmt(row.delta, signed=True),
            *((_fmt_interval(row.interval),) if paired else ()),
            "lower" if row.lower_is_better else "higher",
            row.status,
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    numbers = len(header) - 3  # the value columns after the key

    def line(cells: Sequence[str]) -> str:
        # Key left-aligned, numbers right-aligned so decimal points line up.
        parts = [cells[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(cells[1 : 1 + numbers], widths[1 : 1 + numbers], strict=True)
        ]
        parts += [cells[-2].ljust(widths[-2]), cells[-1]]
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
    significance: float | None = None,
    confidence: str | None = None,
    baseline_stats: str | Path | None = None,
    results_stats: str | Path | None = None,
    bootstrap: Any = None,
) -> tuple[int, str]:
    """Run the gate; returns (exit code, report text). Exit 0 = all watched metrics within tolerance, 1 = some
    regressed or went missing.

    significance: fail a drop beyond the tolerance only when the paired interval at level 1 - significance
    excludes 0 (needs both runs' per-image statistics: `results_stats` / `baseline_stats`, else the files'
    `meta.statistics`, else a `predictions.h5` beside them). confidence: gate only that score of per-score
    results. bootstrap: an `eomt_ood.bravo.intervals.Settings` for B and the seed (its level is replaced).
    With `update`, the baseline file is replaced by a copy of the results on purpose (created if absent), and
    the results' per-image statistics are copied beside it; the report lists what changed and the exit code
    is 0. An empty baseline is a `UserError`; a baseline from another dataset (other `meta.gt`, other image
    counts) is said in a note line.
    """
    baseline_path, results_path = Path(baseline_path), Path(results_path)
    if significance is not None and not 0.0 < significance < 0.5:
        raise UserError(f"--significance: must lie in (0, 0.5), e.g. 0.05; got {significance}")
    results = load_results(results_path, "results")
    if update:
        return _update(
            baseline_path, results_path, results, patterns, tolerance, baseline_stats, results_stats
        )
    baseline = load_results(baseline_path, "baseline")
    if not any(scalar_metrics(block) for block in metric_blocks(baseline, "baseline").values()):
        raise UserError(
            f"{baseline_path}: the baseline holds no metrics; create it from a scored run with --update"
        )
    notes = dataset_notes(baseline, results)
    if confidence is None:
        confidence = _shared_score(baseline, results)
        if confidence is not None:
            others = ", ".join(b for b in metric_blocks(results, "results") if b != confidence)
            notes.append(
                f"the baseline holds one score ({confidence}), the results {others} besides: gating "
                f"{confidence}, the score both hold"
            )
    base_sel = _select(baseline, confidence, str(baseline_path))
    curr_sel = _select(results, confidence, str(results_path))
    rows = compare(base_sel, curr_sel, patterns, tolerance, (str(baseline_path), str(results_path)))
    level = None
    if significance is not None:
        level = 1.0 - significance
        paths = (
            _statistics(baseline, baseline_path, baseline_stats, "--baseline-stats", "baseline"),
            _statistics(results, results_path, results_stats, "--results-stats", "results"),
        )
        rows = _test_drops(
            rows, (baseline, results), (base_sel, curr_sel), paths, confidence, level, bootstrap
        )
    bad = [r for r in rows if r.status in FAILING]
    noise = [r for r in rows if r.status == NOISE]
    if bad:
        summary = f"FAILED: {len(bad)} of {len(rows)} watched metric(s) regressed by more than {tolerance:g}"
        summary += " and beyond image sampling" if level is not None else ""
        summary += " or are missing"
    else:
        summary = f"passed: {len(rows)} watched metric(s) within tolerance {tolerance:g}"
        if level is not None:
            summary += " or within image sampling"
    if level is not None:
        summary += (
            f"; {len(noise)} drop(s) beyond the tolerance are noise "
            f"(their {level:.0%} paired interval holds 0)"
        )
    lines = [f"note: {n}" for n in notes] + [format_table(rows, level), summary]
    return (1 if bad else 0), "\n".join(lines)


def _shared_score(baseline: dict, results: dict) -> str | None:
    """The score to gate when a baseline of one score (a flat file naming it) meets results of several that
    include it, else None. The other way round stays an error: the baseline's other scores would go
    missing."""
    base_blocks, curr_blocks = metric_blocks(baseline, "baseline"), metric_blocks(results, "results")
    recorded = (baseline.get("meta") or {}).get("confidences") or []
    if set(base_blocks) == {FLAT} and set(curr_blocks) != {FLAT} and recorded and recorded[0] in curr_blocks:
        return str(recorded[0])
    return None


def _select(results: dict, confidence: str | None, where: str) -> dict:
    """The results as they are, or only the block of score `confidence` (as flat metrics)."""
    if confidence is None:
        return results
    from eomt_ood.bravo.rundir import score_block

    return dict(score_block(results, confidence, where)[1])


def dataset_notes(baseline: dict, results: dict) -> list[str]:
    """One line per sign that the two runs were scored on different data: another `meta.gt`, other image
    counts per subset (only what both files record)."""
    base_meta, curr_meta = baseline.get("meta") or {}, results.get("meta") or {}
    notes = []
    if base_meta.get("gt") and curr_meta.get("gt") and base_meta["gt"] != curr_meta["gt"]:
        notes.append(
            f"the baseline comes from another ground truth ({base_meta['gt']}) than the results "
            f"({curr_meta['gt']}); the same data at another path is fine"
        )
    base_sub, curr_sub = base_meta.get("subsets") or {}, curr_meta.get("subsets") or {}
    differ = [
        f"{s} {base_sub[s].get('images')} vs {curr_sub[s].get('images')}"
        for s in base_sub
        if s in curr_sub
        and isinstance(base_sub[s], dict)
        and isinstance(curr_sub[s], dict)
        and base_sub[s].get("images") != curr_sub[s].get("images")
    ]
    only = sorted(set(base_sub) ^ set(curr_sub)) if base_sub and curr_sub else []
    if differ or only:
        parts = ([f"images per subset differ ({', '.join(differ)})"] if differ else []) + (
            [f"subsets in one file only ({', '.join(only)})"] if only else []
        )
        notes.append("the baseline comes from another dataset: " + "; ".join(parts))
    return notes


def _statistics(results: dict, path: Path, given: str | Path | None, option: str, what: str) -> Path:
    from eomt_ood.bravo.rundir import statistics_file

    if given is not None:
        if not Path(given).is_file():
            raise UserError(f"{option}: {given}: file not found")
        return Path(given)
    found = statistics_file(results, path)
    if found is None:
        raise UserError(
            f"--significance needs per-image statistics of the {what}: none found for {path} (meta.statistics "
            f"or a predictions.h5 beside it); pass {option}"
            + (" or recreate the baseline with --update" if what == "baseline" else "")
        )
    return found


def _store_score(results: dict, block: str, confidence: str | None) -> str | None:
    """The score name under which a block's per-image statistics are stored."""
    if confidence is not None:
        return confidence
    if block != FLAT:
        return block
    recorded = (results.get("meta") or {}).get("confidences") or []
    return str(recorded[0]) if recorded else None


def _test_drops(
    rows: list[Comparison],
    files: tuple[dict, dict],
    selected: tuple[dict, dict],
    paths: tuple[Path, Path],
    confidence: str | None,
    level: float,
    bootstrap: Any,
) -> list[Comparison]:
    """The rows with the paired interval of every watched key, and REGRESSED turned into NOISE where that
    interval reaches 0 or the good side."""
    from dataclasses import replace

    from eomt_ood.bravo import intervals as iv
    from eomt_ood.io import default_workers

    settings = replace(bootstrap or iv.Settings(), level=level).check()
    if not settings.enabled:
        raise UserError("--bootstrap: --significance needs replicates (not 0)")
    base_blocks = {k: v for k, v in metric_blocks(selected[0], "baseline").items()}
    curr_blocks = {k: v for k, v in metric_blocks(selected[1], "results").items()}
    differences: dict[str, Any] = {}
    with iv.interval_pool(default_workers()) as pool:  # each run's subsets side by side
        for block in (b for b in base_blocks if b in curr_blocks):
            stats = []
            reps = []
            for results, path, blocks, what in zip(
                files, paths, (base_blocks, curr_blocks), ("baseline", "results"), strict=True
            ):
                score_stats = iv.ScoreStatistics.from_store(path, _store_score(results, block, confidence))
                stats.append(score_stats)
                reps.append(iv.run_replicates(score_stats, blocks[block], settings, what, pool.map))
            shared = [
                s for s in iv.scored_subsets(base_blocks[block]) if s in iv.scored_subsets(curr_blocks[block])
            ]
            reason = iv.same_images(stats[0], stats[1], shared)
            if reason is not None:
                raise UserError(f"--significance: cannot pair the baseline with the results: {reason}")
            for key, diff in iv.paired_differences(reps[1], reps[0], level).items():
                differences[f"{block}/{key}" if block != FLAT else key] = diff
    out = []
    for row in rows:
        diff = differences.get(row.name)
        if diff is None:
            out.append(row)
            continue
        status = row.status
        beyond = diff.low > 0.0 if row.lower_is_better else diff.high < 0.0
        if status == REGRESSED and not beyond and not math.isnan(diff.low):
            status = NOISE
        out.append(replace(row, status=status, interval=(diff.low, diff.high)))
    return out


def statistics_target(baseline_path: str | Path, baseline_stats: str | Path | None) -> Path:
    """Where `--update` writes the baseline's per-image statistics: `--baseline-stats`, else
    `<baseline stem>.stats.h5` beside the baseline."""
    baseline_path = Path(baseline_path)
    return Path(baseline_stats or baseline_path.with_name(baseline_path.stem + ".stats.h5"))


def check_update_outputs(
    baseline_path: str | Path,
    baseline_stats: str | Path | None,
    results_path: str | Path,
    results_stats: str | Path | None,
) -> None:
    """Before `--update` reads anything: the baseline and its statistics file are outputs, so neither may be an
    input (the results, their statistics, the store of the results' run folder) nor a run folder's store."""
    from eomt_ood.bravo.rundir import RunDir, read_paths, refuse_run_store
    from eomt_ood.io import check_output

    results_path = Path(results_path)
    check_output(baseline_path, "--baseline", [results_path])
    target = statistics_target(baseline_path, baseline_stats)
    run_store = RunDir(results_path.parent).store_file
    inputs = [*read_paths(results_path), results_stats, baseline_path, run_store]
    check_output(target, "--baseline-stats", inputs)
    refuse_run_store(target, "--baseline-stats")


def _update(
    baseline_path: Path,
    results_path: Path,
    results: dict,
    patterns: Sequence[str],
    tolerance: float,
    baseline_stats: str | Path | None,
    results_stats: str | Path | None,
) -> tuple[int, str]:
    """`--update`: the baseline becomes a copy of the results, with their per-image statistics beside it."""
    from eomt_ood.bravo.rundir import statistics_file, statistics_reference

    lines = []
    if baseline_path.exists():
        baseline = load_results(baseline_path, "baseline")
        try:
            changed = [r for r in compare(baseline, results, patterns, tolerance) if _changed(r)]
            if changed:
                lines.append(format_table(changed))
            note = f"{len(changed)} watched value(s) changed"
        except UserError as exc:
            # --update is how a new format or a newly watched metric enters the baseline, so it goes ahead.
            note = f"replaced without a per-key comparison ({exc})"
        done = f"updated baseline {baseline_path} from {results_path}: {note}"
    else:
        done = f"created baseline {baseline_path} from {results_path}"
    source = Path(results_stats) if results_stats is not None else statistics_file(results, results_path)
    if results_stats is not None and not source.is_file():
        raise UserError(f"--results-stats: {results_stats}: file not found")
    copy = dict(results)
    meta = dict(results.get("meta") or {})
    target = statistics_target(baseline_path, baseline_stats)
    if source is not None:
        try:
            scores = _check_statistics(results, source, str(results_path))
        except UserError as exc:
            if results_stats is not None:
                raise
            # Found only by looking beside the results: a stale file must not block the update.
            done += f"; the statistics found ({exc}) are not kept"
            source = None
    if source is not None:
        from eomt_ood.store import copy_statistics

        copy_statistics(source, target, scores)
        copy["meta"] = {**meta, "statistics": statistics_reference(target, baseline_path)}
        done += f"; per-image statistics -> {target}"
    else:
        if meta.get("statistics"):
            # A relative name would point at whatever file sits beside the baseline.
            copy["meta"] = {**meta, "statistics": None}
        done += "; without per-image statistics, --significance cannot use this baseline"
    write_results(copy, baseline_path)
    lines.append(done)
    return 0, "\n".join(lines)


def _check_statistics(results: dict, path: Path, where: str) -> list[str]:
    """The stored score names of every block of `results`, after checking (point values) that the statistics
    file belongs to them."""
    from eomt_ood.bravo import intervals as iv

    scores = []
    for block, metrics in metric_blocks(results, where).items():
        if not iv.scored_subsets(metrics):
            continue
        stats = iv.ScoreStatistics.from_store(path, _store_score(results, block, None))
        iv.check_statistics(stats, metrics, where)
        scores.append(stats.score)
    return scores
