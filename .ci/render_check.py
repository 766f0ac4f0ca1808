"""Open a served explorer in headless Chromium and wait until its first image has rendered (CI's wheel check).

Usage: python .ci/render_check.py http://127.0.0.1:PORT [timeout seconds]. Exit 0 when the page shows the
explorer's title and its first thumbnail (the image grid it opens on); 1 otherwise. Uses Debian's
/usr/bin/chromium (no browser download).
"""

import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

url = sys.argv[1]
timeout = float(sys.argv[2] if len(sys.argv) > 2 else 180)
timeout_ms = int(timeout * 1000)
deadline = time.monotonic() + timeout
while True:  # the server starts in the background: wait for Streamlit's health endpoint first
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as answer:
            if answer.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        print(f"render check failed: {url} did not come up in {timeout:.0f} s", file=sys.stderr)
        sys.exit(1)
    time.sleep(1)
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
        ],
    )
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, timeout=timeout_ms)
        page.wait_for_selector("text=Confidence explorer", timeout=timeout_ms)
        page.wait_for_selector("button.eo-cell img", timeout=timeout_ms)  # the grid of thumbnails it opens on
    except Exception as exc:  # any failure to render is the check's failure
        print(f"render check failed: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        browser.close()
print(f"explorer rendered at {url}")
