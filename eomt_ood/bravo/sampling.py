"""The official per-image pixel sample and its file format `<base>_samples.bin`
(docs/formats.md §3, docs/metrics.md §10).

A sample is a sorted array of flat, row-major pixel indices (int64, strictly increasing, all non-void). On disk it
is one zstd frame (level 9, content size in the header) of: n (3 bytes LE), the first index (3 bytes LE), then
each gap d >= 1 as one byte if d <= 255, else a 0 byte followed by d in 3 bytes LE. `bravo_SAMPLING.tar` holds
one such member per GT image.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zstandard

from eomt_ood.bravo.layout import SAMPLES_SUFFIX, Tree, open_tree
from eomt_ood.errors import UserError
from eomt_ood.io import atomic_path

SAMPLES_PER_IMAGE = 100_000
SAMPLING_SEED = 1
ZSTD_LEVEL = 9
MAX_INDEX = (1 << 24) - 1  # the 3-byte fields limit images to fewer than 2**24 pixels


def official_sample_indices(
    nonvoid: np.ndarray, samples_per_image: int = SAMPLES_PER_IMAGE, seed: int = SAMPLING_SEED
) -> np.ndarray:
    """Sorted flat indices of the official sample of one image, given its (H, W) non-void mask (`gt != 255`).

    All non-void pixels if there are at most `samples_per_image`; otherwise the legacy-RNG draw
    `seed(1); choice(idx, 100000, replace=False)`, which equals `idx[RandomState(1).permutation(len(idx))[:k]]`.
    """
    idx = np.flatnonzero(np.asarray(nonvoid).ravel())
    if idx.size == 0:
        raise ValueError("an image without non-void pixels has no sample (the official sampler fails on it)")
    if idx.size > samples_per_image:
        order = np.random.RandomState(seed).permutation(idx.size)[:samples_per_image]
        idx = np.sort(idx[order])
    return idx.astype(np.int64)


def encode_sample_indices(indices: np.ndarray) -> bytes:
    """`<base>_samples.bin` bytes of sorted flat indices (one zstd frame, level 9, with content size)."""
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size == 0 or idx.size > MAX_INDEX:
        raise ValueError(f"a sample must hold 1..{MAX_INDEX} indices, got {idx.size}")
    if idx[0] < 0 or idx[-1] > MAX_INDEX:
        raise ValueError("sample indices must lie in 0..2**24-1")
    gaps = np.diff(idx)
    if (gaps <= 0).any():
        raise ValueError("sample indices must be strictly increasing")
    small = gaps <= 255
    lengths = np.where(small, 1, 4)
    starts = 6 + np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    raw = np.zeros(6 + int(lengths.sum()), dtype=np.uint8)
    raw[0:3] = np.frombuffer(int(idx.size).to_bytes(3, "little"), np.uint8)
    raw[3:6] = np.frombuffer(int(idx[0]).to_bytes(3, "little"), np.uint8)
    raw[starts[small]] = gaps[small]
    big_starts, big = starts[~small], gaps[~small]
    # An escape is a 0 byte (already zero) followed by the gap in 3 little-endian bytes.
    for byte in range(3):
        raw[big_starts + 1 + byte] = (big >> (8 * byte)) & 0xFF
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw.tobytes())


def decode_sample_indices(data: bytes, name: str) -> np.ndarray:
    """Sorted int64 flat indices from `<base>_samples.bin` bytes; any malformation is a `UserError` naming `name`.

    Like the official decoder, the one-shot zstd call needs the content size in the frame header and reads only
    the first frame; exactly n - 1 gaps must follow the header.
    """
    try:
        raw = zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise UserError(f"{name}: not a valid sample file ({exc})") from None
    if len(raw) < 6:
        raise UserError(f"{name}: sample file shorter than its 6-byte header")
    count = int.from_bytes(raw[0:3], "little")
    first = int.from_bytes(raw[3:6], "little")
    if count < 1:
        raise UserError(f"{name}: sample file holds no index")
    body = np.frombuffer(raw, dtype=np.uint8, offset=6)
    gaps = _decode_gaps(body, name)
    if gaps.size != count - 1:
        raise UserError(f"{name}: sample file announces {count} indices but holds {gaps.size + 1}")
    indices = np.empty(count, dtype=np.int64)
    indices[0] = first
    np.cumsum(gaps, out=indices[1:])
    indices[1:] += first
    return indices


def _decode_gaps(body: np.ndarray, name: str) -> np.ndarray:
    # Runs of non-zero bytes are one-byte gaps; a zero byte starts a 4-byte escape whose payload may itself
    # hold zeros, so the loop jumps over each escape and only visits escapes (few), never single bytes.
    zeros = np.flatnonzero(body == 0)
    pieces: list[np.ndarray] = []
    pos, end = 0, body.size
    while pos < end:
        j = int(np.searchsorted(zeros, pos))
        stop = int(zeros[j]) if j < zeros.size else end
        if stop > pos:
            pieces.append(body[pos:stop].astype(np.int64))
        if stop == end:
            break
        if stop + 4 > end:
            raise UserError(f"{name}: sample file ends inside a 3-byte gap")
        gap = int.from_bytes(body[stop + 1 : stop + 4].tobytes(), "little")
        if gap == 0:
            raise UserError(f"{name}: sample indices are not strictly increasing (zero gap)")
        pieces.append(np.array([gap], dtype=np.int64))
        pos = stop + 4
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def open_sampling_file(path: str | Path) -> Tree:
    """The sampling tar as a `Tree`; members are `<base>_samples.bin`."""
    return open_tree(path, "sampling file")


def write_sampling_tar(path: str | Path, samples: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write an uncompressed, deterministic sampling tar from (`<base>`, sorted indices) pairs.

    Members are named `<base>_samples.bin`, sorted, with zero mtime/uid/gid, so equal input gives equal bytes.
    """
    members = sorted((base + SAMPLES_SUFFIX, encode_sample_indices(idx)) for base, idx in samples)
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
