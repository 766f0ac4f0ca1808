"""Cityscapes labels and the `CityscapesSemantic` dataset (extracted folders and official zips)."""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as cs_labels
from torchvision.datasets import Cityscapes as TorchvisionCityscapes

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

# §4.1 of docs/eomt.md, typed in by hand: labelId -> trainId for the 19 evaluated classes.
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
