"""The encoded BRAVO upload (`eomt_ood.bravo.upload`, `eomt-ood package`): byte layout, checks, tar, CLI."""

from __future__ import annotations

import io
import struct
import sys
import tarfile
import zlib

import numpy as np
import pytest
import zstandard

from eomt_ood import cli
from eomt_ood.bravo.layout import PREDICT_SETTINGS
from eomt_ood.bravo.sampling import write_sampling_tar
from eomt_ood.bravo.submission import write_raw_pair
from eomt_ood.bravo.upload import decode_encoded, encode_image, package_upload, verify_upload
from eomt_ood.data.png import write_png
from eomt_ood.errors import UserError

# (input image path, GT base, shape): one image of each naming family of docs/formats.md §2, with a space in a folder.
IMAGES = [
    (
        "bravo_ACDC/fog/test/GOPR0475/GOPR0475_frame_000247_rgb_anon.png",
        "bravo_ACDC/fog/test/GOPR0475/GOPR0475_frame_000247",
        (30, 40),
    ),
    (
        "bravo_SMIYC/RoadAnomaly21/images/airplane0000.jpg",
        "bravo_SMIYC/RoadAnomaly21/images/airplane0000",
        (24, 36),
    ),
    ("bravo_synobjs/polar bear/4.png", "bravo_synobjs/polar bear/4", (20, 32)),
    (
        "bravo_synrain/munster/munster_000000_000019_leftImg8bit.png",
        "bravo_synrain/munster/munster_000000_000019",
        (16, 64),
    ),
]


def sample_indices(rng: np.random.Generator, size: int) -> np.ndarray:
    # A sparse random sample plus a run of neighbours, so gaps of 1, small gaps and 3-byte escapes all occur.
    idx = np.concatenate([rng.choice(size, size // 6, replace=False), np.arange(5, 12)])
    return np.unique(idx)


@pytest.fixture
def bravo_run(tmp_path):
    """A raw submission folder, its sampling tar and the arrays that went in."""
    rng = np.random.default_rng(0)
    submission, arrays = tmp_path / "submission", {}
    samples = []
    for image_path, base, shape in IMAGES:
        pred = rng.integers(0, 19, shape, dtype=np.uint8)
        conf = rng.integers(0, 65536, shape, dtype=np.uint16)
        write_raw_pair(submission, image_path, pred, conf)
        idx = sample_indices(rng, pred.size)
        samples.append((base, idx))
        arrays[base] = (pred, conf, idx)
    sampling = tmp_path / "bravo_SAMPLING.tar"
    write_sampling_tar(sampling, samples)
    return submission, sampling, arrays


def test_encoded_bytes_follow_the_layout():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 19, (7, 9), dtype=np.uint8)
    conf = rng.integers(0, 65536, (7, 9), dtype=np.uint16)
    idx = np.array([0, 3, 4, 40, 62])
    data = encode_image(pred, conf, idx)
    # Independent reading of docs/formats.md §4.1 with plain int.from_bytes.
    fields = [int.from_bytes(data[o : o + 4], "little") for o in range(4, 28, 4)]
    assert data[:4] == b"BV23"
    assert fields == [2, 7, 9, 5, 63, 10]
    assert int.from_bytes(data[-4:], "little") == zlib.crc32(data[:-4])
    payload = data[28:-4]
    assert zstandard.get_frame_parameters(payload).content_size == 63 + 10
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    raw = decompressor.decompress(payload)
    assert decompressor.unused_data == b""  # a single frame
    assert raw[:63] == pred.tobytes()
    assert raw[63:] == b"".join(int(conf.flat[i]).to_bytes(2, "little") for i in idx)
    # The documented one-shot call gives the same frame (docs/formats.md §4.1: byte-identical to the official encoder).
    assert payload == zstandard.ZstdCompressor(level=9).compress(raw)


def test_round_trip_equals_inputs_at_sampled_indices():
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 19, (33, 47), dtype=np.uint8)
    conf = rng.integers(0, 65536, (33, 47), dtype=np.uint16)
    conf.flat[[0, 1]] = [0, 65535]
    idx = np.sort(rng.choice(pred.size, 300, replace=False))
    idx[:2] = [0, 1]
    classes, confs = decode_encoded(encode_image(pred, conf, idx))
    assert classes.dtype == np.uint8 and confs.dtype == np.uint16
    np.testing.assert_array_equal(classes, pred)
    np.testing.assert_array_equal(confs, conf.flat[idx])


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_decoder_detects_corruption():
    pred = np.arange(20, dtype=np.uint8).reshape(4, 5) % 19
    conf = np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000
    good = encode_image(pred, conf, np.array([1, 2, 19]))
    flipped = bytearray(good)
    flipped[30] ^= 0x01
    with pytest.raises(UserError, match="x.bin: CRC-32 mismatch"):
        decode_encoded(bytes(flipped), "x.bin")
    with pytest.raises(UserError, match="CRC-32 mismatch"):
        decode_encoded(good[:-1] + bytes([good[-1] ^ 0xFF]))
    with pytest.raises(UserError, match="bad magic"):
        decode_encoded(_with_crc(b"BV24" + good[4:-4]))
    with pytest.raises(UserError, match="unsupported version 3"):
        decode_encoded(_with_crc(good[:4] + struct.pack("<I", 3) + good[8:-4]))
    with pytest.raises(UserError, match="too short"):
        decode_encoded(good[:20])
    # A header announcing other lengths than the payload holds (CRC recomputed, so only the length check fails).
    wrong_n = good[:16] + struct.pack("<III", 4, 20, 8) + good[28:-4]
    with pytest.raises(UserError, match="payload holds 26 bytes"):
        decode_encoded(_with_crc(wrong_n))
    # A streaming frame has no content size; the official one-shot decompress refuses it.
    raw = zstandard.ZstdDecompressor().decompress(good[28:-4])
    streamer = zstandard.ZstdCompressor(level=9).compressobj()
    streamed = streamer.compress(raw) + streamer.flush()
    assert zstandard.get_frame_parameters(streamed).content_size == zstandard.CONTENTSIZE_UNKNOWN
    with pytest.raises(UserError, match="cannot decompress"):
        decode_encoded(_with_crc(good[:28] + streamed))


def test_package_writes_one_member_per_sample(bravo_run, tmp_path):
    submission, sampling, arrays = bravo_run
    warnings: list[str] = []
    summary = package_upload(
        submission, sampling, tmp_path / "upload.tar", progress=False, workers=0, warn=warnings.append
    )
    assert summary.images == len(IMAGES) and warnings == []
    with tarfile.open(summary.path, "r:") as tar:  # "r:" = uncompressed only
        members = tar.getmembers()
        assert all(m.isfile() for m in members)
        names = [m.name for m in members]
        assert sorted(names) == sorted(base + "_encoded.bin" for base in arrays)
        assert "bravo_ACDC/fog/test/GOPR0475/GOPR0475_frame_000247_encoded.bin" in names
        assert "bravo_synobjs/polar bear/4_encoded.bin" in names
        assert not any(n.startswith("./") or "_rgb_anon" in n or "_leftImg8bit" in n for n in names)
        for base, (pred, conf, idx) in arrays.items():
            classes, confs = decode_encoded(tar.extractfile(base + "_encoded.bin").read())
            np.testing.assert_array_equal(classes, pred)
            np.testing.assert_array_equal(confs, conf.flat[idx])
    assert verify_upload(summary.path, sampling) == len(IMAGES)


def test_submission_tar_gives_the_same_upload(bravo_run, tmp_path):
    submission, sampling, _ = bravo_run
    from_folder = package_upload(
        submission, sampling, tmp_path / "a.tar", progress=False, workers=0
    ).path.read_bytes()
    sub_tar = tmp_path / "submission.tar.gz"
    with tarfile.open(sub_tar, "w:gz") as tar:
        tar.add(submission, arcname=".")  # "./" prefixes and directory entries, as `tar czf x .` writes
    from_tar = package_upload(
        sub_tar, sampling, tmp_path / "b.tar", progress=False, workers=0
    ).path.read_bytes()
    assert from_tar == from_folder


def test_missing_or_broken_files_name_the_file(bravo_run, tmp_path):
    submission, sampling, arrays = bravo_run
    out = tmp_path / "upload.tar"
    conf_path = submission / "bravo_synobjs/polar bear/4_conf.png"
    conf = arrays["bravo_synobjs/polar bear/4"][1]
    conf_path.unlink()
    with pytest.raises(UserError, match="bravo_synobjs/polar bear/4_conf.png: missing from submission"):
        package_upload(submission, sampling, out, progress=False, workers=0)
    assert not out.exists() and not list(tmp_path.glob(".upload.tar*"))  # nothing half-written is left
    write_png(conf_path, (conf >> 8).astype(np.uint8))
    with pytest.raises(
        UserError, match=r"4_conf.png: a confidence map must be a 16-bit grayscale PNG, got 8-bit"
    ):
        package_upload(submission, sampling, out, progress=False, workers=0)
    write_png(conf_path, conf[:, :-1])
    with pytest.raises(UserError, match=r"4_conf.png: shape 20x31 differs from the prediction's 20x32"):
        package_upload(submission, sampling, out, progress=False, workers=0)
    write_png(conf_path, conf)
    pred_path = submission / "bravo_SMIYC/RoadAnomaly21/images/airplane0000_pred.png"
    write_png(pred_path, np.zeros((24, 36, 3), np.uint8))
    with pytest.raises(UserError, match="airplane0000_pred.png: a prediction must be an 8-bit grayscale PNG"):
        package_upload(submission, sampling, out, progress=False, workers=0)


def test_sample_outside_the_image_is_an_error(tmp_path):
    submission = tmp_path / "sub"
    write_raw_pair(
        submission, "bravo_synobjs/armchair/1.png", np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint16)
    )
    sampling = tmp_path / "s.tar"
    write_sampling_tar(sampling, [("bravo_synobjs/armchair/1", np.array([3, 20]))])
    with pytest.raises(UserError, match=r"1_samples.bin: sample index 20 lies outside the 4x5 image"):
        package_upload(submission, sampling, tmp_path / "u.tar", progress=False, workers=0)
    write_sampling_tar(sampling, [("bravo_nosuch/1", np.array([3]))])
    with pytest.raises(UserError, match="bravo_nosuch/1_samples.bin: not a BRAVO image path"):
        package_upload(submission, sampling, tmp_path / "u.tar", progress=False, workers=0)


def test_unused_submission_files_are_reported(bravo_run, tmp_path):
    submission, sampling, _ = bravo_run
    write_png(submission / "bravo_synobjs/armchair/9_pred.png", np.zeros((2, 2), np.uint8))
    (submission / PREDICT_SETTINGS).write_text("{}")  # predict's own record: not a submission file
    warnings: list[str] = []
    package_upload(submission, sampling, tmp_path / "u.tar", progress=False, workers=0, warn=warnings.append)
    assert len(warnings) == 1 and warnings[0].startswith("1 submission file(s)")
    assert "bravo_synobjs/armchair/9_pred.png" in warnings[0]


def test_verify_upload_needs_every_image(bravo_run, tmp_path):
    submission, sampling, _ = bravo_run
    full = package_upload(submission, sampling, tmp_path / "full.tar", progress=False, workers=0).path
    partial = tmp_path / "partial.tar"
    with tarfile.open(full) as src, tarfile.open(partial, "w") as dst:
        for member in src.getmembers()[1:]:
            dst.addfile(member, io.BytesIO(src.extractfile(member).read()))
    missing = tarfile.open(full).getmembers()[0].name
    with pytest.raises(UserError, match=f"{missing}: missing from upload"):
        verify_upload(partial, sampling)


def test_cli_package(bravo_run, tmp_path, monkeypatch, capsys):
    submission, sampling, arrays = bravo_run
    out = tmp_path / "upload.tar"
    argv = [
        "eomt-ood",
        "package",
        "--submission",
        str(submission),
        "--samples",
        str(sampling),
        "--out",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()  # success returns normally
    assert f"wrote {len(arrays)} encoded image(s)" in capsys.readouterr().out
    assert verify_upload(out, sampling) == len(arrays)
    (submission / "bravo_SMIYC/RoadAnomaly21/images/airplane0000_pred.png").unlink()
    with pytest.raises(SystemExit) as exc:
        cli.main()
    last_line = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert exc.value.code == 2
    assert last_line.startswith("error: bravo_SMIYC/RoadAnomaly21/images/airplane0000_pred.png: missing")


def test_worker_processes_write_the_same_tar(bravo_run, tmp_path):
    submission, sampling, _ = bravo_run
    inline = package_upload(submission, sampling, tmp_path / "a.tar", progress=False, workers=0)
    pooled = package_upload(submission, sampling, tmp_path / "b.tar", progress=False, workers=2)
    assert pooled.path.read_bytes() == inline.path.read_bytes()


def test_worker_errors_reach_the_caller(bravo_run, tmp_path):
    submission, sampling, _ = bravo_run
    # A check that fails inside a worker still reaches the caller as one UserError naming the file.
    write_png(submission / "bravo_synobjs/polar bear/4_conf.png", np.zeros((20, 32), np.uint8))
    with pytest.raises(UserError, match="4_conf.png: a confidence map must be a 16-bit"):
        package_upload(submission, sampling, tmp_path / "c.tar", progress=False, workers=2)
    assert not (tmp_path / "c.tar").exists()
