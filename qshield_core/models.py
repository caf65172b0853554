"""Classical CNNs, the dynamic-weighting fusion and the QShield hybrid.

Every model takes images in [0, 1] (normalisation is its first layer) and returns logits
(N, C), so torchattacks can attack it unchanged. The hybrid returns log-probabilities, which
are valid logits (softmax(log p) = p).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import fusion_ops, rng
from .data import DatasetSpec, get_spec
from .quantum import CircuitConfig, FeatureEncoder, QuantumCircuitLayer
from .resnet import PaperResNet18

GRAD_MODES = ("paper", "differentiable")
BACKBONES = ("resnet18",)
"""CNN backbones a model's name can start with: ``resnet18`` is the classical model on it and ``resnet18-<hybrid>``
that hybrid on it (:func:`split_backbone`); names without one use this project's CNN (:data:`ARCHITECTURES`)."""
MODEL_NAMES = ("classical", "dnn", "hybrid-none", "hybrid-linear", "hybrid-star", "hybrid-full", "resnet18",
               "resnet18-hybrid-full")
BASELINES = ("classical", "dnn", "resnet18")
"""The models without a quantum branch (no gradient modes): the CNN, the paper's fully-connected DNN and the
paper's CNN (torchvision's ResNet-18, :mod:`qshield_core.resnet`)."""


VARIANT_SEPARATOR = "@"


def split_variant(model_name: str) -> tuple[str, str | None]:
    """(base name, variant): ``("classical", "fgsm-at")`` for ``classical@fgsm-at``, a model of the base's
    architecture trained another way (adversarially, say; its card says how); ``(model_name, None)`` without."""
    base, separator, variant = model_name.partition(VARIANT_SEPARATOR)
    return base, (variant if separator else None)


def with_variant(model_name: str, variant: str | None) -> str:
    return model_name if variant is None else f"{model_name}{VARIANT_SEPARATOR}{variant}"


def split_backbone(model_name: str) -> tuple[str | None, str]:
    """(backbone, model on it): ``("resnet18", "classical")`` for ``resnet18``, ``("resnet18", "hybrid-full")``
    for ``resnet18-hybrid-full``, ``(None, model_name)`` for every other name; a variant suffix is left out."""
    model_name = split_variant(model_name)[0]
    for backbone in BACKBONES:
        if model_name == backbone:
            return backbone, "classical"
        if model_name.startswith(f"{backbone}-"):
            return backbone, model_name.removeprefix(f"{backbone}-")
    return None, model_name


def is_hybrid_name(model_name: str) -> bool:
    """Whether a model of this name has a quantum branch (and gradient modes): ``hybrid-*``, ``<backbone>-hybrid-*``."""
    return split_backbone(model_name)[1].startswith("hybrid-")


def classical_of(model_name: str) -> str:
    """The classical model on the CNN a model is built on (a hybrid's transfer source, its ``init_from``):
    ``resnet18`` for ``resnet18`` and ``resnet18-*``, ``classical`` for the others; a variant's is the same
    variant of it (``classical@fgsm-at`` for ``hybrid-full@fgsm-at``)."""
    return with_variant(split_backbone(model_name)[0] or "classical", split_variant(model_name)[1])


EXTRA_EPOCH_VARIANT = "extra-epoch"
"""The variant a classical model takes when it is fine-tuned one epoch as a hybrid's CNN is (the ``extra-epoch``
recipe of :mod:`qshield_core.train`): the control that tells a hybrid's circuit from the epoch its recipe adds."""


def extra_epoch_control_of(model_name: str) -> str | None:
    """The control of a hybrid built on a classical model: that model trained the hybrid's extra epoch with no
    circuit, ``resnet18@extra-epoch`` for ``resnet18-hybrid-full`` and ``classical@pgd-at-extra-epoch`` for
    ``hybrid-full@pgd-at`` (whose classical model is ``classical@pgd-at``); None for a model without a circuit."""
    if not is_hybrid_name(model_name):
        return None
    classical = classical_of(model_name)
    if split_variant(classical)[1] is None:
        return with_variant(classical, EXTRA_EPOCH_VARIANT)
    return f"{classical}-{EXTRA_EPOCH_VARIANT}"


def extra_epoch_source(model_name: str) -> str | None:
    """The classical model an extra-epoch control starts from (``resnet18`` for ``resnet18@extra-epoch``,
    ``classical@pgd-at`` for ``classical@pgd-at-extra-epoch``); None for a name that is not a control's."""
    base, variant = split_variant(model_name)
    if variant == EXTRA_EPOCH_VARIANT:
        return base
    if variant is not None and variant.endswith(f"-{EXTRA_EPOCH_VARIANT}"):
        return with_variant(base, variant.removesuffix(f"-{EXTRA_EPOCH_VARIANT}"))
    return None


class Normalize(nn.Module):
    """Per-channel standardisation inside the model, so inputs stay in [0, 1]."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + f(x) with two conv-BN-ReLU layers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def small_cnn(channels: int, num_classes: int, widths: tuple[int, int, int]) -> nn.Sequential:
    """A VGG-style CNN for 28x28 greyscale images: two conv stages, then a third and a head."""
    w1, w2, w3 = widths
    return nn.Sequential(
        conv_bn_relu(channels, w1), conv_bn_relu(w1, w1), nn.MaxPool2d(2),
        conv_bn_relu(w1, w2), conv_bn_relu(w2, w2), nn.MaxPool2d(2),
        conv_bn_relu(w2, w3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.2), nn.Linear(w3, num_classes),
    )


def resnet9s(channels: int, num_classes: int, widths: tuple[int, int, int, int]) -> nn.Sequential:
    """A compact ResNet-9 (Page's DAWNBench design at reduced width) for 32x32 colour images."""
    c0, c1, c2, c3 = widths
    return nn.Sequential(
        conv_bn_relu(channels, c0),
        conv_bn_relu(c0, c1), nn.MaxPool2d(2), Residual(c1),
        conv_bn_relu(c1, c2), nn.MaxPool2d(2),
        conv_bn_relu(c2, c3), nn.MaxPool2d(2), Residual(c3),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c3, num_classes),
    )


ARCHITECTURES = {
    "mnist": ("small-cnn", {"widths": (16, 32, 64)}),
    "organamnist": ("small-cnn", {"widths": (32, 64, 128)}),
    "cifar10": ("resnet9s", {"widths": (16, 32, 64, 128)}),
}


def build_classifier(dataset: str, architecture: str | None = None,
                     widths: tuple[int, ...] | None = None) -> nn.Module:
    """The classical CNN for ``dataset``: ``Normalize`` then the network, logits out. ``architecture="resnet18"``
    is the paper's CNN instead (:class:`~qshield_core.resnet.PaperResNet18`: no normalisation, as the paper)."""
    spec = get_spec(dataset)
    if architecture == "resnet18":
        return PaperResNet18(spec.channels, spec.num_classes)
    default_arch, kwargs = ARCHITECTURES[spec.name]
    architecture = architecture or default_arch
    widths = tuple(widths or kwargs["widths"])
    factory = {"small-cnn": small_cnn, "resnet9s": resnet9s}[architecture]
    return nn.Sequential(Normalize(spec.mean, spec.std), factory(spec.channels, spec.num_classes, widths))


# --------------------------------------------------------------------------- the DNN baseline

DNN_WIDTHS = {"mnist": (512, 256, 128), "organamnist": (512, 256, 128), "cifar10": (1024, 512, 256, 128)}
"""Hidden widths of the paper's DNN per dataset (its notebook, "The CNN and DNN Models")."""
DNN_DROPOUT = 0.2


def mlp(in_features: int, num_classes: int, widths: tuple[int, ...], dropout: float = DNN_DROPOUT) -> nn.Sequential:
    """Flatten, then Linear -> BatchNorm1d -> ReLU -> Dropout per hidden width, then a linear head (logits)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def build_dnn(dataset: str) -> nn.Sequential:
    """The paper's DNN baseline (QShield, Azimi et al. 2026): a fully-connected network on the flattened image.

    As the authors' notebook defines it: MNIST and OrganAMNIST 784 -> 512 -> 256 -> 128 -> C, CIFAR-10
    3072 -> 1024 -> 512 -> 256 -> 128 -> 10, each hidden layer Linear, BatchNorm, ReLU, Dropout(0.2).
    Like the CNNs it takes images in [0, 1] with ``Normalize`` as its first layer (theirs had none: the
    first BatchNorm makes the difference a re-parametrisation) and returns logits (theirs log-softmax).
    """
    spec = get_spec(dataset)
    in_features = spec.channels * spec.image_size * spec.image_size
    return nn.Sequential(Normalize(spec.mean, spec.std), mlp(in_features, spec.num_classes, DNN_WIDTHS[spec.name]))


# --------------------------------------------------------------------------- fusion


def fusion_statistics(cnn_logits: torch.Tensor, quantum_log_probs: torch.Tensor) -> torch.Tensor:
    """The paper's 7 statistics: std, max, kurtosis of each branch, and their Pearson correlation.

    One autograd node (:mod:`qshield_core.fusion_ops`): values bit-identical to the op-by-op formula
    :func:`~qshield_core.fusion_ops.reference_statistics`, backward pass written out.
    """
    return fusion_ops.fusion_statistics(cnn_logits, quantum_log_probs)


class DynamicFusion(nn.Module):
    """Alpha = MLP(7 statistics); p = normalise((alpha sqrt(p_cnn) + sqrt(1 - alpha^2) sqrt(p_q))^2)."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(7, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1), nn.Sigmoid(),
        )

    def alpha(self, cnn_logits: torch.Tensor, quantum_probs: torch.Tensor) -> torch.Tensor:
        """Alpha per sample. In evaluation mode statistics and MLP are one autograd node (same values)."""
        if fusion_ops.supports_inference_alpha(self.mlp):
            return fusion_ops.inference_alpha(self.mlp, cnn_logits, quantum_probs)
        stats = fusion_statistics(cnn_logits, quantum_probs.clamp_min(1e-10).log())
        return self.mlp(stats).squeeze(-1)

    @staticmethod
    def fuse(cnn_logits: torch.Tensor, quantum_probs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Amplitude-level fusion; returns log-probabilities (N, C). One autograd node, values bit-identical
        to the op-by-op :func:`~qshield_core.fusion_ops.reference_fuse`."""
        return fusion_ops.fuse(cnn_logits, quantum_probs, alpha)


# --------------------------------------------------------------------------- hybrid


@dataclass
class HybridOutput:
    """Every intermediate of one hybrid forward pass (for the app, the CLI and tests)."""

    cnn_logits: torch.Tensor
    angles: torch.Tensor
    basis_probs: torch.Tensor
    quantum_probs: torch.Tensor
    alpha: torch.Tensor
    log_probs: torch.Tensor


class QShieldHybrid(nn.Module):
    """CNN -> its C logits -> quantum circuit -> dynamic fusion with the CNN's own prediction.

    Args:
        cnn: the classical classifier (images in [0, 1], logits out).
        num_classes: C.
        circuit: the :class:`CircuitConfig`.
        grad_mode: ``"paper"`` (quantum branch cut from autograd, fresh random projection at
            every forward, as the published code) or ``"differentiable"`` (the fixed seeded
            projection, gradients through the simulated circuit). Switchable at any time.
        backend: ``"fast"``, ``"pennylane"`` or ``"paper-loop"`` (see :mod:`qshield_core.quantum`).
        projection_seed: seed of the fixed projection used in ``differentiable`` mode.
    """

    def __init__(self, cnn: nn.Module, num_classes: int, circuit: CircuitConfig, grad_mode: str = "paper",
                 backend: str = "fast", projection_seed: int = 0) -> None:
        super().__init__()
        self.cnn = cnn
        self.num_classes = num_classes
        self.circuit_config = circuit
        self.encoder = FeatureEncoder(num_classes, circuit, projection_seed)
        self.quantum = QuantumCircuitLayer(circuit, backend)
        self.fusion = DynamicFusion()
        self.grad_mode = grad_mode
        self._head_cache: _HeadCache | None = None

    @property
    def grad_mode(self) -> str:
        return self._grad_mode

    @grad_mode.setter
    def grad_mode(self, value: str) -> None:
        if value not in GRAD_MODES:
            raise ValueError(f"Unknown gradient mode {value!r}; choose one of {', '.join(GRAD_MODES)}.")
        self._grad_mode = value

    @property
    def randomised(self) -> bool:
        """Whether two identical forward passes may differ: the paper mode redraws its projection, and a
        circuit with finite shots returns a fresh estimate at every call (in either mode)."""
        return self._grad_mode == "paper" or self.quantum.randomised

    @property
    def backend(self) -> str:
        return self.quantum.backend

    @backend.setter
    def backend(self, value: str) -> None:
        self.quantum.backend = value

    def quantum_branch(self, cnn_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Angles, all 2^n basis probabilities, and the renormalised class distribution."""
        paper = self._grad_mode == "paper"
        features = cnn_logits.detach() if paper else cnn_logits
        with torch.set_grad_enabled(torch.is_grad_enabled() and not paper):
            angles = self.encoder(features, random_projection=paper)
            basis = self.quantum(angles)
        class_probs = basis[..., : self.num_classes].to(cnn_logits.dtype)
        class_probs = class_probs / class_probs.sum(-1, keepdim=True).clamp_min(1e-12)
        return angles, basis, class_probs

    def details(self, x: torch.Tensor) -> HybridOutput:
        """The full forward pass with its intermediates (the reference path: one node per stage)."""
        return self.head_details(self.cnn(x))

    def head_details(self, cnn_logits: torch.Tensor) -> HybridOutput:
        """Everything after the CNN, stage by stage, with the intermediates."""
        angles, basis, quantum_probs = self.quantum_branch(cnn_logits)
        alpha = self.fusion.alpha(cnn_logits, quantum_probs)
        log_probs = self.fusion.fuse(cnn_logits, quantum_probs, alpha)
        return HybridOutput(cnn_logits, angles, basis, quantum_probs, alpha, log_probs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities; a recorded forward pass takes the fused head where it applies (:meth:`fused_head`)."""
        cnn_logits = self.cnn(x)
        head = self.fused_head(cnn_logits)
        if head is None:
            return self.head_details(cnn_logits).log_probs
        if self._grad_mode == "paper":  # the same draw as FeatureEncoder.forward's, then no gradient through it
            projection = self.encoder.draw_projection_array(rng.generator())
            return fusion_ops.hybrid_head(cnn_logits, head, projection, through_quantum=False)
        return fusion_ops.hybrid_head(cnn_logits, head)

    def fused_head(self, cnn_logits: torch.Tensor) -> fusion_ops.FusedHead | None:
        """The constants of the one-node head (:class:`~qshield_core.fusion_ops.HybridHead`) when it applies to
        this forward pass, else None. It applies when autograd records the pass (on CPU), the circuit has the
        enhanced encoding, no trainable rotations, no shot noise and runs on the fast backend's product path,
        and the fusion MLP is in evaluation mode with no parameter wanting a gradient. Passes without autograd
        take the bit-identical stages (:meth:`head_details`): evaluation, the committed results."""
        if not (cnn_logits.requires_grad and torch.is_grad_enabled() and cnn_logits.is_cpu
                and cnn_logits.dtype in _HEAD_DTYPES):
            return None
        modules = self._modules  # not through nn.Module.__getattr__: this runs at every attack step
        quantum, encoder, mlp = modules["quantum"], modules["encoder"], modules["fusion"]._modules["mlp"]
        if (mlp.training or quantum.weights is not None or quantum.backend != "fast" or quantum.randomised
                or self.circuit_config.encoding != "enhanced" or not quantum._fast.product_path_applies(None)):
            return None
        cache = self._head_cache
        if cache is None or not cache.valid(quantum._fast, encoder, mlp):
            cache = self._head_cache = _HeadCache(quantum._fast, encoder, mlp)
        return cache.head


_HEAD_DTYPES = (torch.float32, torch.float64)


class _HeadCache:
    """A hybrid's fused head and the state of the tensors it was computed from: rebuilt when any of them is
    replaced, moved, converted or changed in place (version counter), or starts to require a gradient.
    Checked at every recorded forward pass, so the check runs in C loops (``map``) over the tensors."""

    def __init__(self, simulator, encoder: FeatureEncoder, mlp: nn.Sequential) -> None:
        self.owners = [simulator, encoder, mlp]
        self.layers = list(mlp._modules.values())
        slots = [(encoder._buffers, "fixed_projection")] + [
            (group, key) for layer in self.layers for group in (layer._parameters, layer._buffers)
            for key, value in group.items() if value is not None]
        self.groups, self.keys = [group for group, _ in slots], [key for _, key in slots]
        self.tensors = list(map(dict.__getitem__, self.groups, self.keys))
        self.state = self._state(self.tensors)
        self.views = [t.detach() for t in self.tensors]  # keeps the storages' addresses taken
        self.head = None if any(self.state[2]) else fusion_ops.fused_head(
            encoder.fixed_projection, simulator.transfer_matrix(), mlp)

    @staticmethod
    def _state(tensors: list[torch.Tensor]) -> tuple[list, list, list]:
        return list(map(_VERSION, tensors)), list(map(_DATA_PTR, tensors)), list(map(_REQUIRES_GRAD, tensors))

    def valid(self, simulator, encoder: FeatureEncoder, mlp: nn.Sequential) -> bool:
        if not ([simulator, encoder, mlp] == self.owners and list(mlp._modules.values()) == self.layers):
            return False
        try:
            current = list(map(dict.__getitem__, self.groups, self.keys))
        except KeyError:  # a parameter or buffer was removed
            return False
        return all(map(operator.is_, current, self.tensors)) and self._state(current) == self.state


_VERSION, _DATA_PTR, _REQUIRES_GRAD = (operator.attrgetter("_version"), operator.methodcaller("data_ptr"),
                                       operator.attrgetter("requires_grad"))


def hybrid_circuit_for(model_name: str, spec: DatasetSpec, **overrides) -> CircuitConfig:
    """The circuit of ``hybrid-<entanglement>`` (or ``<backbone>-hybrid-<entanglement>``) for a dataset (the
    paper's defaults)."""
    entanglement = split_backbone(model_name)[1].split("-", 1)[1]
    return CircuitConfig.for_classes(spec.num_classes, entanglement=entanglement, **overrides)


def build_model(dataset: str, model_name: str, circuit: CircuitConfig | None = None, grad_mode: str = "paper",
                backend: str = "fast", projection_seed: int = 0, backbone: str | None = None) -> nn.Module:
    """A fresh (untrained) model by name: ``classical``, ``dnn``, ``hybrid-<entanglement>``, ``resnet18`` or
    ``resnet18-hybrid-<entanglement>``. ``backbone`` (a card's) must be the one the name says."""
    spec = get_spec(dataset)
    named, base = split_backbone(model_name)
    if backbone is not None and backbone != named:
        raise ValueError(f"Model {model_name!r} is not built on backbone {backbone!r}.")
    if base == "classical":
        return build_classifier(spec.name, named)
    if base == "dnn" and named is None:
        return build_dnn(spec.name)
    if not base.startswith("hybrid-"):
        raise ValueError(f"Unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)} "
                         "(or hybrid-ring).")
    circuit = circuit or hybrid_circuit_for(model_name, spec)
    return QShieldHybrid(build_classifier(spec.name, named), spec.num_classes, circuit, grad_mode, backend,
                         projection_seed)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def input_gradient_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean L2 norm of d(cross-entropy)/d(input) per image (a gradient-masking diagnostic)."""
    x = images.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return float(grad.flatten(1).norm(dim=1).mean()) if math.isfinite(loss.item()) else float("nan")
