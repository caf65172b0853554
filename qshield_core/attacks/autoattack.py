"""AutoAttack's compositions (standard, rand) from torchattacks' parts, and restarts."""

from __future__ import annotations

from collections.abc import Callable

import torchattacks
from torch import nn
from torchattacks.attack import Attack


def with_restarts(make: Callable[[], Attack], restarts: int) -> Attack:
    """``restarts`` independent runs; each later run attacks only the points still not fooled.

    Arguments:
        make (callable): returns a fresh attack (e.g. ``lambda: torchattacks.PGD(model, ...)``).
        restarts (int): number of runs; 1 or less returns ``make()`` itself.

    Examples::
        >>> attack = with_restarts(lambda: torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=100), 5)
        >>> adv_images = attack(images, labels)
    """
    if restarts <= 1:
        return make()
    return torchattacks.MultiAttack([make() for _ in range(restarts)])


def autoattack_standard(model: nn.Module, eps: float, n_classes: int, seed: int, steps: int = 100,
                        n_queries: int = 5000) -> Attack:
    r"""
    AutoAttack ``standard`` in the paper 'Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks' (Croce & Hein 2020)
    [https://arxiv.org/abs/2003.01690] [https://github.com/fra31/auto-attack]

    Distance Measure : Linf

    APGD-CE, APGD-T, FAB-T (multi-targeted) and Square, in that order, each run on the points the
    previous ones left unbroken (``torchattacks.MultiAttack``). torchattacks' own ``AutoAttack``
    runs APGD, APGD-T and FAB at their 10-step defaults; the reference uses 100 iterations, 9
    target classes (``min(C, 10) - 1``) and 5,000 Square queries, which this composition restores.

    Arguments:
        model (nn.Module): model to attack (logits out).
        eps (float): L-inf bound, on the [0, 1] pixel scale.
        n_classes (int): C, the number of classes; the targeted attacks try ``min(C, 10) - 1`` targets.
        seed (int): seed of every part.
        steps (int): iterations of APGD-CE, APGD-T and FAB-T. (Default: 100)
        n_queries (int): Square's query budget. (Default: 5000)

    Shape:
        - images: :math:`(N, C, H, W)` in [0, 1]; labels: :math:`(N)`; output: :math:`(N, C, H, W)`.

    Examples::
        >>> attack = autoattack_standard(model, eps=8 / 255, n_classes=10, seed=0)
        >>> adv_images = attack(images, labels)
    """
    targets = min(n_classes, 10)  # n_target_classes = targets - 1 = 9, as the reference
    return torchattacks.MultiAttack([
        torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed),
        torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, n_classes=targets, seed=seed),
        torchattacks.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, multi_targeted=True,
                         n_classes=targets, seed=seed),
        torchattacks.Square(model, norm="Linf", eps=eps, n_queries=n_queries, n_restarts=1, p_init=0.8,
                            loss="margin", seed=seed),
    ])


def autoattack_rand(model: nn.Module, eps: float, seed: int, steps: int = 100, eot_iter: int = 20) -> Attack:
    r"""
    AutoAttack ``rand``, for randomised defences, in the paper 'Reliable evaluation of adversarial
    robustness with an ensemble of diverse parameter-free attacks' (Croce & Hein 2020)
    [https://arxiv.org/abs/2003.01690] [https://github.com/fra31/auto-attack]

    Distance Measure : Linf

    APGD-CE then APGD-DLR (the second on the points the first left), each gradient averaged over
    ``eot_iter`` forward passes (expectation over transformation, Athalye et al. 2018).

    Arguments:
        model (nn.Module): model to attack (logits out; may be stochastic).
        eps (float): L-inf bound, on the [0, 1] pixel scale.
        seed (int): seed of both parts.
        steps (int): iterations of each APGD. (Default: 100)
        eot_iter (int): forward passes averaged per gradient. (Default: 20)

    Shape:
        - images: :math:`(N, C, H, W)` in [0, 1]; labels: :math:`(N)`; output: :math:`(N, C, H, W)`.

    Examples::
        >>> attack = autoattack_rand(paper_model, eps=0.1, seed=0)
        >>> adv_images = attack(images, labels)
    """
    return torchattacks.MultiAttack([
        torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss=loss, eot_iter=eot_iter,
                          seed=seed)
        for loss in ("ce", "dlr")
    ])
