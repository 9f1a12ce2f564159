"""Real-browser test: `streamlit run app.py` driven by headless Chromium (Debian's package).

Visits every page, checks that no exception box appears and that charts render, and saves a screenshot
of each page under ``test-artifacts/screenshots/``. Skips when no Chromium is installed, unless
``TINYTL_REQUIRE_BROWSER=1`` (set by .ci/run), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
PAGE_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = _free_port()
    env = dict(os.environ, TINYTL_HOME=str(tmp_path_factory.mktemp("home")), TINYTL_OFFLINE="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"streamlit did not become healthy: {proc.stdout.read().decode()[-2000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_until_idle(page) -> None:
    """Wait until Streamlit has finished running the script (no running indicator) and rendered."""
    page.wait_for_selector('[data-testid="stAppViewContainer"]', timeout=PAGE_TIMEOUT_MS)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " && document.querySelectorAll('[data-testid=\"stMainBlockContainer\"] *').length > 20",
        timeout=PAGE_TIMEOUT_MS,
        polling=500,
    )
    page.wait_for_timeout(1000)


def check_page(page, name: str) -> None:
    """Assert the current page rendered without an exception box; save its screenshot."""
    wait_until_idle(page)
    assert page.locator('[data-testid="stException"]').count() == 0, page.inner_text("body")[:2000]
    if page.locator('[data-testid="stPlotlyChart"]').count():
        page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=PAGE_TIMEOUT_MS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_every_page_renders_in_a_real_browser(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(server, timeout=PAGE_TIMEOUT_MS)
        check_page(page, "home")
        # Every other page, as a user reaches it: through the navigation links.
        links = page.locator('[data-testid="stSidebarNav"] a')
        hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
        for href in hrefs:
            name = href.rstrip("/").rsplit("/", 1)[-1] or "home"
            if name == "home" or href.rstrip("/") == server:
                continue
            page.goto(href, timeout=PAGE_TIMEOUT_MS)
            check_page(page, name)
    finally:
        page.close()
