"""BPDA: a model wrapper with the target's output values and a surrogate's gradient."""

from __future__ import annotations

import torch
from torch import nn


class StraightThrough(nn.Module):
    r"""
    BPDA (Backward Pass Differentiable Approximation) in the paper 'Obfuscated Gradients Give a
    False Sense of Security: Circumventing Defenses to Adversarial Examples'
    [https://arxiv.org/abs/1802.00420]

    Distance Measure : none of its own (a model wrapper: the attack run on it sets the norm)

    ``forward(x) = t(x) + (s(x) - s(x).detach())``: the values are exactly the real model ``t``'s
    (here the stochastic ``paper`` hybrid, whose quantum branch has no gradient), the gradient is
    exactly the surrogate ``s``'s (the same weights in ``differentiable`` mode), because the added
    term is zero in value and the identity in the backward pass. The target runs without autograd,
    so it never sees a backward pass. (Writing it ``s(x) + (t(x) - s(x)).detach()`` instead rounds:
    ``s + (t - s)`` differs from ``t`` in the last bit for some entries.)

    Arguments:
        target (nn.Module): the model whose outputs the loss is computed on (logits out).
        surrogate (nn.Module): the differentiable model whose input gradient is used (logits out).

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - output: :math:`(N, K)` logits, ``K`` = number of classes (the target's values).

    Examples::
        >>> attack = torchattacks.PGD(StraightThrough(paper_model, differentiable_twin), eps=0.1, alpha=0.025)
        >>> adv_images = attack(images, labels)
    """

    def __init__(self, target: nn.Module, surrogate: nn.Module) -> None:
        super().__init__()
        self.target = target
        self.surrogate = surrogate
        self.training = target.training  # torchattacks restores this mode on the models after an attack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            value = self.target(x)
        approx = self.surrogate(x)
        return value + (approx - approx.detach())
