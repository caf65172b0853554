"""Certificates: statements that provably hold for every perturbation within a radius.

- :mod:`qshield_core.certify.quantum`: how far the quantum circuit's input state may move before the
  quantum branch's prediction can change, computed exactly from the circuit's channel (trace-distance
  contraction, an operator bound, and Du et al. 2021's differential-privacy bound), and what that
  means for the logits and the pixels.
"""

from .quantum import (
    CircuitChannel,
    GlobalCertificate,
    PixelView,
    QuantumCertificate,
    StateCertificate,
    certified_radius_vs_p,
    certify_state,
    circuit_channel,
    du_epsilon,
    du_radius,
    encoder_reach_bound,
    global_certificate,
    noise_to_certify,
    pixel_view,
    quantum_certificate,
    quantum_certificates,
)

__all__ = [
    "CircuitChannel",
    "GlobalCertificate",
    "PixelView",
    "QuantumCertificate",
    "StateCertificate",
    "certified_radius_vs_p",
    "certify_state",
    "circuit_channel",
    "du_epsilon",
    "du_radius",
    "encoder_reach_bound",
    "global_certificate",
    "noise_to_certify",
    "pixel_view",
    "quantum_certificate",
    "quantum_certificates",
]
