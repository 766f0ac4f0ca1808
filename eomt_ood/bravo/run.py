"""`eomt-ood evaluate --dataset bravo`: images -> model -> raw submission -> scores, store, report.

A run directory holds everything one evaluation produced::

    RUN_DIR/submission/...             the raw BRAVO tree (8-bit _pred.png, 16-bit _conf.png of the first score)
    RUN_DIR/confidence/<score>/...     16-bit _conf.png of every further confidence score
    RUN_DIR/previews/<image>.npz       top-2 class ids and normalised scores at preview size (for the app)
    RUN_DIR/results.json               official keys (one block per score when several), plus `meta`
    RUN_DIR/predictions.h5             the HDF5 store (`eomt_ood.store`)
    RUN_DIR/report.html                plotly report
    RUN_DIR/config.yaml                the resolved configuration

Two phases. Inference writes each image's files atomically, preview last, so an interrupted run resumes at
the first image without a preview. Scoring then re-reads the submission and the ground truth and computes
everything with the functions of `eomt_ood.bravo.evaluate`, so its numbers equal `eomt-ood score` on the same
submission and do not depend on where an earlier run stopped.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from eomt_ood.bravo.submission import quantise_confidence, raw_names, write_raw_pair
from eomt_ood.data.png import write_png
from eomt_ood.errors import UserError

DEMO_VERSION = 1
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "demo" / "eomt_demo.safetensors"
DEMO_RUN_DIR = Path("runs/bravo-demo")


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything `evaluate_bravo` needs; written to RUN_DIR/config.yaml."""

    out: Path = DEMO_RUN_DIR
    images_root: Path | None = None  # the BRAVO input tree (bravo_ACDC/..., bravo_synobjs/...)
    gt: Path | None = None  # ground-truth folder or tar; None: no scoring
    model: str | None = None  # registered name; None: taken from the checkpoint's metadata
    checkpoint: Path | None = None
    confidences: tuple[str, ...] = ("msp",)
    samples: Path | None = None  # bravo_SAMPLING.tar for the official pixel sample when scoring
    device: str = "cpu"
    precision: str = "fp32"
    micro_batch: int = 4
    workers: int = 2  # image-reading worker processes during inference
    demo: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ the demo


def demo_data_dir() -> Path:
    """Where the generated demo set lives (`$XDG_CACHE_HOME/eomt-ood`, else ~/.cache/eomt-ood)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "eomt-ood" / f"bravo-demo-v{DEMO_VERSION}"


def ensure_demo_data() -> Path:
    """Generate the demo BRAVO set once (deterministic); returns its folder with `images/` and `gt/`."""
    from eomt_ood.data.demo import write_demo

    folder = demo_data_dir()
    marker = folder / "COMPLETE"
    if not marker.is_file():
        print(f"writing the demo BRAVO set to {folder} (once) ...", file=sys.stderr)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        write_demo(tmp)
        (tmp / "COMPLETE").write_text("demo set complete\n")
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        tmp.rename(folder)
    return folder


def demo_config(out: Path | None = None, **changes: Any) -> EvaluateConfig:
    """The bundled demo: generated BRAVO-layout images and GT, and the committed demo checkpoint."""
    if not DEMO_CHECKPOINT.is_file():
        raise UserError(f"{DEMO_CHECKPOINT}: the bundled demo checkpoint is missing from this installation")
    folder = ensure_demo_data()
    config = EvaluateConfig(
        out=out or DEMO_RUN_DIR,
        images_root=folder / "images",
        gt=folder / "gt",
        checkpoint=DEMO_CHECKPOINT,
        demo=True,
    )
    return replace(config, **changes)


def ensure_demo_run() -> Path:
    """The demo's run directory, evaluated first if it has no results yet (used by `eomt-ood app`)."""
    if not (DEMO_RUN_DIR / "predictions.h5").is_file():
        evaluate_bravo(demo_config())
    return DEMO_RUN_DIR


# ------------------------------------------------------------------------------------------------ inference


def _load_model(config: EvaluateConfig):
    from eomt_ood.models import create_model
    from eomt_ood.models.checkpoints import load_model

    if config.model is None and config.checkpoint is None:
        raise UserError("--model or --checkpoint is needed (or neither, for the bundled demo)")
    if config.model is None:
        assert config.checkpoint is not None
        return load_model(config.checkpoint)
    return create_model(config.model, checkpoint=config.checkpoint)


def _identity(item):
    return item


class _ImageReader:
    """Map-style dataset reading input images in DataLoader workers: index -> (rel, image or error text)."""

    def __init__(self, root: Path, rels: Sequence[str]):
        self.root, self.rels = root, list(rels)

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray | str]:
        from eomt_ood.data.images import read_image

        rel = self.rels[index]
        try:
            return rel, read_image(self.root / rel)
        except UserError as exc:
            return rel, str(exc)


def preview_file(run_dir: Path, rel: str) -> Path:
    return run_dir / "previews" / f"{rel}.npz"


def confidence_file(run_dir: Path, score: str, rel: str) -> Path:
    return run_dir / "confidence" / score / raw_names(rel)[1]


def _image_done(run_dir: Path, rel: str) -> bool:
    # The preview is written last, after the submission pair and every further score's map.
    return preview_file(run_dir, rel).is_file()


# What the files of a finished image depend on: resuming with other values would mix two runs in one submission.
_OUTPUT_SETTINGS = ("images_root", "model", "checkpoint", "confidences", "precision")


def _check_resume(config: EvaluateConfig) -> None:
    """Refuse to resume into a run directory whose finished images were made with other settings."""
    import yaml

    from eomt_ood.config import to_dict

    path = config.out / "config.yaml"
    if not path.is_file() or not (config.out / "previews").is_dir():
        return
    try:
        before = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{path}: unreadable; delete the run directory or choose another --out") from None
    now = to_dict(config)
    for key in _OUTPUT_SETTINGS:
        if before.get(key) != now[key]:
            raise UserError(
                f"{config.out}: holds a run made with {key} = {before.get(key)!r}, not {now[key]!r}; resuming would "
                "mix the two, so choose another --out or delete it"
            )


def _write_outputs(
    run_dir: Path,
    rel: str,
    prediction: np.ndarray,
    maps: dict[str, np.ndarray],
    scores: Sequence[str],
    top2: tuple[np.ndarray, np.ndarray],
) -> None:
    write_raw_pair(run_dir / "submission", rel, prediction, quantise_confidence(maps[scores[0]]))
    for score in scores[1:]:
        write_png(confidence_file(run_dir, score, rel), quantise_confidence(maps[score]))
    path = preview_file(run_dir, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, top2_class=top2[0], top2_score=top2[1])
    os.replace(tmp, path)


def run_inference(config: EvaluateConfig, rels: Sequence[str], progress: bool = True) -> dict[str, Any]:
    """Predict every image not done yet; returns timing and failure counts. Writing overlaps the next forward."""
    import torch
    from tqdm import tqdm

    from eomt_ood.confidence import get_confidence
    from eomt_ood.inference.predict import (
        canvas_maps,
        canvas_top2,
        parse_device,
        parse_precision,
        predict_canvas,
        prepare_model,
    )

    for score in config.confidences:
        get_confidence(score)
    dtype, device = parse_precision(config.precision), parse_device(config.device)
    run_dir = config.out
    todo = [rel for rel in rels if not _image_done(run_dir, rel)]
    stats: dict[str, Any] = {
        "images": len(rels),
        "skipped": len(rels) - len(todo),
        "predicted": 0,
        "failed": [],
        "forward_seconds": 0.0,
        "inference_seconds": 0.0,
    }
    if not todo:
        return stats
    start = time.perf_counter()
    model = prepare_model(_load_model(config), device)
    assert config.images_root is not None
    reader: Any = _ImageReader(config.images_root, todo)  # map-style: __len__ and __getitem__
    loader: Any = torch.utils.data.DataLoader(
        reader,
        batch_size=None,
        shuffle=False,
        num_workers=config.workers,
        collate_fn=_identity,
        multiprocessing_context="forkserver" if config.workers > 0 else None,
    )
    pending: Future | None = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        for rel, image in tqdm(
            loader, total=len(todo), desc="evaluate", unit="img", disable=not progress, file=sys.stderr
        ):
            if "startup_seconds" not in stats:  # model loading and reader start-up, paid once per run
                stats["startup_seconds"] = time.perf_counter() - start
            if isinstance(image, str):
                stats["failed"].append((rel, image))
                tqdm.write(f"warning: skipped {image}", file=sys.stderr)
                continue
            height, width = image.shape[:2]
            tic = time.perf_counter()
            canvas = predict_canvas(model, image, micro_batch=config.micro_batch, dtype=dtype, device=device)
            stats["forward_seconds"] += time.perf_counter() - tic
            prediction, maps = canvas_maps(canvas, height, width, config.confidences)
            top2 = canvas_top2(canvas, height, width)
            if pending is not None:
                pending.result()
            pending = writer.submit(_write_outputs, run_dir, rel, prediction, maps, config.confidences, top2)
            stats["predicted"] += 1
        if pending is not None:
            pending.result()
    stats["inference_seconds"] = time.perf_counter() - start
    return stats


# ------------------------------------------------------------------------------------------------ scoring


def subset_of_image(rel: str) -> str | None:
    """The BRAVO subset of an input image path (`bravo_ACDC/fog/...` -> "ACDCfog"), or None outside the layout."""
    from eomt_ood.data.bravo import ACDC_CONDITIONS, SPLIT_TYPES

    parts = rel.split("/")
    if len(parts) < 2 or not parts[0].startswith("bravo_") or parts[0][6:] not in SPLIT_TYPES:
        return None
    split = parts[0][6:]
    if split == "ACDC":
        return f"ACDC{parts[1]}" if parts[1] in ACDC_CONDITIONS else None
    return split


def _image_metrics(subset: str, stats) -> dict[str, float]:
    """Per-image statistics for the store, the report and the app (NaN where a metric is undefined)."""
    from eomt_ood.data.bravo import OOD_SUBSETS
    from eomt_ood.metrics.histogram import curve_metrics, ece
    from eomt_ood.metrics.segmentation import mean_iou

    nan = float("nan")
    out = {
        "num_valid": float(stats.valid),
        "num_invalid": float(stats.invalid),
        "miou": nan,
        "ece": nan,
        "auroc_ood": nan,
        "auprc_ood": nan,
        "fpr95_ood": nan,
        "ood_fraction": nan,
    }
    if stats.valid and subset != "SMIYC":
        out["miou"] = float(mean_iou(stats.cm))
        out["ece"] = float(ece(stats.correct, stats.wrong))
    pos, neg = stats.ood_pos, stats.ood_neg
    if subset in OOD_SUBSETS and pos.sum() and neg.sum():
        ood = curve_metrics(pos[::-1], neg[::-1])
        out.update(auroc_ood=ood["auroc"], auprc_ood=ood["auprc"], fpr95_ood=ood["fpr95"])
        out["ood_fraction"] = float(pos.sum() / (pos.sum() + neg.sum()))
    return out


def _gt_by_image(gt_tree, rels: Sequence[str], images_root: Path | None) -> dict[str, Any]:
    """{input image rel path: its `GtImage`}; a GT image without an input image is a `UserError`."""
    from eomt_ood.data.bravo import match_gt

    by_pred = {raw_names(rel)[0]: rel for rel in rels}
    gt_of: dict[str, Any] = {}
    for subset_images in match_gt(gt_tree.names, _warn).values():
        for gt_image in subset_images:
            rel = by_pred.get(gt_image.pred_name)
            if rel is None:
                raise UserError(
                    f"{gt_image.label_name}: ground-truth image without an input image under {images_root}"
                )
            gt_of[rel] = gt_image
    return gt_of


def _histograms(totals) -> dict[str, np.ndarray]:
    """The four pooled histograms of an `ImageStatistics` total, indexed by confidence level."""
    return {
        "correct": totals.correct,
        "wrong": totals.wrong,
        "ood_pos": totals.ood_pos,
        "ood_neg": totals.ood_neg,
    }


def _score_metrics(
    accumulators: dict[str, Any], subsets: Sequence[str], unscored: dict[str, str]
) -> dict[str, Any]:
    """Official keys and summaries of one score. A degenerate subset (e.g. no correctly classified pixel) gets no
    made-up number: it is left out, with its reason in `unscored`, and the caller reports it after writing."""
    from eomt_ood.bravo.evaluate import summarise

    metrics: dict[str, Any] = {}
    scored = []
    for subset in subsets:
        try:
            subset_keys = accumulators[subset].metrics()
        except UserError as exc:
            unscored.setdefault(subset, str(exc))
            continue
        metrics.update((f"{subset}_{k}", v) for k, v in subset_keys.items())
        scored.append(subset)
    if metrics:
        metrics.update(summarise(metrics, scored))
    return metrics


def _read_output(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(
            f"{path}: missing from the run; delete the image's preview to redo it, or rerun"
        ) from None


def _read_conf_maps(run_dir: Path, rel: str, scores: Sequence[str]) -> dict[str, np.ndarray]:
    from eomt_ood.data.bravo import read_conf

    maps = {}
    for index, score in enumerate(scores):
        path = (
            run_dir / "submission" / raw_names(rel)[1] if index == 0 else confidence_file(run_dir, score, rel)
        )
        maps[score] = read_conf(_read_output(path), str(path))
    return maps


def score_run(config: EvaluateConfig, rels: Sequence[str], progress: bool = True) -> dict[str, Any]:
    """Score the run's submission (every score) against the GT, and write predictions.h5 and report.html.

    Returns the results dict: the official flat keys + `meta` for one score, `{score: {keys}, "meta": ...}` for
    several. Without GT the store and the report are still written (confidence histograms only).
    """
    from tqdm import tqdm

    from eomt_ood.bravo.evaluate import SubsetAccumulator, image_statistics
    from eomt_ood.bravo.sampling import decode_sample_indices
    from eomt_ood.data.bravo import SUBSETS, open_tree, read_label, read_mask, read_pred
    from eomt_ood.data.images import read_image
    from eomt_ood.reports.html import write_report
    from eomt_ood.store import StoreWriter, downsample_labels, preview_shape

    run_dir, scores = config.out, list(config.confidences)
    gt_tree = open_tree(config.gt, "ground truth") if config.gt is not None else None
    samples_tree = open_tree(config.samples, "sampling file") if config.samples is not None else None
    try:
        gt_of = _gt_by_image(gt_tree, rels, config.images_root) if gt_tree is not None else {}
        accumulators: dict[str, dict[str, Any]] = {score: {} for score in scores}
        conf_hist: dict[str, np.ndarray] = {}
        per_image: list[dict[str, Any]] = []
        model_name = str(config.model or config.checkpoint)
        with StoreWriter(run_dir / "predictions.h5", model=model_name, confidences=scores) as store:
            for rel in tqdm(rels, desc="scoring", unit="img", disable=not progress, file=sys.stderr):
                if not preview_file(run_dir, rel).is_file():
                    continue  # failed to read during inference; already reported
                pred_path = run_dir / "submission" / raw_names(rel)[0]
                pred = read_pred(_read_output(pred_path), str(pred_path))
                confs = _read_conf_maps(run_dir, rel, scores)
                with np.load(preview_file(run_dir, rel)) as preview:
                    top2_class, top2_score = preview["top2_class"], preview["top2_score"]
                rgb = read_image(config.images_root / rel)
                subset = subset_of_image(rel) or "other"
                extra: dict[str, Any] = {}
                row: dict[str, Any] = {"subset": subset, "image": rel}
                image = gt_of.get(rel)
                if image is not None and gt_tree is not None:
                    label = read_label(gt_tree.read(image.label_name), image.label_name)
                    mask = read_mask(gt_tree.read(image.mask_name), image.mask_name)
                    if label.shape != pred.shape or mask.shape != pred.shape:
                        raise UserError(
                            f"{image.label_name}: ground-truth size {label.shape[::-1]} differs from "
                            f"the input image {rel} ({pred.shape[::-1]})"
                        )
                    sample = None
                    if samples_tree is not None:
                        if image.samples_name not in samples_tree:
                            raise UserError(
                                f"{image.samples_name}: missing from the sampling file {config.samples}"
                            )
                        sample = decode_sample_indices(
                            samples_tree.read(image.samples_name), image.samples_name
                        )
                    for score in scores:
                        stats = image_statistics(
                            label,
                            mask,
                            pred,
                            confs[score],
                            sample,
                            label_name=image.label_name,
                            pred_name=str(pred_path),
                        )
                        accumulators[score].setdefault(image.subset, SubsetAccumulator(image.subset)).add(
                            stats
                        )
                        if score == scores[0]:
                            row.update(_image_metrics(image.subset, stats))
                    extra = {"gt_label": label, "gt_invalid": (mask != 0) & (label != 255)}
                else:
                    hist = np.bincount(confs[scores[0]].ravel(), minlength=65536)
                    conf_hist[subset] = conf_hist.get(subset, 0) + hist
                shape = preview_shape(*pred.shape)
                if top2_class.shape[1:] != shape:
                    top2_class, top2_score = (
                        downsample_labels(top2_class, shape),
                        downsample_labels(top2_score, shape),
                    )
                store.add_image(
                    rel,
                    subset,
                    pred,
                    confs,
                    top2_class=top2_class,
                    top2_score=top2_score,
                    rgb=rgb,
                    stats={k: v for k, v in row.items() if isinstance(v, float)},
                    **extra,
                )
                per_image.append(row)
            results_by_score = {}
            unscored: dict[str, str] = {}
            for score in scores:
                subsets = [s for s in SUBSETS if s in accumulators[score]]
                for subset in subsets:
                    totals = accumulators[score][subset].totals
                    store.add_histograms(score, subset, _histograms(totals))
                results_by_score[score] = _score_metrics(accumulators[score], subsets, unscored)
    finally:
        for tree in (gt_tree, samples_tree):
            if tree is not None:
                tree.close()

    meta = _meta(config, accumulators[scores[0]])
    meta["unscored_subsets"] = unscored
    results: dict[str, Any] = (
        dict(results_by_score[scores[0]]) if len(scores) == 1 else dict(results_by_score)
    )
    results["meta"] = meta
    histograms = {subset: _histograms(acc.totals) for subset, acc in accumulators[scores[0]].items()}
    title = f"eomt-ood BRAVO evaluation: {model_name} ({scores[0]})"
    write_report(
        run_dir / "report.html",
        results_by_score[scores[0]] | {"meta": meta},
        histograms,
        per_image,
        title=title,
        conf_histograms=conf_hist or None,
    )
    return results


def describe_model(config: EvaluateConfig) -> dict[str, Any] | None:
    """The run's model as {"name", "kwargs"}: from our checkpoint's metadata (read without loading tensors), else
    the registered name; None when neither tells."""
    import json

    if config.checkpoint is not None and Path(config.checkpoint).suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(config.checkpoint), "pt") as handle:
                metadata = handle.metadata() or {}
        except Exception:
            # An unreadable file fails loudly when the model is loaded; here it just says nothing.
            metadata = {}
        if "config" in metadata:
            return json.loads(metadata["config"])
    if config.model is not None:
        return {"name": config.model, "kwargs": {}}
    return None


def _meta(config: EvaluateConfig, accumulators: dict) -> dict[str, Any]:
    from eomt_ood.bravo.evaluate import scoring_meta

    meta: dict[str, Any] = dict(
        scoring_meta(config.gt, config.out / "submission", config.samples, accumulators)
    )
    meta.update(
        images_root=str(config.images_root),
        model=config.model,
        checkpoint=str(config.checkpoint) if config.checkpoint else None,
        model_config=describe_model(config),
        confidences=list(config.confidences),
    )
    return meta


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ the command


def evaluate_bravo(config: EvaluateConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole evaluation into `config.out`; returns the results dict (empty metrics without GT)."""
    import yaml

    from eomt_ood.bravo.evaluate import write_results
    from eomt_ood.config import to_dict
    from eomt_ood.data.images import find_images

    if config.images_root is None:
        raise UserError(
            "--root: the BRAVO image folder is needed (or neither --root nor --checkpoint, for the demo)"
        )
    if config.gt is not None and not Path(config.gt).exists():
        raise UserError(f"{config.gt}: ground truth not found")
    if config.samples is not None and config.gt is None:
        raise UserError("--samples needs --gt: the official sample only matters when scoring")
    if not config.confidences or len(set(config.confidences)) != len(config.confidences):
        raise UserError("--confidence: give each score once (at least one)")
    run_dir = config.out
    rels = [
        rel for rel in find_images(config.images_root, exclude=run_dir) if subset_of_image(rel) is not None
    ]
    if not rels:
        raise UserError(
            f"{config.images_root}: no BRAVO input images found (expected bravo_<split>/... files)"
        )
    _check_resume(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    timing = run_inference(config, rels, progress=progress)
    if timing["failed"]:
        print(
            f"warning: {len(timing['failed'])} image(s) could not be read and were left out", file=sys.stderr
        )
    results = score_run(config, rels, progress=progress)
    results["meta"]["inference"] = {k: v for k, v in timing.items() if k != "failed"}
    results["meta"]["inference"]["failed"] = [rel for rel, _ in timing["failed"]]
    write_results(results, run_dir / "results.json")
    unscored = results["meta"]["unscored_subsets"]
    if unscored:
        first = next(iter(unscored.values()))
        raise UserError(
            f"{run_dir}/results.json: {len(unscored)} subset(s) left unscored ({', '.join(unscored)}): {first}; "
            "everything else was written"
        )
    return results


def summary_table(results: dict[str, Any]) -> str:
    """A short text table of the key metrics per subset (first score's block when several).

    `ood_px` is the fraction of OOD pixels among the scored ones: the AUPRC_OOD of a confidence that knows
    nothing, to read `auprc_ood` against.
    """
    from eomt_ood.data.bravo import OOD_SUBSETS, SUBSETS

    block = (
        results
        if any(k.endswith("_hmean") for k in results)
        else next((v for k, v in results.items() if k != "meta" and isinstance(v, dict)), {})
    )
    counts = results.get("meta", {}).get("subsets", {})
    columns = ("miou_valid", "ece_valid", "auroc_valid", "auprc_ood", "ood_px", "auroc_ood", "fpr95_ood")
    lines = [f"{'subset':<14}" + "".join(f"{c:>12}" for c in columns)]
    for subset in SUBSETS:
        if not any(k.startswith(f"{subset}_") for k in block):
            continue
        cells = []
        for column in columns:
            value = block.get(f"{subset}_{column}")
            if column == "ood_px" and subset in OOD_SUBSETS and subset in counts:
                pos, neg = counts[subset]["invalid"], counts[subset]["valid"]
                value = pos / (pos + neg) if pos + neg else None
            cells.append(f"{value:>12.4f}" if isinstance(value, float) else f"{'-':>12}")
        lines.append(f"{subset:<14}" + "".join(cells))
    for key in ("semantic_hmean", "ood_hmean", "bravo_index"):
        if key in block:
            lines.append(f"{key:<14}{block[key]:>12.4f}")
    return "\n".join(lines)
