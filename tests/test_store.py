import numpy as np
import pytest

from eomt_ood.data.resample import downsample_labels, downsample_mean, preview_shape
from eomt_ood.errors import UserError
from eomt_ood.store import (
    ImageRecord,
    StoreReader,
    StoreWriter,
    copy_statistics,
    load_record,
    make_previews,
    pack_array,
    save_record,
    unpack_array,
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


@pytest.mark.parametrize(
    "size, shape", [((64, 128), (16, 32)), ((54, 96), (18, 32)), ((50, 77), (13, 20)), ((9, 5), (1, 1))]
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.bool_])
def test_downsample_mean_equals_per_box_means(size, shape, dtype):
    """Even boxes (the fast integer path) and uneven ones, one channel or three: each output is the box's sum
    over its pixel count, bit for bit (box edges rounded from an even split)."""
    rng = np.random.default_rng(size[0])
    high = 2 if dtype is np.bool_ else np.iinfo(dtype).max + 1
    for values in (
        rng.integers(0, high, size).astype(dtype),
        rng.integers(0, high, (*size, 3)).astype(dtype),
    ):
        rows = np.linspace(0, size[0], shape[0] + 1).round().astype(int)
        cols = np.linspace(0, size[1], shape[1] + 1).round().astype(int)
        expected = np.zeros((*shape, *values.shape[2:]))
        for i in range(shape[0]):
            for j in range(shape[1]):
                box = values[rows[i] : rows[i + 1], cols[j] : cols[j + 1]].astype(np.float64)
                expected[i, j] = box.sum(axis=(0, 1)) / (box.shape[0] * box.shape[1])
        got = downsample_mean(values, shape)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, expected)


def test_downsample_labels_picks_block_centres():
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    # 2x2 output: the centre of each 2x2 block rounds to its lower-right pixel (index 1 and 3).
    np.testing.assert_array_equal(downsample_labels(labels, (2, 2)), labels[[1, 3]][:, [1, 3]])
    assert downsample_labels(labels, (4, 4)).tolist() == labels.tolist()


def _record(rng, relpath, subset, h, w, gt=True):
    pred = rng.integers(0, 19, (h, w), dtype=np.uint8)
    levels = {s: rng.integers(0, 65536, (h, w), dtype=np.uint16) for s in ("msp", "rba")}
    label = rng.integers(0, 19, (h, w), dtype=np.uint8) if gt else None
    invalid = (rng.random((h, w)) < 0.1) if gt else None
    # A photo-like picture (smooth, with some noise): JPEG keeps it close.
    ramp = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 40, h)[:, None, None] + [0, 10, 20]
    rgb = np.clip(ramp + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    previews = make_previews(pred, levels, gt_label=label, gt_invalid=invalid, rgb=rgb)
    record = ImageRecord(relpath, subset, h, w, previews, stats={"msp": {"miou": 0.25}, "rba": {"miou": 0.5}})
    if gt:
        record.cm = rng.integers(0, 9, (19, 19))
        record.pixels = (10, 2, 1)
        for score in levels:
            used = np.unique(levels[score].ravel()[:50])
            record.sparse[score] = (
                used.astype(np.uint16),
                rng.integers(1, 5, (used.size, 3)).astype(np.int32),
            )
    return record, pred, levels, label, invalid, rgb


def test_records_round_trip_on_disk_and_into_the_store(tmp_path):
    rng = np.random.default_rng(1)
    first, pred, levels, label, invalid, rgb = _record(
        rng, "bravo_synobjs/polar bear/1.png", "synobjs", 40, 70
    )
    second = _record(rng, "bravo_synrain/a/a_leftImg8bit.png", "synrain", 600, 1200, gt=False)[0]
    save_record(tmp_path / "r.npz", first)
    loaded = load_record(tmp_path / "r.npz")
    assert (loaded.relpath, loaded.subset, loaded.height, loaded.width) == (first.relpath, "synobjs", 40, 70)
    assert loaded.stats == first.stats and loaded.pixels == first.pixels
    np.testing.assert_array_equal(loaded.cm, first.cm)
    for score in ("msp", "rba"):
        for a, b in zip(loaded.sparse[score], first.sparse[score], strict=True):
            np.testing.assert_array_equal(a, b)
    assert set(loaded.previews) == set(first.previews)

    counts = {k: rng.integers(0, 9, 65536) for k in ("correct", "wrong", "ood_pos", "ood_neg")}
    path = tmp_path / "run" / "predictions.h5"
    with StoreWriter(path, model="eomt_test", confidences=["msp", "rba"]) as store:
        store.add(loaded)
        store.add(second)
        store.add_histograms("msp", "synobjs", counts)
    with StoreReader(path) as reader:
        assert len(reader) == 2 and reader.relpaths == [first.relpath, second.relpath]
        assert reader.subsets == ["synobjs", "synrain"] and reader.confidences == ["msp", "rba"]
        assert list(reader.heights) == [40, 600] and list(reader.widths) == [70, 1200]
        # Below the preview side, label maps and levels are stored exactly; the photo as JPEG (close).
        np.testing.assert_array_equal(reader.preview(0, "pred"), pred)
        np.testing.assert_array_equal(reader.preview(0, "conf/rba"), levels["rba"])
        np.testing.assert_array_equal(reader.preview(0, "gt_label"), label)
        np.testing.assert_array_equal(reader.preview(0, "gt_invalid"), invalid.astype(np.uint8))
        assert np.abs(reader.preview(0, "rgb").astype(int) - rgb).mean() < 4
        assert reader.preview(1, "pred").shape == (256, 512) and reader.preview(1, "rgb").shape == (
            256,
            512,
            3,
        )
        with pytest.raises(KeyError):
            reader.preview(1, "gt_label")
        assert reader.has_ground_truth(0) and not reader.has_ground_truth(1)
        np.testing.assert_array_equal(reader.stats("rba")["miou"], [0.5, 0.5])
        stats = reader.image_statistics("rba")
        np.testing.assert_array_equal(stats.cm[0], first.cm)
        for got, expected in zip(stats.row(0), first.sparse["rba"], strict=True):
            np.testing.assert_array_equal(got, expected)
        assert stats.row(1)[0].size == 0 and not stats.cm[1].any()  # no GT: no rows
        # A chosen subset of images, in the order asked (repeats allowed): the same rows.
        picked = reader.image_statistics("msp", [0, 1, 0])
        assert picked.n_images == 3 and picked.row(1)[0].size == 0
        np.testing.assert_array_equal(picked.row(2)[1], first.sparse["msp"][1])
        np.testing.assert_array_equal(reader.pixels(), [[10, 2, 1], [0, 0, 0]])
        with pytest.raises(UserError, match="no per-image statistics for confidence 'energy'"):
            reader.image_statistics("energy")
        np.testing.assert_array_equal(reader.histograms("msp")["synobjs"]["ood_pos"], counts["ood_pos"])
        assert reader.histograms("rba") == {}
        assert reader.kind == "predictions"

    # A statistics file: the same statistics of the chosen score, no previews.
    copy_statistics(path, tmp_path / "stats.h5", ["msp"])
    with StoreReader(tmp_path / "stats.h5") as reader:
        assert reader.kind == "statistics" and reader.confidences == ["msp"]
        assert reader.relpaths == [first.relpath, second.relpath]
        again = reader.image_statistics("msp")
        for name in ("cm", "levels", "counts", "offsets"):
            np.testing.assert_array_equal(getattr(again, name), getattr(picked.take([0, 1]), name))
        np.testing.assert_array_equal(reader.histograms("msp")["synobjs"]["ood_pos"], counts["ood_pos"])
        with pytest.raises(KeyError):
            reader.preview(0, "pred")
    assert (tmp_path / "stats.h5").stat().st_size < path.stat().st_size / 2


@pytest.mark.parametrize("chunk", [7, 64, 32768])
def test_sparse_rows_reach_the_file_as_images_come(tmp_path, monkeypatch, chunk):
    """The writer appends each image's rows in whole chunks: what it stores equals the rows concatenated at
    once (`ImageSetStatistics.from_rows(...).encode()`), over chunk edges inside an image, exactly on one, and
    with images of no rows (no ground truth) in between; at most one chunk waits in memory."""
    from eomt_ood import store as store_module
    from eomt_ood.metrics.image_stats import ImageSetStatistics

    monkeypatch.setattr(store_module, "_ROWS_PER_CHUNK", chunk)
    rng = np.random.default_rng(chunk)
    sizes = [5, 0, 7, 9, 0, 14, 1, 63, 200, 0, 3]
    records = []
    for i, size in enumerate(sizes):
        levels = np.sort(rng.choice(65536, size, replace=False)).astype(np.uint16)
        counts = rng.integers(0, 2**31 - 1, (size, 3)).astype(np.int64 if i % 2 else np.int32)
        has_gt = size > 0
        record = ImageRecord(f"bravo_synobjs/a/{i}.png", "synobjs", 4, 4, previews={})
        if has_gt:
            record.cm = rng.integers(0, 100, (19, 19))
            record.pixels = (16, 0, 0)
            record.sparse = {"msp": (levels, counts), "rba": (levels[::-1].copy(), counts[::-1].copy())}
        records.append(record)
    path = tmp_path / "predictions.h5"
    with StoreWriter(path, model="m", confidences=["msp", "rba"]) as store:
        for record in records:
            store.add(record)
            assert all(table._waiting_rows < chunk for table in store._rows.values())
    zero_cm = np.zeros((19, 19), np.int64)
    empty = (np.zeros(0, np.uint16), np.zeros((0, 3), np.int32))
    with StoreReader(path) as reader:
        for score in ("msp", "rba"):
            expected = ImageSetStatistics.from_rows(
                [r.cm if r.cm is not None else zero_cm for r in records],
                [r.sparse.get(score, empty) for r in records],
            ).encode()
            group = reader._file[f"image_stats/{score}"]
            for name in ("levels", "counts", "offsets"):
                np.testing.assert_array_equal(group[name][()], expected[name])
                assert group[name].dtype == expected[name].dtype
            assert group["counts"].chunks == (chunk, 1)


def test_packed_arrays_are_lossless():
    rng = np.random.default_rng(5)
    arrays = (
        rng.random((3, 4)).astype(np.float16),
        rng.integers(0, 65536, (7, 9), dtype=np.uint16),  # differences wrap around modulo 2^16
        rng.integers(0, 65536, (2, 5, 1), dtype=np.uint16),
        np.zeros((0, 4), np.uint16),
        np.array(7, np.uint16),
        rng.integers(0, 19, (2, 6, 8), dtype=np.uint8),
        rng.integers(-5, 5, (4, 3)).astype(">i2"),  # a big-endian input comes back with the same values
        rng.random(5).astype(np.float32),
    )
    for array in arrays:
        out = unpack_array(pack_array(array))
        assert out.dtype.newbyteorder("=") == array.dtype.newbyteorder("=") and out.shape == array.shape
        np.testing.assert_array_equal(out, array)


def test_packing_filters_smooth_maps_and_reads_format_2_bytes():
    import io
    import zlib

    rows, cols = np.mgrid[0:256, 0:512]
    smooth = (rows * 97 + cols * 61 + (rows * cols) % 7).astype(np.uint16)  # a smooth map of 16-bit levels
    plain = zlib.compress(smooth.tobytes(), 6)
    # The delta / byte-plane filter is what deflate gains from.
    assert pack_array(smooth).size < len(plain) / 3
    buffer = io.BytesIO()
    np.save(buffer, smooth, allow_pickle=False)
    legacy = np.frombuffer(zlib.compress(buffer.getvalue(), 6), np.uint8)  # how format 2 packed a preview
    np.testing.assert_array_equal(unpack_array(legacy), smooth)


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "predictions.h5"
    record = _record(np.random.default_rng(2), "x.png", "synobjs", 4, 4)[0]
    with pytest.raises(RuntimeError), StoreWriter(path, model="m", confidences=["msp", "rba"]) as store:
        store.add(record)
        raise RuntimeError("interrupted")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_reader_rejects_missing_foreign_and_old_files(tmp_path):
    import h5py

    with pytest.raises(UserError, match="prediction store not found"):
        StoreReader(tmp_path / "nope.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        StoreReader(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "old.h5", "w") as old:
        old.attrs["format"] = "eomt-ood-predictions-1"
    with pytest.raises(UserError, match="run `eomt-ood evaluate` again"):
        StoreReader(tmp_path / "old.h5")
    (tmp_path / "broken.npz").write_bytes(b"PK not really")
    with pytest.raises(UserError, match="broken.npz: unreadable image record"):
        load_record(tmp_path / "broken.npz")
