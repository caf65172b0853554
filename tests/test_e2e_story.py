"""End to end, in headless Chromium: the Story fits a 1280x720 projector screen, the Gallery renders.

Every Story step is opened by its URL (``/story?step=N``) at 1280x720 and must render without an
exception box or a script error and without horizontal scrolling (the document's and Streamlit's main
block's ``scrollWidth <= clientWidth``). Screenshots go to docs/screenshots when QSHIELD_SCREENSHOTS=1
(``story_step{N}_1280x720.png``, ``story.png`` at 1400x800, ``gallery.png`` at 1400 px wide (the whole
page), ``gallery_1280x720.png``), else to a temporary folder.
"""

from __future__ import annotations

import re

import pytest
from browser_support import (
    PAGE_TIMEOUT_MS,
    full_screenshot,
    open_page,
    screenshot_dir,
    wait_settled,
)

from qshield_core import story

pytestmark = pytest.mark.e2e
PROJECTOR = {"width": 1280, "height": 720}
WIDE = {"width": 1400, "height": 1000}

OVERFLOW_JS = """() => {
  const boxes = [document.documentElement, document.querySelector('[data-testid="stMain"]')].filter(Boolean);
  return boxes.map((el) => [el.scrollWidth, el.clientWidth]);
}"""


def assert_clean(page, errors: list[str]) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()
    assert not errors, errors


@pytest.mark.parametrize("number", range(1, story.N_STEPS + 1))
def test_story_step_fits_a_1280x720_screen(server, browser, tmp_path, number):
    step = story.step(number)
    page, errors = open_page(browser, f"{server}/story?step={number}", PROJECTOR)
    try:
        titles = re.compile("|".join(re.escape(t) for t in {step.title, step.neutral_title} if t))
        page.get_by_role("heading", name=titles).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_settled(page)
        page.wait_for_timeout(500)
        assert_clean(page, errors)
        for scroll_width, client_width in page.evaluate(OVERFLOW_JS):
            assert scroll_width <= client_width, f"step {number} scrolls sideways: {scroll_width} > {client_width}"
        assert f"step {number} of {story.N_STEPS}" in page.inner_text("body")
        page.screenshot(path=str(screenshot_dir(tmp_path) / f"story_step{number}_1280x720.png"))
    finally:
        page.close()


def test_story_next_moves_the_step_in_the_url(server, browser):
    page, errors = open_page(browser, f"{server}/story?step=5", PROJECTOR)
    try:
        page.get_by_role("heading", name=story.step(5).title).wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_settled(page)
        page.get_by_role("button", name=re.compile("Next")).click()
        page.get_by_role("heading", name=story.step(6).title).wait_for(timeout=PAGE_TIMEOUT_MS)
        page.wait_for_function("() => new URL(location.href).searchParams.get('step') === '6'", timeout=60_000)
        assert_clean(page, errors)
    finally:
        page.close()


def test_story_at_1400_wide(server, browser, tmp_path):
    page, errors = open_page(browser, f"{server}/story?step=4", {"width": 1400, "height": 800})
    try:
        page.get_by_role("heading", name=re.compile("attacker who knows")).wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_settled(page)
        page.wait_for_timeout(500)
        assert_clean(page, errors)
        page.screenshot(path=str(screenshot_dir(tmp_path) / "story.png"))  # a slide: one screen
    finally:
        page.close()


@pytest.mark.parametrize(("viewport", "name"), [(WIDE, "gallery.png"), (PROJECTOR, "gallery_1280x720.png")])
def test_gallery_renders_the_committed_grid(server, browser, tmp_path, viewport, name):
    page, errors = open_page(browser, f"{server}/gallery", viewport)
    try:
        page.get_by_role("heading", name="Gallery").wait_for(timeout=PAGE_TIMEOUT_MS)
        page.get_by_text(re.compile("FLIPPED|HELD")).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_settled(page)
        assert_clean(page, errors)
        assert page.locator("[data-gallery-mark]").count() == 30, "10 images x 3 columns"
        for scroll_width, client_width in page.evaluate(OVERFLOW_JS):
            assert scroll_width <= client_width
        path = screenshot_dir(tmp_path) / name
        if viewport is WIDE:
            full_screenshot(page, path)
        else:
            page.screenshot(path=str(path))
    finally:
        page.close()
