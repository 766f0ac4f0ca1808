"""`eomt-ood evaluate --dataset bravo`: images -> model -> predictions, scores, store and report, as one stream.

One image goes through three stages, each on its own hardware, joined by bounded queues (memory stays flat however
many images):

1. a worker process reads and decodes the input image and resizes it to the model's side (`read_input`);
2. the model's device does the forward over the windows, the window merge, the upsampling, every requested
   confidence score, the argmax and the 16-bit quantisation (`eomt_ood.inference.predict.stream_levels`: the
   forward in this process's main thread, the rest in a second thread while the next image's forward runs);
3. a worker process reads the ground truth, counts the image's statistics for every score with the functions
   `eomt-ood score` uses (`eomt_ood.bravo.scoring`), writes the PNGs, makes the previews and saves the image's
   record, last (`finish_image`).

The main process adds each record's statistics to the per-subset sums and the record to the store, so nothing
the run wrote is read back to score it; the records' per-image statistics, kept by reference, then give the
bootstrap intervals of every key (`eomt_ood.bravo.intervals`, written under `meta`). An image is done when its
record exists: an interrupted run resumes at the first image without one, and the results do not depend on
where it stopped. With `devices` > 1 (or under
`torchrun`) the images are shared out over processes by Lightning Fabric; each rank predicts and scores its
share, the sums are all-reduced and rank 0 writes the results.

The run folder (paths, config.yaml, results.json) belongs to `eomt_ood.bravo.rundir`.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from eomt_ood.bravo.rundir import RESUME_IDENTITY, RunDir, maps_identity, pack_results, write_results
from eomt_ood.errors import LostProcess, Terminated, UserError, first_line
from eomt_ood.io import check_output, progress_file


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything `evaluate_bravo` needs; written to RUN_DIR/config.yaml."""

    out: Path = Path("runs/bravo-demo")
    images_root: Path | None = None  # the BRAVO input tree (bravo_ACDC/..., bravo_synobjs/...)
    gt: Path | None = None  # ground-truth folder or tar; None: no scoring
    model: str | None = None  # registered name; None: taken from the checkpoint's metadata
    checkpoint: Path | None = None
    confidences: tuple[str, ...] = ("msp",)
    samples: Path | None = None  # bravo_SAMPLING.tar for the official pixel sample when scoring
    device: str = "cpu"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on the CPU
    compile: bool | None = None  # torch.compile; None: on CUDA (without token merging), off on the CPU
    token_merging: str = "none"  # "algm": ALGM token merging at inference (docs/models.md)
    micro_batch: int = 4
    workers: int | None = (
        None  # processes per rank (reading, statistics, PNG writing); None: min(cpus, 8); 0 inline
    )
    devices: int = 1  # processes (one per GPU on CUDA) to share the images over
    skip_unreadable: bool = (
        False  # an unreadable input image is left out (recorded) instead of failing the run
    )
    bootstrap: int = 1000  # replicates of the bootstrap intervals (0 = off), `eomt_ood.bravo.intervals`
    bootstrap_seed: int = 0
    confidence_level: float = 0.95
    random_weights: bool = False  # `model` without a checkpoint: untrained, asked for explicitly
    demo: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def demo_config(out: Path | None = None, **changes: Any) -> EvaluateConfig:
    """The bundled demo (`eomt_ood.bravo.demo`): generated BRAVO-layout images and GT, the demo checkpoint."""
    from eomt_ood.bravo.demo import DEMO_RUN_DIR, demo_inputs

    return replace(EvaluateConfig(out=out or DEMO_RUN_DIR, demo=True, **demo_inputs()), **changes)


def ensure_demo_run() -> Path:
    """The demo's run folder, evaluated first if it has no store yet (used by `eomt-ood app`)."""
    from eomt_ood.bravo.demo import DEMO_RUN_DIR

    if not RunDir(DEMO_RUN_DIR).store_file.is_file():
        evaluate_bravo(demo_config())
    return DEMO_RUN_DIR


# ------------------------------------------------------------------------------------------------ stage 1


@dataclass(frozen=True)
class ReadTask:
    root: str
    rel: str
    side: int  # the model's input side: the image is resized so its short side is this


@dataclass
class ReadResult:
    """A decoded input: `resized` (H', W', 3) uint8 with short side = side, `preview` photo, the original size;
    or the reason it could not be read."""

    rel: str
    resized: np.ndarray | None = None
    preview: np.ndarray | None = None
    height: int = 0
    width: int = 0
    error: str | None = None


def read_input(task: ReadTask) -> ReadResult:
    """Stage 1 (worker): decode one input image, resize it for the model, make the photo preview."""
    from eomt_ood.data.images import read_image
    from eomt_ood.data.resample import photo_preview, resize_image

    try:
        rgb = read_image(Path(task.root) / task.rel)
    except UserError as exc:
        return ReadResult(task.rel, error=str(exc))
    height, width = rgb.shape[:2]
    return ReadResult(task.rel, resize_image(rgb, task.side), photo_preview(rgb), height, width)


# ------------------------------------------------------------------------------------------------ stage 3


@dataclass
class FinishTask:
    """One predicted image on its way to disk: maps at full resolution, previews, where its GT is."""

    run_dir: str
    rel: str
    subset: str
    scores: tuple[str, ...]
    pred: np.ndarray  # (H, W) uint8
    levels: dict[str, np.ndarray]  # {score: (H, W) uint16}
    top2: tuple[np.ndarray, np.ndarray]
    photo: np.ndarray  # preview-size RGB
    gt: Any = None  # GroundTruthRefs or None


def finish_image(task: FinishTask) -> Any:
    """Stage 3 (worker): statistics against the GT, PNGs, previews, and the record (returned, and saved last)."""
    from eomt_ood.bravo.scoring import image_metrics, read_ground_truth, score_maps
    from eomt_ood.bravo.submission import write_raw_pair
    from eomt_ood.data.png import write_png
    from eomt_ood.store import ImageRecord, make_previews, save_record

    run = RunDir(Path(task.run_dir))
    height, width = task.pred.shape
    record = ImageRecord(task.rel, task.subset, height, width, previews={})
    gt = read_ground_truth(task.gt) if task.gt is not None else None
    if gt is not None:
        if gt.label.shape != task.pred.shape:
            raise UserError(
                f"{gt.label_name}: ground-truth size {gt.label.shape[1]}x{gt.label.shape[0]} differs from the "
                f"input image {task.rel} ({width}x{height})"
            )
        confs = {str(run.conf_file(task.rel, s, i == 0)): task.levels[s] for i, s in enumerate(task.scores)}
        all_stats = score_maps(gt, task.pred, confs, pred_name=str(run.pred_file(task.rel)))
        for score, stats in zip(task.scores, all_stats, strict=True):
            record.sparse[score] = (stats.levels, stats.counts)
            record.stats[score] = image_metrics(task.subset, stats.dense())
            record.cm, record.pixels = stats.cm, stats.pixels
    else:
        for score in task.scores:
            counts = np.bincount(task.levels[score].ravel(), minlength=65536)
            levels = np.flatnonzero(counts)
            record.level_counts[score] = (levels.astype(np.uint16), counts[levels])
            mean = (float(task.levels[score].mean(dtype=np.float64)) + 0.5) / 65536
            record.stats[score] = {"mean_confidence": mean}
    for score in task.scores[1:]:
        write_png(run.conf_file(task.rel, score, first=False), task.levels[score])
    write_raw_pair(run.submission, task.rel, task.pred, task.levels[task.scores[0]])
    record.previews = make_previews(
        task.pred,
        task.levels,
        gt_label=gt.label if gt is not None else None,
        gt_invalid=gt.mask if gt is not None else None,
        rgb=task.photo,
        top2=task.top2,
    )
    save_record(run.record_file(task.rel), record)
    return record


# ------------------------------------------------------------------------------------------------ the stream


@dataclass
class _Plan:
    """What one rank does: every image of the run in order, which are done, where their GT is."""

    rels: list[str]
    subsets: dict[str, str]
    gt: dict[str, Any]  # rel -> GroundTruthRefs (images with ground truth only)
    todo: list[str]


def _plan(config: EvaluateConfig, run: RunDir, gt_tree: Any, samples_tree: Any) -> _Plan:
    """List the input images, match the GT to them and check every GT / sample file is there (before any work)."""
    from eomt_ood.bravo.layout import match_gt, subset_of_image
    from eomt_ood.bravo.scoring import ground_truth_refs
    from eomt_ood.bravo.submission import check_output_names, raw_names
    from eomt_ood.data.images import find_images
    from eomt_ood.io import warn

    assert config.images_root is not None
    rels, subsets = [], {}
    for rel in find_images(config.images_root, exclude=run.path):
        subset = subset_of_image(rel)
        if subset is not None:
            rels.append(rel)
            subsets[rel] = subset
    if not rels:
        raise UserError(
            f"{config.images_root}: no BRAVO input images found (expected bravo_<split>/... files)"
        )
    check_output_names(config.images_root, rels)
    gt_refs: dict[str, Any] = {}
    if gt_tree is not None:
        by_pred = {raw_names(rel)[0]: rel for rel in rels}
        for images in match_gt(gt_tree.names, warn).values():
            for image in images:
                rel = by_pred.get(image.pred_name)
                if rel is None:
                    raise UserError(
                        f"{image.label_name}: ground-truth image without an input image under {config.images_root}"
                    )
                gt_refs[rel] = ground_truth_refs(image, gt_tree, samples_tree)
    todo = [rel for rel in rels if not run.is_done(rel, config.confidences)]
    return _Plan(rels, subsets, gt_refs, todo)


def _predict_stream(
    config: EvaluateConfig, run: RunDir, plan: _Plan, todo: Sequence[str], model: Any, pool: Any, timing: dict
) -> Iterator[tuple[str, Any]]:
    """Stages 1-3 over `todo`, in order: yields (rel, record), record None for an image left out as unreadable."""
    from eomt_ood.inference.predict import parse_precision, stream_levels
    from eomt_ood.io import warn

    device = next(model.parameters()).device
    dtype = parse_precision(config.precision, device)
    side = int(model.img_size)
    window = max(2, 2 * pool.workers)
    reads = (pool.submit(read_input, ReadTask(str(config.images_root), rel, side)) for rel in todo)
    reading: deque = deque(next(reads) for _ in range(min(window, len(todo))))

    def decoded() -> Iterator[tuple[ReadResult, np.ndarray | None, int, int]]:
        while reading:
            item = reading.popleft().result()
            following = next(reads, None)
            if following is not None:
                reading.append(following)
            if item.error is None:
                yield item, item.resized, item.height, item.width
                continue
            if not config.skip_unreadable:
                raise UserError(
                    f"{item.error}; fix or remove it, or pass --skip-unreadable to leave it out "
                    "(finished images are kept)"
                )
            warn(f"skipped {item.error}")
            timing["failed"].append(item.rel)
            yield item, None, 0, 0

    finishing: deque = deque()  # (rel, future of its record)
    maps_of = stream_levels(
        model, decoded(), config.confidences, config.micro_batch, dtype, device, top2=True
    )
    for item, maps in maps_of:
        if maps is None:
            finishing.append((item.rel, None))
        else:
            timing["model_seconds"] += maps.seconds
            task = FinishTask(
                str(run.path),
                item.rel,
                plan.subsets[item.rel],
                config.confidences,
                maps.prediction,
                maps.levels,
                maps.top2,
                item.preview,
                plan.gt.get(item.rel),
            )
            finishing.append((item.rel, pool.submit(finish_image, task)))
        while len(finishing) > window:
            yield _finished(finishing.popleft())
    while finishing:
        yield _finished(finishing.popleft())


def _finished(entry: tuple[str, Any]) -> tuple[str, Any]:
    rel, future = entry
    return rel, (future.result() if future is not None else None)


def _in_order(
    run: RunDir, rels: Sequence[str], todo: Sequence[str], stream: Any
) -> Iterator[tuple[str, Any, bool]]:
    """(rel, record or None, new) for every image of `rels` in order: finished ones loaded from their records,
    the `todo` ones taken from `stream()` (started at the first one needed)."""
    from eomt_ood.store import load_record

    pending = set(todo)
    produced: Iterator[tuple[str, Any]] | None = None
    for rel in rels:
        if rel not in pending:
            yield rel, load_record(run.record_file(rel)), False
            continue
        if produced is None:
            produced = stream()
        got, record = next(produced)
        assert got == rel, (got, rel)
        yield rel, record, True


def _load_model(config: EvaluateConfig, device: Any, compile_model: bool) -> Any:
    from eomt_ood.inference.predict import prepare_model
    from eomt_ood.models import build_model
    from eomt_ood.models.algm import enable_token_merging, parse_token_merging

    if config.model is None and config.checkpoint is None:
        raise UserError("--model or --checkpoint is needed (or neither, for the bundled demo)")
    model = build_model(config.model, config.checkpoint)
    _check_bravo_classes(model, config)
    merging = parse_token_merging(config.token_merging)
    if merging is not None:
        enable_token_merging(model, merging)
    return prepare_model(model, device, compile_model)


def _check_bravo_classes(model: Any, config: EvaluateConfig) -> None:
    """A `UserError` naming the weights (or --model) unless the model predicts the 19 Cityscapes train ids BRAVO
    scores: with fewer, every table came out without a word (a 5-class model scored as classes 0..4); with more,
    the run failed after inference, blaming the first prediction PNG. Every registered model has `num_classes`."""
    from eomt_ood.bravo.layout import NUM_CLASSES

    classes = getattr(model, "num_classes", None)
    if classes is not None and int(classes) != NUM_CLASSES:
        source = config.checkpoint if config.checkpoint is not None else f"--model {config.model}"
        raise UserError(
            f"{source}: the model predicts {int(classes)} classes; BRAVO scores the {NUM_CLASSES} Cityscapes "
            "train ids"
        )


# ------------------------------------------------------------------------------------------------ ranks


@dataclass
class _Ranks:
    """This process's place among the evaluating processes (one, unless `devices` > 1 or under torchrun)."""

    rank: int = 0
    world: int = 1
    fabric: Any = None

    @classmethod
    def start(cls, config: EvaluateConfig) -> _Ranks:
        import os

        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if config.devices == 1 and launched == 1:
            return cls()
        from lightning.fabric import Fabric

        from eomt_ood.inference.predict import parse_device

        parse_device(config.device)  # one line for a device this machine lacks, as with one process

        accelerator = "cuda" if config.device.startswith("cuda") else "cpu"
        devices = int(os.environ.get("LOCAL_WORLD_SIZE", config.devices)) if launched > 1 else config.devices
        try:
            fabric = Fabric(
                accelerator=accelerator,
                devices=devices,
                num_nodes=max(1, launched // devices),
                strategy="ddp",
            )
            fabric.launch()
        except (
            Exception
        ) as exc:  # Lightning's misconfiguration errors: a device count this machine cannot give
            if type(exc).__name__ != "MisconfigurationException":
                raise
            raise UserError(f"--devices {config.devices}: {exc}") from None
        if fabric.local_rank != 0:
            # A rank started as a child of local rank 0 (Lightning) or of torchrun's agent: it must not outlive
            # its parent (after a SIGKILL of rank 0 it went on predicting its share until a collective failed).
            from eomt_ood.io import die_with_parent

            die_with_parent()
        return cls(fabric.global_rank, fabric.world_size, fabric)

    def device(self, config: EvaluateConfig) -> Any:
        from eomt_ood.inference.predict import parse_device

        return self.fabric.device if self.fabric is not None else parse_device(config.device)

    def barrier(self) -> None:
        if self.fabric is not None:
            self.fabric.barrier()

    def agree(self, problem: BaseException | None = None) -> None:
        """A point that every rank passes in step, where each learns whether any of them failed; raises if one did.

        Rank 0 says what went wrong, once, below its own progress bar: its own failure, else the first other
        rank's one-line error (bad input, a write the file system refused, a worker process lost), told to it
        here, and it exits with that error's status. Every other rank ends quietly, with status 0, except for a
        failure that is not one line (a bug), which that rank raises itself, traceback and all. The command's
        status is rank 0's; a child rank ending with another would make Lightning's launcher kill rank 0
        (SIGKILL, checked every 5 s), which could cut rank 0 off before it has said anything.

        The first point is before anything is written: rank 0 has locked and checked the run folder by then (a
        rank writing earlier made rank 0 find "images of a run that did not record how they were made" and refuse
        its own run), and every rank has loaded its model. The others are `_Lockstep`'s, while predicting."""
        code = 0 if problem is None else int(getattr(problem, "exit_code", 1))
        if self.fabric is None:
            if problem is not None:
                raise problem
            return
        worst = int(self.reduce(np.array([code]), "max")[0])
        if not worst:
            return
        mine = _one_line(problem)
        told = self.gather([mine] if mine is not None else [])
        if self.rank == 0:
            if problem is not None:
                raise problem
            if told:
                kind, *said = told[0]
                raise {"user": UserError, "lost": LostProcess}.get(kind, OSError)(*said)
            raise SystemExit(worst)
        if problem is not None and mine is None:
            raise problem
        raise SystemExit(0)

    def reduce(self, array: np.ndarray, op: str = "sum") -> np.ndarray:
        """The element-wise `op` ("sum", "max") of `array` over all ranks (int64)."""
        if self.fabric is None:
            return array
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(self.fabric.device)
        return self._collective(lambda: self.fabric.all_reduce(tensor, reduce_op=op).cpu().numpy())

    def gather(self, items: list) -> list:
        """The concatenation of every rank's `items` (picklable), in rank order."""
        if self.fabric is None:
            return items
        import torch.distributed as dist

        parts: list = [None] * self.world
        self._collective(lambda: dist.all_gather_object(parts, items))
        return [item for part in parts for item in part]

    def _collective(self, call: Any) -> Any:
        """`call()`, a collective; a rank that ended without reaching it (killed, out of memory) is one line."""
        try:
            return call()
        except RuntimeError as exc:  # gloo: "Connection closed by peer"; NCCL: its watchdog's error
            said = first_line(exc)
            raise LostProcess(
                f"evaluate: rank {self.rank} of {self.world} lost touch with the others ({said}): another "
                "process of the run ended without a word (killed by a signal: out of memory?)"
            ) from None

    def close(self) -> None:
        """Leave the process group in order, its threads joined while the interpreter is whole. Left to the
        interpreter's exit, rank 0 of a two-process run refused at its start sometimes aborted after saying its
        error ("terminate called without an active exception", SIGABRT instead of status 2) in 4 of 16 runs beside
        other two-process runs or CI, and in none of 25 on a quieter machine."""
        if self.fabric is None:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def say(self, message: str) -> None:
        if self.rank == 0:
            print(message, file=sys.stderr, flush=True)


def _one_line(problem: BaseException | None) -> tuple | None:
    """`problem` as another rank can raise it again, for the errors the CLI prints as one line (a `UserError`;
    an `OSError`: a write the file system refused; a worker process lost); None for the rest."""
    from eomt_ood.io import pool_problem

    if problem is not None:  # a lost pool worker as the pool says it once the run leaves it
        problem = pool_problem(problem)
    if isinstance(problem, LostProcess):
        return ("lost", str(problem))
    if isinstance(problem, UserError):
        return ("user", str(problem))
    if isinstance(problem, OSError):
        if problem.strerror is None:  # OSError("message")
            return ("os", str(problem))
        return ("os", problem.errno, problem.strerror, problem.filename)
    return None


class _Lockstep:
    """The points where the ranks' prediction loops agree (`_Ranks.agree`): one every `every` images of the
    longest share and one after the last image, the same number on every rank. A rank that fails while
    predicting (an unreadable image, a full disk) tells the others at their next point, so that they stop within
    `every` images and rank 0 says what went wrong, instead of predicting their whole share and then failing at
    the final sums with a traceback. A point's all-reduce is on the model's device, so on a GPU it waits for the
    forward in flight; once every 8 images keeps that wait rare."""

    def __init__(self, ranks: _Ranks, longest: int, every: int = 8):
        self.ranks, self.every = ranks, every
        self.due = longest // every + 1  # the last one after the loop
        self.made = 0

    def passed(self, images: int) -> None:
        """After this rank's `images`-th image (of its share, done ones included)."""
        if images % self.every == 0 and self.made < self.due - 1:
            self._agree()

    def finish(self) -> None:
        while self.made < self.due:
            self._agree()

    def failed(self, problem: BaseException) -> None:
        """Tell the others at the next point, and raise `problem`. A signal reaches every rank (each stops on its
        own), a lost rank cannot be told, and a failure raised at a point was agreed there."""
        if self.made < self.due and not isinstance(problem, (Terminated, LostProcess)):
            self._agree(problem)
        raise problem

    def _agree(self, problem: BaseException | None = None) -> None:
        self.made += 1
        try:
            self.ranks.agree(problem)
        except BaseException:
            self.made = self.due  # the ranks agreed on a failure (or lost one): no points are left to pass
            raise


# ------------------------------------------------------------------------------------------------ totals


class _Totals:
    """The run's sums: per score a `Scorer` (images with GT) and per-subset level histograms (images without)."""

    def __init__(self, scores: Sequence[str]):
        from eomt_ood.bravo.scoring import Scorer

        self.scores = list(scores)
        self.scorers = {score: Scorer() for score in scores}
        self.level_counts: dict[str, dict[str, np.ndarray]] = {score: {} for score in scores}

    def add(self, record: Any) -> None:
        from eomt_ood.bravo.scoring import SparseStatistics
        from eomt_ood.metrics.histogram import NUM_LEVELS

        for score in self.scores:
            if record.has_gt:
                levels, counts = record.sparse[score]
                stats = SparseStatistics(record.cm, levels, counts, *record.pixels)
                self.scorers[score].add(record.subset, stats)
            else:
                levels, counts = record.level_counts[score]
                hists = self.level_counts[score]
                if record.subset not in hists:
                    hists[record.subset] = np.zeros(NUM_LEVELS, np.int64)
                hists[record.subset][levels.astype(np.intp)] += counts  # levels are distinct

    def reduce(self, ranks: _Ranks) -> None:
        """Sum the totals of every rank (all ranks must call this)."""
        from eomt_ood.bravo.layout import SUBSETS
        from eomt_ood.bravo.scoring import Scorer
        from eomt_ood.metrics.histogram import NUM_LEVELS

        if ranks.world == 1:
            return
        for score in self.scores:
            self.scorers[score] = Scorer.from_state(ranks.reduce(self.scorers[score].state()))
            hists = np.stack(
                [self.level_counts[score].get(s, np.zeros(NUM_LEVELS, np.int64)) for s in SUBSETS]
            )
            summed = ranks.reduce(hists)
            self.level_counts[score] = {s: h for s, h in zip(SUBSETS, summed, strict=True) if h.any()}

    def add_histograms(self, store: Any) -> None:
        for score in self.scores:
            for subset, histograms in self.scorers[score].histograms().items():
                store.add_histograms(score, subset, histograms)
            for subset, counts in self.level_counts[score].items():
                store.add_level_histogram(score, subset, counts)


def _write_store(
    run: RunDir,
    config: EvaluateConfig,
    model_name: str,
    records: Any,
    totals: _Totals,
    accumulate: bool,
    bar: Any,
) -> None:
    """Gather `records` into the store (adding them to `totals` when `accumulate`)."""
    from eomt_ood.store import StoreWriter

    with StoreWriter(run.store_file, model=model_name, confidences=list(config.confidences)) as store:
        for _, record, new in records:
            if record is None:
                continue
            if accumulate:
                totals.add(record)
            store.add(record)
            if new:
                bar.update()
        totals.add_histograms(store)


# ------------------------------------------------------------------------------------------------ the command


def check_inputs(config: EvaluateConfig) -> None:
    """Every path and option that can be checked without the model, before anything expensive starts."""
    if config.images_root is None:
        raise UserError(
            "--root: the BRAVO image folder is needed (or neither --root nor --checkpoint, for the demo)"
        )
    if not Path(config.images_root).is_dir():
        raise UserError(f"--root: {config.images_root}: folder not found")
    if config.gt is not None and not Path(config.gt).exists():
        raise UserError(f"--gt: {config.gt}: ground truth not found")
    if config.samples is not None and config.gt is None:
        raise UserError("--samples needs --gt: the official sample only matters when scoring")
    if config.samples is not None and not Path(config.samples).is_file():
        raise UserError(f"--samples: {config.samples}: sampling file not found")
    if config.checkpoint is not None and not Path(config.checkpoint).exists():
        raise UserError(f"--checkpoint: {config.checkpoint}: file not found")
    if config.model is None and config.checkpoint is None:
        raise UserError("--model or --checkpoint is needed (or neither, for the bundled demo)")
    if config.random_weights and config.checkpoint is not None:
        raise UserError("--random-weights: given with --checkpoint; choose one")
    if config.model is not None and config.checkpoint is None and not config.random_weights:
        raise UserError(
            f"--checkpoint: no weights given for {config.model}; pass --checkpoint FILE, or --random-weights "
            "to evaluate it untrained"
        )
    if not config.confidences or len(set(config.confidences)) != len(config.confidences):
        raise UserError("--confidence: give each score once (at least one)")
    if config.devices < 1:
        raise UserError(f"--devices: must be at least 1, got {config.devices}")
    _settings(config).check()
    check_output(
        config.out, "--out", (config.images_root, config.gt, config.samples, config.checkpoint), folder=True
    )


def check_options(config: EvaluateConfig) -> None:
    """The named options (scores, precision, device, token merging, model name): checked before anything is
    written. Needs torch, so it runs after the worker processes were forked."""
    from eomt_ood.confidence import get_confidence
    from eomt_ood.inference.predict import parse_device, parse_precision
    from eomt_ood.models import list_models
    from eomt_ood.models.algm import parse_token_merging

    for score in config.confidences:
        get_confidence(score)
    parse_precision(config.precision, parse_device(config.device))
    parse_token_merging(config.token_merging)
    if config.model is not None and config.model not in list_models():
        raise UserError(f"--model: unknown name {config.model!r}; available: {', '.join(list_models())}")


def _warm_counting() -> None:
    from eomt_ood.bravo import counting

    counting.warm()


def evaluate_bravo(config: EvaluateConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole evaluation into `config.out`; returns the results dict (only `meta` without GT).

    Bad input is a `UserError`, raised before the model is loaded wherever it can be known then. A subset whose
    metrics are undefined (degenerate data) is named in a `UserError` after everything else was written.
    """
    from eomt_ood.io import ProcessMap, default_workers

    check_inputs(config)
    start = time.perf_counter()
    workers = default_workers(8) if config.workers is None else config.workers
    # The workers are forked now, before torch is imported or any thread started (see `eomt_ood.io`). They yield
    # the CPU to this process, whose model work paces the run.
    from eomt_ood.confidence.levels import NonFiniteConfidence

    with ProcessMap(workers, nice=10) as pool:
        try:
            results = _evaluate(config, pool, start, progress)
        except NonFiniteConfidence as exc:  # the weights' fault, not an image's: name them
            raise UserError(f"{config.checkpoint or config.model}: {exc}") from None
    unscored = results.get("meta", {}).get("unscored_subsets") or {}
    if unscored:
        first = next(iter(unscored.values()))
        raise UserError(
            f"{RunDir(config.out).results_file}: {len(unscored)} subset(s) left unscored "
            f"({', '.join(unscored)}): {first}; everything else was written"
        )
    return results


def _evaluate(config: EvaluateConfig, pool: Any, start: float, progress: bool) -> dict[str, Any]:
    from eomt_ood.bravo.layout import open_tree
    from eomt_ood.config import to_dict
    from eomt_ood.io import remove_stale_temporaries

    run = RunDir(config.out)
    ranks = _Ranks.start(config)
    say = ranks.say if progress else _quiet
    with contextlib.ExitStack() as stack:
        stack.callback(ranks.close)  # last, after the trees and the lock
        gt_tree = stack.enter_context(open_tree(config.gt, "ground truth")) if config.gt else None
        samples_tree = (
            stack.enter_context(open_tree(config.samples, "sampling file")) if config.samples else None
        )
        plan = _plan(config, run, gt_tree, samples_tree)
        mine = plan.rels[ranks.rank :: ranks.world]
        unfinished = set(plan.todo)
        todo = [rel for rel in mine if rel in unfinished]
        if todo and plan.gt:
            # The workers load the compiled counting loops (0.35 s each; up to a second where the bytecode is
            # not compiled) while this process loads the model, not on their first image. Best effort: a
            # failure shows again on that image.
            for _ in range(pool.workers):
                pool.submit(_warm_counting)
        if todo:  # said before the options are checked: that imports torch and the model code (seconds)
            say(f"loading model {config.model or Path(str(config.checkpoint)).name} ...")
        check_options(config)
        runtime = _runtime_record(config, ranks.device(config))
        identity = _identity(config, runtime["precision_used"])
        settings = {**to_dict(config), RESUME_IDENTITY: identity}
        # start-up: to the model being ready for the first image; none when this call predicts nothing
        timing: dict[str, Any] = {"failed": [], "model_seconds": 0.0, "startup_seconds": None, **runtime}
        model = None
        problem: BaseException | None = None  # this rank's failure before writing, told to the others
        try:
            if ranks.rank == 0:
                stack.enter_context(run.lock("eomt-ood evaluate"))
                run.check_resumable(identity)
            if todo:  # loaded before anything is written: bad weights leave the folder as it was
                model = _load_model(config, ranks.device(config), runtime["compiled"])
                timing["startup_seconds"] = time.perf_counter() - start
            if ranks.rank == 0:
                run.write_config(settings)
                remove_stale_temporaries(run.path, recursive=True)  # what writers killed mid-file left
        except BaseException as exc:
            problem = exc
        ranks.agree(problem)
        if len(plan.todo) < len(plan.rels):
            say(f"resuming: {len(plan.rels) - len(plan.todo)} of {len(plan.rels)} images done")
        model_name = _model_name(model, config)
        totals = _Totals(config.confidences)
        records = _in_order(
            run, mine, todo, lambda: _predict_stream(config, run, plan, todo, model, pool, timing)
        )
        bar = progress_bar(len(todo), disable=not progress or ranks.rank != 0)
        with bar:
            if ranks.world == 1:
                _write_store(run, config, model_name, records, totals, True, bar)
            else:
                steps = _Lockstep(ranks, len(plan.rels[:: ranks.world]))
                try:
                    for done, (_, record, new) in enumerate(records, 1):
                        if record is not None:
                            totals.add(record)
                        bar.update(int(new))
                        steps.passed(done)
                    steps.finish()
                except Exception as exc:
                    steps.failed(exc)
                totals.reduce(ranks)
                timing["failed"] = ranks.gather(timing["failed"])
                todo = ranks.gather(todo)
                if ranks.rank != 0:
                    return {}
                everything = _in_order(run, plan.rels, [], lambda: iter(()))
                _write_store(run, config, model_name, everything, totals, False, bar)
        timing.update(
            seconds=time.perf_counter() - start,
            images=len(plan.rels),
            skipped=len(plan.rels) - len(plan.todo),
            predicted=len(todo) - len(timing["failed"]),
            ranks=ranks.world,
        )
        extra = {"token_merging": _token_merging_record(model, config)}
        record = _model_record(model, config)
        # The workers are idle by now: they run the intervals' subsets side by side.
        return _write_results(run, config, record, totals, timing, extra, pool.map)


def progress_bar(total: int, disable: bool = False) -> Any:
    """The images bar of `evaluate` (tqdm on stderr), its rate measured from the first finished image on.

    The first image carries the stream's start-up (worker processes, the model's first call, the first PNGs):
    counted in, it made the first ETAs many times too long (ten minutes for a run of twenty seconds). So the rate
    is the mean over the images after the first, and no ETA shows before the second; the elapsed time still
    counts from the start.
    """
    from tqdm import tqdm

    class _Bar(tqdm):
        first_t: float | None = None

        def update(self, n: float | None = 1) -> bool | None:
            if self.first_t is None and n and not self.disable:
                self.first_t = self._time()
            return super().update(n)

        @property
        def format_dict(self) -> dict[str, Any]:
            shown = super().format_dict
            if self.first_t is not None:
                after = self._time() - self.first_t
                # With `initial` at n and no rate, tqdm shows no ETA ("?").
                shown["rate"] = (self.n - 1) / after if self.n > 1 and after > 0 else None
                shown["initial"] = self.n if shown["rate"] is None else shown["initial"]
            return shown

    return _Bar(total=total, desc="evaluate", unit="img", disable=disable, file=progress_file(), smoothing=0)


def _identity(config: EvaluateConfig, precision_used: str) -> dict[str, Any]:
    """What the files of a finished image depend on (`rundir.maps_identity`): the maps' model, weights, precision,
    token merging and scores, and the images, ground truth and sample their statistics were counted on.
    Resuming with other values would mix two runs in one folder."""
    return maps_identity(
        config.model,
        config.checkpoint,
        precision_used,
        config.token_merging,
        config.confidences,
        images_root=config.images_root,
        gt=config.gt,
        samples=config.samples,
    )


def _runtime_record(config: EvaluateConfig, device: Any) -> dict[str, Any]:
    """What the forward ran as, resolved from the options ("auto", None) on this device: device, precision
    ("fp32", "bf16", "fp16") and whether the model was compiled."""

    from eomt_ood.inference.predict import precision_name, resolve_runtime

    dtype, compiled = resolve_runtime(
        device, config.precision, config.compile, config.token_merging != "none"
    )
    return {"device": str(device), "precision_used": precision_name(dtype), "compiled": compiled}


def _token_merging_record(model: Any, config: EvaluateConfig) -> dict[str, Any] | None:
    """The token-merging settings the run used (resolved on the model when it was loaded), None when off."""
    if config.token_merging == "none":
        return None
    if model is not None:
        from eomt_ood.models.algm import token_merging_settings

        return token_merging_settings(model)
    return {"method": config.token_merging}


def _write_results(
    run: RunDir,
    config: EvaluateConfig,
    model: dict | None,
    totals: _Totals,
    timing: dict,
    extra: dict | None = None,
    map_fn: Any = map,
) -> dict[str, Any]:
    results = _results(config, totals, model)
    results["meta"]["inference"] = timing
    results["meta"].update(extra or {"token_merging": _token_merging_record(None, config)})
    if config.gt is not None and _settings(config).enabled:
        _add_intervals(results, config, run, map_fn)
    write_results(results, run.results_file)
    _write_report(run, results)
    return results


def gather_run(config: EvaluateConfig, timing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the store, results.json and report of a run folder whose images all have their records.

    What `evaluate_bravo` does after its images are finished, from the records on disk: for a run whose
    records were made elsewhere (another machine, a test). Returns the results dict.
    """
    from contextlib import nullcontext

    from eomt_ood.bravo.layout import subset_of_image
    from eomt_ood.data.images import find_images

    assert config.images_root is not None
    run = RunDir(config.out)
    rels = [r for r in find_images(config.images_root, exclude=run.path) if subset_of_image(r) is not None]
    missing = [rel for rel in rels if not run.is_done(rel, config.confidences)]
    if missing:
        raise UserError(f"{run.record_file(missing[0])}: missing ({len(missing)} image(s) not finished)")
    model = _model_record(None, config)
    totals = _Totals(config.confidences)
    records = _in_order(run, rels, [], lambda: iter(()))
    name = model["name"] if model else "unknown model"
    _write_store(run, config, name, records, totals, True, nullcontext())
    return _write_results(run, config, model, totals, timing or {}, None)


def _settings(config: EvaluateConfig) -> Any:
    from eomt_ood.bravo.intervals import Settings

    return Settings(config.bootstrap, config.bootstrap_seed, config.confidence_level)


def _add_intervals(results: dict[str, Any], config: EvaluateConfig, run: RunDir, map_fn: Any = map) -> None:
    """Bootstrap intervals of every score block under `meta` (`meta.intervals`, `meta.bootstrap`), from the
    per-image statistics of the store just written, read one subset at a time where `map_fn` runs it (the
    subsets of every score, e.g. side by side in the run's workers): what the run holds in memory does not grow
    with its images."""
    from eomt_ood.bravo.intervals import ScoreStatistics, block_intervals
    from eomt_ood.bravo.rundir import attach_intervals, metric_blocks

    blocks = metric_blocks(results)
    named = dict(zip(config.confidences, blocks.values(), strict=True)) if len(blocks) == 1 else blocks
    stats = {score: ScoreStatistics.from_store(run.store_file, score) for score in named}
    intervals, meta = block_intervals(stats, named, _settings(config), map_fn)
    attach_intervals(results, intervals, meta)


def _quiet(message: str) -> None:
    pass


def _model_record(model: Any, config: EvaluateConfig) -> dict[str, Any] | None:
    """{"name", "kwargs"} of the model: from the loaded model, else from the checkpoint or the name."""
    from eomt_ood.bravo.rundir import model_record

    if model is not None:
        from eomt_ood.models.registry import model_config

        try:
            return dict(model_config(model))
        except ValueError:
            pass
    return model_record(
        {"model": config.model, "checkpoint": str(config.checkpoint) if config.checkpoint else None}
    )


def _model_name(model: Any, config: EvaluateConfig) -> str:
    """The model's short name for titles and the store: its registered name, else the checkpoint file's name."""
    record = _model_record(model, config)
    if record is not None:
        return str(record["name"])
    return Path(str(config.checkpoint)).name if config.checkpoint else "unknown model"


def _results(config: EvaluateConfig, totals: _Totals, model: dict[str, Any] | None) -> dict[str, Any]:
    """The results dict: one block of official keys per score (flat for one score) and `meta`."""
    from eomt_ood.bravo.rundir import NAN_NOTE
    from eomt_ood.bravo.scoring import scoring_meta

    blocks, unscored = {}, {}
    for score in config.confidences:
        metrics, left_out = totals.scorers[score].metrics()
        blocks[score] = metrics
        for subset, why in left_out.items():
            unscored.setdefault(subset, why)
    meta = scoring_meta(
        config.gt, RunDir(config.out).submission, config.samples, totals.scorers[config.confidences[0]]
    )
    meta.update(
        images_root=str(config.images_root),
        model=config.model,
        checkpoint=str(config.checkpoint) if config.checkpoint else None,
        model_config=model,
        confidences=list(config.confidences),
        unscored_subsets=unscored,
        skip_unreadable=config.skip_unreadable,
        random_weights=config.random_weights,
        nan=NAN_NOTE,
        statistics=RunDir(config.out).store_file.name if config.gt is not None else None,
    )
    return pack_results(blocks, meta) if config.gt is not None else {"meta": meta}


def _write_report(run: RunDir, results: dict) -> None:
    """The run's report: every confidence score, from the store just written, titled with the model's short name."""
    from eomt_ood.bravo.rundir import model_label
    from eomt_ood.io import warn

    try:
        from eomt_ood.reports.html import write_store_report
    except ModuleNotFoundError as exc:  # plotly is optional where only the numbers are wanted (a GPU node)
        warn(f"{run.report_file}: not written ({exc.name} is not installed); the results are complete")
        return
    title = f"eomt-ood BRAVO evaluation: {model_label(results['meta'])}"
    write_store_report(run.report_file, run.store_file, results, title)


def summary_table(results: dict[str, Any], score: str | None = None) -> str:
    """A short text table of the key metrics per subset of one score (the submitted one by default).

    `ood_px` is the fraction of OOD pixels among the scored ones: the AUPRC_OOD of a confidence that knows
    nothing, to read `auprc_ood` against.
    """
    from eomt_ood.bravo.layout import OOD_SUBSETS, SUBSETS
    from eomt_ood.bravo.rundir import intervals_of, score_block

    score, block = score_block(results, score)
    intervals = intervals_of(results, score)
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
            cells.append(f"{_cell(value):>12}")
        lines.append(f"{subset:<14}" + "".join(cells))
    for key in ("semantic_hmean", "ood_hmean", "bravo_index"):
        if key in block:
            interval = intervals.get(key)
            shown = f"  [{_cell(interval[0])}, {_cell(interval[1])}]" if interval else ""
            lines.append(f"{key:<14}{_cell(block[key]):>12}{shown}")
    if intervals:
        level = results.get("meta", {}).get("bootstrap", {}).get("level", 0.95)
        lines.append(f"[low, high]: {level:.0%} bootstrap interval over the test images (meta.intervals)")
    return f"{score}:\n" + "\n".join(lines) if score else "\n".join(lines)


def _cell(value: Any) -> str:
    """A metric for the console table: 4 decimals, "–" where it is missing or undefined (never "nan")."""
    import math

    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.4f}"
    return "–"
