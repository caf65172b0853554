"""Randomized smoothing (Cohen et al. 2019): CERTIFY, PREDICT, the SmoothAdv attack and one study cell."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from scipy.stats import norm
from torch import nn

from qshield_core.attacks.smoothadv import SmoothAdvPGD
from qshield_core.certify.smoothing import (
    ABSTAIN,
    Certificate,
    SmoothingConfig,
    certified_accuracy,
    certified_radius,
    certify,
    certify_points,
    lower_confidence_bound,
    predict,
)


class Linear2(nn.Module):
    """f(x) = 1 if w.x + b > 0 else 0, as two logits: its decision boundary is the hyperplane w.x + b = 0."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(score), score], -1)


class CoinFlip(nn.Module):
    """Votes class 1 when the first coordinate is positive: at x = 0 under noise, a fair coin."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x.flatten(1)[:, 0]
        return torch.stack([-first, first], -1)


W = torch.tensor([3.0, -4.0, 0.0, 0.0], dtype=torch.float64)  # ||w|| = 5


def point_at_distance(d: float) -> torch.Tensor:
    """A point on the class-1 side at L2 distance d from the boundary of Linear2(W, b=0)."""
    return d * W / 5.0


def test_linear_classifier_radius_approaches_the_distance_from_below():
    model, d, sigma = Linear2(W, 0.0), 0.6, 0.5
    radii = []
    for seed in range(6):
        cert = certify(model, point_at_distance(d), SmoothingConfig(sigma, n0=100, n=100_000), 2,
                       torch.Generator().manual_seed(seed))
        assert cert.prediction == 1
        radii.append(cert.radius)
    assert max(radii) < d  # never above the exact distance (Cohen's Theorem 1 is tight for linear f)
    assert min(radii) > 0.93 * d  # and close to it with n = 100,000


def test_the_closed_form_is_the_distance_when_the_probability_is_exact():
    sigma, d = 0.25, 0.4
    p_exact = norm.cdf(d / sigma)  # P[f(x + delta) = 1] for the linear classifier
    assert sigma * norm.ppf(p_exact) == pytest.approx(d, rel=1e-12)
    n = 10**7
    assert certified_radius(round(p_exact * n), n, sigma, 0.001) == pytest.approx(d, rel=0.01)
    assert certified_radius(round(p_exact * n), n, sigma, 0.001) < d


def test_certify_and_predict_abstain_when_the_top_class_is_not_confident():
    x = torch.zeros(4, dtype=torch.float64)
    cfg = SmoothingConfig(0.5, n0=100, n=2000)
    cert = certify(CoinFlip(), x, cfg, 2, torch.Generator().manual_seed(0))
    assert cert.abstained and cert.radius == 0.0 and cert.p_lower < 0.5
    assert predict(CoinFlip(), x, cfg, 2, torch.Generator().manual_seed(1)) == ABSTAIN


def test_a_unanimous_vote_reaches_the_largest_radius_n_allows():
    cfg = SmoothingConfig(0.5, n0=10, n=1000, alpha=0.001)
    far = point_at_distance(50.0)
    cert = certify(Linear2(W, 0.0), far, cfg, 2, torch.Generator().manual_seed(0))
    expected = 0.5 * norm.ppf(0.001 ** (1 / 1000))  # Clopper-Pearson lower bound of 1000/1000
    assert cert.count_top == 1000 and cert.radius == pytest.approx(expected, rel=1e-9) == cfg.max_radius
    assert predict(Linear2(W, 0.0), far, cfg, 2, torch.Generator().manual_seed(0)) == 1


def test_lower_confidence_bound_is_clopper_pearson():
    assert lower_confidence_bound(1000, 1000, 0.001) == pytest.approx(0.001 ** (1 / 1000), rel=1e-9)
    assert lower_confidence_bound(0, 10, 0.05) == 0.0
    assert lower_confidence_bound(600, 1000, 0.001) < 0.6


def test_certified_accuracy_counts_correct_points_with_at_least_the_radius():
    certs = [Certificate(1, 0.3, 90, 100, 0.8), Certificate(0, 0.6, 95, 100, 0.9),
             Certificate(ABSTAIN, 0.0, 40, 100, 0.3), Certificate(2, 1.0, 99, 100, 0.95)]
    labels = [1, 0, 0, 1]  # the last one is confidently wrong
    assert certified_accuracy(certs, labels, [0.0, 0.3, 0.5, 0.7]) == [0.5, 0.5, 0.25, 0.0]


def test_certify_points_is_deterministic_under_threads():
    model = Linear2(W.float(), 0.0)
    images = torch.stack([point_at_distance(d).float() for d in (0.1, 0.3, 0.5, 0.7)])
    cfg = SmoothingConfig(0.5, n0=50, n=500)
    solo = certify_points(model, images, [3, 5, 8, 13], cfg, 2, seed=4)
    results = [None] * 4

    def work(i: int) -> None:
        results[i] = certify_points(model, images, [3, 5, 8, 13], cfg, 2, seed=4)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        torch.randn(100)  # someone else drawing from the global generator meanwhile
    assert all(r == solo for r in results)
    assert certify_points(model, images, [3, 5, 8, 13], cfg, 2, seed=5) != solo


def test_smoothadv_stays_in_the_ball_and_pushes_towards_the_boundary():
    w = W.float()
    model = Linear2(w, 0.5)  # the boundary w.x + 0.5 = 0 passes through the grey image 0.5
    x = torch.stack([0.5 + point_at_distance(d).float() for d in (0.2, 0.4)])
    y = torch.ones(2, dtype=torch.long)
    assert torch.equal(model(x).argmax(-1), y)
    attack = SmoothAdvPGD(model, eps=0.3, sigma=0.25, steps=10, samples=8, generator=torch.Generator().manual_seed(0))
    adv = attack(x, y)
    assert float((adv - x).flatten(1).norm(dim=1).max()) <= 0.3 + 1e-5
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    distance = (model(x)[:, 1] - model(adv)[:, 1]) / 5.0
    assert torch.allclose(distance, torch.full((2,), 0.3), atol=1e-3)  # the whole budget, straight down -w
    again = SmoothAdvPGD(model, eps=0.3, sigma=0.25, steps=10, samples=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(x, y), adv)


def test_smoothing_config_refuses_bad_parameters():
    for kwargs in (dict(sigma=0.0), dict(sigma=0.5, n=0), dict(sigma=0.5, alpha=0.7)):
        with pytest.raises(ValueError):
            SmoothingConfig(**kwargs)
    assert math.isfinite(SmoothingConfig(0.25).max_radius)


def test_a_study_cell_on_the_shipped_samples(tmp_path):
    from qshield_core.certify import smoothing_eval as S

    root = tmp_path / "smoothed"
    S.train_base_models("mnist", 0.25, root=root, epochs=1, data="samples", batch_size=50, log=lambda m: None,
                        checkpoint_dir=tmp_path / "checkpoints")
    card = (root / "mnist-sigma-0.25" / "mnist-classical.json").read_text()
    assert '"gaussian_noise_training"' in card and '"sigma": 0.25' in card
    record = S.run_cell("mnist", "classical", 0.25, n=10, mc=100, root=root, votes=20, source="samples",
                        log=lambda m: None)
    assert record["source"] == "samples" and record["key"].startswith("mnist/classical/sigma=0.25/n=10/mc=100")
    rows = record["per_point"]
    correct = sum(p == y for y, p, _, _ in rows)
    assert record["curve"][0]["hits"] == correct
    for row in record["empirical"]:
        certified_here = sum(p == y and r >= row["radius"] for y, p, r, _ in rows)
        assert row["certified"]["hits"] == certified_here
        assert len(row["predictions"]) == 10
        broken = {i for i, p, (y, *_) in zip(record["points"], row["predictions"], rows, strict=True) if p != y}
        assert set(row["certified_but_broken"]) <= broken


class SharedShift(nn.Module):
    """A randomised model whose randomness is drawn once per call, for the whole batch (like the paper mode)."""

    randomised = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = torch.randn(1)
        first = x.flatten(1)[:, 0] + shift
        return torch.stack([-first, first], -1)


def test_a_randomised_model_s_copies_must_share_one_call():
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="one call"):
        certify(SharedShift(), x, SmoothingConfig(0.5, n0=10, n=200, batch_size=50), 2, torch.Generator())
    with pytest.raises(ValueError, match="one call"):
        predict(SharedShift(), x, SmoothingConfig(0.5, n=200, batch_size=50), 2, torch.Generator())
    cert = certify(SharedShift(), x, SmoothingConfig(0.5, n0=10, n=200, batch_size=200), 2,
                   torch.Generator().manual_seed(0))
    assert cert.n == 200


def _smoothed_record(model: str, sigma: float, points: str, per_point: list, attacked: list[int]) -> dict:
    """A certified.json record: per point [label, prediction, radius, count]; the attack's predictions at 0.25."""
    return {"dataset": "mnist", "model": model, "sigma": sigma, "n": len(per_point), "points_sha256": points,
            "per_point": per_point, "empirical": [{"radius": 0.25, "predictions": attacked}]}


def test_smoothing_pairs_compare_hybrid_and_cnn_point_by_point():
    """Certified at 0.25: the CNN on points 0-5, the hybrid on 0-3 and 6 (point 4 certified below the radius,
    point 5 abstained, point 7 wrong): difference (1 - 2) / 8; Newcombe's paired interval of the 2x2 table;
    a hybrid on other points, or of another sigma, is not paired."""
    from qshield_core.certify.views import smoothing_pairs
    from qshield_core.evaluation.metrics import paired_difference_interval

    cnn = _smoothed_record("classical", 0.25, "p", [[1, 1, 0.5, 900]] * 6 + [[1, 2, 0.9, 990], [1, 0, 0.3, 800]],
                           attacked=[1] * 8)
    hybrid_points = [[1, 1, 0.5, 900]] * 4 + [[1, 1, 0.1, 600], [1, -1, 0.0, 0], [1, 1, 0.3, 800], [1, 0, 0.3, 800]]
    hybrid = _smoothed_record("hybrid-full", 0.25, "p", hybrid_points, attacked=[1, 1, 1, 1, 0, 0, 0, 1])
    frame = smoothing_pairs([cnn, hybrid, dict(hybrid, points_sha256="q"), dict(hybrid, sigma=0.5)])
    assert len(frame) == 1
    row = frame.iloc[0]
    low, high = paired_difference_interval(4, 1, 2, 1)
    assert row["certified: hybrid - CNN, points [95 % CI]"] == (
        f"{-1 / 8 * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}] (within)")
    # attacked: the CNN keeps all 8, the hybrid 5 (points 4, 5 and 6 broken)
    low, high = paired_difference_interval(5, 0, 3, 0)
    assert row["attacked: hybrid - CNN, points [95 % CI]"] == f"-37.5 [{low * 100:+.1f}, {high * 100:+.1f}] " + (
        "(below)" if high < 0 else "(within)")
    assert row["n (same points)"] == 8 and row["hybrid"] == "hybrid-full"
