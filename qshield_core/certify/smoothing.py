"""Randomized smoothing: a certificate in pixel space for the whole model, classical or hybrid.

Cohen, Rosenfeld and Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019.
From a base classifier f, the smoothed classifier is

    g(x) = argmax_c P_{delta ~ N(0, sigma^2 I)} [ f(x + delta) = c ].

**Theorem 1** (Cohen et al.). If the top class c_A satisfies P[f(x + delta) = c_A] >= p_A > 1/2, then
g(x + e) = c_A for every ||e||_2 < R = sigma * Phi^-1(p_A) (Phi^-1 the standard normal quantile; the
paper's bound with p_B = 1 - p_A). The bound is tight for linear classifiers: for f(x) = sign(w.x + b),
g = f and R equals the distance |w.x + b| / ||w|| to the decision boundary.

**CERTIFY** (the paper's Algorithm, section 3.2) guesses c_A from n0 noisy copies, counts c_A among n
fresh ones, and replaces p_A by its one-sided (1 - alpha) Clopper-Pearson lower bound; it abstains when
that bound is below 1/2. With probability at least 1 - alpha over the noise, a returned (class, radius)
is correct about g. **PREDICT** returns g(x) from the top two counts of n copies when a two-sided binomial
test at level alpha says the top one is more likely; it abstains otherwise.

**Randomised base classifiers** (the hybrid's paper mode redraws its projection omega at every forward
call, once for the whole batch): the Clopper-Pearson bound needs independent, identically distributed
votes, and copies that share one call share one omega. So a randomised model's n copies (and its n0, and
a vote's) run in **one** call (:func:`require_one_call` refuses otherwise): given that call's omega the
votes are i.i.d., and the certificate is Cohen's, exact, for g_omega, the smoothed classifier of the base
model with that projection held fixed, drawn afresh for each point. It is not a certificate for the
deployed paper mode, which would draw another omega for the attacker's query; judging that model as a
randomised one (EOT, several draws) is the attacks' job. What is certified is g, never f: a certificate
says nothing about the base model an attacker faces without the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binomtest, norm
from torch import nn

from .. import rng

ABSTAIN = -1
"""The class returned when PREDICT or CERTIFY abstains."""


@dataclass(frozen=True)
class SmoothingConfig:
    """The parameters of CERTIFY and PREDICT (Cohen et al.'s notation)."""

    sigma: float
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    batch_size: int = 1000

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive (got {self.sigma}).")
        if self.n0 < 1 or self.n < 1:
            raise ValueError(f"n0 and n must be at least 1 (got {self.n0}, {self.n}).")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must lie in (0, 0.5) (got {self.alpha}).")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {self.batch_size}).")

    @property
    def max_radius(self) -> float:
        """The largest radius CERTIFY can return with this n: every one of n copies voting c_A."""
        return certified_radius(self.n, self.n, self.sigma, self.alpha)


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer at one point: the class (or :data:`ABSTAIN`), the radius and the counts behind it."""

    prediction: int
    radius: float
    count_top: int
    n: int
    p_lower: float

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """The one-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    return float(binomtest(int(successes), int(trials)).proportion_ci(confidence_level=1 - 2 * alpha,
                                                                        method="exact").low)


def certified_radius(count_top: int, n: int, sigma: float, alpha: float) -> float:
    """sigma * Phi^-1(p_A lower bound), or 0 where the bound does not exceed 1/2 (CERTIFY abstains)."""
    p_lower = lower_confidence_bound(count_top, n, alpha)
    return float(sigma * norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


@torch.no_grad()
def noise_counts(model: nn.Module, image: torch.Tensor, sigma: float, num: int, num_classes: int,
                 generator: torch.Generator, batch_size: int = 1000) -> np.ndarray:
    """How often the base classifier votes each class over ``num`` copies of ``image`` + N(0, sigma^2 I).

    The noise comes from ``generator``; the copies are not clipped to [0, 1] (the theorem smooths over all
    of R^d, and the base classifiers were trained on unclipped noise)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining = int(num)
    while remaining > 0:
        size = min(batch_size, remaining)
        noise = torch.randn((size, *image.shape), generator=generator, dtype=image.dtype)
        votes = model(image.unsqueeze(0) + sigma * noise).argmax(-1)
        counts += np.bincount(votes.numpy(), minlength=num_classes)
        remaining -= size
    return counts


def require_one_call(model: nn.Module, num: int, batch_size: int) -> None:
    """Refuse to split the copies of a randomised model over several calls (module docstring)."""
    if getattr(model, "randomised", False) and num > batch_size:
        raise ValueError(f"A randomised model's {num} copies must run in one call (one draw of its randomness), "
                         f"so that the votes are independent given it: set batch_size >= {num}.")


def certify(model: nn.Module, image: torch.Tensor, cfg: SmoothingConfig, num_classes: int,
            generator: torch.Generator) -> Certificate:
    """Cohen et al.'s CERTIFY: the smoothed prediction at ``image`` and a certified L2 radius (or abstain)."""
    require_one_call(model, max(cfg.n0, cfg.n), cfg.batch_size)
    guess = noise_counts(model, image, cfg.sigma, cfg.n0, num_classes, generator, cfg.batch_size)
    top = int(guess.argmax())
    counts = noise_counts(model, image, cfg.sigma, cfg.n, num_classes, generator, cfg.batch_size)
    p_lower = lower_confidence_bound(int(counts[top]), cfg.n, cfg.alpha)
    if p_lower <= 0.5:
        return Certificate(ABSTAIN, 0.0, int(counts[top]), cfg.n, p_lower)
    return Certificate(top, float(cfg.sigma * norm.ppf(p_lower)), int(counts[top]), cfg.n, p_lower)


def predict(model: nn.Module, image: torch.Tensor, cfg: SmoothingConfig, num_classes: int,
            generator: torch.Generator) -> int:
    """Cohen et al.'s PREDICT: g(image) from ``cfg.n`` copies, or :data:`ABSTAIN` when the top two counts
    do not differ at level ``cfg.alpha`` (two-sided binomial test)."""
    require_one_call(model, cfg.n, cfg.batch_size)
    counts = noise_counts(model, image, cfg.sigma, cfg.n, num_classes, generator, cfg.batch_size)
    first, second = np.argsort(counts)[::-1][:2]
    n_a, n_b = int(counts[first]), int(counts[second])
    if binomtest(n_a, n_a + n_b, 0.5).pvalue > cfg.alpha:
        return ABSTAIN
    return int(first)


def majority_vote(model: nn.Module, image: torch.Tensor, sigma: float, num: int, num_classes: int,
                  generator: torch.Generator, batch_size: int = 1000) -> tuple[int, float]:
    """The Monte Carlo estimate of g(image) without abstention: the most voted class and its vote share.

    Used to judge an attacked point: the question there is what g does, not whether n copies suffice to
    say so at level alpha (PREDICT would abstain near the boundary, where an attack puts its points)."""
    require_one_call(model, num, batch_size)
    counts = noise_counts(model, image, sigma, num, num_classes, generator, batch_size)
    top = int(counts.argmax())
    return top, float(counts[top] / max(num, 1))


def point_seed(seed: int, index: int) -> int:
    """The seed of test point ``index`` in a run seeded ``seed``: the same point gets the same noise in
    every run, whatever other points are certified with it."""
    return int(seed) * 1_000_003 + int(index) * 7919 + 17


def certify_points(model: nn.Module, images: torch.Tensor, indices: list[int], cfg: SmoothingConfig,
                   num_classes: int, seed: int = 0, progress=None) -> list[Certificate]:
    """CERTIFY at every image; point i draws its noise (and a randomised model its randomness) from seeds
    of :func:`point_seed` (seed, indices[i]), inside one :func:`qshield_core.rng.seeded` scope."""
    out = []
    for i, (image, index) in enumerate(zip(images, indices, strict=True)):
        s = point_seed(seed, index)
        with rng.seeded(s):
            out.append(certify(model, image, cfg, num_classes, torch.Generator().manual_seed(s)))
        if progress is not None:
            progress(i + 1, len(images))
    return out


def certified_accuracy(certificates: list[Certificate], labels: torch.Tensor | list[int],
                       radii: list[float]) -> list[float]:
    """Cohen et al.'s certified accuracy at each radius r: the share of points CERTIFY classifies correctly
    with a radius of at least r (a non-abstained answer always has a positive radius: r = 0 counts them all)."""
    labels = [int(y) for y in labels]
    correct = [c.prediction == y for c, y in zip(certificates, labels, strict=True)]
    return [sum(ok and c.radius >= r for ok, c in zip(correct, certificates, strict=True)) / max(len(certificates), 1)
            for r in radii]


__all__ = [
    "ABSTAIN",
    "Certificate",
    "SmoothingConfig",
    "certified_accuracy",
    "certified_radius",
    "certify",
    "certify_points",
    "lower_confidence_bound",
    "majority_vote",
    "noise_counts",
    "point_seed",
    "predict",
    "require_one_call",
]
