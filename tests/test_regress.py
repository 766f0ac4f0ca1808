"""The regression gate (`eomt_ood.regress`, `eomt-ood regress`): statuses, directions, tolerance, update, exits."""

from __future__ import annotations

import json
import math
import sys

import pytest
from typer.testing import CliRunner

from eomt_ood import cli
from eomt_ood.bravo.rundir import NAN_NOTE, metric_blocks
from eomt_ood.bravo.scoring import lower_is_better
from eomt_ood.errors import UserError
from eomt_ood.regress import (
    IMPROVED,
    MISSING,
    NEW,
    OK,
    REGRESSED,
    compare,
    failed,
    format_table,
    run_gate,
)

BASE = {
    "SMIYC_auroc_ood": 0.90,
    "SMIYC_auprc_ood": 0.70,
    "SMIYC_fpr95_ood": 0.40,
    "synobjs_miou_valid": 0.60,
    "synobjs_iou_valid": [0.5, math.nan] + [0.6] * 17,
    "synobjs_ece_valid": 0.05,
    "synobjs_auprc_ood": 0.50,
    "synobjs_fpr95_ood": 0.30,
    "bravo_index": 0.55,
    "meta": {"mode": "all pixels", "checkpoint": "x.safetensors"},
}


def statuses(rows):
    return {row.name: row.status for row in rows}


def write(path, data):
    path.write_text(json.dumps(data, allow_nan=True))
    return path


def test_identical_results_pass_with_default_patterns():
    rows = compare(BASE, BASE)
    assert statuses(rows) == {"SMIYC_auprc_ood": OK, "synobjs_auprc_ood": OK}
    assert not failed(rows)
    assert all(row.delta == 0.0 for row in rows)


def test_degraded_auprc_fails_and_improvement_is_reported():
    current = dict(BASE, SMIYC_auprc_ood=0.60, synobjs_auprc_ood=0.52)
    rows = compare(BASE, current)
    assert statuses(rows) == {"SMIYC_auprc_ood": REGRESSED, "synobjs_auprc_ood": IMPROVED}
    assert failed(rows)
    smiyc = next(r for r in rows if r.name == "SMIYC_auprc_ood")
    assert smiyc.delta == pytest.approx(-0.10)


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (0.695, OK),  # moved by exactly the tolerance: not "more than"
        (0.6949, REGRESSED),
        (0.705, OK),
        (0.7051, IMPROVED),
    ],
)
def test_tolerance_boundary(current, expected):
    rows = compare(BASE, dict(BASE, SMIYC_auprc_ood=current), ["SMIYC_auprc_ood"], tolerance=0.005)
    assert statuses(rows) == {"SMIYC_auprc_ood": expected}


def test_zero_tolerance_flags_any_drop():
    rows = compare(BASE, dict(BASE, SMIYC_auprc_ood=0.7 - 1e-9), ["SMIYC_auprc_ood"], tolerance=0.0)
    assert statuses(rows) == {"SMIYC_auprc_ood": REGRESSED}


def test_lower_is_better_keys():
    assert lower_is_better("synobjs_fpr95_ood") and lower_is_better("ACDCfog_ece_valid")
    assert not lower_is_better("synobjs_auprc_ood") and not lower_is_better("bravo_index")
    # FPR95 and ECE going up is the bad direction; going down is an improvement.
    current = dict(BASE, synobjs_fpr95_ood=0.32, SMIYC_fpr95_ood=0.30, synobjs_ece_valid=0.049)
    rows = compare(BASE, current, ["*_fpr95_*", "*_ece_*"])
    assert statuses(rows) == {
        "SMIYC_fpr95_ood": IMPROVED,
        "synobjs_ece_valid": OK,
        "synobjs_fpr95_ood": REGRESSED,
    }
    # The same numeric drop on a higher-is-better key is a regression.
    rows = compare(BASE, dict(BASE, SMIYC_auroc_ood=0.80), ["SMIYC_auroc_ood"])
    assert statuses(rows) == {"SMIYC_auroc_ood": REGRESSED}


def test_patterns_select_keys_and_skip_lists_and_meta():
    rows = compare(BASE, BASE, ["synobjs_*"])
    # iou_valid is a list and never compared; meta is not a metric.
    assert set(statuses(rows)) == {
        "synobjs_miou_valid",
        "synobjs_ece_valid",
        "synobjs_auprc_ood",
        "synobjs_fpr95_ood",
    }
    rows = compare(BASE, BASE, ["bravo_index", "SMIYC_auroc_ood"])
    assert set(statuses(rows)) == {"bravo_index", "SMIYC_auroc_ood"}


def test_pattern_matching_nothing_is_a_user_error():
    with pytest.raises(UserError, match=r"--keys \*_auprc_valid: matches no metric key"):
        compare(BASE, BASE, ["*_auprc_valid"])


def test_missing_key_fails_and_new_key_does_not():
    current = {k: v for k, v in BASE.items() if k != "synobjs_auprc_ood"}
    current["ACDCfog_auprc_ood"] = 0.1  # not a real key, but a new watched one
    rows = compare(BASE, current)
    assert statuses(rows) == {"SMIYC_auprc_ood": OK, "synobjs_auprc_ood": MISSING, "ACDCfog_auprc_ood": NEW}
    assert failed(rows)
    assert not failed(compare(BASE, dict(BASE, ACDCfog_auprc_ood=0.1)))


def test_nan_against_number_fails_unless_both_nan():
    nan_base = dict(BASE, SMIYC_auprc_ood=math.nan)
    assert statuses(compare(nan_base, nan_base, ["SMIYC_auprc_ood"])) == {"SMIYC_auprc_ood": OK}
    assert statuses(compare(BASE, nan_base, ["SMIYC_auprc_ood"])) == {"SMIYC_auprc_ood": REGRESSED}
    assert statuses(compare(nan_base, BASE, ["SMIYC_auprc_ood"])) == {"SMIYC_auprc_ood": REGRESSED}


def test_per_score_blocks_are_matched_by_name():
    flat = {k: v for k, v in BASE.items() if k != "meta"}
    baseline = {"msp": flat, "energy": dict(flat, SMIYC_auprc_ood=0.3), "meta": {"x": 1}}
    results = {"energy": dict(flat, SMIYC_auprc_ood=0.2), "msp": flat, "meta": {"x": 2}}
    assert set(metric_blocks(baseline)) == {"msp", "energy"}
    rows = compare(baseline, results)
    assert statuses(rows) == {
        "msp/SMIYC_auprc_ood": OK,
        "msp/synobjs_auprc_ood": OK,
        "energy/SMIYC_auprc_ood": REGRESSED,
        "energy/synobjs_auprc_ood": OK,
    }
    # A score block that disappeared fails; a new one is reported only.
    rows = compare(baseline, {"msp": flat, "maxlogit": flat})
    got = statuses(rows)
    assert got["energy/SMIYC_auprc_ood"] == MISSING and got["maxlogit/SMIYC_auprc_ood"] == NEW
    with pytest.raises(UserError, match="flat metrics but results have per-score blocks"):
        compare(BASE, baseline)
    with pytest.raises(UserError, match="mixes per-score blocks"):
        metric_blocks({"msp": flat, "SMIYC_auprc_ood": 0.5})


def test_baseline_of_one_score_gates_that_score_of_results_with_several(tmp_path):
    # A baseline written when the run scored msp alone, results of a run that added energy: msp is gated (its
    # drop fails, and a note says so), energy is not. Results of one score against a baseline of several
    # would leave the baseline's other scores missing, so that stays an error, with the way out.
    flat = {k: v for k, v in BASE.items() if k != "meta"}
    baseline = write(tmp_path / "one.json", dict(flat, meta={"confidences": ["msp"]}))
    several = {
        "msp": dict(flat, synobjs_auprc_ood=0.4),
        "energy": dict(flat, synobjs_auprc_ood=0.1),
        "meta": {},
    }
    results = write(tmp_path / "several.json", several)
    code, text = run_gate(baseline, results)
    lines = text.splitlines()
    assert code == 1 and lines[0] == (
        "note: the baseline holds one score (msp), the results energy besides: gating msp, the score both "
        "hold"
    )
    row = next(line.split() for line in lines if line.startswith("synobjs_auprc_ood"))
    assert row[1:4] == ["0.500000", "0.400000", "-0.100000"] and row[-1] == REGRESSED
    assert not any("energy/" in line for line in lines)
    with pytest.raises(
        UserError, match="compare like with like, or gate one score of both with --confidence"
    ):
        run_gate(results, baseline)
    # A flat baseline that names no score cannot be matched to a block: the same error.
    unnamed = write(tmp_path / "unnamed.json", flat)
    with pytest.raises(UserError, match="flat metrics but results have per-score blocks"):
        run_gate(unnamed, results)


def test_official_api_wrapping_reads_as_flat():
    wrapped = {"method": {k: v for k, v in BASE.items() if k != "meta"}, "result": True}
    assert statuses(compare(BASE, wrapped)) == {"SMIYC_auprc_ood": OK, "synobjs_auprc_ood": OK}


def test_table_is_aligned():
    rows = compare(BASE, dict(BASE, SMIYC_auprc_ood=0.6, synobjs_auprc_ood=math.nan))
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["key", "baseline", "current", "delta", "better", "status"]
    assert len(lines) == 4
    # The status column starts at the same offset on every row.
    starts = {line.rindex(" ") for line in lines[2:]}
    assert len(starts) == 1
    assert "-0.100000" in lines[2] and "REGRESSED" in lines[2]
    assert "NaN" in lines[3]


def test_run_gate_update_rewrites_baseline(tmp_path):
    baseline = write(tmp_path / "baseline.json", BASE)
    current = dict(BASE, SMIYC_auprc_ood=0.4, synobjs_iou_valid=[math.nan] * 19)
    results = write(tmp_path / "results.json", current)
    code, text = run_gate(baseline, results)
    assert code == 1 and "REGRESSED" in text and text.splitlines()[-1].startswith("FAILED: 1 of 2")
    code, text = run_gate(baseline, results, update=True)
    assert code == 0
    assert "SMIYC_auprc_ood" in text and "synobjs_auprc_ood" not in text  # only what changed
    assert "1 watched value(s) changed" in text
    stored = json.loads(baseline.read_text())
    assert stored["SMIYC_auprc_ood"] == 0.4 and stored["meta"] == {**BASE["meta"], "nan": NAN_NOTE}
    assert math.isnan(stored["synobjs_iou_valid"][0])  # NaN survives as a bare token
    code, text = run_gate(baseline, results)
    assert code == 0 and text.splitlines()[-1].startswith("passed: 2 watched")
    # --update creates a baseline that does not exist yet.
    fresh = tmp_path / "new" / "baseline.json"
    assert run_gate(fresh, results, update=True)[0] == 0
    assert json.loads(fresh.read_text())["SMIYC_auprc_ood"] == 0.4


def test_bad_input_is_a_user_error(tmp_path):
    good = write(tmp_path / "ok.json", BASE)
    with pytest.raises(UserError, match="baseline file not found"):
        run_gate(tmp_path / "absent.json", good)
    broken = tmp_path / "broken.json"
    broken.write_text('{"SMIYC_auprc_ood": 0.5,')
    with pytest.raises(UserError, match=r"broken.json: invalid JSON"):
        run_gate(good, broken)
    listing = write(tmp_path / "list.json", [1, 2])
    with pytest.raises(UserError, match="expected a JSON object"):
        run_gate(good, listing)


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Call the console entry point as the shell would; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["eomt-ood", "regress", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
        raise SystemExit(0)  # main() returns normally on success
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
    baseline = write(tmp_path / "baseline.json", BASE)
    same = write(tmp_path / "same.json", BASE)
    worse = write(tmp_path / "worse.json", dict(BASE, synobjs_auprc_ood=0.45))
    code, out, _ = run_main(monkeypatch, capsys, "--baseline", baseline, "--results", same)
    assert code == 0 and "passed" in out and "synobjs_auprc_ood" in out
    code, out, _ = run_main(monkeypatch, capsys, "--baseline", baseline, "--results", worse)
    assert code == 1 and "REGRESSED" in out
    # A looser tolerance lets the same drop through; several patterns by repetition or comma.
    code, out, _ = run_main(
        monkeypatch, capsys, "--baseline", baseline, "--results", worse, "--tolerance", "0.06"
    )
    assert code == 0
    code, out, _ = run_main(
        monkeypatch,
        capsys,
        "--baseline",
        baseline,
        "--results",
        worse,
        "--keys",
        "SMIYC_*",
        "--keys",
        "bravo_index",
    )
    assert code == 0 and "synobjs" not in out and "bravo_index" in out
    code, out, _ = run_main(
        monkeypatch, capsys, "--baseline", baseline, "--results", worse, "--keys", "SMIYC_*,synobjs_*_ood"
    )
    assert code == 1 and "synobjs_fpr95_ood" in out
    code, _, err = run_main(monkeypatch, capsys, "--baseline", baseline, "--results", tmp_path / "nope.json")
    assert (
        code == 2 and err.startswith("error: ") and "nope.json" in err and len(err.strip().splitlines()) == 1
    )
    code, _, err = run_main(monkeypatch, capsys, "--baseline", baseline, "--results", same, "--keys", "zzz*")
    assert code == 2 and "zzz*" in err
    code, out, _ = run_main(monkeypatch, capsys, "--baseline", baseline, "--results", worse, "--update")
    assert code == 0 and "updated baseline" in out
    assert json.loads(baseline.read_text())["synobjs_auprc_ood"] == 0.45


def test_cli_runner_reports_the_gate_exit_code(tmp_path):
    baseline = write(tmp_path / "baseline.json", BASE)
    worse = write(tmp_path / "worse.json", dict(BASE, SMIYC_auprc_ood=0.1))
    result = CliRunner().invoke(cli.app, ["regress", "--baseline", str(baseline), "--results", str(worse)])
    assert result.exit_code == 1 and "REGRESSED" in result.output
