"""The downloadable report: one self-contained HTML file (qshield_core.handout) that opens offline."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from qshield_core import handout, lab
from qshield_core.data import get_spec

NAMES = get_spec("mnist").class_names
EXTERNAL = re.compile(r"https?://|<script|<link|@import|url\(", re.IGNORECASE)


def outcome(key: str, label: int | None, clean: int, adv: int, grad_mode: str | None = None) -> lab.ModelAttack:
    rng = np.random.default_rng(0)
    image = rng.random((1, 28, 28)).astype(np.float32)
    delta = rng.uniform(-8 / 255, 8 / 255, image.shape).astype(np.float32)

    def probs(top: int) -> np.ndarray:
        p = np.full(10, 0.02)
        p[top] = 0.82
        return p

    return lab.ModelAttack(
        key=key, model_name=key.split(" ")[0], grad_mode=grad_mode, label=label, image=image,
        adv_image=np.clip(image + delta, 0, 1), clean_probs=probs(clean), adv_probs=probs(adv), linf=8 / 255, l2=1.23,
        seconds=0.0456, forwards=11.0, backwards=10.0, surrogate_forwards=None, surrogate_backwards=None,
        gradient_source="", params={"eps": 8 / 255, "steps": 10, "alpha": 2 / 255})


def comparison(label: int | None = 7) -> lab.Comparison:
    outcomes = {"classical": outcome("classical", label, 7, 3),
                "hybrid-full (paper)": outcome("hybrid-full (paper)", label, 7, 7, "paper")}
    return lab.Comparison("mnist", "pgd", "PGD", 8 / 255, None, outcomes,
                          [lab.Notice("info", "budget lowered for the app <b>")])


def report(label: int | None = 7) -> str:
    return handout.comparison_report(comparison(label), NAMES, image_caption="7 · test #0", dataset_name="MNIST",
                                     generated=datetime(2026, 1, 2, tzinfo=UTC))


def test_the_attack_report_holds_everything_a_listener_takes_home():
    text = report()
    assert text.startswith("<!DOCTYPE html>") and "QShield attack report: PGD" in text
    assert "classical: flipped (7 → 3)" in text and "hybrid-full (paper): held (7 → 7)" in text
    assert "gradient masking" in text, "a paper-mode hybrid that holds gets the caveat"
    assert text.count('src="data:image/png;base64,') == 6, "original, adversarial, perturbation per model"
    assert text.count("<svg") == 2, "one probability chart per model"
    for needle in ("attacker time (ms)", "45.6", "forward passes", "<td>11</td>", "backward passes", "steps", "alpha",
                   "8/255", "0.0314 (8/255)", "7 · test #0", "2026-01-02"):
        assert needle in text, needle
    assert "budget lowered for the app &lt;b&gt;" in text, "notices are escaped"
    assert not EXTERNAL.search(text), EXTERNAL.search(text)


def test_an_unknown_label_says_changed_and_unchanged():
    text = report(label=None)
    assert "classical: changed (7 → 3)" in text and "unchanged (7 → 7)" in text
    assert "flipped (" not in text and "<dd>unknown</dd>" in text


def test_build_report_html_for_a_verdict_with_committed_numbers():
    text = handout.build_report_html(
        "Does the circuit help?", "No: the adaptive attack fools both.", facts={"ε": "32/255", "seed": None},
        tables=[handout.Table("Committed results", ["model", "ASR (%)", "interval"],
                              [["classical", 99.1, "[98.3, 99.5]"], ["hybrid-full", float("nan"), None]],
                              caption="results/adaptive.json")],
        notes=["python -m qshield_core evaluate ..."])
    assert "No: the adaptive attack fools both." in text and "results/adaptive.json" in text
    assert "<td>99.1</td>" in text and text.count("<td>–</td>") == 2 and "<dd>–</dd>" in text
    assert "None" not in text and "nan" not in text
    assert not EXTERNAL.search(text)


def test_the_adversarial_png_is_the_image_at_its_own_size():
    image = np.random.default_rng(1).random((3, 32, 32)).astype(np.float32)
    decoded = np.asarray(Image.open(io.BytesIO(handout.image_png(image))))
    assert decoded.shape == (32, 32, 3)
    np.testing.assert_array_equal(decoded, np.rint(image.transpose(1, 2, 0) * 255).astype(np.uint8))


@pytest.mark.e2e
def test_the_report_opens_offline_in_chromium_and_shows_its_figures(tmp_path):
    from browser_support import launch_options, require_browser

    require_browser()
    from playwright.sync_api import sync_playwright

    path = tmp_path / "report.html"
    path.write_text(report(), encoding="utf-8")
    attempted: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**launch_options())
        try:
            context = browser.new_context(offline=True, viewport={"width": 1280, "height": 720})

            def route(r):
                if r.request.url.startswith("file://"):
                    r.continue_()
                else:
                    attempted.append(r.request.url)
                    r.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            widths = page.evaluate("() => [...document.images].map((i) => i.complete ? i.naturalWidth : 0)")
            bars = page.locator("svg rect").count()
            body = page.inner_text("body")
        finally:
            browser.close()
    assert len(widths) == 6 and all(w > 0 for w in widths), widths
    assert bars >= 2 * 10, "two charts with bars"
    assert "FLIPPED" in body.upper() and "classical" in body
    assert not attempted, f"the report asked the network for {attempted}"
