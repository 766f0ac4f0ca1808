"""The raw BRAVO submission format (`bravo.md` §3.1): file names and the confidence quantiser.

For an input image `bravo_<split>/.../<name>.png|.jpg` the submission holds `<name>_pred.png` (8-bit train ids
0..18) and `<name>_conf.png` (16-bit level k, read back as confidence (k + 0.5) / 65536), same size as the input.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from eomt_ood.data.png import write_png

NUM_LEVELS = 65536
IMAGE_SUFFIXES = (".png", ".jpg")


def raw_names(image_relpath: str) -> tuple[str, str]:
    """(`..._pred.png`, `..._conf.png`) relative paths for an input image's relative POSIX path."""
    path = PurePosixPath(image_relpath)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{image_relpath}: an input image must end in .png or .jpg")
    stem = str(path.with_suffix(""))
    return f"{stem}_pred.png", f"{stem}_conf.png"


def quantise_confidence(confidence: np.ndarray) -> np.ndarray:
    """Map confidences in [0, 1] (higher = more in-distribution) to uint16 levels k = min(floor(p*65536), 65535).

    Values outside [0, 1] are clipped; NaN is a programmer error. The evaluator reads k as (k + 0.5) / 65536.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    if np.isnan(confidence).any():
        raise ValueError("confidence map contains NaN")
    levels = np.floor(np.clip(confidence, 0.0, 1.0) * NUM_LEVELS)
    return np.minimum(levels, NUM_LEVELS - 1).astype(np.uint16)


def write_raw_pair(root: str | Path, image_relpath: str, pred: np.ndarray, conf_levels: np.ndarray) -> None:
    """Write the `_pred.png` (uint8 ids) and `_conf.png` (uint16 levels) of one image under `root`."""
    if pred.dtype != np.uint8 or conf_levels.dtype != np.uint16 or pred.shape != conf_levels.shape:
        raise ValueError(
            f"pred must be uint8 and conf uint16 of one shape, got {pred.dtype}{pred.shape} and "
            f"{conf_levels.dtype}{conf_levels.shape}"
        )
    pred_rel, conf_rel = raw_names(image_relpath)
    # conf first: a run that resumes treats an image as done when its pred exists (written last).
    write_png(Path(root) / conf_rel, conf_levels)
    write_png(Path(root) / pred_rel, pred)
