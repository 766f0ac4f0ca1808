"""The explorer in a real browser: `eomt-ood app` served on 127.0.0.1, opened with headless Chromium (Playwright).

One served app (the two shared runs of conftest.py) and one browser for the whole module. Every check compares
what the page shows with what the support code computes from the store: the pictures' pixels with
`support.compose`, the hover text with `support.format_readout`, counts and lists with numpy.

Needs Debian's /usr/bin/chromium (`apt-get install -y chromium`; .ci/run installs it); skipped without it.
Set EOMT_OOD_SCREENSHOTS=<folder> to keep the screenshots.
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import dataset_view as dv
import numpy as np
import pytest
import support as sup

from eomt_ood.data.png import decode_png

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium (apt-get install -y chromium)"
)
BIG = "bravo_synobjs/bear/1.png"
PICTURE = ".eo-mapview img"
SIDEBAR = '[data-testid="stSidebar"]'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the app exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not answer on {url} within {timeout} s")


@pytest.fixture(scope="module")
def served(finished_run, second_run):
    port = _free_port()
    # The CLI starts streamlit as its child; a session of its own lets the fixture end both together.
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eomt_ood.cli",
            "app",
            str(finished_run),
            str(second_run),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def run_a(finished_run):
    opened = sup.open_run(finished_run)
    yield opened
    opened.reader.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("EOMT_OOD_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(90_000)
    page.goto(url)
    return page


def _picture(page, selector: str = PICTURE) -> np.ndarray:
    """The pixels of a picture on the page, from the PNG it shows."""
    src = page.locator(selector).first.get_attribute("src")
    return decode_png(base64.b64decode(src.split(",", 1)[1]), "picture")


def _changed(page, before: str | None, selector: str = PICTURE) -> None:
    """Wait until the picture shows something other than `before` (its previous source)."""
    page.wait_for_function(
        "([sel, before]) => { const i = document.querySelector(sel); return i && i.complete && i.src !== before; }",
        arg=[selector, before],
    )


def _src(page, selector: str = PICTURE) -> str | None:
    return page.evaluate("(sel) => document.querySelector(sel)?.src ?? null", selector)


def _not_blank(png: bytes) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20, "screenshot is (nearly) one colour"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000


def test_grid_to_the_outcome_on_the_photo_hover_and_threshold(served, browser, run_a, shots):
    """A reviewer's path: the worst images of synobjs, one click on a thumbnail, the photo with the OOD outcome;
    then another overlay, the hover readout and an exact threshold."""
    page = _open(browser, served)
    page.wait_for_selector("button.eo-cell img")
    assert page.locator("button.eo-cell").count() == 6
    page.locator(SIDEBAR).get_by_role("radio", name="synobjs", exact=True).click()  # one click: the subset
    page.wait_for_function("() => document.querySelectorAll('button.eo-cell').length === 3")
    stats = run_a.stats("msp")
    worst = dv.order(stats, dv.in_subset(run_a.subsets, "synobjs"), "auprc_ood")
    cells = page.locator("button.eo-cell")
    assert [int(cells.nth(k).get_attribute("data-index")) for k in range(3)] == worst.tolist()
    caption = cells.nth(0).inner_text()
    assert (
        caption
        == f"{run_a.reader.relpaths[worst[0]].rsplit('/', 1)[1]} · auprc_ood {stats['auprc_ood'][worst[0]]:.4f}"
    )
    _not_blank(page.screenshot(path=str(shots / "explorer_grid.png"), full_page=True))

    cells.nth(0).click()  # two clicks: the worst image, with the OOD outcome over its photo
    rel = run_a.reader.relpaths[worst[0]]
    page.wait_for_selector(f"h3:has-text('{rel}')")
    page.wait_for_selector(PICTURE)
    maps = sup.read_maps(run_a.reader, int(worst[0]))
    hist = run_a.histograms("msp")["synobjs"]
    start = sup.tpr95_threshold(hist["ood_pos"], hist["ood_neg"])
    outcome = sup.compose(maps, "OOD outcome", 0.6, "msp", "Viridis", start.level)
    np.testing.assert_array_equal(_picture(page), outcome)
    assert "OOD+outcome" in page.url and f"image={urllib.parse.quote(rel, safe='')}" in page.url
    _not_blank(page.screenshot(path=str(shots / "explorer_image.png"), full_page=True))

    # Another overlay: the picture's pixels become those of the prediction.
    before = _src(page)
    page.locator(SIDEBAR).get_by_text("prediction", exact=True).click()
    _changed(page, before)
    np.testing.assert_array_equal(_picture(page), sup.compose(maps, "prediction", 0.6, "msp", "Viridis"))

    # Hovering shows the readout of the grid point under the pointer, as format_readout writes it.
    box = page.locator(PICTURE).first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.6)
    tip = page.locator(".eo-tip").first
    tip.wait_for(state="visible")
    first, *rest = tip.inner_text().split("\n")
    row, col = (int(v) for v in re.fullmatch(r"row (\d+), col (\d+)", first).groups())
    height, width = maps["pred"].shape
    assert abs(row - 0.6 * height) <= 4 and abs(col - 0.4 * width) <= 4
    assert "\n".join(rest) == sup.format_readout(sup.pixel_readout(maps, row, col))

    # An exact threshold typed in: the outcome counts and the picture of that threshold.
    page.locator(SIDEBAR).get_by_text("OOD outcome", exact=True).click()
    page.wait_for_function("() => !document.querySelector('.eo-mapview img')?.src.includes('#')")
    threshold = page.get_by_label("doubt threshold (exact)")
    before = _src(page)
    threshold.fill("0.300000")
    threshold.press("Enter")
    level = sup.level_of_doubt(0.3)
    counts = sup.outcome_counts(
        sup.outcome_map(maps["confs"]["msp"], maps["gt_label"], maps["gt_invalid"], level)
    )
    page.get_by_text(f"TP {counts['true positive']:,} · FP {counts['false positive']:,}").first.wait_for()
    _changed(page, before)
    np.testing.assert_array_equal(
        _picture(page), sup.compose(maps, "OOD outcome", 0.6, "msp", "Viridis", level)
    )
    page.close()


def test_curve_and_confusion_clicks(served, browser, run_a, shots):
    page = _open(browser, served + "/?view=Curves&subset=synobjs")
    page.wait_for_selector(".js-plotly-plot .scatterlayer .point")
    # The k-th drawn point of the first run's ROC curve carries its doubt level (plotly.js keeps the decoded data
    # in `_fullData`); a click puts the threshold there.
    k = 40
    level = page.evaluate(
        "(k) => document.querySelectorAll('.js-plotly-plot')[0]._fullData[1].customdata[k][0]", k
    )
    roc = page.locator(".js-plotly-plot").first.locator(".subplot.x2y2 .scatterlayer .trace").first
    point = roc.locator(".point").nth(k)
    point.click(force=True)
    threshold = page.get_by_label("doubt threshold (exact)")
    expected = f"{sup.doubt_of_level(int(level)):.6f}"
    page.wait_for_function("([el, v]) => el.value === v", arg=[threshold.element_handle(), expected])
    page.get_by_text("Set from a click on the curves of run-a · msp").wait_for()
    _not_blank(page.screenshot(path=str(shots / "explorer_curves.png"), full_page=True))

    # A click on a confusion cell lists the images with most of its pixels, most first.
    page.get_by_role("tab", name="Confusion").click()
    page.wait_for_selector(".js-plotly-plot .scatterlayer .point")
    custom = page.evaluate(
        "() => Array.from(document.querySelector('.js-plotly-plot')._fullData[0].customdata, (c) => Array.from(c))"
    )
    cell = next(k for k, c in enumerate(custom) if c[0] != c[1] and c[2] > 0)
    t, p = int(custom[cell][0]), int(custom[cell][1])
    page.locator(".js-plotly-plot .scatterlayer .trace").first.locator(".point").nth(cell).click(force=True)
    names = sup.TRAIN_ID_NAMES
    page.get_by_text(f"pixels of true {names[t]} predicted as {names[p]}").wait_for()
    matrices = run_a.confusion_matrices()
    synobjs = dv.in_subset(run_a.subsets, "synobjs")
    expected = [i for i in sorted(synobjs, key=lambda i: (-matrices[i, t, p], i)) if matrices[i, t, p] > 0]
    page.wait_for_function(
        "(n) => document.querySelectorAll('button.eo-cell').length === n", arg=len(expected)
    )
    cells = page.locator("button.eo-cell")
    assert [int(cells.nth(k).get_attribute("data-index")) for k in range(len(expected))] == expected
    _not_blank(page.screenshot(path=str(shots / "explorer_confusion.png"), full_page=True))
    page.close()


def test_a_link_opens_the_same_view(served, browser, run_a, shots):
    doubt = sup.doubt_of_level(60000)
    query = urllib.parse.urlencode(
        {"view": "Image", "image": BIG, "overlay": "confidence", "threshold": repr(doubt), "score": "rba"}
    )
    page = _open(browser, f"{served}/?{query}")
    page.wait_for_selector(f"h3:has-text('{BIG}')")
    page.wait_for_selector(PICTURE)
    maps = sup.read_maps(run_a.reader, run_a.index_of(BIG))
    np.testing.assert_array_equal(_picture(page), sup.compose(maps, "confidence", 0.6, "rba", "Viridis"))
    assert page.get_by_label("doubt threshold (exact)").input_value() == f"{doubt:.6f}"
    # Both runs side by side, each with its own picture of the same image.
    assert page.locator(PICTURE).count() == 2
    assert page.locator(".eo-mapview figcaption").all_inner_texts() == ["run-a · rba", "run-b · rba"]
    _not_blank(page.screenshot(path=str(shots / "explorer_link.png"), full_page=True))
    page.close()
