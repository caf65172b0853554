"""The quantum module: circuit configuration, feature encoding, PennyLane circuit and backends.

The circuit (the paper's, generalised): encoding rotations on |0...0>, then ``depth`` times
[optional trainable ``qml.Rot`` on every wire, an entangling layer of CNOTs, noise on every
wire], then readout error and ``qml.probs`` on all wires. Three backends execute it:

- ``fast`` (default): :class:`~qshield_core.simulator.FastCircuitSimulator`, exact and batched.
- ``pennylane``: one QNode built once, run with parameter broadcasting on ``default.qubit``
  (noiseless) or ``default.mixed`` (noisy), ``diff_method="backprop"``. The reference.
- ``paper-loop``: the paper's execution, kept to measure its cost: a new ``default.mixed`` QNode
  per call, run once per sample on detached NumPy angles with parameter-shift. No gradient.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from . import rng
from .noise import NoiseModel
from .simulator import FastCircuitSimulator, qubits_for_classes

if TYPE_CHECKING:
    import pennylane as qml

# PennyLane is imported where a circuit is built, drawn or run as a QNode, not at module level: the
# default ``fast`` backend does without it, and the import is the largest part of the app's start-up.

ENTANGLEMENTS = ("none", "linear", "ring", "star", "full")
ENCODINGS = ("enhanced", "angle")
BACKENDS = ("fast", "pennylane", "paper-loop")
PROJECTION_SCALE = 0.1


def entangling_pairs(entanglement: str, n_qubits: int) -> list[tuple[int, int]]:
    """The CNOT (control, target) pairs of one entangling layer, in application order."""
    if entanglement == "none":
        return []
    if entanglement == "linear":
        return [(i, i + 1) for i in range(n_qubits - 1)]
    if entanglement == "ring":
        return [(i, (i + 1) % n_qubits) for i in range(n_qubits)] if n_qubits > 2 else [(0, 1)]
    if entanglement == "star":
        return [(0, i) for i in range(1, n_qubits)]
    if entanglement == "full":
        return [(i, j) for i in range(n_qubits) for j in range(i + 1, n_qubits)]
    raise ValueError(f"Unknown entanglement {entanglement!r}; choose one of {', '.join(ENTANGLEMENTS)}.")


@dataclass(frozen=True)
class CircuitConfig:
    """Everything that defines the circuit, independent of how it is executed."""

    n_qubits: int = 4
    encoding: str = "enhanced"
    entanglement: str = "full"
    depth: int = 1
    variational: bool = False
    noise: NoiseModel = field(default_factory=NoiseModel)

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"Unknown encoding {self.encoding!r}; choose one of {', '.join(ENCODINGS)}.")
        entangling_pairs(self.entanglement, self.n_qubits)
        if not 1 <= self.n_qubits <= 10:
            raise ValueError("n_qubits must lie in [1, 10].")
        if self.depth < 1:
            raise ValueError("depth must be at least 1.")

    @classmethod
    def for_classes(cls, num_classes: int, **kwargs) -> CircuitConfig:
        """The paper's default circuit for ``num_classes`` (n = max(2, ceil(log2 C)) qubits)."""
        return cls(n_qubits=qubits_for_classes(num_classes), **kwargs)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return entangling_pairs(self.entanglement, self.n_qubits)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.depth, self.n_qubits, 3) if self.variational else (0,)

    def with_noise(self, noise: NoiseModel) -> CircuitConfig:
        return replace(self, noise=noise)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CircuitConfig:
        data = dict(data)
        data["noise"] = NoiseModel(**data.get("noise", {}))
        return cls(**data)


def circuit(angles, weights, config: CircuitConfig):
    """The QShield circuit as a plain function of ``(angles, weights)`` (queue inside a QNode)."""
    import pennylane as qml

    wires = range(config.n_qubits)
    for wire in wires:
        if config.encoding == "angle":
            qml.RY(angles[..., wire], wires=wire)
        else:
            qml.RX(angles[..., wire, 0], wires=wire)
            qml.RY(angles[..., wire, 1], wires=wire)
            qml.RZ(angles[..., wire, 2], wires=wire)
    for layer in range(config.depth):
        if config.variational:
            for wire in wires:
                qml.Rot(*weights[layer, wire], wires=wire)
        for control, target in config.pairs:
            qml.CNOT(wires=[control, target])
        config.noise.apply(wires)
    config.noise.apply_readout(wires)
    return qml.probs(wires=list(wires))


def device_name(config: CircuitConfig) -> str:
    """``default.qubit`` for a pure-state circuit, ``default.mixed`` otherwise."""
    return "default.qubit" if config.noise.is_noiseless else "default.mixed"


def make_qnode(config: CircuitConfig, diff_method: str = "backprop") -> qml.QNode:
    """A torch QNode of the circuit on the device its noise model needs."""
    import pennylane as qml

    dev = qml.device(device_name(config), wires=config.n_qubits)

    def qnode_fn(angles, weights):
        return circuit(angles, weights, config)

    return qml.QNode(qnode_fn, dev, interface="torch", diff_method=diff_method)


def example_angles(config: CircuitConfig, seed: int = 0) -> torch.Tensor:
    """Deterministic example angles of the right shape (for drawing and tests)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (config.n_qubits,) if config.encoding == "angle" else (config.n_qubits, 3)
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * np.pi / 2


def draw_text(config: CircuitConfig, angles: torch.Tensor | None = None, decimals: int = 2) -> str:
    """The circuit as text (``qml.draw``)."""
    import pennylane as qml

    angles = example_angles(config) if angles is None else angles
    weights = torch.zeros(config.weight_shape, dtype=torch.float64)
    return qml.draw(make_qnode(config), decimals=decimals)(angles, weights)


def draw_figure(config: CircuitConfig, angles: torch.Tensor | None = None):
    """The circuit as a Matplotlib figure (``qml.draw_mpl``)."""
    import pennylane as qml

    angles = example_angles(config) if angles is None else angles
    weights = torch.zeros(config.weight_shape, dtype=torch.float64)
    fig, _ = qml.draw_mpl(make_qnode(config), decimals=2, style="pennylane")(angles, weights)
    return fig


class QuantumCircuitLayer(nn.Module):
    """Runs the circuit on a batch of angles with a chosen backend; returns (B, 2^n) probabilities."""

    def __init__(self, config: CircuitConfig, backend: str = "fast") -> None:
        super().__init__()
        self.config = config
        shape = config.weight_shape
        self.weights = nn.Parameter(torch.zeros(shape)) if config.variational else None
        if config.variational:
            nn.init.uniform_(self.weights, -0.1, 0.1)
        self._fast = FastCircuitSimulator(config.n_qubits, config.encoding, config.pairs, config.depth,
                                          config.noise)
        self._qnode: qml.QNode | None = None
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"Unknown backend {value!r}; choose one of {', '.join(BACKENDS)}.")
        self._backend = value
        if value == "pennylane" and self._qnode is None:
            self._qnode = make_qnode(self.config)

    def _weights_for(self, angles: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            return torch.zeros(self.config.weight_shape, dtype=angles.dtype)
        return self.weights.to(angles.dtype)

    def forward(self, angles: torch.Tensor) -> torch.Tensor:
        if self._backend == "fast":
            weights = None if self.weights is None else self.weights.to(angles.dtype)
            return self._fast.probabilities(angles, weights)
        if self._backend == "pennylane":
            out = self._qnode(angles, self._weights_for(angles))
            return out.to(angles.dtype).reshape(angles.shape[0], -1)
        return self._paper_loop(angles)

    def _paper_loop(self, angles: torch.Tensor) -> torch.Tensor:
        """The paper's execution: QNode rebuilt per call, one sample at a time, detached."""
        import pennylane as qml

        config = self.config
        dev = qml.device("default.mixed", wires=config.n_qubits)
        qnode = qml.QNode(lambda a, w: circuit(a, w, config), dev, interface="torch",
                          diff_method="parameter-shift")
        weights = self._weights_for(angles).detach().numpy()
        rows = [np.asarray(qnode(sample, weights)) for sample in angles.detach().cpu().numpy()]
        return torch.tensor(np.stack(rows), dtype=angles.dtype)


class FeatureEncoder(nn.Module):
    """Turns C classifier features into rotation angles (the paper's encodings).

    ``enhanced``: standardise each sample's C features, project them to 3n values with a
    C x 3n matrix (0.1 x an orthogonal factor, zero-padded), angles = pi * tanh(value), one
    (RX, RY, RZ) triple per qubit. ``angle``: RY = 2 pi sigmoid(mean of a group of features).

    The projection is either ``fixed`` (drawn once from ``projection_seed`` and stored with the
    weights) or drawn afresh at every call (the paper's behaviour), from the generator of the seeded scope
    the call runs in (:func:`qshield_core.rng.generator`), or unseeded outside any scope.
    """

    def __init__(self, num_features: int, config: CircuitConfig, projection_seed: int = 0) -> None:
        super().__init__()
        self.num_features = num_features
        self.config = config
        gen = torch.Generator().manual_seed(projection_seed)
        self.register_buffer("fixed_projection", self.draw_projection(gen))

    def draw_projection(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A fresh C x 3n projection: 0.1 x Q of a Gaussian matrix's QR, zero-padded."""
        width = 3 * self.config.n_qubits
        gaussian = torch.randn(self.num_features, width, generator=generator)
        q, _ = torch.linalg.qr(gaussian)
        projection = torch.zeros(self.num_features, width)
        projection[:, : q.shape[1]] = PROJECTION_SCALE * q
        return projection

    def forward(self, features: torch.Tensor, random_projection: bool = False) -> torch.Tensor:
        if self.config.encoding == "angle":
            groups = torch.tensor_split(features, self.config.n_qubits, dim=-1)
            means = torch.stack([g.mean(-1) for g in groups], -1)
            return 2 * np.pi * torch.sigmoid(means)
        mean = features.mean(-1, keepdim=True)
        std = features.std(-1, keepdim=True, unbiased=False)
        standardised = (features - mean) / (std + 1e-8)
        projection = self.draw_projection(rng.generator()).to(features) if random_projection else self.fixed_projection
        values = standardised @ projection.to(features.dtype)
        return (np.pi * torch.tanh(values)).reshape(*features.shape[:-1], self.config.n_qubits, 3)
