"""Bootstrap intervals end to end: `evaluate`, `score`, `compare`, `regress --significance`
(`eomt_ood.bravo.intervals`).

Oracles: the intervals a command writes equal `bootstrap()` recomputed here from the per-image statistics read
back with plain h5py and rebuilt from dense arrays; the paired test is checked on three submissions of one
synthetic model over the same 30 images: a second seed of small test-time noise (must stay quiet) and a real
degradation (OOD pixels made more confident in a third of the images: must fire, although each run's own
interval contains the other's value).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.special import expit

from eomt_ood import cli
from eomt_ood.bravo.intervals import Settings
from eomt_ood.bravo.layout import OOD_SUBSETS, SEMANTIC_SUBSETS, SUBSETS
from eomt_ood.bravo.rundir import load_results, metric_blocks
from eomt_ood.bravo.sampling import official_sample_indices, write_sampling_tar
from eomt_ood.bravo.scoring import score_submission
from eomt_ood.data.png import write_png
from eomt_ood.errors import UserError
from eomt_ood.metrics import bootstrap as bs
from eomt_ood.metrics.image_stats import image_set_statistics
from eomt_ood.regress import NOISE, OK, REGRESSED, run_gate
from eomt_ood.reports.compare import compare_runs, load_runs, metric_bars

B = 300  # replicates in these tests: enough for stable 95% bounds on 30 images, and fast
N_IMAGES, HEIGHT, WIDTH = 30, 40, 60


# ------------------------------------------------------------------------------------------------ oracle


def bootstrap_from_file(path: Path, score: str, block: dict, replicates: int, seed: int = 0, level=0.95):
    """Percentile intervals of `block`'s keys recomputed from a store / statistics file read with plain h5py:
    per subset the images with ground truth, ordered by their `_pred.png` name, as dense histograms."""
    with h5py.File(path, "r") as f:
        relpaths = [r.decode() if isinstance(r, bytes) else str(r) for r in f["images/relpath"][()]]
        subsets = [s.decode() if isinstance(s, bytes) else str(s) for s in f["images/subset"][()]]
        has_gt = f["images/has_gt"][()]
        cm = f["image_stats/cm"][()]
        levels = f[f"image_stats/{score}/levels"][()]
        counts = f[f"image_stats/{score}/counts"][()]
        offsets = f[f"image_stats/{score}/offsets"][()]
    scored = [s for s in SUBSETS if any(k.startswith(s + "_") and k != s + "_hmean" for k in block)]
    sets = {}
    for subset in scored:
        pred_name = {i: relpaths[i].rsplit(".", 1)[0] + "_pred.png" for i in range(len(relpaths))}
        members = sorted(
            (i for i in range(len(relpaths)) if subsets[i] == subset and has_gt[i]), key=pred_name.get
        )
        dense = np.zeros((3, len(members), 65536), np.int64)
        for row, i in enumerate(members):
            rows = slice(offsets[i], offsets[i + 1])
            for column in range(3):
                dense[column, row, levels[rows]] = counts[rows, column]
        sets[subset] = image_set_statistics(cm[members], *dense)
    reps = bs.bootstrap(sets, SEMANTIC_SUBSETS, OOD_SUBSETS, replicates=replicates, seed=seed)
    for key, value in reps.point.items():  # the statistics reproduce the official values
        assert math.isclose(value, block[key], rel_tol=0, abs_tol=1e-12), key
    return {key: [iv.low, iv.high] for key, iv in bs.percentile_intervals(reps, level).items()}


# ------------------------------------------------------------------------------------------------ data


def _write_gt(root: Path, rng: np.random.Generator) -> list[tuple]:
    """30 synobjs images: class stripes, a void band, an OOD box in most, per-image error rate and difficulty."""
    images = []
    for i in range(N_IMAGES):
        label = ((np.arange(WIDTH)[None, :] * 6) // WIDTH).repeat(HEIGHT, 0).astype(np.uint8)
        label[:3] = 255
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        if rng.random() < 0.8:
            h, w = rng.integers(4, 14, 2)
            y, x = rng.integers(4, HEIGHT - h), rng.integers(0, WIDTH - w)
            mask[y : y + h, x : x + w] = 255
        wrong = rng.random((HEIGHT, WIDTH)) < rng.uniform(0.05, 0.3)
        pred = np.where(wrong, (label + 1) % 6, label).astype(np.uint8)
        pred[label == 255] = 0
        score = rng.normal(2.0 + rng.normal(0, 0.7), 1.0, (HEIGHT, WIDTH)) - 1.2 * wrong - 1.5 * (mask > 0)
        base = f"bravo_synobjs/obj{i % 4}/{i}"
        write_png(root / "gt" / f"{base}_gt.png", label)
        write_png(root / "gt" / f"{base}_mask.png", mask)
        images.append((base, pred, score, mask > 0))
    return images


def _write_submission(root: Path, images: list[tuple], seed: int, degrade: float = 0.0) -> Path:
    """One run of the model: its scores plus small test-time noise (N(0, 0.02) in logit units); `degrade`
    raises the confidence of the OOD pixels of every third image (a worse model on the same images)."""
    rng = np.random.default_rng(seed)
    for i, (base, pred, score, ood) in enumerate(images):
        noisy = score + rng.normal(0, 0.02, score.shape) + (degrade * ood if i % 3 == 0 else 0.0)
        conf = np.clip(np.floor(expit(noisy) * 65536), 0, 65535).astype(np.uint16)
        write_png(root / f"{base}_pred.png", pred)
        write_png(root / f"{base}_conf.png", conf)
    return root


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """{name: results.json} of `score --stats` for three submissions over the same 30 images (base, noise:
    another noise seed, worse: degraded), with the statistics files beside them (meta.statistics)."""
    root = tmp_path_factory.mktemp("intervals")
    images = _write_gt(root, np.random.default_rng(0))
    out = {}
    for name, seed, degrade in (("base", 1, 0.0), ("noise", 2, 0.0), ("worse", 3, 1.0)):
        sub = _write_submission(root / f"sub-{name}", images, seed, degrade)
        results = score_submission(
            root / "gt",
            sub,
            workers=0,
            progress=False,
            warn=None,
            bootstrap=Settings(B),
            stats_out=root / f"{name}.h5",
        )
        results["meta"]["statistics"] = f"{name}.h5"
        (root / f"{name}.json").write_text(json.dumps(results))
        out[name] = root / f"{name}.json"
    out["root"] = root
    return out


# ------------------------------------------------------------------------------------------------ evaluate / score


def test_score_intervals_equal_a_bootstrap_of_its_statistics_file(scored):
    results = load_results(scored["base"])
    assert results["meta"]["bootstrap"]["replicates"] == B and results["meta"]["bootstrap"]["seconds"] > 0
    expected = bootstrap_from_file(scored["root"] / "base.h5", "submission", results, B)
    assert results["meta"]["intervals"] == expected
    # Official keys stay exactly as without the bootstrap.
    plain = score_submission(
        scored["root"] / "gt", scored["root"] / "sub-base", workers=0, warn=None, bootstrap=Settings(0)
    )
    official = [json.dumps({k: v for k, v in r.items() if k != "meta"}) for r in (plain, results)]
    assert official[0] == official[1]  # as text: NaN IoUs compare equal
    assert "intervals" not in plain["meta"]
    # Another seed gives other draws, hence (slightly) other bounds.
    reseeded = bootstrap_from_file(scored["root"] / "base.h5", "submission", results, B, seed=1)
    assert reseeded["synobjs_auprc_ood"] != expected["synobjs_auprc_ood"]


def test_score_without_stats_bootstraps_from_a_temporary_file_it_removes(scored, tmp_path, monkeypatch):
    """Without --stats the per-image statistics go to a temporary statistics file (memory stays flat), which is
    gone afterwards; the intervals are those of the run that kept its file."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    results = score_submission(
        scored["root"] / "gt", scored["root"] / "sub-base", workers=2, warn=None, bootstrap=Settings(B)
    )
    assert list(tmp_path.iterdir()) == []
    assert results["meta"]["statistics"] is None
    assert results["meta"]["intervals"] == load_results(scored["base"])["meta"]["intervals"]


def test_score_removes_the_temporary_folders_of_killed_runs_and_no_other(scored, tmp_path, monkeypatch):
    """A `score` killed with SIGKILL cannot remove its temporary statistics (gigabytes for a BRAVO run): the next
    `score` does. The folder of a run that is still going stays, and so does one made a moment ago (its process
    may not hold it yet)."""
    import os
    import signal
    import subprocess
    import tempfile
    import time

    code = (
        "import os, signal, sys\n"
        "from eomt_ood.io import HeldTemporaryFolder\n"
        "with HeldTemporaryFolder('eomt-ood-score-') as folder:\n"
        "    (folder / 'statistics.h5').write_bytes(bytes(1000))\n"
        "    print(folder, flush=True)\n"
        "    if sys.argv[1] == 'killed':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    sys.stdin.read()\n"  # the live one holds its folder until its input closes
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    killed = subprocess.run([sys.executable, "-c", code, "killed"], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    abandoned = Path(killed.stdout.strip())
    assert (abandoned / "statistics.h5").is_file()
    live = subprocess.Popen(
        [sys.executable, "-c", code, "live"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        held = Path(live.stdout.readline().strip())
        young = tmp_path / "eomt-ood-score-young"
        young.mkdir()
        hour_ago = time.time() - 3600
        for folder in (abandoned, held):
            os.utime(folder, (hour_ago, hour_ago))
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        results = score_submission(
            scored["root"] / "gt", scored["root"] / "sub-base", workers=0, warn=None, bootstrap=Settings(B)
        )
        assert not abandoned.exists()
        assert (held / "statistics.h5").is_file()
        assert young.is_dir()
        assert sorted(tmp_path.iterdir()) == sorted([held, young])  # and this run removed its own
    finally:
        live.stdin.close()
        live.wait(timeout=60)
    assert not held.exists()  # its process removed it on leaving
    assert results["meta"]["intervals"] == load_results(scored["base"])["meta"]["intervals"]


def test_with_the_official_sample_the_pixels_stay_fixed_and_images_are_resampled(scored, tmp_path):
    root = scored["root"]
    samples = {}
    for label_path in sorted((root / "gt").rglob("*_gt.png")):
        base = str(label_path.relative_to(root / "gt"))[: -len("_gt.png")]
        with Image.open(label_path) as img:
            label = np.asarray(img)
        samples[base] = official_sample_indices(label != 255, samples_per_image=500, seed=7)
    write_sampling_tar(tmp_path / "s.tar", samples.items())
    results = score_submission(
        root / "gt", root / "sub-base", samples=tmp_path / "s.tar", workers=0, warn=None,
        bootstrap=Settings(B), stats_out=tmp_path / "s.h5",
    )  # fmt: skip
    assert results["meta"]["intervals"] == bootstrap_from_file(tmp_path / "s.h5", "submission", results, B)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        counts, offsets = f["image_stats/submission/counts"][()], f["image_stats/submission/offsets"][()]
    per_image = np.add.reduceat(counts.sum(axis=1), offsets[:-1])
    assert (per_image == 500).all()  # every image's histograms hold exactly its sampled pixels
    full = load_results(scored["base"])
    # The confusion matrices use every pixel either way, so the same draws give the same mIoU interval;
    # the confidence metrics rest on the sample.
    assert (
        results["meta"]["intervals"]["synobjs_miou_valid"] == full["meta"]["intervals"]["synobjs_miou_valid"]
    )
    assert results["meta"]["intervals"]["synobjs_auprc_ood"] != full["meta"]["intervals"]["synobjs_auprc_ood"]


def test_evaluate_intervals_equal_a_bootstrap_of_its_store_and_of_score(finished_run):
    """The conftest run (built by the pipeline's own `finish_image` + `gather_run`): two scores, synobjs (3
    images) and ACDCfog (2), an image without GT."""
    results = load_results(finished_run / "results.json")
    assert results["meta"]["statistics"] == "predictions.h5"
    replicates = results["meta"]["bootstrap"]["replicates"]
    for score, block in metric_blocks(results).items():
        expected = bootstrap_from_file(finished_run / "predictions.h5", score, block, replicates)
        assert results["meta"]["intervals"][score] == expected
        low, high = expected["synobjs_auprc_ood"]
        assert low < high  # three images do move it
    # `score` of the run's own submission (the first score) resamples the same images alike.
    again = score_submission(
        finished_run.parent / "gt",
        finished_run / "submission",
        workers=0,
        warn=None,
        bootstrap=Settings(replicates),
    )
    assert again["meta"]["intervals"] == results["meta"]["intervals"]["msp"]
    report = (finished_run / "report.html").read_text()
    assert "bootstrap intervals over images" in report and '"error_y"' in report


def test_intervals_from_worker_processes_equal_those_computed_here(finished_run, tmp_path):
    """`block_intervals` through a process pool (the subsets of both scores in one stream, each worker reading
    its subset from the store) gives the same intervals, replicate for replicate; a damaged store read in a
    worker is the same one-line `UserError` as read here."""
    import shutil

    from eomt_ood.bravo.intervals import ScoreStatistics, block_intervals, interval_pool, run_replicates

    results = load_results(finished_run / "results.json")
    blocks = metric_blocks(results)
    store = finished_run / "predictions.h5"
    stats = {score: ScoreStatistics.from_store(store, score) for score in blocks}
    settings = Settings(B, seed=3)
    here, _ = block_intervals(stats, blocks, settings)
    with interval_pool(2) as pool:
        pooled, meta = block_intervals(stats, blocks, settings, pool.map)
        assert pooled == here and list(pooled) == list(blocks) == ["msp", "rba"]
        assert here["msp"] != here["rba"]  # a mix-up of the scores' results would show
        for score, block in blocks.items():
            a = run_replicates(stats[score], block, settings)
            b = run_replicates(stats[score], block, settings, map_fn=pool.map)
            assert list(a.values) == list(b.values) and a.point == b.point and a.bins == b.bins
            for key in a.values:
                np.testing.assert_array_equal(a.values[key], b.values[key])
            for subset in a.draws:
                np.testing.assert_array_equal(a.draws[subset], b.draws[subset])
        assert meta["replicates"] == B and meta["seed"] == 3

        damaged = tmp_path / "damaged.h5"
        shutil.copy(store, damaged)
        with h5py.File(damaged, "r+") as f:
            offsets = f["image_stats/msp/offsets"]
            offsets[1] = offsets[-1] + 1  # no longer increasing
        broken = {"msp": ScoreStatistics.from_store(damaged, "msp")}
        with pytest.raises(UserError, match="damaged.h5: image_stats/msp/offsets do not match"):
            block_intervals(broken, {"msp": blocks["msp"]}, settings, pool.map)


# ------------------------------------------------------------------------------------------------ compare


def test_compare_marks_a_real_degradation_and_not_noise(scored, tmp_path):
    runs = [scored["base"], scored["noise"], scored["worse"]]
    out = compare_runs(runs, tmp_path / "c.html", tmp_path / "c.csv", bootstrap=Settings(B))
    # Score runs record no model; nothing else differs and every run is paired.
    assert all("model is not recorded" in line for line in out["differences"])
    rows = {row["run"]: row for row in out["rows"]}
    key = "synobjs_auprc_ood"
    base, noise, worse = (load_results(scored[n]) for n in ("base", "noise", "worse"))
    # Each run's interval is the one its own score run wrote (same images, B and seed).
    for name, results in (("base", base), ("noise", noise), ("worse", worse)):
        for column in (key, "synobjs_miou_valid", "bravo_index"):
            assert [rows[name][f"{column}_low"], rows[name][f"{column}_high"]] == results["meta"][
                "intervals"
            ][column]
    assert rows["base"][f"{key}_diff"] is None
    # Noise: the value moved a little, the paired interval holds 0.
    assert rows["noise"][f"{key}_diff"] == noise[key] - base[key] != 0
    assert rows["noise"][f"{key}_diff_low"] < 0 < rows["noise"][f"{key}_diff_high"]
    assert rows["noise"][f"{key}_diff_excludes_0"] is False
    # The degradation: below 0 for sure, although each run's own interval holds the other's value.
    assert rows["worse"][f"{key}_diff"] == worse[key] - base[key] < -0.01
    assert rows["worse"][f"{key}_diff_high"] < 0 and rows["worse"][f"{key}_diff_excludes_0"] is True
    assert rows["worse"][f"{key}_low"] < base[key] < rows["worse"][f"{key}_high"]
    assert rows["base"][f"{key}_low"] < worse[key] < rows["base"][f"{key}_high"]
    with (tmp_path / "c.csv").open() as handle:
        table = {row["run"]: row for row in csv.DictReader(handle)}
    assert (
        table["worse"][f"{key}_diff_excludes_0"] == "True" and float(table["worse"][f"{key}_diff_high"]) < 0
    )
    text = (tmp_path / "c.html").read_text()
    assert 'class="diff worse"' in text and "●" in text and "paired interval" in text
    # Error bars on the bars: every run's interval around its value.
    loaded = load_runs(runs)
    from eomt_ood.reports.compare import add_intervals

    add_intervals(loaded, Settings(B))
    bars = [t for t in metric_bars(loaded).data if t.name == "worse" and "synobjs" in t.x]
    bar = next(t for t in bars if worse[key] in t.y)
    i = list(bar.y).index(worse[key])
    assert bar.error_y.array[i] == pytest.approx(rows["worse"][f"{key}_high"] - worse[key], abs=1e-15)
    assert bar.error_y.arrayminus[i] == pytest.approx(worse[key] - rows["worse"][f"{key}_low"], abs=1e-15)


def test_compare_pairs_evaluation_runs_and_refuses_other_images(finished_run, second_run, scored, tmp_path):
    out = compare_runs([finished_run, second_run], tmp_path / "e.html", bootstrap=Settings(B))
    assert out["rows"][1]["synobjs_auprc_ood_diff"] is not None
    # A run over other images keeps its own interval but is not paired, and a warning says why.
    out = compare_runs([finished_run, scored["base"]], tmp_path / "o.html", bootstrap=Settings(B))
    assert any("not paired" in line and "cover different images" in line for line in out["differences"])
    assert (
        out["rows"][1]["synobjs_auprc_ood_diff"] is None
        and out["rows"][1]["synobjs_auprc_ood_low"] is not None
    )
    # A `score` results file holds one unnamed score: under several names it would only repeat itself.
    with pytest.raises(UserError, match="one unnamed score .* give it one"):
        compare_runs([scored["base"]], tmp_path / "n.html", confidence="msp,rba")
    # No intervals at all with --bootstrap 0: the table is as before.
    plain = compare_runs([finished_run, second_run], tmp_path / "p.html", bootstrap=Settings(0))
    assert not any(k.endswith(("_low", "_diff")) for k in plain["rows"][0])


# ------------------------------------------------------------------------------------------------ regress


def test_regress_significance_separates_noise_from_a_real_drop(scored):
    base, noise, worse = scored["base"], scored["noise"], scored["worse"]
    # Noise dropped AUPRC_OOD a little: the default gate with no tolerance fails it ...
    code, text = run_gate(base, noise, tolerance=0.0)
    assert code == 1 and REGRESSED in text
    # ... and the paired test calls it noise.
    code, text = run_gate(base, noise, tolerance=0.0, significance=0.05, bootstrap=Settings(B))
    assert code == 0, text
    lines = text.splitlines()
    assert "95% interval of delta" in lines[0]
    row = next(line for line in lines if line.startswith("synobjs_auprc_ood"))
    assert row.endswith(NOISE) and "[-" in row
    assert "1 drop(s) beyond the tolerance are noise" in lines[-1]
    # The real drop fails, and says so with its interval.
    code, text = run_gate(base, worse, tolerance=0.0, significance=0.05, bootstrap=Settings(B))
    assert code == 1 and text.splitlines()[-1].startswith("FAILED: 1 of 1")
    row = next(line for line in text.splitlines() if line.startswith("synobjs_auprc_ood"))
    assert row.endswith(REGRESSED)
    # Beyond image sampling but within the tolerance: passes (both conditions are needed to fail).
    code, text = run_gate(base, worse, tolerance=0.05, significance=0.05, bootstrap=Settings(B))
    assert code == 0 and next(line for line in text.splitlines() if line.startswith("synobjs_")).endswith(OK)
    # Every watched key gets its interval; the default output has no interval column.
    code, text = run_gate(base, worse, patterns=["synobjs_*"], significance=0.05, bootstrap=Settings(B))
    assert text.count("[") >= 9
    assert "interval" not in run_gate(base, worse)[1]


def test_regress_update_keeps_the_statistics_beside_the_baseline(scored, tmp_path):
    baseline = tmp_path / "ci" / "baseline.json"
    code, text = run_gate(baseline, scored["base"], update=True)
    assert code == 0 and "per-image statistics ->" in text
    stats = tmp_path / "ci" / "baseline.stats.h5"
    assert stats.is_file() and load_results(baseline)["meta"]["statistics"] == "baseline.stats.h5"
    with h5py.File(stats, "r") as f:
        assert f.attrs["kind"] == "statistics" and "previews" not in f
    code, text = run_gate(baseline, scored["worse"], tolerance=0.0, significance=0.05, bootstrap=Settings(B))
    assert code == 1, text
    # Statistics of another run are refused (their point values differ from the file's official ones).
    with pytest.raises(UserError, match="belong to another run"):
        run_gate(baseline, scored["noise"], significance=0.05, results_stats=scored["root"] / "worse.h5")
    with pytest.raises(UserError, match="belong to another run"):
        run_gate(
            tmp_path / "b2.json", scored["noise"], update=True, results_stats=scored["root"] / "worse.h5"
        )
    # Without statistics the paired test cannot run: one line saying what to pass.
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({k: v for k, v in load_results(scored["base"]).items() if k != "meta"}))
    with pytest.raises(
        UserError, match="--significance needs per-image statistics of the baseline.*--baseline-stats"
    ):
        run_gate(bare, scored["worse"], significance=0.05)
    assert (
        run_gate(bare, scored["worse"], significance=0.05, baseline_stats=scored["root"] / "base.h5")[0] == 1
    )


def test_regress_refuses_an_empty_baseline_and_notes_another_dataset(scored, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"meta": {"gt": "x"}}))
    with pytest.raises(UserError, match="empty.json: the baseline holds no metrics"):
        run_gate(empty, scored["base"])
    other = load_results(scored["base"])
    other["meta"]["gt"] = "/elsewhere/gt"
    other["meta"]["subsets"]["synobjs"]["images"] = 31
    (tmp_path / "other.json").write_text(json.dumps(other))
    code, text = run_gate(tmp_path / "other.json", scored["base"])
    assert code == 0
    assert "note: the baseline comes from another ground truth (/elsewhere/gt)" in text
    assert (
        "note: the baseline comes from another dataset: images per subset differ (synobjs 31 vs 30)" in text
    )
    assert "note" not in run_gate(scored["base"], scored["noise"])[1]


def test_regress_gates_one_score_of_a_multi_score_run(finished_run, second_run):
    results = finished_run / "results.json"
    code, text = run_gate(results, results, significance=0.05, bootstrap=Settings(B))
    assert code == 0 and "msp/synobjs_auprc_ood" in text and "rba/synobjs_auprc_ood" in text
    code, text = run_gate(results, second_run / "results.json", confidence="rba", tolerance=1.0)
    assert code == 0 and "rba/" not in text and "msp" not in text and "synobjs_auprc_ood" in text
    with pytest.raises(UserError, match="no results for confidence 'energy'"):
        run_gate(results, results, confidence="energy")


def test_cli_score_stats_and_regress_significance(scored, tmp_path, monkeypatch, capsys):
    root = scored["root"]

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["eomt-ood", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            cli.main()
            raise SystemExit(0)
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err

    out = tmp_path / "res" / "results.json"
    code, printed, _ = run(
        "score", "--gt", root / "gt", "--submission", root / "sub-worse", "--out", out,
        "--stats", tmp_path / "res" / "stats" / "w.h5", "--bootstrap", B, "--workers", 0,
    )  # fmt: skip
    assert code == 0 and "bravo_index" in printed and "[" in printed
    results = load_results(out)
    assert results["meta"]["statistics"] == "stats/w.h5"
    assert results["meta"]["intervals"] == load_results(scored["worse"])["meta"]["intervals"]
    code, printed, _ = run("regress", "--baseline", scored["base"], "--results", out, "--tolerance", 0,
                           "--significance", 0.05, "--bootstrap", B)  # fmt: skip
    assert code == 1 and REGRESSED in printed
    code, _, err = run("regress", "--baseline", scored["base"], "--results", out, "--significance", 0.7)
    assert code == 2 and "--significance: must lie in (0, 0.5)" in err
    code, _, err = run("score", "--gt", root / "gt", "--submission", root / "sub-base", "--out", out,
                       "--bootstrap", 10)  # fmt: skip
    assert code == 2 and "--bootstrap: 10 replicates are too few" in err
