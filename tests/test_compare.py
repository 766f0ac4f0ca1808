"""`eomt-ood compare`: tiny EoMT and the tiny Mask2Former baselines evaluated on a demo-style set, side by side."""

import csv
import json
import math
import shutil
import sys

import pytest
import torch

from eomt_ood.cli import main
from eomt_ood.errors import UserError
from eomt_ood.evaluate import EvaluateConfig, evaluate_bravo
from eomt_ood.metrics.histogram import curve_metrics
from eomt_ood.models import create_model, save_checkpoint
from eomt_ood.reports.compare import compare_runs, describe_architecture, load_run
from eomt_ood.reports.plots import format_value
from eomt_ood.store import StoreReader

MODELS = {
    # run name: (registered model, confidences; the EoMT run submits rba first so its default score differs)
    "eomt": ("eomt_test", ("rba", "msp")),
    "swin": ("m2f_swin_test", ("msp",)),
    "adapter": ("m2f_vit_adapter_test", ("msp",)),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bravo):
    """Three real runs of `evaluate_bravo` (random tiny models) on one tiny demo set (conftest.py)."""
    root = tmp_path_factory.mktemp("compare")
    data = tiny_bravo[0]
    dirs = {}
    for run, (name, scores) in MODELS.items():
        torch.manual_seed(0)
        checkpoint = save_checkpoint(create_model(name), root / f"{name}.safetensors")
        config = EvaluateConfig(
            out=root / run,
            images_root=data / "images",
            gt=data / "gt",
            checkpoint=checkpoint,
            confidences=scores,
            workers=0,
        )
        try:
            evaluate_bravo(config, progress=False)
        except UserError as exc:
            # A random tiny model gets no pixel right on some one-image subsets; those are left unscored and
            # everything else is written, as on a real partial run. SMIYC and synobjs are scored for seed 0.
            assert "everything else was written" in str(exc)
        dirs[run] = root / run
    return dirs


def _results(run_dir, score="msp"):
    results = json.loads((run_dir / "results.json").read_text())
    return results[score] if score in results else results


def test_registry_names_map_to_the_papers_methods():
    assert describe_architecture("eomt_large_patch16_1024") == ("EoMT", "ViT-L", "DINOv2")
    assert describe_architecture("eomt_deit3_large_patch16_512")[2] == "DeiT-III (IN21K)"
    assert describe_architecture("m2f_swin_large") == ("Mask2Former", "Swin-L", "IN21K")
    assert describe_architecture("m2f_vit_adapter_large")[:2] == ("Mask2Former", "ViT-Adapter-L")
    assert describe_architecture("m2f_swin_test")[0] == "Mask2Former"
    assert describe_architecture(None) == ("unknown", "unknown", "unknown")
    assert describe_architecture("something_else") == ("unknown", "unknown", "unknown")


def test_report_and_csv_carry_each_runs_own_numbers(runs, tmp_path):
    order = [runs["eomt"], runs["swin"], runs["adapter"]]
    out = compare_runs(order, tmp_path / "compare.html", tmp_path / "compare.csv", confidence="msp")
    # All three scored with msp on the same images and pixels: only the subsets that a random model left
    # unscored are flagged.
    assert out["differences"], "the random baselines leave subsets unscored"
    assert all("subsets left unscored" in line for line in out["differences"])
    text = (tmp_path / "compare.html").read_text()
    with (tmp_path / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == ["eomt", "swin", "adapter"]
    expected = {
        "eomt": ("EoMT", "test"),
        "swin": ("Mask2Former", "Swin test"),
        "adapter": ("Mask2Former", "ViT-Adapter test"),
    }
    for row, run_dir in zip(rows, order, strict=True):
        method, backbone = expected[row["run"]]
        assert (row["method"], row["backbone"], row["pretraining"], row["score"]) == (
            method,
            backbone,
            "none",
            "msp",
        )
        assert f"<td>{backbone}</td>" in text
        results = _results(run_dir)
        for key in ("SMIYC_auprc_ood", "synobjs_auprc_ood", "synobjs_fpr95_ood", "bravo_index"):
            # Exactly the run's own results.json value (CSV floats are written in full precision).
            assert float(row[key]) == results[key], (row["run"], key)
            assert format_value(results[key]) in text
        for key in (k for k in row if k.endswith(("_miou_valid", "_ece_valid"))):
            # A subset the run left unscored is an empty cell, never a number from another run.
            assert row[key] == ("" if key not in results else repr(results[key])), (row["run"], key)
        # The stored histograms that the PR curves are drawn from give the same AUPRC (independent recompute).
        with StoreReader(run_dir / "predictions.h5") as store:
            h = store.histograms("msp")["synobjs"]
        auprc = curve_metrics(h["ood_pos"][::-1], h["ood_neg"][::-1])["auprc"]
        assert math.isclose(auprc, results["synobjs_auprc_ood"], rel_tol=0, abs_tol=1e-12)
    # The chance level printed under the table is the fraction of OOD pixels the run recorded.
    counts = json.loads((order[0] / "results.json").read_text())["meta"]["subsets"]["synobjs"]
    assert f"synobjs {format_value(counts['invalid'] / (counts['invalid'] + counts['valid']))}" in text
    # A column exists only where some run has the value (SMIYC has no semantic ground truth).
    for key in ("SMIYC_miou_valid", "ACDCfog_miou_valid", "synobjs_ece_valid"):
        assert (key in rows[0]) == any(key in _results(d) for d in order), key
    # The three runs really differ (otherwise the test above could not tell them apart).
    assert len({row["synobjs_auprc_ood"] for row in rows}) == 3
    assert text.count("SMIYC: precision-recall") == 1 and "synobjs: precision-recall" in text


def test_runs_evaluated_alike_are_not_flagged(runs, tmp_path):
    twin = tmp_path / "again" / "eomt"
    shutil.copytree(runs["eomt"], twin)
    out = compare_runs([runs["eomt"], twin], tmp_path / "same.html")
    assert out["differences"] == []
    # Same directory name twice: the table tells them apart by their whole paths.
    assert [row["run"] for row in out["rows"]] == [str(runs["eomt"]), str(twin)]
    text = (tmp_path / "same.html").read_text()
    assert "not evaluated the same way" not in text and "share the same conventions" in text


def test_other_score_and_official_sampling_are_flagged(runs, tmp_path):
    # Default score: each run's first, i.e. rba for the EoMT run, msp for the baselines -> flagged.
    out = compare_runs([runs["eomt"], runs["swin"]], tmp_path / "a.html")
    assert any(line.startswith("confidence score differs") for line in out["differences"])
    assert out["rows"][0]["score"] == "rba"
    assert out["rows"][0]["synobjs_auprc_ood"] == _results(runs["eomt"], "rba")["synobjs_auprc_ood"]
    # A run scored on the official sample (faked in its meta) and on fewer images: flagged, still rendered.
    faked = tmp_path / "sampled"
    shutil.copytree(runs["adapter"], faked)
    results = json.loads((faked / "results.json").read_text())
    results["meta"]["pixels"] = "official sampling"
    results["meta"]["subsets"]["synobjs"]["images"] += 1
    (faked / "results.json").write_text(json.dumps(results))
    out = compare_runs([runs["swin"], faked], tmp_path / "b.html", confidence="msp")
    text = (tmp_path / "b.html").read_text()
    assert any(line.startswith("pixels scored differs") for line in out["differences"])
    assert any(line.startswith("synobjs: images count differs") for line in out["differences"])
    assert "pixels scored differs" in text and "official sampling" in text
    assert "ViT-Adapter test" in text and "Swin test" in text


def test_bad_input_names_the_path(runs, tmp_path):
    with pytest.raises(UserError, match="results.json: not found"):
        load_run(tmp_path)
    with pytest.raises(UserError, match="at least one"):
        compare_runs([], tmp_path / "x.html")
    with pytest.raises(UserError, match="no results for confidence 'energy'"):
        load_run(runs["swin"], confidence="energy")
    broken = tmp_path / "broken"
    shutil.copytree(runs["swin"], broken)
    (broken / "predictions.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="predictions.h5"):
        load_run(broken)


def test_cli_compare(runs, tmp_path, monkeypatch, capsys):
    argv = ["eomt-ood", "compare", str(runs["eomt"]), str(runs["swin"]), "--out", str(tmp_path / "c.html")]
    monkeypatch.setattr(sys, "argv", [*argv, "--csv", str(tmp_path / "c.csv")])
    main()
    captured = capsys.readouterr()
    assert (tmp_path / "c.html").is_file() and (tmp_path / "c.csv").is_file()
    assert "compared 2 run(s)" in captured.out
    assert "warning: confidence score differs" in captured.err
    # The console table: each run's own AUPRC_OOD and summaries (its results.json), the second run's paired
    # difference to the first beside them, starred as the CSV says its interval excludes 0.
    lines = captured.out.splitlines()
    assert lines[0].split() == [
        "run",
        "score",
        "SMIYC_auprc_ood",
        "synobjs_auprc_ood",
        "semantic_hmean",
        "bravo_index",
    ]
    first, second = _results(runs["eomt"], "rba"), _results(runs["swin"])
    with open(tmp_path / "c.csv", newline="") as f:
        swin_row = list(csv.DictReader(f))[1]
    assert lines[1].split()[:2] == ["eomt", "rba"] and lines[2].split()[:2] == ["swin", "msp"]
    for i, key in enumerate(lines[0].split()[2:]):
        assert lines[1].split()[2 + i] == format_value(first[key])
        value, diff = lines[2].split()[2 + 2 * i : 4 + 2 * i]
        assert value == format_value(second[key])
        star = "*" if swin_row[f"{key}_diff_excludes_0"] == "True" else ""
        assert diff == f"({second[key] - first[key]:+.4f}){star}"
    assert lines[3].startswith("(+x): this run minus eomt, paired over the same images")
    # A directory without results.json: one line naming the path, exit code 2, no traceback.
    monkeypatch.setattr(
        sys, "argv", ["eomt-ood", "compare", str(tmp_path / "nope"), "--out", str(tmp_path / "d.html")]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and f"{tmp_path / 'nope' / 'results.json'}: not found" in err
    assert len(err.strip().splitlines()) == 1


def test_several_scores_compare_each_run_once_per_score(runs, tmp_path):
    # The EoMT run holds rba and msp: two rows of one run, each with its own block's numbers, the second
    # paired to the first (the same images), and the scores differing is what was asked for, not a warning.
    out = compare_runs([runs["eomt"]], tmp_path / "s.html", tmp_path / "s.csv", confidence="msp, rba")
    assert [(r["run"], r["score"]) for r in out["rows"]] == [("eomt (msp)", "msp"), ("eomt (rba)", "rba")]
    msp, rba = _results(runs["eomt"], "msp"), _results(runs["eomt"], "rba")
    for key in ("SMIYC_auprc_ood", "synobjs_auprc_ood", "bravo_index"):
        assert out["rows"][0][key] == msp[key] and out["rows"][1][key] == rba[key]
        assert out["rows"][1][f"{key}_diff"] == pytest.approx(rba[key] - msp[key], abs=1e-12)
        assert out["rows"][0][f"{key}_diff"] is None
    assert not any("confidence score differs" in line for line in out["differences"])
    assert "eomt (rba)" in out["table"].splitlines()[2]
    text = (tmp_path / "s.html").read_text()
    assert "pixels scored, subsets" in text and "The confidence score differs, as asked." in text
    # The paper's table lists every score the run computed once, not once per compared row.
    assert [line.split()[-4] for line in out["paper_table"].splitlines() if " eomt " in line] == [
        "rba",
        "msp",
    ]
    # Two runs: run by run, each with every score; a run without one of them names itself and the score.
    out = compare_runs([runs["eomt"], runs["eomt"]], tmp_path / "t.html", confidence=["rba", "msp"])
    labels = [r["run"] for r in out["rows"]]
    assert labels == [f"{runs['eomt']} ({s})" for s in ("rba", "msp", "rba", "msp")]
    with pytest.raises(UserError, match=r"swin/results.json: no results for confidence 'rba' \(it has msp\)"):
        compare_runs([runs["eomt"], runs["swin"]], tmp_path / "u.html", confidence="msp,rba")
    with pytest.raises(UserError, match="--confidence: give a score name"):
        compare_runs([runs["eomt"]], tmp_path / "v.html", confidence=" , ")


def _copy_with_meta(source, target, **meta_changes):
    shutil.copytree(source, target)
    results = json.loads((target / "results.json").read_text())
    for key, value in meta_changes.items():
        if value is None:
            results["meta"].pop(key, None)
        else:
            results["meta"][key] = value
    (target / "results.json").write_text(json.dumps(results))
    return target


def test_model_is_read_from_the_checkpoint_when_meta_lacks_it(runs, tmp_path):
    # Older runs without meta.model_config: the checkpoint's safetensors metadata still names the model.
    older = _copy_with_meta(runs["swin"], tmp_path / "older", model_config=None)
    run = load_run(older)
    assert (run.model_name, run.method, run.backbone, run.img_size) == (
        "m2f_swin_test",
        "Mask2Former",
        "Swin test",
        64,
    )
    # Neither recorded nor a readable checkpoint: "unknown", and the report says so.
    anonymous = _copy_with_meta(
        runs["swin"], tmp_path / "anonymous", model_config=None, checkpoint="/nowhere.safetensors"
    )
    run = load_run(anonymous)
    assert (run.model_name, run.method, run.backbone, run.pretraining) == (
        None,
        "unknown",
        "unknown",
        "unknown",
    )
    out = compare_runs([runs["swin"], anonymous], tmp_path / "u.html")
    assert any("the model is not recorded" in line for line in out["differences"])
    assert any(line.startswith("input size (img_size) differs") for line in out["differences"])
