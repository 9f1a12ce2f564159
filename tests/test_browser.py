"""Real-browser test: `streamlit run app.py` driven by headless Chromium (Debian's package).

Visits every page through the sidebar navigation, checks that no exception box appears and that charts
render, measures a real step on the Memory Explorer, runs a tiny adaptation by clicking through the Adapt
page, sees it on Compare runs, and saves a full-height screenshot of each page under
``test-artifacts/screenshots/``. Skips when no Chromium is installed, unless ``TINYTL_REQUIRE_BROWSER=1``
(set by .ci/run), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the app-server launcher, shared with the app benchmarks
from _server import start_app, stop_app, wait_healthy  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGE_TIMEOUT_S = 120
TRAIN_TIMEOUT_S = 240
VIEWPORT = {"width": 1400, "height": 1000}

pytestmark = pytest.mark.browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        if os.environ.get("TINYTL_REQUIRE_BROWSER") == "1":
            pytest.fail("TINYTL_REQUIRE_BROWSER=1 but no chromium found (apt-get install chromium)")
        pytest.skip("no Chromium installed (apt-get install chromium) - browser test skipped")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    # the server's own worker process trains the queued run
    proc, url = start_app(tmp_path_factory.mktemp("home"), log, OMP_NUM_THREADS="2", TINYTL_WORKERS="1")
    try:
        wait_healthy(url, proc, timeout_s=90, log=log)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield url
    stop_app(proc, 10)


_BUSY_JS = """() => !!document.querySelector('[data-testid="stStatusWidget"]')
    || !!document.querySelector('[data-testid="stSpinner"]')
    || document.querySelectorAll('[data-testid="stMainBlockContainer"] *').length < 20"""


def wait_until_idle(page, timeout_s: float = PAGE_TIMEOUT_S, quiet_s: float = 1.5) -> None:
    """Wait until Streamlit has finished the script run: no running indicator and no spinner for
    ``quiet_s`` seconds in a row (the indicator appears a moment after a run starts)."""
    page.wait_for_selector('[data-testid="stAppViewContainer"]', timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if page.evaluate(_BUSY_JS):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"the app was still running after {timeout_s} s: {page.inner_text('body')[:1000]}")


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.inner_text("body")[:2000]


def screenshot(page, name: str) -> None:
    """Save a screenshot of the whole page: Streamlit scrolls inside its main block, so the viewport is
    stretched to the content's height first."""
    height = page.evaluate(
        "() => Math.max(document.body.scrollHeight,"
        " (document.querySelector('[data-testid=\"stMain\"]') || document.body).scrollHeight)"
    )
    tall = max(VIEWPORT["height"], min(height + 40, 8000))
    page.set_viewport_size({"width": VIEWPORT["width"], "height": tall})
    page.wait_for_timeout(800)  # let plotly re-layout to the new size
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(VIEWPORT)


def check_page(page, name: str) -> None:
    """Assert the current page rendered without an exception box and its charts drew; screenshot it."""
    wait_until_idle(page)
    no_exception(page)
    charts = page.locator('[data-testid="stPlotlyChart"]')
    for i in range(charts.count()):
        charts.nth(i).locator(".main-svg").first.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    screenshot(page, name)


def go(page, label: str) -> None:
    """Open a page as a user does: by its link in the sidebar navigation (same session)."""
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=label).first.click()
    wait_until_idle(page)


def test_every_page_renders_in_a_real_browser(browser, server):
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(server, timeout=PAGE_TIMEOUT_S * 1000)
        check_page(page, "home")
        assert page.locator('[data-testid="stPlotlyChart"]').count() >= 1
        # Every other page, in a fresh session each, through the URLs the navigation links point to.
        links = page.locator('[data-testid="stSidebarNav"] a')
        hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
        pages = len(re.findall(r"\bst\.Page\(", (ROOT / "app.py").read_text()))  # the app's navigation
        assert len(hrefs) == pages, hrefs
        for href in hrefs:
            name = href.rstrip("/").rsplit("/", 1)[-1]
            if href.rstrip("/") == server.rstrip("/"):
                continue
            page.goto(href, timeout=PAGE_TIMEOUT_S * 1000)
            check_page(page, name)
    finally:
        page.close()


def test_measure_adapt_and_compare_in_a_real_browser(browser, server):
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(server, timeout=PAGE_TIMEOUT_S * 1000)
        wait_until_idle(page)

        # Memory Explorer: measure a real step, stock PyTorch and the engine.
        go(page, "Memory Explorer")
        page.get_by_role("button", name="Measure a real step").click()
        metric = page.locator('[data-testid="stMetricLabel"]').filter(
            has_text=re.compile(r"^Engine \(measured\)$")
        )
        metric.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
        peak = page.locator('[data-testid="stMetricLabel"]').filter(has_text="Step peak, engine (measured)")
        peak.wait_for(timeout=PAGE_TIMEOUT_S * 1000)  # the measured step peak, beside the stored bytes
        check_page(page, "memory_explorer_measured")

        # Adapt: a small run on the built-in digits, one mode, 60 steps, clicked through the form.
        go(page, "Adapt")
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Dataset").click()
        page.keyboard.type("Digits")
        page.keyboard.press("Enter")
        wait_until_idle(page)
        for mode in ("Last layer", "TinyTL-L+B"):
            page.get_by_role("button", name=f"Remove {mode}").click()
            wait_until_idle(page)
        for label, value in (("Steps per mode", "60"), ("Evaluate every N steps", "0")):
            field = page.locator('[data-testid="stNumberInput"]').filter(has_text=label).locator("input")
            field.fill(value)
            field.press("Enter")
            wait_until_idle(page)
        page.get_by_text("More options").click()
        field = (
            page.locator('[data-testid="stNumberInput"]')
            .filter(has_text="Validation images per class")
            .locator("input")
        )
        field.fill("2")
        field.press("Enter")
        wait_until_idle(page)
        page.get_by_text("... and measure one real step").click()  # memory modelled, not measured
        wait_until_idle(page)
        page.get_by_role("button", name="Start training").click()
        # The live panel, shown from the moment the run is queued (a worker process trains it: model
        # set-up plus 60 steps last seconds): the job's Cancel button (not the toolbar's) and its progress
        # bar; a screenshot once the curves draw.
        page.locator('[class*="st-key-cancel_"] button').wait_for(timeout=30_000)
        page.locator('[data-testid="stProgress"]').first.wait_for(timeout=5_000)
        # the curves: the page's one Vega-Lite chart (drawn on a canvas or as SVG marks)
        page.locator(
            '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg.marks'
        ).first.wait_for(timeout=TRAIN_TIMEOUT_S * 1000)
        screenshot(page, "adapt_training")
        page.get_by_text("TinyTL-B (bias) · finished · run #1", exact=True).wait_for(
            timeout=TRAIN_TIMEOUT_S * 1000
        )
        check_page(page, "adapt_finished")
        errors = page.locator('[data-testid="stAlertContentError"]')
        assert errors.count() == 0, page.inner_text("body")[:2000]

        # Compare runs: the run is a point on the memory-accuracy plot and can be picked for its curves.
        go(page, "Compare runs")
        check_page(page, "compare_runs_with_run")
        # its scatter is Vega-Lite (drawn on a canvas or as SVG marks), the run a row of the table
        page.locator(
            '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg.marks'
        ).first.wait_for(timeout=PAGE_TIMEOUT_S * 1000)
        assert page.get_by_text("1 run(s) in the results store.").count() == 1
    finally:
        page.close()
