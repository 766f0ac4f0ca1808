"""Bootstrap intervals and paired differences of BRAVO runs (what they mean: the README, "How sure is a number").

The glue between the per-image statistics of a run (in its prediction store or statistics file,
`eomt_ood.store`, where `evaluate` and `score` write them as images finish) and `eomt_ood.metrics.bootstrap`:

- `ScoreStatistics`: one confidence score of one run, per subset its image keys and a loader of its
  `ImageSetStatistics`, read from a prediction store or statistics file (`ScoreStatistics.from_store`).
- `run_replicates`: the replicates of every official key of a results block, over the subsets the block
  scored; the point values are checked against the block, so statistics that belong to another run are a
  `UserError`, never a silently wrong interval. Each subset is one `bootstrap.SubsetJob` that reads its own
  statistics where it runs, so the subsets (of every score, `block_intervals`) can run side by side in a
  process pool.
- `same_images` / `paired_differences`: two runs over the same images, resampled with the same draws.

Images of a subset enter the bootstrap in one canonical order, sorted by their image key (the raw
submission's `_pred.png` path, which `evaluate` and `score` both know), so two runs over the same images get
the same draws image by image, whatever order they were scored in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from eomt_ood.bravo.layout import OOD_SUBSETS, SEMANTIC_SUBSETS, SUBSETS
from eomt_ood.bravo.submission import raw_names
from eomt_ood.errors import UserError
from eomt_ood.metrics import bootstrap as bs
from eomt_ood.metrics.image_stats import ImageSetStatistics

DEFAULT_REPLICATES = bs.DEFAULT_REPLICATES
DEFAULT_SEED = bs.DEFAULT_SEED
DEFAULT_LEVEL = bs.DEFAULT_LEVEL
METHOD = (
    "percentile bootstrap: images resampled with replacement within each subset, B draws seeded per subset"
)
COVERS = (
    "the choice of test images only: not training seeds, not other test sets, "
    "not the pixel sample of --samples"
)
# A point value recomputed from per-image statistics equals the official one up to the order of float sums.
_POINT_TOLERANCE = 1e-9

MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]
"""Something that maps a function over items and yields the results in order: `map`, or a process pool's
`map` (`eomt_ood.io.ProcessMap`)."""


def image_key(relpath: str) -> str:
    """The key that identifies an image across runs: its raw `_pred.png` path (input `bravo_x/a/b.png` ->
    `bravo_x/a/b_pred.png`)."""
    return raw_names(relpath)[0]


@dataclass(frozen=True)
class Settings:
    """Bootstrap settings: replicates B (0 = off), seed, two-sided confidence level."""

    replicates: int = DEFAULT_REPLICATES
    seed: int = DEFAULT_SEED
    level: float = DEFAULT_LEVEL

    @property
    def enabled(self) -> bool:
        return self.replicates > 0

    def check(self, prefix: str = "--") -> Settings:
        """`self`, or a `UserError` naming the option that is out of range."""
        if self.replicates < 0:
            raise UserError(
                f"{prefix}bootstrap: must be 0 (off) or a number of replicates, got {self.replicates}"
            )
        if 0 < self.replicates < 50:
            raise UserError(
                f"{prefix}bootstrap: {self.replicates} replicates are too few for a percentile interval"
            )
        if self.seed < 0:
            raise UserError(f"{prefix}bootstrap-seed: must be >= 0, got {self.seed}")
        if not 0.5 <= self.level < 1.0:
            raise UserError(f"{prefix}confidence-level: must lie in [0.5, 1), got {self.level}")
        return self


# ------------------------------------------------------------------------------------------------ statistics


@dataclass
class ScoreStatistics:
    """Per-image statistics of one confidence score of one run.

    keys: {subset: image keys, sorted}; `subset(name)` gives its `ImageSetStatistics` in that order (loaded
    on demand, so a file is read one subset at a time). source: where they come from (for messages); score:
    the confidence score's name where they are stored.
    """

    source: str
    keys: dict[str, list[str]]
    loader: Callable[[str], ImageSetStatistics]
    score: str = ""

    def subset(self, name: str) -> ImageSetStatistics:
        return self.loader(name)

    @property
    def images(self) -> int:
        return sum(len(k) for k in self.keys.values())

    @classmethod
    def from_store(cls, path: str | Path, score: str | None = None) -> ScoreStatistics:
        """From a prediction store or statistics file; `score` None (or a file holding a single score): its
        first score. Images without ground truth are left out."""
        from eomt_ood.store import StoreReader

        with StoreReader(path) as reader:
            if score is None or (score not in reader.confidences and len(reader.confidences) == 1):
                score = reader.confidences[0]
            if score not in reader.confidences:
                raise UserError(
                    f"{path}: no per-image statistics for confidence {score!r} "
                    f"(it has {', '.join(reader.confidences)})"
                )
            found: dict[str, list[tuple[str, int]]] = {}
            for index, relpath, subset in reader.iter_images():
                if reader.has_ground_truth(index):
                    found.setdefault(subset, []).append((image_key(relpath), index))
        order = {s: sorted(found[s]) for s in SUBSETS if s in found}
        loader = _StoreSubsets(str(path), score, {s: [i for _, i in rows] for s, rows in order.items()})
        keys = {s: [k for k, _ in rows] for s, rows in order.items()}
        return cls(f"{path} ({score})", keys, loader, score)


@dataclass(frozen=True)
class _StoreSubsets:
    """The loader of `ScoreStatistics.from_store`: a subset's statistics, read from the file when called.
    A plain record, so that a worker process can be handed it (`subset_jobs`) and read the subset itself."""

    path: str
    score: str
    indices: dict[str, list[int]]  # {subset: store indices in key order}

    def __call__(self, subset: str) -> ImageSetStatistics:
        from eomt_ood.store import StoreReader

        with StoreReader(self.path) as reader:
            return reader.image_statistics(self.score, self.indices[subset])


# ------------------------------------------------------------------------------------------------ replicates


def scored_subsets(block: Mapping[str, Any]) -> list[str]:
    """The subsets with official per-subset keys in a results block, in the official order."""
    return [s for s in SUBSETS if any(k.startswith(f"{s}_") and k != f"{s}_hmean" for k in block)]


def run_replicates(
    stats: ScoreStatistics,
    block: Mapping[str, Any],
    settings: Settings,
    where: str = "results",
    map_fn: MapFn = map,
) -> bs.Replicates:
    """Replicates of every scalar key of `block` (one score's official keys), over the subsets it scored.

    The replicates' point values (recomputed from the per-image statistics) must equal the block's official
    values: else the statistics belong to another run, which is a `UserError` naming both sources. map_fn:
    what runs the subsets (`bs.subset_replicates` over their jobs, results in order), e.g. a process pool's
    `map`; default here, one after another.
    """
    jobs = subset_jobs(stats, block, settings.replicates, settings.seed, where)
    parts = list(map_fn(bs.subset_replicates, jobs))
    return checked_replicates(stats, block, jobs, parts, settings.seed, where)


def check_statistics(stats: ScoreStatistics, block: Mapping[str, Any], where: str = "results") -> None:
    """A `UserError` unless the per-image statistics reproduce the official values of `block` (one cheap
    replicate: the point values are what is checked)."""
    run_replicates(stats, block, Settings(1, DEFAULT_SEED), where)


def subset_jobs(
    stats: ScoreStatistics, block: Mapping[str, Any], replicates: int, seed: int, where: str = "results"
) -> list[bs.SubsetJob]:
    """One `bs.SubsetJob` per subset that `block` scored (official order), each loading its subset from
    `stats` where it runs; a `UserError` if `stats` lack one of them."""
    subsets = scored_subsets(block)
    if not subsets:
        raise UserError(f"{where}: no per-subset metrics to resample")
    lacking = [s for s in subsets if s not in stats.keys]
    if lacking:
        raise UserError(
            f"{stats.source}: no per-image statistics of subset {lacking[0]}, which {where} scored; "
            "they belong to another run"
        )
    return [
        bs.SubsetJob(
            name,
            partial(stats.loader, name),
            bs.draw_counts(len(stats.keys[name]), replicates, seed, stream=name),
            name in SEMANTIC_SUBSETS,
            name in OOD_SUBSETS,
        )
        for name in subsets
    ]


def interval_pool(workers: int) -> Any:
    """An `eomt_ood.io.ProcessMap` of `workers` processes whose `map` runs subsets (`run_replicates`,
    `block_intervals`): forked with the statistics reader (h5py) already loaded, so a short run does not pay
    for that import once in every worker."""
    import eomt_ood.store  # noqa: F401
    from eomt_ood.io import ProcessMap

    return ProcessMap(workers)


def checked_replicates(
    stats: ScoreStatistics,
    block: Mapping[str, Any],
    jobs: Sequence[bs.SubsetJob],
    parts: Sequence[bs.SubsetReplicates],
    seed: int,
    where: str = "results",
) -> bs.Replicates:
    """The `Replicates` of `subset_jobs` (drawn with `seed`) from their results, checked: every point value
    must equal the block's."""
    reps = bs.combine(parts, {job.name: job.counts for job in jobs}, seed=seed)
    for key, value in reps.point.items():
        official = block.get(key)
        if not isinstance(official, int | float) or not _same(value, float(official)):
            raise UserError(
                f"{stats.source}: the per-image statistics give {key} = {value:.6g}, but {where} has "
                f"{official}; they belong to another run (pass the run's own statistics file)"
            )
    return reps


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= _POINT_TOLERANCE


def interval_table(reps: bs.Replicates, level: float) -> dict[str, list[float]]:
    """{key: [low, high]} (JSON-ready; NaN where every replicate is degenerate)."""
    return {key: [iv.low, iv.high] for key, iv in bs.percentile_intervals(reps, level).items()}


def block_intervals(
    stats: Mapping[str, ScoreStatistics],
    blocks: Mapping[str, Mapping[str, Any]],
    settings: Settings,
    map_fn: MapFn = map,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, Any]]:
    """Intervals of every results block ({score: official keys}) from its score's statistics.

    Returns ({score: {key: [low, high]}}, the `meta.bootstrap` block: method, settings, seconds, and the
    degenerate replicates per score). Blocks without metrics (no ground truth) are left out. map_fn: as in
    `run_replicates`; the subsets of every score go through it in one stream, so a pool keeps busy across
    scores.
    """
    start = time.perf_counter()
    jobs = {
        score: subset_jobs(stats[score], block, settings.replicates, settings.seed)
        for score, block in blocks.items()
        if scored_subsets(block)
    }
    parts = iter(map_fn(bs.subset_replicates, [job for score_jobs in jobs.values() for job in score_jobs]))
    intervals: dict[str, dict[str, list[float]]] = {}
    degenerate: dict[str, dict[str, int]] = {}
    for score, score_jobs in jobs.items():
        mine = [next(parts) for _ in score_jobs]
        reps = checked_replicates(stats[score], blocks[score], score_jobs, mine, settings.seed)
        intervals[score] = interval_table(reps, settings.level)
        degenerate[score] = {k: v for k, v in reps.degenerate().items() if v}
    meta = {
        "method": METHOD,
        "covers": COVERS,
        "replicates": settings.replicates,
        "seed": settings.seed,
        "level": settings.level,
        "seconds": round(time.perf_counter() - start, 3),
        "degenerate": degenerate,
    }
    return intervals, meta


# ------------------------------------------------------------------------------------------------ pairing


def same_images(a: ScoreStatistics, b: ScoreStatistics, subsets: Sequence[str] | None = None) -> str | None:
    """None when both runs hold the same images in every subset of `subsets` (default: those both hold),
    else one line saying where they differ (pairing needs the same images)."""
    names = subsets if subsets is not None else [s for s in a.keys if s in b.keys]
    for subset in names:
        left, right = set(a.keys.get(subset, [])), set(b.keys.get(subset, []))
        if left != right:
            only_a, only_b = sorted(left - right), sorted(right - left)
            parts = []
            if only_a:
                parts.append(f"{len(only_a)} only in {a.source} (e.g. {only_a[0]})")
            if only_b:
                parts.append(f"{len(only_b)} only in {b.source} (e.g. {only_b[0]})")
            return f"subset {subset}: the runs cover different images: {'; '.join(parts)}"
    return None


def paired_differences(a: bs.Replicates, b: bs.Replicates, level: float) -> dict[str, bs.Difference]:
    """{key: Difference} of run a minus run b (same draws; check `same_images` first)."""
    return bs.paired_differences(a, b, level)
