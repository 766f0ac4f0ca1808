"""The explorer in a real browser: `eomt-ood app` served on 127.0.0.1, opened with headless Chromium (Playwright).

Needs Debian's /usr/bin/chromium (`apt-get install -y chromium`; .ci/run installs it); skipped without it.
Set EOMT_OOD_SCREENSHOTS=<folder> to keep the screenshots.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium (apt-get install -y chromium)"
)


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


def _assert_not_blank(png: bytes) -> np.ndarray:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20, "screenshot is (nearly) one colour"
    # The photo and the overlays make many distinct colours; an empty page has a handful.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000
    return pixels


@pytest.fixture
def served_app(finished_run):
    run = finished_run
    port = _free_port()
    # The CLI starts streamlit as its child; a session of its own lets the test end both together.
    server = subprocess.Popen(
        [sys.executable, "-m", "eomt_ood.cli", "app", str(run), "--port", str(port)],
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


def test_app_renders_image_hover_and_curves(served_app, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("EOMT_OOD_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(served_app)
            # Streamlit draws over a websocket after the page loads: wait for the plotly image itself.
            page.wait_for_selector(".stPlotlyChart .js-plotly-plot image", timeout=90_000)
            # Open an OOD image with the outcome overlay at the TPR-95 threshold.
            page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(
                has_text="Subset"
            ).click()
            page.get_by_role("option", name="synobjs").click()
            page.get_by_text("OOD outcome", exact=True).click()
            page.wait_for_selector("text=where TPR reaches 95 %", timeout=60_000)
            page.wait_for_selector(".stPlotlyChart .js-plotly-plot image", timeout=60_000)
            page.wait_for_timeout(1500)
            image_png = page.screenshot(path=str(shots / "explorer_image.png"), full_page=True)
            _assert_not_blank(image_png)

            # Hovering the picture shows the pixel readout (predicted class, scores, ground truth).
            chart = page.locator(".stPlotlyChart").first
            box = chart.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.6)
            hover = page.wait_for_selector(".hovertext", timeout=30_000)
            text = hover.text_content()
            assert "pred:" in text and "msp" in text and "GT:" in text

            page.get_by_role("tab", name="Curves").click()
            page.wait_for_selector(".stPlotlyChart >> text=Precision-recall", timeout=60_000)
            page.wait_for_timeout(1000)
            curves_png = page.screenshot(path=str(shots / "explorer_curves.png"), full_page=True)
            _assert_not_blank(curves_png)
        finally:
            browser.close()
