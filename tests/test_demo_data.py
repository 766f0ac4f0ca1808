"""The bundled demo set: deterministic, in the official layout, every subset with its kind of shift."""

import numpy as np

from eomt_ood.bravo.layout import OOD_SUBSETS, SUBSETS, match_gt
from eomt_ood.bravo.submission import raw_names
from eomt_ood.data.demo import demo_images, object_sources, write_demo


def test_layout_matches_the_official_ground_truth_rules(tmp_path):
    write_demo(tmp_path, seed=1, per_subset=3, size=(64, 128))
    gt_names = [p.relative_to(tmp_path / "gt").as_posix() for p in (tmp_path / "gt").rglob("*.png")]
    by_subset = match_gt(gt_names, warn=lambda m: (_ for _ in ()).throw(AssertionError(m)))
    assert {s: len(v) for s, v in by_subset.items()} == {s: 3 for s in SUBSETS}
    images = {p.relative_to(tmp_path / "images").as_posix() for p in (tmp_path / "images").rglob("*.*")}
    for subset_images in by_subset.values():
        for image in subset_images:
            # The raw prediction name derived from the input image is the one the scorer looks for.
            assert any(raw_names(rel)[0] == image.pred_name for rel in images), image.base
    assert any(name.startswith("bravo_synobjs/coffee cup/") for name in gt_names)
    assert all(rel.endswith(".jpg") for rel in images if rel.startswith("bravo_SMIYC/"))


def test_same_seed_same_images_and_shifts_mark_invalid_pixels():
    first = demo_images(seed=5, per_subset=1, size=(64, 128))
    second = demo_images(seed=5, per_subset=1, size=(64, 128))
    for a, b in zip(first, second, strict=True):
        assert a.image_rel == b.image_rel
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.mask, b.mask)
    by_path = {item.image_rel.split("/")[0] + "/" + item.image_rel.split("/")[1]: item for item in first}
    for key in ("bravo_synobjs", "bravo_SMIYC", "bravo_outofcontext", "bravo_synrain"):
        item = next(v for k, v in by_path.items() if k.startswith(key))
        assert (item.mask[item.label != 255] != 0).any(), key
    assert OOD_SUBSETS == {"SMIYC", "synobjs"}


def test_smiyc_masks_use_255_exactly_on_void():
    for item in demo_images(seed=2, per_subset=2, size=(64, 128)):
        if not item.image_rel.startswith("bravo_SMIYC/"):
            continue
        assert set(np.unique(item.mask)) <= {0, 1, 255}
        np.testing.assert_array_equal(item.mask == 255, item.label == 255)
        assert set(np.unique(item.label)) <= {0, 255}


def test_objects_come_from_real_photographs_with_masks():
    sources = object_sources()
    assert len(sources) >= 5
    for name, (rgb, alpha) in sources.items():
        assert rgb.dtype == np.uint8 and rgb.shape[:2] == alpha.shape and rgb.shape[2] == 3, name
        assert 0.2 < alpha.mean() < 0.95, name  # a real cut-out: neither empty nor the whole photo
        assert rgb[alpha].std() > 10, name  # photographic texture, not a flat colour
