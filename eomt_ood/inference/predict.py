"""Model + image -> per-pixel class scores, prediction and confidence maps (`eomt.md` §5, exact).

One forward pass per window yields everything: each window's (C+1, S, S) stack holds the C semantic scores
s_c = sum_q softmax(z_q)[c] * sigmoid(m_q) and the no-object mass n = sum_q softmax(z_q)[C] * sigmoid(m_q)
(one einsum over the full softmax). Stacks are averaged over window overlaps on a (C+1, H', W') float32 canvas
BEFORE any normalisation, then resized bilinearly to the input size, where the argmax and every registered
confidence score (`eomt_ood.confidence`) are taken.

Memory stays bounded for any image size: windows are forwarded in micro-batches, their mask logits are
upsampled and scored a few queries at a time (never Q x S x S for a batch), and the full-resolution maps are
produced in bands of rows (`predict_maps`), so only the (C+1, H', W') canvas grows with the image.

Checked against the transformers port (tests/test_predict.py): `EomtImageProcessor(do_split_image=True,
size={"shortest_edge": S, "longest_edge": None})` + `post_process_semantic_segmentation` give the same scores and
argmax. Differences: the port's default size dict ({"shortest_edge": S, "longest_edge": S}) caps the long side at
S (no windowing) and upsamples masks to (S, longest_edge), so `longest_edge` must be None; it upsamples all
windows' mask logits at once (Q x S x S per window, in the logits' dtype) where we go by query chunks in float32;
it picks the stitching axis from the original size and the split axis from the resized one (the same unless
rounding makes a near-square image flip); it returns only the argmax, no scores. In eval it still builds attention
masks while its `attn_mask_probs` > 0 (fresh models), so parity needs P_k = 0 as after training.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eomt_ood.bravo.submission import quantise_confidence, raw_names, write_raw_pair
from eomt_ood.confidence import get_confidence
from eomt_ood.data.images import find_images, image_size, read_image
from eomt_ood.data.png import png_header
from eomt_ood.errors import UserError
from eomt_ood.inference.windows import (
    add_window,
    average_overlaps,
    crop_window,
    resize_image,
    resize_rows,
    window_starts,
)

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = ("bravo",)


@dataclass(frozen=True)
class PixelOutputs:
    """Overlap-averaged per-pixel outputs of one image (or a band of its rows), float32.

    class_scores: (C, H, W) semantic scores s_c = sum_q softmax(z_q)[c] * sigmoid(m_q), raw range [0, Q].
    no_object: (H, W) no-object mass n = sum_q softmax(z_q)[C] * sigmoid(m_q), raw range [0, Q].
    """

    class_scores: torch.Tensor
    no_object: torch.Tensor

    @property
    def prediction(self) -> torch.Tensor:
        """(H, W) int64 class index, argmax_c of `class_scores`."""
        return self.class_scores.argmax(0)

    @classmethod
    def from_stack(cls, stack: torch.Tensor) -> PixelOutputs:
        """Split a (C+1, H, W) stack (classes, then no-object) into its fields."""
        return cls(class_scores=stack[:-1], no_object=stack[-1])


def parse_precision(name: str, device: str | torch.device | None = None) -> torch.dtype | None:
    """ "fp32" -> None (no autocast), "bf16" / "fp16" -> the autocast dtype; anything else is a `UserError`.

    "auto" (needs `device`): bf16 autocast on CUDA (fp16 where the GPU has no bf16), fp32 elsewhere.
    """
    if name == "auto" and device is not None:
        if torch.device(device).type != "cuda":
            return None
        bf16 = not torch.cuda.is_available() or torch.cuda.is_bf16_supported()  # older GPUs: fp16
        return torch.bfloat16 if bf16 else torch.float16
    if name not in PRECISIONS:
        choices = ", ".join(["auto", *PRECISIONS]) if device is not None else ", ".join(PRECISIONS)
        raise UserError(f"--precision: unknown precision {name!r}; available: {choices}")
    return PRECISIONS[name]


def parse_device(name: str) -> torch.device:
    """A torch device from its name; an unknown or unavailable one is a `UserError`."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device: {name} requested but no CUDA device is available")
    return device


def resolve_runtime(
    device: str | torch.device,
    precision: str = "auto",
    compile: bool | None = None,
    token_merging: bool = False,
) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether to compile) for a run on `device`; the defaults are the fast path.

    precision: "auto" (bf16 on CUDA, fp32 elsewhere), "fp32", "bf16" or "fp16". compile: None = on where the
    device is CUDA (as the official code runs), off on CPU (inductor takes minutes to compile there) and off
    with token merging (its token counts change with every batch, so graphs would break and recompile).
    """
    device = torch.device(device)
    dtype = parse_precision(precision, device)
    if compile is None:
        return dtype, device.type == "cuda" and not token_merging
    return dtype, bool(compile)


def prepare_model(
    model: nn.Module, device: str | torch.device = "cpu", compile: bool | None = None
) -> nn.Module:
    """Put a model in inference mode: eval, masked attention off (`eomt.md` §1.5), on `device`.

    compile: `torch.compile` the forward in place (None: see `resolve_runtime`). The first forward of each
    input shape then pays the compilation; outputs agree with eager to float tolerance.
    """
    model.eval()
    if hasattr(model, "masked_attn_enabled"):
        model.masked_attn_enabled = False
    model = model.to(device)
    merging = getattr(model, "token_merging", None) is not None
    if resolve_runtime(device, "fp32", compile, token_merging=merging)[1]:
        model.compile()
    return model


def window_stack(
    mask_logits: torch.Tensor, class_logits: torch.Tensor, side: int, query_chunk: int = 25
) -> torch.Tensor:
    """One window's (C+1, S, S) stack from its mask logits (Q, h, w) and class logits (Q, C+1).

    Mask logits are upsampled to S x S bilinearly (align_corners=False) in the logit domain, then
    stack[k] = sum_q softmax(z_q)[k] * sigmoid(m_q): k < C are the semantic scores, k = C the no-object mass.
    Queries are processed `query_chunk` at a time so the upsampled logits never take Q x S x S memory.
    """
    probs = class_logits.float().softmax(-1)  # softmax over C+1, no-object included (eomt.md §5.4)
    stack = torch.zeros((probs.shape[-1], side * side), dtype=torch.float32, device=mask_logits.device)
    for first in range(0, mask_logits.shape[0], query_chunk):
        chunk = mask_logits[first : first + query_chunk].float()
        masks = F.interpolate(chunk[None], size=(side, side), mode="bilinear", align_corners=False)[0]
        # einsum("qhw,qk->khw") accumulated in place: no (C+1, S, S) temporary per chunk.
        stack.addmm_(probs[first : first + query_chunk].T, masks.sigmoid_().reshape(masks.shape[0], -1))
    return stack.view(-1, side, side)


def _as_hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or 3 not in (image.shape[0], image.shape[2]):
        raise ValueError(f"expected a uint8 image (H, W, 3) or (3, H, W), got {image.dtype}{image.shape}")
    if image.shape[2] != 3:  # channels first
        image = image.transpose(1, 2, 0)
    return np.ascontiguousarray(image)


def predict_canvas(
    model: nn.Module,
    image: np.ndarray,
    micro_batch: int = 4,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The overlap-averaged (C+1, H', W') float32 stack of an image at its resized size (short side = S).

    image: uint8 (H, W, 3) or (3, H, W). The model must already be prepared (`prepare_model`) and on `device`;
    `dtype` (bf16 / fp16) runs the forward under autocast, scoring stays float32.
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    side = int(model.img_size)
    resized = torch.tensor(resize_image(_as_hwc(image), side)).permute(2, 0, 1)  # (3, H', W') uint8, a copy
    height, width = resized.shape[-2:]
    starts = window_starts(max(height, width), side)
    device = torch.device(device)
    canvas = torch.zeros((int(model.num_classes) + 1, height, width), dtype=torch.float32, device=device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    with torch.inference_mode():
        for first in range(0, len(starts), micro_batch):
            batch_starts = starts[first : first + micro_batch]
            batch = torch.stack([crop_window(resized, start, side) for start in batch_starts])
            batch = batch.to(device).float().div_(255)
            with autocast:
                mask_logits_list, class_logits_list = model(batch)
            mask_logits, class_logits = mask_logits_list[-1], class_logits_list[-1]
            for i, start in enumerate(batch_starts):
                add_window(canvas, window_stack(mask_logits[i], class_logits[i], side), start)
            del mask_logits_list, class_logits_list, mask_logits, class_logits
    return average_overlaps(canvas, side)


def predict_image(
    model: nn.Module,
    image: np.ndarray,
    micro_batch: int = 4,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> PixelOutputs:
    """Full-resolution `PixelOutputs` (C, H, W) / (H, W) of a uint8 image (H, W, 3) or (3, H, W).

    Holds C+1 float32 maps at the input size; for large images prefer `predict_maps`, which never does.
    """
    height, width = _as_hwc(image).shape[:2]
    canvas = predict_canvas(model, image, micro_batch=micro_batch, dtype=dtype, device=device)
    return PixelOutputs.from_stack(resize_rows(canvas, height, width, slice(0, height)))


def predict_maps(
    model: nn.Module,
    image: np.ndarray,
    confidences: Sequence[str] = ("msp",),
    micro_batch: int = 4,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    band_pixels: int = 1 << 18,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Prediction (H, W) uint8 and {name: (H, W) float32 confidence in [0, 1]} of a uint8 image.

    One forward pass (`predict_canvas`), then `canvas_maps`. Higher confidence = more in-distribution.
    """
    height, width = _as_hwc(image).shape[:2]
    canvas = predict_canvas(model, image, micro_batch=micro_batch, dtype=dtype, device=device)
    return canvas_maps(canvas, height, width, confidences, band_pixels=band_pixels)


def canvas_maps(
    canvas: torch.Tensor,
    height: int,
    width: int,
    confidences: Sequence[str] = ("msp",),
    band_pixels: int = 1 << 18,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Prediction (H, W) uint8 and {name: (H, W) float32 confidence} from a (C+1, H', W') canvas.

    The canvas is resized to (height, width) a band of about `band_pixels` output pixels (whole rows) at a time
    and every score is taken per band (scores are pointwise), so the working memory beyond the canvas and the
    returned maps is O(band_pixels * C) whatever the image size.
    """
    functions = {name: get_confidence(name) for name in confidences}
    if canvas.shape[0] - 1 > 256:
        raise ValueError(f"{canvas.shape[0] - 1} classes do not fit an 8-bit prediction")
    prediction = np.empty((height, width), dtype=np.uint8)
    maps = {name: np.empty((height, width), dtype=np.float32) for name in functions}
    band_rows = max(1, band_pixels // width)
    for top in range(0, height, band_rows):
        rows = slice(top, min(top + band_rows, height))
        band = PixelOutputs.from_stack(resize_rows(canvas, height, width, rows))
        prediction[rows] = band.prediction.to(torch.uint8).cpu().numpy()
        for name, fn in functions.items():
            maps[name][rows] = fn(band).cpu().numpy()
    return prediction, maps


def canvas_top2(
    canvas: torch.Tensor, height: int, width: int, side: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Top-2 classes and their normalised scores s_c / sum_c s_c at preview size, for per-pixel read-outs.

    canvas: (C+1, H', W'). Returns (2, h, w) uint8 class ids and (2, h, w) float16 scores, where (h, w) keeps
    the aspect of (height, width) with the long side at most `side` (`eomt_ood.store.preview_shape`).
    """
    from eomt_ood.store import preview_shape

    shape = preview_shape(height, width, side)
    scores = F.interpolate(
        canvas[None, :-1].float(), size=shape, mode="bilinear", align_corners=False, antialias=True
    )[0].clamp_min_(0)
    normalised = scores / scores.sum(0, keepdim=True).clamp_min(1e-12)
    values, classes = normalised.topk(2, dim=0)
    return classes.to(torch.uint8).cpu().numpy(), values.to(torch.float16).cpu().numpy()


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

    Outputs mirror the input tree under `output_dir` and have the input's size (`bravo.md` §3.1). Images whose
    outputs are already complete are skipped, so an interrupted run resumes. An unreadable image is reported by
    name on stderr and the run goes on; the caller decides what a non-empty `failed` list means.
    compile: see `prepare_model` (None: on CUDA only).
    """
    from tqdm import tqdm

    if layout not in LAYOUTS:
        raise UserError(f"--layout: unknown layout {layout!r}; available: {', '.join(LAYOUTS)}")
    get_confidence(confidence)  # fail on a bad name before any work
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    images = find_images(input_dir, exclude=output_dir)
    model = prepare_model(model, device, compile)
    report = FolderReport()
    for rel in tqdm(images, desc="predict", unit="img", disable=not progress, file=sys.stderr):
        try:
            height, width = image_size(input_dir / rel)
            if outputs_complete(output_dir, rel, height, width):
                report.skipped += 1
                continue
            image = read_image(input_dir / rel)
        except UserError as exc:
            report.failed.append((rel, str(exc)))
            tqdm.write(f"warning: skipped {exc}", file=sys.stderr)
            continue
        prediction, maps = predict_maps(model, image, (confidence,), micro_batch, dtype, device)
        write_raw_pair(output_dir, rel, prediction, quantise_confidence(maps[confidence]))
        report.written += 1
    return report
