"""Real browser (issue 14): typing an exact backbone name in the sidebar's search and pressing Enter picks
that name, not a longer one that contains it (``resnet50`` used to pick ``resnet50c``)."""

from __future__ import annotations

import pytest
from test_browser import VIEWPORT, browser, server, wait_until_idle  # noqa: F401 -- shared fixtures

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("name", ["resnet50", "resnet18"])
def test_an_exact_backbone_name_wins_the_search(browser, server, name):  # noqa: F811
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(server)
        wait_until_idle(page)
        picker = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first
        picker.click()
        page.keyboard.type(name, delay=20)
        page.wait_for_timeout(500)  # the filter runs as the text changes
        page.keyboard.press("Enter")
        wait_until_idle(page)
        chosen = picker.locator("input").first.input_value()
        assert chosen == name, f"typed {name!r} + Enter picked {chosen!r}"
    finally:
        page.close()
