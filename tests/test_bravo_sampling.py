"""`<base>_samples.bin` codec and the official sample rule (docs/formats.md §3, docs/metrics.md §10)."""

from __future__ import annotations

import itertools
import tarfile

import numpy as np
import pytest
import zstandard

from eomt_ood.bravo import sampling
from eomt_ood.errors import UserError


def _hand_encoded(indices: list[int]) -> bytes:
    """The byte layout of docs/formats.md §3 written out byte by byte (independent of the vectorised encoder)."""
    out = bytearray(len(indices).to_bytes(3, "little") + indices[0].to_bytes(3, "little"))
    for prev, cur in itertools.pairwise(indices):
        gap = cur - prev
        out += bytes([gap]) if gap <= 255 else b"\x00" + gap.to_bytes(3, "little")
    return bytes(out)


@pytest.mark.parametrize(
    "indices",
    [
        [7],
        [0, 1, 2, 3],
        [5, 260, 261, 517, 70000, 70255, 70256, 2**24 - 1],
        # Escaped gaps whose 3-byte payload itself holds zero bytes (65536 = 00 00 01, 256 = 00 01 00).
        [0, 256, 65792, 65793, 131329],
    ],
)
def test_encoding_matches_the_byte_layout_and_round_trips(indices):
    data = sampling.encode_sample_indices(np.array(indices))
    assert zstandard.ZstdDecompressor().decompress(data) == _hand_encoded(indices)
    params = zstandard.get_frame_parameters(data)
    assert params.content_size == len(_hand_encoded(indices))  # one frame with its content size
    np.testing.assert_array_equal(sampling.decode_sample_indices(data, "s.bin"), indices)


def test_random_round_trip():
    rng = np.random.default_rng(3)
    gaps = np.where(rng.random(5000) < 0.05, rng.integers(256, 70000, 5000), rng.integers(1, 256, 5000))
    indices = np.cumsum(gaps)
    decoded = sampling.decode_sample_indices(sampling.encode_sample_indices(indices), "s.bin")
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, indices)


def _zstd(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=9).compress(raw)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not zstd at all", "not a valid sample file"),
        (_zstd(b"\x01\x00"), "shorter than"),
        (_zstd(_hand_encoded([1, 2, 3])[:-1]), "announces 3 indices but holds 2"),
        (_zstd(_hand_encoded([1, 2, 3]) + b"\x05"), "announces 3 indices but holds 4"),
        (_zstd(_hand_encoded([1, 2]) + b"\x00\x01"), "ends inside"),
        (_zstd(b"\x00\x00\x00\x00\x00\x00"), "no index"),
        (_zstd(_hand_encoded([1]) + b"\x00\x00\x00\x00"), "zero gap"),
    ],
)
def test_malformed_sample_files_are_user_errors(data, problem):
    with pytest.raises(UserError, match=rf"^x/y_samples\.bin: .*{problem}"):
        sampling.decode_sample_indices(data, "x/y_samples.bin")


def test_streamed_frame_without_content_size_is_rejected():
    # The official one-shot decoder cannot read frames without a content size (what streaming writers make).
    compressor = zstandard.ZstdCompressor(level=9, write_content_size=False)
    with pytest.raises(UserError, match="not a valid sample file"):
        sampling.decode_sample_indices(compressor.compress(_hand_encoded([1, 2])), "s.bin")


def test_official_sample_equals_legacy_global_choice():
    rng = np.random.default_rng(0)
    nonvoid = rng.random((300, 500)) < 0.9  # ~135,000 non-void pixels
    expected_pool = np.flatnonzero(nonvoid.ravel())
    # The official sampler uses the legacy global RNG; this is what it calls.
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(1)  # noqa: NPY002
        expected = np.sort(np.random.choice(expected_pool, 100_000, replace=False))  # noqa: NPY002
    finally:
        np.random.set_state(state)  # noqa: NPY002
    got = sampling.official_sample_indices(nonvoid)
    np.testing.assert_array_equal(got, expected)
    # Small images keep every non-void pixel and leave the RNG alone.
    small = nonvoid[:100]
    np.testing.assert_array_equal(sampling.official_sample_indices(small), np.flatnonzero(small.ravel()))
    with pytest.raises(ValueError):
        sampling.official_sample_indices(np.zeros((3, 3), dtype=bool))


def test_sampling_tar_is_deterministic_and_readable(tmp_path):
    items = [("bravo_synobjs/polar bear/4", np.array([1, 5, 900])), ("bravo_SMIYC/a/b", np.array([3]))]
    sampling.write_sampling_tar(tmp_path / "a.tar", items)
    sampling.write_sampling_tar(tmp_path / "b.tar", list(reversed(items)))
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert tar.getnames() == ["bravo_SMIYC/a/b_samples.bin", "bravo_synobjs/polar bear/4_samples.bin"]
    with sampling.open_sampling_file(tmp_path / "a.tar") as tree:
        name = "bravo_synobjs/polar bear/4_samples.bin"
        np.testing.assert_array_equal(sampling.decode_sample_indices(tree.read(name), name), [1, 5, 900])


def test_encoder_rejects_bad_indices():
    for bad in ([], [3, 3], [5, 4], [2**24]):
        with pytest.raises(ValueError):
            sampling.encode_sample_indices(np.array(bad, dtype=np.int64))
