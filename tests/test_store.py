import numpy as np
import pytest

from eomt_ood.errors import UserError
from eomt_ood.store import (
    StoreReader,
    StoreWriter,
    downsample_labels,
    downsample_mean,
    preview_shape,
)


def test_preview_shape_keeps_aspect():
    assert preview_shape(1024, 2048) == (256, 512)
    assert preview_shape(100, 50) == (100, 50)
    assert preview_shape(2000, 10) == (512, 3)


def test_downsample_mean_equals_block_means():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (8, 12)).astype(np.uint16)
    out = downsample_mean(values, (4, 3))
    expected = values.astype(np.float64).reshape(4, 2, 3, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(out, expected)


def test_downsample_labels_picks_block_centres():
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    # 2x2 output: the centre of each 2x2 block rounds to its lower-right pixel (index 1 and 3).
    np.testing.assert_array_equal(downsample_labels(labels, (2, 2)), labels[[1, 3]][:, [1, 3]])
    assert downsample_labels(labels, (4, 4)).tolist() == labels.tolist()


def _maps(rng, h, w):
    pred = rng.integers(0, 19, (h, w), dtype=np.uint8)
    confs = {
        "msp": rng.integers(0, 65536, (h, w), dtype=np.uint16),
        "rba": rng.integers(0, 65536, (h, w), dtype=np.uint16),
    }
    return pred, confs


def test_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "run" / "predictions.h5"
    pred0, confs0 = _maps(rng, 40, 70)
    pred1, confs1 = _maps(rng, 30, 30)
    gt = rng.integers(0, 19, (40, 70), dtype=np.uint8)
    inv = (rng.random((40, 70)) < 0.1).astype(np.uint8) * 255
    counts = {k: rng.integers(0, 9, 65536) for k in ("correct", "wrong", "ood_pos", "ood_neg")}
    rgb = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    with StoreWriter(path, model="eomt_test", confidences=["msp", "rba"]) as store:
        store.add_image(
            "bravo_synobjs/polar bear/1.png",
            "synobjs",
            pred0,
            confs0,
            gt_label=gt,
            gt_invalid=inv,
            rgb=rgb,
            stats={"auprc_ood": 0.5, "miou": 0.25},
        )
        store.add_image("bravo_synrain/a/a_leftImg8bit.png", "synrain", pred1, confs1, stats={"miou": 0.75})
        store.add_histograms("msp", "synobjs", counts)
    with StoreReader(path) as reader:
        assert len(reader) == 2
        assert reader.relpaths == ["bravo_synobjs/polar bear/1.png", "bravo_synrain/a/a_leftImg8bit.png"]
        assert reader.subsets == ["synobjs", "synrain"]
        assert reader.confidences == ["msp", "rba"]
        np.testing.assert_array_equal(reader.read(0, "pred"), pred0)
        np.testing.assert_array_equal(reader.read(1, "conf/rba"), confs1["rba"])
        np.testing.assert_array_equal(reader.read(0, "gt_invalid"), (inv != 0).astype(np.uint8))
        np.testing.assert_array_equal(
            reader.read(0, "conf/msp", region=(slice(5, 9), slice(60, 70))), confs0["msp"][5:9, 60:70]
        )
        assert reader.has_ground_truth(0) and not reader.has_ground_truth(1)
        np.testing.assert_array_equal(
            reader.read(0, "rgb", preview=True), rgb
        )  # 40x70 is below the preview side
        stats = reader.stats()
        np.testing.assert_array_equal(stats["miou"], [0.25, 0.75])
        assert np.isnan(stats["auprc_ood"][1])
        hist = reader.histograms("msp")["synobjs"]
        np.testing.assert_array_equal(hist["ood_pos"], counts["ood_pos"])
        assert reader.histograms("rba") == {}


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "predictions.h5"
    with pytest.raises(RuntimeError), StoreWriter(path, model="m", confidences=["msp"]) as store:
        store.add_image(
            "x.png",
            "synobjs",
            *_maps(np.random.default_rng(2), 4, 4)[:1],
            {"msp": np.zeros((4, 4), np.uint16)},
        )
        raise RuntimeError("interrupted")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_reader_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="prediction store not found"):
        StoreReader(tmp_path / "nope.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        StoreReader(tmp_path / "bad.h5")
