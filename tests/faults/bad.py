"""Ways to spoil an input, for the cases' `setup`: each takes a path in a case folder and changes it in place."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut the file to `keep` of its bytes (a download that stopped)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


def text(path: Path, content: str = "not an image, just text\n") -> None:
    """Replace the file (or create it) with text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def binary(path: Path) -> None:
    """Replace the file with bytes that are not UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * 8)


def png(path: Path, array: np.ndarray) -> None:
    from eomt_ood.data.png import write_png

    write_png(path, array)


def read(path: Path) -> np.ndarray:
    from eomt_ood.data.png import read_png

    return read_png(path)


def as_8bit(path: Path) -> None:
    """A 16-bit confidence map saved as 8 bits."""
    png(path, (read(path) >> 8).astype(np.uint8))


def as_rgb(path: Path) -> None:
    """A grayscale map saved as RGB."""
    gray = read(path)
    png(path, np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2))


def with_value(path: Path, value: int) -> None:
    """Set one pixel of a grayscale map to `value` (keeps the bit depth)."""
    array = read(path).copy()
    array[0, 0] = value
    png(path, array)


def fill(path: Path, value: int) -> None:
    """Set every pixel of a grayscale map to `value`."""
    array = read(path)
    png(path, np.full_like(array, value))


def crop(path: Path, rows: int = 8) -> None:
    """Drop the last `rows` rows (a map of the wrong size)."""
    png(path, np.ascontiguousarray(read(path)[:-rows]))


def tar_of(folder: Path, out: Path) -> Path:
    """A tar of `folder`'s files, members relative to it."""
    with tarfile.open(out, "w") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(folder).as_posix())
    return out


def tar_members(out: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(out, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def sampling_tar(out: Path, samples: dict[str, np.ndarray]) -> Path:
    """A sampling tar with these (base -> flat indices) samples."""
    from eomt_ood.bravo.sampling import write_sampling_tar

    write_sampling_tar(out, list(samples.items()))
    return out
