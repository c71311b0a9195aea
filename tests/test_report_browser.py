"""report.html in a real browser (headless Chromium through Playwright): it fetches nothing but
itself, its figures are drawn at a visible size, and it reads top down as a user looks (the
diagnosis, the learning curves and the final metrics above the config, which is folded). A
full-page screenshot is kept in test-artifacts/report.png.

Needs the `playwright` package (the `dev` extra) and a system Chromium (Debian: `apt-get
install chromium`); `playwright install` is not used.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")

# the page's sections, top down: what a user looks at first, then the config (folded) and the data
TOP_DOWN = ["sec-diagnosis", "sec-curves", "sec-metrics", "sec-config", "sec-data", "sec-confusion"]


def test_report_opens_offline_with_its_figures_drawn(digits_cnn_run):
    """The session's digits CNN run (tests/conftest.py: DIGITS_CNN), read only."""
    run = digits_cnn_run
    page_path = (run.dir / "report.html").resolve()
    url = page_path.as_uri()
    ARTIFACTS.mkdir(exist_ok=True)
    requests: list[str] = []
    errors: list[str] = []  # console errors: a Content-Security-Policy refusal would show here
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(url, wait_until="load")
            page.wait_for_load_state("networkidle")
            sizes = {}
            for ident in ("fig-learning-curves", "fig-confusion", "fig-calibration", "fig-gradients"):
                image = page.locator(f"img#{ident}")
                assert image.count() == 1, ident
                box = image.bounding_box()
                decoded = image.evaluate("img => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0")
                sizes[ident] = (box, decoded)
            title = page.title()
            # where each section starts on the page, in CSS pixels from the top
            tops = page.evaluate("ids => ids.map(id => document.getElementById(id).getBoundingClientRect().top"
                                 " + window.scrollY)", TOP_DOWN)
            folded = page.evaluate("() => document.querySelector('#sec-config details').open")
            config_shown = page.locator("#sec-config pre").is_visible()
            summary_shown = page.locator("#sec-config summary").is_visible()
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    # nothing beyond the file itself and the images it carries as data: URIs
    others = [u for u in requests if u != url and not u.startswith("data:")]
    assert not others, others
    assert url in requests
    assert not errors, errors
    for ident, (box, decoded) in sizes.items():
        assert decoded, f"{ident}: the image did not decode"
        assert box is not None and box["width"] > 200 and box["height"] > 100, (ident, box)
    assert title.startswith("report-digits")
    assert tops == sorted(tops) and len(set(tops)) == len(tops), dict(zip(TOP_DOWN, tops))
    # the config is one line until opened: its summary shows, its hundred lines do not
    assert folded is False and summary_shown and not config_shown
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
