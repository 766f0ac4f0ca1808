"""Model + image -> per-pixel class scores, prediction and confidence maps (docs/models.md, "Inference").

One forward pass per window yields everything: each window's (C+1, S, S) stack holds the C semantic scores
s_c = sum_q softmax(z_q)[c] * sigmoid(m_q) and the no-object mass n = sum_q softmax(z_q)[C] * sigmoid(m_q)
(one einsum over the full softmax). Stacks are averaged over window overlaps on a (C+1, H', W') float32 canvas
BEFORE any normalisation, then resized bilinearly to the input size, where the argmax and every registered
confidence score (`eomt_ood.confidence`) are taken, on the model's device.

Memory stays bounded for any image size: windows are forwarded in micro-batches, their mask logits are
upsampled and scored a few queries at a time (never Q x S x S for a batch), and the full-resolution maps are
produced in bands of rows, so only the (C+1, H', W') canvas and the windows' low-resolution outputs (Q x S/4 x S/4
mask logits per window) grow with the image. Nothing here writes a file.

`stream_levels` runs a stream of images in two threads: the forward of one image while the previous one is
merged, scored and quantised.

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

import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from eomt_ood.confidence import PixelOutputs, get_confidence
from eomt_ood.confidence.levels import quantise_tensor
from eomt_ood.confidence.outputs import first_max
from eomt_ood.data.resample import centre_indices, preview_shape, resize_image
from eomt_ood.errors import UserError
from eomt_ood.inference.windows import (
    average_overlaps,
    crop_window,
    place_window,
    resize_rows,
    window_starts,
)
from eomt_ood.io import FreedMemory

# Output pixels per band when scoring a canvas on the CPU (see `_bands`).
CPU_BAND_PIXELS = 1 << 16

Key = TypeVar("Key")

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def precision_name(dtype: torch.dtype | None) -> str:
    """The name of a resolved precision (`parse_precision`'s result): "fp32", "bf16" or "fp16"."""
    return next(name for name, value in PRECISIONS.items() if value == dtype)


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
    """Put a model in inference mode: eval, masked attention off (docs/models.md §1), on `device`.

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


class Buffers:
    """Float32 work tensors kept from image to image: on the CPU, a fresh 100 MB tensor per image costs more in
    page faults than filling it. `get(name, shape, device)` returns the tensor of that name, new only when the
    shape or device changed; what a call built in one is overwritten by the next call that uses it."""

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        tensor = self._tensors.get(name)
        if tensor is None or tuple(tensor.shape) != tuple(shape) or tensor.device != device:
            self._tensors.pop(name, None)  # freed before the new one is allocated
            tensor = torch.empty(shape, dtype=torch.float32, device=device)
            self._tensors[name] = tensor
        return tensor


def _query_chunk(pixels: int) -> int:
    # Queries upsampled at once: at most 2^25 float32 (128 MB) of masks. Every further chunk reads and writes the
    # whole (C+1, S, S) stack again (addmm), so fewer, larger chunks spend less memory traffic.
    return max(1, (1 << 25) // pixels)


def window_stack(
    mask_logits: torch.Tensor,
    class_logits: torch.Tensor,
    side: int | tuple[int, int],
    query_chunk: int | None = None,
    buffers: Buffers | None = None,
) -> torch.Tensor:
    """One window's (C+1, S, S) stack from its mask logits (Q, h, w) and class logits (Q, C+1).

    Mask logits are upsampled to S x S bilinearly (align_corners=False) in the logit domain, then
    stack[k] = sum_q softmax(z_q)[k] * sigmoid(m_q): k < C are the semantic scores, k = C the no-object mass.
    Queries are processed `query_chunk` at a time so the upsampled logits never take Q x S x S memory.
    `buffers`: where the stack and the upsampled masks are built (reused across windows and images; the result
    is then the "stack" buffer, overwritten by the next call), else fresh tensors. `side` may be a (height,
    width) pair for a non-square "window" (a whole image, see `predict_canvas`).
    """
    height, width = (side, side) if isinstance(side, int) else side
    buffers = buffers or Buffers()
    probs = class_logits.float().softmax(-1)  # softmax over C+1, no-object included (docs/models.md)
    queries = mask_logits.shape[0]
    chunk_size = min(queries, query_chunk or _query_chunk(height * width))
    device = mask_logits.device
    out = buffers.get("stack", (probs.shape[-1], height * width), device)
    upsampled = buffers.get("masks", (1, chunk_size, height, width), device)
    for first in range(0, queries, chunk_size):
        chunk = mask_logits[first : first + chunk_size].float()
        masks = upsampled[:, : chunk.shape[0]]
        # F.interpolate's kernel (the same call it makes for a target size), into the reused buffer
        torch.ops.aten.upsample_bilinear2d.out(chunk[None], [height, width], False, None, None, out=masks)
        masks = masks[0].sigmoid_().reshape(chunk.shape[0], -1)
        # einsum("qhw,qk->khw") accumulated in place: no (C+1, S, S) temporary per chunk.
        if first == 0:
            torch.mm(probs[:chunk_size].T, masks, out=out)
        else:
            out.addmm_(probs[first : first + chunk_size].T, masks)
    return out.view(-1, height, width)


def _as_hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or 3 not in (image.shape[0], image.shape[2]):
        raise ValueError(f"expected a uint8 image (H, W, 3) or (3, H, W), got {image.dtype}{image.shape}")
    if image.shape[2] != 3:  # channels first
        image = image.transpose(1, 2, 0)
    return np.ascontiguousarray(image)


@dataclass
class ModelOutputs:
    """An image's raw model outputs, before any merge: `windows` holds (start, mask logits (Q, h, w), class logits
    (Q, C+1)) per window, at its start along the long side of the resized (height, width) image; `side` is the
    window side, or None when the whole resized image was one forward pass."""

    height: int
    width: int
    side: int | None
    windows: list[tuple[int, torch.Tensor, torch.Tensor]]


def forward_image(
    model: nn.Module,
    image: np.ndarray,
    micro_batch: int = 4,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> ModelOutputs:
    """The model's outputs for every window of an image (`merge_outputs` turns them into its canvas).

    image: uint8 (H, W, 3) or (3, H, W). The model must already be prepared (`prepare_model`) and on `device`;
    `dtype` (bf16 / fp16) runs the forward under autocast. Windows go through the model `micro_batch` at a time.
    A model with `whole_image_inference` set (Mask2Former's own Cityscapes protocol) sees the resized image in
    one forward pass instead of S x S windows.
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    side = int(model.img_size)
    device = torch.device(device)
    # (3, H', W') uint8, a copy, moved to the model's device once (as uint8: a quarter of float32's bytes); the
    # windows are cut, stacked and converted there, not by this thread on the host.
    resized = torch.tensor(resize_image(_as_hwc(image), side)).permute(2, 0, 1).to(device)
    height, width = resized.shape[-2:]
    whole = getattr(model, "whole_image_inference", False)
    starts = [0] if whole else window_starts(max(height, width), side)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    windows = []
    with torch.inference_mode():
        for first in range(0, len(starts), micro_batch):
            batch_starts = starts[first : first + micro_batch]
            if whole:
                batch = resized[None]
            else:
                batch = torch.stack([crop_window(resized, start, side) for start in batch_starts])
            batch = batch.float().div_(255)
            with autocast:
                mask_logits_list, class_logits_list = model(batch)
            mask_logits, class_logits = mask_logits_list[-1], class_logits_list[-1]
            windows += [(start, mask_logits[i], class_logits[i]) for i, start in enumerate(batch_starts)]
            del mask_logits_list, class_logits_list
    return ModelOutputs(height, width, None if whole else side, windows)


def merge_outputs(outputs: ModelOutputs, buffers: Buffers | None = None) -> torch.Tensor:
    """The overlap-averaged (C+1, H', W') float32 stack of an image at its resized size (short side = S), from
    its windows' outputs: each window's `window_stack`, summed where windows overlap, divided by the count.

    `buffers`: work tensors kept across calls (a stream of equal-size images then allocates them once); the
    canvas returned is then one of them, overwritten by the next call.
    """
    buffers = buffers or Buffers()
    with torch.inference_mode():
        if outputs.side is None:  # one forward of the whole image: nothing to merge
            _, mask_logits, class_logits = outputs.windows[0]
            return window_stack(mask_logits, class_logits, (outputs.height, outputs.width), buffers=buffers)
        channels = outputs.windows[0][2].shape[-1]
        device = outputs.windows[0][1].device
        # every position is written by `place_window` below: no zero fill needed
        canvas = buffers.get("canvas", (channels, outputs.height, outputs.width), device)
        filled = 0
        for start, mask_logits, class_logits in outputs.windows:
            window = window_stack(mask_logits, class_logits, outputs.side, buffers=buffers)
            filled = place_window(canvas, window, start, filled)
        return average_overlaps(canvas, outputs.side)


def predict_canvas(
    model: nn.Module,
    image: np.ndarray,
    micro_batch: int = 4,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    buffers: Buffers | None = None,
) -> torch.Tensor:
    """The overlap-averaged (C+1, H', W') float32 stack of an image at its resized size (short side = S):
    `merge_outputs` of `forward_image` (see both). Scoring stays float32 under any autocast `dtype`."""
    return merge_outputs(forward_image(model, image, micro_batch, dtype, device), buffers)


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
    band_pixels: int = CPU_BAND_PIXELS,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Prediction (H, W) uint8 and {name: (H, W) float32 confidence in [0, 1]} of a uint8 image.

    One forward pass (`predict_canvas`), then `canvas_maps`. Higher confidence = more in-distribution.
    """
    height, width = _as_hwc(image).shape[:2]
    canvas = predict_canvas(model, image, micro_batch=micro_batch, dtype=dtype, device=device)
    return canvas_maps(canvas, height, width, confidences, band_pixels=band_pixels)


def _bands(
    canvas: torch.Tensor, height: int, width: int, band_pixels: int | None
) -> Iterator[tuple[slice, PixelOutputs]]:
    """(rows, the `PixelOutputs` of those rows at the output size) for bands of about `band_pixels` pixels.

    band_pixels None: one band on an accelerator (memory there is plentiful and one launch is fastest), bands of
    2^16 pixels on the CPU (the working set of a score, C maps of a band, stays in cache: 2^16 takes four scores
    of a 2048 x 1024 image 15% less time than 2^18 and half the time of one band, and memory stays flat).
    """
    if canvas.shape[0] - 1 > 256:
        raise ValueError(f"{canvas.shape[0] - 1} classes do not fit an 8-bit prediction")
    if band_pixels is None:
        band_pixels = height * width if canvas.device.type != "cpu" else CPU_BAND_PIXELS
    band_rows = max(1, band_pixels // width)
    for top in range(0, height, band_rows):
        rows = slice(top, min(top + band_rows, height))
        yield rows, PixelOutputs.from_stack(resize_rows(canvas, height, width, rows))


def canvas_maps(
    canvas: torch.Tensor,
    height: int,
    width: int,
    confidences: Sequence[str] = ("msp",),
    band_pixels: int | None = CPU_BAND_PIXELS,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Prediction (H, W) uint8 and {name: (H, W) float32 confidence} from a (C+1, H', W') canvas.

    The canvas is resized to (height, width) a band of about `band_pixels` output pixels (whole rows) at a time
    and every score is taken per band (scores are pointwise), so the working memory beyond the canvas and the
    returned maps is O(band_pixels * C) whatever the image size.
    """
    functions = {name: get_confidence(name) for name in confidences}
    prediction = np.empty((height, width), dtype=np.uint8)
    maps = {name: np.empty((height, width), dtype=np.float32) for name in functions}
    for rows, band in _bands(canvas, height, width, band_pixels):
        prediction[rows] = band.prediction.to(torch.uint8).cpu().numpy()
        for name, fn in functions.items():
            maps[name][rows] = fn(band).cpu().numpy()
    return prediction, maps


def canvas_levels(
    canvas: torch.Tensor,
    height: int,
    width: int,
    confidences: Sequence[str] = ("msp",),
    band_pixels: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Prediction (H, W) uint8 and {name: (H, W) uint16 confidence levels} from a (C+1, H', W') canvas.

    Like `canvas_maps`, but the 16-bit quantisation (`eomt_ood.confidence.levels`) also happens on the canvas's
    device, so only the final uint8 / uint16 maps cross to the host. The levels equal
    `quantise_confidence(canvas_maps(...)[1][name])` exactly.
    """
    functions = {name: get_confidence(name) for name in confidences}
    prediction = np.empty((height, width), dtype=np.uint8)
    levels = {name: np.empty((height, width), dtype=np.uint16) for name in functions}
    for rows, band in _bands(canvas, height, width, band_pixels):
        prediction[rows] = band.prediction.to(torch.uint8).cpu().numpy()
        for name, fn in functions.items():
            quantise_tensor(fn(band), out=torch.from_numpy(levels[name][rows]))
    return prediction, levels


def _pick(tensor: torch.Tensor, dim: int, indices: np.ndarray) -> torch.Tensor:
    """`tensor.index_select(dim, indices)`, as a strided view (no gather) when the indices are evenly spaced."""
    steps = np.diff(indices)
    if len(indices) > 1 and steps[0] > 0 and (steps == steps[0]).all():
        return tensor.narrow(dim, int(indices[0]), int(indices[-1]) - int(indices[0]) + 1)[
            (slice(None),) * dim + (slice(None, None, int(steps[0])),)
        ]
    return tensor.index_select(dim, torch.from_numpy(indices).to(tensor.device))


def canvas_top2(canvas: torch.Tensor, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Top-2 classes and their normalised scores s_c / sum_c s_c at a small `shape`, for per-pixel read-outs.

    canvas: (C+1, H', W'). Returns (2, h, w) uint8 class ids and (2, h, w) float16 scores, (h, w) = `shape`
    (the preview size of the image, same aspect). Each preview pixel reads the canvas pixel at its centre (as the
    prediction preview picks its labels), so a read-out's first class is the class shown there.
    """
    height, width = canvas.shape[-2:]
    rows, cols = centre_indices(height, shape[0]), centre_indices(width, shape[1])
    scores = _pick(_pick(canvas[:-1], 1, rows), 2, cols).float().clamp_min(0)  # a copy, never negative
    total = scores.sum(0).clamp_min_(1e-12)
    # The first maximum, as the prediction takes it (ties go to the lower class id), then the first maximum of
    # the others: the two largest scores with the stable order of a sort.
    best, first = first_max(scores)
    scores.scatter_(0, first[None], -1.0)
    runner_up, second = first_max(scores)
    values = torch.stack([best, runner_up]) / total
    classes = torch.stack([first, second])
    return classes.to(torch.uint8).cpu().numpy(), values.to(torch.float16).cpu().numpy()


@dataclass
class ImageLevels:
    """What `stream_levels` makes of one image: the outputs that leave the model's device."""

    prediction: np.ndarray  # (H, W) uint8
    levels: dict[str, np.ndarray]  # {score: (H, W) uint16 levels}
    top2: tuple[np.ndarray, np.ndarray] | None  # `canvas_top2` at the preview size, when asked for
    seconds: float = 0.0  # the model's device's work on it: forward, merge and upsampling, scores, levels


def stream_levels(
    model: nn.Module,
    inputs: Iterable[tuple[Key, np.ndarray | None, int, int]],
    confidences: Sequence[str] = ("msp",),
    micro_batch: int = 4,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    top2: bool = False,
) -> Iterator[tuple[Key, ImageLevels | None]]:
    """(key, `ImageLevels`) for each (key, image, height, width) of `inputs`, in order; an image of None (one that
    could not be read, say) passes through as (key, None).

    image: uint8 (h, w, 3) or (3, h, w), at its own size or already resized for the model; (height, width) is the
    size of the maps made of it. The model must already be prepared (`prepare_model`). The forward
    (`forward_image`) runs in the calling thread; the rest (`merge_outputs`, `canvas_levels`, `canvas_top2`) in
    a second thread, while the next image's forward runs. On a CPU that work takes a second core instead of
    adding to the forward's time (torch's kernels release the GIL); on a GPU the host's copies and Python work
    stay off the forward's path. At most two images' outputs and one canvas are held, so the model must return
    fresh tensors from each call (as eager and default `torch.compile` do; CUDA graphs would overwrite them).
    The maps are those of `canvas_levels` on `predict_canvas`, bit for bit.
    """
    buffers = Buffers()  # used by the second thread only

    def finish(outputs: ModelOutputs, height: int, width: int, forward_seconds: float) -> ImageLevels:
        start = time.perf_counter()
        on = outputs.windows[0][1].device
        # The current CUDA device is per thread: this one works on the GPU the model's outputs are on.
        with torch.cuda.device(on) if on.type == "cuda" else nullcontext():
            canvas = merge_outputs(outputs, buffers)
            prediction, levels = canvas_levels(canvas, height, width, confidences)
            top = canvas_top2(canvas, preview_shape(height, width)) if top2 else None
        return ImageLevels(prediction, levels, top, forward_seconds + time.perf_counter() - start)

    pending: deque = deque()  # (key, future or None), in input order
    in_flight = 0  # futures in `pending`

    def drain() -> Iterator[tuple[Key, ImageLevels | None]]:
        while pending:
            key, future = pending.popleft()
            yield key, (future.result() if future is not None else None)

    inputs = iter(inputs)
    freed = FreedMemory()  # or the process would grow by each image's freed arrays (see there)
    with ThreadPoolExecutor(1, thread_name_prefix="eomt-ood-levels") as scorer:
        try:
            while True:
                freed.check()
                try:
                    entry = next(inputs, None)
                except Exception as error:
                    yield from drain()  # the images before a failing input are finished, then the error
                    raise error
                if entry is None:
                    break
                key, image, height, width = entry
                if image is not None:
                    start = time.perf_counter()
                    outputs = forward_image(model, image, micro_batch, dtype, device)
                    forward_seconds = time.perf_counter() - start
                    pending.append((key, scorer.submit(finish, outputs, height, width, forward_seconds)))
                    in_flight += 1
                else:
                    pending.append((key, None))
                # One image is left in the second thread while the next forward runs; older ones go out in order.
                while in_flight > 1 or (pending and pending[0][1] is None):
                    key, future = pending.popleft()
                    in_flight -= future is not None
                    yield key, (future.result() if future is not None else None)
            yield from drain()
        finally:
            for _, future in pending:  # stopped early (an error, or the caller closed the stream)
                if future is not None:
                    future.cancel()
