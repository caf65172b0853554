"""End to end: a real ``streamlit run app.py`` server driven by headless Chromium (Playwright).

Visits every page, waits until Streamlit has finished drawing it, checks that no exception box is
shown and no script error was thrown in the browser, and takes a screenshot (into docs/screenshots
when QSHIELD_SCREENSHOTS=1, else a temporary folder). Also drives the Attack Lab through its URL
presets and checks a tampered weights file end to end (QSHIELD_PRETRAINED).
"""

from __future__ import annotations

import re
import shutil

import pytest
from browser_support import (
    PAGE_TIMEOUT_MS,
    PAGES,
    full_screenshot,
    launch_options,
    require_browser,
    screenshot_dir,
    streamlit_server,
    wait_settled,
)

from qshield_core import zoo

pytestmark = pytest.mark.e2e
BADGE = re.compile(r"FLIPPED|HELD")


def require_shipped() -> None:
    needed = [zoo.model_files(d, m).weights for d in ("mnist",) for m in ("classical", "hybrid-full")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        pytest.skip(f"shipped models missing: {', '.join(missing)}")


@pytest.fixture(scope="module")
def browser():
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(**launch_options())
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, browser):
    require_shipped()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    with streamlit_server(log_path=log) as (url, process, _):
        yield url, process
        assert process.poll() is None, f"the server died during the tests (see {log})"


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url, timeout=PAGE_TIMEOUT_MS)
    return page, errors


def badges(page) -> list[str]:
    return [("FLIPPED" if "FLIPPED" in t else "HELD") for t in page.get_by_text(BADGE).all_inner_texts()]


@pytest.mark.parametrize(("path", "title", "name"), PAGES, ids=[p[2] for p in PAGES])
def test_page_renders_without_exception(server, browser, tmp_path, path, title, name):
    url, _ = server
    page, errors = open_page(browser, f"{url}/{path}")
    try:
        page.get_by_role("heading", name=re.compile(title)).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_settled(page)
        if name == "attack_lab":
            page.get_by_text(BADGE).first.wait_for(timeout=PAGE_TIMEOUT_MS)
            assert len(badges(page)) == 2, "one verdict per model: classical and hybrid"
        if name == "quantum_circuit":
            page.locator('[data-testid="stImage"] img').first.wait_for(timeout=PAGE_TIMEOUT_MS)
        assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
            '[data-testid="stException"]').first.inner_text()
        assert not errors, errors
        full_screenshot(page, screenshot_dir(tmp_path) / f"{name}.png")
    finally:
        page.close()


def test_attack_lab_url_presets_and_badge_flip(server, browser):
    """The classical CNN keeps test image #3 (a 0) at 8/255 and loses it at 24/255 (see test_app.py)."""
    url, _ = server
    seen = {}
    for eps in (8, 24):
        page, errors = open_page(browser, f"{url}/?dataset=mnist&attack=pgd&class=0&sample=0&eps={eps}")
        try:
            page.get_by_text(BADGE).first.wait_for(timeout=PAGE_TIMEOUT_MS)
            wait_settled(page)
            seen[eps] = badges(page)[0]
            titles = " ".join(page.locator(".gtitle").all_text_contents())
            assert f"({eps:.1f}/255)" in titles, titles
            assert not errors, errors
        finally:
            page.close()
    assert seen == {8: "HELD", 24: "FLIPPED"}


def test_tampered_weights_end_to_end(tmp_path, browser):
    """QSHIELD_PRETRAINED points at a copy with one flipped byte: that model is unavailable, the rest works."""
    require_shipped()
    directory = tmp_path / "pretrained"
    shutil.copytree(zoo.PRETRAINED_DIR, directory)
    weights = directory / "mnist-hybrid-full.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with streamlit_server(env={"QSHIELD_PRETRAINED": str(directory)}, log_path=tmp_path / "log") as (url, _, _):
        page, errors = open_page(browser, url)
        try:
            page.get_by_text(BADGE).first.wait_for(timeout=PAGE_TIMEOUT_MS)
            wait_settled(page)
            body = page.inner_text("body")
            assert "does not match its model card" in body and "mnist-hybrid-full.safetensors" in body
            assert len(badges(page)) == 1, "the classical CNN is still attacked"
            assert page.locator('[data-testid="stException"]').count() == 0
            assert not errors, errors
        finally:
            page.close()


def draw_seven(page, canvas) -> None:
    """Mouse strokes on the canvas: a top bar, then the diagonal of a 7 (one stroke, as a hand would draw it)."""
    box = canvas.bounding_box()
    x, y = box["x"], box["y"]
    page.mouse.move(x + 80, y + 60)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x + 80 + 12 * i, y + 60)
    for i in range(1, 16):
        page.mouse.move(x + 200 - 6 * i, y + 60 + 12 * i)
    page.mouse.up()


def test_a_digit_drawn_with_the_mouse_gets_a_prediction(server, browser, tmp_path):
    url, _ = server
    page, errors = open_page(browser, url)
    try:
        page.get_by_text(BADGE).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_settled(page)
        page.get_by_text("Draw", exact=True).click()
        canvas = page.locator("canvas.upper-canvas").first  # Fabric.js takes the pointer events on its upper canvas
        canvas.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_settled(page)
        assert page.get_by_text("The canvas is blank").count() == 1
        draw_seven(page, canvas)
        page.get_by_text("what the model sees: 28×28").wait_for(timeout=PAGE_TIMEOUT_MS)
        verdicts = page.get_by_text(re.compile(r"\b(UN)?CHANGED\b"))  # the badge: an icon, then the word
        verdicts.first.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_settled(page)
        assert verdicts.count() == 2, "one verdict per model; true class unknown: changed / unchanged"
        body = page.inner_text("body")
        assert re.search(r"7 → \d · the attack", body), "the classical CNN reads the drawn 7 before the attack"
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors
        full_screenshot(page, screenshot_dir(tmp_path) / "attack_lab_drawing.png")
    finally:
        page.close()
