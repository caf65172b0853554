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
    open_page,
    require_shipped,
    screenshot_dir,
    streamlit_server,
    wait_settled,
)

from qshield_core import zoo

pytestmark = pytest.mark.e2e
BADGE = re.compile(r"FLIPPED|HELD")


def badges(page) -> list[str]:
    return [("FLIPPED" if "FLIPPED" in t else "HELD") for t in page.get_by_text(BADGE).all_inner_texts()]


@pytest.mark.parametrize(("path", "title", "name"), PAGES, ids=[p[2] for p in PAGES])
def test_page_renders_without_exception(server, browser, tmp_path, path, title, name):
    url = server
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
    url = server
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


def test_make_run_starts_the_app_with_its_own_navigation_and_a_first_result(tmp_path, browser):
    """scripts/serve.py (``make run``): the first visitor's navigation is the app's from its first paint (not
    Streamlit's list of the files in pages/, _shared.py among them), and the Attack Lab draws both verdicts."""
    require_shipped()
    with streamlit_server(log_path=tmp_path / "log", launcher="serve") as (url, process, _):
        page, errors = open_page(browser, url)
        try:
            nav = page.locator('[data-testid="stSidebarNav"]')
            nav.first.wait_for(timeout=PAGE_TIMEOUT_MS)
            first_nav = nav.first.inner_text()
            page.get_by_text(BADGE).first.wait_for(timeout=PAGE_TIMEOUT_MS)
            wait_settled(page)
            assert "Attack Lab" in first_nav and "shared" not in first_nav.lower(), first_nav
            assert len(badges(page)) == 2
            assert page.locator('[data-testid="stException"]').count() == 0
            assert not errors, errors
            assert process.poll() is None
        finally:
            page.close()


def seven_stroke(canvas) -> list[tuple[float, float]]:
    """The points of a 7 drawn in one stroke, as a hand would: a top bar, then the diagonal."""
    box = canvas.bounding_box()
    x, y = box["x"], box["y"]
    bar = [(x + 80 + 12 * i, y + 60) for i in range(11)]
    return bar + [(x + 200 - 6 * i, y + 60 + 12 * i) for i in range(1, 16)]


def draw_seven(page, canvas) -> None:
    """The 7 with the mouse."""
    points = seven_stroke(canvas)
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point)
    page.mouse.up()


def draw_seven_by_touch(page, canvas) -> None:
    """The 7 with one finger: raw touch events (touchstart, touchmove..., touchend) through the DevTools protocol,
    as a tablet at the front of a classroom sends them."""
    cdp = page.context.new_cdp_session(page)
    points = seven_stroke(canvas)

    def touch(kind: str, point: tuple[float, float] | None) -> None:
        touch_points = [] if point is None else [{"x": point[0], "y": point[1], "id": 1}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touch_points})

    touch("touchStart", points[0])
    for point in points[1:]:
        touch("touchMove", point)
    touch("touchEnd", None)
    cdp.detach()


def assert_drawn_seven_is_read(page, errors: list[str], draw) -> None:
    """Open the Draw source, check the blank-canvas message, draw, and check both verdicts and the CNN's reading."""
    page.get_by_text(BADGE).first.wait_for(timeout=PAGE_TIMEOUT_MS)
    wait_settled(page)
    page.get_by_text("Draw", exact=True).click()
    canvas = page.locator("canvas.upper-canvas").first  # Fabric.js takes the pointer events on its upper canvas
    canvas.wait_for(timeout=PAGE_TIMEOUT_MS)
    wait_settled(page)
    assert page.get_by_text("The canvas is blank").count() == 1
    draw(page, canvas)
    page.get_by_text("what the model sees: 28×28").wait_for(timeout=PAGE_TIMEOUT_MS)
    verdicts = page.get_by_text(re.compile(r"\b(UN)?CHANGED\b"))  # the badge: an icon, then the word
    verdicts.first.wait_for(timeout=PAGE_TIMEOUT_MS)
    wait_settled(page)
    assert verdicts.count() == 2, "one verdict per model; true class unknown: changed / unchanged"
    body = page.inner_text("body")
    assert re.search(r"7 → \d · the attack", body), "the classical CNN reads the drawn 7 before the attack"
    assert page.locator('[data-testid="stException"]').count() == 0
    assert not errors, errors


def test_a_digit_drawn_with_the_mouse_gets_a_prediction(server, browser, tmp_path):
    page, errors = open_page(browser, server)
    try:
        assert_drawn_seven_is_read(page, errors, draw_seven)
        full_screenshot(page, screenshot_dir(tmp_path) / "attack_lab_drawing.png")
    finally:
        page.close()


def test_a_digit_drawn_with_a_finger_gets_a_prediction(server, browser):
    page, errors = open_page(browser, server, viewport={"width": 1280, "height": 800}, has_touch=True)
    try:
        assert page.evaluate("() => navigator.maxTouchPoints") > 0, "the page runs as on a touch screen"
        assert_drawn_seven_is_read(page, errors, draw_seven_by_touch)
    finally:
        page.close()
