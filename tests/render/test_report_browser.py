"""The report in a real browser: headless Chromium opens the file with the network off, nothing
is requested but the file itself, the console stays free of errors, and every figure is drawn.

Chromium is Debian's (``apt-get install chromium``; ``.ci/run`` installs it where it can), driven
by the ``playwright`` package with ``executable_path``: playwright's own browser download is
never used. Where no Chromium is installed this test skips and says why. The screenshots stay
in the test's tmp_path, whose path is printed (``pytest -s`` shows it; pytest keeps the last
three runs' folders).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from tests.conftest import SAMPLES, run_cli  # noqa: E402

# The report opened here has every section, drift and diff too, which run on torch.
pytestmark = pytest.mark.torch

# The flags of a browser that talks to no one: no first-run, no background or component
# updates, no sync; no sandbox (CI runs as root) and no GPU (headless, none here).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
WHITE = 245  # a pixel at least this bright in every channel counts as background


def chromium() -> str:
    """Debian's Chromium (or BNINSPECT_CHROMIUM); skips the test, saying why, where there is none."""
    for candidate in (os.environ.get("BNINSPECT_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no Chromium installed (apt-get install chromium, or set BNINSPECT_CHROMIUM): the report's browser test did not run")


def drawn(png: bytes) -> tuple[float, int]:
    """(share of pixels that are not background, number of distinct colours) of a screenshot."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    ink = int((pixels.min(axis=1) < WHITE).sum())
    return ink / len(pixels), len(np.unique(pixels, axis=0))


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    """A report with every section: findings with marked channels, drift on data, a diff with B."""
    out = tmp_path_factory.mktemp("browser") / "report.html"
    env = {"PYTHONPATH": os.pathsep.join([str(SAMPLES), *sys.path])}
    run = run_cli("report", "faulty/zero_var.pt", "drift/mobilenet_v1_tiny_bs64.pt", "--arch", "sample_models:mobilenet_v1_tiny",
                  "--data", "drift/calib.pt", "--batch-sizes", "2,8,32", "-o", str(out), cwd=SAMPLES, env=env)
    assert run.code == 0, run.err
    return out


def test_chromium_shows_every_figure_offline_without_console_errors(report_file, tmp_path, record_property):
    executable = chromium()
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package (pip install playwright) drives Chromium")
    problems: list[str] = []
    requests: list[str] = []
    with playwright.sync_playwright() as p:
        # A fresh profile folder each run, the network emulated as off, and every request that
        # still gets out recorded and refused.
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=executable, headless=True, args=CHROMIUM_FLAGS, offline=True,
            viewport={"width": 1200, "height": 900})
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://") else route.abort())
            page.goto(report_file.as_uri(), wait_until="load")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            figures = page.locator("figure svg")
            count = figures.count()
            assert count == 1 + 1 + 4 * 3  # overview, drift, and per layer page: channels, drift, diff
            for i in range(count):
                figure = figures.nth(i)
                # Layer pages are laid out only once they scroll into view (content-visibility: auto),
                # as a reader scrolling down sees them: scroll there and let two frames paint.
                figure.scroll_into_view_if_needed()
                page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
                png = figure.screenshot()
                (tmp_path / f"figure_{i:02d}.png").write_bytes(png)
                ink, colours = drawn(png)
                box = figure.bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 150, (i, box)
                assert ink > 0.01 and colours > 8, (i, ink, colours)
        finally:
            browser.close()
    print(f"\nreport screenshots in {tmp_path} (report.png and figure_NN.png)")
    record_property("screenshots", str(tmp_path))
    assert problems == []
    assert requests == [report_file.as_uri()]
    assert shot.stat().st_size > 10_000
