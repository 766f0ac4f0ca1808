"""Dry run of docs/table_e.md on CPU: the protocol's commands, driven through the CLI in-process.

Three tiny models (EoMT, ViT-Adapter + Mask2Former, Swin + Mask2Former) are trained for a few steps on
synthetic streets with the three recipe files (sizes scaled down by --set, as tests/tiny_recipes.py), evaluated
on a small demo-style BRAVO set with two confidence scores, and compared with --paper. The printed table must
hold the paper's number beside the measured SMIYC / synobjs / mean of every score of every run, and those must be
the runs' own results.json values.
"""

from __future__ import annotations

import csv
import json
import re

import pytest
from tiny_recipes import RECIPES, tiny_sets
from typer.testing import CliRunner

from eomt_ood.cli import app
from eomt_ood.data.demo import write_demo
from eomt_ood.errors import UserError

RUNS = {"eomt": "eomt_test", "vit_adapter": "m2f_vit_adapter_test", "swin": "m2f_swin_test"}
SCORES = ("msp", "rba")
STEPS = 6


def invoke(args: list[str]):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    """Every step of the protocol; returns the folders and the output of the final compare."""
    root = tmp_path_factory.mktemp("table_e")
    data = root / "cityscapes"
    made = invoke(["make-data", "cityscapes-synthetic", "--out", data, "--num-images", 6, "--size", "64x128",
                   "--splits", "train", "--val-fraction", 0, "--simple"])  # fmt: skip
    assert made.exit_code == 0, made.output
    # BRAVO stand-in: the demo generator, one image per subset at 64 x 128.
    bravo = write_demo(root / "bravo", seed=0, per_subset=1, size=(64, 128))
    evaluated = []
    for recipe in RUNS:
        sets = [item for s in tiny_sets(recipe, data, STEPS) for item in ("--set", s)]
        trained = invoke(["train", "--config", RECIPES[recipe], "--out", root / "train" / recipe, *sets])
        assert trained.exit_code == 0, (recipe, trained.output, trained.exception)
        weights = root / "train" / recipe / "model.safetensors"
        out = root / "eval" / recipe
        result = invoke(["evaluate", "--root", bravo / "images", "--gt", bravo / "gt", "--model", RUNS[recipe],
                         "--checkpoint", weights, "--confidence", ",".join(SCORES), "--out", out,
                         "--workers", 0])  # fmt: skip
        if result.exit_code != 0:
            # A model after a few steps can get no pixel of some one-image subset right; evaluate then leaves
            # that subset unscored, writes everything else and says so. The OOD subsets must still be scored.
            assert isinstance(result.exception, UserError), result.output
            assert "everything else was written" in str(result.exception)
        evaluated.append(out)
    compared = invoke(["compare", *evaluated, "--out", root / "compare.html", "--csv", root / "compare.csv",
                       "--paper"])  # fmt: skip
    assert compared.exit_code == 0, (compared.output, compared.exception)
    return {"root": root, "runs": dict(zip(RUNS, evaluated, strict=True)), "output": compared.output}


def _measured(run_dir, score):
    results = json.loads((run_dir / "results.json").read_text())
    block = results[score]
    smiyc, synobjs = 100 * block["SMIYC_auprc_ood"], 100 * block["synobjs_auprc_ood"]
    return [f"{smiyc:.1f}", f"{synobjs:.1f}", f"{(smiyc + synobjs) / 2:.1f}"]


def test_table_prints_the_paper_beside_every_measured_score(protocol):
    lines = protocol["output"].splitlines()
    header = next(line for line in lines if line.startswith("Method"))
    assert header.split("|")[0].split() == ["Method", "Backbone", "Pre-training", "Paper"]
    assert header.split("|")[1].split() == ["Run", "Model", "Score", "SMIYC", "synobjs", "mean"]
    paper_of = {"swin": "56.8", "vit_adapter": "68.7", "eomt": "89.7"}
    for recipe, run_dir in protocol["runs"].items():
        rows = [line for line in lines if re.search(rf"\|\s+{run_dir.name}\s", line)]
        assert len(rows) == len(SCORES), (recipe, rows)
        # The paper's cells once per paper row (on the run's first score), both columns filled.
        assert rows[0].split("|")[0].split()[-1] == paper_of[recipe]
        for row, score in zip(rows, SCORES, strict=True):
            right = row.split("|")[1].split()
            assert right[:4] == [run_dir.name, RUNS[recipe], "*", score]  # * = a tiny model, not the paper's
            assert right[4:] == _measured(run_dir, score)
    order = [
        next(i for i, line in enumerate(lines) if paper_of[r] in line)
        for r in ("swin", "vit_adapter", "eomt")
    ]
    assert order == sorted(order)  # the paper's row order
    text = protocol["output"]
    assert "states neither the BRAVO key behind it nor the confidence score" in text
    assert "not the paper's model (eomt_large_patch16_1024, m2f_swin_large, m2f_vit_adapter_large)" in text


def test_report_and_csv_carry_the_paper_reference(protocol):
    report = (protocol["root"] / "compare.html").read_text()
    assert "Paper reference: Table E" in report and ">89.7<" in report and ">68.7<" in report
    with (protocol["root"] / "compare.csv").open() as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    expected = {"eomt": 0.897, "vit_adapter": 0.687, "swin": 0.568}
    for recipe, value in expected.items():
        row = rows[recipe]
        assert float(row["paper_table_e_auprc_ood"]) == pytest.approx(value)
        assert row["paper_table_e_same_model"] == "False"
        # The measured column beside it: the run's own value of the compared (first) score.
        measured = json.loads((protocol["runs"][recipe] / "results.json").read_text())[SCORES[0]]
        assert float(row["SMIYC_auprc_ood"]) == pytest.approx(measured["SMIYC_auprc_ood"], abs=1e-6)
