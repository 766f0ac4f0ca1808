"""benchmarks/gpu_check.py at toy size on CPU, with the packages the GPU machine lacks blocked from import."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one whole gpu_check run at toy size: ~25-180 s

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# Not installed on the GPU machine (torch, timm, lightning, transformers, h5py, Pillow are).
BLOCKED = ("plotly", "streamlit", "zstandard", "cityscapesscripts", "skimage", "isal")
BLOCKER = f"""
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: the GPU machine lacks it)")
        return None

sys.meta_path.insert(0, _Blocked())
"""


def numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(BLOCKER)
    # OpenMP at its default thread count, as a user runs it: the DDP section forks CPU workers after the parent
    # used OpenMP (they hung in its thread team before each rank set one thread).
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"PYTHONPATH": str(site)}
    # Import the rest of the package the GPU machine may load (training, CLI) before running the script.
    code = (
        "import runpy, sys\n"
        "import eomt_ood.cli, eomt_ood.models.algm, eomt_ood.training.run\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--device', 'cpu', '--tiny']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # stdout carries the JSON object alone


def test_every_section_runs_without_the_missing_packages(tiny_run):
    assert list(tiny_run) == ["versions", "forward", "algm", "precision", "evaluate", "train", "ddp"]
    for name, section in tiny_run.items():
        assert "error" not in section, (name, section)
        assert all(math.isfinite(n) for n in numbers(section)), name


def test_forward_algm_precision_fields(tiny_run):
    forward = tiny_run["forward"]
    assert forward["compile_backend"] == "eager" and forward["image"] == "64x128"
    rows = forward["large"]
    for row in ("eager_fp32", "eager_bf16", "compiled_fp32", "compiled_bf16"):
        assert rows[row]["images_per_s"] > 0 and rows[row]["windows_per_s"] == pytest.approx(
            2 * rows[row]["images_per_s"], rel=1e-2
        )
        assert rows[row]["peak_memory_mib"] is None  # CPU: not measured
    assert forward["large_vs_paper"]["paper_fps"] == 25.0
    algm = tiny_run["algm"]
    assert algm["settings"]["method"] == "algm" and algm["algm"]["full_patch_grid"] == 16
    assert [block for block, _ in algm["algm"]["patch_tokens_after_merges"]] == [0, 2]
    for model in ("large_random_weights", "demo_model_trained"):
        for dtype in ("bf16", "fp16"):
            row = tiny_run["precision"][model][dtype]
            assert 0.9 < row["argmax_agreement"] <= 1 and row["meets_target"] == (
                row["argmax_agreement"] >= 0.999
            )
            assert 0 < row["mask_logits_max_abs_diff"] < tiny_run["precision"][model]["mask_logits_abs_max"]


def test_training_and_ddp_fields(tiny_run):
    train = tiny_run["train"]
    assert train["steps"] == 6 and len(train["losses"]) == 6 and train["precision"] == "bf16-mixed"
    assert isinstance(train["loss_falls"], bool)
    ddp = tiny_run["ddp"]
    assert ddp["processes"] == 2 and len(ddp["losses_ddp"]) == len(ddp["losses_single"]) == 3
    # Same first-step weights and data: the two runs differ only by the loss's random point sampling.
    assert ddp["equal_within_tolerance"] is True
    assert ddp["sampling_noise"] > 0 and ddp["tolerance"] >= 3 * ddp["sampling_noise"]


def test_evaluate_section(tiny_run):
    # evaluate runs without plotly (the GPU machine has none): the report is skipped, the numbers are complete.
    out = tiny_run["evaluate"]
    assert out["images"] == 2 and out["precision"] == "fp32" and out["compiled"] is False
    assert out["evaluate_images_per_s"] > 0 and out["forward_only_images_per_s"] > 0
    assert out["evaluate_inference"]["predicted"] == 2
