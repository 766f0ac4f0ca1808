"""Benchmark of `eomt-ood evaluate` against the model's forward passes alone (the floor), in one run. Prints JSON.

For a model with random weights (default `eomt_test` at input side S = 1024: a near-free forward, so that what
is measured is the pipeline around it) on a generated BRAVO-layout set of 1024 x 2048 images (two windows each,
Cityscapes size), per image:

- ``forward_s``: the model's forward over the image's windows, nothing else (the median of three measurements:
  before, between and after the runs; ``forward_runs_s`` lists them);
- ``evaluate_s``: `evaluate_bravo` from its first image to its last image stored (reading, windows, merge,
  upsampling, scores, argmax, quantisation, statistics, PNGs, records, store), per image; ``end_s``: what the run
  then does once (results, intervals, report);
- ``beyond_forward_s``: the difference (target: 0.3 s with one score, 0.5 s with four, on 2 CPU cores);
- ``startup_s``: from the call to the first image being predicted (model load, worker start);
- ``store_bytes``: predictions.h5 bytes per image, beyond what the file holds once per run (the pooled histograms
  of every subset and score, which a 9-image run would otherwise spread over 9 images); ``store_run_bytes``: that
  once-per-run part; ``bravo_run_gb``: the file of a whole BRAVO run of 3,900 such images (target: under 5 GB).

With ``--commands``, the same is measured as whole `eomt-ood evaluate` processes on N and 2N images: their
difference divided by N is the per-image cost with start-up cancelled (medians of ``--repeats`` alternating
pairs); ``fixed_s`` is what remains of the N run (start-up and the once-per-run end: results, intervals, report),
``startup_s`` the start-up the N runs recorded (from `evaluate` starting: imports of torch and the model code
included), ``first_image_s`` the seconds from starting the process to its images bar appearing (the issue's
measure: interpreter, command-line parsing and all imports included; median of the N and 2N runs), and
``import_floor_s`` the seconds from starting a process that only imports torch and timm to the end of its
imports (its exit, about 0.7 s of torch's teardown, not counted); ``peak_rss_mb_n`` and ``peak_rss_mb_2n``
are the peak RSS of the N and 2N runs' main process, and ``rss_per_image_mb`` their difference per image
(what a run holds per image it has done, up to `eomt_ood.io.FreedMemory`'s slack of 512 MB). With
``--memory``, ``memory`` gives the peak RSS of the main process of one whole run each on N, 2N and 4N images,
with torch's default threads. CPU seconds (the process and its workers, all cores) are printed beside wall
seconds: ``cpu_beyond_forward_s`` is the work a machine with more cores hides behind the forward, and it moves
less than wall time when other work shares the machine.

Run: ``uv run python benchmarks/bench_evaluate.py [--images 9] [--scores msp] [--commands [--repeats 3]]
[--memory] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine
import torch

from eomt_ood.data.demo import write_demo
from eomt_ood.evaluate import EvaluateConfig, evaluate_bravo
from eomt_ood.inference.predict import prepare_model
from eomt_ood.inference.windows import window_starts
from eomt_ood.models import create_model, save_checkpoint

FOUR_SCORES = "msp,max_score,rba,energy"


def forward_only(
    model: torch.nn.Module, count: int, side: int, device: str, micro_batch: int
) -> tuple[float, float]:
    """Wall and CPU seconds for the forward passes of `count` images of side x 2 side (two windows each)."""
    windows = len(window_starts(2 * side, side)) * count
    batch = torch.rand(min(micro_batch, windows), 3, side, side, device=device)
    with torch.inference_mode():
        model(batch[:1])  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        for first in range(0, windows, micro_batch):
            model(batch[: min(micro_batch, windows - first)])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def in_process(data: Path, checkpoint: Path, out: Path, scores: str, args: argparse.Namespace) -> dict:
    """One `evaluate_bravo` call: its seconds, its recorded start-up, and the store's size."""
    config = EvaluateConfig(
        out=out,
        images_root=data / "images",
        gt=data / "gt",
        checkpoint=checkpoint,
        confidences=tuple(scores.split(",")),
        device=args.device,
        precision=args.precision,
        micro_batch=args.micro_batch,
        workers=args.workers,
    )
    start = time.perf_counter()
    try:
        results = evaluate_bravo(config, progress=False)
    except Exception as exc:  # random weights can leave a subset degenerate; the timing still stands
        print(f"note: {exc}", file=sys.stderr)
        results = json.loads((out / "results.json").read_text())
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "startup": results["meta"]["inference"].get("startup_seconds", 0.0),
        "streaming": results["meta"]["inference"]["seconds"],  # up to the last image stored
        **store_size(out / "predictions.h5"),
    }


def store_size(path: Path) -> dict:
    """The store's bytes: the whole file, and the part it holds once per run (pooled histograms)."""
    import h5py

    sizes: list[int] = []

    def add(_: str, item: object) -> None:
        if isinstance(item, h5py.Dataset):
            sizes.append(item.id.get_storage_size())

    with h5py.File(path, "r") as store:
        for group in ("histograms", "level_histograms"):
            if group in store:
                store[group].visititems(add)
    per_run = sum(sizes)
    return {"store_bytes": path.stat().st_size, "store_run_bytes": per_run}


# `python -m eomt_ood.cli`, printing its own peak RSS as it exits.
_CLI_WITH_PEAK = (
    machine.PEAK_RSS_AT_EXIT
    + "import runpy\nrunpy.run_module('eomt_ood.cli', run_name='__main__', alter_sys=True)\n"
)


# What `evaluate` writes on stderr when its images bar appears: the model is loaded and the first image's
# prediction starts (the bar is made before the lazy stream of images is first pulled).
_BAR_SHOWN = b"evaluate:"


def watched(
    argv: list[str], marker: bytes, env: dict[str, str] | None = None
) -> tuple[float, float, int, str]:
    """Run `argv` to its end: the wall seconds from starting it to `marker` first showing on its stderr (NaN if
    never), the wall seconds of the whole process, its exit code, and its stderr."""
    start = time.perf_counter()
    seen = float("nan")
    stderr = bytearray()
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) as child:
        while chunk := os.read(child.stderr.fileno(), 1 << 16):
            stderr += chunk
            if seen != seen and marker in stderr:  # still NaN: the first sighting
                seen = time.perf_counter() - start
        returncode = child.wait()
    return seen, time.perf_counter() - start, returncode, stderr.decode(errors="replace")


def command(
    data: Path, checkpoint: Path, out: Path, scores: str, args: argparse.Namespace, threads: int | None
) -> tuple[float, float, float, float]:
    """Wall seconds of a whole `eomt-ood evaluate` process, the CPU seconds of it and its workers, the peak RSS
    (MB) of its main process, and the wall seconds from starting the process to its images bar appearing (the
    first image being predicted, interpreter start and imports included); `threads`: torch's threads in it
    (None: torch's default)."""
    argv = [sys.executable, "-c", _CLI_WITH_PEAK, "evaluate", "--root", str(data / "images"), "--gt"]
    argv += [str(data / "gt"), "--checkpoint", str(checkpoint), "--out", str(out), "--confidence", scores]
    argv += ["--device", args.device, "--precision", args.precision, "--workers", str(args.workers)]
    before = machine.cpu_seconds(children_only=True)
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    first_image, wall, returncode, stderr = watched(argv, _BAR_SHOWN, env)
    cpu = machine.cpu_seconds(children_only=True) - before
    # A random model leaves some subsets unscored, which `evaluate` reports with exit code 2 after writing
    # everything; a run that wrote no results is what fails here.
    if not (out / "results.json").is_file():
        raise SystemExit(f"evaluate wrote no results ({returncode}):\n{stderr[-3000:]}")
    return wall, cpu, machine.peak_rss_mb(stderr), first_image


def import_floor() -> float:
    """Wall seconds from starting a process that imports torch and timm (the model code needs both) to the end
    of those imports, its exit not counted: the floor under any start-up of a command that runs a model (median
    of three)."""
    code = "import sys, torch, timm\nprint('imported', file=sys.stderr, flush=True)"
    return statistics.median(watched([sys.executable, "-c", code], b"imported")[0] for _ in range(3))


def _recorded_startup(run: Path) -> float:
    """The start-up a command run recorded: from `evaluate` starting (before torch and the model code are
    imported) to the first image being predicted."""
    return json.loads((run / "results.json").read_text())["meta"]["inference"]["startup_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=9, help="images in the set (9 = one per subset)")
    parser.add_argument("--model", default="eomt_test", help="registered model, built with random weights")
    parser.add_argument("--img-size", type=int, default=1024)
    parser.add_argument("--scores", default="msp", help=f"comma-separated scores, e.g. {FOUR_SCORES}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--commands", action="store_true", help="also time whole CLI runs on N and 2N images")
    parser.add_argument("--repeats", type=int, default=3, help="N / 2N command pairs; medians are printed")
    parser.add_argument(
        "--memory", action="store_true", help="also the peak RSS of whole runs on N, 2N and 4N images"
    )
    args = parser.parse_args()
    described = machine.describe()  # the load when the run starts
    torch.set_num_threads(args.threads)
    side = args.img_size
    per_subset = max(1, args.images // 9)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_demo(tmp / "data", seed=0, per_subset=per_subset, size=(side, 2 * side))
        count = sum(1 for _ in (tmp / "data" / "images").rglob("*.*"))
        torch.manual_seed(0)
        model = create_model(args.model, img_size=side)
        checkpoint = save_checkpoint(model, tmp / "model.safetensors")
        prepare_model(model, args.device)
        # The floor is measured before, between and after the runs; its median stands (a one-off load spike on a
        # shared machine moves one measurement, not the median).
        forwards = [forward_only(model, count, side, args.device, args.micro_batch)]
        run = in_process(tmp / "data", checkpoint, tmp / "run", args.scores, args)
        forwards.append(forward_only(model, count, side, args.device, args.micro_batch))
        evaluate_s = (run["streaming"] - run["startup"]) / count
        if args.commands:
            write_demo(tmp / "double", seed=1, per_subset=2 * per_subset, size=(side, 2 * side))
            pairs = []  # (N run, 2N run), alternating, each into a fresh folder
            for repeat in range(args.repeats):
                single = command(
                    tmp / "data", checkpoint, tmp / f"cmd1-{repeat}", args.scores, args, args.threads
                )
                double = command(
                    tmp / "double", checkpoint, tmp / f"cmd2-{repeat}", args.scores, args, args.threads
                )
                pairs.append((single, double))
            single = tuple(statistics.median(p[0][i] for p in pairs) for i in (0, 1, 2, 3))
            double = tuple(statistics.median(p[1][i] for p in pairs) for i in (0, 1, 2, 3))
        forwards.append(forward_only(model, count, side, args.device, args.micro_batch))
        forward_s = statistics.median(wall for wall, _ in forwards) / count
        forward_cpu_s = statistics.median(cpu for _, cpu in forwards) / count
        per_image_bytes = (run["store_bytes"] - run["store_run_bytes"]) / count
        report = {
            "model": f"{args.model} (random weights), img_size {side}",
            "image": f"{side}x{2 * side}",
            "images": count,
            "scores": args.scores.split(","),
            "device": args.device,
            "torch_threads": args.threads,
            "workers": args.workers,
            **described,
            "in_process": {
                "forward_s": round(forward_s, 4),
                "forward_runs_s": [round(wall / count, 4) for wall, _ in forwards],
                "evaluate_s": round(evaluate_s, 4),
                "beyond_forward_s": round(evaluate_s - forward_s, 4),
                "startup_s": round(run["startup"], 3),
                "end_s": round(run["seconds"] - run["streaming"], 2),
                "store_bytes": round(per_image_bytes),
                "store_run_bytes": run["store_run_bytes"],
                "bravo_run_gb": round((run["store_run_bytes"] + 3900 * per_image_bytes) / 1e9, 2),
            },
            "targets": {
                "beyond_forward_s": 0.3 if len(args.scores.split(",")) == 1 else 0.5,
                "startup_s": 3.0,
                "first_image_s": 3.0,
                "bravo_run_gb": 5.0,
            },
        }
        if args.commands:
            per_image = (double[0] - single[0]) / count
            cpu_per_image = (double[1] - single[1]) / count
            report["commands"] = {
                "seconds_n": round(single[0], 2),
                "seconds_2n": round(double[0], 2),
                "repeats": args.repeats,
                "per_image_s": round(per_image, 4),
                "beyond_forward_s": round(per_image - forward_s, 4),
                "cpu_per_image_s": round(cpu_per_image, 4),
                "forward_cpu_s": round(forward_cpu_s, 4),
                "cpu_beyond_forward_s": round(cpu_per_image - forward_cpu_s, 4),
                "fixed_s": round(single[0] - count * per_image, 2),
                "startup_s": round(
                    statistics.median(_recorded_startup(tmp / f"cmd1-{r}") for r in range(args.repeats)), 2
                ),
                "first_image_s": round(statistics.median(p[i][3] for p in pairs for i in (0, 1)), 2),
                "import_floor_s": round(import_floor(), 2),
                "peak_rss_mb_n": round(single[2], 1),
                "peak_rss_mb_2n": round(double[2], 1),
                "rss_per_image_mb": round((double[2] - single[2]) / count, 2),
            }
        if args.memory:
            report["memory"] = memory(tmp, checkpoint, per_subset, args)
    print(json.dumps(report, indent=2))


def memory(tmp: Path, checkpoint: Path, per_subset: int, args: argparse.Namespace) -> dict:
    """Peak RSS of the main process of whole runs on N, 2N and 4N images, one run each, with torch's default
    threads (as users run it; with one thread the allocator's heaps grow less): flat memory gives the same
    peak within `FreedMemory`'s slack (what the process may grow by between two trims)."""
    from eomt_ood.io import FreedMemory

    peaks = {}
    for factor in (1, 2, 4):
        data = tmp / f"memory{factor}"
        write_demo(
            data, seed=10 + factor, per_subset=factor * per_subset, size=(args.img_size, 2 * args.img_size)
        )
        images = sum(1 for _ in (data / "images").rglob("*.*"))
        peaks[str(images)] = round(
            command(data, checkpoint, tmp / f"memory-run{factor}", args.scores, args, None)[2], 1
        )
    return {"peak_rss_mb": peaks, "slack_mb": FreedMemory().slack >> 20}


if __name__ == "__main__":
    main()
