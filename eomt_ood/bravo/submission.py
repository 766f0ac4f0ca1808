"""The raw BRAVO submission (docs/formats.md, "Raw submission"): file names, writing one image's pair, and
writing a whole folder's (`eomt-ood predict`).

For an input image `bravo_<split>/.../<name>.png|.jpg` the submission holds `<name>_pred.png` (8-bit train ids
0..18) and `<name>_conf.png` (16-bit level k, read back as confidence (k + 0.5) / 65536), same size as the input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from eomt_ood.bravo.layout import PREDICT_SETTINGS
from eomt_ood.config import changed_setting, describe_change
from eomt_ood.data.images import IMAGE_SUFFIXES, find_images, image_size, read_image
from eomt_ood.data.png import png_header, write_png
from eomt_ood.errors import UserError
from eomt_ood.io import progress_file, warn, write_text_atomic

if TYPE_CHECKING:
    import torch
    from torch import nn

LAYOUTS = ("bravo",)


def raw_names(image_relpath: str) -> tuple[str, str]:
    """(`..._pred.png`, `..._conf.png`) relative paths for an input image's relative POSIX path."""
    path = PurePosixPath(image_relpath)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{image_relpath}: an input image must end in .png or .jpg")
    stem = str(path.with_suffix(""))
    return f"{stem}_pred.png", f"{stem}_conf.png"


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


@dataclass
class FolderReport:
    """Outcome of `predict_folder`: images written, skipped as already complete, and failed (rel path, why)."""

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def outputs_complete(output_dir: str | Path, image_relpath: str, height: int, width: int) -> bool:
    """True when both raw files of an image exist with readable PNG headers of the right size and depth."""
    expected = {0: 8, 1: 16}  # pred: 8-bit grayscale, conf: 16-bit grayscale
    for index, rel in enumerate(raw_names(image_relpath)):
        path = Path(output_dir) / rel
        try:
            with path.open("rb") as handle:
                header = png_header(handle.read(33), str(path))
        except (OSError, UserError):
            return False
        if (header.height, header.width, header.bit_depth, header.color_type) != (
            height,
            width,
            expected[index],
            0,
        ):
            return False
    return True


def check_output_names(input_dir: Path, images: list[str]) -> None:
    """Two inputs that would write the same raw files (`a.png` and `a.jpg`) are a `UserError` naming both."""
    seen: dict[str, str] = {}
    for rel in images:
        pred_name = raw_names(rel)[0]
        if pred_name in seen:
            raise UserError(
                f"{input_dir / rel}: writes the same {pred_name} as {input_dir / seen[pred_name]}; "
                "rename one of them"
            )
        seen[pred_name] = rel


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise UserError(f"--layout: unknown layout {layout!r}; available: {', '.join(LAYOUTS)}")


def input_images(input_dir: str | Path, output_dir: str | Path) -> list[str]:
    """The images under `input_dir` that `predict_folder` writes outputs for (`output_dir` left out).

    A missing folder, a folder without images, or two images that would write the same raw files (`a.png`
    and `a.jpg`) are a `UserError`.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        kind = "is a file, not a folder" if input_dir.exists() else "folder not found"
        raise UserError(f"--input: {input_dir}: {kind}")
    images = find_images(input_dir, exclude=output_dir)
    if not images:
        raise UserError(f"--input: {input_dir}: no .png or .jpg images in it")
    check_output_names(input_dir, images)
    return images


def check_predict_settings(
    output_dir: str | Path, settings: dict[str, Any], keys: list[str] | None = None
) -> bool:
    """Before any work: an output folder whose maps were made with other settings (`rundir.maps_identity`:
    model, weights, score, precision, token merging, input folder; and the layout; recorded in
    `PREDICT_SETTINGS`) is refused, so that its maps are never taken for finished ones of this run; so is a
    folder holding maps without that record (nothing says how they were made). keys: the settings compared
    (default: all; `rundir.compared_keys`). True when the record exists."""
    path = Path(output_dir) / PREDICT_SETTINGS
    if not path.is_file():
        stray = next(Path(output_dir).rglob("*_pred.png"), None) if Path(output_dir).is_dir() else None
        if stray is not None:
            raise UserError(
                f"--output: {output_dir} holds maps ({stray.relative_to(output_dir)}) without the "
                f"{PREDICT_SETTINGS} record of how predict made them; choose an empty folder"
            )
        return False
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise UserError(
            f"{path}: unreadable record of an earlier predict; remove it or choose another --output"
        ) from None
    if not isinstance(recorded, dict):
        raise UserError(f"{path}: not a record of an earlier predict; remove it or choose another --output")
    key = changed_setting(recorded, settings, keys)
    if key is not None:
        said = describe_change(key, recorded, settings)
        raise UserError(
            f"--output: {output_dir} holds maps made with {said} (recorded in {path}); choose another --output"
        )
    return True


def record_predict_settings(output_dir: str | Path, settings: dict[str, Any]) -> None:
    """Write `settings` as the folder's `PREDICT_SETTINGS` (once the model has loaded, before the first map)."""
    write_text_atomic(
        Path(output_dir) / PREDICT_SETTINGS, json.dumps(settings, indent=2, sort_keys=True) + "\n"
    )


def predict_folder(
    model: nn.Module,
    input_dir: str | Path,
    output_dir: str | Path,
    confidence: str = "msp",
    layout: str = "bravo",
    micro_batch: int = 4,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    compile: bool | None = None,
) -> FolderReport:
    """Write the raw BRAVO pair (`_pred.png` uint8, `_conf.png` uint16) of every image under `input_dir`.

    Outputs mirror the input tree under `output_dir` and have the input's size. Images whose outputs are already
    complete are skipped, so an interrupted run resumes. An unreadable image is reported by name on stderr and
    the run goes on; the caller decides what a non-empty `failed` list means. compile: see `prepare_model`
    (None: on CUDA only).
    """
    from tqdm import tqdm

    from eomt_ood.confidence import get_confidence
    from eomt_ood.inference.predict import prepare_model, stream_levels

    check_layout(layout)
    get_confidence(confidence)  # fail on a bad name before any work
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    images = input_images(input_dir, output_dir)
    model = prepare_model(model, device, compile)
    report = FolderReport()
    bar = tqdm(total=len(images), desc="predict", unit="img", disable=not progress, file=progress_file())

    def decoded() -> Iterator[tuple[str, np.ndarray, int, int]]:
        for rel in images:
            try:
                height, width = image_size(input_dir / rel)
                if outputs_complete(output_dir, rel, height, width):
                    report.skipped += 1
                    bar.update()
                    continue
                image = read_image(input_dir / rel)
            except UserError as exc:
                report.failed.append((rel, str(exc)))
                warn(f"skipped {exc}")
                bar.update()
                continue
            yield rel, image, height, width

    with bar:
        for rel, maps in stream_levels(model, decoded(), (confidence,), micro_batch, dtype, device):
            assert maps is not None  # every input above has an image
            write_raw_pair(output_dir, rel, maps.prediction, maps.levels[confidence])
            report.written += 1
            bar.update()
    return report
