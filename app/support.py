"""Pure functions behind the Streamlit confidence explorer (`app/explorer.py`, `eomt-ood app`).

Everything the app shows is computed here, so it is testable without Streamlit: opening runs (and refusing
paths outside the folders given on the command line), overlays and colour maps, per-pixel readouts, the OOD
threshold at TPR 95 %, the image table, and curves drawn from the stored histograms.

Conventions (docs/metrics.md): a confidence level k (uint16) stands for confidence (k + 0.5) / 65536, higher = more
in-distribution. The OOD score is the *doubt*, level j = 65535 - k, i.e. doubt (j + 0.5) / 65536 = 1 - confidence;
a pixel is flagged OOD when its doubt level is >= the threshold level. OOD positives are the invalid non-void
pixels (`gt_invalid`), negatives the valid non-void ones; void pixels (`gt_label == 255`) are not evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

import eomt_ood
from eomt_ood.bravo.rundir import RunDir, resolve_run_dirs, score_block
from eomt_ood.bravo.scoring import lower_is_better
from eomt_ood.confidence.levels import confidence_of_levels
from eomt_ood.data.labels import IGNORE, TRAIN_ID_NAMES, colorize_train_ids
from eomt_ood.errors import UserError
from eomt_ood.metrics.histogram import FPR95_TPR, NUM_LEVELS, binary_histograms
from eomt_ood.store import StoreReader

__all__ = ["confidence_of_levels", "resolve_run_dirs"]  # re-exported for the explorer script

BUNDLED_ASSETS = (
    Path(eomt_ood.__file__).resolve().parent / "assets"
)  # the demo checkpoint lives here; readable
TABLE_METRICS = ("auprc_ood", "fpr95_ood", "miou", "ece")
OVERLAYS = ("none", "prediction", "confidence", "OOD ground truth", "OOD outcome")
COLORMAPS = ("Viridis", "Inferno", "Cividis", "Greys", "RdYlGn")
# Outcome codes of `outcome_map` and their colours (RGB): TN is left uncoloured.
NOT_EVALUATED, TRUE_NEGATIVE, TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE = range(5)
OUTCOME_NAMES = ("void", "true negative", "true positive", "false positive", "false negative")
OUTCOME_COLORS = np.array([[0, 0, 0], [0, 0, 0], [0, 200, 0], [230, 30, 30], [255, 200, 0]], dtype=np.uint8)
GT_COLORS = {"invalid": (255, 0, 255), "void": (40, 40, 40)}


# ------------------------------------------------------------------------------------------------ runs and paths


def is_inside(path: str | Path, roots: Sequence[Path]) -> bool:
    """True when `path`, resolved (symlinks followed), lies inside one of the resolved `roots`."""
    resolved = Path(path).resolve()
    return any(resolved == root or root in resolved.parents for root in roots)


@dataclass
class Run:
    """One opened run folder: its store, results.json (or {}) and config.yaml (or {})."""

    path: Path
    reader: StoreReader
    results: dict
    config: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def folder(self) -> RunDir:
        return RunDir(self.path)


def open_run(path: Path) -> Run:
    """Open a resolved run folder (see `resolve_run_dirs`); results and config are optional."""
    run = RunDir(path)
    results = run.read_results() if run.results_file.is_file() else {}
    return Run(path, StoreReader(run.store_file), results, run.read_config())


def score_results(results: Mapping, score: str) -> dict:
    """The flat official keys of one confidence score of a results dict ({} when it has none for `score`)."""
    if not results:
        return {}
    try:
        return dict(score_block(results, score)[1])
    except UserError:
        return {}


def allowed_file(
    path: str | Path | None, roots: Sequence[Path], extra_roots: Sequence[Path] = ()
) -> Path | None:
    """`path` resolved, if it is inside `roots` (or `extra_roots`), else None: the app reads nothing else."""
    if path is None or str(path) == "":
        return None
    return Path(path).resolve() if is_inside(path, [*roots, *extra_roots]) else None


# ------------------------------------------------------------------------------------------------ image table


def image_rows(reader: StoreReader, score: str | None = None) -> list[dict[str, Any]]:
    """One dict per stored image: index, subset, image (relpath) and its metrics of `score` (NaN if absent)."""
    stats = reader.stats(score)
    rows = []
    for i, (relpath, subset) in enumerate(zip(reader.relpaths, reader.subsets, strict=True)):
        row: dict[str, Any] = {"index": i, "subset": subset, "image": relpath}
        for key in TABLE_METRICS:
            row[key] = float(stats[key][i]) if key in stats else math.nan
        rows.append(row)
    return rows


def worst_first(rows: Sequence[Mapping], metric: str, subset: str | None = None) -> list[dict]:
    """Rows of `subset` (all when None) sorted worst first by `metric`; NaN values go last, ties keep order.

    Worst = lowest AUPRC / mIoU, highest FPR95 / ECE.
    """
    picked = [dict(r) for r in rows if subset in (None, r["subset"])]
    higher_is_worse = lower_is_better(metric)

    def key(row: Mapping) -> tuple[int, float]:
        value = float(row.get(metric, math.nan))
        if math.isnan(value):
            return (1, 0.0)
        return (0, -value if higher_is_worse else value)

    return sorted(picked, key=key)


# ------------------------------------------------------------------------------------------------ maps and colours


def read_maps(reader: StoreReader, index: int) -> dict[str, Any]:
    """The preview maps of one image: pred (h, w) uint8; confs {score: (h, w) uint16 levels}; gt_label /
    gt_invalid (h, w) uint8 or None; rgb (h, w, 3) uint8, top2_class (2, h, w) uint8 and top2_score (2, h, w)
    float32, each None when the store lacks it."""
    maps: dict[str, Any] = {"pred": reader.preview(index, "pred")}
    maps["confs"] = {s: reader.preview(index, f"conf/{s}") for s in reader.confidences}
    gt = reader.has_ground_truth(index)
    maps["gt_label"] = reader.preview(index, "gt_label") if gt else None
    maps["gt_invalid"] = reader.preview(index, "gt_invalid") if gt else None
    for name in ("rgb", "top2_class", "top2_score"):
        try:
            maps[name] = reader.preview(index, name)
        except KeyError:
            maps[name] = None
    if maps["top2_score"] is not None:
        maps["top2_score"] = maps["top2_score"].astype(np.float32)
    return maps


def read_region(run: Run, index: int, region: tuple[slice, slice]) -> dict[str, Any]:
    """Full-resolution maps of one image inside `region`: pred and every score's confidence from the run's own
    PNGs; the ground truth and the photo from the folders the run names in its config.yaml (`gt`,
    `images_root`). Those live outside the run folder and are read because the run names them, and only files
    that resolve inside them (no `..`, no link out). Same keys as `read_maps`; what is not there is None."""
    from eomt_ood.bravo.layout import (
        gt_image_of_input,
        open_tree,
        read_conf,
        read_label,
        read_mask,
        read_pred,
    )
    from eomt_ood.data.images import read_image

    folder, rel = run.folder, run.reader.relpaths[index]
    maps: dict[str, Any] = {"top2_class": None, "top2_score": None, "gt_label": None, "gt_invalid": None}
    pred_path = folder.pred_file(rel)
    maps["pred"] = read_pred(pred_path.read_bytes(), str(pred_path))[region]
    maps["confs"] = {}
    for n, score in enumerate(run.reader.confidences):
        path = folder.conf_file(rel, score, n == 0)
        maps["confs"][score] = read_conf(path.read_bytes(), str(path))[region]
    gt_root, image = run.config.get("gt"), gt_image_of_input(rel)
    if gt_root and image is not None and run.reader.has_ground_truth(index) and Path(gt_root).exists():
        with open_tree(gt_root, "ground truth") as tree:
            if image.label_name in tree and image.mask_name in tree:
                maps["gt_label"] = read_label(tree.read(image.label_name), image.label_name)[region]
                invalid = read_mask(tree.read(image.mask_name), image.mask_name)
                maps["gt_invalid"] = invalid[region].astype(np.uint8)
    maps["rgb"] = None
    images_root = run.config.get("images_root")
    if images_root:
        photo = allowed_file(Path(images_root) / rel, [Path(images_root).resolve()])
        if photo is not None and photo.is_file():
            maps["rgb"] = read_image(photo)[region]
    return maps


@lru_cache(maxsize=16)
def colormap_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table sampled from a plotly named colour scale (low -> high)."""
    from plotly.colors import get_colorscale, sample_colorscale, unlabel_rgb

    colors = sample_colorscale(get_colorscale(name), np.linspace(0.0, 1.0, 256), colortype="rgb")
    lut = np.array([unlabel_rgb(c) for c in colors], dtype=np.float64).round().astype(np.uint8)
    lut.flags.writeable = False
    return lut


def colorize_confidence(levels: np.ndarray, colormap: str = "Viridis") -> np.ndarray:
    """(h, w) uint16 confidence levels -> (h, w, 3) uint8, low confidence at the colour scale's low end."""
    return colormap_lut(colormap)[np.asarray(levels, dtype=np.uint16) >> 8]


def gray_canvas(shape: tuple[int, int]) -> np.ndarray:
    """A mid-grey (h, w, 3) uint8 base for when the photo is not available."""
    return np.full((*shape, 3), 128, dtype=np.uint8)


def blend(base: np.ndarray, layer: np.ndarray, opacity: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Alpha-blend `layer` over `base` (both (h, w, 3) uint8) with `opacity` in [0, 1], only where `mask`."""
    if base.shape != layer.shape:
        raise ValueError(f"base {base.shape} and layer {layer.shape} differ in shape")
    alpha = float(np.clip(opacity, 0.0, 1.0))
    mixed = base.astype(np.float32) * (1.0 - alpha) + layer.astype(np.float32) * alpha
    out = np.rint(mixed).astype(np.uint8)
    if mask is not None:
        out = np.where(mask[..., None], out, base)
    return out


def gt_layer(gt_label: np.ndarray, gt_invalid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(layer (h, w, 3) uint8, mask (h, w) bool) marking invalid non-void pixels (magenta) and void (dark)."""
    void = gt_label == IGNORE
    invalid = (gt_invalid != 0) & ~void
    layer = np.zeros((*gt_label.shape, 3), dtype=np.uint8)
    layer[invalid] = GT_COLORS["invalid"]
    layer[void] = GT_COLORS["void"]
    return layer, invalid | void


def compose(
    maps: Mapping[str, Any],
    overlay: str,
    opacity: float,
    score: str,
    colormap: str = "Viridis",
    threshold_level: int | None = None,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """The picture shown: `base` (default the stored photo preview, else grey) with one overlay of `OVERLAYS`.

    Overlays that need ground truth (or a threshold) leave the base unchanged when it is missing.
    """
    shape = maps["pred"].shape
    if base is None:
        photo = maps.get("rgb")
        base = photo if photo is not None else gray_canvas(shape)
    has_gt = maps.get("gt_label") is not None
    if overlay == "prediction":
        return blend(base, colorize_train_ids(maps["pred"]), opacity)
    if overlay == "confidence":
        return blend(base, colorize_confidence(maps["confs"][score], colormap), opacity)
    if overlay == "OOD ground truth" and has_gt:
        layer, mask = gt_layer(maps["gt_label"], maps["gt_invalid"])
        return blend(base, layer, opacity, mask)
    if overlay == "OOD outcome" and has_gt and threshold_level is not None:
        codes = outcome_map(maps["confs"][score], maps["gt_label"], maps["gt_invalid"], threshold_level)
        mask = codes >= TRUE_POSITIVE
        return blend(base, OUTCOME_COLORS[codes], opacity, mask)
    if overlay not in OVERLAYS:
        raise ValueError(f"unknown overlay {overlay!r}; available: {', '.join(OVERLAYS)}")
    return base


# ------------------------------------------------------------------------------------------------ OOD threshold


def doubt_levels(conf_levels: np.ndarray) -> np.ndarray:
    """(...) uint16 confidence levels k -> int64 doubt levels 65535 - k (higher = more likely OOD)."""
    return (NUM_LEVELS - 1) - np.asarray(conf_levels, dtype=np.int64)


def doubt_of_level(level: int) -> float:
    """Doubt (1 - confidence) that doubt level j stands for: (j + 0.5) / 65536."""
    return (level + 0.5) / NUM_LEVELS


def level_of_doubt(doubt: float) -> int:
    """Smallest doubt level whose doubt (j + 0.5) / 65536 is >= `doubt` (the inverse of `doubt_of_level`)."""
    return int(np.clip(math.ceil(doubt * NUM_LEVELS - 0.5), 0, NUM_LEVELS))


@dataclass(frozen=True)
class Threshold:
    """The OOD operating point at TPR >= 95 %: flag pixels whose doubt level is >= `level`."""

    level: int
    tpr: float
    fpr: float

    @property
    def doubt(self) -> float:
        return doubt_of_level(self.level)


def tpr95_threshold(ood_pos: np.ndarray, ood_neg: np.ndarray) -> Threshold | None:
    """Highest doubt threshold whose TPR reaches 95 % (the FPR95 point of docs/metrics.md §5, ties pessimistic).

    ood_pos / ood_neg: (65536,) counts of invalid / valid pixels **indexed by confidence level** (the store's
    histograms). Returns None when there are no positives or no negatives.
    """
    pos = np.asarray(ood_pos, dtype=np.int64)[::-1]  # now indexed by doubt level
    neg = np.asarray(ood_neg, dtype=np.int64)[::-1]
    num_pos, num_neg = int(pos.sum()), int(neg.sum())
    if num_pos == 0 or num_neg == 0:
        return None
    levels = np.flatnonzero(pos + neg)[::-1]  # non-empty doubt levels, most doubtful first
    tpr = np.cumsum(pos[levels]) / num_pos
    fpr = np.cumsum(neg[levels]) / num_neg
    i = int(np.argmax(tpr >= FPR95_TPR))
    return Threshold(level=int(levels[i]), tpr=float(tpr[i]), fpr=float(fpr[i]))


def image_ood_histograms(
    conf_levels: np.ndarray, gt_label: np.ndarray, gt_invalid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(ood_pos, ood_neg) of one image's maps, (65536,) int64 indexed by confidence level, void excluded."""
    keep = gt_label != IGNORE
    return binary_histograms(np.asarray(conf_levels)[keep], (np.asarray(gt_invalid) != 0)[keep])


def outcome_map(
    conf_levels: np.ndarray, gt_label: np.ndarray, gt_invalid: np.ndarray, threshold_level: int
) -> np.ndarray:
    """(h, w) uint8 outcome codes of OOD detection at a doubt threshold (see `NOT_EVALUATED` ... `FALSE_NEGATIVE`).

    flagged = doubt level >= threshold_level; positive = invalid, non-void; void pixels are `NOT_EVALUATED`.
    """
    flagged = doubt_levels(conf_levels) >= threshold_level
    positive = np.asarray(gt_invalid) != 0
    codes = np.where(
        positive,
        np.where(flagged, TRUE_POSITIVE, FALSE_NEGATIVE),
        np.where(flagged, FALSE_POSITIVE, TRUE_NEGATIVE),
    ).astype(np.uint8)
    codes[np.asarray(gt_label) == IGNORE] = NOT_EVALUATED
    return codes


def outcome_counts(codes: np.ndarray) -> dict[str, int]:
    """Pixels per outcome name (void included), from `outcome_map` codes."""
    counts = np.bincount(codes.ravel(), minlength=len(OUTCOME_NAMES))
    return {name: int(c) for name, c in zip(OUTCOME_NAMES, counts, strict=True)}


# ------------------------------------------------------------------------------------------------ readouts


def class_name(train_id: int) -> str:
    return TRAIN_ID_NAMES[train_id] if 0 <= train_id < len(TRAIN_ID_NAMES) else "void"


def pixel_readout(maps: Mapping[str, Any], row: int, col: int) -> dict[str, Any]:
    """What one pixel of the maps holds: predicted class, top-2 classes and scores, every confidence, GT.

    Keys: `pred` (class name), `top2` ([(name, score), (name, score)] or None), `confidence` {score: float},
    `gt` (class name or None without GT), `ood` ("invalid" / "valid" / "void" / None).
    """
    out: dict[str, Any] = {"pred": class_name(int(maps["pred"][row, col]))}
    if maps.get("top2_class") is not None:
        classes, scores = maps["top2_class"][:, row, col], maps["top2_score"][:, row, col]
        out["top2"] = [(class_name(int(c)), float(s)) for c, s in zip(classes, scores, strict=True)]
    else:
        out["top2"] = None
    out["confidence"] = {s: float(confidence_of_levels(m[row, col])) for s, m in maps["confs"].items()}
    if maps.get("gt_label") is not None:
        label = int(maps["gt_label"][row, col])
        out["gt"] = class_name(label)
        out["ood"] = "void" if label == IGNORE else ("invalid" if maps["gt_invalid"][row, col] else "valid")
    else:
        out["gt"] = out["ood"] = None
    return out


def format_readout(readout: Mapping[str, Any]) -> str:
    """A readout as hover text (plotly `<br>` line breaks)."""
    lines = [f"pred: {readout['pred']}"]
    if readout["top2"] is not None:
        lines.append("top-2: " + ", ".join(f"{n} {s:.3f}" for n, s in readout["top2"]))
    lines.append(" · ".join(f"{s} {v:.4f}" for s, v in readout["confidence"].items()))
    if readout["gt"] is not None:
        lines.append(f"GT: {readout['gt']} ({readout['ood']})")
    return "<br>".join(lines)


def hover_grid(maps: Mapping[str, Any], max_side: int = 192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hover text on a strided grid of the maps: (rows (m,), cols (n,), text (m, n) object array).

    The stride keeps the grid's long side at most `max_side`, so a figure stays small whatever the image size.
    """
    height, width = maps["pred"].shape
    stride = max(1, math.ceil(max(height, width) / max_side))
    rows, cols = np.arange(0, height, stride), np.arange(0, width, stride)
    sub = (rows[:, None], cols[None, :])
    names = np.array((*TRAIN_ID_NAMES, "void"))  # any id >= 19 reads as void
    parts = [np.char.add("pred: ", names[np.minimum(maps["pred"][sub], 19)])]
    if maps.get("top2_class") is not None:
        classes = np.minimum(maps["top2_class"][:, rows[:, None], cols[None, :]], 19)
        scores = maps["top2_score"][:, rows[:, None], cols[None, :]]
        text = np.char.add("<br>top-2: ", names[classes[0]])
        text = np.char.add(np.char.add(text, " "), np.char.mod("%.3f", scores[0]))
        text = np.char.add(np.char.add(text, ", "), names[classes[1]])
        parts.append(np.char.add(np.char.add(text, " "), np.char.mod("%.3f", scores[1])))
    confs = [
        np.char.add(f"{s} ", np.char.mod("%.4f", confidence_of_levels(m[sub])))
        for s, m in maps["confs"].items()
    ]
    line = confs[0]
    for extra in confs[1:]:
        line = np.char.add(np.char.add(line, " · "), extra)
    parts.append(np.char.add("<br>", line))
    if maps.get("gt_label") is not None:
        label = maps["gt_label"][sub]
        ood = np.where(label == IGNORE, "void", np.where(maps["gt_invalid"][sub] != 0, "invalid", "valid"))
        gt = np.char.add(np.char.add("<br>GT: ", names[np.minimum(label, 19)]), " (")
        parts.append(np.char.add(np.char.add(gt, ood), ")"))
    text = parts[0]
    for part in parts[1:]:
        text = np.char.add(text, part)
    return rows, cols, text.astype(object)


def picture_source(picture: np.ndarray) -> str:
    """A (h, w, 3) uint8 picture as a PNG data URI: a fraction of the size of the pixel list in a figure."""
    import base64

    from eomt_ood.data.png import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(np.ascontiguousarray(picture))).decode()


def image_figure(
    picture: np.ndarray,
    hover: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    title: str = "",
):
    """Plotly figure of a (h, w, 3) uint8 picture; with `hover` (a `hover_grid` of maps of the same h, w),
    hovering shows the pixel readouts."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Image(source=picture_source(picture), hoverinfo="skip"))
    if hover is not None:
        rows, cols, text = hover
        fig.add_trace(
            go.Heatmap(
                x=cols,
                y=rows,
                z=np.zeros(text.shape, dtype=np.uint8),
                text=text,
                hovertemplate="row %{y}, col %{x}<br>%{text}<extra></extra>",
                colorscale=[[0, "rgba(0,0,0,0)"], [1, "rgba(0,0,0,0)"]],
                showscale=False,
            )
        )
    height, width = picture.shape[:2]
    fig.update_layout(
        title=title or None,
        margin={"l": 0, "r": 0, "t": 30 if title else 0, "b": 0},
        height=max(200, min(700, round(700 * height / max(width, 1)) + (30 if title else 0))),
    )
    fig.update_xaxes(visible=False, range=[-0.5, width - 0.5])
    fig.update_yaxes(visible=False, range=[height - 0.5, -0.5], scaleanchor="x")
    return fig


# ------------------------------------------------------------------------------------------------ zoom


def zoom_region(height: int, width: int, centre: tuple[float, float], zoom: int) -> tuple[slice, slice]:
    """Full-resolution window 1/zoom of the image on each side around `centre` (row, col fractions in [0, 1]),
    shifted to stay inside the image."""
    zoom = max(1, int(zoom))
    win_h, win_w = max(1, height // zoom), max(1, width // zoom)
    top = int(np.clip(round(centre[0] * height - win_h / 2), 0, height - win_h))
    left = int(np.clip(round(centre[1] * width - win_w / 2), 0, width - win_w))
    return slice(top, top + win_h), slice(left, left + win_w)


# ------------------------------------------------------------------------------------------------ curves


def curve_figures(histograms: Mapping[str, Mapping[str, np.ndarray]]):
    """(OOD PR/ROC figure or None, reliability figure or None) of one score's stored subset histograms.

    Drawn by `eomt_ood.reports.plots` from the histograms only: nothing is recomputed per pixel.
    """
    from eomt_ood.reports.plots import ood_curves, reliability_diagrams

    return ood_curves(histograms), reliability_diagrams(histograms)


def subset_metric_rows(flat: Mapping[str, Any], subsets: Sequence[str]) -> list[dict[str, Any]]:
    """Per-subset rows of the official metrics present in `flat` (one score's results), for a table."""
    from eomt_ood.reports.plots import METRIC_COLUMNS

    rows = []
    for subset in subsets:
        row: dict[str, Any] = {"subset": subset}
        row.update({m: flat[f"{subset}_{m}"] for m in METRIC_COLUMNS if f"{subset}_{m}" in flat})
        if len(row) > 1:
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ your own image


def model_source(config: Mapping, roots: Sequence[Path]) -> tuple[str | None, Path | None]:
    """(model name or None, checkpoint path or None) from a run's config.yaml, refusing a checkpoint outside the
    given folders and the package's bundled assets (`UserError`)."""
    model = config.get("model")
    checkpoint = config.get("checkpoint")
    if checkpoint is None:
        if model is None:
            raise UserError("config.yaml: the run names neither a model nor a checkpoint")
        return str(model), None
    allowed = allowed_file(checkpoint, roots, [BUNDLED_ASSETS])
    if allowed is None:
        raise UserError(f"{checkpoint}: checkpoint outside the folders given to the app; not read")
    if not allowed.exists():
        raise UserError(f"{checkpoint}: checkpoint not found")
    return (str(model) if model is not None else None), allowed


def build_model(model: str | None, checkpoint: Path | None):
    """The run's model in eval mode: `create_model(model, checkpoint=...)`, or `load_model(checkpoint)`."""
    from eomt_ood.models import create_model, load_model

    if model is None and checkpoint is None:
        raise UserError("config.yaml: the run names neither a model nor a checkpoint")
    net = create_model(model, checkpoint=checkpoint) if model is not None else load_model(checkpoint)  # type: ignore[arg-type]
    return net.eval()


def predict_own_image(model, image: np.ndarray, confidences: Sequence[str]) -> dict[str, Any]:
    """Predict a (H, W, 3) uint8 image; returns maps shaped like `read_maps` (levels, no GT, no top-2)."""
    from eomt_ood.inference.predict import canvas_levels, predict_canvas, prepare_model

    canvas = predict_canvas(prepare_model(model), image)
    pred, levels = canvas_levels(canvas, image.shape[0], image.shape[1], confidences)
    return {
        "pred": pred,
        "confs": levels,
        "gt_label": None,
        "gt_invalid": None,
        "rgb": image,
        "top2_class": None,
        "top2_score": None,
    }


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """An uploaded image file's bytes -> (H, W, 3) uint8 RGB; unreadable -> `UserError`."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.ascontiguousarray(np.asarray(img.convert("RGB")))
    except Exception as exc:  # Pillow raises many types for unreadable files
        raise UserError(f"{name}: unreadable image ({exc})") from None
