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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import eomt_ood
from eomt_ood.bravo.rundir import RunDir, intervals_of, recorded_input, resolve_run_dirs, score_block
from eomt_ood.data.labels import IGNORE, TRAIN_ID_NAMES, colorize_train_ids
from eomt_ood.errors import UserError
from eomt_ood.metrics.histogram import FPR95_TPR, NUM_LEVELS, binary_histograms
from eomt_ood.reports.pictures import (
    GT_COLORS,
    blend,
    colorize_confidence,
    colormap_lut,
    gray_canvas,
    gt_layer,
)
from eomt_ood.store import StoreReader

# Re-exported for the explorer script and the tests: the pictures are the report's (`eomt_ood.reports.pictures`).
__all__ = [
    "GT_COLORS",
    "blend",
    "colorize_confidence",
    "colormap_lut",
    "gray_canvas",
    "gt_layer",
    "resolve_run_dirs",
]

BUNDLED_ASSETS = (
    Path(eomt_ood.__file__).resolve().parent / "assets"
)  # the demo checkpoint lives here; readable
TABLE_METRICS = ("auprc_ood", "fpr95_ood", "miou", "ece")  # the per-image metrics under each picture
OVERLAYS = ("none", "prediction", "confidence", "OOD ground truth", "OOD outcome")
COLORMAPS = ("Viridis", "Inferno", "Cividis", "Greys", "RdYlGn")
# Outcome codes of `outcome_map` and their colours (RGB): TN is left uncoloured.
NOT_EVALUATED, TRUE_NEGATIVE, TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE = range(5)
OUTCOME_NAMES = ("void", "true negative", "true positive", "false positive", "false negative")
OUTCOME_COLORS = np.array([[0, 0, 0], [0, 0, 0], [0, 200, 0], [230, 30, 30], [255, 200, 0]], dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ runs and paths


def is_inside(path: str | Path, roots: Sequence[Path]) -> bool:
    """True when `path`, resolved (symlinks followed), lies inside one of the resolved `roots`."""
    resolved = Path(path).resolve()
    return any(resolved == root or root in resolved.parents for root in roots)


@dataclass
class Run:
    """One opened run folder: its store, results.json (or {}) and config.yaml (or {}).

    Opened once per app process and shared by every session; the per-image tables it reads from the store are
    kept (`stats`, `histograms`, `confusion_matrices`), so a rerun reads only the previews a page shows.
    """

    path: Path
    reader: StoreReader
    results: dict
    config: dict
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def folder(self) -> RunDir:
        return RunDir(self.path)

    def _cached(self, key: tuple, make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def index_of(self, relpath: str) -> int | None:
        """The store index of an input image, None when the run does not have it."""
        lookup = self._cached(("index",), lambda: {r: i for i, r in enumerate(self.reader.relpaths)})
        return lookup.get(relpath)

    def stats(self, score: str) -> dict[str, np.ndarray]:
        """Per-image metrics of `score`: {field: (N,) float64} (read-only arrays; NaN where undefined)."""

        def read() -> dict[str, np.ndarray]:
            stats = self.reader.stats(score)
            for values in stats.values():
                values.flags.writeable = False
            return stats

        return self._cached(("stats", score), read)

    def histograms(self, score: str) -> dict[str, dict[str, np.ndarray]]:
        """The pooled per-subset histograms of `score` (see `StoreReader.histograms`)."""
        return self._cached(("histograms", score), lambda: self.reader.histograms(score))

    def level_histograms(self, score: str) -> dict[str, np.ndarray]:
        return self._cached(("levels", score), lambda: self.reader.level_histograms(score))

    def confusion_matrices(self) -> np.ndarray:
        """(N, 19, 19) int64 per-image confusion matrices (rows: ground truth, columns: prediction)."""
        return self._cached(("cm",), self.reader.confusion_matrices)

    @property
    def subsets(self) -> np.ndarray:
        """(N,) the subset of every stored image, as an object array (for masks)."""
        return self._cached(("subsets",), lambda: np.array(self.reader.subsets, dtype=object))


def open_run(path: Path) -> Run:
    """Open a resolved run folder (see `resolve_run_dirs`); results and config are optional."""
    run = RunDir(path)
    results = run.read_results() if run.results_file.is_file() else {}
    return Run(path, StoreReader(run.store_file), results, run.read_config())


def run_labels(paths: Sequence[str]) -> dict[str, str]:
    """A short label per run folder: its name, or the whole path where two runs share a name."""
    names = [Path(p).name for p in paths]
    return {p: (n if names.count(n) == 1 else p) for p, n in zip(paths, names, strict=True)}


def score_results(results: Mapping, score: str) -> dict:
    """The flat official keys of one confidence score of a results dict ({} when it has none for `score`)."""
    if not results:
        return {}
    try:
        return dict(score_block(results, score)[1])
    except UserError:
        return {}


def score_intervals(results: Mapping, score: str) -> dict[str, tuple[float, float]]:
    """{key: (low, high)}: the bootstrap intervals of one confidence score of a results dict ({} when the run
    has none for `score`, e.g. evaluated with --bootstrap 0)."""
    if not results:
        return {}
    try:
        return intervals_of(results, score)
    except UserError:
        return {}


def allowed_file(
    path: str | Path | None, roots: Sequence[Path], extra_roots: Sequence[Path] = ()
) -> Path | None:
    """`path` resolved, if it is inside `roots` (or `extra_roots`), else None: the app reads nothing else."""
    if path is None or str(path) == "":
        return None
    return Path(path).resolve() if is_inside(path, [*roots, *extra_roots]) else None


def parse_args(argv: Sequence[str]) -> tuple[list[str], list[Path]]:
    """The explorer script's arguments: (run folders, folders allowed for checkpoints).

    `RUN_DIR ... [--allow DIR ...]` (what `eomt-ood app` passes). An allowed folder that does not exist is a
    `UserError`; allowed folders are returned resolved.
    """
    runs: list[str] = []
    allowed: list[Path] = []
    items = list(argv)
    while items:
        item = items.pop(0)
        if item == "--allow":
            if not items:
                raise UserError("--allow: give a folder after it")
            folder = Path(items.pop(0))
            if not folder.is_dir():
                raise UserError(f"--allow {folder}: folder not found")
            allowed.append(folder.resolve())
        else:
            runs.append(item)
    return runs, allowed


def confidence_of_levels(levels: np.ndarray) -> np.ndarray:
    """(...) uint16 levels -> float64 confidences (k + 0.5) / 65536 (docs/metrics.md, "Confidence levels").

    The same formula as `eomt_ood.confidence.levels`; not imported from there because that package imports
    torch, seconds of start-up the explorer does not need until it runs a model."""
    return (np.asarray(levels, dtype=np.float64) + 0.5) / NUM_LEVELS


# ------------------------------------------------------------------------------------------------ maps and colours


def read_maps(
    reader: StoreReader, index: int, scores: Sequence[str] | None = None, top2: bool = True
) -> dict[str, Any]:
    """The preview maps of one image: pred (h, w) uint8; confs {score: (h, w) uint16 levels} (of `scores`, default
    all); gt_label / gt_invalid (h, w) uint8 or None; rgb (h, w, 3) uint8, top2_class (2, h, w) uint8 and
    top2_score (2, h, w) float32, each None when the store lacks it (or, for the top-2, when `top2` is False:
    a thumbnail does not need them)."""
    maps: dict[str, Any] = {"pred": reader.preview(index, "pred")}
    maps["confs"] = {s: reader.preview(index, f"conf/{s}") for s in (scores or reader.confidences)}
    gt = reader.has_ground_truth(index)
    maps["gt_label"] = reader.preview(index, "gt_label") if gt else None
    maps["gt_invalid"] = reader.preview(index, "gt_invalid") if gt else None
    for name in ("rgb", "top2_class", "top2_score"):
        try:
            maps[name] = reader.preview(index, name) if top2 or name == "rgb" else None
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
    gt_root, image = recorded_input(run.config, "gt"), gt_image_of_input(rel)
    if gt_root and image is not None and run.reader.has_ground_truth(index) and gt_root.exists():
        with open_tree(gt_root, "ground truth") as tree:
            if image.label_name in tree and image.mask_name in tree:
                maps["gt_label"] = read_label(tree.read(image.label_name), image.label_name)[region]
                invalid = read_mask(tree.read(image.mask_name), image.mask_name)
                maps["gt_invalid"] = invalid[region].astype(np.uint8)
    maps["rgb"] = None
    images_root = recorded_input(run.config, "images_root")
    if images_root:
        photo = allowed_file(images_root / rel, [images_root.resolve()])
        if photo is not None and photo.is_file():
            maps["rgb"] = read_image(photo)[region]
    return maps


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
    """Doubt (1 - confidence) that doubt level j stands for: (j + 0.5) / 65536; 1 for 65536 (nothing flagged)."""
    return min(1.0, (level + 0.5) / NUM_LEVELS)


def level_of_doubt(doubt: float) -> int:
    """Smallest doubt level whose doubt (j + 0.5) / 65536 is >= `doubt` (the inverse of `doubt_of_level`);
    65536 flags no pixel."""
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


def scored_counts(
    histograms: Mapping[str, np.ndarray], level_histogram: np.ndarray | None
) -> np.ndarray | None:
    """(65536,) counts by confidence level of a subset's scored pixels: invalid + valid (ground truth), else every
    pixel (`level_histograms`, runs without it); None when there are none."""
    if "ood_pos" in histograms and "ood_neg" in histograms:
        counts = np.asarray(histograms["ood_pos"], dtype=np.int64) + np.asarray(
            histograms["ood_neg"], np.int64
        )
        if counts.any():
            return counts
    if level_histogram is not None and np.asarray(level_histogram).any():
        return np.asarray(level_histogram, dtype=np.int64)
    return None


def _chip(rgb: Sequence[int], name: str) -> str:
    r, g, b = (int(v) for v in rgb)
    return (
        f'<span style="display:inline-flex;align-items:center;margin:0 8px 2px 0;font-size:12px">'
        f'<span style="width:11px;height:11px;border-radius:2px;margin-right:4px;background:rgb({r},{g},{b});'
        f'border:1px solid #0003"></span>{name}</span>'
    )


def legend_html(overlay: str, colormap: str = "Viridis") -> str:
    """The colour key of an overlay as HTML (class colours, the confidence scale, GT or outcome colours); "" for
    "none"."""
    from eomt_ood.data.labels import TRAIN_ID_COLORS

    if overlay == "prediction":
        return "".join(_chip(c, n) for c, n in zip(TRAIN_ID_COLORS, TRAIN_ID_NAMES, strict=True))
    if overlay == "confidence":
        lut = colormap_lut(colormap)
        stops = ", ".join(f"rgb({r},{g},{b})" for r, g, b in lut[:: 255 // 8])
        return (
            f'<div style="height:12px;border-radius:2px;background:linear-gradient(to right, {stops})"></div>'
            '<div style="display:flex;justify-content:space-between;font-size:12px">'
            "<span>confidence 0 (doubtful)</span><span>1</span></div>"
        )
    if overlay == "OOD ground truth":
        return _chip(GT_COLORS["invalid"], "invalid (OOD)") + _chip(GT_COLORS["void"], "void (not scored)")
    if overlay == "OOD outcome":
        return (
            _chip(OUTCOME_COLORS[TRUE_POSITIVE], "OOD, flagged (TP)")
            + _chip(OUTCOME_COLORS[FALSE_POSITIVE], "in-distribution, flagged (FP)")
            + _chip(OUTCOME_COLORS[FALSE_NEGATIVE], "OOD, missed (FN)")
            + '<span style="font-size:12px">uncoloured: not flagged in-distribution, or void</span>'
        )
    return ""


# ------------------------------------------------------------------------------------------------ readouts


def class_name(train_id: int) -> str:
    return TRAIN_ID_NAMES[train_id] if 0 <= train_id < len(TRAIN_ID_NAMES) else "void"


def top2_milli(scores: np.ndarray) -> np.ndarray:
    """Top-2 scores in thousandths (int64), as the readouts show them (3 decimals, the same in Python and JS)."""
    return np.rint(np.asarray(scores, dtype=np.float64) * 1000).astype(np.int64)


def pixel_readout(maps: Mapping[str, Any], row: int, col: int) -> dict[str, Any]:
    """What one pixel of the maps holds: predicted class, top-2 classes and scores, every confidence, GT.

    Keys: `pred` (class name), `top2` ([(name, score), (name, score)] or None; scores to 3 decimals),
    `confidence` {score: float}, `gt` (class name or None without GT), `ood` ("invalid" / "valid" / "void" /
    None).
    """
    out: dict[str, Any] = {"pred": class_name(int(maps["pred"][row, col]))}
    if maps.get("top2_class") is not None:
        classes, scores = maps["top2_class"][:, row, col], top2_milli(maps["top2_score"][:, row, col]) / 1000
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
    """A readout as text, one line per part (the same lines the picture's hover shows, `mapview.py`)."""
    lines = [f"pred: {readout['pred']}"]
    if readout["top2"] is not None:
        lines.append("top-2: " + ", ".join(f"{n} {s:.3f}" for n, s in readout["top2"]))
    lines.append(" · ".join(f"{s} {v:.4f}" for s, v in readout["confidence"].items()))
    if readout["gt"] is not None:
        lines.append(f"GT: {readout['gt']} ({readout['ood']})")
    return "\n".join(lines)


def _b64(array: np.ndarray) -> str:
    import base64

    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def readout_grid(maps: Mapping[str, Any], max_side: int = 192) -> dict[str, Any]:
    """The pixel readouts of a strided grid over the maps, as compact arrays for the browser (`mapview.py`).

    Grid point (r, c) is map pixel (r * stride, c * stride); the stride keeps the grid's long side at most
    `max_side`. Arrays are row-major, base64: `pred`, `gt` uint8 class ids (19 = void); `ood` uint8 (0 valid,
    1 invalid, 2 void); `top2_class` (2, rows, cols) uint8; `top2_score` (2, rows, cols) little-endian uint16 in
    thousandths (`top2_milli`); `conf` {score: little-endian uint16 levels}. Absent maps are None.
    """
    height, width = maps["pred"].shape
    stride = max(1, math.ceil(max(height, width) / max_side))
    sub = (slice(0, height, stride), slice(0, width, stride))
    pred = maps["pred"][sub]
    grid: dict[str, Any] = {
        "stride": stride,
        "rows": int(pred.shape[0]),
        "cols": int(pred.shape[1]),
        "names": [*TRAIN_ID_NAMES, "void"],
        "pred": _b64(np.minimum(pred, 19).astype(np.uint8)),
        "conf": {s: _b64(np.asarray(m[sub], dtype="<u2")) for s, m in maps["confs"].items()},
        "top2_class": None,
        "top2_score": None,
        "gt": None,
        "ood": None,
    }
    if maps.get("top2_class") is not None:
        grid["top2_class"] = _b64(np.minimum(maps["top2_class"][(slice(None), *sub)], 19).astype(np.uint8))
        grid["top2_score"] = _b64(top2_milli(maps["top2_score"][(slice(None), *sub)]).astype("<u2"))
    if maps.get("gt_label") is not None:
        label = maps["gt_label"][sub]
        grid["gt"] = _b64(np.minimum(label, 19).astype(np.uint8))
        ood = np.where(label == IGNORE, 2, (maps["gt_invalid"][sub] != 0).astype(np.uint8))
        grid["ood"] = _b64(ood.astype(np.uint8))
    return grid


def picture_source(picture: np.ndarray) -> str:
    """A (h, w, 3) uint8 picture as a PNG data URI (lossless: class colours stay exact)."""
    import base64

    from eomt_ood.data.png import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(np.ascontiguousarray(picture))).decode()


def map_view_data(picture: np.ndarray, grid: Mapping[str, Any] | None, title: str = "") -> dict[str, Any]:
    """The data of one `mapview` picture: the (h, w, 3) picture (PNG) and the readouts of its maps (same h, w)."""
    height, width = picture.shape[:2]
    return {"src": picture_source(picture), "height": height, "width": width, "title": title, "readout": grid}


# ------------------------------------------------------------------------------------------------ zoom


def zoom_region(height: int, width: int, centre: tuple[float, float], zoom: int) -> tuple[slice, slice]:
    """Full-resolution window 1/zoom of the image on each side around `centre` (row, col fractions in [0, 1]),
    shifted to stay inside the image."""
    zoom = max(1, int(zoom))
    win_h, win_w = max(1, height // zoom), max(1, width // zoom)
    top = int(np.clip(round(centre[0] * height - win_h / 2), 0, height - win_h))
    left = int(np.clip(round(centre[1] * width - win_w / 2), 0, width - win_w))
    return slice(top, top + win_h), slice(left, left + win_w)


# ------------------------------------------------------------------------------------------------ metrics


def metric_table_rows(
    flat: Mapping[str, Any],
    subsets: Sequence[str],
    intervals: Mapping[str, Sequence[float]] | None = None,
) -> list[dict[str, str]]:
    """Per-subset rows of the official metrics of one score's results, as text ("–" where a metric is missing
    or undefined) followed by the bootstrap interval from `intervals` ({key: (low, high)}) where there is one,
    for a table; subsets without any metric are left out."""
    from eomt_ood.reports.plots import METRIC_COLUMNS, format_interval

    intervals = intervals or {}
    rows = []
    for subset in subsets:
        keys = {m: f"{subset}_{m}" for m in METRIC_COLUMNS}
        if any(key in flat for key in keys.values()):
            cells = {
                m: format_interval(flat.get(key), intervals.get(key), html=False) for m, key in keys.items()
            }
            rows.append({"subset": subset} | cells)
    return rows


# ------------------------------------------------------------------------------------------------ your own image


CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")


def model_source(
    config: Mapping, roots: Sequence[Path], allowed: Sequence[Path] = ()
) -> tuple[str | None, Path | None]:
    """(model name or None, checkpoint path or None) from a run's config.yaml, refusing a checkpoint outside the
    run folders, the folders allowed with `--allow` and the package's bundled assets (`UserError`)."""
    model = config.get("model")
    checkpoint = recorded_input(config, "checkpoint")
    if checkpoint is None and config.get("checkpoint"):
        raise UserError(
            f"{config['checkpoint']}: the run recorded its checkpoint relative to a folder it did not record; "
            "not read"
        )
    if checkpoint is None:
        if model is None:
            raise UserError("config.yaml: the run names neither a model nor a checkpoint")
        return str(model), None
    found = allowed_file(checkpoint, roots, [*allowed, BUNDLED_ASSETS])
    if found is None:
        raise UserError(
            f"{checkpoint}: checkpoint outside the folders given to the app; not read "
            "(allow its folder with `eomt-ood app --allow DIR`)"
        )
    if not found.exists():
        raise UserError(f"{checkpoint}: checkpoint not found")
    return (str(model) if model is not None else None), found


def checkpoint_choices(allowed: Sequence[Path], limit: int = 200) -> list[Path]:
    """Checkpoint files (`CHECKPOINT_SUFFIXES`) under the allowed folders, resolved, sorted, at most `limit`;
    a link that leads out of the allowed folders is left out."""
    found: list[Path] = []
    for folder in allowed:
        for path in sorted(folder.rglob("*")):
            if path.suffix in CHECKPOINT_SUFFIXES and path.is_file() and is_inside(path, allowed):
                resolved = path.resolve()
                if resolved not in found:
                    found.append(resolved)
            if len(found) >= limit:
                return found
    return found


def own_model_source(
    config: Mapping, checkpoint: Path | None, roots: Sequence[Path], allowed: Sequence[Path]
) -> tuple[str | None, Path | None]:
    """What "Your image" runs: the run's own model (`checkpoint` None, see `model_source`), or a checkpoint chosen
    from the allowed folders. An eomt-ood checkpoint names its model; any other is loaded into the run's model.
    A file outside the allowed folders is a `UserError` and is not read."""
    from eomt_ood.bravo.rundir import checkpoint_model_record

    if checkpoint is None:
        return model_source(config, roots, allowed)
    found = allowed_file(checkpoint, allowed)
    if found is None:
        raise UserError(f"{checkpoint}: outside the folders allowed with --allow; not read")
    if not found.is_file():
        raise UserError(f"{checkpoint}: checkpoint not found")
    if checkpoint_model_record(found) is not None:
        return None, found
    model = config.get("model")
    if model is None:
        raise UserError(
            f"{checkpoint}: not an eomt-ood checkpoint, and the run names no model to load it into"
        )
    return str(model), found


def build_model(model: str | None, checkpoint: Path | None):
    """The run's model in eval mode (`eomt_ood.models.build_model`)."""
    from eomt_ood import models

    if model is None and checkpoint is None:
        raise UserError("config.yaml: the run names neither a model nor a checkpoint")
    return models.build_model(model, checkpoint).eval()


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
