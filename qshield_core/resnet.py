"""The paper's CNN: torchvision's ResNet-18 as the authors' code builds it, trained from scratch here.

What their code does (n-azimi/QShield, ``Jupyter Notebook.ipynb``, "The CNN and DNN Models", classes
CNN-MNIST, CNN-OrganAMNIST, CNN-CIFAR10; ``../shared/paper/README.md`` item 1):
``torchvision.models.resnet18(weights=ResNet18_Weights.DEFAULT)``; for greyscale images ``conv1`` is
replaced by ``Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)`` initialised with the
channel mean of ImageNet's RGB ``conv1`` (CIFAR-10 keeps the RGB ``conv1``); the 3x3 stride-2 max pool
and every other layer are kept; ``fc`` becomes ``Linear(512, C)`` followed by a LogSoftmax; inputs are
``ToTensor()`` pixels in [0, 1] with no normalisation.

Here: the same network (torchvision's ``resnet18`` under the attribute ``resnet18``, as in their class,
so a state dict of theirs has the same keys), but **trained from scratch (no ImageNet weights)**: they
cannot be downloaded here. Weights start from torchvision's own initialisation of a fresh ResNet
(``ResNet.__init__``: Kaiming-normal fan-out convolutions, BatchNorm 1 and 0, the default ``Linear``),
the new ``conv1`` included, drawn from a seeded generator (:meth:`PaperResNet18.reset_parameters_from`).
It returns logits: their LogSoftmax shifts each sample's scores by a constant (same argmax, same loss,
same margins for C&W and DLR).
"""

from __future__ import annotations

import math

import torch
from torch import nn

RESNET18_BLOCKS = (2, 2, 2, 2)
"""BasicBlocks per stage of ResNet-18 (He et al. 2016, table 1; torchvision ``resnet18``)."""
SCRATCH = "trained from scratch (no ImageNet weights)"
"""What every card and table says about the ResNet-18's weights."""


class PaperResNet18(nn.Module):
    """torchvision's ResNet-18 with a ``channels``-input ``conv1`` (7x7, stride 2, padding 3, no bias) and a
    C-way ``fc``; images in [0, 1], no normalisation, logits out.

    Args:
        channels: input channels (1 for MNIST and OrganAMNIST: ``conv1`` replaced as the paper does; 3 keeps it).
        num_classes: C, the width of ``fc``.

    Example::

        model = PaperResNet18(1, 10)
        logits = model(torch.rand(8, 1, 28, 28))  # (8, 10)
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import resnet18  # here, not at import: importing torchvision takes seconds

        net = resnet18(weights=None, num_classes=num_classes)
        if channels != net.conv1.in_channels:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's convs
        self.resnet18 = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet18(x)

    @torch.no_grad()
    def reset_parameters_from(self, generator: torch.Generator) -> None:
        """torchvision's initialisation of a fresh ResNet (``torchvision.models.resnet.ResNet.__init__``), every
        draw from ``generator`` in module order: convolutions Kaiming-normal (fan-out, ReLU), BatchNorm weight 1
        and bias 0 (running statistics reset), ``fc`` as ``nn.Linear`` initialises itself."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def describe(channels: int, num_classes: int) -> str:
    """The architecture in one line, for the model card."""
    first = f"conv1 7x7/2 pad 3, {channels} -> 64 channels{' (replaced)' if channels != 3 else ''}"
    return (f"torchvision resnet18 (BasicBlock {list(RESNET18_BLOCKS)}; {first}; max pool 3x3/2 kept; "
            f"fc 512 -> {num_classes}; no input normalisation; {SCRATCH})")


PAPER_SOURCE = ("n-azimi/QShield, Jupyter Notebook.ipynb: 'The CNN and DNN Models' (class CNN), 'Model Training' "
                "(train_model) and qnn_toolkit.py (QNN); ../shared/paper/README.md items 1 and 8")


def _cnn_entry(channels: int, epochs: int, batch_size: int) -> dict:
    first = ("conv1 replaced by Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)" if channels != 3
             else "the RGB conv1 kept")
    init = (", conv1 like its other convolutions (the paper: ImageNet weights, conv1 the channel mean of "
            "ImageNet's RGB conv1)" if channels != 3 else " (the paper: ImageNet weights)")
    return {
        "name": "CNN", "source": PAPER_SOURCE,
        "same": f"torchvision resnet18 architecture; {first}; max pool kept; fc Linear(512, C); inputs in [0, 1] "
                "with no normalisation and no augmentation; Adam lr 1e-3 (constant), weight decay 1e-4"
                f"{', batch 128' if batch_size == 128 else ''}; cross-entropy (theirs: NLL on log-softmax)",
        "differs": f"{SCRATCH}: torchvision's initialisation{init}; {epochs} epoch(s) instead of 10 (sized to a "
                   f"2-core CPU){'' if batch_size == 128 else f'; batch {batch_size} instead of 128'}; logits out "
                   "instead of log-softmax (same argmax and loss); the full training split (the paper cut every "
                   "class to the smallest one's size)",
    }


def _hybrid_entry(epochs: int, init_from: str | None) -> dict:
    start = f"the trained {init_from}, {SCRATCH}" if init_from else f"torchvision's initialisation, {SCRATCH}"
    return {
        "name": "HQCNN-Full", "source": PAPER_SOURCE,
        "same": "the paper's circuit (4 qubits, enhanced angle encoding, full CNOT entanglement, mixed noise "
                "p = 0.005) and dynamic fusion, fed with the fc logits of the same ResNet-18",
        "differs": f"the CNN starts from {start}; CNN and fusion then train jointly for {epochs} epoch(s) by this "
                   "project's hybrid recipe (Adam with a one-cycle schedule, the CNN at a tenth of the learning "
                   "rate); the paper trained the hybrid for 10 epochs at a constant 1e-3 from the ImageNet-"
                   "initialised ResNet-18; the full training split; the circuit runs batched (paper mode: the same "
                   "computation)",
    }


def card_fields(model_name: str, channels: int, epochs: int, batch_size: int, init_from: str | None = None) -> dict:
    """The card entries of a model on the ResNet-18 backbone: ``backbone`` (what :func:`qshield_core.zoo.
    model_from_card` rebuilds), where its weights started, and ``paper_model``, the paper's model it stands
    for with every difference (as the DNN's card lists its own)."""
    hybrid = model_name != "resnet18"
    weights = f"CNN from {init_from}, {SCRATCH}" if hybrid and init_from else SCRATCH
    entry = _hybrid_entry(epochs, init_from) if hybrid else _cnn_entry(channels, epochs, batch_size)
    return {"backbone": "resnet18", "initial_weights": weights, "paper_model": entry}
