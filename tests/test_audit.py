"""The masking audit: each flag on hand-made records, the live checks on the shipped MNIST models."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_record

from qshield_core import audit, lab, zoo
from qshield_core.evaluation import evaluation_points


def _on(attack: str, adv: list[int], suite: str = "adaptive") -> dict:
    bits = lambda v: np.packbits(np.array(v, dtype=np.uint8)).tobytes().hex()
    return dict(make_record("hybrid-full", attack, 0.5, mode="paper"), suite=suite, n=len(adv),
                points={"indices": list(range(len(adv))), "kind": "test"},
                per_point={"clean_correct": bits([1] * len(adv)), "adv_correct": bits(adv)})


EPS = 32 / 255


def test_blackbox_beating_whitebox_is_flagged_beyond_noise_only():
    white = _on("pgd", [1] * 80 + [0] * 20, suite="paper")  # 80 % robust
    strong_free = _on("square5000", [1] * 30 + [0] * 70)  # 30 % robust: far below
    flag = audit.check_blackbox_beats_whitebox([white, strong_free], EPS)
    assert flag.raised is True and "Square-5000 leaves 30.0 % robust" in flag.evidence
    close_free = _on("square5000", [1] * 78 + [0] * 22)  # 78 %: within sampling noise of 80 %
    assert audit.check_blackbox_beats_whitebox([white, close_free], EPS).raised is False
    assert audit.check_blackbox_beats_whitebox([white], EPS).raised is None, "nothing to compare: not measured"


def test_eot_gain_is_flagged_on_shared_points():
    plain = _on("pgd100", [1] * 60 + [0] * 40)
    eot = _on("eot-pgd", [1] * 10 + [0] * 90)
    flag = audit.check_eot_gain([plain, eot], EPS)
    assert flag.raised is True and "on the same 100 points" in flag.evidence
    assert audit.check_eot_gain([plain, _on("eot-pgd", [1] * 60 + [0] * 40)], EPS).raised is False


def test_the_flags_pair_the_two_attacks_point_by_point():
    """EOT keeps 52 of the 60 points PGD-100 keeps and no other: 8 points lower on 100, which two independent
    samples could not tell from noise and paired outcomes can."""
    plain = _on("pgd100", [1] * 60 + [0] * 40)
    eot = _on("eot-pgd", [1] * 52 + [0] * 48)
    flag = audit.check_eot_gain([plain, eot], EPS)
    assert flag.raised is True and "EOT-PGD leaves 52.0 % robust" in flag.evidence


def _models():
    for m in ("classical", "hybrid-full"):
        if not zoo.model_files("mnist", m).weights.is_file():
            pytest.skip(f"mnist-{m} not shipped")
    return {mode: lab.load("mnist", "hybrid-full", grad_mode=mode).model for mode in ("paper", "differentiable")} | {
        "classical": lab.load("mnist", "classical").model}


def test_live_checks_tell_the_paper_mode_from_its_differentiable_twin_and_the_cnn():
    models = _models()
    points = evaluation_points("mnist", 10, source="samples")
    randomised = {k: audit.check_randomised_forward(m, points.images).raised for k, m in models.items()}
    cut = {k: audit.check_cut_branch(m, points.images).raised for k, m in models.items()}
    assert randomised == {"paper": True, "differentiable": False, "classical": False}
    assert cut == {"paper": True, "differentiable": False, "classical": False}
    zero = audit.check_zero_gradients(models["classical"], points.images, points.labels)
    assert zero.raised is False and "0.0 %" in zero.evidence


def test_large_eps_check_sees_every_point_fall_on_the_cnn():
    model = _models()["classical"]
    points = evaluation_points("mnist", 10, source="samples")
    flag = audit.check_large_eps(model, "mnist", points.images, points.labels)
    assert flag.raised is False and "leaves 0.0 %" in flag.evidence


def test_claim_card_of_the_paper_mode_is_not_admissible():
    model = _models()["paper"]
    records = [_on("pgd", [1] * 70 + [0] * 30, suite="paper"), _on("autoattack", [0] * 100)]
    card = audit.claim_card(model, "mnist", "hybrid-full", "paper", records, n_live=6)
    assert not card.robustbench_admissible
    assert any("randomised" in reason for reason in card.admission_reasons)
    assert card.worst_case["robust_accuracy"] == 0.0 and card.worst_case["n"] == 100
    assert card.paper_protocol["robust_accuracy"] == 0.5, "the headline figure is the record's own"
