"""`eomt-ood evaluate`: end to end on a tiny demo-style set with a tiny random model."""

import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from eomt_ood.bravo.layout import subset_of_image
from eomt_ood.bravo.rundir import RunDir, write_results
from eomt_ood.bravo.scoring import score_submission
from eomt_ood.data.images import find_images
from eomt_ood.data.png import decode_png
from eomt_ood.errors import UserError
from eomt_ood.evaluate import EvaluateConfig, evaluate_bravo, progress_bar, summary_table
from eomt_ood.models import create_model, save_checkpoint
from eomt_ood.store import StoreReader


@pytest.fixture(scope="module")
def bravo_set(tiny_bravo):
    return tiny_bravo  # (data folder, checkpoint): conftest.py


def _config(bravo_set, out, **changes):
    data, checkpoint = bravo_set
    options = dict(
        out=out,
        images_root=data / "images",
        gt=data / "gt",
        checkpoint=checkpoint,
        confidences=("msp", "rba"),
        workers=0,
    )
    options.update(changes)
    return EvaluateConfig(**options)


def _official(block):
    return {k: v for k, v in block.items() if k != "meta"}


def _assert_same(a, b):
    assert list(a) == list(b)
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, list):
            assert all((math.isnan(u) and math.isnan(v)) or u == v for u, v in zip(x, y, strict=True)), key
        else:
            assert (math.isnan(x) and math.isnan(y)) or x == y, key


def test_evaluate_equals_score_of_its_own_submission(bravo_set, tmp_path):
    results = evaluate_bravo(_config(bravo_set, tmp_path / "run"), progress=False)
    assert set(results) == {"msp", "rba", "meta"}
    run = tmp_path / "run"
    scored = score_submission(bravo_set[0] / "gt", run / "submission", workers=0, progress=False, warn=None)
    _assert_same(_official(results["msp"]), _official(scored))
    assert len([k for k in results["msp"] if not k.endswith("hmean") and k != "bravo_index"]) == 62
    # The second score's block equals `score` of a submission holding its confidence PNGs (the counts the maps
    # share are taken once per image in evaluate).
    second = tmp_path / "rba-submission"
    shutil.copytree(run / "submission", second)
    for conf in (run / "confidence" / "rba").rglob("*.png"):
        shutil.copyfile(conf, second / conf.relative_to(run / "confidence" / "rba"))
    scored_rba = score_submission(bravo_set[0] / "gt", second, workers=0, progress=False, warn=None)
    _assert_same(_official(results["rba"]), _official(scored_rba))
    # The second score is a different map of the same predictions: same mIoU, different confidence metrics.
    assert results["rba"]["synobjs_miou_valid"] == results["msp"]["synobjs_miou_valid"]
    assert results["rba"]["synobjs_auprc_ood"] != results["msp"]["synobjs_auprc_ood"]
    assert results["meta"]["model_config"]["name"] == "eomt_test"
    # The console table of each score: its own values, a dash (never "nan") where one is missing or undefined.
    for score in ("msp", "rba"):
        table = summary_table(results, score)
        assert table.startswith(f"{score}:\n") and "nan" not in table.lower()
        row = next(line for line in table.splitlines() if line.startswith("synobjs "))
        assert row.split()[4] == f"{results[score]['synobjs_auprc_ood']:.4f}"
    broken = {**results, "rba": {**results["rba"], "synobjs_auprc_ood": float("nan")}}
    row = next(line for line in summary_table(broken, "rba").splitlines() if line.startswith("synobjs "))
    assert row.split()[4] == "–"
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["msp"]["bravo_index"] == pytest.approx(results["msp"]["bravo_index"], abs=0)
    for name in ("report.html", "config.yaml", "predictions.h5"):
        assert (run / name).is_file(), name
    with StoreReader(run / "predictions.h5") as store:
        assert len(store) == 9 and store.confidences == ["msp", "rba"]
        subsets = sorted(set(store.subsets))
        assert subsets == sorted(
            [
                "ACDCfog",
                "ACDCnight",
                "ACDCrain",
                "ACDCsnow",
                "SMIYC",
                "outofcontext",
                "synflare",
                "synobjs",
                "synrain",
            ]
        )
        hist = store.histograms("msp")["synobjs"]
        assert int(hist["ood_pos"].sum()) == results["meta"]["subsets"]["synobjs"]["invalid"]
        stats = store.stats()
        obj = store.subsets.index("synobjs")
        assert 0 <= stats["auprc_ood"][obj] <= 1 and math.isnan(
            stats["auprc_ood"][store.subsets.index("ACDCfog")]
        )
        assert store.preview(obj, "top2_class").shape == (2, 64, 128)
        assert store.preview(obj, "rgb").shape == (64, 128, 3)
        assert store.preview(obj, "conf/rba").dtype == np.uint16
        # The per-image statistics re-score the run: their sum is the pooled histogram.
        levels, counts = store.image_statistics("msp").row(obj)
        pooled = np.zeros(65536, np.int64)
        np.add.at(pooled, levels.astype(np.intp), counts[:, 2])
        np.testing.assert_array_equal(pooled, hist["ood_pos"])  # one synobjs image in this set
    # One image per subset: every replicate draws it, so each interval is the point value; `score` of the
    # same submission gives the same intervals (same images, same draws).
    assert results["meta"]["bootstrap"]["replicates"] == 1000
    assert results["meta"]["intervals"]["msp"]["bravo_index"] == [results["msp"]["bravo_index"]] * 2
    assert scored["meta"]["intervals"] == results["meta"]["intervals"]["msp"]


def test_interrupted_run_resumes_to_the_same_result(bravo_set, tmp_path, capsys):
    first = evaluate_bravo(_config(bravo_set, tmp_path / "a"), progress=False)
    run = tmp_path / "a"
    records = sorted((run / "records").rglob("*.npz"))
    kept, lost = records[:4], records[4:]
    kept_times = [p.stat().st_mtime_ns for p in kept]
    for path in lost:  # as if the run had stopped after the first four images
        path.unlink()
    os.remove(run / "results.json")
    capsys.readouterr()
    second = evaluate_bravo(_config(bravo_set, tmp_path / "a"))
    # The console says what it is doing before the slow parts: loading the model, then how far the run got.
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert lines[0] == "loading model model.safetensors ..."
    assert "resuming: 4 of 9 images done" in lines
    assert [p.stat().st_mtime_ns for p in kept] == kept_times  # finished images were not redone
    _assert_same(_official(first["msp"]), _official(second["msp"]))
    _assert_same(_official(first["rba"]), _official(second["rba"]))
    assert second["meta"]["inference"]["skipped"] == 4 and second["meta"]["inference"]["predicted"] == 5


def test_without_ground_truth_writes_submission_and_report(bravo_set, tmp_path):
    results = evaluate_bravo(
        _config(bravo_set, tmp_path / "nogt", gt=None, confidences=("msp",)), progress=False
    )
    assert list(results) == ["meta"]
    run = tmp_path / "nogt"
    assert len(list((run / "submission").rglob("*_conf.png"))) == 9
    assert "Confidence" in (run / "report.html").read_text()
    with StoreReader(run / "predictions.h5") as store:
        assert not store.has_ground_truth(0)
        pooled = store.level_histograms("msp")
    # Each subset's pooled confidence levels are a plain count of its images' confidence PNGs.
    expected: dict[str, np.ndarray] = {}
    for rel in find_images(bravo_set[0] / "images"):
        levels = decode_png(RunDir(run).conf_file(rel, "msp", first=True).read_bytes(), rel)
        subset = subset_of_image(rel)
        expected[subset] = expected.get(subset, 0) + np.bincount(levels.ravel(), minlength=65536)
    assert sorted(pooled) == sorted(expected)
    for subset, counts in expected.items():
        np.testing.assert_array_equal(pooled[subset], counts)


def test_bad_options_are_user_errors(bravo_set, tmp_path):
    with pytest.raises(UserError, match="unknown confidence 'nope'"):
        evaluate_bravo(_config(bravo_set, tmp_path / "x", confidences=("nope",)), progress=False)
    with pytest.raises(UserError, match="ground truth not found"):
        evaluate_bravo(_config(bravo_set, tmp_path / "x", gt=tmp_path / "missing"), progress=False)
    with pytest.raises(UserError, match="--precision: unknown precision 'fp8'"):
        evaluate_bravo(_config(bravo_set, tmp_path / "p", precision="fp8"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device: cuda requested but no CUDA device is available"):
            evaluate_bravo(_config(bravo_set, tmp_path / "d", device="cuda"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no BRAVO input images"):
        evaluate_bravo(_config(bravo_set, tmp_path / "x", images_root=tmp_path / "empty"), progress=False)


def test_unreadable_image_fails_the_run_unless_skipped(bravo_set, tmp_path):
    data = bravo_set[0]
    images = tmp_path / "images"
    shutil.copytree(data / "images", images)
    broken = sorted(images.rglob("*_leftImg8bit.png"))[0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    rel = broken.relative_to(images).as_posix()
    config = _config(bravo_set, tmp_path / "run", images_root=images, gt=None, confidences=("msp",))
    with pytest.raises(UserError, match=rf"{rel}: unreadable image .*--skip-unreadable"):
        evaluate_bravo(config, progress=False)
    assert not (tmp_path / "run" / "results.json").exists()
    results = evaluate_bravo(replace(config, skip_unreadable=True), progress=False)
    assert results["meta"]["inference"]["failed"] == [rel]
    assert results["meta"]["skip_unreadable"] is True
    assert not RunDir(tmp_path / "run").is_done(rel, ("msp",))
    with StoreReader(tmp_path / "run" / "predictions.h5") as store:
        assert len(store) == 8 and rel not in store.relpaths


def test_regression_gate_passes_on_the_real_maps_and_fails_on_degraded_ones(bravo_set, tmp_path):
    from eomt_ood.bravo.layout import match_gt, open_tree, read_conf, read_mask
    from eomt_ood.data.png import write_png
    from eomt_ood.regress import run_gate

    data = bravo_set[0]
    run = tmp_path / "run"
    results = evaluate_bravo(_config(bravo_set, run, confidences=("msp",)), progress=False)
    baseline = tmp_path / "baseline.json"
    write_results(results, baseline)
    code, text = run_gate(baseline, run / "results.json")
    assert code == 0, text

    # Degrade on purpose: make every OOD pixel maximally confident, so the OOD ranking gets worse.
    with open_tree(data / "gt", "gt") as gt:
        for subset in ("synobjs", "SMIYC"):
            for image in match_gt(gt.names)[subset]:
                conf_path = run / "submission" / image.conf_name
                conf = read_conf(conf_path.read_bytes(), str(conf_path))
                invalid = read_mask(gt.read(image.mask_name), image.mask_name) != 0
                write_png(conf_path, np.where(invalid, 65535, conf).astype(np.uint16))
    degraded = score_submission(data / "gt", run / "submission", workers=0, progress=False, warn=None)
    write_results(degraded, tmp_path / "degraded.json")
    assert degraded["synobjs_auprc_ood"] < results["synobjs_auprc_ood"] - 0.005
    code, text = run_gate(baseline, tmp_path / "degraded.json")
    assert code == 1
    assert "REGRESSED" in text and "synobjs_auprc_ood" in text


def test_degenerate_subsets_are_named_but_the_run_keeps_its_outputs(bravo_set, tmp_path):
    torch.manual_seed(0)
    model = create_model("eomt_test")
    with torch.no_grad():  # predicts "bicycle" everywhere, so no subset has a correctly classified pixel
        model.class_head.bias.fill_(-20.0)
        model.class_head.bias[18] = 20.0
    checkpoint = save_checkpoint(model, tmp_path / "bicycle.safetensors")
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"left unscored \(ACDCfog, .*no correctly classified valid pixel"):
        evaluate_bravo(_config(bravo_set, run, checkpoint=checkpoint, confidences=("msp",)), progress=False)
    results = json.loads((run / "results.json").read_text())
    assert "ACDCfog_miou_valid" not in results and "ACDCfog" in results["meta"]["unscored_subsets"]
    assert "SMIYC_auprc_ood" in results  # OOD metrics do not need correct pixels
    assert (run / "predictions.h5").is_file() and (run / "report.html").is_file()


def test_ground_truth_without_its_input_image_is_named(bravo_set, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(bravo_set[0] / "images", images)
    missing = sorted(images.rglob("*.jpg"))[0]
    missing.unlink()
    with pytest.raises(
        UserError, match=r"_labels_semantic_fake\.png: ground-truth image without an input image"
    ):
        evaluate_bravo(_config(bravo_set, tmp_path / "run", images_root=images), progress=False)


def test_resuming_with_other_settings_is_refused(bravo_set, tmp_path):
    run = tmp_path / "run"
    evaluate_bravo(_config(bravo_set, run, gt=None, confidences=("msp",)), progress=False)
    with pytest.raises(UserError, match=r"holds a run made with confidences = \['msp'\], not \['rba'\]"):
        evaluate_bravo(_config(bravo_set, run, gt=None, confidences=("rba",)), progress=False)


def test_resuming_refuses_what_the_finished_images_depend_on(bravo_set, tmp_path, monkeypatch):
    """The records hold statistics counted on the ground truth and maps of the weights' content: another --gt
    (or adding one), or weights replaced in place under the same path, are refused; the same model named or
    left to the checkpoint, the same precision spelled "fp32" or "auto" on the CPU, a relative path to the same
    folder, and the same weights at another path, resume."""
    data, checkpoint = bravo_set
    weights = tmp_path / "model.safetensors"
    shutil.copyfile(checkpoint, weights)
    run = tmp_path / "run"
    evaluate_bravo(_config(bravo_set, run, gt=None, checkpoint=weights, confidences=("msp",)), progress=False)
    with pytest.raises(UserError, match=r"holds a run made with gt = None, not '.*gt'"):
        evaluate_bravo(_config(bravo_set, run, checkpoint=weights, confidences=("msp",)), progress=False)
    monkeypatch.chdir(data)
    same = _config(
        bravo_set,
        run,
        gt=None,
        checkpoint=weights,
        confidences=("msp",),
        model="eomt_test",
        precision="fp32",
        images_root=Path("images"),
    )
    inference = evaluate_bravo(same, progress=False)["meta"]["inference"]
    assert inference["skipped"] == 9 and inference["predicted"] == 0
    # Nothing predicted in this call: no start-up to report, and still what the forward runs as.
    assert inference["startup_seconds"] is None
    assert (inference["device"], inference["precision_used"], inference["compiled"]) == ("cpu", "fp32", False)
    moved = tmp_path / "elsewhere" / "weights.safetensors"  # the same weights at another path
    moved.parent.mkdir()
    shutil.copyfile(weights, moved)
    assert (
        evaluate_bravo(replace(same, checkpoint=moved), progress=False)["meta"]["inference"]["skipped"] == 9
    )
    torch.manual_seed(1)
    save_checkpoint(create_model("eomt_test"), weights)  # retrained, saved over the same file
    with pytest.raises(UserError, match=r"other weights in .*model\.safetensors \(the file changed since\)"):
        evaluate_bravo(
            _config(bravo_set, run, gt=None, checkpoint=weights, confidences=("msp",)), progress=False
        )


def test_a_finished_image_whose_file_went_missing_is_redone(bravo_set, tmp_path):
    run = tmp_path / "run"
    evaluate_bravo(_config(bravo_set, run, gt=None, confidences=("msp",)), progress=False)
    conf = sorted((run / "submission").rglob("*_conf.png"))[0]
    before = conf.read_bytes()
    conf.unlink()
    results = evaluate_bravo(_config(bravo_set, run, gt=None, confidences=("msp",)), progress=False)
    assert results["meta"]["inference"]["predicted"] == 1 and results["meta"]["inference"]["skipped"] == 8
    assert conf.read_bytes() == before


def _two_process_command(bravo_set, out):
    """`eomt-ood evaluate --devices 2` (msp, rba) on `bravo_set` (data, checkpoint) into `out`, as argv."""
    import sys

    data, checkpoint = bravo_set
    command = [sys.executable, "-m", "eomt_ood.cli", "evaluate", "--root", str(data / "images"), "--gt"]
    command += [
        str(data / "gt"),
        "--checkpoint",
        str(checkpoint),
        "--confidence",
        "msp,rba",
        "--workers",
        "0",
    ]
    return [*command, "--devices", "2", "--out", str(out)]


def _two_processes(bravo_set, out):
    """`_two_process_command` run to its end; returns the finished process."""
    import subprocess

    return subprocess.run(_two_process_command(bravo_set, out), capture_output=True, text=True, timeout=600)


def _eighteen_images_per_rank(tmp_path):
    """A BRAVO-layout set of 36 images of 64 x 128 (`data`): 18 per rank of two, so two agreement points and the
    last; returns the folder and its images in the order the ranks share them."""
    from eomt_ood.data.demo import write_demo

    data = tmp_path / "data"
    write_demo(data, seed=5, per_subset=4, size=(64, 128))
    return data, find_images(data / "images")


@pytest.mark.slow  # two Fabric processes over gloo: ~30 s
def test_two_processes_equal_one(bravo_set, tmp_path):
    """`--devices 2` on the CPU (Lightning Fabric, gloo): each process predicts and scores half of the images,
    the sums are all-reduced, and every key equals the one-process run's."""
    one = evaluate_bravo(_config(bravo_set, tmp_path / "one"), progress=False)
    done = _two_processes(bravo_set, tmp_path / "two")
    assert done.returncode == 0, done.stderr
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    for score in ("msp", "rba"):
        _assert_same(_official(one[score]), _official(two[score]))
    assert two["meta"]["subsets"] == one["meta"]["subsets"]
    assert two["meta"]["inference"]["ranks"] == 2 and two["meta"]["inference"]["predicted"] == 9
    with (
        StoreReader(tmp_path / "one" / "predictions.h5") as a,
        StoreReader(tmp_path / "two" / "predictions.h5") as b,
    ):
        assert a.relpaths == b.relpaths
        np.testing.assert_array_equal(a.image_statistics("rba").counts, b.image_statistics("rba").counts)
    assert two["meta"]["intervals"] == one["meta"]["intervals"]


@pytest.mark.slow  # two Fabric processes over gloo: ~20 s
def test_two_processes_refused_by_rank_zero_write_nothing(bravo_set, tmp_path):
    """Rank 0 locks and checks the run folder; the other rank waits for its verdict before writing anything,
    and ends quietly when rank 0 refuses (rank 0 says why, once)."""
    run = tmp_path / "run"
    evaluate_bravo(_config(bravo_set, run, confidences=("msp",)), progress=False)
    for record in sorted((run / "records").rglob("*.npz"))[::2]:
        record.unlink()  # images left to do for both ranks

    def files():  # all but the lock, which records who last held it
        return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}

    before = files()
    done = _two_processes(bravo_set, run)  # other scores than the run's: refused
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], done.stderr
    assert "holds a run made with" in lines[-1]
    assert files() == before


@pytest.mark.slow  # two Fabric processes over gloo, twice: ~50 s
def test_two_processes_stop_together_when_one_fails(bravo_set, tmp_path):
    """A rank that fails while predicting (an unreadable image in its share) tells the other at their next
    agreement point: the other stops within 8 images instead of predicting its whole share and then failing at
    the final sums with gloo's traceback. One error line, the failed rank's exit status; the finished images are
    kept, and the run resumes to the one-process result once the image is fixed."""
    data, rels = _eighteen_images_per_rank(tmp_path)
    broken = data / "images" / rels[1]  # the second image: rank 1's first
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 3])
    run = tmp_path / "run"
    done = _two_processes((data, bravo_set[1]), run)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], done.stderr
    assert str(broken) in lines[-1] and "unreadable" in lines[-1]
    finished = {rel for rel in rels if RunDir(run).is_done(rel, ("msp", "rba"))}
    rank0 = finished & set(rels[0::2])
    assert 8 <= len(rank0) <= 8 + 3, sorted(rank0)  # up to the first point, and what was in flight

    broken.write_bytes(good)
    again = _two_processes((data, bravo_set[1]), run)
    assert again.returncode == 0, again.stderr
    assert f"resuming: {len(finished)} of 36 images done" in again.stderr
    one = evaluate_bravo(_config((data, bravo_set[1]), tmp_path / "one"), progress=False)
    two = json.loads((run / "results.json").read_text())
    for score in ("msp", "rba"):
        _assert_same(_official(one[score]), _official(two[score]))


@pytest.mark.slow  # two Fabric processes over gloo: ~30 s
def test_a_killed_rank_leaves_one_line_and_a_run_to_resume(bravo_set, tmp_path):
    """Rank 1 killed while predicting (as the out-of-memory killer would): rank 0 finds it gone at its next
    agreement point and says so in one line, exit 1, instead of gloo's traceback (or Lightning's launcher, which
    checks its children every 5 s, kills rank 0 first and says why); the finished images are kept."""
    import signal
    import subprocess
    import time

    data, rels = _eighteen_images_per_rank(tmp_path)
    run = tmp_path / "run"
    command = _two_process_command((data, bravo_set[1]), run)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any(RunDir(run).is_done(rel, ("msp", "rba")) for rel in rels[1::2]):  # rank 1 predicts
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        rank1 = [pid for pid in children if b"eomt_ood.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(rank1) == 1, children
        os.kill(int(rank1[0]), signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    if process.returncode == -signal.SIGKILL:
        # Lightning's launcher checks its children every 5 s and kills the rest when one died: it can get there
        # before rank 0 reaches its next point, and says so.
        assert "Forcefully terminating all other processes" in stderr, stderr
    else:
        assert process.returncode == 1, stderr
        assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], stderr
        assert "rank 0 of 2 lost touch with the others" in lines[-1] and "run the same command" in lines[-1]
    assert not (run / "results.json").exists()
    assert any(RunDir(run).is_done(rel, ("msp", "rba")) for rel in rels[1::2])  # what rank 1 finished is kept


class _Agreements:
    """A stand-in for `_Ranks` that counts the agreement points a rank passes; `others` is what another rank
    tells at them (None: nothing)."""

    def __init__(self, others=None):
        self.problems, self.others = [], others

    def agree(self, problem=None):
        self.problems.append(problem)
        if problem is not None:
            raise problem
        if self.others is not None:
            raise self.others


@pytest.mark.parametrize("share", [0, 7, 8, 9, 16, 17])
def test_every_rank_passes_the_same_agreement_points(share):
    """Ranks' shares differ by at most one image, and resumed images count: every share of a run of `longest`
    images per rank passes the same number of points, one every 8 images and one after the last."""
    from eomt_ood.evaluate import _Lockstep

    longest = 17
    ranks = _Agreements()
    steps = _Lockstep(ranks, longest)
    for done in range(1, min(share, longest) + 1):
        steps.passed(done)
    steps.finish()
    assert ranks.problems == [None] * (longest // 8 + 1)


def test_a_failing_rank_agrees_once_and_a_signal_not_at_all():
    """The failing rank's exception is told at its next point (then raised); a SIGTERM reaches every rank, a lost
    rank cannot be told, and another rank's failure raised at a point was agreed there: those are raised without
    a point."""
    from eomt_ood.errors import LostProcess, Terminated
    from eomt_ood.evaluate import _Lockstep

    ranks = _Agreements()
    steps = _Lockstep(ranks, 20)
    steps.passed(8)
    problem = UserError("x.png: unreadable image")
    with pytest.raises(UserError):
        steps.failed(problem)
    assert ranks.problems == [None, problem]
    for stop in (Terminated(), LostProcess("lost")):
        ranks = _Agreements()
        with pytest.raises(type(stop)):
            _Lockstep(ranks, 20).failed(stop)
        assert ranks.problems == []

    told = UserError("y.png: unreadable image")  # another rank's, raised at a point: agreed there already
    ranks = _Agreements(others=told)
    steps = _Lockstep(ranks, 20)
    with pytest.raises(UserError) as caught:
        try:
            steps.passed(8)
        except Exception as exc:
            steps.failed(exc)
    assert caught.value is told and ranks.problems == [None]


def _ranks_after_a_failure(rank, others_told, monkeypatch):
    """A `_Ranks` of a two-rank run whose collectives are stood in for: the max-reduce says a rank failed with
    exit status 2, and the other rank told `others_told`."""
    from eomt_ood.evaluate import _Ranks

    ranks = _Ranks(rank, 2, object())
    monkeypatch.setattr(ranks, "reduce", lambda array, op="sum": np.array([2]))
    monkeypatch.setattr(
        ranks, "gather", lambda items: items + others_told if rank == 0 else others_told + items
    )
    return ranks


def test_rank_zero_says_another_ranks_one_line_error(monkeypatch):
    """Rank 0 raises the first other rank's bad-input or file-system error as its own (printed once, below its
    bar, with that error's exit status), and ends quietly with the worst status when the other rank raised a
    bug itself; any other rank ends quietly with status 0 (a non-zero one made Lightning's launcher kill rank 0
    before it had said anything), unless its failure is a bug."""
    from concurrent.futures.process import BrokenProcessPool

    from eomt_ood.errors import LostProcess
    from eomt_ood.evaluate import _one_line

    told = [("os", 28, "No space left on device", "/run/records/a.npz")]
    with pytest.raises(OSError) as caught:
        _ranks_after_a_failure(0, told, monkeypatch).agree()
    assert (caught.value.errno, caught.value.filename) == (28, "/run/records/a.npz")
    with pytest.raises(UserError, match="b.png: unreadable"):
        _ranks_after_a_failure(0, [("user", "b.png: unreadable image")], monkeypatch).agree()
    with pytest.raises(OSError, match="^stale handle$"):
        _ranks_after_a_failure(0, [("os", "stale handle")], monkeypatch).agree()
    with pytest.raises(LostProcess, match="^a worker process ended without a word"):
        _ranks_after_a_failure(0, [_one_line(BrokenProcessPool("terminated abruptly"))], monkeypatch).agree()
    with pytest.raises(SystemExit) as ended:
        _ranks_after_a_failure(0, [], monkeypatch).agree()  # another rank's bug: it says what
    assert ended.value.code == 2
    problems = [
        OSError(28, "No space left on device", "/r/a.npz"),
        UserError("b.png"),
        BrokenProcessPool("x"),
    ]
    for problem in (*problems, None):
        with pytest.raises(SystemExit) as ended:
            _ranks_after_a_failure(1, [] if problem else [("user", "b.png")], monkeypatch).agree(problem)
        assert ended.value.code == 0  # the command's status is rank 0's
    with pytest.raises(ZeroDivisionError):
        _ranks_after_a_failure(1, [], monkeypatch).agree(ZeroDivisionError("a bug"))


def test_a_rank_that_ended_without_a_word_is_one_line():
    """A collective that fails because another rank is gone (gloo's "Connection closed by peer") is a
    `LostProcess` naming the rank (the CLI adds what was kept), not the backend's traceback."""
    from eomt_ood.errors import LostProcess
    from eomt_ood.evaluate import _Ranks

    ranks = _Ranks(0, 2, object())

    def closed():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:547] Connection closed by peer [127.0.0.1]:4\nmore")

    with pytest.raises(LostProcess) as caught:
        ranks._collective(closed)
    message = str(caught.value)
    assert "rank 0 of 2" in message and "Connection closed by peer [127.0.0.1]:4" in message
    assert "more" not in message and message.endswith(
        "ended without a word (killed by a signal: out of memory?)"
    )


def test_official_sample_equals_score_of_its_own_submission(bravo_set, tmp_path):
    """With --samples the statistics use the official pixel sample (a small one here, so that sampling bites):
    evaluate's numbers equal `score --samples` on the run's own submission."""
    from eomt_ood.bravo.layout import match_gt, open_tree, read_label
    from eomt_ood.bravo.sampling import official_sample_indices, write_sampling_tar

    data = bravo_set[0]
    samples = []
    with open_tree(data / "gt", "gt") as gt:
        for images in match_gt(gt.names).values():
            for image in images:
                label = read_label(gt.read(image.label_name), image.label_name)
                samples.append((image.base, official_sample_indices(label != 255, samples_per_image=500)))
    tar = tmp_path / "bravo_SAMPLING.tar"
    write_sampling_tar(tar, samples)
    results = evaluate_bravo(_config(bravo_set, tmp_path / "run", samples=tar), progress=False)
    scored = score_submission(
        data / "gt", tmp_path / "run" / "submission", samples=tar, workers=0, progress=False, warn=None
    )
    _assert_same(_official(results["msp"]), _official(scored))
    counts = results["meta"]["subsets"]["synobjs"]
    assert counts["sampled_valid"] + counts["sampled_invalid"] == 500 < counts["valid"] + counts["invalid"]
    full = evaluate_bravo(_config(bravo_set, tmp_path / "full"), progress=False)
    assert full["msp"]["synobjs_auprc_ood"] != results["msp"]["synobjs_auprc_ood"]


def test_progress_rate_starts_at_the_first_image():
    """The first image carries the stream's start-up: the rate (and so the ETA) is measured after it."""
    now = [0.0]
    bar = progress_bar(10, disable=False)
    bar._time = lambda: now[0]  # a clock the test moves
    bar.start_t = 0.0
    now[0] = 12.0  # start-up and the first image
    bar.update()
    shown = bar.format_dict
    assert shown["elapsed"] == 12.0
    assert "?" in bar.format_meter(**shown)  # no ETA from one image
    for _ in range(4):  # then one image every 0.1 s
        now[0] += 0.1
        bar.update()
    shown = bar.format_dict
    assert shown["rate"] == pytest.approx(10.0)
    assert "00:00<00:00" not in bar.format_meter(**shown)  # elapsed still counts from the start
    assert "00:12<00:00" in bar.format_meter(**shown)  # 5 left at 10 per second
    bar.close()


def test_progress_in_a_log_file_is_lines(bravo_set, tmp_path, capsys):
    """With stderr not a terminal (captured here, as in a cluster job's log file) the bar is whole lines: its
    start and its end, no carriage returns."""
    evaluate_bravo(_config(bravo_set, tmp_path / "run"))
    err = capsys.readouterr().err
    assert "\r" not in err
    bar = [line for line in err.splitlines() if line.startswith("evaluate:")]
    assert bar[0].startswith("evaluate:   0%|          | 0/9 [")
    assert bar[-1].startswith("evaluate: 100%|##########| 9/9 [")


def test_the_run_records_what_the_forward_ran_as(bravo_set, tmp_path):
    from eomt_ood.models.algm import enable_token_merging, parse_token_merging, token_merging_settings

    config = _config(bravo_set, tmp_path / "algm", gt=None, confidences=("msp",), token_merging="algm")
    meta = evaluate_bravo(config, progress=False)["meta"]
    # --precision auto and --compile unset, resolved on this device: fp32 eager on the CPU.
    inference = meta["inference"]
    assert (inference["device"], inference["precision_used"], inference["compiled"]) == ("cpu", "fp32", False)
    # The ALGM settings the model was given, as resolved for it, and the option in config.yaml.
    model = create_model("eomt_test")
    enable_token_merging(model, parse_token_merging("algm"))
    assert (
        meta["token_merging"] == token_merging_settings(model) and meta["token_merging"]["method"] == "algm"
    )
    assert "token_merging: algm" in (tmp_path / "algm" / "config.yaml").read_text()


def test_the_readme_demo_command_passes_the_ci_gate(tmp_path, monkeypatch, capsys):
    # The README's first command through the console entry point, on a demo set generated into a fresh cache,
    # then the AUPRC gate CI runs on it against the committed baseline (a second, independent record of the
    # demo's numbers).
    import sys
    from pathlib import Path

    from eomt_ood.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    baseline = Path(__file__).resolve().parents[1] / "benchmarks" / "baselines" / "demo.json"
    for argv in (
        ["evaluate", "--dataset", "bravo", "--out", str(tmp_path / "demo")],
        ["regress", "--baseline", str(baseline), "--results", str(tmp_path / "demo" / "results.json")],
    ):
        monkeypatch.setattr(sys, "argv", ["eomt-ood", *argv])
        try:
            main()
        except SystemExit as ended:  # evaluate returns on success; regress exits with the gate's code
            assert ended.code in (0, None), f"{argv[0]} exited {ended.code}: {capsys.readouterr()}"
    out = capsys.readouterr().out
    assert "passed" in out.strip().splitlines()[-1]
    assert (tmp_path / "cache" / "eomt-ood").is_dir()  # generated where the user cache is
