"""Procedural street scenes (`data.streets`) and `eomt-ood make-data cityscapes-synthetic`."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from eomt_ood import cli
from eomt_ood.data.labels import IGNORE, LABEL_TO_TRAIN, TRAIN_ID_NAMES
from eomt_ood.data.png import read_png
from eomt_ood.data.streets import parse_size, render_scene, render_scene_layers, split_counts, write_dataset
from eomt_ood.errors import UserError

SIZE = (96, 192)


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(7)
    return [render_scene_layers(rng, *SIZE) for _ in range(8)]


def test_same_seed_same_scene_and_different_seeds_differ():
    a_rgb, a_ids = render_scene(np.random.default_rng(3), *SIZE)
    b_rgb, b_ids = render_scene(np.random.default_rng(3), *SIZE)
    c_rgb, c_ids = render_scene(np.random.default_rng(4), *SIZE)
    assert a_rgb.shape == (*SIZE, 3) and a_rgb.dtype == np.uint8
    assert a_ids.shape == SIZE and a_ids.dtype == np.uint8
    np.testing.assert_array_equal(a_rgb, b_rgb)
    np.testing.assert_array_equal(a_ids, b_ids)
    assert not np.array_equal(a_rgb, c_rgb) and not np.array_equal(a_ids, c_ids)


def test_key_classes_appear_and_ignore_is_exercised(scenes):
    present = {name: 0 for name in TRAIN_ID_NAMES}
    ignored = 0
    for scene in scenes:
        ids = scene.train_ids
        for train_id in np.unique(ids):
            if train_id != IGNORE:
                present[TRAIN_ID_NAMES[train_id]] += 1
        ignored += int((ids == IGNORE).any())
    key = [
        "road",
        "sidewalk",
        "building",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "car",
        "pole",
        "traffic sign",
    ]
    assert all(present[name] >= 4 for name in key), present
    assert present["traffic light"] + present["fence"] >= 1, present
    assert ignored >= 3  # the ego-vehicle bonnet (labelId 1 -> 255)
    # only classes the generator draws
    assert {n for n, c in present.items() if c} <= set(key) | {"traffic light", "fence"}


def test_scene_layers_are_consistent_with_the_geometry(scenes):
    for scene in scenes:
        label_ids, depth = scene.label_ids, scene.depth
        np.testing.assert_array_equal(scene.train_ids, LABEL_TO_TRAIN[label_ids])
        assert set(np.unique(label_ids)) <= {1, 7, 8, 11, 13, 17, 19, 20, 21, 22, 23, 24, 26}
        rows = np.arange(SIZE[0])[:, None] + 0.5 + np.zeros(SIZE)
        # the ground covers everything below the horizon, so sky only shows above it
        assert rows[label_ids == 23].max() <= scene.horizon + 1
        assert rows[label_ids == 7].min() >= scene.horizon
        assert np.isinf(depth[label_ids == 23]).all() and np.isfinite(depth[label_ids != 23]).all()
        assert (depth[label_ids == 1] == 0).all() and (depth[label_ids != 1] > 0).all()
        # road depth follows z = f / (y - horizon)
        road = label_ids == 7
        np.testing.assert_allclose(depth[road], scene.focal / (rows[road] - scene.horizon), rtol=1e-4)
        # every object instance carries a single label
        for instance in np.unique(scene.instance_ids[scene.instance_ids > 0]):
            assert len(np.unique(label_ids[scene.instance_ids == instance])) == 1


def test_parse_size_and_split_counts():
    assert parse_size("256x512") == (256, 512) and parse_size("64X128") == (64, 128)
    for bad in ("256", "axb", "256x512x3", "-5x10"):
        with pytest.raises(UserError, match="--size"):
            parse_size(bad)
    assert split_counts(10, ("train", "val"), 0.2) == {"train": 8, "val": 2}
    assert split_counts(3, ("train", "val"), 0.1) == {"train": 2, "val": 1}
    assert split_counts(4, ("val",), 0.2) == {"val": 4}
    with pytest.raises(UserError, match="--num-images"):
        split_counts(1, ("train", "val"), 0.2)


def run_make_data(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["eomt-ood", "make-data", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_make_data_writes_the_cityscapes_tree_byte_identically(tmp_path, monkeypatch, capsys):
    args = ["cityscapes-synthetic", "--num-images", 5, "--size", "48x96", "--seed", 3, "--color"]
    code, out, err = run_make_data(monkeypatch, capsys, *args, "--out", tmp_path / "a")
    assert code == 0, err
    assert "4 train, 1 val" in out
    tree = _tree(tmp_path / "a")
    images = sorted(name for name in tree if name.startswith("leftImg8bit/"))
    assert images == [
        "leftImg8bit/train/gridham/gridham_000000_000019_leftImg8bit.png",
        "leftImg8bit/train/gridham/gridham_000003_000019_leftImg8bit.png",
        "leftImg8bit/train/polyburg/polyburg_000001_000019_leftImg8bit.png",
        "leftImg8bit/train/texelton/texelton_000002_000019_leftImg8bit.png",
        "leftImg8bit/val/renderdorf/renderdorf_000000_000019_leftImg8bit.png",
    ]
    assert len(tree) == 5 * 4
    for image in images:
        base = tmp_path / "a" / ("gtFine" + image[len("leftImg8bit") : -len("_leftImg8bit.png")])
        label_ids = read_png(f"{base}_gtFine_labelIds.png")
        train_ids = read_png(f"{base}_gtFine_labelTrainIds.png")
        rgb = read_png(tmp_path / "a" / image)
        assert rgb.shape == (48, 96, 3) and label_ids.shape == train_ids.shape == (48, 96)
        np.testing.assert_array_equal(LABEL_TO_TRAIN[label_ids], train_ids)
        assert read_png(f"{base}_gtFine_color.png").shape == (48, 96, 3)
    # the same command again: the same bytes
    code, _, _ = run_make_data(monkeypatch, capsys, *args, "--out", tmp_path / "b")
    assert code == 0 and _tree(tmp_path / "b") == tree
    # another seed changes the images
    code, _, _ = run_make_data(monkeypatch, capsys, *args[:-3], "--seed", 4, "--out", tmp_path / "c")
    assert code == 0 and _tree(tmp_path / "c").keys() == {k for k in tree if not k.endswith("color.png")}
    assert _tree(tmp_path / "c")[images[0]] != tree[images[0]]


def test_images_do_not_depend_on_the_total_count(tmp_path):
    write_dataset(tmp_path / "few", 3, seed=1, size=(32, 64))
    write_dataset(tmp_path / "many", 6, seed=1, size=(32, 64), splits=("train",))
    name = "leftImg8bit/train/gridham/gridham_000000_000019_leftImg8bit.png"
    assert (tmp_path / "few" / name).read_bytes() == (tmp_path / "many" / name).read_bytes()


def test_cli_make_data_user_errors(tmp_path, monkeypatch, capsys):
    code, _, err = run_make_data(monkeypatch, capsys, "mnist", "--out", tmp_path, "--num-images", 2)
    assert code == 2 and err.startswith("error: make-data mnist: unknown kind") and err.count("\n") == 1
    base = ["cityscapes-synthetic", "--out", tmp_path, "--num-images", 2]
    code, _, err = run_make_data(monkeypatch, capsys, *base, "--size", "big")
    assert code == 2 and "--size" in err
    code, _, err = run_make_data(monkeypatch, capsys, *base, "--splits", "train,holdout")
    assert code == 2 and "--splits" in err
    code, _, err = run_make_data(monkeypatch, capsys, *base, "--size", "8x8")
    assert code == 2 and "16 to 16384" in err


def test_simple_scenes_have_six_classes_and_large_objects(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(5)
    classes: set[int] = set()
    for _ in range(6):
        scene = render_scene_layers(rng, 64, 128, simple=True)
        classes |= set(np.unique(scene.train_ids).tolist())
        # every car and tree covers a decent area: near objects only
        for instance in np.unique(scene.instance_ids[scene.instance_ids > 0]):
            pixels = scene.instance_ids == instance
            if scene.label_ids[pixels][0] in (21, 26):
                assert scene.depth[pixels].max() <= 9.0
    assert classes == {0, 1, 2, 8, 10, 13, IGNORE}
    code, _, err = run_make_data(
        monkeypatch,
        capsys,
        "cityscapes-synthetic",
        "--out",
        tmp_path,
        "--num-images",
        3,
        "--size",
        "32x64",
        "--simple",
    )
    assert code == 0, err
    labels = [read_png(p) for p in sorted(tmp_path.rglob("*_labelTrainIds.png"))]
    assert len(labels) == 3 and set(np.unique(np.concatenate([x.ravel() for x in labels]))) <= {
        0,
        1,
        2,
        8,
        10,
        13,
        255,
    }
