"""SmoothAdv: PGD-L2 on a smoothed classifier, with an expectation over the smoothing noise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchattacks.attack import Attack


class SmoothAdvPGD(Attack):
    r"""
    SmoothAdv (PGD) in the paper 'Provably Robust Deep Learning via Adversarially Trained Smoothed
    Classifiers' (Salman et al., NeurIPS 2019) [https://arxiv.org/abs/1906.04584]

    Distance Measure : L2

    The attacked classifier is the smoothed soft classifier G(x) = E_delta[softmax(f(x + delta))],
    delta ~ N(0, sigma^2 I). Each of ``steps`` steps estimates the gradient of -log G(x')_y from
    ``samples`` fresh noise draws (an expectation over transformation, EOT, over the noise; Salman et
    al.'s eq. 5), moves by ``step_size`` along the normalised gradient, projects onto the L2 ball of
    radius ``eps`` around the clean image and clips to [0, 1]. The noise comes from ``generator``, never
    from torch's global generator.

    Arguments:
        model (nn.Module): the base classifier f (logits or log-probabilities out).
        eps (float): L2 radius. sigma (float): the smoothing noise.
        steps (int): PGD steps. (Default: 20)
        samples (int): noise draws per step. (Default: 4)
        step_size (float): L2 length of one step. (Default: 2.5 * eps / steps, Madry et al.'s choice)
        generator (torch.Generator): the noise generator. (Default: a fresh one seeded 0)

    Shape:
        - images: :math:`(N, C, H, W)` in [0, 1].
        - labels: :math:`(N)`.
        - output: :math:`(N, C, H, W)`, every image within L2 distance ``eps`` of its clean one.

    Examples::
        >>> attack = SmoothAdvPGD(model, eps=0.5, sigma=0.25, steps=20, samples=4)
        >>> adv_images = attack(images, labels)
    """

    def __init__(self, model: nn.Module, eps: float, sigma: float, steps: int = 20, samples: int = 4,
                 step_size: float | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__("SmoothAdvPGD", model)
        if eps < 0 or sigma <= 0 or steps < 1 or samples < 1:
            raise ValueError("SmoothAdvPGD needs eps >= 0, sigma > 0, steps >= 1 and samples >= 1.")
        self.eps = float(eps)
        self.sigma = float(sigma)
        self.steps = int(steps)
        self.samples = int(samples)
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / self.steps
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.supported_mode = ["default"]

    def _smoothed_loss(self, adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """-log of the Monte Carlo estimate of G(adv)_y, summed over the batch."""
        n = adv.shape[0]
        noise = torch.randn((self.samples, *adv.shape), generator=self.generator, dtype=adv.dtype)
        noisy = (adv.unsqueeze(0) + self.sigma * noise).reshape(-1, *adv.shape[1:])
        probs = F.softmax(self.get_logits(noisy), dim=-1).reshape(self.samples, n, -1).mean(0)
        return -torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-12)).sum()

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.clone().detach().to(self.device)
        y = labels.clone().detach().to(self.device)
        if self.eps == 0:
            return x
        shape = (-1,) + (1,) * (x.dim() - 1)
        adv = x.clone()
        for _ in range(self.steps):
            adv.requires_grad_(True)
            grad, = torch.autograd.grad(self._smoothed_loss(adv, y), adv)
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            adv = adv.detach() + self.step_size * grad / norm
            delta = adv - x
            scale = (self.eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(shape)
            adv = (x + delta * scale).clamp(0, 1).detach()
        return adv
