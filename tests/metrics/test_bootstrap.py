"""Bootstrap intervals (`eomt_ood.metrics.bootstrap`) against independent oracles.

- Replicates equal the per-pixel transcription of the official evaluator (tests/bravo_oracle.py: scikit-learn
  curves, per-pixel ECE, SciPy hmean) run on a tree where every drawn image is repeated as often as drawn.
- Coverage: on a clustered generator whose population AUPRC is computed by quadrature, the 95% interval
  covers it in 90-99% of 200 simulated datasets (and a pixel-level bootstrap, which ignores the clustering,
  does not: the check has teeth).
- The paired test fires on a real degradation and stays quiet between two noise seeds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from bravo_oracle import LAYOUT, official_results
from scipy import special

from eomt_ood.bravo.fixture import make_fixture
from eomt_ood.bravo.layout import (
    OOD_SUBSETS,
    SEMANTIC_SUBSETS,
    SUBSETS,
    read_conf,
    read_label,
    read_mask,
    read_pred,
)
from eomt_ood.bravo.scoring import image_statistics
from eomt_ood.metrics import bootstrap as bs
from eomt_ood.metrics.image_stats import ImageSetStatistics, image_set_statistics

TOL = 1e-12


# ------------------------------------------------------------------------------------------------ fixture


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("bootstrap") / "fx", seed=3)


@pytest.fixture(scope="module")
def fixture_sets(fixture):
    """{subset: ImageSetStatistics} of the fixture, images in fixture order, plus their <base> names."""
    per: dict[str, list] = {}
    bases: dict[str, list[str]] = {}
    for subset, base in fixture.images:
        _, label_suffix, mask_suffix, pred_suffix, conf_suffix = LAYOUT[subset]
        label = read_label((fixture.gt / (base + label_suffix)).read_bytes(), "label")
        mask = read_mask((fixture.gt / (base + mask_suffix)).read_bytes(), "mask")
        pred = read_pred((fixture.submission / (base + pred_suffix)).read_bytes(), "pred")
        conf = read_conf((fixture.submission / (base + conf_suffix)).read_bytes(), "conf")
        per.setdefault(subset, []).append(image_statistics(label, mask, pred, conf))
        bases.setdefault(subset, []).append(base)
    sets = {s: ImageSetStatistics.from_images(per[s]) for s in SUBSETS if s in per}
    return sets, bases


def _replicate_tree(fixture, bases: dict[str, list[str]], draws: dict[str, np.ndarray], b: int, root: Path):
    """GT and submission trees where image i of each subset appears draws[subset][b, i] times (symlinks)."""
    for subset, names in bases.items():
        prefix, *suffixes = LAYOUT[subset]
        for i, base in enumerate(names):
            for copy in range(int(draws[subset][b, i])):
                dup = f"{prefix}copy{copy}/{base[len(prefix) :]}"
                for folder, src_root, suffix in zip(
                    ("gt", "gt", "sub", "sub"),
                    (fixture.gt, fixture.gt, fixture.submission, fixture.submission),
                    suffixes,
                    strict=True,
                ):
                    target = root / folder / (dup + suffix)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(src_root / (base + suffix))
    return root / "gt", root / "sub"


def _assert_close(got: float, expected: float, key: str, tol: float = TOL) -> None:
    if math.isnan(expected):
        assert math.isnan(got), key
    else:
        assert abs(got - expected) <= tol, (key, got, expected)


# ------------------------------------------------------------------------------------------------ exactness


ORACLE_SUBSETS = ("ACDCfog", "SMIYC", "synobjs")  # semantic only, OOD only, both
ORACLE_REPLICATES = 2


@pytest.fixture(scope="module")
def oracle(fixture, fixture_sets, tmp_path_factory):
    """Draws for the oracle subsets, and the oracle's results on the fixture and on each replicate tree."""
    sets, bases = fixture_sets
    sets = {s: sets[s] for s in ORACLE_SUBSETS}
    draws = bs.draw_subsets({s: st.n_images for s, st in sets.items()}, ORACLE_REPLICATES, seed=11)
    point = official_results(fixture.gt, fixture.submission, subsets=list(ORACLE_SUBSETS))
    root = tmp_path_factory.mktemp("replicates")
    replicates = []
    for b in range(ORACLE_REPLICATES):
        gt, sub = _replicate_tree(fixture, {s: bases[s] for s in ORACLE_SUBSETS}, draws, b, root / f"r{b}")
        replicates.append(official_results(gt, sub, subsets=list(ORACLE_SUBSETS)))
    return sets, draws, point, replicates


@pytest.mark.parametrize("max_bins", [None, 64])
def test_replicates_equal_a_per_pixel_recomputation_of_the_drawn_images(oracle, max_bins):
    sets, draws, expected_point, expected = oracle
    assert any((d != 1).any() for d in draws.values())  # the draws do repeat and drop images
    reps = bs.bootstrap(sets, SEMANTIC_SUBSETS, OOD_SUBSETS, draws=draws, max_bins=max_bins)
    # Point values: the official ones on the fixture itself, official key order.
    assert list(reps.point) == [k for k in expected_point if not k.endswith("_iou_valid")]
    for key, value in reps.point.items():
        _assert_close(value, expected_point[key], key)
    # 64 coarse bins cannot resolve AUROC / AUPRC exactly; mIoU, ECE and FPR95 (refined) stay exact.
    exact = None if max_bins is None else ("_miou_", "_ece_", "_fpr95_")
    assert all(reps.lossless.values()) == (max_bins is None)
    for b in range(ORACLE_REPLICATES):
        for key, values in reps.values.items():
            if exact is None or any(part in key for part in exact):
                _assert_close(float(values[b]), expected[b][key], f"{key} replicate {b}")


def test_all_ones_replicate_is_the_point_value(fixture_sets):
    sets, _ = fixture_sets
    ones = {s: np.ones((1, st.n_images), dtype=np.int64) for s, st in sets.items()}
    for max_bins in (None, 4096, 100):
        reps = bs.bootstrap(sets, SEMANTIC_SUBSETS, OOD_SUBSETS, draws=ones, max_bins=max_bins)
        for key, values in reps.values.items():
            _assert_close(float(values[0]), reps.point[key], key, tol=1e-15)


def test_coarse_bins_move_interval_bounds_by_less_than_1e_3(fixture_sets):
    sets, _ = fixture_sets
    sets = {s: sets[s] for s in ORACLE_SUBSETS}
    lossless = bs.bootstrap(sets, SEMANTIC_SUBSETS, OOD_SUBSETS, replicates=200, max_bins=None)
    coarse = bs.bootstrap(sets, SEMANTIC_SUBSETS, OOD_SUBSETS, replicates=200, max_bins=1024)
    assert not any(coarse.lossless.values()) and all(lossless.lossless.values())
    full_iv, coarse_iv = bs.percentile_intervals(lossless), bs.percentile_intervals(coarse)
    for key, iv in full_iv.items():
        assert abs(coarse_iv[key].low - iv.low) < 1e-3, key
        assert abs(coarse_iv[key].high - iv.high) < 1e-3, key
        if "_fpr95_" in key:  # refined inside the crossing bin: exact
            np.testing.assert_array_equal(coarse.values[key], lossless.values[key])


def test_coarse_bins_keep_miou_ece_fpr95_exact_when_images_cover_different_levels():
    """Each image uses its own narrow level range, so most coarse bins are empty in most rows (incl. the last)."""
    rng = np.random.default_rng(5)
    n = 12
    dense = np.zeros((3, n, 65536), np.int64)
    for i in range(n):
        low = int(rng.integers(0, 60000))
        for c, size in enumerate((400, 150, 60)):
            np.add.at(dense[c, i], rng.integers(low, low + 3000, size), 1)
    cm = rng.integers(0, 50, (n, 19, 19))
    stats = image_set_statistics(cm, *dense)
    args = ({"synobjs": stats}, ["synobjs"], ["synobjs"])
    lossless = bs.bootstrap(*args, replicates=50, max_bins=None)
    coarse = bs.bootstrap(*args, replicates=50, max_bins=32)
    assert coarse.bins["synobjs"] < 64 and not coarse.lossless["synobjs"]
    for key in ("miou_valid", "ece_valid", "fpr95_valid", "fpr95_ood"):
        np.testing.assert_allclose(
            coarse.values[f"synobjs_{key}"], lossless.values[f"synobjs_{key}"], rtol=0, atol=TOL
        )


def test_a_lazy_mapping_is_read_once_per_subset(fixture_sets):
    sets, _ = fixture_sets

    reads = []

    class Lazy(dict):
        def __getitem__(self, name):
            reads.append(name)
            return super().__getitem__(name)

        def items(self):
            return ((name, self[name]) for name in self)

    lazy = Lazy(sets)
    reps = bs.bootstrap(lazy, SEMANTIC_SUBSETS, OOD_SUBSETS, replicates=5)
    assert reads == list(sets)
    assert list(reps.draws) == list(sets)


# ------------------------------------------------------------------------------------------------ resampling


def test_draws_are_seeded_per_subset_and_sum_to_n():
    a = bs.draw_counts(7, replicates=50, seed=1, stream="synobjs")
    assert a.shape == (50, 7) and a.dtype == np.int64
    assert (a.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(a, bs.draw_counts(7, replicates=50, seed=1, stream="synobjs"))
    assert not np.array_equal(a, bs.draw_counts(7, replicates=50, seed=1, stream="SMIYC"))
    assert not np.array_equal(a, bs.draw_counts(7, replicates=50, seed=2, stream="synobjs"))
    draws = bs.draw_subsets({"SMIYC": 7, "synobjs": 7}, replicates=50, seed=1)
    np.testing.assert_array_equal(draws["synobjs"], a)
    # Uniform multinomial: every image has mean count 1 and variance (1 - 1/n).
    big = bs.draw_counts(5, replicates=20000, seed=0)
    assert np.allclose(big.mean(axis=0), 1.0, atol=0.03)
    assert np.allclose(big.var(axis=0), 1 - 1 / 5, atol=0.03)


def test_paired_runs_share_draws_and_refuse_different_ones(fixture_sets):
    sets, _ = fixture_sets
    a = bs.bootstrap(sets, SEMANTIC_SUBSETS, OOD_SUBSETS, replicates=20, seed=4)
    b = bs.bootstrap(sets, SEMANTIC_SUBSETS, OOD_SUBSETS, replicates=20, seed=4)
    diffs = bs.paired_differences(a, b)
    assert set(diffs) == set(a.values)
    assert all(d.point == 0 and d.low == 0 and d.high == 0 and not d.excludes_zero for d in diffs.values())
    other = bs.bootstrap(sets, SEMANTIC_SUBSETS, OOD_SUBSETS, replicates=20, seed=5)
    with pytest.raises(ValueError, match="different draws"):
        bs.paired_differences(a, other)
    # A run that left subsets out pairs on the keys both have; its summaries differ by the official amount.
    fewer = bs.bootstrap(
        {s: sets[s] for s in ("ACDCfog", "SMIYC")}, SEMANTIC_SUBSETS, OOD_SUBSETS, 20, seed=4
    )
    partial = bs.paired_differences(a, fewer)
    assert set(partial) == set(fewer.values)
    assert partial["ACDCfog_miou_valid"].point == 0 and partial["ACDCfog_miou_valid"].high == 0
    assert partial["bravo_index"].point == a.point["bravo_index"] - fewer.point["bravo_index"] != 0
    alone = bs.bootstrap({"synobjs": sets["synobjs"]}, SEMANTIC_SUBSETS, OOD_SUBSETS, 20, seed=4)
    with pytest.raises(ValueError, match="share no subset"):
        bs.paired_differences(alone, fewer)


# ------------------------------------------------------------------------------------------------ degenerate


def test_degenerate_replicates_are_nan_and_counted():
    """One image holds every OOD pixel: replicates that miss it have no positives -> NaN, never a crash."""
    n, levels = 6, 65536
    rng = np.random.default_rng(1)
    correct = np.zeros((n, levels), np.int64)
    wrong = np.zeros((n, levels), np.int64)
    ood = np.zeros((n, levels), np.int64)
    for i in range(n):
        correct[i, rng.integers(30000, 65536, 50)] += 1
        wrong[i, rng.integers(0, 40000, 20)] += 1
    ood[0, rng.integers(0, 30000, 30)] += 1
    cm = np.zeros((n, 19, 19), np.int64)
    cm[:, 0, 0], cm[:, 0, 1] = correct.sum(1), wrong.sum(1)
    stats = image_set_statistics(cm, correct, wrong, ood)
    reps = bs.bootstrap({"synobjs": stats}, ["synobjs"], ["synobjs"], replicates=200, seed=0)
    missed = reps.draws["synobjs"][:, 0] == 0
    assert 0 < missed.sum() < 200
    degenerate = reps.degenerate()
    for key in ("synobjs_auroc_ood", "synobjs_auprc_ood", "synobjs_fpr95_ood", "ood_hmean", "bravo_index"):
        assert degenerate[key] == missed.sum(), key
        assert np.isnan(reps.values[key][missed]).all() and not np.isnan(reps.values[key][~missed]).any()
    assert degenerate["synobjs_auroc_valid"] == 0
    intervals = bs.percentile_intervals(reps)
    iv = intervals["synobjs_auprc_ood"]
    assert iv.degenerate == missed.sum() and iv.low <= iv.point <= iv.high
    meta = bs.intervals_meta(reps, intervals)
    assert meta["degenerate"]["synobjs_auprc_ood"] == missed.sum() and meta["replicates"] == 200
    assert json.loads(json.dumps(meta))["intervals"]["synobjs_auprc_ood"] == [iv.low, iv.high]
    # A run without OOD subsets: ood_hmean and bravo_index are NaN in every replicate, as officially.
    semantic_only = bs.bootstrap({"synrain": stats}, ["synrain"], [], replicates=10)
    assert (
        math.isnan(semantic_only.point["bravo_index"]) and np.isnan(semantic_only.values["bravo_index"]).all()
    )


# ------------------------------------------------------------------------------------------------ coverage

N_IMAGES, PIXELS, LEVEL_STEP = 120, 300, 256  # levels 0, 256, ..., 65280: 256 distinct scores, many ties
OOD_MEAN, SHIFT_SD, NOISE_SD = 1.2, 0.8, 1.0  # conf in z-units: OOD pixels lower, a per-image shift for all


def _level_probs(mean: np.ndarray) -> np.ndarray:
    """(len(mean), 256) probabilities of each level for a normal(mean, NOISE_SD) score cut at level edges."""
    edges = np.linspace(-4.0, 4.0, 257)[1:-1]
    cdf = special.ndtr((edges[None, :] - mean[:, None]) / NOISE_SD)
    cdf = np.concatenate([np.zeros((mean.size, 1)), cdf, np.ones((mean.size, 1))], axis=1)
    return np.diff(cdf, axis=1)


def _sparse(valid: np.ndarray, ood: np.ndarray) -> ImageSetStatistics:
    """(n, 256) counts of valid (all counted correct) and OOD pixels on the levels 0, 256, ... as one sparse
    set (no 65,536-wide dense rows)."""
    n = valid.shape[0]
    image, index = np.nonzero(valid + ood)
    offsets = np.searchsorted(image, np.arange(n + 1))
    counts = np.stack([valid[image, index], np.zeros(image.size, np.int64), ood[image, index]], axis=1)
    levels = (index * LEVEL_STEP).astype(np.uint16)
    return ImageSetStatistics(np.zeros((n, 19, 19), np.int64), levels, counts.astype(np.int32), offsets)


def _simulate(rng: np.random.Generator, n: int) -> ImageSetStatistics:
    """n images: OOD fraction ~ Beta(2, 18) per image, a per-image conf shift shared by all its pixels."""
    fraction = rng.beta(2.0, 18.0, n)
    shift = rng.normal(0.0, SHIFT_SD, n)
    n_ood = rng.binomial(PIXELS, fraction)
    ood = rng.multinomial(n_ood, _level_probs(shift - OOD_MEAN))
    valid = rng.multinomial(PIXELS - n_ood, _level_probs(shift))
    return _sparse(valid, ood)


def _true_auprc() -> float:
    """Population pooled AUPRC: the expected pooled histograms, integrating the shift by Gauss-Hermite."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    shift = nodes * SHIFT_SD
    weights = weights / weights.sum()
    mean_fraction = 2.0 / 20.0  # E[Beta(2, 18)]; independent of the shift
    ood = mean_fraction * (weights @ _level_probs(shift - OOD_MEAN))
    valid = (1 - mean_fraction) * (weights @ _level_probs(shift))
    # The OOD score is the doubt: reversing the conf order puts low conf first.
    tp, fp = np.cumsum(ood), np.cumsum(valid)
    precision = tp / (tp + fp)
    return float(np.sum(ood / ood.sum() * precision))


def test_coverage_of_the_95_percent_interval():
    truth = _true_auprc()
    rng = np.random.default_rng(2024)
    covered = covered_pixels = 0
    n_sets = 200
    for k in range(n_sets):
        stats = _simulate(rng, N_IMAGES)
        reps = bs.bootstrap({"SMIYC": stats}, [], ["SMIYC"], replicates=400, seed=k)
        iv = bs.percentile_intervals(reps)["SMIYC_auprc_ood"]
        covered += iv.low <= truth <= iv.high
        # Control: a pixel-level (Poisson) bootstrap treats pixels as independent, ignoring the per-image shift.
        table = stats.pooled()[::LEVEL_STEP]
        pooled = np.stack([table[:, 2], table[:, 0]])
        draws = rng.poisson(pooled, size=(400, *pooled.shape)).astype(np.float64)
        tp, fp = np.cumsum(draws[:, 0], axis=1), np.cumsum(draws[:, 1], axis=1)
        auprc = np.sum(draws[:, 0] / tp[:, -1:] * tp / np.maximum(tp + fp, 1), axis=1)
        low, high = np.quantile(auprc, [0.025, 0.975])
        covered_pixels += low <= truth <= high
    print(f"coverage: image bootstrap {covered / n_sets:.3f}, pixel bootstrap {covered_pixels / n_sets:.3f}")
    assert 0.90 <= covered / n_sets <= 0.99, covered
    assert covered_pixels / n_sets < 0.8, covered_pixels


# ------------------------------------------------------------------------------------------------ paired test


def _run(images: list[dict], noise_seed: int, degrade: float = 0.0) -> ImageSetStatistics:
    """Statistics of one run: the shared per-pixel scores plus small test-time noise; `degrade` raises the
    confidence of OOD and wrong pixels (a worse model on the same images)."""
    rng = np.random.default_rng(noise_seed)
    cms, rows = [], {name: [] for name in ("correct", "wrong", "ood_pos")}
    for image in images:
        score = image["score"] + rng.normal(0.0, 0.02, image["score"].shape)
        score = score + degrade * (image["ood"] | ~image["correct"])
        # 1024 distinct levels (every 64th) keep the sweeps short.
        level = np.clip(np.floor(special.expit(score) * 1024), 0, 1023).astype(np.int64) * 64
        valid = ~image["ood"]
        rows["correct"].append(np.bincount(level[valid & image["correct"]], minlength=65536))
        rows["wrong"].append(np.bincount(level[valid & ~image["correct"]], minlength=65536))
        rows["ood_pos"].append(np.bincount(level[image["ood"]], minlength=65536))
        cm = np.zeros((19, 19), np.int64)
        np.add.at(cm, (image["label"][valid], image["pred"][valid]), 1)
        cms.append(cm)
    return image_set_statistics(np.stack(cms), *(np.stack(rows[name]) for name in rows))


def _images(rng: np.random.Generator, n: int = 30, pixels: int = 400) -> list[dict]:
    images = []
    for _ in range(n):
        ood = rng.random(pixels) < rng.beta(2, 20)
        label = rng.integers(0, 5, pixels)
        correct = rng.random(pixels) < rng.uniform(0.7, 0.95)
        pred = np.where(correct, label, (label + 1) % 5)
        score = rng.normal(2.0 + rng.normal(0, 0.5), 1.0, pixels) - 1.5 * ~correct - 2.0 * ood
        images.append({"ood": ood, "label": label, "pred": pred, "correct": correct, "score": score})
    return images


def test_paired_test_fires_on_a_degradation_and_not_on_noise():
    """A small degradation (AUPRC_ood about -0.005, far inside one run's own interval) is found by pairing;
    two noise seeds of the same model are not told apart beyond the 5% chance rate."""
    rng = np.random.default_rng(7)
    keys = ["synobjs_auroc_ood", "synobjs_auprc_ood", "synobjs_auroc_valid", "synobjs_auprc_error_valid"]
    false_alarms = checks = detected = overlapping = 0
    trials = 8
    for t in range(trials):
        images = _images(rng)

        def run(stats, seed=t):
            return bs.bootstrap({"synobjs": stats}, ["synobjs"], ["synobjs"], replicates=300, seed=seed)

        base, noise, worse = run(_run(images, 1)), run(_run(images, 2)), run(_run(images, 3, degrade=0.05))
        quiet = bs.paired_differences(noise, base)
        false_alarms += sum(d.excludes_zero for d in quiet.values())
        checks += len(quiet)
        fired = bs.paired_differences(worse, base)
        detected += all(fired[k].excludes_zero and fired[k].high < 0 for k in keys)
        # Unpaired, the two runs' own intervals overlap: only the paired test can see this drop.
        alone, alone_worse = bs.percentile_intervals(base), bs.percentile_intervals(worse)
        overlapping += all(alone_worse[k].high > alone[k].low for k in keys)
    # Every key of the noise pair (scalars and summaries) at 95%: at most a few chance alarms overall.
    assert false_alarms / checks <= 0.08, (false_alarms, checks)
    assert detected == trials
    assert overlapping == trials
