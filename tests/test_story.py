"""The Story: its steps, the live claims on the chosen sample, the committed numbers it shows, and its page.

Each live step's claim is asserted on the library's returned outcome (step 2: the CNN is flipped, step 3:
the paper-mode hybrid holds, step 4: the transferred image flips it), and the page is driven through every
step, by its Back/Next buttons and by ``?step=``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from qshield_core import lab, story, zoo

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TIMEOUT = 600


def require_models() -> None:
    missing = [n for n in ("classical", "hybrid-full") if not zoo.model_files("mnist", n).weights.is_file()]
    if missing:
        pytest.skip(f"shipped MNIST model(s) {', '.join(missing)} not in {zoo.PRETRAINED_DIR}")


@pytest.fixture(scope="module")
def models() -> story.StoryModels:
    require_models()
    return story.StoryModels(lab.load("mnist", "classical"), lab.load("mnist", "hybrid-full", grad_mode="paper"))


@pytest.fixture(scope="module")
def choice(models) -> story.SampleChoice:
    return story.choose_sample(models)


# ----------------------------------------------------------------------------- steps and URL values


def test_there_are_five_to_eight_steps_numbered_in_order():
    assert 5 <= story.N_STEPS <= 8
    assert [s.number for s in story.STEPS] == list(range(1, story.N_STEPS + 1))
    assert all(s.neutral_title for s in story.STEPS if s.live), "a live step needs a headline that claims nothing"


@pytest.mark.parametrize(("value", "expected"), [("3", 3), (" 2 ", 2), ("0", 1), ("-4", 1), ("99", story.N_STEPS),
                                                 ("abc", 1), (None, 1), ("", 1), ("2.5", 1)])
def test_parse_step_clamps_and_forgives(value, expected):
    assert story.parse_step(value) == expected


# ----------------------------------------------------------------------------- the live claims


def test_the_chosen_sample_shows_every_live_claim(choice):
    outcomes = story.live_outcomes(choice.run)
    assert choice.all_hold and 1 <= choice.tried <= story.MAX_TRIES
    label = choice.entry["label"]
    cnn = choice.run.paper.outcomes["classical"]
    assert cnn.clean_pred == label and outcomes["read"].holds, "step 1: the CNN reads it right"
    assert cnn.verdict == lab.FLIPPED and outcomes["flip"].holds, "step 2: PGD flips the CNN"
    assert choice.run.paper.outcomes["hybrid"].verdict == lab.HELD and outcomes["paper"].holds, "step 3: it holds"
    assert choice.run.adaptive.outcomes["hybrid"].verdict == lab.FLIPPED and outcomes["adaptive"].holds, "step 4"
    assert choice.run.paper.attack == "pgd" and choice.run.adaptive.attack == "transfer-classical"
    assert choice.run.paper.eps == pytest.approx(32 / 255)
    assert choice.run.adaptive.outcomes["hybrid"].gradient_source.startswith("transferred from the classical CNN")


def test_the_live_run_is_reproducible(choice, models):
    again = story.run_story(choice.entry, models)
    for side in ("paper", "adaptive"):
        for key, outcome in getattr(choice.run, side).outcomes.items():
            fresh = getattr(again, side).outcomes[key]
            assert (fresh.clean_pred, fresh.adv_pred) == (outcome.clean_pred, outcome.adv_pred), (side, key)
            np.testing.assert_allclose(fresh.adv_image, outcome.adv_image, atol=1e-6)


def _attack(label: int, clean: int, adv: int, key: str = "hybrid") -> lab.ModelAttack:
    probs = np.full(10, 0.01)
    clean_probs, adv_probs = probs.copy(), probs.copy()
    clean_probs[clean], adv_probs[adv] = 0.91, 0.91
    image = np.zeros((1, 28, 28), dtype=np.float32)
    return lab.ModelAttack(key, "m", "paper", label, image, image, clean_probs, adv_probs, 0.0, 0.0, 0.0, 10, 10,
                           None, None, "", {})


def _run(cnn: lab.ModelAttack, hybrid: lab.ModelAttack, transferred: lab.ModelAttack) -> story.StoryRun:
    entry = {"dataset": "mnist", "label": cnn.label, "file": "x.png", "split": "test", "index": 0, "title": "t"}
    paper = lab.Comparison("mnist", "pgd", "PGD", 32 / 255, None, {"classical": cnn, "hybrid": hybrid}, [])
    adaptive = lab.Comparison("mnist", "transfer-classical", "Transfer", 32 / 255, None, {"hybrid": transferred}, [])
    return story.StoryRun(entry, paper, adaptive)


def test_a_claim_that_fails_says_what_happened_instead():
    outcomes = story.live_outcomes(_run(_attack(4, 4, 4, "classical"), _attack(4, 4, 9), _attack(4, 4, 4)))
    assert outcomes["read"].holds
    assert not outcomes["flip"].holds and "the attack failed: the CNN still says **4**" in outcomes["flip"].sentence
    assert not outcomes["paper"].holds and "fooled the hybrid as well: it says **9**" in outcomes["paper"].sentence
    assert not outcomes["adaptive"].holds and "did not fool the hybrid" in outcomes["adaptive"].sentence

    wrong = story.live_outcomes(_run(_attack(4, 7, 7, "classical"), _attack(4, 7, 7), _attack(4, 7, 7)))
    assert not wrong["read"].holds and "wrong before any attack" in wrong["read"].sentence
    assert all(not o.holds and "already wrong" in o.sentence for k, o in wrong.items() if k != "read")


# ----------------------------------------------------------------------------- committed numbers


def _record(model: str, mode: str | None, attack: str, asr: float, ci: tuple[float, float], suite: str,
            n: int = 1000) -> dict:
    return {"dataset": "mnist", "model": model, "grad_mode": mode, "attack": attack, "suite": suite,
            "eps": 32 / 255, "n": n, "asr": asr, "asr_ci": list(ci), "robust_accuracy": 1 - asr,
            "key": f"mnist/{model}/{mode or '-'}/{attack}/eps=0.125490/steps=preset/n={n}/seed=0/fast/auto",
            "source_file": "t.json"}


def test_verdict_is_decided_by_the_intervals():
    base = [_record("classical", None, "pgd", 0.858, (0.835, 0.878), "paper"),
            _record("hybrid-full", "paper", "pgd", 0.685, (0.656, 0.714), "paper"),
            _record("classical", None, "apgd-ce", 0.985, (0.956, 0.995), "adaptive", 200)]
    masked = story.verdict([*base, _record("hybrid-full", "paper", "autoattack", 0.99, (0.964, 0.997), "adaptive",
                                           200)])
    assert masked.short == "gradient masking" and "gradient masking, not robustness" in masked.conclusion
    assert "85.8 % [83.5, 87.8]" in masked.sentences[0] and "68.5 % [65.6, 71.4]" in masked.sentences[0]
    held = story.verdict([*base, _record("hybrid-full", "paper", "bpda", 0.60, (0.53, 0.67), "adaptive", 200)])
    assert held.short == "the gap holds" and "did not close the gap" in held.conclusion
    assert story.verdict(base) is None, "no adaptive record on the hybrid: no verdict"
    assert story.verdict([]) is None


def test_committed_verdict_and_cost_come_from_the_results_files():
    records, _ = lab.load_results()
    v = story.verdict(records)
    if v is None:
        pytest.skip("no committed results in this checkout")
    pgd = story.committed_asr(records, "pgd", model="classical", mode=None)
    assert v.cnn_pgd.asr == pytest.approx(pgd.asr) and v.cnn_pgd.ci == pytest.approx(pgd.ci)
    rows = story.verdict_rows(records)
    assert [r[0] for r in rows] == ["MNIST", "OrganAMNIST", "CIFAR-10"]
    assert rows[0][1] == v.cnn_pgd.text() and v.short in rows[0][-1]
    c = story.cost(records)
    assert c is not None and set(c.passes) == {"CNN", "hybrid"}
    assert c.same_passes == (c.passes["CNN"] == c.passes["hybrid"])
    assert all(r > 0 for r in c.time_ratios.values()) and set(c.record_ms) == {"CNN", "hybrid"}
    assert c.holds == (c.same_passes and c.simulator_explains)
    figure = story.cost_figure(c)
    bars = {tuple(t.x): list(t.y) for t in figure.data if t.orientation != "h"}
    assert bars[("CNN", "hybrid")] == [c.passes["CNN"][0], c.passes["hybrid"][0]]


def test_cost_sentence_follows_the_numbers():
    same = story.Cost({"CNN": (10, 10), "hybrid": (10, 10)},
                      {story.PAPER_REPORTED: 157.0, story.PAPER_SIMULATOR: 68.8, story.FAST_SIMULATOR: 1.17},
                      {"CNN": 6.8, "hybrid": 6.4}, [])
    assert same.holds and "the same work" in same.sentence() and "68× dearer" not in same.sentence()
    assert "69× dearer, an exact batched simulator 1.2×" in same.sentence()
    more = story.Cost({"CNN": (10, 10), "hybrid": (12, 11)}, {}, {"CNN": 1.0, "hybrid": 1.0}, [])
    assert not more.holds and "the same work" not in more.sentence() and "12 and 11 on the hybrid." in more.sentence()
    story.cost_figure(more)  # no timings: only the passes are drawn


def test_gradient_flow_picture_is_valid_svg_with_the_cut():
    svg = story.gradient_flow_svg(0.88)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    text = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    assert "α ≈ 0.88" in text and "cut from the gradient" in text and "random, new every call" in text


def test_report_holds_the_verdict_and_the_live_images(choice):
    records, _ = lab.load_results()
    v = story.verdict(records)
    html = story.report_html(choice.run, story.live_outcomes(choice.run), v, story.verdict_rows(records),
                             story.cost(records))
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert html.count("data:image/png;base64,") >= 6, "original and adversarial for three live steps"
    if v is not None:
        assert v.conclusion.replace("'", "&#x27;") in html


# ----------------------------------------------------------------------------- the page


def run_story(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    at.switch_page("pages/story.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def title(at: AppTest) -> str:
    return at.title[0].value


def url_step(at: AppTest) -> str:
    """The ``step`` query parameter the page left in the URL."""
    return at.query_params["step"]


@pytest.mark.parametrize("number", range(1, story.N_STEPS + 1))
def test_every_step_renders_and_its_claim_holds(number):
    require_models()
    at = run_story(step=str(number))
    step = story.step(number)
    assert url_step(at) == str(number)
    assert title(at) == step.title, "the claim of the title held on this run (else the neutral title shows)"
    assert f"step {number} of {story.N_STEPS}" in at.markdown[0].value
    if step.live:
        assert at.success and not at.warning, "a live step says, in green, that its statement held"
    if step.key == "verdict":
        assert [b.label for b in at.get("download_button")] == ["Download report"]


def test_next_and_back_move_the_step_in_the_url():
    require_models()
    at = run_story(step="1")
    assert at.button(key="story_back").disabled and not at.button(key="story_next").disabled
    at.button(key="story_next").click().run()
    assert title(at) == story.step(2).title and url_step(at) == "2"
    at.button(key="story_next").click().run()
    assert title(at) == story.step(3).title
    at.button(key="story_back").click().run()
    assert title(at) == story.step(2).title and url_step(at) == "2"
    last = run_story(step=str(story.N_STEPS))
    assert last.button(key="story_next").disabled


@pytest.mark.parametrize(("value", "expected"), [("abc", 1), ("99", story.N_STEPS)])
def test_a_bad_step_in_the_url_is_corrected(value, expected):
    require_models()
    at = run_story(step=value)
    assert title(at) == story.step(expected).title
    assert url_step(at) == str(expected)


def test_story_without_committed_results_says_so(monkeypatch, tmp_path):
    require_models()
    monkeypatch.setattr(lab, "RESULTS_DIR", tmp_path)
    for number, phrase in ((6, "No committed attack timings"), (7, "no verdict without numbers")):
        at = run_story(step=str(number))
        assert any(phrase in w.value for w in at.warning)
