"""Attacks: the registry on torchattacks 3.5.1, the paper's presets, the adaptive set, and our own attacks.

All attacks take inputs in [0, 1] and a model returning logits. Most come from torchattacks; this
package chooses their parameters, composes them (restarts, AutoAttack's ensemble) and adds, one
file per attack as torchattacks does, what torchattacks lacks:

- ``cw.py``: :class:`CarliniWagnerL2`, C&W-L2 as the paper ran it (ART's line search and binary
  search over ``c``; torchattacks' Adam-based ``CW`` is far weaker at the paper's settings);
- ``deepfool.py``: :class:`BatchedDeepFool`, torchattacks' DeepFool on a whole batch at once;
- ``bpda.py``: :class:`StraightThrough`, BPDA through the ``differentiable`` twin;
- ``smoothadv.py``: :class:`SmoothAdvPGD`, PGD-L2 on a smoothed classifier with EOT over its noise
  (Salman et al. 2019), the empirical side of :mod:`qshield_core.certify.smoothing`;
- ``autoattack.py``: :func:`autoattack_standard`, :func:`autoattack_rand` (Croce & Hein's
  compositions at the reference's budgets) and :func:`with_restarts`;
- ``registry.py``: :class:`AttackSpec`, the presets, the ``ATTACKS`` registry and the functions
  that look attacks up, validate eps and steps, resolve parameters and build attacks.

Two suites:

- the **paper suite** (``fgsm, pgd, apgd, vmifgsm, cw, deepfool, onepixel, square``), with the
  parameters of the paper's appendix "Adversarial Attack Parameters" (authors' repository,
  ``docs/Adversarial Attack Parameters.md``);
- the **adaptive suite**, what a reviewer of a robustness claim asks for: PGD-100 with restarts,
  APGD-CE/-DLR at 100 iterations, AutoAttack (standard; ``rand`` with EOT for the stochastic
  ``paper`` mode), EOT-PGD over the random projection, BPDA through the ``differentiable`` twin,
  transfer from the classical CNN, and Square with 5,000 queries.

Example::

    >>> params = attack_params("pgd", "mnist")          # the paper's preset
    >>> attack = build_attack("pgd", model, "mnist", eps=0.2)
    >>> adv = attack(images, labels)
"""

from .autoattack import autoattack_rand, autoattack_standard, with_restarts
from .bpda import StraightThrough
from .cw import CarliniWagnerL2
from .deepfool import BatchedDeepFool
from .registry import (
    ADAPTIVE_ATTACKS,
    ATTACKS,
    EPS_RANGE,
    MAX_STEPS,
    PAPER_ALPHA,
    PAPER_ATTACKS,
    SUITES,
    AttackSpec,
    Builder,
    attack_params,
    build_attack,
    build_from_params,
    expand_attacks,
    get_attack,
    resolve_params,
    validate_eps,
    validate_steps,
)
from .smoothadv import SmoothAdvPGD

__all__ = [
    "ADAPTIVE_ATTACKS",
    "ATTACKS",
    "EPS_RANGE",
    "MAX_STEPS",
    "PAPER_ALPHA",
    "PAPER_ATTACKS",
    "SUITES",
    "AttackSpec",
    "BatchedDeepFool",
    "Builder",
    "CarliniWagnerL2",
    "SmoothAdvPGD",
    "StraightThrough",
    "attack_params",
    "autoattack_rand",
    "autoattack_standard",
    "build_attack",
    "build_from_params",
    "expand_attacks",
    "get_attack",
    "resolve_params",
    "validate_eps",
    "validate_steps",
    "with_restarts",
]
