"""Deflate for what the runs write (PNG maps, the store's previews): Intel ISA-L where it is installed (`isal`,
a dependency), the standard library's zlib otherwise.

Both give standard zlib streams, which `zlib.decompress` and every PNG reader decode. ISA-L's level 1, measured
on one core of the 2-core machine the benchmarks ran on: a 16-bit 2048 x 1024 confidence map (Up-filtered,
`eomt_ood.data.png`) in 25 ms against 71 ms for zlib's level 1 run-length mode, at the same size; the store's
previews of one image with four scores in 4 ms against 59 ms for zlib's level 6, 3% larger.
"""

from __future__ import annotations

import zlib

try:
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal has wheels for every platform torch has
    isal_zlib = None


def deflate(data: bytes | bytearray | memoryview) -> bytes:
    """`data` as one zlib stream (header, deflate, Adler-32), compressed for speed."""
    if isal_zlib is not None:
        return isal_zlib.compress(data, 1)
    return zlib.compress(data, 1)
