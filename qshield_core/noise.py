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
import pennylane as qml

NOISE_KINDS = ("none", "depolarizing", "amplitude_damping", "phase_damping", "mixed", "thermal")


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

    def channel_specs(self) -> list[tuple[type, tuple[float, ...]]]:
        """The PennyLane channel classes and their parameters applied to every wire."""
        p = self.p
        if self.kind == "none":
            return []
        if self.kind == "depolarizing":
            return [(qml.DepolarizingChannel, (0.75 * p,))]
        if self.kind == "amplitude_damping":
            return [(qml.AmplitudeDamping, (p,))]
        if self.kind == "phase_damping":
            return [(qml.PhaseDamping, (p,))]
        if self.kind == "mixed":
            return [(qml.DepolarizingChannel, (0.4 * p,)), (qml.AmplitudeDamping, (0.3 * p,)),
                    (qml.PhaseDamping, (0.3 * p,))]
        return [(qml.ThermalRelaxationError, (0.0, self.t1, self.t2, self.gate_time))]

    def apply(self, wires) -> None:
        """Queue the noise channels on each of ``wires`` (inside a QNode)."""
        for wire in wires:
            for channel, params in self.channel_specs():
                channel(*params, wires=wire)

    def apply_readout(self, wires) -> None:
        """Queue the readout error as a bit flip on each wire just before measurement."""
        if self.readout > 0:
            for wire in wires:
                qml.BitFlip(self.readout, wires=wire)

    @cached_property
    def kraus_per_wire(self) -> list[list[np.ndarray]]:
        """For each channel in application order, its single-qubit Kraus matrices."""
        return [[np.asarray(k, dtype=np.complex128) for k in channel(*params, wires=0).kraus_matrices()]
                for channel, params in self.channel_specs()]

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
