"""The `eomt-ood` command line: thin Typer commands, each calling one library function.

Every command turns a `UserError` into one line on stderr and exit code 2 (see `eomt_ood.errors`).
Heavy imports (torch, the models) happen inside the commands so `eomt-ood --help` stays fast.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from eomt_ood.errors import LostProcess, Terminated, UserError

app = typer.Typer(
    name="eomt-ood",
    help="Robustness and OOD evaluation of segmentation models (EoMT, BRAVO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from eomt_ood import __version__

        typer.echo(f"eomt-ood {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    """Robustness and OOD evaluation of segmentation models (EoMT, BRAVO)."""


# Commands are added below this line, one thin function each.

_BOOTSTRAP_HELP = (
    "Replicates of the bootstrap intervals over test images (0 = off); written under meta.intervals."
)


# Options that evaluate and predict share (one declaration each).
_DEVICE = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N.")
_PRECISION = typer.Option(
    "auto", "--precision", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16 (autocast)."
)
_COMPILE = typer.Option(
    None, "--compile/--no-compile", help="torch.compile the model (default: on CUDA, off on CPU)."
)
_TOKEN_MERGING = typer.Option(
    "none", "--token-merging", help="none, or algm (ALGM token merging at inference; EoMT only)."
)
_MICRO_BATCH = typer.Option(4, "--micro-batch", min=1, help="Windows per forward pass.")


@app.command("compare")
def compare_command(
    run_dirs: list[Path] = typer.Argument(
        ...,
        metavar="RUN_DIR",
        help="Run directories written by `eomt-ood evaluate` (or results JSON of `score --stats`).",
    ),
    out: Path = typer.Option(..., "--out", help="Comparison report (HTML) to write."),
    csv_path: Path | None = typer.Option(
        None, "--csv", help="Also write the table as CSV (one row per run)."
    ),
    confidence: str | None = typer.Option(
        None,
        "--confidence",
        help="Score to compare (default: each run's first, the submitted one), or several separated by "
        "commas (msp,rba): each run is then compared once per score, paired to the first row; a results file "
        "of one unnamed score (from `score`) is taken as the one score asked for.",
    ),
    paper: bool = typer.Option(
        False,
        "--paper",
        help="Also print the EoMT paper's Table E beside the measured AUPRC_OOD of every score.",
    ),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", help="Replicates of the intervals and paired differences (0 = off)."
    ),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap draws."),
    confidence_level: float = typer.Option(0.95, "--confidence-level", help="Level of the intervals."),
) -> None:
    """Put several evaluation runs side by side: OOD table with intervals and paired differences to the first
    run, PR curves, bars; flags differing conventions."""
    from eomt_ood.bravo.intervals import Settings
    from eomt_ood.io import warn
    from eomt_ood.reports.compare import compare_runs, score_list

    settings = Settings(bootstrap, bootstrap_seed, confidence_level).check()
    summary = compare_runs(run_dirs, out, csv_path=csv_path, confidence=confidence, bootstrap=settings)
    for line in summary["differences"]:
        warn(line)
    print(summary["table"])
    if paper:
        print(summary["paper_table"])
    scores = len(score_list(confidence))
    what = f"{len(run_dirs)} run(s)" + (f" x {scores} scores" if scores > 1 else "")
    print(f"compared {what} -> {out}" + (f", {csv_path}" if csv_path else ""))


@app.command("models")
def models_command() -> None:
    """List the registered model names and confidence scores."""
    from eomt_ood.confidence import list_confidences
    from eomt_ood.models import list_models

    typer.echo("models:      " + ", ".join(list_models()))
    typer.echo("confidences: " + ", ".join(list_confidences()))


@app.command("evaluate")
def evaluate_command(
    dataset: str = typer.Option("bravo", "--dataset", help="Benchmark to evaluate on (bravo)."),
    root: Path | None = typer.Option(
        None, "--root", help="BRAVO image tree (bravo_ACDC/..., ...); default: the demo."
    ),
    gt: Path | None = typer.Option(
        None, "--gt", help="Ground-truth folder or tar; without it nothing is scored."
    ),
    model: str | None = typer.Option(None, "--model", help="Registered model name (see `eomt-ood models`)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Weights (.safetensors, .bin, .ckpt)."),
    confidence: list[str] = typer.Option(
        ["msp"], "--confidence", help="Confidence score(s); the first is submitted."
    ),
    out: Path | None = typer.Option(None, "--out", help="Run directory (runs/bravo-demo for the demo)."),
    samples: Path | None = typer.Option(
        None, "--samples", help="bravo_SAMPLING.tar: score the official sample."
    ),
    device: str = _DEVICE,
    precision: str = _PRECISION,
    compile_model: bool | None = _COMPILE,
    token_merging: str = _TOKEN_MERGING,
    micro_batch: int = _MICRO_BATCH,
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help=(
            "Worker processes per device: reading, scoring, PNG writing, then the intervals' subsets "
            "(default min(cpus, 8); 0 = inline)."
        ),
    ),
    devices: int = typer.Option(
        1, "--devices", min=1, help="Processes to share the images over (one per GPU with --device cuda)."
    ),
    skip_unreadable: bool = typer.Option(
        False, "--skip-unreadable", help="Leave out unreadable input images (recorded) instead of failing."
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", help=_BOOTSTRAP_HELP),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap draws."),
    confidence_level: float = typer.Option(0.95, "--confidence-level", help="Level of the intervals."),
    random_weights: bool = typer.Option(
        False, "--random-weights", help="Evaluate --model untrained, without --checkpoint (smoke tests only)."
    ),
) -> None:
    """Run a model on BRAVO, write the submission, score it, and write results, store and report.

    With no --root and no --checkpoint it runs offline on the bundled demo set and demo model.
    """
    from eomt_ood.bravo.rundir import metric_blocks
    from eomt_ood.evaluate import EvaluateConfig, demo_config, evaluate_bravo, summary_table

    if dataset != "bravo":
        raise UserError(f"--dataset: unknown dataset {dataset!r}; available: bravo")
    scores = tuple(s.strip() for item in confidence for s in item.split(",") if s.strip())
    options: dict[str, Any] = dict(
        confidences=scores,
        samples=samples,
        device=device,
        precision=precision,
        compile=compile_model,
        token_merging=token_merging,
        micro_batch=micro_batch,
        workers=workers,
        devices=devices,
        skip_unreadable=skip_unreadable,
        bootstrap=bootstrap,
        bootstrap_seed=bootstrap_seed,
        confidence_level=confidence_level,
        random_weights=random_weights,
    )
    if root is None and checkpoint is None and model is None:
        if gt is not None:
            raise UserError("--gt needs --root (the images it belongs to)")
        config = demo_config(out, **options)
    else:
        if out is None:
            raise UserError("--out: the run directory is required when not running the demo")
        config = EvaluateConfig(
            out=out, images_root=root, gt=gt, model=model, checkpoint=checkpoint, **options
        )
    results = evaluate_bravo(config)
    if not results:  # a rank other than 0 of a multi-process run: rank 0 reports
        return
    if len(results) > 1:
        tables = [summary_table(results, s) for s in (metric_blocks(results) if len(scores) > 1 else [None])]
        typer.echo("\n\n".join(tables))  # a blank line between the scores' tables
    typer.echo(f"wrote {config.out}/results.json, report.html, predictions.h5 and submission/")


@app.command("make-data")
def make_data_command(
    kind: str = typer.Argument(..., help="What to make: cityscapes-synthetic (procedural street scenes)."),
    out: Path = typer.Option(..., "--out", help="Output folder (Cityscapes layout: leftImg8bit/, gtFine/)."),
    num_images: int = typer.Option(..., "--num-images", min=1, help="Images in total over all splits."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same bytes."),
    size: str = typer.Option("256x512", "--size", help="HEIGHTxWIDTH of every image."),
    splits: str = typer.Option("train,val", "--splits", help="Comma-separated splits (train, val, test)."),
    val_fraction: float = typer.Option(
        0.2,
        "--val-fraction",
        min=0.0,
        max=1.0,
        help="Share of each split but train (at least 1 image each); without train, the splits share equally.",
    ),
    color: bool = typer.Option(False, "--color", help="Also write _gtFine_color.png label visualisations."),
    simple: bool = typer.Option(False, "--simple", help="Six classes, large objects (for tiny test models)."),
) -> None:
    """Write a synthetic dataset; `cityscapes-synthetic` gives street scenes in the Cityscapes folder layout."""
    from eomt_ood.data.streets import parse_size, write_dataset

    if kind != "cityscapes-synthetic":
        raise UserError(f"make-data {kind}: unknown kind; expected cityscapes-synthetic")
    split_names = tuple(s.strip() for s in splits.split(",") if s.strip())
    counts = write_dataset(out, num_images, seed, parse_size(size), split_names, val_fraction, color, simple)
    print(", ".join(f"{n} {split}" for split, n in counts.items()) + f" image(s) -> {out}")


@app.command("predict")
def predict_command(
    model: str | None = typer.Option(
        None,
        "--model",
        help="Registered model name, e.g. eomt_large_patch16_1024 (default: the architecture the checkpoint "
        "records: our metadata, a config.json beside it, or its tensor shapes).",
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Weights (official, HF or ours)."),
    input_dir: Path = typer.Option(..., "--input", help="Folder of .png/.jpg images (searched recursively)."),
    output_dir: Path = typer.Option(..., "--output", help="Folder for raw _pred/_conf PNGs (mirrors input)."),
    confidence: str = typer.Option("msp", "--confidence", help="Confidence score written to _conf.png."),
    layout: str = typer.Option("bravo", "--layout", help="Output layout (bravo: raw BRAVO submission)."),
    micro_batch: int = _MICRO_BATCH,
    device: str = _DEVICE,
    precision: str = _PRECISION,
    compile_model: bool | None = _COMPILE,
    token_merging: str = _TOKEN_MERGING,
    random_weights: bool = typer.Option(
        False, "--random-weights", help="Run --model untrained, without --checkpoint (smoke tests only)."
    ),
) -> None:
    """Windowed semantic inference: write a prediction and a confidence PNG for every input image."""
    from eomt_ood.bravo.layout import PREDICT_SETTINGS
    from eomt_ood.bravo.submission import check_layout, check_predict_settings, input_images
    from eomt_ood.io import check_output

    # Paths and flags first: no torch import for a typo.
    check_output(output_dir, "--output", [input_dir, checkpoint], folder=True)
    input_images(input_dir, output_dir)
    check_layout(layout)
    if checkpoint is not None and random_weights:
        raise UserError("--random-weights: given with --checkpoint; choose one")
    if random_weights and model is None:
        raise UserError("--random-weights: needs --model, the architecture to build untrained")
    if checkpoint is None and not random_weights:
        raise UserError(
            f"--checkpoint: no weights given for {model or 'the model'}; pass --checkpoint FILE, or --model NAME "
            "--random-weights to run it untrained"
        )
    if checkpoint is not None and not checkpoint.exists():
        raise UserError(f"--checkpoint: {checkpoint}: file not found")

    from eomt_ood.bravo.rundir import compared_keys, maps_identity
    from eomt_ood.bravo.submission import predict_folder, record_predict_settings
    from eomt_ood.confidence import get_confidence
    from eomt_ood.confidence.levels import NonFiniteConfidence
    from eomt_ood.inference.predict import parse_device, precision_name, resolve_runtime
    from eomt_ood.models import build_model
    from eomt_ood.models.algm import enable_token_merging, parse_token_merging

    torch_device = parse_device(device)
    merging = parse_token_merging(token_merging)
    dtype, compiled = resolve_runtime(torch_device, precision, compile_model, merging is not None)
    get_confidence(confidence)
    # What the maps depend on: resuming into a folder made with other values would mix two runs.
    settings = maps_identity(
        model, checkpoint, precision_name(dtype), token_merging, [confidence], input=input_dir
    )
    settings["layout"] = layout
    recorded = check_predict_settings(output_dir, settings, compared_keys(settings))
    net = build_model(model, checkpoint)
    if merging is not None:
        enable_token_merging(net, merging)
    record_predict_settings(output_dir, settings)
    try:
        report = predict_folder(
            net, input_dir, output_dir, confidence, layout, micro_batch, dtype, torch_device, compile=compiled
        )
    except NonFiniteConfidence as exc:  # the weights' fault, not an image's: name them
        raise UserError(f"{checkpoint or model}: {exc}") from None
    finally:
        # No map was written (every image failed, or an early stop): leave the folder as it was.
        if not recorded and not any(output_dir.rglob("*_pred.png")):
            (output_dir / PREDICT_SETTINGS).unlink(missing_ok=True)
    done = f"{report.written} written, {report.skipped} already complete, {len(report.failed)} failed"
    print(f"{done} -> {output_dir}")
    if report.failed:
        total = report.written + report.skipped + len(report.failed)
        raise UserError(f"--input: {len(report.failed)} of {total} images could not be read (named above)")


@app.command("regress")
def regress_command(
    baseline: Path = typer.Option(..., "--baseline", help="Baseline JSON (same format as results.json)."),
    results: Path = typer.Option(..., "--results", help="The run's results.json."),
    tolerance: float = typer.Option(
        0.005, "--tolerance", help="Allowed move in the bad direction (absolute)."
    ),
    keys: list[str] = typer.Option(
        ["*_auprc_ood"], "--keys", help="fnmatch pattern(s) of watched metric keys; repeat or comma-separate."
    ),
    update: bool = typer.Option(
        False, "--update", help="Rewrite the baseline (and its per-image statistics) with the current run."
    ),
    significance: float | None = typer.Option(
        None,
        "--significance",
        help="Fail only drops whose paired bootstrap interval (level 1 - this, e.g. 0.05) excludes 0.",
    ),
    confidence: str | None = typer.Option(
        None, "--confidence", help="Gate only this score of a results file with several."
    ),
    baseline_stats: Path | None = typer.Option(
        None, "--baseline-stats", help="The baseline's per-image statistics (default: its meta.statistics)."
    ),
    results_stats: Path | None = typer.Option(
        None, "--results-stats", help="The results' per-image statistics (default: its meta.statistics)."
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Replicates of the paired test."),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap draws."),
) -> None:
    """Regression gate: exit 1 if a watched metric got worse than the baseline by more than the tolerance
    (and, with --significance, by more than image sampling explains)."""
    from eomt_ood.bravo.intervals import Settings
    from eomt_ood.regress import check_update_outputs, run_gate

    if update:  # the baseline and its statistics become outputs
        check_update_outputs(baseline, baseline_stats, results, results_stats)
    patterns = [p.strip() for key in keys for p in key.split(",") if p.strip()]
    code, report = run_gate(
        baseline,
        results,
        patterns,
        tolerance,
        update,
        significance=significance,
        confidence=confidence,
        baseline_stats=baseline_stats,
        results_stats=results_stats,
        bootstrap=Settings(bootstrap, bootstrap_seed).check(),
    )
    print(report)
    raise typer.Exit(code)


@app.command("package")
def package_command(
    submission: Path = typer.Option(
        ..., "--submission", help="Raw submission folder or tar (_pred/_conf PNGs)."
    ),
    samples: Path = typer.Option(..., "--samples", help="The official bravo_SAMPLING.tar."),
    out: Path = typer.Option(..., "--out", help="Upload tar to write (<base>_encoded.bin members)."),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="Encoding processes (default min(cpus, 4); 0 or 1 = inline)."
    ),
) -> None:
    """Encode a raw submission into the BRAVO upload tar (docs/formats.md §4.1, §4.2)."""
    from eomt_ood.bravo.upload import package_upload
    from eomt_ood.io import warn

    summary = package_upload(submission, samples, out, progress=True, warn=warn, workers=workers)
    print(f"wrote {summary.images} encoded image(s), {summary.size_bytes / 1e6:.1f} MB, to {summary.path}")


@app.command("score")
def score_command(
    gt: Path = typer.Option(..., "--gt", help="Ground truth: folder or tar in the official GT layout."),
    submission: Path = typer.Option(
        ..., "--submission", help="Raw submission: folder or tar (.tar/.gz/.bz2/.xz) of _pred/_conf PNGs."
    ),
    out: Path = typer.Option(..., "--out", help="results.json to write (official keys + meta)."),
    subsets: list[str] = typer.Option(
        None, "--subsets", help="Only these subsets (repeat or comma-separate); default: all in the GT."
    ),
    samples: Path | None = typer.Option(
        None, "--samples", help="bravo_SAMPLING.tar: use the official per-image pixel sample."
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help="Reading and scoring processes, then the intervals' subsets (default min(cpus, 4); 0 or 1 = inline).",
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", help=_BOOTSTRAP_HELP),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap draws."),
    confidence_level: float = typer.Option(0.95, "--confidence-level", help="Level of the intervals."),
    stats: Path | None = typer.Option(
        None, "--stats", help="Also write the per-image statistics (HDF5), for paired compare / regress."
    ),
) -> None:
    """Score a raw BRAVO submission with the official metrics (docs/metrics.md), with bootstrap intervals."""
    from eomt_ood.bravo.intervals import Settings
    from eomt_ood.bravo.rundir import intervals_of, refuse_run_store, statistics_reference, write_results
    from eomt_ood.bravo.scoring import score_submission
    from eomt_ood.io import check_output

    settings = Settings(bootstrap, bootstrap_seed, confidence_level).check()
    check_output(out, "--out", [gt, submission, samples])
    if stats is not None:
        check_output(stats, "--stats", [gt, submission, samples, out])
        refuse_run_store(stats, "--stats")
    names = [s.strip() for item in subsets or [] for s in item.split(",") if s.strip()]
    if subsets and not names:
        raise UserError("--subsets: give at least one subset name")
    results = score_submission(
        gt,
        submission,
        subsets=names or None,
        samples=samples,
        workers=workers,
        bootstrap=settings,
        stats_out=stats,
        progress=True,  # on a terminal a bar, in a log file lines (`io.progress_file`)
    )
    if stats is not None:
        results["meta"]["statistics"] = statistics_reference(stats, out)  # type: ignore[index]
    write_results(results, out)
    interval = intervals_of(results).get("bravo_index")
    shown = f" [{interval[0]:.6f}, {interval[1]:.6f}]" if interval else ""
    print(f"bravo_index {results['bravo_index']:.6f}{shown} -> {out}" + (f", {stats}" if stats else ""))


@app.command("make-fixture")
def make_fixture_command(
    out: Path = typer.Option(..., "--out", help="Folder for gt/, submission/ and bravo_SAMPLING.tar."),
    seed: int = typer.Option(
        0, "--seed", min=0, help="Random seed; the same seed gives byte-identical files."
    ),
) -> None:
    """Write a small synthetic BRAVO fixture (GT, raw submission, sampling tar) for tests and demos."""
    from eomt_ood.bravo.fixture import make_fixture

    fixture = make_fixture(out, seed=seed)
    print(f"wrote {len(fixture.images)} images: {fixture.gt}, {fixture.submission}, {fixture.samples}")


@app.command("train")
def train_command(
    config: str = typer.Option(
        ...,
        "--config",
        help="Recipe: a bundled name (e.g. eomt_large_cityscapes_1024; see the configs/ folder) or a YAML path.",
    ),
    sets: list[str] | None = typer.Option(
        None, "--set", help="Override KEY=VALUE, e.g. trainer.max_steps=100."
    ),
    resume: str | None = typer.Option(
        None, "--resume", help="Checkpoint to resume from, or 'auto' (latest in --out)."
    ),
    out: Path = typer.Option(
        Path("runs/train"), "--out", help="Run folder: checkpoints, logs, final weights."
    ),
) -> None:
    """Train EoMT with the official recipe (Lightning; one or more GPUs/nodes, or CPU for tiny configs)."""
    from eomt_ood.config import load_config
    from eomt_ood.resources import find_config
    from eomt_ood.training.config import TrainConfig, check_paths

    recipe = load_config(TrainConfig, find_config(config), sets)
    check_paths(recipe, out, resume)  # before torch and Lightning are imported

    from eomt_ood.training.run import train

    weights = train(recipe, resume=resume, out_dir=out)
    print(f"trained -> {weights}")


@app.command("app")
def app_command(
    run_dirs: list[Path] = typer.Argument(
        None,
        metavar="RUN_DIR",
        help="Run directories written by `eomt-ood evaluate` (up to four side by side); none: the demo.",
    ),
    port: int = typer.Option(8501, "--port", min=1, max=65535),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (default: this machine only)."),
    allow: list[Path] = typer.Option(
        None,
        "--allow",
        help="A folder whose checkpoints 'Your image' may run (repeatable); nothing else is read.",
    ),
) -> None:
    """Open the Streamlit confidence explorer on RUN_DIR(s); reads nothing outside the given folders (and the
    images and ground truth the runs name)."""
    from eomt_ood.bravo.rundir import RunDir, load_results, resolve_run_dirs
    from eomt_ood.serve import check_address, check_allowed, serve_explorer
    from eomt_ood.store import StoreReader

    check_address(host, port)
    allowed = check_allowed(allow or [])
    if not run_dirs:
        from eomt_ood.evaluate import ensure_demo_run

        run_dirs = [ensure_demo_run()]
    runs = resolve_run_dirs(run_dirs)
    for run in runs:  # a broken run is one line here, not an error inside the page after the server started
        folder = RunDir(run)
        if folder.results_file.exists():
            load_results(folder.results_file)
        StoreReader(folder.store_file).close()
    raise typer.Exit(serve_explorer(runs, port=port, host=host, allow=allowed))


# What an interrupted command keeps and how to go on (Ctrl-C, SIGTERM where the command handles it: train, or a
# process of it lost); other commands write nothing until they finish.
_RESUME_HINTS = {
    "evaluate": "finished images are kept; run the same command again to resume",
    "predict": "finished images are kept; run the same command again to resume",
    "train": "the last checkpoint is kept; run the same command with --resume auto to continue",
}


_HELP_ORDER = (
    "evaluate", "score", "compare", "regress", "app", "predict", "package", "train", "models", "make-data",
    "make-fixture",
)  # fmt: skip
"""The order of `eomt-ood --help`'s command list: the main job first, then what reads its runs, then the rest."""


def _command_list() -> None:
    """`eomt-ood --help` lists every command beside the first paragraph of its help, in `_HELP_ORDER` (typer
    lists them as they were registered). Typer's rich help keeps that paragraph's line breaks, which the
    docstrings put mid-sentence: each command's summary is the paragraph on one line, for the panel to wrap."""
    order = {name: i for i, name in enumerate(_HELP_ORDER)}
    app.registered_commands.sort(key=lambda info: order.get(info.name or "", len(order)))  # a new one: last
    for info in app.registered_commands:
        text = info.help or (inspect.getdoc(info.callback) if info.callback else None)
        if info.short_help is None and text:
            info.short_help = " ".join(text.split("\n\n")[0].split())


_command_list()


def main() -> None:
    """Console-script entry point: every failure is one line on stderr and a non-zero exit code.

    A `UserError` exits 2, a usage error (unknown option, bad value, missing argument) exits 2 with click's
    message on one line, Ctrl-C exits 130 with what was kept (a `Terminated` command, 143). The click command is
    run here rather than through typer's runner, which would turn Ctrl-C into a silent exit code.
    """
    command = typer.main.get_command(app)
    ctx = None
    try:
        with _stops_redelivered(), command.make_context("eomt-ood", sys.argv[1:]) as ctx:
            command.invoke(ctx)
    except UserError as exc:
        _fail(str(exc), UserError.exit_code)
    except LostProcess as exc:
        hint = _RESUME_HINTS.get(getattr(ctx, "invoked_subcommand", None) or "")
        _fail(f"{exc}{'; ' + hint if hint else ''}", LostProcess.exit_code)
    except BrokenPipeError:
        # The reader of stdout went away (`eomt-ood evaluate --help | head`): nothing left to say to anyone.
        # stdout now points to /dev/null so that the interpreter's last flush cannot fail again; status 1, as
        # rich (which writes the help) gives when the pipe breaks under it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:
        # What the checks before the work cannot foresee: a write refused by the file system (a full disk, a
        # path under /proc), a file that vanished meanwhile. One line naming the file, exit 1.
        _fail(f"{exc.filename}: {exc.strerror or exc}" if exc.filename is not None else str(exc), 1)
    except tuple(_STOPS) as exc:
        name = getattr(ctx, "invoked_subcommand", None)
        hint = _RESUME_HINTS.get(name or "")
        stop = _stop_of(type(exc))
        assert stop is not None
        signum, said = stop
        _fail(f"{said}{': ' + hint if hint else ''}", 128 + signum, prefix="")
    except Exception as exc:
        # click (vendored by typer) signals exits and usage errors with exceptions that carry an exit code.
        code = getattr(exc, "exit_code", None)
        if not isinstance(code, int):
            raise
        if type(exc).__name__ in ("Exit", "NoArgsIsHelpError"):
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()  # type: ignore[attr-defined]
            sys.exit(code)
        if type(exc).__name__ == "Abort":
            _fail("aborted", 130, prefix="")
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        where = getattr(getattr(exc, "ctx", None), "command_path", "eomt-ood")
        _fail(f"{message.rstrip('.')} (see {where} --help)", code)


_STOPS: dict[type[BaseException], tuple[int, str]] = {
    KeyboardInterrupt: (signal.SIGINT, "interrupted"),
    Terminated: (signal.SIGTERM, "terminated"),
}
"""The exceptions that stop a command from outside: the signal each stands for, and the word the CLI says.
The command exits with 128 + the signal's number (130, 143), as a process killed by that signal would."""


def _stop_of(kind: type[BaseException]) -> tuple[int, str] | None:
    """(signal, word) of `_STOPS` for an exception type, None for any other."""
    return next((stop for base, stop in _STOPS.items() if issubclass(kind, base)), None)


REDELIVERY_DELAY = 0.05
"""Seconds between a stop being dropped and its signal being delivered again (see `_stops_redelivered`)."""


@contextlib.contextmanager
def _stops_redelivered() -> Iterator[None]:
    """While the command runs, a Ctrl-C (or a SIGTERM that raised `Terminated`) that the interpreter dropped
    is delivered again.

    Python raises a signal's exception wherever the main thread is. When that is a `__del__` method, a weakref
    callback or the garbage collector, the exception is printed ("Exception ignored in ...") and dropped: the
    command goes on as if the key had not been pressed. `evaluate` finished all of a run after a Ctrl-C that
    landed in a WeakValueDictionary's callback (1 in 20 tries of the fault test). The interpreter hands such
    an exception to `sys.unraisablehook`; this one says nothing and sends the same signal to the main thread
    again a moment later, from a timer thread. Sent from the hook itself, its handler would raise inside the
    hook, where that exception would be dropped too. A real signal, not `_thread.interrupt_main`, so that a
    main thread blocked in a wait is woken as by the first one. Every other unraisable exception goes to the
    hook that was there before. A stop still on its way when the command ends is let go."""
    previous, timers = sys.unraisablehook, []

    def hook(unraisable: Any) -> None:
        stop = _stop_of(unraisable.exc_type)
        if stop is None or sys.is_finalizing():
            previous(unraisable)
            return
        timer = threading.Timer(REDELIVERY_DELAY, _signal_main_thread, (stop[0],))
        timer.daemon = True
        timer.start()
        timers.append(timer)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
        for timer in timers:  # the command is over: nothing is left to stop
            timer.cancel()


def _signal_main_thread(signum: int) -> None:
    if hasattr(signal, "pthread_kill"):
        main = threading.main_thread().ident
        assert main is not None  # the main thread is running
        signal.pthread_kill(main, signum)
    else:  # Windows: the handler is called, but a wait in progress is not cut short
        import _thread

        _thread.interrupt_main(signal.Signals(signum))


def _fail(message: str, code: int, prefix: str = "error: ") -> None:
    print(prefix + " ".join(message.split()), file=sys.stderr, flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
