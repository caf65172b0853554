"""The quantum module: circuit configuration, feature encoding, PennyLane circuit and backends.

The circuit (the paper's, generalised): encoding rotations on |0...0>, then ``depth`` times
[optional trainable ``qml.Rot`` on every wire, an entangling layer of CNOTs, noise on every
wire], then readout error and ``qml.probs`` on all wires. A :class:`CircuitConfig` (a *design*)
can also move the noise to once after the last layer (``noise_placement="end"``), add a real
device's noise after every gate (``device``, :mod:`qshield_core.devices`) and estimate the output
distribution from a finite number of shots (``shots``, :func:`finite_shot_estimate`). Three
backends execute it:

- ``fast`` (default): :class:`~qshield_core.simulator.FastCircuitSimulator`, exact and batched.
- ``pennylane``: one QNode built once, run with parameter broadcasting on ``default.qubit``
  (noiseless) or ``default.mixed`` (noisy), ``diff_method="backprop"``. The reference.
- ``paper-loop``: the paper's execution, kept to measure its cost: a new ``default.mixed`` QNode
  per call, run once per sample on detached NumPy angles with parameter-shift. No gradient.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from . import rng
from .devices import DeviceNoise
from .noise import NoiseModel
from .simulator import NOISE_PLACEMENTS, FastCircuitSimulator, qubits_for_classes

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
    """Everything that defines the circuit (a *design*), independent of how it is executed.

    ``noise_placement``: ``"every_layer"`` (the noise model after each layer's entangler, between the
    gates of a deep circuit; the paper's circuit and the default) or ``"end"`` (once, after the last
    layer). ``shots``: None for the exact distribution, S > 0 for an estimate from S shots
    (:func:`finite_shot_estimate`). ``device``: a real device's calibrated noise after every gate
    (:class:`~qshield_core.devices.DeviceNoise`), on top of ``noise``. A config without the three
    (every card written before they existed) is the circuit it always was.
    """

    n_qubits: int = 4
    encoding: str = "enhanced"
    entanglement: str = "full"
    depth: int = 1
    variational: bool = False
    noise: NoiseModel = field(default_factory=NoiseModel)
    noise_placement: str = "every_layer"
    shots: int | None = None
    device: DeviceNoise | None = None

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"Unknown encoding {self.encoding!r}; choose one of {', '.join(ENCODINGS)}.")
        entangling_pairs(self.entanglement, self.n_qubits)
        if not 1 <= self.n_qubits <= 10:
            raise ValueError("n_qubits must lie in [1, 10].")
        if self.depth < 1:
            raise ValueError("depth must be at least 1.")
        if self.noise_placement not in NOISE_PLACEMENTS:
            raise ValueError(f"Unknown noise placement {self.noise_placement!r}; choose one of "
                             f"{', '.join(NOISE_PLACEMENTS)}.")
        if self.shots is not None and (isinstance(self.shots, bool) or not isinstance(self.shots, int)
                                       or self.shots < 1):
            raise ValueError(f"shots must be None (exact) or a positive integer, got {self.shots!r}.")
        if self.device is not None and self.device.n_qubits != self.n_qubits:
            raise ValueError(f"Device noise is for {self.device.n_qubits} qubits, the circuit has {self.n_qubits}.")

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

    @property
    def is_noiseless(self) -> bool:
        """True when the circuit stays a pure state: no noise model, no device noise."""
        return self.noise.is_noiseless and self.device is None

    def with_noise(self, noise: NoiseModel) -> CircuitConfig:
        return replace(self, noise=noise)

    def describe_noise(self) -> str:
        """A one-line description of everything that makes the circuit noisy or random (model cards, figures)."""
        parts = [] if self.device is not None and self.noise.is_noiseless else [self.noise.describe()]
        if self.noise_placement == "end" and self.noise.channel_specs():
            parts[-1] += ", noise once after the last layer"
        if self.device is not None:
            parts.append(f"device noise: {self.device.describe()}")
        if self.shots is not None:
            parts.append(f"{self.shots} shots")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CircuitConfig:
        """The config a :meth:`to_dict` (or a design file's ``circuit``) describes; missing fields take
        their defaults. A ``device`` given as ``{"backend": NAME, "qubits": [...] or null}`` is resolved
        from the installed calibration snapshot (:func:`qshield_core.devices.device_noise`)."""
        data = dict(data)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"Unknown circuit field(s) {unknown}; known: {', '.join(f.name for f in fields(cls))}.")
        data["noise"] = NoiseModel(**data.get("noise", {}))
        if isinstance(data.get("device"), dict):
            n_qubits = data.get("n_qubits", cls.n_qubits)
            pairs = entangling_pairs(data.get("entanglement", cls.entanglement), n_qubits)
            data["device"] = DeviceNoise.from_dict(data["device"], n_qubits, pairs)
        return cls(**data)


def circuit(angles, weights, config: CircuitConfig):
    """The QShield circuit as a plain function of ``(angles, weights)`` (queue inside a QNode)."""
    import pennylane as qml

    wires = range(config.n_qubits)
    device = config.device
    for wire in wires:
        if config.encoding == "angle":
            qml.RY(angles[..., wire], wires=wire)
        else:
            qml.RX(angles[..., wire, 0], wires=wire)
            qml.RY(angles[..., wire, 1], wires=wire)
            qml.RZ(angles[..., wire, 2], wires=wire)
    if device is not None:
        device.apply_rotation(wires)
    for layer in range(config.depth):
        if config.variational:
            for wire in wires:
                qml.Rot(*weights[layer, wire], wires=wire)
            if device is not None:
                device.apply_rotation(wires)
        for control, target in config.pairs:
            qml.CNOT(wires=[control, target])
            if device is not None:
                device.apply_pair(control, target)
        if config.noise_placement == "every_layer":
            config.noise.apply(wires)
    if config.noise_placement == "end":
        config.noise.apply(wires)
    if device is not None:
        device.apply_readout(wires)
    config.noise.apply_readout(wires)
    return qml.probs(wires=list(wires))


def device_name(config: CircuitConfig) -> str:
    """``default.qubit`` for a pure-state circuit, ``default.mixed`` otherwise."""
    return "default.qubit" if config.is_noiseless else "default.mixed"


def make_qnode(config: CircuitConfig, diff_method: str = "backprop") -> qml.QNode:
    """A torch QNode of the circuit on the device its noise model needs."""
    import pennylane as qml

    dev = qml.device(device_name(config), wires=config.n_qubits)

    def qnode_fn(angles, weights):
        return circuit(angles, weights, config)

    return qml.QNode(qnode_fn, dev, interface="torch", diff_method=diff_method)


def fast_simulator(config: CircuitConfig) -> FastCircuitSimulator:
    """The fast backend for ``config`` (its noise placement and device noise included)."""
    return FastCircuitSimulator(config.n_qubits, config.encoding, config.pairs, config.depth, config.noise,
                                noise_placement=config.noise_placement, device=config.device)


def sample_counts(probs: torch.Tensor, shots: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Counts of ``shots`` multinomial draws from each row of ``probs`` (..., K), as float64.

    Sampled outcome by outcome as conditional binomials, n_k ~ Bin(S - sum_{j<k} n_j, p_k / sum_{j>=k} p_j),
    which is exactly multinomial and costs K draws per row whatever S. Draws from ``generator``, else from
    the seeded scope's (:func:`qshield_core.rng.generator_or_fresh`): never from torch's global generator.
    """
    gen = generator or rng.generator_or_fresh()
    flat = probs.detach().to(torch.float64).clamp_min(0.0).reshape(-1, probs.shape[-1])
    flat = flat / flat.sum(-1, keepdim=True)
    tail = flat.flip(-1).cumsum(-1).flip(-1)  # sum_{j >= k} p_j
    remaining = torch.full(flat.shape[:1], float(shots), dtype=torch.float64)
    counts = torch.zeros_like(flat)
    for k in range(flat.shape[-1] - 1):
        share = torch.where(tail[:, k] > 0, flat[:, k] / tail[:, k].clamp_min(1e-300), 0.0).clamp(0.0, 1.0)
        share = torch.where(tail[:, k + 1] == 0, (flat[:, k] > 0).to(share.dtype), share)  # nothing left after k
        counts[:, k] = torch.binomial(remaining, share, generator=gen)
        remaining = remaining - counts[:, k]
    counts[:, -1] = remaining
    return counts.reshape(probs.shape)


def finite_shot_estimate(probs: torch.Tensor, shots: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The distribution a QPU returns: frequencies of ``shots`` multinomial draws from ``probs``.

    Unbiased (E = probs) with the multinomial covariance (diag(p) - p p^T) / S. The value is the
    estimate; the gradient is the exact probabilities' (straight-through, as in Bengio, Leonard and
    Courville, arXiv:1308.3432, 2013): the sampling has no useful derivative of its own.
    """
    estimate = (sample_counts(probs, shots, generator) / shots).to(probs.dtype)
    return estimate + (probs - probs.detach())


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
    """Runs the circuit on a batch of angles with a chosen backend; returns (B, 2^n) probabilities.

    With ``config.shots`` the exact probabilities of whichever backend are replaced by a finite-shot
    estimate (:func:`finite_shot_estimate`), drawn from the seeded scope's generator: the layer is then
    randomised, and two identical calls differ outside a seeded scope.
    """

    def __init__(self, config: CircuitConfig, backend: str = "fast") -> None:
        super().__init__()
        self.config = config
        shape = config.weight_shape
        self.weights = nn.Parameter(torch.zeros(shape)) if config.variational else None
        if config.variational:
            nn.init.uniform_(self.weights, -0.1, 0.1)
        self._fast = fast_simulator(config)
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

    @property
    def randomised(self) -> bool:
        """True with finite shots: the output is a random estimate."""
        return self.config.shots is not None

    def forward(self, angles: torch.Tensor) -> torch.Tensor:
        probs = self.exact_probabilities(angles)
        if self.config.shots is None:
            return probs
        return finite_shot_estimate(probs, self.config.shots)

    def exact_probabilities(self, angles: torch.Tensor) -> torch.Tensor:
        """The backend's exact output distribution (no shot noise)."""
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

    def draw_projection_array(self, generator: torch.Generator | None = None) -> np.ndarray:
        """:meth:`draw_projection` as a float64 array: the same draw, the same values, fewer torch operations."""
        width = 3 * self.config.n_qubits
        q, _ = torch.linalg.qr(torch.randn(self.num_features, width, generator=generator))
        projection = np.zeros((self.num_features, width))
        projection[:, : q.shape[1]] = q.numpy() * np.float32(PROJECTION_SCALE)  # float32 product, as above
        return projection

    def projection(self, random_projection: bool = False) -> torch.Tensor:
        """The C x 3n projection of one call: a fresh draw from :func:`rng.generator` (paper) or the fixed one."""
        return self.draw_projection(rng.generator()) if random_projection else self.fixed_projection

    def forward(self, features: torch.Tensor, random_projection: bool = False) -> torch.Tensor:
        if self.config.encoding == "angle":
            groups = torch.tensor_split(features, self.config.n_qubits, dim=-1)
            means = torch.stack([g.mean(-1) for g in groups], -1)
            return 2 * np.pi * torch.sigmoid(means)
        mean = features.mean(-1, keepdim=True)
        std = features.std(-1, keepdim=True, unbiased=False)
        standardised = (features - mean) / (std + 1e-8)
        values = standardised @ self.projection(random_projection).to(features)
        return (np.pi * torch.tanh(values)).reshape(*features.shape[:-1], self.config.n_qubits, 3)
