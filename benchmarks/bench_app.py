"""Benchmark of the explorer at BRAVO scale, measured in headless Chromium. Prints one JSON object.

Builds a synthetic run folder whose store holds 4,000 BRAVO-size images (1024 x 2048, ACDC 1080 x 1920): previews,
per-image statistics, confusion matrices and pooled histograms only, written with the store's own `StoreWriter`,
`ImageRecord` and `make_previews` (no model, no PNGs: the image view and the grid read nothing else). Then it
serves the explorer on it (`eomt-ood app RUN_DIR`, as a user would) and times, from the browser's side:

- ``first_meaningful_render_s``: from opening the URL to the first page of thumbnails shown (``cold``: the first
  visit after the server started, which also opens the store and imports the app; ``warm``: a later visit);
- ``open_image_s``: a click on a thumbnail until the image view shows that image's picture;
- ``grid_page_s``: "next page" until the next 24 thumbnails are all loaded (pages not seen before);
- ``threshold_s``: typing a new exact threshold in the image view until the picture and the outcome counts of the
  new threshold are shown.

Each of the last three is the median over ``--repeats`` tries (each try on something not cached yet); ``targets``
gives the issue's limits on this machine. ``load_average`` is the machine's 1-minute load when the run started:
the cores are shared, so compare figures taken under similar load. ``pythondontwritebytecode`` says whether the
environment stops Python from caching bytecode (then a fresh server compiles every module it imports, and the cold
render shows it); results go to benchmarks/results/bench_app_cpu.json.

Run: ``uv run --frozen python benchmarks/bench_app.py [--images 4000] [--repeats 5] [--keep DIR]``; building the
store takes about a minute (reused with ``--keep``), the measurements about one more.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import machine
import numpy as np

from eomt_ood.bravo.rundir import RunDir
from eomt_ood.data.labels import TRAIN_ID_COLORS
from eomt_ood.store import ImageRecord, StoreWriter, make_previews, preview_shape

SCORES = ("msp", "rba")
# (subset, images per 4,000, full-resolution size, input path pattern)
PLAN = (
    ("ACDCfog", 400, (1080, 1920), "bravo_ACDC/fog/test/GP{k:03d}/{i:06d}_rgb_anon.png"),
    ("ACDCrain", 400, (1080, 1920), "bravo_ACDC/rain/test/GP{k:03d}/{i:06d}_rgb_anon.png"),
    ("ACDCnight", 400, (1080, 1920), "bravo_ACDC/night/test/GP{k:03d}/{i:06d}_rgb_anon.png"),
    ("ACDCsnow", 400, (1080, 1920), "bravo_ACDC/snow/test/GP{k:03d}/{i:06d}_rgb_anon.png"),
    ("synrain", 500, (1024, 2048), "bravo_synrain/city{k:02d}/{i:06d}_leftImg8bit.png"),
    ("SMIYC", 100, (1024, 2048), "bravo_SMIYC/RoadAnomaly21/images/{i:06d}.png"),
    ("synobjs", 700, (1024, 2048), "bravo_synobjs/object{k:02d}/{i}.png"),
    ("synflare", 500, (1024, 2048), "bravo_synflare/city{k:02d}/{i:06d}_leftImg8bit.png"),
    ("outofcontext", 600, (1024, 2048), "bravo_outofcontext/city{k:02d}/{i:06d}_leftImg8bit.png"),
)
OOD = {"SMIYC", "synobjs"}
TARGETS = {"first_meaningful_render_s": 3.0, "open_image_s": 1.0, "grid_page_s": 1.0, "threshold_s": 0.5}
POOL = 48  # distinct preview sets, reused over the images (the store holds each image's own copy)


# ------------------------------------------------------------------------------------------------ the store


def smooth(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """A smooth random field in [0, 1] of `shape` (low-resolution noise, upsampled by repetition and a blur)."""
    low = rng.random((shape[0] // cell + 2, shape[1] // cell + 2))
    field = np.kron(low, np.ones((cell, cell)))[: shape[0], : shape[1]]
    kernel = np.ones(cell) / cell
    field = np.apply_along_axis(lambda r: np.convolve(r, kernel, "same"), 1, field)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, "same"), 0, field)


def preview_set(rng: np.random.Generator, shape: tuple[int, int], ood: bool) -> dict[str, np.ndarray]:
    """The packed previews of one synthetic street-like image at preview size `shape` (`make_previews`)."""
    h, w = shape
    gt = np.kron(rng.integers(0, 19, (h // 16 + 1, w // 32 + 1)), np.ones((16, 32), np.int64))[:h, :w]
    gt = gt.astype(np.uint8)
    gt[-h // 12 :] = 255
    invalid = np.zeros(shape, np.uint8)
    if ood:
        cy, cx, r = (
            rng.integers(h // 4, 3 * h // 4),
            rng.integers(w // 4, 3 * w // 4),
            rng.integers(10, h // 5),
        )
        yy, xx = np.mgrid[:h, :w]
        invalid[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    pred = gt.copy()
    wrong = smooth(rng, shape, 16) > 0.75
    pred[wrong] = (pred[wrong] + 1) % 19
    pred[gt == 255] = 0
    levels = {}
    for s, score in enumerate(SCORES):
        conf = 0.75 + 0.2 * smooth(rng, shape, 8) - 0.4 * invalid - 0.2 * wrong - 0.03 * s
        levels[score] = np.clip(conf * 65536, 0, 65535).astype(np.uint16)
    photo = 0.7 * TRAIN_ID_COLORS[np.minimum(gt, 18)] + 60 * smooth(rng, shape, 4)[..., None]
    photo[invalid != 0] = (230, 220, 60)
    rgb = np.clip(photo, 0, 255).astype(np.uint8)
    top2_class = np.stack([pred, (pred + 1) % 19]).astype(np.uint8)
    first = np.clip(levels[SCORES[0]] / 65536, 0.5, 1.0)
    top2_score = np.stack([first, 1 - first]).astype(np.float16)
    return make_previews(
        pred, levels, gt_label=gt, gt_invalid=invalid, rgb=rgb, top2=(top2_class, top2_score)
    )


def image_stats(rng: np.random.Generator, subset: str) -> dict[str, dict[str, float]]:
    """Plausible per-image statistics of every score (NaN where a metric does not apply, as the store has it)."""
    nan = float("nan")
    out = {}
    ood_fraction = float(rng.uniform(0.002, 0.12)) if subset in OOD else nan
    valid = float(rng.integers(1_500_000, 2_000_000))
    for s, score in enumerate(SCORES):
        row = {
            "miou": float(rng.uniform(0.3, 0.9)) if subset != "SMIYC" else nan,
            "ece": float(rng.uniform(0.01, 0.25)) if subset != "SMIYC" else nan,
            "mean_confidence": float(rng.uniform(0.7, 0.98) - 0.01 * s),
            "num_valid": valid,
            "num_invalid": valid * ood_fraction if subset in OOD else 0.0,
            "auroc_ood": nan,
            "auprc_ood": nan,
            "fpr95_ood": nan,
            "ood_fraction": ood_fraction,
        }
        if subset in OOD:
            row.update(
                auroc_ood=float(rng.uniform(0.6, 0.99)),
                auprc_ood=float(rng.beta(2, 2)),
                fpr95_ood=float(rng.uniform(0.02, 0.9)),
            )
        out[score] = row
    return out


def pooled_histograms(rng: np.random.Generator, ood: bool) -> dict[str, np.ndarray]:
    """Pooled (65536,) histograms of one subset: correct / wrong valid pixels and OOD positives / negatives."""

    def hist(a: float, b: float, n: int) -> np.ndarray:
        return np.bincount(np.minimum((rng.beta(a, b, n) * 65536).astype(np.int64), 65535), minlength=65536)

    correct, wrong = hist(8, 1.2, 2_000_000), hist(3, 2, 300_000)
    valid = correct + wrong
    invalid = hist(2, 3, 60_000) if ood else np.zeros(65536, np.int64)
    return {"correct": correct, "wrong": wrong, "ood_pos": invalid, "ood_neg": valid}


def build_run(run: Path, count: int, seed: int = 0) -> Path:
    """A run folder holding only config.yaml and predictions.h5 with `count` synthetic BRAVO-size images."""
    rng = np.random.default_rng(seed)
    folder = RunDir(run)
    folder.write_config({"model": "eomt_test", "confidences": list(SCORES), "images_root": None, "gt": None})
    total = sum(n for _, n, _, _ in PLAN)
    pools: dict[tuple[tuple[int, int], bool], list] = {}
    with StoreWriter(folder.store_file, model="eomt_test", confidences=list(SCORES)) as store:
        index = 0
        for subset, share, size, pattern in PLAN:
            n = max(1, round(count * share / total))
            shape = preview_shape(*size)
            pool = pools.setdefault((shape, subset in OOD), [])
            for k in range(n):
                if len(pool) < POOL:
                    pool.append(preview_set(rng, shape, subset in OOD))
                cm = rng.integers(0, 3000, (19, 19)) + np.diag(rng.integers(50_000, 200_000, 19))
                levels = np.sort(rng.choice(65536, 64, replace=False)).astype(np.uint16)
                counts = rng.integers(0, 1000, (64, 3)).astype(np.int32)
                record = ImageRecord(
                    pattern.format(k=k % 40, i=index),
                    subset,
                    *size,
                    previews=pool[k % len(pool)],
                    stats=image_stats(rng, subset),
                    cm=cm,
                    pixels=(int(cm.sum()), 1000, 50_000),
                    sparse={score: (levels, counts) for score in SCORES},
                )
                store.add(record)
                index += 1
        for subset, _, _, _ in PLAN:
            for score in SCORES:
                store.add_histograms(score, subset, pooled_histograms(rng, subset in OOD))
    return run


# ------------------------------------------------------------------------------------------------ the browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the app exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the app did not answer on {url}")


# JavaScript conditions, polled by Playwright on every animation frame.
GRID_LOADED = """(first) => {
  const cells = [...document.querySelectorAll('button.eo-cell')];
  if (!cells.length || (first !== null && cells[0].dataset.index === first)) return false;
  return cells.every((c) => { const img = c.querySelector('img'); return img.complete && img.naturalWidth > 0; });
}"""
IMAGE_SHOWN = """(rel) => {
  const title = [...document.querySelectorAll('h3')].some((h) => h.textContent.includes(rel));
  const picture = document.querySelector('.eo-mapview img');
  return title && picture !== null && picture.complete && (picture.getAttribute('src') || '').startsWith('data:image/png');
}"""
THRESHOLD_SHOWN = """([text, before]) => {
  const caption = [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stCaptionContainer"]')]
    .some((c) => c.textContent.includes(text));
  const picture = document.querySelector('.eo-mapview img');
  return caption && picture !== null && picture.complete && picture.getAttribute('src') !== before;
}"""


def first_grid_cell(page) -> str | None:
    return page.evaluate("() => document.querySelector('button.eo-cell')?.dataset.index ?? null")


def measure(url: str, repeats: int, screenshots: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            renders = []
            for _ in range(2):  # cold (first visit after the start), then warm
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                start = time.perf_counter()
                page.goto(url)
                page.wait_for_function(GRID_LOADED, arg=None, timeout=180_000, polling="raf")
                renders.append(time.perf_counter() - start)
                if len(renders) == 1:
                    page.close()
            out["first_meaningful_render_s"] = {"cold": renders[0], "warm": renders[1]}

            pages = []
            for _ in range(repeats):
                first = first_grid_cell(page)
                start = time.perf_counter()
                page.get_by_role("button", name="page ▶").click()
                page.wait_for_function(GRID_LOADED, arg=first, timeout=60_000, polling="raf")
                pages.append(time.perf_counter() - start)
            if screenshots:
                page.screenshot(path=str(screenshots / "bench_grid.png"))

            opens = []
            for k in range(repeats):
                cell = page.locator("button.eo-cell").nth(k)
                rel = cell.get_attribute("title")
                start = time.perf_counter()
                cell.click()
                page.wait_for_function(IMAGE_SHOWN, arg=rel, timeout=60_000, polling="raf")
                opens.append(time.perf_counter() - start)
                if k < repeats - 1:
                    page.get_by_role("tab", name="Dataset").click()
                    page.wait_for_function(GRID_LOADED, arg=None, timeout=60_000, polling="raf")

            moves = []
            # The picture is drawn before the sidebar's controls: wait for the sidebar of the image just opened,
            # or the first value typed may go to the field being replaced.
            page.wait_for_function(
                "(rel) => document.querySelector('[data-testid=stSidebar]').textContent.includes(rel)",
                arg=rel,
                timeout=60_000,
                polling="raf",
            )
            box = page.get_by_label("doubt threshold (exact)")
            for k in range(repeats):
                value = 0.12 + 0.05 * k  # where the synthetic maps' doubts lie, so the picture changes
                before = page.evaluate("() => document.querySelector('.eo-mapview img').getAttribute('src')")
                box.fill(f"{value:.6f}")
                start = time.perf_counter()
                box.press("Enter")
                # Each column names the doubt of the level it flags at: (level + 0.5) / 65536.
                shown = (math.ceil(value * 65536 - 0.5) + 0.5) / 65536
                page.wait_for_function(
                    THRESHOLD_SHOWN, arg=[f"doubt ≥ {shown:.6f}:", before], timeout=60_000, polling="raf"
                )
                moves.append(time.perf_counter() - start)
            if screenshots:
                page.screenshot(path=str(screenshots / "bench_image.png"))
        finally:
            browser.close()
    out["grid_page_s"] = {"median": statistics.median(pages), "all": pages}
    out["open_image_s"] = {"median": statistics.median(opens), "all": opens}
    out["threshold_s"] = {"median": statistics.median(moves), "all": moves}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="Build the run here once and reuse it.")
    parser.add_argument("--screenshots", type=Path, default=None, help="Folder for two screenshots.")
    args = parser.parse_args()

    described = machine.describe()  # the load when the run starts
    with tempfile.TemporaryDirectory() as tmp:
        run = (args.keep or Path(tmp)) / f"bench-app-{args.images}"
        build_s = None
        if not RunDir(run).store_file.is_file():
            start = time.perf_counter()
            build_run(run, args.images)
            build_s = time.perf_counter() - start
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "eomt_ood.cli", "app", str(run), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_healthy(url, server)
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
            timings = measure(url, args.repeats, args.screenshots)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        store_mb = RunDir(run).store_file.stat().st_size / 1e6
    report = {
        "images": args.images,
        "store_mb": round(store_mb, 1),
        "build_store_s": build_s,
        **described,
        # Without bytecode caching every start compiles streamlit and the app's modules again: the cold render
        # pays for it (a normal install writes .pyc files once).
        "pythondontwritebytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        **timings,
        "targets": TARGETS,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
