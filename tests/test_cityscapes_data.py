"""Cityscapes labels and the `CityscapesSemantic` dataset (extracted folders and official zips)."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import labels as cs_labels
from torchvision.datasets import Cityscapes as TorchvisionCityscapes

from eomt_ood.data.cityscapes import (
    CityscapesSemantic,
    collate_batch,
    collate_lists,
    masks_from_train_ids,
    semantic_target,
)
from eomt_ood.data.labels import (
    IGNORE,
    LABEL_ID_COLORS,
    LABEL_TO_TRAIN,
    NUM_CLASSES,
    TRAIN_ID_COLORS,
    TRAIN_ID_NAMES,
    TRAIN_TO_LABEL,
    colorize_train_ids,
    label_ids_to_train_ids,
)
from eomt_ood.data.png import read_png, write_png
from eomt_ood.errors import UserError

# docs/training.md §2, typed in by hand: labelId -> trainId for the 19 evaluated classes.
DOC_MAPPING = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
}
DOC_MAPPING |= {27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


# ----------------------------------------------------------------------------------------------- labels


def test_lut_matches_cityscapesscripts_table_for_every_label_id():
    by_id = {label.id: label for label in cs_labels}
    for label_id in range(256):
        label = by_id.get(label_id)
        expected = IGNORE if label is None or label.ignoreInEval else label.trainId
        assert LABEL_TO_TRAIN[label_id] == expected, label_id
    assert LABEL_TO_TRAIN.dtype == np.uint8 and LABEL_TO_TRAIN.shape == (256,)


def test_lut_matches_the_hand_written_mapping_in_the_docs():
    for label_id in range(256):
        assert LABEL_TO_TRAIN[label_id] == DOC_MAPPING.get(label_id, IGNORE), label_id
    for label_id, train_id in DOC_MAPPING.items():
        assert TRAIN_TO_LABEL[train_id] == label_id
    assert TRAIN_TO_LABEL[IGNORE] == 0


def test_names_and_colours_match_torchvision_table():
    # torchvision keeps its own copy of the table: an independent oracle for names and colours.
    evaluated = sorted(
        (c for c in TorchvisionCityscapes.classes if not c.ignore_in_eval), key=lambda c: c.train_id
    )
    assert NUM_CLASSES == 19 == len(evaluated) == len(TRAIN_ID_NAMES)
    assert TRAIN_ID_NAMES == tuple(c.name for c in evaluated)
    assert TRAIN_ID_NAMES[0] == "road" and TRAIN_ID_NAMES[10] == "sky" and TRAIN_ID_NAMES[18] == "bicycle"
    assert TRAIN_ID_COLORS.shape == (19, 3) and TRAIN_ID_COLORS.dtype == np.uint8
    np.testing.assert_array_equal(TRAIN_ID_COLORS, np.array([c.color for c in evaluated], dtype=np.uint8))
    for c in TorchvisionCityscapes.classes:
        if c.id >= 0:
            assert tuple(LABEL_ID_COLORS[c.id]) == c.color


def test_label_ids_to_train_ids_and_colorize():
    ids = np.array([[7, 26, 1], [0, 33, 200]], dtype=np.uint8)
    np.testing.assert_array_equal(label_ids_to_train_ids(ids), [[0, 13, 255], [255, 18, 255]])
    wide = np.array([[-1, 7, 300]], dtype=np.int32)
    np.testing.assert_array_equal(label_ids_to_train_ids(wide), [[255, 0, 255]])
    rgb = colorize_train_ids(np.array([[0, 255]], dtype=np.uint8), ignore_color=(1, 2, 3))
    np.testing.assert_array_equal(rgb, [[[128, 64, 128], [1, 2, 3]]])


# ----------------------------------------------------------------------------------------------- dataset


def _write_sample(root, split, city, index, label_ids=None, train_ids=None, seed=0):
    """Writes an image and its label PNG(s) in the Cityscapes layout; returns (image (H,W,3), trainIds)."""
    stem = f"{city}_{index:06d}_000019"
    ref = label_ids if label_ids is not None else train_ids
    image = np.random.default_rng(seed).integers(0, 256, (*ref.shape, 3), dtype=np.uint8)
    write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
    if label_ids is not None:
        write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids)
    if train_ids is not None:
        write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", train_ids)
    if label_ids is not None:
        expected = LABEL_TO_TRAIN[label_ids]
    else:
        expected = np.where(train_ids < NUM_CLASSES, train_ids, IGNORE).astype(np.uint8)
    return image, expected


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """5 train images (2 of them to be skipped) and 1 val image, at 6 x 8 pixels."""
    root = tmp_path_factory.mktemp("cityscapes")
    kept = {}
    road_car_plate = np.full(
        (6, 8), 7, dtype=np.uint8
    )  # road, a car, ego vehicle (1) and an unknown id (200)
    road_car_plate[2:4, 1:5] = 26
    road_car_plate[5, :] = 1
    road_car_plate[0, 0] = 200
    kept["bochum_000002"] = _write_sample(root, "train", "bochum", 2, label_ids=road_car_plate, seed=1)
    # constant label (all sky) and all-ignored label (static + ego vehicle) are skipped
    _write_sample(root, "train", "bochum", 1, label_ids=np.full((6, 8), 23, np.uint8), seed=2)
    _write_sample(root, "train", "aachen", 7, label_ids=np.where(np.eye(6, 8) > 0, 4, 1).astype(np.uint8))
    # only labelTrainIds: values >= 19 other than 255 are ignored too
    sky_person = np.full((6, 8), 10, dtype=np.uint8)
    sky_person[3:, 2] = 11
    sky_person[0, :3] = 255
    sky_person[1, 0] = 40
    kept["aachen_000003"] = _write_sample(root, "train", "aachen", 3, train_ids=sky_person, seed=3)
    # both PNGs present: labelIds wins (the trainIds PNG is deliberately wrong)
    both = np.full((6, 8), 8, dtype=np.uint8)
    both[:, 4:] = 21
    kept["aachen_000001"] = _write_sample(root, "train", "aachen", 1, label_ids=both, seed=4)
    write_png(
        root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelTrainIds.png", np.zeros((6, 8), np.uint8)
    )
    _write_sample(root, "val", "zurich", 0, label_ids=road_car_plate, seed=5)
    return root, kept


def _zip_tree(folder, zip_path, top):
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr(f"{top}/README", "not an image")
        for path in sorted((folder / top).rglob("*.png")):
            zf.write(path, path.relative_to(folder).as_posix())


@pytest.fixture(scope="module")
def tiny_zip_root(tiny_root, tmp_path_factory):
    folder, _ = tiny_root
    root = tmp_path_factory.mktemp("cityscapes_zips")
    _zip_tree(folder, root / "leftImg8bit_trainvaltest.zip", "leftImg8bit")
    _zip_tree(folder, root / "gtFine_trainvaltest.zip", "gtFine")
    return root


def test_dataset_skips_constant_and_all_ignored_labels_and_sorts(tiny_root):
    root, _ = tiny_root
    ds = CityscapesSemantic(root, "train")
    assert [s.stem for s in ds.samples] == [
        "aachen_000001_000019",
        "aachen_000003_000019",
        "bochum_000002_000019",
    ]
    assert len(ds) == 3
    assert len(CityscapesSemantic(root, "train", check_labels=False)) == 5
    assert len(CityscapesSemantic(root, "val")) == 1


def test_dataset_targets_one_mask_per_present_class(tiny_root):
    root, kept = tiny_root
    ds = CityscapesSemantic(root, "train")
    for i, sample in enumerate(ds.samples):
        image_np, train_ids = kept[sample.stem[:13]]
        image, target = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 6, 8)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), image_np)
        masks, labels = target["masks"], target["labels"]
        assert masks.dtype == torch.bool and labels.dtype == torch.int64
        present = sorted(int(v) for v in np.unique(train_ids) if v != IGNORE)
        assert labels.tolist() == present
        for mask, label in zip(masks, labels, strict=True):
            np.testing.assert_array_equal(mask.numpy(), train_ids == int(label))
        # ignored pixels are in no mask, every other pixel in exactly one
        np.testing.assert_array_equal(masks.sum(0).numpy(), (train_ids != IGNORE).astype(int))
        np.testing.assert_array_equal(semantic_target(target, (6, 8)).numpy(), train_ids)
    # exact values of the first sample (labelIds 8 / 21 -> sidewalk 1 / vegetation 8, the bad trainIds PNG unused)
    assert ds[0][1]["labels"].tolist() == [1, 8]
    assert ds[2][1]["labels"].tolist() == [0, 13]


def test_dataset_reads_official_zips_identically(tiny_root, tiny_zip_root):
    folder_ds = CityscapesSemantic(tiny_root[0], "train")
    zip_ds = CityscapesSemantic(tiny_zip_root, "train")
    assert zip_ds.zip_mode and not folder_ds.zip_mode
    assert [s.stem for s in zip_ds.samples] == [s.stem for s in folder_ds.samples]
    for i in range(len(folder_ds)):
        (a_img, a_t), (b_img, b_t) = folder_ds[i], zip_ds[i]
        assert torch.equal(a_img, b_img) and torch.equal(a_t["masks"], b_t["masks"])
        assert torch.equal(a_t["labels"], b_t["labels"])
    # forked and spawned-style (pickled) workers open their own zip handles
    clone = pickle.loads(pickle.dumps(zip_ds))
    assert torch.equal(clone[1][0], folder_ds[1][0])
    loader = torch.utils.data.DataLoader(zip_ds, batch_size=2, num_workers=2, collate_fn=collate_lists)
    images = [img for batch_images, _ in loader for img in batch_images]
    assert all(torch.equal(a, folder_ds[i][0]) for i, a in enumerate(images))


def test_dataset_transform_and_collate(tiny_root):
    seen = []

    def transform(image, target):
        seen.append(image.shape)
        return image[:, :4, :4], {k: v[..., :4, :4] if k == "masks" else v for k, v in target.items()}

    ds = CityscapesSemantic(tiny_root[0], "train", transform=transform)
    images, targets = collate_batch([ds[0], ds[1]])
    assert images.shape == (2, 3, 4, 4) and images.dtype == torch.uint8 and len(seen) == 2
    assert [t["masks"].shape[1:] for t in targets] == [(4, 4), (4, 4)]
    with pytest.raises(ValueError, match="equal image sizes"):
        collate_batch([(torch.zeros(3, 2, 2), {}), (torch.zeros(3, 2, 3), {})])
    images, targets = collate_lists([(torch.zeros(3, 2, 2), {"a": 1}), (torch.zeros(3, 2, 3), {"a": 2})])
    assert [i.shape[-1] for i in images] == [2, 3] and targets == [{"a": 1}, {"a": 2}]


def test_masks_from_train_ids_and_semantic_target_with_no_masks():
    target = masks_from_train_ids(np.array([[255, 3], [3, 18]], dtype=np.uint8))
    assert target["labels"].tolist() == [3, 18]
    assert target["masks"].tolist() == [[[False, True], [True, False]], [[False, False], [False, True]]]
    empty = {"masks": torch.zeros(0, 2, 3, dtype=torch.bool), "labels": torch.zeros(0, dtype=torch.int64)}
    assert torch.equal(semantic_target(empty, (2, 3)), torch.full((2, 3), 255, dtype=torch.uint8))


def test_dataset_user_errors(tmp_path, tiny_root):
    with pytest.raises(UserError, match=r"leftImg8bit/train/<city>/.*gtFine_trainvaltest\.zip"):
        CityscapesSemantic(tmp_path, "train")
    with pytest.raises(UserError, match="split 'test'"):
        CityscapesSemantic(tiny_root[0], "test")
    # an image without its label names the label it expected
    root = tmp_path / "broken"
    (root / "gtFine/train/x").mkdir(parents=True)
    write_png(root / "leftImg8bit/train/x/x_000000_000000_leftImg8bit.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(UserError, match="x_000000_000000_gtFine_labelIds.png"):
        CityscapesSemantic(root, "train")


def test_dataset_on_generated_streets_from_folder_and_zips(tmp_path):
    from eomt_ood.data.streets import write_dataset

    write_dataset(tmp_path / "synth", 5, seed=2, size=(48, 96))
    _zip_tree(tmp_path / "synth", tmp_path / "leftImg8bit_trainvaltest.zip", "leftImg8bit")
    _zip_tree(tmp_path / "synth", tmp_path / "gtFine_trainvaltest.zip", "gtFine")
    for split, count in (("train", 4), ("val", 1)):
        folder_ds = CityscapesSemantic(tmp_path / "synth", split)
        zip_ds = CityscapesSemantic(tmp_path, split)
        assert len(folder_ds) == len(zip_ds) == count
        assert [s.image for s in folder_ds.samples] == [s.image for s in zip_ds.samples]
        for i in range(count):
            assert not folder_ds.samples[i].label_is_train_ids  # labelIds preferred over labelTrainIds
            (a_img, a_t), (b_img, b_t) = folder_ds[i], zip_ds[i]
            assert a_img.shape == (3, 48, 96) and torch.equal(a_img, b_img)
            assert torch.equal(a_t["labels"], b_t["labels"]) and torch.equal(a_t["masks"], b_t["masks"])
            stem = folder_ds.samples[i].label[: -len("_gtFine_labelIds.png")]
            train_ids = read_png(tmp_path / "synth" / f"{stem}_gtFine_labelTrainIds.png")
            assert torch.equal(semantic_target(a_t), torch.from_numpy(train_ids.copy()))
