"""Shared fixtures: finished synthetic run folders (`run_support.build_run`), a tiny demo-style BRAVO set and a
tiny random checkpoint.

Tests share two cores with other work; one intra-op thread per test process keeps them predictable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# The explorer's support module sits beside the app script (app/support.py), not in the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))

from run_support import build_run


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished synthetic run folder (see `build_run`), shared by the app and report tests."""
    return build_run(tmp_path_factory.mktemp("first"), seed=0, name="run-a")


@pytest.fixture(scope="session")
def second_run(tmp_path_factory) -> Path:
    """Another finished run over the same layout (other seed): a second model to compare."""
    return build_run(tmp_path_factory.mktemp("second"), seed=1, name="run-b")


@pytest.fixture(scope="session")
def tiny_bravo(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder with images/ and gt/, checkpoint): the demo generator's BRAVO layout at 64 x 128, one image
    per subset, and a random `eomt_test` (seed 0). Read-only: tests write their runs elsewhere."""
    import torch

    from eomt_ood.data.demo import write_demo
    from eomt_ood.models import create_model, save_checkpoint

    root = tmp_path_factory.mktemp("tiny_bravo")
    write_demo(root / "data", seed=3, per_subset=1, size=(64, 128))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(create_model("eomt_test"), root / "model.safetensors")
    return root / "data", checkpoint
