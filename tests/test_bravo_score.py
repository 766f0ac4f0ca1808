"""`score_submission` / `eomt-ood score` against an independent transcription of the official evaluator."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from bravo_oracle import assert_results_equal, official_results
from PIL import Image

from eomt_ood.bravo.fixture import make_fixture
from eomt_ood.bravo.sampling import official_sample_indices, write_sampling_tar
from eomt_ood.bravo.scoring import (
    ImageStatistics,
    Scorer,
    image_statistics,
    score_submission,
    sparse_statistics,
    summarise,
)
from eomt_ood.data.png import write_png
from eomt_ood.errors import UserError


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("bravo") / "fx", seed=0)


@pytest.fixture(scope="module")
def full_results(fixture):
    return score_submission(fixture.gt, fixture.submission, workers=1, warn=None)


def test_fixture_equals_the_official_algorithm(fixture, full_results):
    expected = official_results(fixture.gt, fixture.submission)
    assert_results_equal(full_results, expected)
    assert len(expected) == 62 + 12  # every subset present: the full key set of docs/metrics.md §6
    assert list(full_results)[-1] == "meta"
    meta = full_results["meta"]
    assert meta["pixels"] == "all pixels" and meta["confidence_levels"] == 65536
    assert meta["subsets"]["synobjs"]["images"] == 3
    counts = meta["subsets"]["ACDCfog"]
    assert counts["valid"] + counts["invalid"] + counts["void"] == 2 * 160 * 320


def test_results_are_plain_json_with_bare_nan(full_results):
    text = json.dumps(full_results)
    assert "NaN" in text  # the absent class of the fixture
    back = json.loads(text)
    assert math.isnan(back["ACDCfog_iou_valid"][16])


def _tar(src: Path, dst: Path, mode: str) -> Path:
    with tarfile.open(dst, mode) as tar:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(src).as_posix())
    return dst


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        if key != "meta":
            assert np.array_equal(np.asarray(a[key], float), np.asarray(b[key], float), equal_nan=True), key


def test_tars_and_workers_give_identical_results(fixture, full_results, tmp_path):
    gt_tar = _tar(fixture.gt, tmp_path / "gt.tar", "w")
    sub_tar = _tar(fixture.submission, tmp_path / "sub.tar.gz", "w:gz")
    from_tars = score_submission(gt_tar, sub_tar, workers=2, warn=None)
    _same(from_tars, full_results)
    assert from_tars["meta"]["subsets"] == full_results["meta"]["subsets"]


def test_official_sampling_file_of_small_images_keeps_every_pixel(fixture, full_results):
    sampled = score_submission(fixture.gt, fixture.submission, samples=fixture.samples, workers=1, warn=None)
    _same(sampled, full_results)
    assert sampled["meta"]["pixels"] == "official sampling"


def test_samples_restrict_the_histograms_but_not_miou(fixture, full_results, tmp_path):
    samples = {}
    for _, base in fixture.images:
        label_suffix = (
            "_gt.png" if "synobjs" in base else "_labels_semantic_fake.png" if "SMIYC" in base else None
        )
        label_suffix = label_suffix or "_gt_labelTrainIds.png"
        with Image.open(fixture.gt / (base + label_suffix)) as img:
            label = np.array(img)
        samples[base] = official_sample_indices(label != 255, samples_per_image=5000, seed=7)
    write_sampling_tar(tmp_path / "s.tar", samples.items())
    ours = score_submission(fixture.gt, fixture.submission, samples=tmp_path / "s.tar", workers=1, warn=None)
    expected = official_results(fixture.gt, fixture.submission, samples=samples)
    assert_results_equal(ours, expected)
    assert ours["ACDCfog_miou_valid"] == full_results["ACDCfog_miou_valid"]  # all V pixels
    assert ours["ACDCfog_auroc_valid"] != full_results["ACDCfog_auroc_valid"]  # sampled pixels only
    counts = ours["meta"]["subsets"]["SMIYC"]
    assert counts["sampled_valid"] + counts["sampled_invalid"] == 2 * 5000


def test_subset_selection(fixture):
    ours = score_submission(
        fixture.gt, fixture.submission, subsets=["synobjs", "ACDCfog"], workers=1, warn=None
    )
    expected = official_results(fixture.gt, fixture.submission, subsets=["ACDCfog", "synobjs"])
    assert_results_equal(ours, expected)
    assert list(ours)[-4:] == ["semantic_hmean", "ood_hmean", "bravo_index", "meta"]
    semantic_only = score_submission(
        fixture.gt, fixture.submission, subsets=["synrain"], workers=1, warn=None
    )
    assert math.isnan(semantic_only["ood_hmean"]) and math.isnan(semantic_only["bravo_index"])


# ------------------------------------------------------------------------------ docs/metrics.md §13 by hand


def _write_image(root: Path, base: str, split_suffixes, label, mask, pred, conf):
    label_suffix, mask_suffix, pred_suffix, conf_suffix = split_suffixes
    write_png(root / "gt" / (base + label_suffix), np.asarray(label, np.uint8).reshape(2, -1))
    write_png(root / "gt" / (base + mask_suffix), np.asarray(mask, np.uint8).reshape(2, -1))
    write_png(root / "sub" / (base + pred_suffix), np.asarray(pred, np.uint8).reshape(2, -1))
    write_png(root / "sub" / (base + conf_suffix), np.asarray(conf, np.uint16).reshape(2, -1))


def test_worked_example_of_the_spec(tmp_path):
    # Semantic: 10 V pixels (docs/metrics.md §13), then 2 invalid and 4 void pixels whose pred/conf must not matter.
    levels = [60000, 60000, 50000, 40000, 40000, 30000, 20000, 10000, 5000, 1000]
    right = [1, 0, 1, 1, 1, 0, 1, 0, 1, 0]
    _write_image(
        tmp_path,
        "bravo_ACDC/fog/test/G/G_frame_000001",
        ("_gt_labelTrainIds.png", "_gt_invIds.png", "_rgb_anon_pred.png", "_rgb_anon_conf.png"),
        label=[0] * 12 + [255] * 4,
        mask=[0] * 10 + [7, 1] + [0] * 4,
        pred=[0 if r else 1 for r in right] + [1, 1, 5, 5, 5, 5],
        conf=[*levels, 65535, 0, 65535, 0, 3, 3],
    )
    # OOD: six NV pixels a..f (docs/metrics.md §13) and two void pixels (SMIYC void 255 in both files).
    _write_image(
        tmp_path,
        "bravo_SMIYC/RoadAnomaly21/images/x0000",
        ("_labels_semantic_fake.png", "_labels_semantic.png", "_pred.png", "_conf.png"),
        label=[0] * 6 + [255] * 2,
        mask=[0, 0, 1, 1, 0, 255, 255, 255],
        pred=[0] * 8,
        conf=[65535, 50000, 50000, 20000, 10000, 0, 0, 65535],
    )
    r = score_submission(tmp_path / "gt", tmp_path / "sub", workers=1, warn=None)
    exact = {
        "ACDCfog_miou_valid": Fraction(3, 10),  # IoU road 6/10, sidewalk 0/4 (only predicted)
        "ACDCfog_ece_valid": Fraction(16759, 40960),
        "ACDCfog_auroc_valid": Fraction(31, 48),
        "ACDCfog_auprc_success_valid": Fraction(871, 1260),
        "ACDCfog_auprc_error_valid": Fraction(2, 3),
        "ACDCfog_fpr95_valid": Fraction(3, 4),
        "SMIYC_auroc_ood": Fraction(13, 18),
        "SMIYC_auprc_ood": Fraction(34, 45),
        "SMIYC_fpr95_ood": Fraction(2, 3),
    }
    for key, value in exact.items():
        assert r[key] == pytest.approx(float(value), abs=1e-12), key
    assert r["ACDCfog_iou_valid"][:2] == [0.6, 0.0] and all(math.isnan(v) for v in r["ACDCfog_iou_valid"][2:])

    def hm(values):
        values = [Fraction(v) for v in values]
        return float(len(values) / sum(1 / v for v in values))

    semantic = [
        exact[k] if "_ece_" not in k and "_fpr95_" not in k else 1 - exact[k] for k in list(exact)[:6]
    ]
    ood = [exact["SMIYC_auroc_ood"], exact["SMIYC_auprc_ood"], 1 - exact["SMIYC_fpr95_ood"]]
    assert r["ACDCfog_hmean"] == pytest.approx(hm(semantic), abs=1e-12)
    assert r["SMIYC_hmean"] == pytest.approx(hm(ood), abs=1e-12)
    assert r["semantic_hmean"] == pytest.approx(hm(semantic), abs=1e-12)
    assert r["ood_hmean"] == pytest.approx(hm(ood), abs=1e-12)
    assert r["bravo_index"] == pytest.approx(hm([hm(semantic), hm(ood)]), abs=1e-12)
    assert r["meta"]["subsets"]["ACDCfog"] == {"images": 1, "valid": 10, "invalid": 2, "void": 4}


def test_image_statistics_counts():
    label = np.array([[0, 1, 255], [2, 2, 0]], np.uint8)
    mask = np.array([[0, 0, 0], [1, 0, 0]], bool)
    pred = np.array([[0, 2, 3], [4, 2, 0]], np.uint8)
    conf = np.array([[10, 10, 99], [5, 65535, 0]], np.uint16)
    s = image_statistics(label, mask, pred, conf)
    assert isinstance(s, ImageStatistics)
    assert (s.valid, s.invalid, s.void) == (4, 1, 1)
    assert s.cm[0, 0] == 2 and s.cm[1, 2] == 1 and s.cm[2, 2] == 1 and s.cm.sum() == 4
    assert s.correct[10] == 1 and s.correct[65535] == 1 and s.correct[0] == 1 and s.correct.sum() == 3
    assert s.wrong[10] == 1 and s.wrong.sum() == 1
    assert s.ood_pos[5] == 1 and s.ood_pos.sum() == 1
    np.testing.assert_array_equal(s.ood_neg, s.correct + s.wrong)
    sampled = image_statistics(label, mask, pred, conf, sample_idx=np.array([1, 3, 5]))
    assert sampled.cm.sum() == 4  # the confusion matrix keeps every V pixel
    assert (sampled.wrong.sum(), sampled.correct.sum(), sampled.ood_pos.sum()) == (1, 1, 1)
    with pytest.raises(UserError, match="void"):
        image_statistics(label, mask, pred, conf, sample_idx=np.array([2]), sample_name="s.bin")


@pytest.mark.parametrize("noise", [0.0, 0.01, 0.5])
@pytest.mark.parametrize("mask_dtype", [np.uint8, bool, np.int32])
def test_confusion_matrix_and_histograms_equal_a_per_pixel_oracle(noise, mask_dtype):
    # Region-shaped maps and noisy ones, with the mask in each dtype a caller may hand over (PNG reads give
    # uint8 or bool): the compiled counts must equal scikit-learn's matrix and a plain per-pixel histogram.
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(int(noise * 100))
    label = rng.integers(0, 19, size=(12, 24)).repeat(16, 0).repeat(16, 1).astype(np.uint8)
    label[:, 100:120] = 255
    pred = label.copy()
    pred[label == 255] = rng.integers(0, 19)
    flip = rng.random(label.shape) < noise
    pred[flip] = rng.integers(0, 19, size=int(flip.sum()))
    mask = np.zeros(label.shape, np.uint8)
    mask[30:60, 40:150] = 7  # invalid, partly over void
    mask = mask.astype(mask_dtype)
    conf = rng.integers(0, 65536, size=label.shape).astype(np.uint16)
    s = image_statistics(label, mask, pred, conf)

    valid = (label != 255) & (mask == 0)
    expected = confusion_matrix(label[valid], pred[valid], labels=np.arange(19))
    np.testing.assert_array_equal(s.cm, expected)
    right = valid & (label == pred)
    np.testing.assert_array_equal(s.correct, np.bincount(conf[right], minlength=65536))
    np.testing.assert_array_equal(s.wrong, np.bincount(conf[valid & ~right], minlength=65536))
    np.testing.assert_array_equal(s.ood_pos, np.bincount(conf[(mask != 0) & (label != 255)], minlength=65536))
    assert (s.valid, s.invalid, s.void) == (
        valid.sum(),
        ((mask != 0) & (label != 255)).sum(),
        (label == 255).sum(),
    )

    # A sample (every third non-void pixel): histograms of the sampled pixels, the matrix of every V pixel.
    sample = np.flatnonzero(label.ravel() != 255)[::3]
    sampled = image_statistics(label, mask, pred, conf, sample_idx=sample)
    np.testing.assert_array_equal(sampled.cm, expected)
    for got, where in (
        (sampled.correct, right),
        (sampled.wrong, valid & ~right),
        (sampled.ood_pos, mask != 0),
    ):
        np.testing.assert_array_equal(
            got, np.bincount(conf.ravel()[sample][where.ravel()[sample]], minlength=65536)
        )

    # The sparse form (what workers send and records keep) against the same oracle: the non-empty levels only,
    # the columns correct, wrong, ood_pos; a scorer summing two images' sparse rows doubles every count.
    oracle = np.stack([s.correct, s.wrong, s.ood_pos], axis=1)
    sparse = sparse_statistics(label, mask, pred, [conf])[0]
    np.testing.assert_array_equal(sparse.levels, np.flatnonzero(oracle.any(axis=1)))
    np.testing.assert_array_equal(sparse.counts, oracle[sparse.levels.astype(np.intp)])
    assert sparse.scored() == (valid.sum(), ((mask != 0) & (label != 255)).sum())
    scorer = Scorer()
    scorer.add("synobjs", sparse)
    scorer.add("synobjs", sparse)
    totals = scorer.subsets["synobjs"].totals
    np.testing.assert_array_equal(totals.cm, 2 * expected)
    for got, want in zip((totals.correct, totals.wrong, totals.ood_pos), oracle.T, strict=True):
        np.testing.assert_array_equal(got, 2 * want)
    assert (totals.valid, totals.scored_valid) == (2 * valid.sum(), 2 * valid.sum())

    # Several maps at once (the first counted in the categorising pass, the others after it; with a sample,
    # all after it) give each map what it gives alone.
    other = conf[::-1].copy()
    for sample_idx in (None, sample):
        both = sparse_statistics(label, mask, pred, [other, conf], sample_idx)
        for got, alone in zip(both, (other, conf), strict=True):
            want = sparse_statistics(label, mask, pred, [alone], sample_idx)[0]
            np.testing.assert_array_equal(got.levels, want.levels)
            np.testing.assert_array_equal(got.counts, want.counts)
            np.testing.assert_array_equal(got.cm, want.cm)


def test_every_bad_label_id_is_named_whatever_covers_it():
    # Ids outside 0..18 and 255 on valid pixels, on invalid ones and in the last pixels are all found; the
    # message lists them in order, as a plain count of the label's values would. With a bad prediction as
    # well, the label's error still comes first.
    rng = np.random.default_rng(5)
    label = rng.integers(0, 19, size=(64, 80)).astype(np.uint8)
    label[:, 70:] = 255
    mask = np.zeros(label.shape, bool)
    mask[40:, :] = True
    pred = rng.integers(0, 19, size=label.shape).astype(np.uint8)
    conf = np.zeros(label.shape, np.uint16)
    label[50, 3] = 254  # invalid
    label[2, 7] = 19  # valid
    label[63, 60] = 77  # invalid, near the end
    bad = label[(label > 18) & (label < 255)]
    expected = ", ".join(str(i) for i in np.unique(bad))
    assert expected == "19, 77, 254"
    with pytest.raises(UserError, match=f"^gt.png: GT label holds class id\\(s\\) {expected} outside"):
        image_statistics(label, mask, pred, conf, label_name="gt.png")
    pred[0, 0] = 19
    with pytest.raises(UserError, match=f"^gt.png: GT label holds class id\\(s\\) {expected} outside"):
        image_statistics(label, mask, pred, conf, label_name="gt.png")
    label[(label > 18) & (label < 255)] = 0
    with pytest.raises(UserError, match="^p.png: prediction holds class id\\(s\\) 19;"):
        image_statistics(label, mask, pred, conf, pred_name="p.png")


def test_summarise_rules():
    metrics = {
        "A_x_valid": 0.5,
        "A_iou_valid": [0.1, 0.2],
        "A_ece_valid": 0.0,
        "B_y_ood": 0.5,
        "B_fpr95_ood": 1.0,
    }
    out = summarise(metrics, subsets=["A", "B"])
    assert out["A_hmean"] == pytest.approx(2 / 3)  # hmean(0.5, 1 - 0)
    assert out["B_hmean"] == 0.0  # 1 - FPR95 of 1 is 0
    assert out["bravo_index"] == 0.0
    assert math.isnan(summarise({"A_x_valid": math.nan}, subsets=["A"])["semantic_hmean"])


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture
def work(fixture, tmp_path):
    shutil.copytree(fixture.gt, tmp_path / "gt")
    shutil.copytree(fixture.submission, tmp_path / "sub")
    return tmp_path


BEAR = "bravo_synobjs/polar bear/4"
FOG = "bravo_ACDC/fog/test/GOPR0475/GOPR0475_frame_000247"


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(array)
    (img.convert(mode) if mode else img).save(buf, format="PNG")
    return buf.getvalue()


def _rewrite(path: Path, fn) -> None:
    with Image.open(path) as img:
        array = np.array(img)
    out = fn(array)
    if isinstance(out, bytes):
        path.write_bytes(out)
    else:
        write_png(path, out)


def _set_pixel(value):
    def fn(a):
        a = a.copy()
        a[40, 40] = value
        return a

    return fn


def _all_labels_match(root: Path):
    # Every prediction of ACDCfog equals its label where the label is not void: no wrong valid pixel.
    for label_path in sorted((root / "gt/bravo_ACDC/fog").rglob("*_gt_labelTrainIds.png")):
        base = label_path.relative_to(root / "gt").as_posix()[: -len("_gt_labelTrainIds.png")]
        with Image.open(label_path) as img:
            label = np.array(img)
        write_png(
            root / "sub" / (base + "_rgb_anon_pred.png"), np.where(label == 255, 0, label).astype(np.uint8)
        )


def _no_invalid(root: Path):
    for mask_path in (root / "gt/bravo_synobjs").rglob("*_mask.png"):
        write_png(mask_path, np.zeros((160, 320), np.uint8))


BAD_INPUTS = [
    ("missing pred", "synobjs", lambda r: (r / f"sub/{BEAR}_pred.png").unlink(), f"{BEAR}_pred.png: missing"),
    ("missing conf", "synobjs", lambda r: (r / f"sub/{BEAR}_conf.png").unlink(), f"{BEAR}_conf.png: missing"),
    (
        "missing mask",
        "synobjs",
        lambda r: (r / f"gt/{BEAR}_mask.png").unlink(),
        f"{BEAR}_mask.png: mask file missing",
    ),
    (
        "corrupt png",
        "synobjs",
        lambda r: _rewrite(
            r / f"sub/{BEAR}_conf.png", lambda a: (r / f"sub/{BEAR}_conf.png").read_bytes()[:200]
        ),
        f"{BEAR}_conf.png: corrupt PNG",
    ),
    (
        "8-bit conf",
        "synobjs",
        lambda r: _rewrite(r / f"sub/{BEAR}_conf.png", lambda a: (a >> 8).astype(np.uint8)),
        f"{BEAR}_conf.png: .*16-bit grayscale PNG, got 8-bit grayscale",
    ),
    (
        "rgb pred",
        "synobjs",
        lambda r: _rewrite(r / f"sub/{BEAR}_pred.png", lambda a: _png(np.stack([a] * 3, -1))),
        f"{BEAR}_pred.png: .*got 8-bit RGB",
    ),
    (
        "palette pred",
        "synobjs",
        lambda r: _rewrite(r / f"sub/{BEAR}_pred.png", lambda a: _png(a, mode="P")),
        f"{BEAR}_pred.png: .*got 8-bit palette",
    ),
    (
        "pred size",
        "synobjs",
        lambda r: _rewrite(r / f"sub/{BEAR}_pred.png", lambda a: a[:, :-1].copy()),
        f"{BEAR}_pred.png: size 319x160 differs from the GT label {BEAR}_gt.png",
    ),
    (
        "conf size",
        "synobjs",
        lambda r: _rewrite(r / f"sub/{BEAR}_conf.png", lambda a: a[:-1].copy()),
        f"{BEAR}_conf.png: size 320x159 differs",
    ),
    (
        "mask size",
        "synobjs",
        lambda r: _rewrite(r / f"gt/{BEAR}_mask.png", lambda a: a[:-2].copy()),
        f"{BEAR}_mask.png: size 320x158 differs",
    ),
    (
        "pred id 19",
        "synobjs",
        lambda r: _rewrite(r / f"sub/{BEAR}_pred.png", _set_pixel(19)),
        f"{BEAR}_pred.png: .*19",
    ),
    (
        "label 19",
        "ACDCfog",
        lambda r: _rewrite(r / f"gt/{FOG}_gt_labelTrainIds.png", _set_pixel(19)),
        f"{FOG}.*19",
    ),
    (
        "label 200",
        "ACDCfog",
        lambda r: _rewrite(r / f"gt/{FOG}_gt_labelTrainIds.png", _set_pixel(200)),
        "200",
    ),
    ("no invalid", "synobjs", _no_invalid, "subset synobjs: no invalid"),
    ("no wrong", "ACDCfog", _all_labels_match, "subset ACDCfog: no wrongly classified valid pixel"),
    (
        "unknown subset",
        "bogus",
        lambda r: None,
        "--subsets: unknown subset 'bogus'; valid names: ACDCfog, ACDCrain",
    ),
    (
        "empty subset",
        "synflare",
        lambda r: shutil.rmtree(r / "gt/bravo_synflare"),
        "subset synflare: requested with --subsets but the ground truth .* has no images",
    ),
]


@pytest.mark.parametrize(("case", "subset", "mutate", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_user_error(work, case, subset, mutate, message):
    mutate(work)
    with pytest.raises(UserError, match=message) as info:
        score_submission(work / "gt", work / "sub", subsets=[subset], workers=1, warn=None)
    assert "\n" not in str(info.value)


def test_bad_input_in_a_worker_process(work):
    (work / f"sub/{BEAR}_conf.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.raises(UserError, match=f"{BEAR}_conf.png"):
        score_submission(work / "gt", work / "sub", subsets=["synobjs"], workers=2, warn=None)


def test_bad_samples(work, fixture, tmp_path):
    with Image.open(work / f"gt/{BEAR}_gt.png") as img:
        label = np.array(img)
    void_pixel = int(np.flatnonzero(label.ravel() == 255)[0])
    bases = [base for subset, base in fixture.images if subset == "synobjs"]
    write_sampling_tar(
        tmp_path / "void.tar", [(b, np.array([0, void_pixel]) if b == BEAR else np.array([5])) for b in bases]
    )
    with pytest.raises(UserError, match=f"{BEAR}_samples.bin: the sample contains void pixels"):
        score_submission(
            work / "gt",
            work / "sub",
            subsets=["synobjs"],
            samples=tmp_path / "void.tar",
            workers=1,
            warn=None,
        )
    write_sampling_tar(tmp_path / "short.tar", [(b, np.array([5])) for b in bases if b != BEAR])
    with pytest.raises(UserError, match=f"{BEAR}_samples.bin: missing from the sampling file"):
        score_submission(
            work / "gt",
            work / "sub",
            subsets=["synobjs"],
            samples=tmp_path / "short.tar",
            workers=1,
            warn=None,
        )


def test_unmatched_files_are_warnings(work):
    (work / "sub/bravo_synobjs/armchair/1_extra.png").write_bytes(b"x")
    (work / "gt/README.txt").write_text("hello")
    (work / f"gt/{FOG}_gt_invIds.png").unlink()  # a broken subset that is not evaluated is no error
    warnings: list[str] = []
    score_submission(work / "gt", work / "sub", subsets=["synobjs"], workers=1, warn=warnings.append)
    assert len(warnings) == 2
    assert "README.txt" in warnings[0] and "1_extra.png" in warnings[1]


# ------------------------------------------------------------------------------------------------ CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eomt_ood.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_bad_input_is_one_line_and_exit_code_2(work):
    (work / f"sub/{BEAR}_pred.png").unlink()
    result = _cli(
        "score", "--gt", str(work / "gt"), "--submission", str(work / "sub"), "--out", str(work / "r.json")
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{BEAR}_pred.png" in lines[0]
    assert "Traceback" not in result.stderr and not (work / "r.json").exists()
    bad = _cli(
        "score",
        "--gt",
        str(work / "gt"),
        "--submission",
        str(work / "sub"),
        "--out",
        "x.json",
        "--subsets",
        "nope",
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "valid names" in bad.stderr


def test_cli_writes_the_results_file(fixture, full_results, tmp_path):
    # In-process (typer's runner): a subprocess would spend most of its time importing torch for the metrics.
    from typer.testing import CliRunner

    from eomt_ood.cli import app

    out = tmp_path / "results.json"
    result = CliRunner().invoke(
        app,
        ["score", "--gt", str(fixture.gt), "--submission", str(fixture.submission), "--out", str(out),
         "--subsets", "ACDCfog,synobjs", "--workers", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bravo_index" in result.output
    text = out.read_text()
    assert "NaN" in text
    written = json.loads(text)
    expected = {k: v for k, v in full_results.items() if k.startswith(("ACDCfog_", "synobjs_"))}
    for key, value in expected.items():
        assert np.array_equal(np.asarray(written[key], float), np.asarray(value, float), equal_nan=True), key
    assert list(written)[-1] == "meta" and written["meta"]["subsets"].keys() == {"ACDCfog", "synobjs"}
