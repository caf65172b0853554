"""DeepFool on a whole batch at once (torchattacks' algorithm, step for step)."""

from __future__ import annotations

import torch
import torchattacks


class BatchedDeepFool(torchattacks.DeepFool):
    r"""
    DeepFool in the paper 'DeepFool: a simple and accurate method to fool deep neural networks',
    torchattacks' algorithm run on the whole batch at once
    [https://arxiv.org/abs/1511.04599]

    Distance Measure : L2 (minimal-norm; no eps bound)

    ``torchattacks.DeepFool`` walks the batch one image at a time (a forward pass and one backward
    pass per class for each image and step), which makes it the slowest attack of the paper's
    suite by far on a CPU. This runs the same update on every image still classified correctly in
    one forward pass and one backward pass per class: each image's Jacobian row is the gradient of
    the batch sum of that class's logit, because images do not interact in an evaluation-mode
    model. As in torchattacks, an image stops at the first step where it is misclassified, every
    other step moves it by ``(1 + overshoot)`` times the linearised distance to the nearest
    decision boundary, and at most ``steps`` steps are taken. ``tests/test_attacks.py`` checks it
    image by image against ``torchattacks.DeepFool``, passes counted.

    Arguments:
        model (nn.Module): model to attack (logits out).
        steps (int): at most this many linearisation steps. (Default: 50)
        overshoot (float): each step is ``1 + overshoot`` times the distance to the boundary. (Default: 0.02;
            the paper's preset uses 0.05)

    Shape:
        - images: :math:`(N, C, H, W)` in [0, 1].
        - labels: :math:`(N)`, each in ``[0, number of classes)``.
        - output: :math:`(N, C, H, W)`.

    Examples::
        >>> attack = BatchedDeepFool(model, steps=50, overshoot=0.05)
        >>> adv_images = attack(images, labels)
    """

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adv = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        active = torch.ones(len(adv), dtype=torch.bool, device=adv.device)
        for _ in range(self.steps):
            rows = active.nonzero().squeeze(1)
            if len(rows) == 0:
                break
            moved, fooled = self._step(adv[rows], labels[rows])
            adv[rows[~fooled]] = moved[~fooled]
            active[rows[fooled]] = False
        return adv

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One DeepFool step for each image; returns the moved images and which were already fooled."""
        x = images.clone().requires_grad_(True)
        logits = self.get_logits(x)
        fooled = logits.argmax(1) != labels
        n_classes = logits.shape[1]
        keep = (~fooled).to(logits.dtype)[:, None]  # fooled images stop here: no gradient taken for them
        jacobian = torch.stack([torch.autograd.grad((logits[:, k:k + 1] * keep).sum(), x,
                                                    retain_graph=k + 1 < n_classes)[0]
                                for k in range(n_classes)], dim=1)  # (B, C, *image)
        rows = torch.arange(len(x), device=x.device)
        f_prime = (logits - logits[rows, labels][:, None]).detach()
        w_prime = jacobian - jacobian[rows, labels][:, None]
        w_norm = w_prime.flatten(2).norm(dim=2)
        distance = f_prime.abs() / w_norm
        distance[rows, labels] = float("inf")
        nearest = distance.argmin(1)
        scale = f_prime[rows, nearest].abs() / w_norm[rows, nearest] ** 2
        delta = scale.view(-1, *[1] * (x.dim() - 1)) * w_prime[rows, nearest]
        moved = torch.clamp(images + (1 + self.overshoot) * delta, min=0, max=1).detach()
        return moved, fooled
