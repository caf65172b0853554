"""The Gallery: the adaptive attack it picks, its marks and totals, the committed grid, and its page.

The page's totals are checked against the marks it draws (parsed from what AppTest sees) and against the
structure the library returned; the committed ``results/gallery-mnist.json`` against a fresh run of the
command that wrote it, on its first two images.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from qshield_core import gallery, lab, zoo

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TIMEOUT = 600
CELL = re.compile(r'data-gallery-col="([\w-]+)" data-gallery-mark="([\w ]+)"')
TOTAL = re.compile(r"held (\d+) · wrong before (\d+)")


def require_models(dataset: str = "mnist", *names: str) -> None:
    missing = [n for n in names or ("classical", "hybrid-full") if not zoo.model_files(dataset, n).weights.is_file()]
    if missing:
        pytest.skip(f"shipped model(s) {', '.join(missing)} for {dataset} not in {zoo.PRETRAINED_DIR}")


@pytest.fixture(autouse=True)
def _fresh_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def record(attack: str, asr: float, passes: float, n: int = 200, dataset: str = "mnist", eps: float = 32 / 255,
           model: str = "hybrid-full", suite: str = "adaptive", steps: str = "preset", surrogate: float = 0.0) -> dict:
    return {"dataset": dataset, "model": model, "grad_mode": "paper", "attack": attack, "suite": suite, "eps": eps,
            "asr": asr, "asr_ci": [asr - 0.03, min(asr + 0.02, 1.0)], "n": n, "n_clean_correct": n - 2,
            "forwards_per_image": passes / 2, "backwards_per_image": passes / 2,
            "surrogate_forwards_per_image": surrogate / 2 or None,
            "surrogate_backwards_per_image": surrogate / 2 or None,
            "seconds_per_image": 9.9, "source_file": "adaptive.json",
            "key": f"{dataset}/{model}/paper/{attack}/eps={eps:.6f}/steps={steps}/n={n}/seed=0/fast/auto"}


# ----------------------------------------------------------------------------- choosing the adaptive attack


def test_choose_adaptive_takes_the_strongest_affordable_attack_and_says_why():
    records = [record("autoattack", 0.99, 302), record("transfer-classical", 0.975, 0, surrogate=200),
               record("autoattack-rand", 0.999, 4160), record("bpda", 0.88, 100, surrogate=200),
               record("pgd100", 1.0, 50, eps=0.3), record("apgd-ce", 1.0, 50, steps="20"),
               record("bpda", 1.0, 50, model="hybrid-none")]
    choice = gallery.choose_adaptive(records, "mnist")
    assert choice.attack == "autoattack", "other eps, lowered budgets and other models do not count"
    assert "99.0 % [96.0, 100.0]" in choice.reason and "302 passes an image" in choice.reason
    assert "Stronger but dearer: autoattack-rand (99.9 %, 4160 passes an image)" in choice.reason

    cheap = gallery.choose_adaptive(records, "mnist", max_passes=250)
    assert cheap.attack == "transfer-classical" and cheap.asr == 0.975 and cheap.passes_per_image == 200
    assert "Stronger but dearer: autoattack-rand" in cheap.reason and "autoattack (99.0 %" in cheap.reason


def test_choose_adaptive_falls_back_to_transfer_without_results():
    choice = gallery.choose_adaptive([], "organamnist")
    assert choice.attack == gallery.FALLBACK_ADAPTIVE
    assert "No adaptive results" in choice.reason and "OrganAMNIST" in choice.reason


def test_bad_inputs_are_refused_with_a_message(tmp_path):
    with pytest.raises(ValueError, match="per_class must be at least 1"):
        gallery.gallery_entries("mnist", 0)
    with pytest.raises(ValueError, match="Not a gallery file"):
        gallery.Gallery.from_dict({"schema": "qshield.results/1"})
    (tmp_path / "gallery-mnist.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"gallery-mnist\.json is not a readable gallery file"):
        gallery.load_committed("mnist", tmp_path)
    assert gallery.load_committed("cifar10", tmp_path) is None


def test_entries_are_the_first_shipped_images_of_each_class():
    entries = gallery.gallery_entries("mnist", per_class=2)
    assert [e["label"] for e in entries] == [c for c in range(10) for _ in range(2)]
    table = lab.sample_table("mnist")
    firsts = [next(e for e in table if e["label"] == c) for c in range(10)]
    assert [e["file"] for e in entries[::2]] == [e["file"] for e in firsts]
    assert len(gallery.gallery_entries("mnist", 1, limit=3)) == 3


# ----------------------------------------------------------------------------- the committed grid


def test_committed_grid_is_what_the_command_produces(tmp_path):
    """Re-run the command on the first two images and compare every field with the committed file."""
    require_models()
    committed = gallery.load_committed("mnist")
    if committed is None:
        pytest.skip("results/gallery-mnist.json is not committed")
    assert committed.settings.per_class == 1 and committed.settings.limit is None and committed.settings.seed == 0
    loaded = {name: zoo.read_card("mnist", name)["weights_sha256"] for name in ("classical", "hybrid-full")}
    assert committed.models == loaded, "the committed grid was made with other weights: regenerate it"
    records, _ = lab.load_results()
    assert committed.settings.adaptive == gallery.choose_adaptive(records, "mnist").attack

    out = tmp_path / "gallery-mnist.json"
    previous = torch.get_num_threads()
    try:
        assert gallery.main(["--dataset", "mnist", "--limit", "2", "--out", str(out)]) == 0  # sets 1 thread
    finally:
        torch.set_num_threads(previous)
    fresh = json.loads(out.read_text())
    old = json.loads(gallery.committed_path("mnist").read_text())
    assert fresh["settings"] == {**old["settings"], "limit": 2}
    for name in ("schema", "eps", "adaptive", "models", "columns", "params", "notices"):
        assert fresh[name] == old[name], name
    assert len(fresh["rows"]) == 2
    for new_row, old_row in zip(fresh["rows"], old["rows"][:2], strict=True):
        assert {k: v for k, v in new_row.items() if k != "cells"} == {k: v for k, v in old_row.items() if k != "cells"}
        for key, cell in new_row["cells"].items():
            was = old_row["cells"][key]
            assert (cell["mark"], cell["clean_pred"], cell["adv_pred"]) == (was["mark"], was["clean_pred"],
                                                                          was["adv_pred"]), (new_row["title"], key)
            assert cell["linf"] == pytest.approx(was["linf"], abs=1e-6)
            diff = np.abs(gallery.decode_png(cell["thumbnail"]).astype(int) - gallery.decode_png(was["thumbnail"]))
            assert diff.max() <= 1, "the adversarial thumbnails agree to one grey level"


def test_committed_totals_are_its_marks_and_its_marks_follow_the_rule():
    committed = gallery.load_committed("mnist")
    if committed is None:
        pytest.skip("results/gallery-mnist.json is not committed")
    raw = json.loads(gallery.committed_path("mnist").read_text())
    assert raw["totals"] == committed.totals()
    for row in committed.rows:
        for cell in row.cells.values():
            assert cell.mark == lab.attack_verdict(row.label, cell.clean_pred, cell.adv_pred)
    for counts in committed.totals().values():
        assert sum(counts.values()) == len(committed.rows)


# ----------------------------------------------------------------------------- the page


def page_marks(at: AppTest) -> dict[str, list[str]]:
    """{column key: the marks the page drew, top to bottom}."""
    out: dict[str, list[str]] = {}
    for element in at.markdown:
        for key, mark in CELL.findall(element.value):
            out.setdefault(key, []).append(mark)
    return out


def page_totals(at: AppTest) -> list[dict[str, int]]:
    """The totals the page shows above each column (metric "flipped a / b" and its caption)."""
    flipped = [m.value for m in at.metric if m.label == "flipped"]
    captions = [TOTAL.search(c.value).groups() for c in at.caption if TOTAL.search(c.value)]
    out = []
    for value, (held, wrong) in zip(flipped, captions, strict=True):
        a, b = (int(x) for x in value.split(" / "))
        assert b == a + int(held), "the denominator counts the images the model got right"
        out.append({gallery.FLIPPED: a, gallery.HELD: int(held), gallery.WRONG_BEFORE: int(wrong)})
    return out


def counts_of(marks: list[str]) -> dict[str, int]:
    return {m: marks.count(m) for m in gallery.MARKS}


def test_page_shows_the_committed_grid_and_its_totals_equal_its_marks():
    require_models()
    committed = gallery.load_committed("mnist")
    if committed is None:
        pytest.skip("results/gallery-mnist.json is not committed")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/gallery.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("The committed grid" in c.value for c in at.caption)
    marks = page_marks(at)
    assert list(marks) == [c.key for c in committed.columns]
    totals = page_totals(at)
    assert totals == [counts_of(marks[c.key]) for c in committed.columns], "totals = the marks drawn"
    assert totals == [committed.totals()[c.key] for c in committed.columns], "totals = the returned structure"
    assert marks == {c.key: [r.cells[c.key].mark for r in committed.rows] for c in committed.columns}
    assert any("Why AutoAttack?" in i.value or "Why " in i.value for i in at.info)


def test_page_computes_other_settings_on_request(monkeypatch, tmp_path):
    """No committed grid for these settings: nothing is drawn until Compute; then the computed grid's totals
    equal both its marks on the page and the structure the job returned."""
    require_models()
    monkeypatch.setattr(lab, "RESULTS_DIR", tmp_path)  # no committed results: the fallback attack, no grid
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/gallery.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not page_marks(at) and any("press **Compute**" in i.value for i in at.info)
    at.number_input(key="gal_per_class").set_value(1)
    at.button(key="gal_compute").click().run()
    _, grid = at.session_state["gal_job"].future.result(timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert grid.settings.adaptive == gallery.FALLBACK_ADAPTIVE and len(grid.rows) == 10
    marks = page_marks(at)
    totals = page_totals(at)
    assert totals == [counts_of(marks[c.key]) for c in grid.columns]
    assert totals == [grid.totals()[c.key] for c in grid.columns]
    assert any("Computed in this app just now" in c.value for c in at.caption)


def test_page_reports_a_broken_committed_file_and_keeps_working(monkeypatch, tmp_path):
    require_models()
    monkeypatch.setattr(lab, "RESULTS_DIR", tmp_path)
    (tmp_path / "gallery-mnist.json").write_text('{"schema": "qshield.gallery/1"}')
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/gallery.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("not a readable gallery file" in e.value for e in at.error)
    assert at.button(key="gal_compute").label == "Compute"
