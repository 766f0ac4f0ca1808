"""PNG writing: every array `encode_png` writes, Pillow (an independent decoder) reads back exactly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from eomt_ood.data.png import decode_png, encode_png, png_header


def _pillow_read(data: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(data)) as img:
        img.verify()  # every chunk's CRC and the stream's end
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.mode, np.array(img)


def _maps(dtype: type, rng: np.random.Generator) -> list[np.ndarray]:
    top = np.iinfo(dtype).max
    smooth = np.linspace(0, top, 37 * 53).reshape(37, 53).astype(dtype)
    return [
        rng.integers(0, top, size=(61, 47), endpoint=True, dtype=dtype),  # noise: every byte value, both ways
        smooth,
        smooth.T.copy(),
        np.full((5, 9), top, dtype=dtype),
        np.zeros((3, 4), dtype=dtype),
        rng.integers(0, top, size=(1, 17), endpoint=True, dtype=dtype),  # one row: no row above
        rng.integers(0, top, size=(23, 1), endpoint=True, dtype=dtype),  # one column
        np.asfortranarray(rng.integers(0, top, size=(8, 6), endpoint=True, dtype=dtype)),
    ]


@pytest.mark.parametrize("dtype,mode,bits", [(np.uint8, "L", 8), (np.uint16, "I;16", 16)])
def test_grayscale_maps_round_trip_through_pillow(dtype, mode, bits):
    rng = np.random.default_rng(7)
    for array in _maps(dtype, rng):
        data = encode_png(array)
        read_mode, read = _pillow_read(data)
        assert read_mode == mode
        np.testing.assert_array_equal(read.astype(dtype), array)
        header = png_header(data, "x")
        assert (header.width, header.height, header.bit_depth, header.color_type) == (
            array.shape[1],
            array.shape[0],
            bits,
            0,
        )
        np.testing.assert_array_equal(decode_png(data, "x"), array)


def test_rgb_round_trips_and_unwritable_arrays_are_refused():
    rgb = np.random.default_rng(5).integers(0, 255, size=(9, 13, 3), dtype=np.uint8)
    for level in (0, 1, 6, 9):
        np.testing.assert_array_equal(_pillow_read(encode_png(rgb, compress_level=level))[1], rgb)
    with pytest.raises(TypeError, match="float32"):
        encode_png(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="int32"):
        encode_png(np.zeros((4, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="empty"):
        encode_png(np.zeros((0, 4), dtype=np.uint8))


def test_the_standard_library_fallback_writes_the_same_pixels(monkeypatch):
    """Without ISA-L, `eomt_ood.deflate` falls back to zlib: PNGs and store arrays still read back exactly."""
    import eomt_ood.deflate
    from eomt_ood.store import pack_array, unpack_array

    monkeypatch.setattr(eomt_ood.deflate, "isal_zlib", None)
    for array in _maps(np.uint16, np.random.default_rng(11)):
        np.testing.assert_array_equal(_pillow_read(encode_png(array))[1], array)
        np.testing.assert_array_equal(unpack_array(pack_array(array)), array)
