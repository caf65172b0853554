"""The attack registry: every attack by name, its preset per dataset, and how it is built.

Each :class:`AttackSpec` says what the attack is (threat model, access, reference), which suite
it belongs to, its parameters (``preset(dataset, eps) -> dict``) and how a torchattacks object is
built from them. :func:`attack_params` resolves a preset with overrides; the committed results
records are matched against exactly these dicts (``evaluation.is_current``), so a preset change
makes the records it touches stale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torchattacks
from torch import nn
from torchattacks.attack import Attack

from ..data import get_spec
from ..models import is_hybrid_name
from .autoattack import autoattack_rand, autoattack_standard, with_restarts
from .bpda import StraightThrough
from .cw import CarliniWagnerL2
from .deepfool import BatchedDeepFool

EPS_RANGE: dict[str, tuple[float, float]] = {
    "mnist": (0.0, 0.4),
    "organamnist": (0.0, 32 / 255),
    "cifar10": (0.0, 32 / 255),
}
"""The L-inf epsilon range offered per dataset (fractions of the [0, 1] pixel range)."""

MAX_STEPS = 100_000
PAPER_ALPHA = 2 / 255

Builder = Callable[[nn.Module, dict, int, nn.Module | None], Attack]


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the registry: what it is, whom it needs, and how to build it."""

    name: str
    display_name: str
    threat: str
    """Distance measure: ``"Linf"``, ``"L2"`` (minimal-norm attacks, no bound) or ``"L0"``."""
    access: str
    """What the attacker uses, e.g. ``"white-box gradient"`` or ``"score-based queries"``."""
    uses_eps: bool
    uses_steps: bool
    reference: str
    description: str
    suite: str
    """``"paper"`` or ``"adaptive"``."""
    preset: Callable[[str, float], dict] = field(repr=False, compare=False)
    """``(dataset, eps) -> parameters`` (eps is the paper's unless overridden)."""
    build: Builder = field(repr=False, compare=False)
    steps_param: str | None = None
    """Which parameter ``steps`` overrides (e.g. ``n_queries`` for Square)."""
    surrogate: str | None = None
    """``"classical"`` or ``"differentiable-twin"`` when the gradient is taken on another model."""
    stochastic_only: bool = False
    """True for attacks built for a randomised model (EOT); redundant on a deterministic one."""
    paper_column: str | None = None
    """The attack's name in the paper's tables."""

    def applies_to(self, model_name: str, grad_mode: str | None, randomised: bool = False) -> bool:
        """Whether the attack is meaningful for this model (used when a suite is expanded).

        Transfer, BPDA and the EOT attacks are for hybrids only: the baselines (the classical CNN and the DNN)
        are deterministic and differentiable, with no twin, and the CNN is the transfer source. The EOT
        attacks also apply to a hybrid that is ``randomised`` in every mode (a circuit with finite shots)."""
        hybrid = is_hybrid_name(model_name)
        if self.stochastic_only:
            return hybrid and (grad_mode == "paper" or randomised)
        if self.surrogate == "differentiable-twin":
            return hybrid and grad_mode == "paper"
        if self.surrogate == "classical":
            return hybrid
        return True


# --------------------------------------------------------------------------- builders
# Each builder is ``(model, params, n_classes, surrogate) -> Attack``.


def _pgd(model: nn.Module, p: dict) -> Attack:
    return with_restarts(lambda: torchattacks.PGD(model, eps=p["eps"], alpha=p["alpha"], steps=p["steps"],
                                                  random_start=p["random_start"]), p.get("n_restarts", 1))


def _apgd(model: nn.Module, p: dict) -> Attack:
    return torchattacks.APGD(model, norm="Linf", eps=p["eps"], steps=p["steps"], n_restarts=p["n_restarts"],
                             loss=p["loss"], eot_iter=p["eot_iter"], rho=p["rho"], seed=p["seed"])


def _square(model: nn.Module, p: dict) -> Attack:
    return torchattacks.Square(model, norm="Linf", eps=p["eps"], n_queries=p["n_queries"],
                               n_restarts=p["n_restarts"], p_init=p["p_init"], loss=p["loss"],
                               resc_schedule=p["resc_schedule"], seed=p["seed"])


def _need(surrogate: nn.Module | None, name: str, what: str) -> nn.Module:
    if surrogate is None:
        raise ValueError(f"Attack {name!r} takes its gradient on {what}: pass it as surrogate=...")
    return surrogate


def _build_fgsm(model, p, n_classes, surrogate):
    return torchattacks.FGSM(model, eps=p["eps"])


def _build_pgd(model, p, n_classes, surrogate):
    return _pgd(model, p)


def _build_apgd(model, p, n_classes, surrogate):
    return _apgd(model, p)


def _build_vmifgsm(model, p, n_classes, surrogate):
    return torchattacks.VMIFGSM(model, eps=p["eps"], alpha=p["alpha"], steps=p["steps"], decay=p["decay"],
                                N=p["N"], beta=p["beta"])


def _build_cw(model, p, n_classes, surrogate):
    return CarliniWagnerL2(model, confidence=p["confidence"], learning_rate=p["learning_rate"],
                           binary_search_steps=p["binary_search_steps"], max_iter=p["max_iter"],
                           initial_const=p["initial_const"], max_halving=p["max_halving"],
                           max_doubling=p["max_doubling"])


def _build_deepfool(model, p, n_classes, surrogate):
    return BatchedDeepFool(model, steps=p["steps"], overshoot=p["overshoot"])


def _build_onepixel(model, p, n_classes, surrogate):
    return torchattacks.OnePixel(model, pixels=p["pixels"], steps=p["steps"], popsize=p["popsize"],
                                 inf_batch=p["inf_batch"])


def _build_square(model, p, n_classes, surrogate):
    return _square(model, p)


def _build_eotpgd(model, p, n_classes, surrogate):
    return torchattacks.EOTPGD(model, eps=p["eps"], alpha=p["alpha"], steps=p["steps"], eot_iter=p["eot_iter"],
                               random_start=p["random_start"])


def _build_autoattack(model, p, n_classes, surrogate):
    return autoattack_standard(model, p["eps"], n_classes, p["seed"], p["steps"], p["n_queries"])


def _build_autoattack_rand(model, p, n_classes, surrogate):
    return autoattack_rand(model, p["eps"], p["seed"], p["steps"], p["eot_iter"])


def _build_bpda(model, p, n_classes, surrogate):
    twin = _need(surrogate, "bpda", "the hybrid's differentiable twin (same weights, grad_mode='differentiable')")
    return _pgd(StraightThrough(model, twin), p)


def _build_transfer(model, p, n_classes, surrogate):
    return _pgd(_need(surrogate, "transfer-classical", "the classical CNN"), p)


# --------------------------------------------------------------------------- presets
# Each preset is ``(dataset, eps) -> params``; eps is the dataset's paper eps unless overridden.


def _cw_preset(dataset: str, eps: float) -> dict:
    # ART CarliniL2Method as the paper ran it; binary search 10 steps on MNIST, 8 on the others.
    return dict(confidence=0.0, learning_rate=0.05, binary_search_steps=10 if dataset == "mnist" else 8, max_iter=5,
                initial_const=0.01, max_halving=5, max_doubling=5)


def _pgd_preset(eps: float, steps: int, restarts: int) -> dict:
    return dict(eps=eps, alpha=eps / 4, steps=steps, random_start=True, n_restarts=restarts)


def _apgd_preset(eps: float, steps: int, loss: str) -> dict:
    return dict(eps=eps, steps=steps, n_restarts=1, loss=loss, eot_iter=1, rho=0.75, seed=0)


def _square_preset(eps: float, queries: int) -> dict:
    return dict(eps=eps, n_queries=queries, n_restarts=1, p_init=0.8, loss="margin", resc_schedule=True, seed=0)


_CROCE = "Croce & Hein 2020, arXiv 2003.01690"
_ATHALYE = "Athalye, Carlini & Wagner 2018, arXiv 1802.00420"
_MADRY = "Madry et al. 2018, arXiv 1706.06083"
_SQUARE = "Andriushchenko et al. 2020, arXiv 1912.00049"

# --------------------------------------------------------------------------- the paper suite
# The parameters of the paper's appendix "Adversarial Attack Parameters" (authors' repository,
# docs/Adversarial Attack Parameters.md).

_PAPER = [
    AttackSpec(
        name="fgsm", display_name="FGSM", threat="Linf", access="white-box gradient",
        uses_eps=True, uses_steps=False, suite="paper", paper_column="FGSM",
        reference="Goodfellow et al. 2015, arXiv 1412.6572",
        description="One signed-gradient step of size eps.",
        preset=lambda d, eps: dict(eps=eps), build=_build_fgsm,
    ),
    AttackSpec(
        name="pgd", display_name="PGD", threat="Linf", access="white-box gradient",
        uses_eps=True, uses_steps=True, steps_param="steps", suite="paper", paper_column="PGD",
        reference=_MADRY,
        description="10 signed-gradient steps of 2/255 from a random start, projected on the eps-ball (paper preset; "
                    "the step stays 2/255 whatever eps, so it reaches at most steps x 2/255).",
        preset=lambda d, eps: dict(eps=eps, alpha=PAPER_ALPHA, steps=10, random_start=True), build=_build_pgd,
    ),
    AttackSpec(
        name="apgd", display_name="APGD", threat="Linf", access="white-box gradient",
        uses_eps=True, uses_steps=True, steps_param="steps", suite="paper", paper_column="APGD",
        reference=_CROCE,
        description="Auto-PGD with cross-entropy, 10 steps, 1 restart (paper preset).",
        preset=lambda d, eps: _apgd_preset(eps, 10, "ce"), build=_build_apgd,
    ),
    AttackSpec(
        name="vmifgsm", display_name="VMI-FGSM", threat="Linf", access="white-box gradient",
        uses_eps=True, uses_steps=True, steps_param="steps", suite="paper", paper_column="VMIFGSM",
        reference="Wang & He 2021, arXiv 2103.15571",
        description="Momentum iterative FGSM with variance tuning: 10 steps of 2/255, decay 1.0, N 5, beta 1.5.",
        preset=lambda d, eps: dict(eps=eps, alpha=PAPER_ALPHA, steps=10, decay=1.0, N=5, beta=1.5),
        build=_build_vmifgsm,
    ),
    AttackSpec(
        name="cw", display_name="C&W-L2", threat="L2", access="white-box gradient",
        uses_eps=False, uses_steps=True, steps_param="max_iter", suite="paper", paper_column="C&W",
        reference="Carlini & Wagner 2017, arXiv 1608.04644",
        description="Minimal-L2 attack (no eps bound), as ART runs it for the paper: 5 gradient steps with a line "
                    "search (from lr 0.05, halving/doubling up to 5 times) per value of c, binary search over c (10 "
                    "values on MNIST, 8 otherwise) from c = 0.01.",
        preset=_cw_preset, build=_build_cw,
    ),
    AttackSpec(
        name="deepfool", display_name="DeepFool", threat="L2", access="white-box gradient (full Jacobian)",
        uses_eps=False, uses_steps=True, steps_param="steps", suite="paper", paper_column="DeepFool",
        reference="Moosavi-Dezfooli et al. 2016, arXiv 1511.04599",
        description="Minimal-L2 attack (no eps bound): up to 50 linearisation steps, overshoot 0.05.",
        preset=lambda d, eps: dict(steps=50, overshoot=0.05), build=_build_deepfool,
    ),
    AttackSpec(
        name="onepixel", display_name="One-Pixel", threat="L0", access="score-based queries",
        uses_eps=False, uses_steps=True, steps_param="steps", suite="paper", paper_column="OnePixel",
        reference="Su, Vargas & Sakurai 2019, arXiv 1710.08864",
        description="Differential evolution over one pixel's position and value: 10 generations, population 10.",
        preset=lambda d, eps: dict(pixels=1, steps=10, popsize=10, inf_batch=128), build=_build_onepixel,
    ),
    AttackSpec(
        name="square", display_name="Square", threat="Linf", access="score-based queries",
        uses_eps=True, uses_steps=True, steps_param="n_queries", suite="paper", paper_column="Square",
        reference=_SQUARE,
        description="Random square-shaped updates accepted when the margin drops: 500 queries, p_init 0.8.",
        preset=lambda d, eps: _square_preset(eps, 500), build=_build_square,
    ),
]

# --------------------------------------------------------------------------- the adaptive suite
# What a reviewer of a robustness claim asks for (Carlini et al. 2019, arXiv 1902.06705; Tramer et al.
# 2020, arXiv 2002.08347): strong white-box attacks, EOT and BPDA against the stochastic, gradient-cut
# paper mode, transfer, and a query attack that needs no gradient.

_ADAPTIVE = [
    AttackSpec(
        name="pgd100", display_name="PGD-100 (5 restarts)", threat="Linf", access="white-box gradient",
        uses_eps=True, uses_steps=True, steps_param="steps", suite="adaptive",
        reference=_MADRY,
        description="100 steps of eps/4 from a random start; 5 restarts on the points still not fooled.",
        preset=lambda d, eps: _pgd_preset(eps, 100, 5), build=_build_pgd,
    ),
    AttackSpec(
        name="apgd-ce", display_name="APGD-CE", threat="Linf", access="white-box gradient",
        uses_eps=True, uses_steps=True, steps_param="steps", suite="adaptive",
        reference=_CROCE,
        description="Auto-PGD with cross-entropy, 100 iterations.",
        preset=lambda d, eps: _apgd_preset(eps, 100, "ce"), build=_build_apgd,
    ),
    AttackSpec(
        name="apgd-dlr", display_name="APGD-DLR", threat="Linf", access="white-box gradient",
        uses_eps=True, uses_steps=True, steps_param="steps", suite="adaptive",
        reference=_CROCE,
        description="Auto-PGD with the scale-invariant difference-of-logits-ratio loss, 100 iterations.",
        preset=lambda d, eps: _apgd_preset(eps, 100, "dlr"), build=_build_apgd,
    ),
    AttackSpec(
        name="autoattack", display_name="AutoAttack", threat="Linf",
        access="white-box gradient + score-based queries",
        uses_eps=True, uses_steps=True, steps_param="steps", suite="adaptive",
        reference=_CROCE,
        description="Standard AutoAttack: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), each 100 iterations, then "
                    "Square with 5,000 queries; each attack runs on the points the previous ones left.",
        preset=lambda d, eps: dict(eps=eps, steps=100, n_queries=5000, seed=0), build=_build_autoattack,
    ),
    AttackSpec(
        name="autoattack-rand", display_name="AutoAttack (rand, EOT-20)", threat="Linf",
        access="white-box gradient, EOT",
        uses_eps=True, uses_steps=True, steps_param="steps", suite="adaptive", stochastic_only=True,
        reference=_CROCE,
        description="AutoAttack for randomised defences: APGD-CE then APGD-DLR, 100 iterations, each gradient "
                    "averaged over 20 random draws (EOT).",
        preset=lambda d, eps: dict(eps=eps, steps=100, eot_iter=20, seed=0), build=_build_autoattack_rand,
    ),
    AttackSpec(
        name="eot-pgd", display_name="EOT-PGD", threat="Linf", access="white-box gradient, EOT",
        uses_eps=True, uses_steps=True, steps_param="steps", suite="adaptive", stochastic_only=True,
        reference=_ATHALYE,
        description="PGD whose every gradient is the mean over 10 forward passes, i.e. over 10 draws of the random "
                    "projection: 50 steps of eps/4.",
        preset=lambda d, eps: dict(eps=eps, alpha=eps / 4, steps=50, eot_iter=10, random_start=True),
        build=_build_eotpgd,
    ),
    AttackSpec(
        name="bpda", display_name="BPDA via differentiable twin", threat="Linf",
        access="white-box via differentiable twin (BPDA)",
        uses_eps=True, uses_steps=True, steps_param="steps", suite="adaptive", surrogate="differentiable-twin",
        reference=_ATHALYE,
        description="PGD-100 (eps/4) on the paper-mode model's outputs with the gradient of its differentiable twin "
                    "(same weights, fixed projection, gradient through the circuit); evaluated on the paper-mode "
                    "model.",
        preset=lambda d, eps: _pgd_preset(eps, 100, 1), build=_build_bpda,
    ),
    AttackSpec(
        name="transfer-classical", display_name="Transfer from classical CNN", threat="Linf", access="transfer",
        uses_eps=True, uses_steps=True, steps_param="steps", suite="adaptive", surrogate="classical",
        reference="Papernot et al. 2016, arXiv 1605.07277",
        description="PGD-100 (eps/4) on the shipped classical CNN alone; its examples are then shown to the hybrid, "
                    "which is never queried.",
        preset=lambda d, eps: _pgd_preset(eps, 100, 1), build=_build_transfer,
    ),
    AttackSpec(
        name="square5000", display_name="Square-5000", threat="Linf", access="score-based queries",
        uses_eps=True, uses_steps=True, steps_param="n_queries", suite="adaptive",
        reference=_SQUARE,
        description="Square attack with 5,000 queries (AutoAttack's setting): no gradient, so gradient masking "
                    "cannot stop it.",
        preset=lambda d, eps: _square_preset(eps, 5000), build=_build_square,
    ),
]

_SPECS = _PAPER + _ADAPTIVE
ATTACKS: dict[str, AttackSpec] = {spec.name: spec for spec in _SPECS}
SUITES: dict[str, tuple[str, ...]] = {
    "paper-suite": tuple(s.name for s in _SPECS if s.suite == "paper"),
    "adaptive-suite": tuple(s.name for s in _SPECS if s.suite == "adaptive"),
}
PAPER_ATTACKS = SUITES["paper-suite"]
ADAPTIVE_ATTACKS = SUITES["adaptive-suite"]


# --------------------------------------------------------------------------- look-up, validation, building


def get_attack(name: str) -> AttackSpec:
    """The spec of ``name``; ValueError listing the valid names otherwise."""
    key = name.strip().lower()
    if key not in ATTACKS:
        raise ValueError(f"Unknown attack {name!r}. Choose one of: {', '.join(ATTACKS)} "
                         f"(or a suite: {', '.join(SUITES)}).")
    return ATTACKS[key]


def expand_attacks(names: list[str] | tuple[str, ...]) -> list[str]:
    """Attack names with suites expanded, in order and without repeats; ``none`` is kept."""
    out: list[str] = []
    for name in names:
        key = name.strip().lower()
        items = SUITES.get(key) or (("none",) if key == "none" else (get_attack(key).name,))
        out.extend(item for item in items if item not in out)
    return out


def validate_eps(eps: float, dataset: str) -> float:
    """Return ``eps`` as a float, or raise ValueError when it is outside ``EPS_RANGE[dataset]``."""
    spec = get_spec(dataset)
    low, high = EPS_RANGE[spec.name]
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"Epsilon must be a number, got {eps!r}.") from None
    if not low <= value <= high:
        raise ValueError(f"Epsilon {value:.4g} ({value * 255:.1f}/255) is out of range for {spec.display_name}: "
                         f"choose a value in [{low:g}, {high:.4g}] ({high * 255:.0f}/255) on the [0, 1] pixel scale.")
    return value


def validate_steps(steps: int) -> int:
    """Return ``steps`` as an int, or raise ValueError unless it is an integer in [1, MAX_STEPS]."""
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= int(steps) <= MAX_STEPS:
        raise ValueError(f"Steps must be an integer in [1, {MAX_STEPS}], got {steps!r}.")
    return int(steps)


def attack_params(name: str, dataset: str, eps: float | None = None, steps: int | None = None,
                  **overrides) -> dict:
    """The preset of ``name`` for ``dataset`` with overrides, validated.

    ``eps`` defaults to the paper's epsilon for the dataset; attacks without an eps bound (C&W,
    DeepFool, One-Pixel) ignore it after checking its range. Step sizes defined relative to eps
    (``alpha = eps/4`` in the adaptive presets) follow an overridden eps; the paper presets keep
    their fixed 2/255. ``steps`` sets the attack's iteration count (queries for Square). Any other
    keyword overrides a parameter of the preset by name.
    """
    spec = get_attack(name)
    dspec = get_spec(dataset)
    value = dspec.paper_eps if eps is None else validate_eps(eps, dspec.name)
    params = spec.preset(dspec.name, value)
    if steps is not None:
        if spec.steps_param is None:
            raise ValueError(f"Attack {spec.name!r} has no steps parameter.")
        params[spec.steps_param] = validate_steps(steps)
    for key, val in overrides.items():
        if key not in params:
            raise ValueError(f"Attack {spec.name!r} has no parameter {key!r} (it has: {', '.join(params)}).")
        params[key] = val
    return params


def resolve_params(name: str, dataset: str, eps: float | None = None, steps: int | None = None, seed: int = 0,
                   **overrides) -> dict:
    """:func:`attack_params` with ``seed`` filled in for the attacks that take one."""
    params = attack_params(name, dataset, eps, steps, **overrides)
    if "seed" in params and "seed" not in overrides:
        params["seed"] = int(seed)
    return params


def build_from_params(name: str, model: nn.Module, dataset: str, params: dict,
                      surrogate: nn.Module | None = None) -> Attack:
    """Build ``name`` from an already resolved parameter dict (see :func:`attack_params`)."""
    spec = get_attack(name)
    return spec.build(model, params, get_spec(dataset).num_classes, surrogate)


def build_attack(name: str, model: nn.Module, dataset: str, eps: float | None = None, steps: int | None = None,
                 surrogate: nn.Module | None = None, seed: int = 0, **overrides) -> Attack:
    """A ready attack: ``attack(images, labels) -> adv_images`` (images in [0, 1]).

    ``model`` is the model under attack. Transfer and BPDA attacks take their gradient on
    ``surrogate`` (the classical CNN, or the hybrid's differentiable twin) and raise ValueError
    without it. ``seed`` seeds the attacks that take one (APGD, Square, AutoAttack); the caller
    seeds torch's global generator for the others (see :func:`qshield_core.evaluation.run_attack`).
    """
    params = resolve_params(name, dataset, eps, steps, seed, **overrides)
    return build_from_params(name, model, dataset, params, surrogate)
