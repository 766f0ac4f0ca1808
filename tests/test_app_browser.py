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
import linked_plots as lp
import numpy as np
import pytest
import support as sup

from eomt_ood.data.png import decode_png

CHROMIUM = Path("/usr/bin/chromium")
# Slow (a served app and a browser: about two minutes on two shared cores): run with `-m slow` (.ci/run does).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium (apt-get install -y chromium)"
    ),
]
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


def _shows(page, expected: np.ndarray, selector: str = PICTURE, timeout: float = 60.0) -> None:
    """Wait until the picture is `expected` (a redraw may reach the browser after the text beside it)."""
    deadline = time.monotonic() + timeout
    while not np.array_equal(shown := _picture(page, selector), expected) and time.monotonic() < deadline:
        time.sleep(0.25)
    np.testing.assert_array_equal(shown, expected)


def _src(page, selector: str = PICTURE) -> str | None:
    return page.evaluate("(sel) => document.querySelector(sel)?.src ?? null", selector)


def _not_blank(png: bytes) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20, "screenshot is (nearly) one colour"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000


def _choose(page, label: str, option: str) -> None:
    """Pick `option` in the select box labelled `label`."""
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()


def _cells(page) -> list[int]:
    return [
        int(v) for v in page.locator("button.eo-cell").evaluate_all("(cs) => cs.map((c) => c.dataset.index)")
    ]


def _wait_cells(page, expected: list[int]) -> None:
    """Wait until the grid shows the images `expected`, in this order."""
    page.wait_for_function(
        "(want) => JSON.stringify(Array.from(document.querySelectorAll('button.eo-cell'), "
        "(c) => Number(c.dataset.index))) === JSON.stringify(want)",
        arg=[int(i) for i in expected],
    )


def _wait_value(page, label: str, expected: str) -> None:
    page.wait_for_function(
        "([label, v]) => document.querySelector(`input[aria-label='${label}']`)?.value === v",
        arg=[label, expected],
    )


def _click_at(page, x: float, y: float) -> None:
    """A click on a plotly chart: plotly's drag layer takes the pointer and picks the point nearest it, so the
    pointer moves there first (plotly finds the point on hover), then presses."""
    page.mouse.move(x - 4, y - 4)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.up()


def _histograms(page, count: int, old: str | None = None, k: int = 0) -> list[str]:
    """The sources of the sidebar's PNG pictures (the filters' histograms), once there are `count` of them (and
    the k-th is no longer `old`)."""
    script = (
        "() => Array.from(document.querySelectorAll('[data-testid=stSidebar] img'), (i) => i.src)"
        ".filter((s) => s.startsWith('data:image/png'))"
    )
    page.wait_for_function(
        f"([n, old, k]) => {{ const s = ({script})(); return s.length === n && s[k] !== old; }}",
        arg=[count, old, k],
    )
    return page.evaluate(script)


def _thumbs(page, label: str):
    """The thumbs of the slider labelled `label` (range inputs; two for a range slider)."""
    return page.locator(f"input[type=range][aria-label='{label}']")


def _slider_value(page, label: str, k: int = 0) -> float:
    return float(_thumbs(page, label).nth(k).input_value())


def _press(page, label: str, key: str, times: int, k: int = 0, watch: str | None = None) -> None:
    """Move thumb `k` of a slider by `times` presses of an arrow key (each one step). With `watch` (a JavaScript
    function returning text), wait after each press until its text changes. The threshold's sliders and its
    exact value share one state: a press sent while the app still redraws after the previous one carries the
    exact value's input not yet updated, which the app then reads as a value typed (see docs/app.md)."""
    thumb = _thumbs(page, label).nth(k)
    thumb.focus()
    for _ in range(times):
        before = page.evaluate(watch) if watch else None
        thumb.press(key)
        if watch:
            page.wait_for_function(f"(before) => ({watch})() !== before", arg=before)


def test_three_clicks_from_the_worst_images_to_the_outcome_on_the_photo(served, browser, run_a, shots):
    """A reviewer's path, each step checked on the page: the grid sorted worst first by AUPRC_OOD, the subset
    synobjs (click 1), its worst image (click 2), the OOD outcome on the photo (the default overlay); then the
    class colour legend of another overlay and the hover readout."""
    page = _open(browser, served)
    page.wait_for_selector("button.eo-cell img")
    stats = run_a.stats("msp")
    everything = dv.order(stats, np.arange(len(run_a.reader)), "auprc_ood")
    _wait_cells(page, everything.tolist())
    assert page.get_by_text("6 of 6 images in all · sorted by auprc_ood, lowest first").count() == 1
    # Images without an AUPRC_OOD (no OOD pixels, no ground truth) come last, their value a dash, never NaN.
    captions = page.locator("button.eo-cell span").all_inner_texts()
    assert [c.endswith("auprc_ood –") for c in captions] == [
        not np.isfinite(stats["auprc_ood"][i]) for i in everything
    ]
    assert "nan" not in page.locator("main").inner_text().lower()
    _not_blank(page.screenshot(path=str(shots / "explorer_grid.png"), full_page=True))

    page.locator(SIDEBAR).get_by_role("radio", name="synobjs", exact=True).click()  # click 1: the subset
    worst = dv.order(stats, dv.in_subset(run_a.subsets, "synobjs"), "auprc_ood")
    _wait_cells(page, worst.tolist())
    first = page.locator("button.eo-cell").nth(0)
    name = run_a.reader.relpaths[worst[0]].rsplit("/", 1)[1]
    assert first.inner_text() == f"{name} · auprc_ood {stats['auprc_ood'][worst[0]]:.4f}"

    first.click()  # click 2: the worst image, with the OOD outcome over its photo
    rel = run_a.reader.relpaths[worst[0]]
    page.wait_for_selector(f"h3:has-text('{rel}')")
    page.wait_for_selector(PICTURE)
    maps = sup.read_maps(run_a.reader, int(worst[0]))
    hist = run_a.histograms("msp")["synobjs"]
    start = sup.tpr95_threshold(hist["ood_pos"], hist["ood_neg"])
    _shows(page, sup.compose(maps, "OOD outcome", 0.6, "msp", "Viridis", start.level))
    shown = _picture(page)
    # The photo itself wherever no outcome is coloured (true negatives, void).
    codes = sup.outcome_map(maps["confs"]["msp"], maps["gt_label"], maps["gt_invalid"], start.level)
    assert (codes < sup.TRUE_POSITIVE).any()
    np.testing.assert_array_equal(shown[codes < sup.TRUE_POSITIVE], maps["rgb"][codes < sup.TRUE_POSITIVE])
    n = sup.outcome_counts(codes)
    page.get_by_text(
        f"preview pixels: TP {n['true positive']:,} · FP {n['false positive']:,} · "
        f"FN {n['false negative']:,} · TN {n['true negative']:,}"
    ).first.wait_for()
    assert "OOD+outcome" in page.url and f"image={urllib.parse.quote(rel, safe='')}" in page.url
    assert "subset=synobjs" in page.url
    _not_blank(page.screenshot(path=str(shots / "explorer_image.png"), full_page=True))

    # Another overlay: the picture's pixels become those of the prediction, the legend the class colours.
    before = _src(page)
    page.locator(SIDEBAR).get_by_text("prediction", exact=True).click()
    _changed(page, before)
    _shows(page, sup.compose(maps, "prediction", 0.6, "msp", "Viridis"))
    chips = page.locator(SIDEBAR).locator("span:has(> span[style*='background'])")
    chips.nth(18).wait_for()
    legend = chips.evaluate_all(
        "(cs) => cs.map((c) => [c.textContent, getComputedStyle(c.firstElementChild).backgroundColor])"
    )
    from eomt_ood.data.labels import TRAIN_ID_COLORS

    assert legend == [
        [name, f"rgb({r}, {g}, {b})"]
        for name, (r, g, b) in zip(sup.TRAIN_ID_NAMES, TRAIN_ID_COLORS, strict=True)
    ]

    # Hovering shows the readout of the grid point under the pointer, as format_readout writes it.
    box = page.locator(PICTURE).first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.6)
    tip = page.locator(".eo-tip").first
    tip.wait_for(state="visible")
    head, *rest = tip.inner_text().split("\n")
    row, col = (int(v) for v in re.fullmatch(r"row (\d+), col (\d+)", head).groups())
    height, width = maps["pred"].shape
    assert abs(row - 0.6 * height) <= 4 and abs(col - 0.4 * width) <= 4
    assert "\n".join(rest) == sup.format_readout(sup.pixel_readout(maps, row, col))
    page.close()


def test_threshold_scales_and_the_zoom_on_the_photo(served, browser, run_a, finished_run, shots):
    """The exact threshold, the log and quantile sliders (moved by keyboard, one step a press), each checked by
    the outcome counts and the picture; then the zoom, on the input photo the run names."""
    query = urllib.parse.urlencode({"view": "Image", "image": BIG, "subset": "synobjs"})
    page = _open(browser, f"{served}/?{query}")
    page.wait_for_selector(f"h3:has-text('{BIG}')")
    page.wait_for_selector(PICTURE)
    index = run_a.index_of(BIG)
    maps = sup.read_maps(run_a.reader, index)
    hist = run_a.histograms("msp")["synobjs"]
    start = sup.tpr95_threshold(hist["ood_pos"], hist["ood_neg"])
    exact = "doubt threshold (exact)"
    exact_value = f"() => document.querySelector(`input[aria-label='{exact}']`).value"
    _wait_value(page, exact, f"{start.doubt:.6f}")

    def shows(level: int) -> None:
        """The counts under the picture and its pixels are those of doubt level `level`."""
        codes = sup.outcome_map(maps["confs"]["msp"], maps["gt_label"], maps["gt_invalid"], level)
        n = sup.outcome_counts(codes)
        page.get_by_text(f"TP {n['true positive']:,} · FP {n['false positive']:,}").first.wait_for()
        page.get_by_text(f"doubt ≥ {lp.doubt_of_level(level):.6f}:").first.wait_for()
        _shows(page, sup.compose(maps, "OOD outcome", 0.6, "msp", "Viridis", level))

    shows(start.level)

    # An exact value typed in.
    threshold = page.get_by_label(exact)
    before = _src(page)
    threshold.fill("0.300000")
    threshold.press("Enter")
    _changed(page, before)
    shows(sup.level_of_doubt(0.3))
    page.get_by_text("Set from the value typed").wait_for()

    # The log slider: ten presses of the left arrow lower log10(doubt) by ten steps of 0.01.
    log_label = "log10 doubt"
    position = _slider_value(page, log_label)
    assert position == pytest.approx(round(np.log10(0.3), 2))  # the slider shows its nearest step
    before = _src(page)
    _press(page, log_label, "ArrowLeft", 10, watch=exact_value)
    _changed(page, before)
    page.get_by_text("Set from the log slider").wait_for()
    moved = _slider_value(page, log_label)
    assert moved == pytest.approx(position - 0.1)
    _wait_value(page, exact, f"{10**moved:.6f}")
    shows(sup.level_of_doubt(10**moved))

    # The quantile scale: the slider shows the share of synobjs pixels flagged; moving it flags more.
    page.locator(SIDEBAR).get_by_text("quantile", exact=True).click()
    quantile_label = "share of the synobjs pixels flagged"
    _thumbs(page, quantile_label).wait_for(state="attached")
    shares = lp.flagged_shares(hist["ood_pos"] + hist["ood_neg"])
    share = _slider_value(page, quantile_label)  # to its nearest step of 0.001
    assert share == pytest.approx(lp.quantile_of_level(shares, sup.level_of_doubt(10**moved)), abs=5e-4)
    before = _src(page)
    _press(page, quantile_label, "ArrowRight", 50, watch=exact_value)  # 50 steps of 0.001
    _changed(page, before)
    page.get_by_text("Set from the quantile slider").wait_for()
    level = lp.level_of_doubt(float(threshold.input_value()))
    asked = share + 50 * 0.001
    # The highest level that flags at least the share asked for; the slider shows the share it flags.
    assert lp.quantile_of_level(shares, level) >= asked - 1e-9 > lp.quantile_of_level(shares, level + 1)
    assert _slider_value(page, quantile_label) == pytest.approx(lp.quantile_of_level(shares, level), abs=5e-4)
    shows(level)
    _not_blank(page.screenshot(path=str(shots / "explorer_threshold.png"), full_page=True))

    # The zoom: a full-resolution window (1/4 of each side around the centre) on the input photo, which lives
    # in the images folder the run's config.yaml names, outside the run folder.
    page.locator("main").get_by_text("Zoom (full resolution, on the photo)").click()
    zoom = ".eo-mapview img >> nth=2"  # after the two runs' pictures
    page.wait_for_selector(zoom)
    rows, cols = sup.zoom_region(600, 1200, (0.5, 0.5), 4)
    page.get_by_text(
        f"rows {rows.start}-{rows.stop - 1}, columns {cols.start}-{cols.stop - 1} · on the photo from the run's "
        "images folder"
    ).first.wait_for()
    from PIL import Image

    photo = np.asarray(Image.open(finished_run.parent / "images" / BIG).convert("RGB"))[rows, cols]
    region = sup.read_region(run_a, index, (rows, cols))
    zoomed = sup.compose(region, "OOD outcome", 0.6, "msp", "Viridis", level, base=photo)
    _shows(page, zoomed, zoom)
    picture = _picture(page, zoom)
    codes = sup.outcome_map(region["confs"]["msp"], region["gt_label"], region["gt_invalid"], level)
    plain = codes < sup.TRUE_POSITIVE
    assert plain.any() and (~plain).any()
    np.testing.assert_array_equal(picture[plain], photo[plain])
    _not_blank(page.screenshot(path=str(shots / "explorer_zoom.png"), full_page=True))
    page.close()


def test_sort_filters_and_their_histograms(served, browser, run_a, shots):
    """Order and range filters of the dataset view, checked by the grid's cells, the count above them and the
    histogram pictures in the sidebar."""
    page = _open(browser, served + "/?subset=synobjs")
    stats = run_a.stats("msp")
    synobjs = dv.in_subset(run_a.subsets, "synobjs")
    _wait_cells(page, dv.order(stats, synobjs, "auprc_ood").tolist())
    _choose(page, "Sort by (worst first)", "fpr95_ood")
    _wait_cells(page, dv.order(stats, synobjs, "fpr95_ood").tolist())
    page.get_by_text("sorted by fpr95_ood, highest first").wait_for()
    page.locator(SIDEBAR).get_by_text("best first instead").click()
    _wait_cells(page, dv.order(stats, synobjs, "fpr95_ood", reverse=True).tolist())
    page.get_by_text("sorted by fpr95_ood, lowest first").wait_for()

    # The filters: a histogram per statistic over the subset, all of it selected (blue) at first.
    page.locator(SIDEBAR).get_by_text("Filter by statistic").click()
    stat = "miou"
    _thumbs(page, f"{stat} — start").wait_for(state="attached")
    values = stats[stat][synobjs]
    span = dv.value_span(values)
    spans = [dv.value_span(stats[s][synobjs]) for s in dv.FILTER_STATS]
    drawn = [s for s, sp in zip(dv.FILTER_STATS, spans, strict=True) if sp is not None and sp[0] != sp[1]]
    shown = _histograms(page, len(drawn))
    k = drawn.index(stat)
    histogram = decode_png(base64.b64decode(shown[k].split(",", 1)[1]), "histogram")
    np.testing.assert_array_equal(histogram, dv.histogram_picture(values, span, span))

    # Raise the lower end past the lowest value and the first bar's centre (of 24): the image below it leaves the
    # grid, its bar turns grey. The slider moves in steps of 1/200 of the span.
    lowest, second = np.sort(values)[:2]
    step = (span[1] - span[0]) / 200
    target = max(lowest, span[0] + (span[1] - span[0]) / 48)
    steps = int((target - span[0]) // step) + 1
    assert target < span[0] + steps * step < second
    _press(page, f"{stat} — start", "ArrowRight", steps)
    kept = [i for i in synobjs if stats[stat][i] > lowest]
    _wait_cells(page, dv.order(stats, np.array(kept), "fpr95_ood", reverse=True).tolist())
    page.get_by_text(f"{len(kept)} of {len(synobjs)} images in synobjs").wait_for()
    low = _slider_value(page, f"{stat} — start")
    assert lowest < low < second
    page.get_by_text(f"Filters: {stat} ").wait_for()
    changed = _histograms(page, len(drawn), shown[k], k)
    histogram = decode_png(base64.b64decode(changed[k].split(",", 1)[1]), "histogram")
    assert (histogram == (200, 200, 200)).all(axis=-1).any()  # a grey bar: images outside the range
    np.testing.assert_array_equal(histogram, dv.histogram_picture(values, span, (low, span[1])))
    _not_blank(page.screenshot(path=str(shots / "explorer_filters.png"), full_page=True))
    page.close()


def test_curve_and_confusion_clicks(served, browser, run_a, shots):
    """A click on a point of the ROC curve puts the threshold at that point's doubt level (and the star there); a
    click on a confusion cell lists the images with most of its pixels."""
    page = _open(browser, served + "/?view=Curves&subset=synobjs")
    page.wait_for_selector(".js-plotly-plot .scatterlayer .point")
    # The chart may still be redrawn by a rerun: wait until the ROC trace (trace 1) has its data and one drawn point
    # per value, then read the points' centres and the data in one script (atomic in the page).
    roc_trace = (
        "const plot = document.querySelectorAll('.js-plotly-plot')[0]; const t = plot?._fullData?.[1]; "
        "const points = [...(plot?.querySelector('.subplot.x2y2 .scatterlayer .trace')?.querySelectorAll('.point') "
        "?? [])];"
    )
    # Plotly gives a click to the point nearest the pointer: take the point farthest from any other, so the point
    # clicked is the one meant. Its doubt level is in its customdata (plotly.js keeps it in `_fullData`). A rerun
    # can still replace the chart between this reading and the click (the listener then sits on the old one and
    # sees nothing): read, listen and click again, up to three times.
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        page.wait_for_function(
            f"() => {{ {roc_trace} return t?.customdata && points.length > 10 && t.customdata.length === points.length; }}"
        )
        drawn = page.evaluate(
            f"() => {{ {roc_trace} return {{"
            "centres: points.map((p) => { const b = p.getBoundingClientRect(); "
            "return [b.x + b.width / 2, b.y + b.height / 2]; }), "
            "levels: Array.from(t.customdata, (c) => c[0]), x: Array.from(t.x), y: Array.from(t.y)}; }"
        )
        centres = np.array(drawn["centres"])
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(centres)) * 1e9
        k = int(np.argmax(gaps.min(axis=1)))
        assert gaps[k].min() > 3
        level, x, y = drawn["levels"][k], drawn["x"][k], drawn["y"][k]
        page.evaluate(
            "() => { window._clicked = null; document.querySelectorAll('.js-plotly-plot')[0]"
            ".on('plotly_click', (e) => { window._clicked = [e.points[0].curveNumber, e.points[0].pointNumber]; }); }"
        )
        _click_at(page, *centres[k])
        # plotly delivers the click after its own hover handling: on a loaded machine that can take a while
        try:
            page.wait_for_function("() => window._clicked !== null", timeout=20_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    assert page.evaluate("() => window._clicked") == [1, k]
    _wait_value(page, "doubt threshold (exact)", f"{sup.doubt_of_level(int(level)):.6f}")
    page.get_by_text("Set from a click on the curves of run-a · msp").wait_for()
    # The redrawn chart has its star (trace 3: the ROC's) on the point clicked.
    page.wait_for_function(
        "([x, y]) => { const t = document.querySelectorAll('.js-plotly-plot')[0]?._fullData?.[3]; "
        "return t && Math.abs(t.x[0] - x) < 1e-9 && Math.abs(t.y[0] - y) < 1e-9; }",
        arg=[x, y],
    )
    _not_blank(page.screenshot(path=str(shots / "explorer_curves.png"), full_page=True))

    # A click on a confusion cell lists the images with most of its pixels, most first.
    page.get_by_role("tab", name="Confusion").click()
    page.wait_for_selector(".js-plotly-plot .scatterlayer .point")
    custom = page.evaluate(
        "() => Array.from(document.querySelector('.js-plotly-plot')._fullData[0].customdata, (c) => Array.from(c))"
    )
    matrices = run_a.confusion_matrices()
    synobjs = dv.in_subset(run_a.subsets, "synobjs")
    pooled = dv.pooled_confusion(matrices, synobjs)
    # Not the cell it opens on (the largest confusion): one whose images differ from that one's.
    off = pooled.copy()
    np.fill_diagonal(off, 0)
    opened = np.unravel_index(off.argmax(), off.shape)
    cell = next(
        k for k, c in enumerate(custom) if c[0] != c[1] and c[2] > 0 and (int(c[0]), int(c[1])) != opened
    )
    t, p = int(custom[cell][0]), int(custom[cell][1])
    point = (
        page.locator(".js-plotly-plot")
        .first.locator(".scatterlayer .trace")
        .first.locator(".point")
        .nth(cell)
    )
    box = point.bounding_box()
    _click_at(page, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    names = sup.TRAIN_ID_NAMES
    page.get_by_text(f"{int(pooled[t, p]):,} pixels of true {names[t]} predicted as {names[p]}").wait_for()
    expected = [i for i in sorted(synobjs, key=lambda i: (-matrices[i, t, p], i)) if matrices[i, t, p] > 0]
    _wait_cells(page, expected)
    captions = page.locator("button.eo-cell span").all_inner_texts()
    assert captions[0].endswith(
        f"{int(matrices[expected[0], t, p]):,} px ({matrices[expected[0], t, p] / pooled[t, p]:.1%})"
    )
    _not_blank(page.screenshot(path=str(shots / "explorer_confusion.png"), full_page=True))
    page.close()


def test_a_link_opens_the_same_view_and_each_column_its_score(served, browser, run_a, second_run, shots):
    doubt = sup.doubt_of_level(60000)
    query = urllib.parse.urlencode(
        {"view": "Image", "image": BIG, "overlay": "confidence", "threshold": repr(doubt), "score": "rba"}
    )
    page = _open(browser, f"{served}/?{query}")
    page.wait_for_selector(f"h3:has-text('{BIG}')")
    page.wait_for_selector(PICTURE)
    _wait_value(page, "doubt threshold (exact)", f"{doubt:.6f}")
    page.get_by_text("Set from the link").wait_for()
    run_b = sup.open_run(second_run)
    maps = {
        "run-a": sup.read_maps(run_a.reader, run_a.index_of(BIG)),
        "run-b": sup.read_maps(run_b.reader, run_b.index_of(BIG)),
    }
    run_b.reader.close()

    def columns(expected: list[tuple[str, str]]) -> None:
        """The pictures side by side: one per (run, score), titled so, each the confidence of its own score."""
        titles = [f"{run} · {score}" for run, score in expected]
        page.wait_for_function(
            "(want) => JSON.stringify(Array.from(document.querySelectorAll('.eo-mapview figcaption'), "
            "(c) => c.textContent)) === JSON.stringify(want)",
            arg=titles,
        )
        for k, (run, score) in enumerate(expected):
            _shows(
                page,
                sup.compose(maps[run], "confidence", 0.6, score, "Viridis"),
                f".eo-mapview >> nth={k} >> img",
            )

    # Both runs side by side, each with the linked score.
    columns([("run-a", "rba"), ("run-b", "rba")])
    _not_blank(page.screenshot(path=str(shots / "explorer_link.png"), full_page=True))
    # run-b shows another score; run-a shows a second score beside its first.
    _choose(page, "Score of run-b", "msp")
    columns([("run-a", "rba"), ("run-b", "msp")])
    _choose(page, "…and a second score beside it", "msp")
    columns([("run-a", "rba"), ("run-a", "msp"), ("run-b", "msp")])
    _not_blank(page.screenshot(path=str(shots / "explorer_scores.png"), full_page=True))
    page.close()
