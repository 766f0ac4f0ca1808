"""The bundled demo: a small EoMT trained on synthetic streets, evaluated on a generated BRAVO-layout set.

`eomt-ood evaluate --dataset bravo` with neither --root nor --checkpoint runs it offline: the set is generated
once into the user cache (deterministic), the checkpoint ships with the package (`eomt_ood/assets/demo`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from eomt_ood.errors import UserError

DEMO_VERSION = 1
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "demo" / "eomt_demo.safetensors"
DEMO_RUN_DIR = Path("runs/bravo-demo")


def demo_data_dir() -> Path:
    """Where the generated demo set lives (`$XDG_CACHE_HOME/eomt-ood`, else ~/.cache/eomt-ood)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "eomt-ood" / f"bravo-demo-v{DEMO_VERSION}"


def ensure_demo_data() -> Path:
    """Generate the demo BRAVO set once; returns its folder, holding `images/` and `gt/`."""
    folder = demo_data_dir()
    if not (folder / "COMPLETE").is_file():
        from eomt_ood.data.demo import write_demo  # the scene renderer and scipy: only to write the set

        print(f"writing the demo BRAVO set to {folder} (once) ...", file=sys.stderr)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        write_demo(tmp)
        (tmp / "COMPLETE").write_text("demo set complete\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    return folder


def demo_inputs() -> dict[str, Path]:
    """{"images_root", "gt", "checkpoint"} of the demo; a missing bundled checkpoint is a `UserError`."""
    if not DEMO_CHECKPOINT.is_file():
        raise UserError(f"{DEMO_CHECKPOINT}: the bundled demo checkpoint is missing from this installation")
    folder = ensure_demo_data()
    return {"images_root": folder / "images", "gt": folder / "gt", "checkpoint": DEMO_CHECKPOINT}
