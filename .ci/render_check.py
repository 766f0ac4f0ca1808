"""Open a served explorer in headless Chromium and wait until its first image has rendered (CI's wheel check).

Usage: python .ci/render_check.py http://127.0.0.1:PORT [timeout seconds]. Exit 0 when the page shows the
explorer's title and a plotly image; 1 otherwise. Uses Debian's /usr/bin/chromium (no browser download).
"""

import sys

from playwright.sync_api import sync_playwright

url = sys.argv[1]
timeout_ms = int(float(sys.argv[2] if len(sys.argv) > 2 else 180) * 1000)
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
    )
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, timeout=timeout_ms)
        page.wait_for_selector("text=Confidence explorer", timeout=timeout_ms)
        page.wait_for_selector(".stPlotlyChart .js-plotly-plot image", timeout=timeout_ms)
    except Exception as exc:  # any failure to render is the check's failure
        print(f"render check failed: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        browser.close()
print(f"explorer rendered at {url}")
