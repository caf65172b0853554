"""Adversarial training: every training batch replaced by adversarial examples of the current model.

Two inner maximisations of the min-max problem of Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep
Learning Models Resistant to Adversarial Attacks" (ICLR 2018):

- ``pgd``: PGD from a uniform random start in the eps-ball, ``steps`` signed-gradient steps of ``alpha``,
  each projected back onto the ball and the image range (Madry et al., section 3);
- ``fgsm-rs``: one such step of ``alpha = 1.25 eps`` from the uniform random start: "fast is better than free"
  (Wong, Rice and Kolter, ICLR 2020, Algorithm 3). It can overfit catastrophically (robustness against PGD
  collapses within an epoch while FGSM accuracy soars), so a model trained this way is judged by AutoAttack, and
  :func:`qshield_core.train.fit` records its PGD robust accuracy on test points after every epoch.

The examples are made with the model in evaluation mode (batch-norm statistics and dropout as at test time, as
TRADES does) and, for a hybrid, through the circuit (the ``differentiable`` mode: the true gradient; the paper
mode would hide the circuit from the attack and train against a weaker one). The random start comes from the
caller's :class:`torch.Generator`: no global random state, so a run is reproducible whatever else runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import rng
from .models import QShieldHybrid

METHODS = ("pgd", "fgsm-rs")
FGSM_RS_STEP = 1.25
"""Wong, Rice and Kolter's step for FGSM with a random start: alpha = 1.25 eps."""


@dataclass(frozen=True)
class AdversarialConfig:
    """How training batches are attacked: ``method`` (:data:`METHODS`), L-inf ``eps``, ``steps`` of ``alpha``."""

    method: str
    eps: float
    steps: int
    alpha: float

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown adversarial training method {self.method!r}; "
                             f"choose one of {', '.join(METHODS)}.")
        if not 0 < self.eps <= 1:
            raise ValueError(f"Adversarial training eps must lie in (0, 1] (got {self.eps}).")
        if self.steps < 1 or (self.method == "fgsm-rs" and self.steps != 1):
            raise ValueError(f"{self.method} takes {'one step' if self.method == 'fgsm-rs' else 'at least one step'} "
                             f"(got {self.steps}).")
        if not 0 < self.alpha <= 2 * self.eps:
            raise ValueError(f"The step alpha must lie in (0, 2 eps] (got {self.alpha} for eps {self.eps}).")

    @classmethod
    def preset(cls, method: str, eps: float, steps: int | None = None) -> AdversarialConfig:
        """FGSM-RS with Wong et al.'s step; PGD with Madry et al.'s budget of 2.5 eps spread over its steps
        (default 10)."""
        if method == "fgsm-rs":
            return cls(method, eps, 1, FGSM_RS_STEP * eps)
        steps = 10 if steps is None else steps
        return cls(method, eps, steps, 2.5 * eps / steps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdversarialConfig:
        return cls(str(data["method"]), float(data["eps"]), int(data["steps"]), float(data["alpha"]))

    def describe(self) -> str:
        what = "FGSM with a random start" if self.method == "fgsm-rs" else f"PGD-{self.steps}"
        return f"{what}, eps = {self.eps * 255:.3g}/255, step {self.alpha * 255:.3g}/255"


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode, and a hybrid's exact gradient through its circuit, while the block runs; then as before."""
    training = model.training
    hybrid = isinstance(model, QShieldHybrid)
    mode = model.grad_mode if hybrid else None
    model.eval()
    if hybrid:
        model.grad_mode = "differentiable"
    try:
        yield model
    finally:
        if hybrid:
            model.grad_mode = mode
        model.train(training)


def perturb(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AdversarialConfig,
            generator: torch.Generator | None) -> torch.Tensor:
    """Adversarial examples of ``images`` (in [0, 1]) for ``model`` within the L-inf ball of ``config.eps``,
    from a uniform random start drawn from ``generator`` (None: from the images themselves, plain FGSM/BIM).

    The model's outputs are logits or log-probabilities (cross-entropy on either); only the input's gradient is
    taken, so no parameter gradient accumulates.
    """
    eps, alpha = config.eps, config.alpha
    low, high = (images - eps).clamp_min(0), (images + eps).clamp_max(1)
    adv = images.clone()
    if generator is not None:
        start = torch.rand(images.shape, generator=generator, dtype=images.dtype).mul_(2 * eps).sub_(eps)
        adv = torch.max(torch.min(images + start, high), low)
    with attack_mode(model), torch.enable_grad():
        for _ in range(config.steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), labels)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = torch.max(torch.min(adv.detach() + alpha * grad.sign(), high), low)
    return adv.detach()


CHECK_POINTS = 500
CHECK_PGD_STEPS = 20


def robustness_check(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, seed: int) -> dict:
    """Robust accuracy under PGD-20 (step eps/4, random start) and under FGSM (no start) on a fixed seeded subset
    of :data:`CHECK_POINTS` test images (uint8 or [0, 1]): a quick check after every epoch, not an evaluation.
    Catastrophic overfitting shows as FGSM accuracy far above PGD's, PGD's near 0 (Wong et al. 2020, section 5)."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(labels), generator=generator)[:CHECK_POINTS]
    x = images[index]
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x
    y = labels[index]
    pgd = perturb(model, x, y, AdversarialConfig("pgd", eps, CHECK_PGD_STEPS, eps / 4), generator)
    fgsm = perturb(model, x, y, AdversarialConfig("pgd", eps, 1, eps), None)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            accuracy = {}
            for name, batch in (("clean", x), ("fgsm", fgsm), (f"pgd{CHECK_PGD_STEPS}", pgd)):
                with rng.seeded(seed):  # the paper mode's projection: the same draw for the three
                    accuracy[name] = round(float((model(batch).argmax(-1) == y).float().mean()), 4)
    finally:
        model.train(training)
    return {"n": len(y), "eps": eps, "accuracy": accuracy}
