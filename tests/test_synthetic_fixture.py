"""The synthetic BRAVO fixture: deterministic, in the official layout, and covering the cases the spec names."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eomt_ood.bravo.fixture import make_fixture


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("fx") / "a", seed=0)


def test_same_seed_same_bytes_other_seed_other_bytes(fixture, tmp_path):
    again = make_fixture(tmp_path / "b", seed=0)
    assert _digests(fixture.root) == _digests(again.root)
    other = make_fixture(tmp_path / "c", seed=1)
    a, c = _digests(fixture.root), _digests(other.root)
    assert a.keys() == c.keys() and a != c


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


# Suffixes written out from docs/formats.md §1.2, §2.
SUFFIXES = {
    "ACDC": ("_gt_labelTrainIds.png", "_gt_invIds.png", "_rgb_anon_pred.png", "_rgb_anon_conf.png"),
    "SMIYC": ("_labels_semantic_fake.png", "_labels_semantic.png", "_pred.png", "_conf.png"),
    "synobjs": ("_gt.png", "_mask.png", "_pred.png", "_conf.png"),
    "other": ("_gt_labelTrainIds.png", "_gt_invIds.png", "_leftImg8bit_pred.png", "_leftImg8bit_conf.png"),
}


def _files(base: str) -> dict[str, np.ndarray]:
    split = base.split("/")[0][len("bravo_") :]
    label, mask, pred, conf = SUFFIXES.get(split, SUFFIXES["other"])
    return {"label": label, "mask": mask, "pred": pred, "conf": conf}


def test_layout_and_content(fixture):
    subsets = {subset for subset, _ in fixture.images}
    assert len(subsets) == 9
    bases = [base for _, base in fixture.images]
    assert "bravo_synobjs/polar bear/4" in bases and "bravo_SMIYC/RoadAnomaly21/images/airplane0000" in bases
    expected_files = set()
    for subset, base in fixture.images:
        names = _files(base)
        expected_files |= {f"gt/{base}{names['label']}", f"gt/{base}{names['mask']}"}
        expected_files |= {f"submission/{base}{names['pred']}", f"submission/{base}{names['conf']}"}
        label = _read(fixture.gt / (base + names["label"]))
        mask = _read(fixture.gt / (base + names["mask"]))
        pred = _read(fixture.submission / (base + names["pred"]))
        conf = _read(fixture.submission / (base + names["conf"]))
        assert label.dtype == mask.dtype == pred.dtype == np.uint8 and conf.dtype == np.uint16
        assert label.shape == mask.shape == pred.shape == conf.shape
        nonvoid = label != 255
        valid, invalid = nonvoid & (mask == 0), nonvoid & (mask != 0)
        assert 0 < nonvoid.sum() <= 100_000 and (~nonvoid).any()  # old-format mode uses every pixel
        assert invalid.any() and valid.any()
        right = (pred == label)[valid]
        assert right.any() and (~right).any()
        assert pred.max() <= 18 and set(np.unique(label)) <= set(range(19)) | {255}
        # Ties: many pixels share a level, including the extremes 0 and 65535.
        per_level = np.bincount(conf[valid], minlength=65536)
        assert per_level.max() >= 50 and per_level[65535] > 0 and per_level[0] > 0
        if subset == "SMIYC":
            assert set(np.unique(mask)) == {0, 1, 255}
            assert (
                (mask == 255) & nonvoid
            ).any()  # SMIYC void in the mask = OOD positive (docs/formats.md §1.2)
        if subset in ("SMIYC", "synobjs"):
            # OOD-ness is informative but imperfect: invalid pixels are less confident on average, not always.
            assert conf[invalid].mean() < conf[valid].mean()
            assert conf[invalid].max() > np.median(conf[valid])
    files = {p.relative_to(fixture.root).as_posix() for p in fixture.root.rglob("*") if p.is_file()}
    assert files == expected_files | {"bravo_SAMPLING.tar"}
    with tarfile.open(fixture.samples) as tar:
        assert sorted(tar.getnames()) == sorted(f"{base}_samples.bin" for base in bases)


def test_make_fixture_command(fixture, tmp_path):
    from typer.testing import CliRunner

    from eomt_ood.cli import app

    result = CliRunner().invoke(app, ["make-fixture", "--out", str(tmp_path / "cli"), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "19 images" in result.output
    assert _digests(tmp_path / "cli") == _digests(fixture.root)
