"""Noise models for the QShield circuit.

A :class:`NoiseModel` is a separate object added to a clean circuit (as in PennyLane's
``qml.NoiseModel``/``qml.add_noise``): the circuit calls :meth:`NoiseModel.apply` on every wire
after each entangling layer and :meth:`NoiseModel.apply_readout` before measuring. The same
object hands the fast backend its Kraus matrices (taken from PennyLane's own channel classes, so
both backends compute the same physics) and its readout confusion matrix.

Conventions
-----------
- ``depolarizing``: strength ``p`` is the depolarizing probability of Nielsen & Chuang,
  rho -> (1 - p) rho + p I/2, so p = 1 is the fully mixed state. In PennyLane's Pauli-error
  convention that is ``qml.DepolarizingChannel(3p/4)``.
- ``mixed``: the paper's recipe, exactly as its code writes it: on every wire
  ``qml.DepolarizingChannel(0.4 p)`` (PennyLane's convention), ``qml.AmplitudeDamping(0.3 p)``,
  ``qml.PhaseDamping(0.3 p)``; default p = 0.005.
- ``amplitude_damping`` / ``phase_damping``: gamma = p.
- ``thermal``: ``qml.ThermalRelaxationError`` from T1, T2 and the gate time (p unused).
- ``readout``: symmetric bit-flip probability of each measured qubit, applied as a classical
  confusion matrix (identical to a ``qml.BitFlip`` just before measurement).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

NOISE_KINDS = ("none", "depolarizing", "amplitude_damping", "phase_damping", "mixed", "thermal")


def depolarizing_kraus(p: float) -> list[np.ndarray]:
    """PennyLane's ``DepolarizingChannel(p)``: X, Y and Z each with probability p/3."""
    paulis = [np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.array([[1, 0], [0, -1]])]
    return [np.sqrt(1 - p) * np.eye(2, dtype=np.complex128)] + [np.sqrt(p / 3) * m.astype(np.complex128)
                                                                 for m in paulis]


def amplitude_damping_kraus(gamma: float) -> list[np.ndarray]:
    """|1> decays to |0> with probability gamma."""
    return [np.array([[1, 0], [0, np.sqrt(1 - gamma)]], dtype=np.complex128),
            np.array([[0, np.sqrt(gamma)], [0, 0]], dtype=np.complex128)]


def phase_damping_kraus(gamma: float) -> list[np.ndarray]:
    """Coherences shrink by sqrt(1 - gamma); populations stay."""
    return [np.array([[1, 0], [0, np.sqrt(1 - gamma)]], dtype=np.complex128),
            np.array([[0, 0], [0, np.sqrt(gamma)]], dtype=np.complex128)]


def thermal_relaxation_kraus(pe: float, t1: float, t2: float, tg: float) -> list[np.ndarray]:
    """Thermal relaxation towards |0> (``pe`` = 0): amplitude damping then pure dephasing.

    Populations relax with exp(-tg/T1) and coherences decay with exp(-tg/T2), as in PennyLane's
    ``ThermalRelaxationError`` (valid for T2 <= 2 T1; only ``pe = 0`` is used here).
    """
    if pe != 0.0:
        raise ValueError("Only relaxation towards the ground state (pe = 0) is supported.")
    gamma = 1 - np.exp(-tg / t1)
    survive = 1 - gamma  # sqrt(survive) sqrt(1 - dephase) = exp(-tg/T2)
    dephase = 1 - np.exp(-2 * tg / t2) / survive if survive > 0 else 0.0
    return [d @ a for d in phase_damping_kraus(max(dephase, 0.0)) for a in amplitude_damping_kraus(gamma)]


KRAUS = {"DepolarizingChannel": depolarizing_kraus, "AmplitudeDamping": amplitude_damping_kraus,
         "PhaseDamping": phase_damping_kraus, "ThermalRelaxationError": thermal_relaxation_kraus}
"""Kraus matrices of the PennyLane channels the noise models use, by class name."""


def two_qubit_depolarizing_kraus(p: float) -> list[np.ndarray]:
    """Two-qubit depolarizing, Nielsen & Chuang's convention: rho -> (1 - p) rho + p I/4.

    Kraus set: sqrt(1 - 15p/16) I (x) I and sqrt(p/16) P (x) Q for the 15 other Pauli pairs
    (the uniform Pauli twirl, since I/4 = sum_{P,Q} (P (x) Q) rho (P (x) Q) / 16). Run in PennyLane
    as ``qml.QubitChannel`` on the two wires; symmetric in them.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"Depolarizing probability must lie in [0, 1], got {p}.")
    paulis = [np.eye(2), np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.array([[1, 0], [0, -1]])]
    kraus = []
    for i, first in enumerate(paulis):
        for j, second in enumerate(paulis):
            weight = 1 - 15 * p / 16 if i == j == 0 else p / 16
            kraus.append(np.sqrt(weight) * np.kron(first, second).astype(np.complex128))
    return kraus


def confusion_matrix(p_1_given_0: float, p_0_given_1: float) -> np.ndarray:
    """A single-qubit readout confusion matrix R[measured, true] (columns sum to 1)."""
    for value in (p_1_given_0, p_0_given_1):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"Readout error probabilities must lie in [0, 1], got {value}.")
    return np.array([[1 - p_1_given_0, p_0_given_1], [p_1_given_0, 1 - p_0_given_1]])


def confusion_kraus(p_1_given_0: float, p_0_given_1: float) -> list[np.ndarray]:
    """A channel whose action on the populations is :func:`confusion_matrix` (asymmetric readout error).

    K = sqrt(R[m, t]) |m><t| for m, t in {0, 1}: it also removes coherences, which is harmless just
    before a computational-basis measurement. With both probabilities equal it acts on the
    populations as ``qml.BitFlip``.
    """
    matrix = confusion_matrix(p_1_given_0, p_0_given_1)
    kraus = []
    for measured in (0, 1):
        for true in (0, 1):
            k = np.zeros((2, 2), dtype=np.complex128)
            k[measured, true] = np.sqrt(matrix[measured, true])
            kraus.append(k)
    return kraus


@dataclass(frozen=True)
class NoiseModel:
    """A per-wire noise channel applied after every entangling layer, plus readout error."""

    kind: str = "mixed"
    p: float = 0.005
    readout: float = 0.0
    t1: float = 50e-6
    t2: float = 70e-6
    gate_time: float = 50e-9

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"Unknown noise model {self.kind!r}; choose one of {', '.join(NOISE_KINDS)}.")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"Noise strength p must lie in [0, 1], got {self.p}.")
        if not 0.0 <= self.readout <= 0.5:
            raise ValueError(f"Readout error must lie in [0, 0.5], got {self.readout}.")
        if self.kind == "thermal":
            if self.t1 <= 0 or self.t2 <= 0 or self.gate_time < 0:
                raise ValueError("T1, T2 must be positive and the gate time non-negative.")
            if self.t2 > 2 * self.t1:
                raise ValueError(f"T2 ({self.t2}) cannot exceed 2*T1 ({2 * self.t1}).")

    @property
    def is_noiseless(self) -> bool:
        """True when the circuit stays a pure state (no channel, no readout error)."""
        return not self.channel_specs() and self.readout == 0.0

    def channel_specs(self) -> list[tuple[str, tuple[float, ...]]]:
        """The PennyLane channels (class names in ``pennylane``) and their parameters applied to every wire."""
        p = self.p
        if self.kind == "none":
            return []
        if self.kind == "depolarizing":
            return [("DepolarizingChannel", (0.75 * p,))]
        if self.kind == "amplitude_damping":
            return [("AmplitudeDamping", (p,))]
        if self.kind == "phase_damping":
            return [("PhaseDamping", (p,))]
        if self.kind == "mixed":
            return [("DepolarizingChannel", (0.4 * p,)), ("AmplitudeDamping", (0.3 * p,)),
                    ("PhaseDamping", (0.3 * p,))]
        return [("ThermalRelaxationError", (0.0, self.t1, self.t2, self.gate_time))]

    def apply(self, wires) -> None:
        """Queue the noise channels on each of ``wires`` (inside a QNode)."""
        import pennylane as qml  # imported on use: the fast simulator and the app's first page do without it

        for wire in wires:
            for name, params in self.channel_specs():
                getattr(qml, name)(*params, wires=wire)

    def apply_readout(self, wires) -> None:
        """Queue the readout error as a bit flip on each wire just before measurement."""
        import pennylane as qml

        if self.readout > 0:
            for wire in wires:
                qml.BitFlip(self.readout, wires=wire)

    @cached_property
    def kraus_per_wire(self) -> list[list[np.ndarray]]:
        """For each channel in application order, its single-qubit Kraus matrices.

        Written out in NumPy (the textbook forms PennyLane uses, equal to its ``kraus_matrices()``
        up to the choice of Kraus set, which the tests check) so that the fast simulator does not
        need to import PennyLane: that import is the largest part of the app's start-up.
        """
        return [KRAUS[name](*params) for name, params in self.channel_specs()]

    def readout_matrix(self) -> np.ndarray:
        """The single-qubit confusion matrix R[measured, true]."""
        r = self.readout
        return np.array([[1 - r, r], [r, 1 - r]])

    def describe(self) -> str:
        """A one-line description for figures and model cards."""
        if self.kind == "none":
            base = "noiseless"
        elif self.kind == "thermal":
            base = f"thermal relaxation (T1={self.t1:g}s, T2={self.t2:g}s, gate {self.gate_time:g}s)"
        else:
            base = f"{self.kind} (p={self.p:g})"
        return base + (f", readout error {self.readout:g}" if self.readout else "")

    def to_dict(self) -> dict:
        return asdict(self)
