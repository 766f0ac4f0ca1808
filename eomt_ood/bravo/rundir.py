"""The one owner of a run folder and of the results JSON (docs/formats.md, "Run folder").

A run folder is what `eomt-ood evaluate` writes::

    RUN_DIR/config.yaml                the resolved settings (resuming with other settings is refused)
    RUN_DIR/submission/...             the raw BRAVO tree: 8-bit _pred.png, 16-bit _conf.png of the first score
    RUN_DIR/confidence/<score>/...     16-bit _conf.png of every further score
    RUN_DIR/records/<image>.npz        one record per finished image (`eomt_ood.store.ImageRecord`), written
                                       after the image's PNGs: an image is done when its record exists
    RUN_DIR/predictions.h5             the records gathered (`eomt_ood.store`), plus the pooled histograms
    RUN_DIR/results.json               official keys + `meta`; one block per score when there are several
    RUN_DIR/report.html                the report
    RUN_DIR/.lock                      held while a command writes the folder (who holds it is written inside)

A results file (also what `eomt-ood score` writes) is a flat object of official keys (`synobjs_auprc_ood`,
`bravo_index`, ...) plus `meta`, or, for several confidence scores, `{"msp": {...}, "rba": {...}, "meta": {...}}`.
NaN (an undefined metric) is written as the bare token `NaN`, as Python's `json` and the official evaluator do;
`meta.nan` says so. Bootstrap intervals (`eomt_ood.bravo.intervals`) live under `meta.intervals` in the same
layout as the metrics, with their settings in `meta.bootstrap`; `meta.statistics` names the file of per-image
statistics they came from (relative to the results file). The official keys never change. `evaluate`, `score`, `compare`, `regress`, the report and the app read and write these only
through this module.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eomt_ood.bravo.submission import raw_names
from eomt_ood.config import changed_setting, describe_change
from eomt_ood.errors import UserError
from eomt_ood.io import fingerprint, write_text_atomic

META = "meta"
FLAT = ""
"""Block name of a flat (single-score) results file."""
NAN_NOTE = "NaN marks an undefined metric and is written as the bare token NaN (Python's json, the official evaluator)"


# ------------------------------------------------------------------------------------------------ results files


def load_results(path: str | Path, what: str = "results") -> dict[str, Any]:
    """Parse a results JSON file (bare `NaN` tokens allowed); a missing or malformed file is a `UserError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read {what} file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of metrics, got {type(data).__name__}")
    return data


def write_results(results: Mapping[str, Any], out: str | Path) -> Path:
    """Write a results dict as JSON (NaN as the bare token `NaN`), atomically; `meta.nan` (added when absent)
    says so to readers whose JSON parser refuses the token."""
    meta = results.get(META)
    if isinstance(meta, Mapping) and "nan" not in meta:
        results = {**results, META: {**meta, "nan": NAN_NOTE}}
    return write_text_atomic(out, json.dumps(results, indent=2, allow_nan=True) + "\n")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metric_blocks(results: Mapping[str, Any], name: str = "results") -> dict[str, dict[str, Any]]:
    """The metrics of a results object per confidence-score block, `meta` left out.

    `{FLAT: {key: value}}` for a flat file, `{score: {key: value}}` for per-score blocks; values as stored
    (scalars and the `iou_valid` lists). The official Python API's wrapping `{"method": {...}, "result": true}` is
    read as flat. A top level that mixes metrics and blocks is a `UserError` (`name` is used in the message).
    """
    body = {k: v for k, v in results.items() if k != META}
    if (
        set(body) == {"method", "result"}
        and isinstance(body["result"], bool)
        and isinstance(body["method"], dict)
    ):
        body = body["method"]
    blocks = {k for k, v in body.items() if isinstance(v, dict)}
    if not blocks:
        return {FLAT: body}
    if len(blocks) != len(body):
        stray = sorted(set(body) - blocks)[:3]
        raise UserError(
            f"{name}: mixes per-score blocks ({', '.join(sorted(blocks)[:3])}) with top-level metrics "
            f"({', '.join(stray)}); expected one or the other"
        )
    return {block: {k: v for k, v in body[block].items() if k != META} for block in body}


def scalar_metrics(block: Mapping[str, Any]) -> dict[str, float]:
    """The scalar metrics of one block as floats (lists such as `iou_valid` left out)."""
    return {k: float(v) for k, v in block.items() if _is_scalar(v)}


def score_block(
    results: Mapping[str, Any], score: str | None = None, where: str = "results"
) -> tuple[str | None, dict[str, Any]]:
    """(score name, its flat metrics) of a results object.

    score None: the submitted score (`meta.confidences[0]`, else the first block). A flat file holds one score,
    the one `meta.confidences` names (None when it names none); asking it for another is a `UserError`.
    """
    blocks = metric_blocks(results, where)
    recorded = [str(c) for c in (results.get(META) or {}).get("confidences") or []]
    if set(blocks) == {FLAT}:
        own = recorded[0] if recorded else None
        if score is not None and own is not None and score != own:
            raise UserError(f"{where}: no results for confidence {score!r} (it has {own})")
        return score or own, blocks[FLAT]
    if score is None:
        score = recorded[0] if recorded and recorded[0] in blocks else next(iter(blocks))
    if score not in blocks:
        raise UserError(f"{where}: no results for confidence {score!r} (it has {', '.join(blocks)})")
    return score, blocks[score]


def pack_results(blocks: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any]:
    """A results object from {score: flat metrics}: flat for one score, one block per score for several."""
    if len(blocks) == 1:
        results = dict(next(iter(blocks.values())))
    else:
        results = {score: dict(block) for score, block in blocks.items()}
    results[META] = dict(meta)
    return results


def attach_intervals(
    results: dict[str, Any], intervals: Mapping[str, Mapping[str, Any]], bootstrap: Mapping[str, Any]
) -> None:
    """Put bootstrap intervals under `results["meta"]`, in the results' own layout (official keys untouched).

    intervals: {score: {key: [low, high]}}. Written as `meta.intervals` = {key: [low, high]} for a flat
    (single-score) file and {score: {key: [low, high]}} for per-score blocks; `meta.bootstrap` = `bootstrap`
    (method, settings, seconds), with its `degenerate` counts in the same layout.
    """
    meta = results.setdefault(META, {})
    info = dict(bootstrap)
    flat = set(metric_blocks(results)) == {FLAT}
    if flat:
        meta["intervals"] = dict(next(iter(intervals.values()), {}))
        info["degenerate"] = dict(next(iter((info.get("degenerate") or {}).values()), {}))
    else:
        meta["intervals"] = {score: dict(table) for score, table in intervals.items()}
    meta["bootstrap"] = info


def intervals_of(
    results: Mapping[str, Any], score: str | None = None, where: str = "results"
) -> dict[str, tuple[float, float]]:
    """{key: (low, high)} of one score's bootstrap intervals (`meta.intervals`, see `attach_intervals`); {}
    when the file has none. score: as in `score_block`."""
    table = (results.get(META) or {}).get("intervals")
    if not isinstance(table, Mapping) or not table:
        return {}
    name, _ = score_block(results, score, where)
    if set(metric_blocks(results, where)) != {FLAT}:
        table = table.get(name) or {}
    out = {}
    for key, pair in table.items():
        if isinstance(pair, list | tuple) and len(pair) == 2 and all(_is_scalar(v) for v in pair):
            out[key] = (float(pair[0]), float(pair[1]))
    return out


def statistics_file(results: Mapping[str, Any], results_path: str | Path) -> Path | None:
    """The per-image statistics file of a results file, or None: `meta.statistics` (relative to the results
    file's folder, or absolute), else a `predictions.h5` beside it (an evaluation's run folder). The caller
    checks that they belong to it (`eomt_ood.bravo.intervals.run_replicates`)."""
    folder = Path(results_path).parent
    recorded = (results.get(META) or {}).get("statistics")
    if isinstance(recorded, str) and recorded:
        path = folder / recorded
        return path if path.is_file() else None
    beside = folder / "predictions.h5"
    return beside if beside.is_file() else None


def read_paths(run: str | Path) -> list[Path]:
    """What a command reads of `run` (a run folder, or a results file and the statistics file it names), for
    checking that no output path is one of them (`eomt_ood.io.check_output`). A results file that cannot be
    read adds nothing here: reading it is where that is reported."""
    path = Path(run)
    if not path.is_file():
        return [path]
    try:
        stats = statistics_file(load_results(path), path)
    except UserError:
        stats = None
    return [path] if stats is None else [path, stats]


def refuse_run_store(path: str | Path, option: str) -> None:
    """`UserError` when `path` is the prediction store of a run folder: a statistics file written there would
    replace the run's store (`score --stats`, `regress --update`'s baseline statistics)."""
    path = Path(path)
    folder = RunDir(path.parent)
    if path.name == folder.store_file.name and folder.results_file.exists():
        raise UserError(f"{option}: {path} is the prediction store of a run folder; choose another path")


def statistics_reference(stats: str | Path, results_path: str | Path) -> str:
    """How a results file at `results_path` names its statistics file `stats`: relative to its folder when
    possible (the two move together), else absolute."""
    stats, folder = Path(stats).resolve(), Path(results_path).resolve().parent
    try:
        return os.path.relpath(stats, folder)
    except ValueError:  # another drive (Windows)
        return str(stats)


def model_record(meta: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The model a run used, as {"name", "kwargs"}: `meta.model_config`, else the checkpoint's metadata (read
    without loading tensors), else the registered name; None when nothing tells."""
    config = config or {}
    recorded = meta.get("model_config")
    if isinstance(recorded, Mapping) and recorded.get("name"):
        return {"name": recorded["name"], "kwargs": dict(recorded.get("kwargs") or {})}
    checkpoint = meta.get("checkpoint") or recorded_input(config, "checkpoint")
    if checkpoint:
        found = checkpoint_model_record(checkpoint)
        if found is not None:
            return found
    name = meta.get("model") or config.get("model")
    return {"name": name, "kwargs": {}} if name else None


RESUME_IDENTITY = "resume"
"""The config.yaml key of `maps_identity` (what a run's finished images depend on)."""


def maps_identity(
    model: str | None,
    checkpoint: str | Path | None,
    precision: str,
    token_merging: str,
    confidences: Sequence[str],
    **inputs: str | Path | None,
) -> dict[str, Any]:
    """What a folder's maps depend on, as `predict` and `evaluate` record it to refuse resuming with other values.

    model: the registered name given, else the one the checkpoint records (the same model named or not);
    checkpoint: its absolute path and `eomt_ood.io.fingerprint` (a file replaced in place is another model);
    precision: the resolved one ("fp32", "bf16", "fp16"; "auto" differs between devices); inputs: named input
    paths, made absolute (the same relative path from another folder is other data). Plain JSON/YAML values.
    """
    if model is None and checkpoint is not None:
        model = (checkpoint_model_record(checkpoint) or {}).get("name")
    identity: dict[str, Any] = {
        "model": model,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint is not None else None,
        "checkpoint_fingerprint": fingerprint(checkpoint) if checkpoint is not None else None,
        "precision": precision,
        "token_merging": token_merging,
        "confidences": list(confidences),
    }
    for name, path in inputs.items():
        identity[name] = str(Path(path).resolve()) if path is not None else None
    return identity


def compared_keys(identity: Mapping[str, Any]) -> list[str]:
    """The keys of a `maps_identity` a resume must match: all but the checkpoint's path, which is recorded for
    readers (`recorded_input`) while its fingerprint says whether the weights are the same (a checkpoint moved,
    or a package reinstalled elsewhere, holds the same weights)."""
    return [key for key in identity if key != "checkpoint"]


def recorded_input(config: Mapping[str, Any], key: str) -> Path | None:
    """An input a run's config.yaml names (`images_root`, `gt`, `samples`, `checkpoint`) as an absolute path:
    the one the run resolved when it started (`RESUME_IDENTITY`), else the recorded path if it is absolute. A
    relative path without that record is None: it was relative to a working directory no file recorded, and
    taken from the reader's own it could name other data."""
    identity = config.get(RESUME_IDENTITY)
    value = identity.get(key) if isinstance(identity, Mapping) and key in identity else config.get(key)
    if not value or not isinstance(value, str) or not Path(value).is_absolute():
        return None
    return Path(value)


def checkpoint_model_record(checkpoint: str | Path) -> dict[str, Any] | None:
    """{"name", "kwargs"} from an eomt-ood safetensors checkpoint's metadata, None for any other file."""
    if not str(checkpoint).endswith(".safetensors") or not Path(checkpoint).is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(checkpoint), "pt") as handle:  # the header only: no tensor is read
            metadata = handle.metadata() or {}
        parsed = json.loads(metadata["config"]) if "config" in metadata else None
    except Exception:  # a foreign or damaged file only means the model is not recorded here
        return None
    if not isinstance(parsed, dict) or not parsed.get("name"):
        return None
    return {"name": parsed["name"], "kwargs": dict(parsed.get("kwargs") or {})}


def model_label(meta: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> str:
    """A short name of a run's model for titles: the registered name, else the checkpoint's file name."""
    record = model_record(meta, config)
    if record is not None:
        return str(record["name"])
    checkpoint = meta.get("checkpoint") or (config or {}).get("checkpoint")
    return Path(str(checkpoint)).name if checkpoint else "unknown model"


# ------------------------------------------------------------------------------------------------ the folder


@dataclass(frozen=True)
class RunDir:
    """Paths and files of one run folder (see the module docstring); nothing is created until written."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def results_file(self) -> Path:
        return self.path / "results.json"

    @property
    def store_file(self) -> Path:
        return self.path / "predictions.h5"

    @property
    def report_file(self) -> Path:
        return self.path / "report.html"

    @property
    def submission(self) -> Path:
        return self.path / "submission"

    @property
    def records(self) -> Path:
        return self.path / "records"

    def conf_file(self, rel: str, score: str, first: bool) -> Path:
        """The 16-bit confidence PNG of input image `rel` for `score` (the submission's when `first`)."""
        root = self.submission if first else self.path / "confidence" / score
        return root / raw_names(rel)[1]

    def pred_file(self, rel: str) -> Path:
        return self.submission / raw_names(rel)[0]

    def record_file(self, rel: str) -> Path:
        return self.records / f"{rel}.npz"

    def is_done(self, rel: str, scores: tuple[str, ...] | list[str]) -> bool:
        """An image is done when its record exists (written after all its PNGs) and its PNGs are all still there
        (a file deleted since makes the image one to redo)."""
        files = [self.record_file(rel), self.pred_file(rel)]
        files += [self.conf_file(rel, score, index == 0) for index, score in enumerate(scores)]
        return all(path.is_file() for path in files)

    def outputs(self) -> tuple[Path, ...]:
        """Every file a command writes directly into the folder (a command must not take one as an input)."""
        return (self.config_file, self.results_file, self.store_file, self.report_file)

    # --- config.yaml ----------------------------------------------------------------------------------------

    def read_config(self) -> dict[str, Any]:
        """config.yaml as a dict ({} when absent); unreadable YAML is a `UserError`."""
        import yaml

        if not self.config_file.is_file():
            return {}
        try:
            data = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"{self.config_file}: not readable YAML ({exc.__class__.__name__})") from None
        return data if isinstance(data, dict) else {}

    def write_config(self, config: Mapping[str, Any]) -> None:
        import yaml

        write_text_atomic(self.config_file, yaml.safe_dump(dict(config), sort_keys=False))

    def check_resumable(self, identity: Mapping[str, Any]) -> None:
        """Refuse to resume into a folder whose finished images were made otherwise: `identity` (`maps_identity`
        of this run) against the one config.yaml recorded under `RESUME_IDENTITY`."""
        if not self.records.is_dir() or not any(self.records.iterdir()):
            return
        before = self.read_config().get(RESUME_IDENTITY)
        if not isinstance(before, Mapping):
            raise UserError(
                f"{self.path}: holds images of a run that did not record how they were made (an earlier "
                "version of eomt-ood); resuming could mix two runs, so choose another --out or delete it"
            )
        key = changed_setting(before, identity, compared_keys(identity))
        if key is not None:
            raise UserError(
                f"{self.path}: holds a run made with {describe_change(key, before, identity)}; resuming would "
                "mix the two, so choose another --out or delete it"
            )

    # --- results.json ---------------------------------------------------------------------------------------

    def read_results(self) -> dict[str, Any]:
        if not self.results_file.is_file():
            raise UserError(
                f"{self.results_file}: not found (is {self.path} an `eomt-ood evaluate` run folder?)"
            )
        return load_results(self.results_file)

    # --- the lock -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold an exclusive lock on the folder while `command` writes it; a second writer gets a `UserError`
        naming the process that holds it. The lock dies with its process (flock), so a kill leaves none.

        A folder this call created is removed again when the command fails before writing anything into it.
        """
        import fcntl

        created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / ".lock"
        handle = path.open("a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise UserError(
                    f"{self.path}: in use by {holder}; wait for it to finish or choose another --out"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} ({command})\n")
            handle.flush()
            try:
                yield
            except BaseException:
                if created and [p.name for p in self.path.iterdir()] == [".lock"]:
                    path.unlink()  # still held: no other process can have taken it in between
                    for folder in created:
                        with contextlib.suppress(OSError):
                            folder.rmdir()
                raise
        finally:
            handle.close()


def resolve_run_dirs(paths: list[str] | list[Path] | tuple) -> list[Path]:
    """Resolved run folders, each holding a prediction store, without duplicates; else a `UserError`."""
    if not paths:
        raise UserError("RUN_DIR: give at least one run folder (written by `eomt-ood evaluate`)")
    runs: list[Path] = []
    for path in paths:
        run = Path(path).resolve()
        if not RunDir(run).store_file.is_file():
            raise UserError(f"{path}: not a run folder (no predictions.h5)")
        if run not in runs:
            runs.append(run)
    return runs
