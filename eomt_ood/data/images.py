"""Finding and reading input images under a folder (PNG / JPEG), with relative POSIX paths for mirrored outputs.

Unreadable images are `UserError`s that name the file, so a batch run can report them and carry on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from eomt_ood.errors import UserError
from eomt_ood.io import walk_files

IMAGE_SUFFIXES = (".png", ".jpg")


def find_images(root: str | Path, exclude: str | Path | None = None) -> list[str]:
    """Sorted relative POSIX paths of every `.png` / `.jpg` file (any case) under `root`, recursively, linked
    folders included (`eomt_ood.io.walk_files`).

    Hidden files and folders (names starting with ".") are skipped; so is everything under `exclude` (e.g. an
    output folder placed inside the input folder, whose `_pred.png` files must not become inputs). A missing
    `root` is a `UserError`.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: input folder not found")
    excluded = Path(exclude).resolve() if exclude is not None else None

    def skip(rel: str) -> bool:
        return rel.rsplit("/", 1)[-1].startswith(".") or (
            excluded is not None and (root / rel).resolve().is_relative_to(excluded)
        )

    found = []
    for rel in walk_files(root, skip):
        name = rel.rsplit("/", 1)[-1]
        if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        path = root / rel
        if (excluded is not None and path.resolve().is_relative_to(excluded)) or not path.is_file():
            continue  # a file linked from the excluded folder, or a link to nothing
        found.append(rel)
    return sorted(found)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as exc:  # Pillow raises many types for unreadable files
        raise UserError(f"{path}: unreadable image ({_why(exc)})") from None
    return height, width


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image to (H, W, 3) uint8 RGB (grayscale is repeated, alpha dropped); unreadable -> `UserError`."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("RGB", "L", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                raise ValueError(f"unsupported image mode {img.mode}")
            rgb = np.asarray(img.convert("RGB"))
    except Exception as exc:
        raise UserError(f"{path}: unreadable image ({_why(exc)})") from None
    return np.ascontiguousarray(rgb)


def _why(exc: Exception) -> str:
    lines = str(exc).splitlines()
    return f"{exc.__class__.__name__}: {lines[0][:80]}" if lines else exc.__class__.__name__
